"""Image-level label sets (weakly-supervised segmentation): VOC 2012, COCO 2014 and the toy benchmark, each image
with its present classes and, where the split has it, its ground truth.

Pseudo-label indices follow the datasets: 0 background, 1..K the classes, 255 ignore.
Image-level labels come from VOC's XML annotations (as CLIP-ES reads them) or from the
segmentation ground truth via np.unique (as WeCLIP does; the only source on COCO and toy).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ovss_cli.data.benchmarks import DatasetMissingError, get_benchmark, locate
from ovss_cli.data.io import read_image, read_label, read_split_ids
from ovss_cli.data.root import resolve_data_root
from ovss_cli.data.toy import toy_length
from ovss_cli.data.vocab import load_vocabulary
from ovss_cli.errors import OvssError, UsageError

DATASETS = ("voc", "coco", "toy")
SPLITS = {"voc": ("train", "train_aug", "val"), "coco": ("train", "val"), "toy": ("train", "val")}
LABEL_SOURCES = ("auto", "xml", "mask")
IGNORE = 255
# What `ovss pseudolabel` records beside its PNGs (dataset, split, settings); training sets read it back.
PSEUDO_LABEL_SETTINGS = "pseudolabel.json"


@dataclass(frozen=True)
class ImageLabelItem:
    image_id: str
    image_path: Path | None = None  # None: a toy image, generated from its index
    label_path: Path | None = None  # segmentation ground truth, when the split has it
    annotation_path: Path | None = None  # VOC XML


class ImageLabelSet:
    """One split of an image-level label set: `len()`, `image(i)`, `image_labels(i)`, `ground_truth(i)`."""

    def __init__(self, name: str, split: str, class_names: tuple[str, ...], items: list[ImageLabelItem],
                 label_source: str):
        self.name = name
        self.split = split
        self.class_names = class_names  # index 0 = background
        self.items = items
        self.label_source = label_source

    @property
    def num_classes(self) -> int:
        """Classes of the pseudo-label maps, background included."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.items)

    def image(self, index: int) -> np.ndarray:
        """RGB uint8 [H, W, 3]."""
        item = self.items[index]
        if item.image_path is None:
            from ovss_cli.data.toy import toy_sample

            return toy_sample(index, self.split)[0]

        return read_image(item.image_path)

    def ground_truth(self, index: int) -> np.ndarray | None:
        """int64 [H, W] (0 background, 1..K, 255 ignore), or None when the split has no label map for it."""
        item = self.items[index]
        if self.name == "toy":
            from ovss_cli.data.toy import toy_sample

            label = toy_sample(index, self.split)[1]
            return np.where(label == IGNORE, IGNORE, label + 1)  # toy classes 0..4 -> 1..5 (no background)
        if item.label_path is None or not item.label_path.is_file():
            return None

        return read_label(item.label_path)

    def image_labels(self, index: int) -> list[int]:
        """Sorted foreground classes (1..K) present in image `index`."""
        item = self.items[index]
        if self.label_source == "xml":
            return voc_xml_labels(item.annotation_path, self.class_names)
        label = self.ground_truth(index)
        if label is None:
            raise OvssError(f"no segmentation ground truth for {item.image_id} ({item.label_path}) to read its "
                            "image-level labels from; use --image-labels xml (VOC) or prepare the labels")
        return mask_labels(label, self.num_classes, item.image_id)


def label_set_classes(name: str) -> tuple[str, ...]:
    """Classes of a label set's maps, background first (toy: its five classes after a background slot)."""
    if name == "toy":
        from ovss_cli.data.toy import TOY_CLASSES

        return ("background", *TOY_CLASSES)

    return load_vocabulary({"voc": "voc21", "coco": "coco81"}[name])


def mask_labels(label: np.ndarray, num_classes: int, image_id: str = "") -> list[int]:
    """Foreground classes present in a label map (np.unique without background 0 and ignore 255)."""
    present = [int(v) for v in np.unique(label) if v not in (0, IGNORE)]
    bad = [v for v in present if not 0 < v < num_classes]
    if bad:
        raise OvssError(f"label map of {image_id} holds class {bad[0]} outside 1..{num_classes - 1}; "
                        "re-run `ovss prepare` for this dataset")
    return present


