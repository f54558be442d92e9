"""COCO 2014 instances -> 81-class semantic masks for weakly-supervised segmentation.

Category ids (1..90 with gaps) map to 1..80 in sorted id order; 0 is background. Where
instances overlap, the smaller one (by annotated area) keeps the pixel, as coco2voc, the
converter most WSSS works use, does; crowd regions take their class like any instance.
Images without any annotation get no mask (they are not part of the WSSS splits: 82,081
train and 40,137 val images remain).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from ovss_cli.data.io import write_label
from ovss_cli.errors import OvssError
from ovss_cli.prepare.common import WRITTEN, Job, SplitCount, run_jobs
from ovss_cli.prepare.context import Context
from ovss_cli.prepare.registry import OFFICIAL_COUNTS

SPLITS = ("train2014", "val2014")


def instance_mask(segmentation, height: int, width: int) -> np.ndarray:
    """Binary mask of a polygon list, an uncompressed RLE or a compressed RLE."""

    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def semantic_mask(height: int, width: int, instances: list[tuple[float, int, object]]) -> np.ndarray:
    """instances: (area, class 1..80, segmentation). Smallest first; a pixel keeps its first class."""
    label = np.zeros((height, width), dtype=np.uint8)
    for _, class_index, segmentation in sorted(instances, key=lambda item: item[0]):
        free = (label == 0) & instance_mask(segmentation, height, width)
        label[free] = class_index
    return label


def convert_one(target: Path, height: int, width: int, instances: list) -> str:
    write_label(target, semantic_mask(height, width, instances))
    return WRITTEN


def category_classes(categories: list[dict]) -> dict[int, int]:
    """COCO category id -> 1..80 in sorted id order."""
    return {category_id: index for index, category_id in enumerate(sorted(c["id"] for c in categories), start=1)}


def convert(context: Context) -> list[SplitCount]:
    base = context.root / "coco2014"
    counts = []
    for split in SPLITS:
        path = base / "annotations" / f"instances_{split}.json"
        if not path.is_file():
            raise OvssError(f"{path} not found; it ships in annotations_trainval2014.zip")
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        classes = category_classes(data["categories"])
        if len(classes) != 80:
            raise OvssError(f"{path} lists {len(classes)} categories instead of COCO's 80")
        per_image = defaultdict(list)
        for annotation in data["annotations"]:
            per_image[annotation["image_id"]].append(
                (annotation["area"], classes[annotation["category_id"]], annotation["segmentation"]))
        out_dir = base / "SegmentationClass" / split
        jobs = []
        for image in data["images"]:
            if image["id"] in per_image:
                target = out_dir / (Path(image["file_name"]).stem + ".png")
                jobs.append(Job((target,), (target, image["height"], image["width"], per_image[image["id"]])))
        del data
        done = run_jobs(convert_one, jobs, context.workers, f"coco81 {split}", context.progress)
        name = f"coco81 {split}"
        counts.append(SplitCount.from_counts(name, len(jobs), done, OFFICIAL_COUNTS[name]))
    return counts
