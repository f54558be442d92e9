"""The training loop, method-agnostic: it is handed a model with `forward(batch) -> {'loss': ...}`,
`param_groups(optim_cfg)` and the Segmenter protocol, and never knows which method it runs.

AdamW on the model's parameter groups, cosine schedule with optional linear warm-up,
full-model gradient-norm clipping, gradient accumulation (DDP gradient sync only on the last
micro-batch), autocast (+ GradScaler for fp16), periodic evaluation with a best-by-mIoU
checkpoint, atomic checkpoints and exact resume.
"""

from __future__ import annotations

import contextlib
import functools
import math
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel

from ovss_cli import __version__
from ovss_cli.clip.config import check_checkpoint_clip, pinned_clip_section
from ovss_cli.data.benchmarks import expand_benchmarks
from ovss_cli.data.dataset import SegmentationSet
from ovss_cli.data.root import resolve_data_root
from ovss_cli.data.train_set import TrainSegmentationSet
from ovss_cli.engine.loader import build_loader, iterate_forever
from ovss_cli.engine.runs import RunLog, StepReporter, Throughput
from ovss_cli.errors import OvssError, UsageError
from ovss_cli.evaluate.runner import evaluate_dataset
from ovss_cli.fileio import remove_temporaries
from ovss_cli.runtime import checkpoint as ckpt
from ovss_cli.runtime.distributed import DistInfo, barrier
from ovss_cli.runtime.precision import autocast, resolve_precision
from ovss_cli.runtime.seeding import rng_state, seed_everything, set_rng_state, use_deterministic_kernels


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    best_checkpoint: Path | None = None
    eval_results: dict = field(default_factory=dict)


def micro_batch_size(global_batch: int, world_size: int, accumulate: int) -> int:
    """Images per process per micro-batch, so that processes x accumulation x it = the recipe's global batch."""
    parts = world_size * accumulate
    if global_batch % parts:
        raise UsageError(f"data.batch_size {global_batch} (global) is not divisible by {world_size} processes x "
                         f"{accumulate} accumulation steps; change data.batch_size or optim.accumulate_steps")
    return global_batch // parts


def lr_factor(step: int, iterations: int, schedule: str, warmup_iters: int, warmup_factor: float,
              poly_power: float = 0.9) -> float:
    """Multiplier of the base learning rates after `step` optimizer steps (detectron2's WarmupCosineLR shape;
    poly: (1 - step / iterations) ** poly_power, as WeCLIP and DeepLab)."""
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * step / iterations))
    elif schedule == "poly":
        decay = max(0.0, 1.0 - step / iterations) ** poly_power
    else:
        decay = 1.0
    if step < warmup_iters:
        alpha = step / warmup_iters
        return decay * (warmup_factor * (1.0 - alpha) + alpha)
    return decay


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _to_device(batch: dict, device: torch.device) -> dict:
    return {key: value.to(device, non_blocking=True) if torch.is_tensor(value) else value
            for key, value in batch.items()}


def _mean_over_ranks(values: dict[str, torch.Tensor], dist: DistInfo) -> dict[str, torch.Tensor]:
    """Means over the ranks, still on the device: reading them (float) waits for the step, so only log steps do."""
    stacked = torch.stack([values[k] for k in sorted(values)])
    if dist.distributed:
        tdist.all_reduce(stacked)
        stacked /= dist.world_size
    return dict(zip(sorted(values), stacked.unbind()))


def as_floats(values: dict) -> dict[str, float]:
    """A step's reported values as numbers (one device-to-host copy)."""
    keys = [k for k, v in values.items() if torch.is_tensor(v)]
    numbers = torch.stack([values[k].float() for k in keys]).tolist() if keys else []
    return {**values, **dict(zip(keys, numbers))}


def _gather_rng(dist: DistInfo) -> list[dict]:
    state = rng_state()
    if not dist.distributed:
        return [state]

    states: list = [None] * dist.world_size
    tdist.all_gather_object(states, state)
    return states


