"""Shared machinery of the converters: atomic writes, hard links, a resumable worker pool, counts."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ovss_cli.errors import OvssError

TEMP_MARK = ".ovss-tmp-"

# What a conversion job reports back.
WRITTEN = "written"
PRESENT = "present"  # all outputs existed already: skipped on a re-run
EMPTY = "empty"  # deliberately no output (e.g. a VOC-20 mask with nothing but ignore)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` (same suffix) that replaces `path` only if the block succeeds.

    An interrupted run therefore never leaves a truncated file under the final name, and a
    re-run that skips existing outputs cannot mistake a half-written file for a finished one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.stem}{TEMP_MARK}{os.getpid()}{path.suffix}")
    try:
        yield temp
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


def write_png(path: Path, label: np.ndarray) -> None:
    """Single-channel uint8 PNG, written atomically."""
    import cv2

    with atomic_path(path) as temp:
        if not cv2.imwrite(str(temp), np.ascontiguousarray(label, dtype=np.uint8)):
            raise OvssError(f"cannot write {path}; check free disk space and permissions")


def write_tiff(path: Path, label: np.ndarray) -> None:
    """Single-channel uint16 TIFF, written atomically."""
    import tifffile

    with atomic_path(path) as temp:
        tifffile.imwrite(str(temp), np.ascontiguousarray(label, dtype=np.uint16))


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` to `target` (no extra disk space); copy when linking is impossible."""
    if target.exists():
        return
    with atomic_path(target) as temp:
        try:
            os.link(source, temp)
        except OSError:
            shutil.copy2(source, temp)


def sweep_temp_files(*folders: Path) -> int:
    """Delete temporary files a killed run left behind; returns how many."""
    removed = 0
    for folder in folders:
        if folder.is_dir():
            for leftover in folder.glob(f".*{TEMP_MARK}*"):
                leftover.unlink(missing_ok=True)
                removed += 1
    return removed


def list_files(folder: Path, suffix: str) -> list[Path]:
    """Sorted files of `folder` ending in `suffix`, without hidden ones (our temporary files are hidden)."""
    return sorted(path for path in folder.glob(f"*{suffix}") if not path.name.startswith("."))


def read_indexed_png(path: Path) -> np.ndarray:
    """Class indices of a PNG: palette PNGs (VOC's SegmentationClass) give their indices, not colours."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode not in ("P", "L", "I", "I;16"):
            raise OvssError(f"{path} is a {image.mode} image; expected a single-channel or palette label PNG")
        return np.array(image)


@dataclass(frozen=True)
class Job:
    """One unit of conversion: `function(*args)` must create every path in `outputs`."""

    outputs: tuple[Path, ...]
    args: tuple


def _call(function: Callable[..., str], args: tuple) -> str:
    return function(*args)


def run_jobs(function: Callable[..., str], jobs: Sequence[Job], workers: int, description: str,
             progress: bool = True) -> Counter:
    """Run the jobs whose outputs are not all present yet, in `workers` processes.

    `function` must be a module-level function (it is pickled to the workers) returning
    WRITTEN or EMPTY. Returns how many jobs ended in each state, PRESENT included.
    """
    from ovss_cli.progress import track

    for folder in {path.parent for job in jobs for path in job.outputs}:
        sweep_temp_files(folder)
    counts: Counter = Counter()
    pending = []
    for job in jobs:
        if all(path.exists() for path in job.outputs):
            counts[PRESENT] += 1
        else:
            pending.append(job)
    if not pending:
        return counts
    if workers <= 1 or len(pending) == 1:
        results: Iterator[str] = (function(*job.args) for job in pending)
        for status in track(results, len(pending), description, enabled=progress):
            counts[status] += 1
        return counts
    chunksize = max(1, min(64, len(pending) // (workers * 8)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_call, [function] * len(pending), [job.args for job in pending], chunksize=chunksize)
        for status in track(results, len(pending), description, enabled=progress):
            counts[status] += 1
    return counts


@dataclass(frozen=True)
class SplitCount:
    """How many items of one output split were found in the inputs and accounted for by outputs."""

    name: str
    found: int
    done: int
    official: int | None

    @classmethod
    def from_counts(cls, name: str, found: int, counts: Counter, official: int | None) -> "SplitCount":
        return cls(name, found, counts[WRITTEN] + counts[PRESENT] + counts[EMPTY], official)


def check_counts(splits: Sequence[SplitCount], strict: bool) -> list[str]:
    """One summary line per split. Missing outputs are always an error; a split whose input
    count differs from the official size is an error when `strict`, else a warning line."""
    lines = []
    for split in splits:
        if split.done != split.found:
            raise OvssError(f"{split.name}: {split.done} of {split.found} items were converted; "
                            "run the same command again to finish")
        line = f"{split.name}: {split.done} items"
        if split.official is not None and split.found != split.official:
            message = (f"{split.name}: found {split.found} items but the official split has {split.official}; "
                       "some raw files are missing (pass --no-count-check to accept a subset)")
            if strict:
                raise OvssError(message)
            line = f"warning: {message}"
        lines.append(line)
    return lines


def echo(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
