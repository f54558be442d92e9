"""Measurements behind `ovss benchmark`: the Trainer's own step, inference and pseudo-labels, each next to
the ceiling set by the CLIP image encoder alone at the same batch, resolution and precision.

Weights are random (speed does not depend on them) and inputs synthetic, so no download or dataset is needed.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import typer
from rich.console import Console
from rich.table import Table

from ovss_cli.clip.config import build_dense_clip
from ovss_cli.clip.zoo import create_clip
from ovss_cli.engine.trainer import Trainer, peak_memory_mb
from ovss_cli.evaluate.inference import SlidingWindow, predict_scores
from ovss_cli.methods.registry import build_model
from ovss_cli.perf.flops import count_part_flops
from ovss_cli.perf.peak import known_peak, measured_matmul_flops
from ovss_cli.perf.profile import write_operator_profile
from ovss_cli.runtime.distributed import DistInfo
from ovss_cli.runtime.precision import autocast, resolve_precision
from ovss_cli.runtime.seeding import seed_everything
from ovss_cli.wsss.clip_es import ClipEsCams, pseudo_label
from ovss_cli.wsss.clip_features import ClipEsBackbone
from ovss_cli.wsss.config import ClipEsConfig, CrfParams
from ovss_cli.wsss.crf import dense_crf
from ovss_cli.wsss.names import VOC_BACKGROUND_WORDS, VOC_PROMPT_NAMES

VOC_SIZES = ((375, 500), (500, 333))  # the two most common VOC 2012 image shapes (height, width)


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: str) -> float:
    return peak_memory_mb(torch.device(device))


def _allocated_mb(device: str) -> float:
    """Memory held by live tensors now (CUDA); 0 elsewhere (a CPU's peak is the process RSS)."""
    return torch.cuda.memory_allocated(device) / 2**20 if device.startswith("cuda") else 0.0


@dataclasses.dataclass
class Timings:
    """Wall and process-CPU seconds of each timed call of one kind, the peak memory over them, and the most
    that one call added to what was allocated when it started (on CUDA)."""

    wall: list[float] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)
    peak_mb: float = 0.0
    added_mb: float = 0.0

    def median(self, clock: str = "wall") -> float:
        return statistics.median(getattr(self, clock))


def time_in_turns(calls: dict[str, Callable[[], None]], rounds: int, warmup: int, device: str) -> dict[str, Timings]:
    """Each call `warmup` times, then `rounds` rounds in which every call runs once, in turn.

    A machine's speed drifts by several per cent over minutes (other tenants of its memory bus, clocks);
    taking turns spreads the drift over both sides of a ratio, where timing one call's repeats and then the
    other's puts it all on one side.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    _synchronize(device)  # after this, each timed call ends synchronised (`_wall_and_cpu`)
    timings = {name: Timings() for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            _reset_peak(device)
            start = _allocated_mb(device)
            wall, cpu = _wall_and_cpu(call, device)
            timing, peak = timings[name], _peak_mb(device)
            timing.wall.append(wall)
            timing.cpu.append(cpu)
            timing.peak_mb, timing.added_mb = max(timing.peak_mb, peak), max(timing.added_mb, peak - start)
    return timings


def time_calls(call: Callable[[], None], repeats: int, warmup: int, device: str) -> tuple[float, float]:
    """(median seconds per call, peak memory MB) of `call`, warm-up calls excluded, device synchronised."""
    timings = time_in_turns({"call": call}, repeats, warmup, device)["call"]
    return timings.median(), timings.peak_mb


def _encoder(recipe, device: str):
    """The recipe's CLIP image encoder alone (random weights, every parameter trainable)."""
    dense, _ = build_dense_clip(dataclasses.replace(recipe.clip, pretrained=""))
    visual = dense.clip.visual.to(device)
    for param in visual.parameters():
        param.requires_grad_(True)
    return visual


