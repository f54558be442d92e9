"""One `ovss prepare DATASET` run: raw files into place, convert, check the counts."""

from __future__ import annotations

import importlib
from pathlib import Path

from ovss_cli.prepare.common import check_counts
from ovss_cli.prepare.context import Context
from ovss_cli.prepare.registry import get_dataset
from ovss_cli.prepare.sources import ensure_raw_files


def prepare_dataset(dataset: str, root: Path, source: Path | None = None, download: bool = False,
                    workers: int = 1, strict_counts: bool = True, progress: bool = True) -> list[str]:
    """Prepare `dataset` under `root`; returns one summary line per output split.

    Re-running is cheap: extracted archives and finished label files are skipped.
    """
    spec = get_dataset(dataset)
    root.mkdir(parents=True, exist_ok=True)
    ensure_raw_files(spec, root, source, download, progress)
    converter = importlib.import_module(f"ovss_cli.prepare.{spec.module}")
    splits = converter.convert(Context(root=root, workers=max(1, workers), progress=progress))
    return check_counts(splits, strict_counts)