def voc_xml_labels(path: Path | None, class_names: tuple[str, ...]) -> list[int]:
    """Classes of the <object><name> entries of a VOC annotation file, as indices of `class_names`."""

    if path is None or not path.is_file():
        raise OvssError(f"VOC annotation {path} not found; extract VOCdevkit/VOC2012/Annotations from "
                        "VOCtrainval_11-May-2012.tar or use --image-labels mask")
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as err:
        raise OvssError(f"cannot parse VOC annotation {path}: {err}") from None
    present = set()
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in class_names[1:]:
            raise OvssError(f"{path}: object class '{name}' is not a VOC class")
        present.add(class_names.index(name))
    return sorted(present)


def open_image_label_set(name: str, split: str, root: Path | None = None, label_source: str = "auto",
                      limit: int | None = None) -> ImageLabelSet:
    """The `split` of dataset `name` ('voc', 'coco' or 'toy'), first `limit` images only when given."""
    if name not in DATASETS:
        raise UsageError(f"unknown WSSS dataset '{name}'; use one of {', '.join(DATASETS)}")
    if split not in SPLITS[name]:
        raise UsageError(f"dataset {name} has no split '{split}'; use one of {', '.join(SPLITS[name])}")
    if label_source not in LABEL_SOURCES:
        raise UsageError(f"--image-labels must be one of {', '.join(LABEL_SOURCES)}, got '{label_source}'")
    if label_source == "xml" and name != "voc":
        raise UsageError("--image-labels xml needs VOC's XML annotations; use mask (or auto) for coco and toy")
    source = label_source if label_source != "auto" else ("xml" if name == "voc" else "mask")
    if name == "toy":
        dataset = _toy(split, source)
    elif name == "voc":
        dataset = _voc(split, _root(root), source)
    else:
        dataset = _coco(split, _root(root), source)
    if limit is not None:
        dataset.items = dataset.items[:limit]
    if not dataset.items:
        raise OvssError(f"the {name} {split} split lists no images")
    return dataset


def _root(root: Path | None) -> Path:
    return resolve_data_root(root)


def _toy(split: str, source: str) -> ImageLabelSet:
    items = [ImageLabelItem(f"toy_{split}_{i:05d}") for i in range(toy_length(split))]
    return ImageLabelSet("toy", split, label_set_classes("toy"), items, source)


def _voc(split: str, root: Path, source: str) -> ImageLabelSet:
    bench = get_benchmark("voc21")
    image_dir, label_dir = locate(replace(bench, title=f"PASCAL VOC {split} (WSSS)"), root)  # name the asked split
    split_file = (root / bench.split_file).parent / f"{split}.txt"
    if not split_file.is_file():
        raise OvssError(f"split list {split_file} is missing; run `ovss prepare voc --data-root {root}`")
    ids = read_split_ids(split_file)
    annotations = image_dir.parent / "Annotations"
    items = [ImageLabelItem(i, image_dir / f"{i}.jpg", label_dir / f"{i}.png", annotations / f"{i}.xml") for i in ids]
    return ImageLabelSet("voc", split, label_set_classes("voc"), items, source)


def _coco(split: str, root: Path, source: str) -> ImageLabelSet:
    bench = get_benchmark("coco81")  # its folders name the val split; train lies beside them
    image_dir = root / Path(bench.image_dir).parent / f"{split}2014"
    label_dir = root / Path(bench.label_dir).parent / f"{split}2014"
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise DatasetMissingError(f"COCO 2014 {split} not found: no folder {folder}; run "
                                      f"`ovss prepare {bench.prepare} --data-root {root}`")
    items = [ImageLabelItem(p.stem, image_dir / f"{p.stem}.jpg", p) for p in sorted(label_dir.glob("*.png"))]
    return ImageLabelSet("coco", split, label_set_classes("coco"), items, source)
