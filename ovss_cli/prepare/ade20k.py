"""ADE20K-150 (ADEChallengeData2016): value - 1, so 0 ("other") becomes the ignore value 255."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ovss_cli.data.io import write_label
from ovss_cli.prepare.common import WRITTEN, Job, SplitCount, list_files, read_indexed_png, run_jobs
from ovss_cli.prepare.context import Context
from ovss_cli.prepare.registry import OFFICIAL_COUNTS


def to_train_ids(label: np.ndarray) -> np.ndarray:
    """1..150 -> 0..149; 0 wraps to 255 (uint8 arithmetic)."""
    return (label.astype(np.uint8) - np.uint8(1)).astype(np.uint8)


def convert_one(source: Path, target: Path) -> str:
    write_label(target, to_train_ids(read_indexed_png(source)))
    return WRITTEN


def convert(context: Context) -> list[SplitCount]:
    base = context.root / "ADEChallengeData2016"
    sources = list_files(base / "annotations" / "validation", ".png")
    out_dir = base / "annotations_detectron2" / "validation"
    jobs = [Job((out_dir / s.name,), (s, out_dir / s.name)) for s in sources]
    done = run_jobs(convert_one, jobs, context.workers, "ade150 validation", context.progress)
    name = "ade150 validation"
    return [SplitCount.from_counts(name, len(sources), done, OFFICIAL_COUNTS[name])]