def checkpoint_sidecar(recipe, model, step: int, metrics: dict | None = None) -> dict:
    stored = recipe.to_dict()
    stored["clip"] = pinned_clip_section(stored["clip"], model.dense)  # rebuilds as trained, wherever loaded
    return {
        "format": "ovss-checkpoint/1",
        "ovss_version": __version__,
        "method": recipe.method,
        "finetune_mode": recipe.finetune.mode if recipe.finetune is not None else None,
        "clip": {key: stored["clip"][key] for key in ("name", "pretrained", "image_size", "quick_gelu", "image_mean",
                                                      "image_std", "image_interpolation")},
        "window": model.window,
        "class_names": list(model.train_classes),
        "step": step,
        "metrics": metrics,
        "recipe": stored,
    }


class Trainer:
    """One training run of `recipe` in `run_dir` on this process's share of the job."""

    def __init__(self, recipe, model: torch.nn.Module, dist: DistInfo, run_dir: Path):
        self.recipe = recipe
        self.model = model
        self.dist = dist
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.device = torch.device(dist.device)
        self.precision = resolve_precision(recipe.train.precision, dist.device)
        self.micro_batch = micro_batch_size(recipe.data.batch_size, dist.world_size, recipe.optim.accumulate_steps)
        self.last_checkpoint: Path | None = None
        self.best_checkpoint: Path | None = None
        self.best_score = -math.inf

    # ------------------------------------------------------------------ set-up
    def _eval_sets(self) -> list:
        train = self.recipe.train
        if not train.eval_benches:
            return []
        root = resolve_data_root(self.recipe.data.data_root or None)
        return [SegmentationSet(name, root, train.eval_limit) for name in expand_benchmarks(train.eval_benches)]

    def _build(self) -> None:
        recipe = self.recipe
        if recipe.deterministic:
            use_deterministic_kernels()
        self.dataset = TrainSegmentationSet(recipe.data, recipe.seed)
        self.eval_sets = self._eval_sets()
        self.build_optimizer()
        self.loader, self.sampler = build_loader(self.dataset, self.micro_batch, recipe.data.workers, recipe.seed,
                                                 self.dist.rank, self.dist.world_size,
                                                 pin_memory=self.device.type == "cuda")

    def build_optimizer(self) -> None:
        """Move the model to the device and set up AdamW, the schedule and the grad scaler."""
        recipe, optim = self.recipe, self.recipe.optim
        self.model = self.model.to(self.device)
        if recipe.train.activation_checkpointing:
            self.model.enable_activation_checkpointing()
        groups = self.model.param_groups(optim)
        self.trainable = [p for group in groups for p in group["params"]]
        if not self.trainable:
            raise UsageError("nothing to train: every parameter is frozen; check finetune.mode and the decoder")
        # CUDA and CPU both have a fused AdamW (one kernel over all parameters, 3x faster than foreach on CPU)
        fused = all(p.device.type in ("cuda", "cpu") for p in self.trainable)
        self.optimizer = torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                                           fused=fused or None)
        # the module the step calls: torch.compile'd on request (the weights stay those of self.model)
        self.step_model = torch.compile(self.model) if recipe.train.compile else self.model
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, functools.partial(
            lr_factor, iterations=recipe.train.iterations, schedule=optim.schedule,
            warmup_iters=optim.warmup_iters, warmup_factor=optim.warmup_factor, poly_power=optim.poly_power))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16-mixed")

    def _resume_point(self, resume: str | None) -> Path | None:
        if not resume:
            return None
        if resume == "auto":
            found = ckpt.step_checkpoints(self.checkpoint_dir)
            return found[-1][1] if found else None
        path = Path(resume)
        if path.is_dir():  # a run folder resumes from its latest step checkpoint (best.* holds no training state)
            directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
            found = ckpt.step_checkpoints(directory)
            if not found:
                raise OvssError(f"no complete step checkpoint in {directory} to resume from")
            return found[-1][1]
        return ckpt.resolve_checkpoint(path)

    def _restore(self, weights: Path) -> int:
        state = ckpt.load_training_state(ckpt.training_state_path(weights))
        check_checkpoint_clip(self.model.dense, ckpt.read_sidecar(weights), str(weights))
        ckpt.load_weights(self.model, weights)
        expected = {"global_batch": self.recipe.data.batch_size, "accumulate_steps": self.recipe.optim.accumulate_steps}
        saved = {key: state.get(key) for key in expected}
        if saved != expected:
            raise UsageError(f"cannot resume from {weights}: it was trained with {saved}, this recipe has {expected}; "
                             "resume with the same data.batch_size and optim.accumulate_steps")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise OvssError(f"training state of {weights} does not fit this model ({err}); resume with the "
                            "recipe it was trained with") from None
        states = state["rng"]
        if len(states) == self.dist.world_size:
            set_rng_state(states[self.dist.rank])
        else:  # another process count: fresh per-rank streams (data order is independent of them)
            seed_everything(self.recipe.seed + 1000 * state["step"] + self.dist.rank)
        self.best_score = float(state.get("best_score", -math.inf))
        best = self.checkpoint_dir / f"{ckpt.BEST}.safetensors"
        self.best_checkpoint = best if best.is_file() else None
        self.last_checkpoint = weights
        return int(state["step"])

    # ------------------------------------------------------------------ periodic work
    def _state_is_finite(self) -> bool:
        """Whether every weight and optimizer state tensor is finite: one host sync, at checkpoint time only.
        Every rank holds the same values, so every rank reaches the same answer without communicating."""
        tensors = [t for t in self.model.state_dict().values() if t.is_floating_point()]
        tensors += [t for state in self.optimizer.state.values() for t in state.values()
                    if torch.is_tensor(t) and t.is_floating_point()]
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())

    def _refuse_non_finite(self, step: int) -> None:
        if not self._state_is_finite():
            raise self._diverged(f"the weights or optimizer state became non-finite by step {step} (not saved)")

    def _diverged(self, what: str) -> OvssError:
        # every checkpoint on record passed _refuse_non_finite, so the one named here is finite
        last = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was written yet"
        return OvssError(f"{what}; training stopped, {last}. Lower optim.lr, keep optim.grad_clip on or use "
                         "train.precision=fp32, then continue with --resume auto")

    def _save(self, step: int) -> None:
        self._refuse_non_finite(step)
        states = _gather_rng(self.dist)  # collective: every rank takes part
        if self.dist.is_main:
            training_state = {
                "step": step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": states,
                "epoch": (step * self.recipe.optim.accumulate_steps) // self.sampler.batches_per_epoch,
                "global_batch": self.recipe.data.batch_size,
                "accumulate_steps": self.recipe.optim.accumulate_steps,
                "best_score": self.best_score,
            }
            sidecar = checkpoint_sidecar(self.recipe, self.model, step)
            self.last_checkpoint = ckpt.save_checkpoint(self.checkpoint_dir, ckpt.step_name(step), self.model,
                                                        sidecar, training_state)
            ckpt.prune_checkpoints(self.checkpoint_dir, self.recipe.train.keep_last)
        else:
            self.last_checkpoint = self.checkpoint_dir / f"{ckpt.step_name(step)}.safetensors"
        barrier()

    def evaluate(self, step: int, reporter: StepReporter, run_log: RunLog) -> dict:
        train = self.recipe.train
        self.model.eval()
        try:
            results = {ds.name: evaluate_dataset(self.model, ds, train.eval_mode, self.dist, self.precision,
                                                 show_progress=False) for ds in self.eval_sets}
        finally:
            self.model.train()
        scores = [m["mIoU"] for m in results.values() if m["mIoU"] is not None and math.isfinite(m["mIoU"])]
        score = sum(scores) / len(scores) if scores else -math.inf
        summary = {f"mIoU/{name}": m["mIoU"] for name, m in results.items()}
        reporter.message(f"step {step} ({train.eval_mode} inference; `ovss evaluate` defaults to sliding): "
                         + ", ".join(f"{k} {v:.2f}" for k, v in summary.items()))
        run_log.log({"step": step, **summary})
        run_log.write_eval(step, results)
        if score > self.best_score:
            self._refuse_non_finite(step)
            self.best_score = score
            if self.dist.is_main:
                sidecar = checkpoint_sidecar(self.recipe, self.model, step, metrics=summary)
                self.best_checkpoint = ckpt.save_checkpoint(self.checkpoint_dir, ckpt.BEST, self.model, sidecar)
            barrier()
        return results

    def _stop_on_non_finite(self, losses: dict, step: int) -> None:
        if not math.isfinite(losses["loss"]):
            raise self._diverged(f"loss became {float(losses['loss'])} at step {step}")

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: str | None = None, on_ready: Callable[[], None] | None = None) -> TrainResult:
        """Train to `train.iterations`; `on_ready` runs once the resume point is validated and restored,
        before this run writes anything into its folder."""

        recipe, train, optim, dist = self.recipe, self.recipe.train, self.recipe.optim, self.dist
        start = self._resume_point(resume)
        if start is None and ckpt.step_checkpoints(self.checkpoint_dir):
            raise UsageError(f"{self.run_dir} already holds checkpoints of another run; continue it with "
                             "--resume auto or choose a new --output folder")
        self._build()
        step = self._restore(start) if start is not None else 0
        if start is None:
            seed_everything(recipe.seed + dist.rank)
        if dist.is_main:  # the run folder is locked: temporaries there are from killed writes
            remove_temporaries(self.run_dir, self.checkpoint_dir)
        if on_ready is not None:
            on_ready()
        model = self.step_model
        if dist.distributed:
            model = DistributedDataParallel(self.model, device_ids=[dist.local_rank] if self.device.type == "cuda" else None,
                                            find_unused_parameters=train.find_unused_parameters, broadcast_buffers=False)
            model = torch.compile(model) if train.compile else model
        run_log = RunLog(self.run_dir, dist.is_main, train.tensorboard)
        run_log.truncate_after(step)
        reporter = StepReporter(train.iterations, step, enabled=dist.is_main)
        if start is not None:
            reporter.message(f"resumed from {start} at step {step}")
        batches = iterate_forever(self.loader, self.sampler, step * optim.accumulate_steps)
        throughput = Throughput()
        eval_results: dict = {}
        self.model.train()
        try:
            while step < train.iterations:
                losses = self.train_step(model, batches)
                step += 1
                self._stop_on_non_finite(losses, step)
                throughput.add(recipe.data.batch_size)
                reporter.advance(step)
                if step % train.log_every == 0 or step == train.iterations:
                    record = {"step": step, **as_floats(losses), **throughput.measure(train.iterations - step),
                              "peak_mem_mb": peak_memory_mb(self.device)}
                    run_log.log(record)
                    reporter.report(record)
                # Evaluate first, so the step checkpoint records this step's best score.
                if self.eval_sets and ((train.eval_every and step % train.eval_every == 0) or step == train.iterations):
                    eval_results = self.evaluate(step, reporter, run_log)
                if step % train.checkpoint_every == 0 or step == train.iterations:
                    self._save(step)
        finally:
            reporter.close()
            run_log.close()
        return TrainResult(self.run_dir, step, self.last_checkpoint, self.best_checkpoint, eval_results)

    def train_step(self, model, batches) -> dict:
        """One optimizer step over `optim.accumulate_steps` micro-batches drawn from `batches`; returns its
        losses and grad norm as device tensors (`as_floats` reads them) and the learning rate it used."""
        optim = self.recipe.optim
        accumulate = optim.accumulate_steps
        totals: dict[str, torch.Tensor] = {}
        for index in range(accumulate):
            batch = _to_device(next(batches), self.device)
            final = index == accumulate - 1
            sync = contextlib.nullcontext() if final or not self.dist.distributed else model.no_sync()
            with sync:
                with autocast(self.precision, self.dist.device):
                    losses = model(batch)
                self.scaler.scale(losses["loss"] / accumulate).backward()
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + value.detach().float() / accumulate
        reduced = _mean_over_ranks(totals, self.dist)
        # the one host synchronisation of a step: no update may be applied from a non-finite loss
        if not math.isfinite(reduced["loss"]):
            self.optimizer.zero_grad(set_to_none=True)
            return reduced  # the caller stops before any update is applied
        self.scaler.unscale_(self.optimizer)
        if optim.grad_clip > 0:
            reduced["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.trainable, optim.grad_clip)
        reduced["lr"] = max(group["lr"] for group in self.optimizer.param_groups)  # the rate this step used
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return reduced


def train(recipe, model: torch.nn.Module, dist: DistInfo, run_dir: Path, resume: str | None = None,
          on_ready: Callable[[], None] | None = None) -> TrainResult:
    """Train `model` as `recipe` says on this process (one rank of a torchrun job, or alone) into `run_dir`.
    Every rank must pass an identically initialised model (seed before building it)."""
    return Trainer(recipe, model, dist, run_dir).fit(resume, on_ready)