def _training_step(parsed, device: str, precision: str, batch: int):
    """(model, one call of the Trainer's own step) on the recipe's model: forward, loss, backward, clipping, AdamW."""
    seed_everything(parsed.seed)
    size = parsed.data.crop_size
    recipe = dataclasses.replace(parsed, train=dataclasses.replace(parsed.train, precision=precision),
                                 data=dataclasses.replace(parsed.data, batch_size=batch),
                                 optim=dataclasses.replace(parsed.optim, accumulate_steps=1),
                                 clip=dataclasses.replace(parsed.clip, pretrained=""))
    # built as for training (InfoCLIP's frozen teacher included) from random CLIP weights
    model = build_model(recipe, pretrained=True)
    with tempfile.TemporaryDirectory() as run_dir:  # the step writes nothing; a Trainer needs a folder
        trainer = Trainer(recipe, model, DistInfo(device=device), Path(run_dir))
    trainer.build_optimizer()
    inputs = {"image": torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device),
              "label": torch.randint(0, len(model.train_classes), (batch, size, size), device=device)}
    batches = itertools.repeat(inputs)
    trainer.model.train()
    return trainer.model, lambda: trainer.train_step(trainer.step_model, batches)


def _counted(call: Callable[[], None], model) -> tuple[Callable[[], None], dict]:
    """The call, its first run counting FLOPs per part into the returned dict's 'flops' (a warm-up run)."""
    found: dict = {}

    def run() -> None:
        if "flops" in found:
            call()
        else:
            found["flops"] = count_part_flops(model, call)

    return run, found


def _time_inference(parsed, names: list[str], device: str, precision: str, image_size: int, mode: str,
                    images: int, warmup: int) -> tuple[tuple[float, float], float]:
    """((seconds, peak MB) per image, text-encoding seconds) of the recipe's model on one vocabulary."""
    seed_everything(parsed.seed)
    model = build_model(parsed, pretrained=False).to(device).eval()
    start = time.perf_counter()
    with autocast(precision, device):
        model.set_vocabulary(names)
    _synchronize(device)
    text_seconds = time.perf_counter() - start
    image = torch.randn(3, image_size, image_size, device=device)

    @torch.no_grad()
    def infer() -> None:
        with autocast(precision, device):
            scores = predict_scores(image, model.scores, mode, model.window, (image_size, image_size))
        scores.argmax(dim=0)

    return time_calls(infer, images, warmup, device), text_seconds


def _report(title: str, rows: list[tuple[str, int, float, float]], memory_note: str) -> None:
    table = Table(title=title)
    for column in ("what", "batch", "img/s", "ms/step", f"peak memory MB{memory_note}"):
        table.add_column(column, justify="left" if column == "what" else "right")
    for what, batch, seconds, memory in rows:
        table.add_row(what, str(batch), f"{batch / seconds:.2f}", f"{1000 * seconds:.1f}", f"{memory:.0f}")
    Console(width=max(110, Console().width)).print(table)
    ratio = (rows[0][1] / rows[0][2]) / (rows[1][1] / rows[1][2])
    typer.echo(f"{rows[0][0]} runs at {100 * ratio:.1f}% of the image-encoder-only ceiling")


def _report_costs(step, step_seconds: float, encoder_flops: int, encoder_seconds: float, device: str,
                  precision: str) -> None:
    """FLOPs of each part of the step, and achieved FLOP/s of the step and of the encoder next to the peak."""
    table = Table(title="cost model: FLOPs of one training step (forward + backward), by part")
    for column in ("part", "GFLOP/step", "share"):
        table.add_column(column, justify="left" if column == "part" else "right")
    for part, flops in step.parts.items():
        if flops:
            table.add_row(part, f"{flops / 1e9:.4g}", f"{100 * step.share(part):.1f}%")
    table.add_row("total", f"{step.total / 1e9:.4g}", "100%")
    Console(width=max(110, Console().width)).print(table)
    dtype = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}.get(precision, torch.float32)
    measured = measured_matmul_flops(torch.device(device), dtype)
    sheet = known_peak(torch.device(device), dtype)
    peak = sheet or measured
    typer.echo(f"device peak: {peak / 1e9:.0f} GFLOP/s ({'data sheet' if sheet else 'measured 1024^3 matmul'}"
               f"{f'; measured matmul {measured / 1e9:.0f} GFLOP/s' if sheet else ''}, {dtype}, "
               f"{torch.get_num_threads()} threads)")
    for what, flops, seconds in (("training step", step.total, step_seconds),
                                 ("image encoder alone", encoder_flops, encoder_seconds)):
        rate = flops / seconds
        typer.echo(f"{what}: {flops / 1e9:.1f} GFLOP in {1000 * seconds:.1f} ms = {rate / 1e9:.1f} GFLOP/s, "
                   f"{100 * rate / peak:.1f}% of peak")
    if encoder_flops:
        typer.echo(f"by FLOPs the step costs {step.total / encoder_flops:.2f} image encoders; "
                   f"by time {step_seconds / encoder_seconds:.2f}")


