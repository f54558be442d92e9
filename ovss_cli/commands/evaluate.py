"""`ovss evaluate`: mIoU on the open-vocabulary (and WSSS) benchmarks, comparable with the published tables."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from ovss_cli.commands import common
from ovss_cli.data.benchmarks import TOY, expand_benchmarks
from ovss_cli.data.root import resolve_data_root
from ovss_cli.fileio import write_json
from ovss_cli.runtime.distributed import (
    check_process_options,
    init_distributed,
    process_device,
    relaunch_if_needed,
    shutdown_distributed,
)


def evaluate(
    bench: List[str] = typer.Option(..., "--bench", "-b", help="Benchmark (repeatable): ade847, pc459, ade150, pc59, voc20, voc20b, voc21, coco81, toy, or all (the six OVSS sets)."),
    checkpoint: Optional[Path] = common.CheckpointOption,
    clip_model: Optional[str] = common.ClipModelOption,
    pretrained: Optional[str] = common.PretrainedOption,
    image_size: Optional[int] = common.ImageSizeOption,
    templates: str = common.TemplatesOption,
    mode: str = common.ModeOption,
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Prepared datasets.", show_default="$OVSS_DATASETS, $DETECTRON2_DATASETS, ./datasets"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate only the first N images of each benchmark (quick checks)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write all metrics (incl. per-class IoU) to this JSON file."),
    save_predictions: Optional[Path] = typer.Option(None, "--save-predictions", help="Folder for each image's <name>_label.png (palette PNG of the predicted ids) and <name>_overlay.png (with its legend), one subfolder per benchmark."),
    gpus: int = typer.Option(1, "--gpus", min=1, help="GPUs (one process each) on this machine; images are sharded, the confusion matrix all-reduced."),
    nproc: Optional[int] = common.NprocOption,
    precision: str = common.PrecisionOption,
    device: str = common.DeviceOption,
) -> None:
    """Evaluate a model (or zero-shot CLIP) and print mIoU, fwIoU, pixel and mean accuracy.

    mIoU averages the classes that have ground-truth pixels (the rule of the published tables).

    Example: ovss evaluate --bench ade847 --bench pc459 --checkpoint runs/hclip/20260101-120000 --gpus 4
    """

    common.check_mode(mode)
    common.check_device_and_precision(device, precision)
    check_process_options(gpus, nproc)
    device = process_device(device, nproc)
    names = expand_benchmarks(list(bench))
    tiny = all(n == TOY for n in names)
    from ovss_cli.data.dataset import SegmentationSet

    # Data, weights and devices fail here, once, not once per rank after the relaunch.
    root = resolve_data_root(data_root)
    datasets = [SegmentationSet(name, root, limit) for name in names]
    common.check_model_source(checkpoint, clip_model, pretrained, tiny)
    if relaunch_if_needed(gpus, nproc=nproc):
        return
    from ovss_cli.evaluate.runner import evaluate_dataset
    from ovss_cli.runtime.precision import resolve_precision

    dist = init_distributed(common.resolve_device(device))
    try:
        precision = resolve_precision(precision, dist.device)
        segmenter = common.build_segmenter(checkpoint, clip_model, pretrained, image_size, templates, dist.device,
                                           tiny_default=tiny)
        results = {ds.name: evaluate_dataset(segmenter, ds, mode, dist, precision,
                                             save_dir=save_predictions / ds.name if save_predictions else None)
                   for ds in datasets}
        if dist.is_main:
            print_table(results, datasets)
            if out is not None:
                payload = {"checkpoint": str(checkpoint) if checkpoint else None, "mode": mode, "results": results}
                write_json(out, payload)
                typer.echo(f"wrote {out}")
            if save_predictions is not None:
                typer.echo(f"wrote label maps and overlays to {save_predictions}")
    finally:
        shutdown_distributed()


def print_table(results: dict, datasets) -> None:
    table = Table(title="ovss evaluate")
    for column in ("benchmark", "mIoU", "fwIoU", "pACC", "mACC", "classes w/ GT", "images"):
        table.add_column(column, justify="left" if column == "benchmark" else "right")
    titles = {ds.name: ds.spec.title for ds in datasets}
    fmt = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"
    for name, m in results.items():
        table.add_row(titles[name], fmt(m["mIoU"]), fmt(m["fwIoU"]), fmt(m["pACC"]), fmt(m["mACC"]),
                      f"{m['classes_with_gt']}/{m['num_classes']}", str(m["images"]))
    Console(width=max(100, Console().width)).print(table)
