"""`ovss runs`: a run's training curves (loss, lr, mIoU) as a table and a PNG, or several runs side by side."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table


def _display_names(runs: list[Path]) -> list[str]:
    """Short distinct names: the last two folders (runs/<recipe>/<timestamp> -> <recipe>/<timestamp>)."""
    names = ["/".join(run.resolve().parts[-2:]) for run in runs]
    return names if len(set(names)) == len(names) else [str(run) for run in runs]


def runs(
    run_dirs: List[Path] = typer.Argument(..., help="Run folders (runs/<recipe>/<timestamp>), or runs/<recipe> for all its runs."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Chart PNG.", show_default="RUN/curves.png for one run, curves.png for several"),
    rows: int = typer.Option(12, "--rows", min=2, help="Steps shown in the table of a single run."),
) -> None:
    """Show training curves from metrics.jsonl: a summary per run, the steps of a single run, and a PNG chart
    (one panel each for loss, learning rate and every mIoU; one colour per run).

    Runs log with TensorBoard too when it is installed (`tensorboard --logdir runs`).

    Example: ovss runs runs/quickstart/20260101-120000 runs/quickstart_hclip/20260101-130000
    """

    from ovss_cli.engine.curves import (
        curve_keys,
        draw_curves,
        find_runs,
        merged_rows,
        read_records,
        summarize,
        write_png,
    )

    found = find_runs(list(run_dirs))
    names = _display_names(found)
    loaded = [(name, read_records(run)) for name, run in zip(names, found)]
    console = Console(width=max(100, Console().width))
    keys: list[str] = []
    for _, records in loaded:
        keys += [key for key in curve_keys(records) if key not in keys]
    summary = Table(title="ovss runs", title_justify="left")
    summary.add_column("run", no_wrap=True)
    summary.add_column("steps", justify="right")
    for key in keys:
        summary.add_column({"loss": "loss last (min)", "lr": "lr last"}.get(key, f"{key} last (best @step)"),
                           justify="right")
    for name, records in loaded:
        stats = summarize(records)
        cells = [name, str(stats["steps"])]
        for key in keys:
            value = stats.get(key)
            if value is None:
                cells.append("")
            elif key == "loss":
                cells.append(f"{value['last']:.4f} ({value['min']:.4f})")
            elif key == "lr":
                cells.append(f"{value['last']:.3g}")
            else:
                cells.append(f"{value['last']:.2f} ({value['max']:.2f} @{value['best_step']})")
        summary.add_row(*cells)
    console.print(summary)
    if len(loaded) == 1:
        name, records = loaded[0]
        steps = Table(title=f"{name}: {len(records)} records", title_justify="left")
        for column in ("step", *keys):
            steps.add_column(column, justify="right")
        for row in merged_rows(records, keys, rows):
            steps.add_row(str(row["step"]), *("" if row[k] is None else f"{row[k]:.4g}" for k in keys))
        console.print(steps)
    chart = out if out is not None else (found[0] / "curves.png" if len(found) == 1 else Path("curves.png"))
    write_png(chart, draw_curves(loaded))
    typer.echo(f"wrote {chart}")