def _profile(call: Callable[[], None], folder: Path, name: str) -> Path:
    return write_operator_profile(call, folder, name)


def _synthetic_voc_images(count: int, seed: int = 0) -> list:
    """VOC-sized RGB uint8 images, alternating 375 x 500 and 500 x 333: smooth colour fields with mild noise."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for i in range(count):
        height, width = VOC_SIZES[i % len(VOC_SIZES)]
        field = torch.rand(1, 3, 6, 8, generator=generator) * 255
        smooth = F.interpolate(field, size=(height, width), mode="bilinear", align_corners=False)[0]
        noisy = smooth + 2 * torch.randn(smooth.shape, generator=generator)
        images.append(noisy.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy().copy())
    return images


def _wall_and_cpu(call: Callable[[], None], device: str) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one call, device synchronised; CPU time is what a shared
    machine's other load does not inflate."""
    _synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    _synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def _pseudolabel_rows(cams, images: list, keys: list, batch: int, config) -> list[tuple[str, float, float]]:
    """(what, wall seconds, CPU seconds for all images) of one-at-a-time and batched CAMs, each without and with
    the dense CRF."""
    plain = dataclasses.replace(config, crf=None)
    rows = []
    for crf_config, crf_name in ((plain, "no CRF"), (config, "with CRF")):
        for size, mode in ((1, "one at a time"), (batch, f"batched ({batch})")):
            def run() -> None:
                for start in range(0, len(images), size):
                    chunk = slice(start, start + size)
                    for image, image_keys, result in zip(images[chunk], keys[chunk],
                                                         cams.batch(images[chunk], keys[chunk], size)):
                        pseudo_label(result.cams, image_keys, image, crf_config)

            rows.append((f"{mode}, {crf_name}", *_wall_and_cpu(run, str(cams.backbone.device))))
    return rows


def train_step_report(parsed, device: str, steps: int, warmup: int, batch: int | None, profile: Path | None) -> None:
    """Time the recipe's training step and its image encoder alone, in turns; print both, their ratio and the
    cost model."""
    precision = resolve_precision(parsed.train.precision, device)
    size = parsed.data.crop_size
    batch = batch or parsed.data.batch_size
    model, step = _training_step(parsed, device, precision, batch)
    counted_step, step_flops = _counted(step, model)
    encoder = _encoder(parsed, device)
    clip_size = parsed.clip.image_size
    images = torch.randn(batch, 3, clip_size, clip_size, device=device)

    def encoder_step() -> None:
        with autocast(precision, device):
            output = encoder(images)
        output = output[0] if isinstance(output, tuple) else output
        output.float().square().mean().backward()
        encoder.zero_grad(set_to_none=True)

    encoder_flops = count_part_flops(encoder, encoder_step, {}).total
    timings = time_in_turns({"step": counted_step, "encoder": encoder_step}, steps, max(warmup, 1), device)
    if profile is not None:
        typer.echo(f"operator profile of one step: {_profile(step, profile, 'train_step_ops')}")
        typer.echo(f"operator profile of the encoder: {_profile(encoder_step, profile, 'image_encoder_ops')}")
    step_time, encoder_time = timings["step"], timings["encoder"]
    step_peak, encoder_peak = step_time.peak_mb, encoder_time.peak_mb
    note = " (process RSS)"
    if device.startswith("cuda"):  # each row as if it ran alone: between its passes the encoder holds its weights only
        encoder_weights = sum(p.numel() * p.element_size() for p in encoder.parameters()) / 2**20
        step_peak, encoder_peak, note = step_peak - encoder_weights, encoder_time.added_mb + encoder_weights, ""
    typer.echo(f"threads: {torch.get_num_threads()} intra-op; medians of {steps} rounds, the step and the encoder "
               "in turns")
    _report(f"ovss benchmark train: {parsed.name}, {size}px, {precision}, {device}",
            [(f"{parsed.method} training step", batch, step_time.median(), step_peak),
             (f"{parsed.clip.name} image encoder fwd+bwd", batch, encoder_time.median(), encoder_peak)], note)
    if not device.startswith("cuda"):
        rounds = sorted(e / s for e, s in zip(encoder_time.cpu, step_time.cpu))
        typer.echo(f"by process CPU time: step {step_time.median('cpu'):.2f} s, encoder {encoder_time.median('cpu'):.2f} s, "
                   f"the step at {100 * encoder_time.median('cpu') / step_time.median('cpu'):.1f}% of the encoder-only "
                   f"ceiling (rounds: {100 * rounds[0]:.1f}-{100 * rounds[-1]:.1f}%; other jobs on this machine do not "
                   "stretch CPU time)")
    _report_costs(step_flops["flops"], step_time.median(), encoder_flops, encoder_time.median(), device, precision)


