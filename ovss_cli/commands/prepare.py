"""`ovss prepare`: convert the official dataset downloads into the prepared (CAT-Seg / detectron2) layout."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ovss_cli.data.root import resolve_data_root
from ovss_cli.prepare.registry import get_dataset

DATASET_NAMES = "coco-stuff, ade20k, ade20k-full, pascal-context, voc, coco-2014"


def prepare(
    dataset: str = typer.Argument(..., help=f"Dataset to prepare: {DATASET_NAMES}."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Where prepared datasets live.", show_default="$OVSS_DATASETS, else $DETECTRON2_DATASETS, else ./datasets"),
    source: Optional[Path] = typer.Option(None, "--from", help="Folder holding the official archives or their extracted folders.", show_default="<data-root>/downloads"),
    download: bool = typer.Option(False, "--download", help="Download missing archives from the official URLs (resumable, checksum-verified)."),
    workers: int = typer.Option(min(8, os.cpu_count() or 1), "--workers", "-j", min=1, help="Parallel worker processes for the conversion."),
    verify: bool = typer.Option(False, "--verify", help="Only check an existing prepared folder: files present, label values in range, image/label pairs match."),
    count_check: bool = typer.Option(True, "--count-check/--no-count-check", help="Fail when a split's size differs from the official one (--no-count-check: warn, for subsets)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars (plain periodic lines when not on a terminal)."),
) -> None:
    """Convert the official downloads of DATASET into the layout CAT-Seg / detectron2 users have.

    Archives are taken from --from (default <data-root>/downloads) or downloaded with --download; re-running skips what is already done. See datasets.md for sources, licences and layouts.

    Example: ovss prepare voc --from ~/Downloads --data-root /data/datasets --workers 8

    Example: ovss prepare ade20k --download && ovss prepare ade20k --verify
    """

    spec = get_dataset(dataset)
    root = resolve_data_root(data_root)
    if verify:
        from ovss_cli.prepare.verify import verify_dataset

        lines = verify_dataset(spec.name, root, workers, count_check, progress)
    else:
        from ovss_cli.prepare.pipeline import prepare_dataset

        lines = prepare_dataset(spec.name, root, source, download, workers, count_check, progress)
    for line in lines:
        typer.echo(line)
    typer.echo(f"{spec.name}: {'verified' if verify else 'prepared'} under {root}")
