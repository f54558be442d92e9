"""ADE20K full (ADE20K_2021_17_01) -> the 847-class benchmark, as CAT-Seg prepares it.

Each validation image has `<name>_seg.png` whose class map is R / 10 * 256 + G. The 847 classes
are fixed class values (`vocab/ade847_ids.json`: train id i <- class value ids[i], the ids of the
official conversion); every other value becomes the ignore value 65535. A class value v names
`objectnames[v - 1]` of `index_ade20k.pkl`: the names only check that the index is the expected
release (a name can repeat in the index, so a name never picks the id).
Images whose shorter side exceeds 512 are resized to 512 (bilinear image, nearest labels);
labels are written as uint16 TIFF.
"""

from __future__ import annotations

import json
import pickle
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ovss_cli.data.io import write_label
from ovss_cli.data.vocab import load_vocabulary
from ovss_cli.errors import OvssError
from ovss_cli.fileio import atomic_path
from ovss_cli.prepare.common import WRITTEN, Job, SplitCount, echo, link_or_copy, run_jobs
from ovss_cli.prepare.context import Context
from ovss_cli.prepare.registry import OFFICIAL_COUNTS

IGNORE = 65535
MAX_SHORT_SIDE = 512
FOLDER = "ADE20K_2021_17_01"

# The index is a pickle. Only plain containers and numpy arrays may be rebuilt from it, so a
# tampered file cannot run code when it is loaded.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("collections", "OrderedDict"),
}


class _IndexUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise OvssError(f"index_ade20k.pkl refers to {module}.{name}, which an ADE20K index never holds; "
                            "refusing to load it - download the official ADE20K_2021_17_01 again")
        return super().find_class(module, name)


def load_index(path: Path) -> dict:
    """The ADE20K index (filename, folder, objectnames, ...), loaded without executing code."""
    if not path.is_file():
        raise OvssError(f"{path} not found; it ships inside ADE20K_2021_17_01.zip")
    with open(path, "rb") as handle:
        index = _IndexUnpickler(handle).load()
    for key in ("filename", "folder", "objectnames"):
        if key not in index:
            raise OvssError(f"{path} has no '{key}' entry; is it the ADE20K_2021_17_01 index?")
    return index


def official_class_values() -> list[int]:
    """The class value of each of the 847 train ids, as the official conversion fixes them."""

    return json.loads(resources.files("ovss_cli.data").joinpath("vocab", "ade847_ids.json").read_text("utf-8"))


def class_value_lut(class_values: list[int], objectnames: list[str], vocabulary: list[str]) -> np.ndarray:
    """Lookup from class value to train id (65535 where unused), by the fixed ids; warns when the index
    names an id differently from the vocabulary (another release of the index)."""
    if len(class_values) != len(vocabulary) or len(set(class_values)) != len(class_values):
        raise OvssError(f"ade847_ids.json holds {len(class_values)} ids for {len(vocabulary)} classes; "
                        "reinstall ovss")
    lut = np.full(max(max(class_values), len(objectnames)) + 1, IGNORE, dtype=np.uint16)
    for train_id, value in enumerate(class_values):
        lut[value] = train_id
    differ = [(value, name) for value, name in zip(class_values, vocabulary)
              if value > len(objectnames) or str(objectnames[value - 1]).strip() != name]
    if differ:
        value, name = differ[0]
        found = str(objectnames[value - 1]).strip() if value <= len(objectnames) else "nothing"
        echo(f"warning: index_ade20k.pkl names {len(differ)} of the {len(vocabulary)} class values differently "
             f"from the official list (e.g. {value}: '{found}', expected '{name}'); is it the ADE20K_2021_17_01 "
             "index? Labels follow the official ids")
    return lut


def decode_class_map(seg_rgb: np.ndarray) -> np.ndarray:
    """ADE20K full encoding of the object class: R / 10 * 256 + G."""
    red = seg_rgb[..., 0].astype(np.int32)
    green = seg_rgb[..., 1].astype(np.int32)
    return (red // 10) * 256 + green


def resized_shape(height: int, width: int) -> tuple[int, int] | None:
    """(height, width) with the shorter side at 512 when it is longer, else None."""
    if width >= height > MAX_SHORT_SIDE:
        return MAX_SHORT_SIDE, round(width / height * MAX_SHORT_SIDE)
    if height >= width > MAX_SHORT_SIDE:
        return round(height / width * MAX_SHORT_SIDE), MAX_SHORT_SIDE
    return None


def convert_one(image_path: Path, seg_path: Path, image_out: Path, label_out: Path, lut: np.ndarray) -> str:
    with Image.open(seg_path) as seg:
        classes = decode_class_map(np.asarray(seg.convert("RGB")))
    classes = np.where(classes < len(lut), classes, 0)
    label = lut[classes]
    with Image.open(image_path) as image:
        width, height = image.size
        shape = resized_shape(height, width)
        if shape is not None:
            pixels = np.asarray(image.convert("RGB"))
    if shape is None:
        link_or_copy(image_path, image_out)
    else:
        new_height, new_width = shape
        label = cv2.resize(label, (new_width, new_height), interpolation=cv2.INTER_NEAREST)
        pixels = cv2.resize(pixels, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
        with atomic_path(image_out, durable=False) as temp:
            Image.fromarray(pixels).save(temp, format="JPEG")
    write_label(label_out, label)
    return WRITTEN


def _image_path(root: Path, folder: str, filename: str) -> Path:
    # The index stores folders from the dataset's parent ("ADE20K_2021_17_01/images/ADE/...").
    folder_path = Path(folder)
    if folder_path.parts and folder_path.parts[0] == FOLDER:
        return root / folder_path / filename
    return root / FOLDER / folder_path / filename


def convert(context: Context) -> list[SplitCount]:
    base = context.root / FOLDER
    index = load_index(base / "index_ade20k.pkl")
    lut = class_value_lut(official_class_values(), list(index["objectnames"]), list(load_vocabulary("ade847")))
    image_dir = base / "images_detectron2" / "validation"
    label_dir = base / "annotations_detectron2" / "validation"
    jobs = []
    for folder, filename in zip(index["folder"], index["filename"]):
        filename = str(filename)
        if filename.split("_")[1:2] != ["val"]:  # ADE_val_00000001.jpg; training images are not needed
            continue
        image = _image_path(context.root, str(folder), filename)
        if not image.is_file():
            continue
        seg = image.with_name(image.stem + "_seg.png")
        if not seg.is_file():
            raise OvssError(f"{seg} is missing although {image.name} is listed in the index; re-extract the archive")
        image_out, label_out = image_dir / filename, label_dir / (Path(filename).stem + ".tif")
        jobs.append(Job((image_out, label_out), (image, seg, image_out, label_out, lut)))
    done = run_jobs(convert_one, jobs, context.workers, "ade847 validation", context.progress)
    name = "ade847 validation"
    return [SplitCount.from_counts(name, len(jobs), done, OFFICIAL_COUNTS[name])]