def inference_report(parsed, names: list[str], bench: str, device: str, images: int, warmup: int, image_size: int,
                     mode: str) -> None:
    """Time the recipe's model on one vocabulary and its image encoder on the same views; print both."""
    precision = resolve_precision(parsed.train.precision, device)
    full, text_seconds = _time_inference(parsed, names, device, precision, image_size, mode, images, warmup)
    encoder = _encoder(parsed, device).eval()
    views = SlidingWindow.for_window(parsed.data.crop_size)
    num_views = ((views.resize - views.window) // views.stride + 1) ** 2 + 1 if mode == "sliding" else 1
    clip_size = parsed.clip.image_size
    batch = torch.randn(num_views, 3, clip_size, clip_size, device=device)

    @torch.no_grad()
    def encode() -> None:
        with autocast(precision, device):
            encoder(batch)

    ceiling = time_calls(encode, images, warmup, device)
    note = "" if device.startswith("cuda") else " (process RSS)"
    typer.echo(f"text encoding of {len(names)} classes (once per vocabulary): {1000 * text_seconds:.1f} ms")
    _report(f"ovss benchmark eval: {parsed.name} on {bench} ({len(names)} classes), {mode}, {precision}, {device}",
            [(f"{parsed.method} inference ({num_views} views/image)", 1, *full),
             (f"{parsed.clip.name} image encoder ({num_views} views)", 1, *ceiling)], note)


def pseudolabel_report(images: int, batch: int, classes: int, clip_model: str, device: str) -> None:
    """Time CLIP-ES pseudo-labels one at a time and batched, without and with the dense CRF; print one table."""
    seed_everything(0)
    model = create_clip(clip_model, None).to(device).eval()
    width = int(model.text_projection.shape[1]) if model.text_projection is not None else int(model.visual.proj.shape[1])
    generator = torch.Generator().manual_seed(0)
    text = torch.randn(len(VOC_PROMPT_NAMES) + len(VOC_BACKGROUND_WORDS), width, generator=generator)
    config = ClipEsConfig()
    cams = ClipEsCams(ClipEsBackbone(model), text[:len(VOC_PROMPT_NAMES)], text[len(VOC_PROMPT_NAMES):], config)
    pictures = _synthetic_voc_images(images)
    keys = [sorted(torch.randperm(len(VOC_PROMPT_NAMES), generator=generator)[:classes].add(1).tolist())
            for _ in pictures]
    cams.batch(pictures[:1], keys[:1])  # warm-up (allocator, kernels)
    rows = _pseudolabel_rows(cams, pictures, keys, batch, config)

    scores = torch.rand(21, *VOC_SIZES[0], generator=generator).to(device)
    dense_crf(pictures[0], scores, CrfParams())  # warm-up
    crf_times = [_wall_and_cpu(lambda: dense_crf(pictures[0], scores, CrfParams()), device) for _ in range(3)]

    threads = torch.get_num_threads() if device == "cpu" else None
    title = (f"ovss benchmark pseudolabel: {clip_model} (random), {images} VOC-sized images, {classes} classes each, "
             f"{device}" + (f", {threads} threads" if threads else ""))
    table = Table(title=title)
    for column in ("what", "img/s", "s/img", "CPU s/img", "vs one at a time"):
        table.add_column(column, justify="left" if column == "what" else "right")
    for index, (what, seconds, cpu) in enumerate(rows):
        reference = rows[index - index % 2][1]  # the one-at-a-time row with the same CRF setting
        table.add_row(what, f"{images / seconds:.2f}", f"{seconds / images:.3f}", f"{cpu / images:.3f}",
                      f"{reference / seconds:.2f}x")
    Console(width=max(110, Console().width)).print(table)
    wall, cpu = (min(t[i] for t in crf_times) for i in (0, 1))
    typer.echo(f"dense CRF alone, 375x500, 21 labels, 10 iterations: {1000 * wall:.0f} ms/image "
               f"({1000 * cpu:.0f} ms CPU time)")
