"""PASCAL-Context 459 and 59 from the official full annotations (trainval.tar.gz).

`trainval/<id>.mat` holds `LabelMap` with values 1..459 indexing `labels.txt` (0 = unlabeled).
PC-459: value - 1 as uint16 TIFF, 0 -> 65535. PC-59: the 59 classes of the official 59-class
subset get their index in ovss' pc59 vocabulary (which follows the 459 order), all others 255.
Only the 5,104 validation images of the benchmark are converted.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import scipy.io

from ovss_cli.data.io import write_label
from ovss_cli.data.vocab import load_vocabulary
from ovss_cli.errors import OvssError
from ovss_cli.fileio import write_text
from ovss_cli.prepare.common import WRITTEN, Job, SplitCount, echo, run_jobs
from ovss_cli.prepare.context import Context
from ovss_cli.prepare.registry import OFFICIAL_COUNTS

PC459_IGNORE = 65535
PC59_IGNORE = 255
# pc59 vocabulary names that labels.txt spells differently.
PC59_ALIASES = {"diningtable": "table"}


def val_ids() -> list[str]:
    text = resources.files("ovss_cli.data").joinpath("vocab", "pascal_context_val_ids.txt").read_text("utf-8")
    return text.split()


def read_labels_txt(path: Path) -> dict[int, str]:
    """'12: bench' lines -> {12: 'bench'}."""
    if not path.is_file():
        raise OvssError(f"{path} not found; it ships in the PASCAL-Context trainval.tar.gz")
    labels = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if ":" in line:
            number, name = line.split(":", 1)
            labels[int(number.strip())] = name.strip()
    return labels


def pc59_lut(labels: dict[int, str], pc59_names: list[str]) -> np.ndarray:
    """Lookup from 459-class value (0..459) to pc59 train id, 255 for the other classes."""
    by_name = {name: number for number, name in labels.items()}
    lut = np.full(max(labels) + 1, PC59_IGNORE, dtype=np.uint8)
    for train_id, name in enumerate(pc59_names):
        number = by_name.get(PC59_ALIASES.get(name, name))
        if number is None:
            raise OvssError(f"class '{name}' of the 59-class subset is not in labels.txt; is it the official file?")
        lut[number] = train_id
    return lut


def load_label_map(path: Path) -> np.ndarray:
    try:
        label = scipy.io.loadmat(str(path))["LabelMap"]
    except (KeyError, ValueError, OSError) as err:
        raise OvssError(f"cannot read LabelMap from {path} ({err}); re-extract trainval.tar.gz") from None
    return np.asarray(label, dtype=np.int64)


def convert_one(mat: Path, pc459_out: Path, pc59_out: Path, lut59: np.ndarray) -> str:
    label = load_label_map(mat)
    if label.max(initial=0) >= len(lut59):
        raise OvssError(f"{mat} has class value {label.max()} beyond labels.txt")
    write_label(pc459_out, np.where(label == 0, PC459_IGNORE, label - 1))
    write_label(pc59_out, lut59[label])
    return WRITTEN


def convert(context: Context) -> list[SplitCount]:
    base = context.root / "VOCdevkit" / "VOC2010"
    labels = read_labels_txt(base / "labels.txt")
    pc459 = list(load_vocabulary("pc459"))
    listed = [labels.get(number, "") for number in range(1, len(pc459) + 1)]
    if listed != pc459:
        echo("warning: labels.txt does not spell the 459 classes as ovss' pc459 vocabulary does; "
             "train ids follow labels.txt numbering")
    lut59 = pc59_lut(labels, list(load_vocabulary("pc59")))
    ids = val_ids()
    # CAT-Seg's registration reads this list; users of the CAT-Seg layout expect it here.
    write_text(base / "pascalcontext_val.txt", "\n".join(ids) + "\n")
    out459, out59 = base / "annotations_detectron2" / "pc459_val", base / "annotations_detectron2" / "pc59_val"
    jobs = []
    for image_id in ids:
        mat = base / "trainval" / f"{image_id}.mat"
        if mat.is_file():
            targets = (out459 / f"{image_id}.tif", out59 / f"{image_id}.png")
            jobs.append(Job(targets, (mat, *targets, lut59)))
    done = run_jobs(convert_one, jobs, context.workers, "pascal-context val", context.progress)
    return [SplitCount.from_counts(name, len(jobs), done, OFFICIAL_COUNTS[name]) for name in ("pc459 val", "pc59 val")]
