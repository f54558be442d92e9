"""COCO-Stuff: stuffthingmaps (182 ids, 0-based, 255 unlabeled) -> the 171 train ids of detectron2/CAT-Seg.

The stuffthingmaps PNGs store COCO category id - 1. COCO defines 91 thing ids of which 11 were
never annotated; removing them from 0..181 leaves the 171 classes actually used, and their
position in that ordered list is the train id (the order of ovss' coco_stuff171 vocabulary).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ovss_cli.data.io import write_label
from ovss_cli.prepare.common import WRITTEN, Job, SplitCount, list_files, read_indexed_png, run_jobs
from ovss_cli.prepare.context import Context
from ovss_cli.prepare.registry import OFFICIAL_COUNTS

# COCO thing category ids (1-based) with no annotations: 12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91.
UNUSED_ZERO_BASED_IDS = frozenset(i - 1 for i in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91))
NUM_STUFFTHING_IDS = 182
SPLITS = ("train2017", "val2017")


def train_id_lut() -> np.ndarray:
    """256-entry lookup: stuffthingmap value -> train id (0..170), everything else -> 255."""
    lut = np.full(256, 255, dtype=np.uint8)
    used = [i for i in range(NUM_STUFFTHING_IDS) if i not in UNUSED_ZERO_BASED_IDS]
    lut[used] = np.arange(len(used), dtype=np.uint8)
    return lut


def convert_one(source: Path, target: Path, lut: np.ndarray) -> str:
    write_label(target, lut[read_indexed_png(source)])
    return WRITTEN


def convert(context: Context) -> list[SplitCount]:
    base = context.root / "coco-stuff"
    lut = train_id_lut()
    counts = []
    for split in SPLITS:
        sources = list_files(base / "annotations" / split, ".png")
        out_dir = base / "annotations_detectron2" / split
        jobs = [Job((out_dir / s.name,), (s, out_dir / s.name, lut)) for s in sources]
        done = run_jobs(convert_one, jobs, context.workers, f"coco-stuff {split}", context.progress)
        name = f"coco-stuff {split}"
        counts.append(SplitCount.from_counts(name, len(sources), done, OFFICIAL_COUNTS[name]))
    return counts
