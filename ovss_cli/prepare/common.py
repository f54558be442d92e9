"""Shared machinery of the converters: hard links, a resumable worker pool, counts."""

from __future__ import annotations

import os
import shutil
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ovss_cli.data.io import read_indexed_png  # noqa: F401  (the converters' reader of label PNGs)
from ovss_cli.errors import OvssError
from ovss_cli.fileio import atomic_path, remove_temporaries
from ovss_cli.progress import track

# What a conversion job reports back.
WRITTEN = "written"
PRESENT = "present"  # all outputs existed already: skipped on a re-run
EMPTY = "empty"  # deliberately no output (e.g. a VOC-20 mask with nothing but ignore)


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` to `target` (no extra disk space); copy when linking is impossible."""
    if target.exists():
        return
    with atomic_path(target, durable=False) as temp:
        try:
            os.link(source, temp)
        except OSError:
            shutil.copy2(source, temp)


def list_files(folder: Path, suffix: str) -> list[Path]:
    """Sorted files of `folder` ending in `suffix`, without hidden ones (our temporary files are hidden)."""
    return sorted(path for path in folder.glob(f"*{suffix}") if not path.name.startswith("."))


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

    for folder in {path.parent for job in jobs for path in job.outputs}:
        remove_temporaries(folder)
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
