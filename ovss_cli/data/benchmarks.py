"""The benchmark registry: where each prepared benchmark lives and how its labels are read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ovss_cli.data.vocab import load_vocabulary
from ovss_cli.errors import UsageError
from ovss_cli.textutil import did_you_mean


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    vocabulary: str  # shipped class list (ovss_cli/data/vocab/<vocabulary>.json)
    image_dir: str  # relative to the data root
    label_dir: str
    label_suffix: str  # ".png" (uint8) or ".tif" (uint16)
    ignore_index: int
    prepare: str  # the `ovss prepare` dataset that produces it
    image_suffix: str = ".jpg"
    # VOC-20b: predictions of vocabulary index >= this count as the background class (= this index).
    background_from: int | None = None
    split_file: str | None = None  # a list of image ids to use (else every label file)

    @property
    def num_eval_classes(self) -> int:
        if self.background_from is not None:
            return self.background_from + 1
        return len(load_vocabulary(self.vocabulary))


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark("coco-stuff", "COCO-Stuff-171 train", "coco_stuff171", "coco-stuff/images/train2017",
                  "coco-stuff/annotations_detectron2/train2017", ".png", 255, "coco-stuff"),
        Benchmark("coco-stuff-val", "COCO-Stuff-171 val", "coco_stuff171", "coco-stuff/images/val2017",
                  "coco-stuff/annotations_detectron2/val2017", ".png", 255, "coco-stuff"),
        Benchmark("ade150", "ADE20K-150", "ade150", "ADEChallengeData2016/images/validation",
                  "ADEChallengeData2016/annotations_detectron2/validation", ".png", 255, "ade20k"),
        Benchmark("ade847", "ADE20K-847", "ade847", "ADE20K_2021_17_01/images_detectron2/validation",
                  "ADE20K_2021_17_01/annotations_detectron2/validation", ".tif", 65535, "ade20k-full"),
        Benchmark("pc59", "Pascal-Context-59", "pc59", "VOCdevkit/VOC2010/JPEGImages",
                  "VOCdevkit/VOC2010/annotations_detectron2/pc59_val", ".png", 255, "pascal-context"),
        Benchmark("pc459", "Pascal-Context-459", "pc459", "VOCdevkit/VOC2010/JPEGImages",
                  "VOCdevkit/VOC2010/annotations_detectron2/pc459_val", ".tif", 65535, "pascal-context"),
        Benchmark("voc20", "PASCAL VOC-20", "voc20", "VOCdevkit/VOC2012/JPEGImages",
                  "VOCdevkit/VOC2012/annotations_detectron2/val", ".png", 255, "voc"),
        Benchmark("voc20b", "PASCAL VOC-20b", "voc20b", "VOCdevkit/VOC2012/JPEGImages",
                  "VOCdevkit/VOC2012/annotations_detectron2_bg/val", ".png", 255, "voc", background_from=20),
        Benchmark("voc21", "PASCAL VOC-21 val (WSSS)", "voc21", "VOCdevkit/VOC2012/JPEGImages",
                  "VOCdevkit/VOC2012/SegmentationClassAug", ".png", 255, "voc",
                  split_file="VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"),
        Benchmark("voc21-train", "PASCAL VOC-21 train (WSSS pseudo-labels)", "voc21", "VOCdevkit/VOC2012/JPEGImages",
                  "VOCdevkit/VOC2012/SegmentationClassAug", ".png", 255, "voc",
                  split_file="VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt"),
        Benchmark("coco81", "COCO-2014-81 val (WSSS)", "coco81", "coco2014/JPEGImages/val2014",
                  "coco2014/SegmentationClass/val2014", ".png", 255, "coco-2014"),
    ]
}

# Training sets on pseudo-labels (`ovss pseudolabel` output in data.pseudo_labels) -> their image-level label set.
PSEUDO_LABEL_SETS = {"voc-pseudo": "voc", "coco-pseudo": "coco", "toy-pseudo": "toy"}
# Training sets -> the vocabulary of their labels (None: the built-in toy set, or the pseudo-label sets' own).
TRAIN_SETS = {"coco-stuff": "coco_stuff171", "toy": None, "voc-pseudo": "voc21", "coco-pseudo": "coco81",
              "toy-pseudo": None}

# The six open-vocabulary benchmarks of the H-CLIP / InfoCLIP / CAT-Seg tables, in table order.
OVSS_BENCHMARKS = ("ade847", "pc459", "ade150", "pc59", "voc20", "voc20b")
TOY = "toy"


def known_benchmarks() -> list[str]:
    return [*BENCHMARKS, TOY]


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        hint = did_you_mean(name, known_benchmarks())
        raise UsageError(f"unknown benchmark '{name}'{hint}; known: {', '.join(known_benchmarks())}, all")
    return BENCHMARKS[name]


def expand_benchmarks(names: list[str]) -> list[str]:
    """Validate benchmark names; 'all' stands for the six open-vocabulary benchmarks."""
    expanded: list[str] = []
    for name in names:
        for item in OVSS_BENCHMARKS if name == "all" else [name]:
            if item != TOY:
                get_benchmark(item)
            if item not in expanded:
                expanded.append(item)
    return expanded


class DatasetMissingError(UsageError):
    """A prepared benchmark is not on disk (exit code 2: the fix is to prepare it or point --data-root at it)."""


def locate(benchmark: Benchmark, root: Path) -> tuple[Path, Path]:
    """Image and label folders of `benchmark` under `root`, or a DatasetMissingError saying what to run."""
    image_dir, label_dir = root / benchmark.image_dir, root / benchmark.label_dir
    for folder in (label_dir, image_dir):
        if not folder.is_dir():
            raise DatasetMissingError(
                f"{benchmark.title} not found: no folder {folder}; run `ovss prepare {benchmark.prepare} "
                f"--data-root {root}` or point --data-root / $OVSS_DATASETS at your prepared datasets"
            )
    return image_dir, label_dir
