"""One `ovss prepare DATASET` run: raw files into place, convert, check the counts."""

from __future__ import annotations

import importlib
from pathlib import Path

from ovss_cli.prepare.common import check_counts
from ovss_cli.prepare.context import Context
from ovss_cli.prepare.registry import get_dataset
from ovss_cli.prepare.sources import ensure_raw_files


def remove_empty_folders(root: Path) -> None:
    """Remove `root` and every folder under it that holds no file."""
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()


def prepare_dataset(dataset: str, root: Path, source: Path | None = None, download: bool = False,
                    workers: int = 1, strict_counts: bool = True, progress: bool = True) -> list[str]:
    """Prepare `dataset` under `root`; returns one summary line per output split.

    Re-running is cheap: extracted archives and finished label files are skipped.
    """
    spec = get_dataset(dataset)
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        ensure_raw_files(spec, root, source, download, progress)
    except BaseException:
        if created:  # a run that fetched nothing leaves no empty folders behind (partial downloads stay)
            remove_empty_folders(root)
        raise
    converter = importlib.import_module(f"ovss_cli.prepare.{spec.module}")
    splits = converter.convert(Context(root=root, workers=max(1, workers), progress=progress))
    return check_counts(splits, strict_counts)
