"""`ovss benchmark train|eval|pseudolabel`: parse the options and run the measurement (ovss_cli/perf/bench.py).

Each measures the real step / inference next to the ceiling set by the CLIP image encoder alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ovss_cli.commands import common
from ovss_cli.data.benchmarks import TOY, get_benchmark
from ovss_cli.data.toy import TOY_CLASSES
from ovss_cli.data.vocab import load_vocabulary
from ovss_cli.recipes import load_recipe


def _device(option: str, parsed) -> str:
    """--device, else the recipe's train.device when the option is left at auto."""
    return _process_for(option if option != "auto" or parsed.train.device == "auto" else parsed.train.device)


def _process_for(option: str) -> str:
    """The device, with this process set up as `ovss train` and `ovss evaluate` set theirs up."""
    from ovss_cli.runtime.distributed import init_distributed

    return init_distributed(common.resolve_device(option)).device


def benchmark_train(
    recipe: Path = typer.Argument(..., help="Recipe YAML whose training step is measured."),
    overrides: Optional[List[str]] = typer.Argument(None, help="Dotted overrides, e.g. train.precision=fp16-mixed."),
    steps: int = typer.Option(10, "--steps", min=1, help="Timed steps."),
    warmup: int = typer.Option(3, "--warmup", min=0, help="Untimed warm-up steps first (at least one, which counts FLOPs)."),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, help="Images per step.", show_default="the recipe's data.batch_size"),
    profile: Optional[Path] = typer.Option(None, "--profile", help="Folder to write the top operators of one step and of the encoder into (torch.profiler tables)."),
    device: str = common.DeviceOption,
) -> None:
    """Training speed (img/s, ms/step, peak memory) of a recipe's full step vs. its CLIP image encoder alone,
    with a cost model: FLOPs per part of the step and achieved FLOP/s next to the device's peak.

    Example: ovss benchmark train recipes/catseg_vitb.yaml --batch 8 --steps 20 --profile runs/bench
    """
    parsed = load_recipe(recipe, list(overrides or []))
    from ovss_cli.perf import bench

    bench.train_step_report(parsed, _device(device, parsed), steps, warmup, batch, profile)


def benchmark_eval(
    recipe: Path = typer.Argument(..., help="Recipe YAML whose model is measured (random weights)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="Dotted overrides, e.g. train.precision=fp16-mixed."),
    bench: str = typer.Option("ade150", "--bench", "-b", help="Benchmark whose vocabulary is used (the class count drives the cost): ade847, pc459, ade150, pc59, voc20, voc20b, toy, ..."),
    images: int = typer.Option(10, "--images", min=1, help="Timed images."),
    warmup: int = typer.Option(2, "--warmup", min=0, help="Untimed warm-up images first."),
    image_size: int = typer.Option(640, "--image-size", min=16, help="Side of the synthetic input images."),
    mode: str = common.ModeOption,
    device: str = common.DeviceOption,
) -> None:
    """Inference speed (img/s) of a recipe's model on one benchmark's vocabulary vs. its CLIP image encoder alone.

    Example: ovss benchmark eval recipes/catseg_vitb.yaml --bench pc459 --images 20
    """
    common.check_mode(mode)
    parsed = load_recipe(recipe, list(overrides or []))
    names = list(TOY_CLASSES) if bench == TOY else list(load_vocabulary(get_benchmark(bench).vocabulary))
    from ovss_cli.perf import bench as measure

    measure.inference_report(parsed, names, bench, _device(device, parsed), images, warmup, image_size, mode)


def benchmark_pseudolabel(
    images: int = typer.Option(8, "--images", min=1, help="Synthetic VOC-sized images (alternating 375x500 and 500x333)."),
    batch: int = typer.Option(8, "--batch", min=1, help="Images per batch in the batched rows."),
    classes: int = typer.Option(2, "--classes", min=1, max=20, help="Present classes per image (VOC averages 1.5)."),
    clip_model: str = typer.Option("ViT-B-16", "--clip-model", help="open_clip ViT (random weights)."),
    device: str = common.DeviceOption,
) -> None:
    """CLIP-ES pseudo-label speed (img/s): one image at a time vs batched, without and with the dense CRF.

    Random weights and synthetic images (speed does not depend on them), VOC's 20 classes and 25 background words.
    Also times the dense CRF alone on a 375x500 image with 21 labels.

    Example: OMP_NUM_THREADS=2 ovss benchmark pseudolabel --images 8 --device cpu
    """
    from ovss_cli.perf import bench

    bench.pseudolabel_report(images, batch, classes, clip_model, _process_for(device))
