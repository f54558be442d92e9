"""Recipe sections owned by the engine: `optim:` and `train:` (the loop).

No torch here: recipes validate at start-up, before any heavy import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from ovss_cli.data.benchmarks import expand_benchmarks
from ovss_cli.errors import UsageError
from ovss_cli.runtime.config import Precision


@dataclass
class OptimConfig:
    """AdamW with a CLIP learning-rate multiplier, cosine schedule and full-model gradient clipping."""

    lr: float = 2e-4
    """Base learning rate (decoder and other non-CLIP parameters)."""
    clip_lr_multiplier: float = 0.01
    """CLIP-side parameters (incl. fine-tuning adapters) train at lr x this."""
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    """Weight decay of normalisation layers (LayerNorm, GroupNorm, BatchNorm)."""
    weight_decay_embed: float = 0.0
    """Weight decay of embeddings (token, positional, class embeddings, learnable padding tokens)."""
    weight_decay_bias: Optional[float] = None
    """Weight decay of biases; null = same as weight_decay (the official setting)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    """Learning-rate decay over train.iterations after the warm-up (cosine and poly go to 0)."""
    poly_power: float = 0.9
    """poly: lr x (1 - step / iterations) ** this (WeCLIP / DeepLab: 0.9)."""
    warmup_iters: int = 0
    """Linear warm-up steps from lr x warmup_factor to lr."""
    warmup_factor: float = 0.001
    grad_clip: float = 0.01
    """Clip the gradient norm of all trainable parameters together to this; 0 = off."""
    accumulate_steps: int = 1
    """Micro-batches per optimizer step; each process sees batch_size / (processes x this) images per micro-batch."""

    def validate(self) -> None:
        if self.lr <= 0 or self.clip_lr_multiplier < 0:
            raise UsageError("optim.lr must be positive and optim.clip_lr_multiplier non-negative")
        if min(self.weight_decay, self.weight_decay_norm, self.weight_decay_embed) < 0 or (
                self.weight_decay_bias is not None and self.weight_decay_bias < 0):
            raise UsageError("optim weight decays must be non-negative")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise UsageError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if self.warmup_iters < 0 or not 0.0 < self.warmup_factor <= 1.0:
            raise UsageError("optim.warmup_iters must be >= 0 and optim.warmup_factor in (0, 1]")
        if self.poly_power <= 0:
            raise UsageError(f"optim.poly_power must be positive, got {self.poly_power}")
        if self.grad_clip < 0:
            raise UsageError(f"optim.grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        if self.accumulate_steps < 1:
            raise UsageError(f"optim.accumulate_steps must be at least 1, got {self.accumulate_steps}")


@dataclass
class TrainConfig:
    """The loop: length, precision, logging, checkpoints and periodic evaluation."""

    iterations: int = 80_000
    """Optimizer steps."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    precision: Literal["auto", Precision] = "auto"
    """auto = bf16-mixed on GPUs with bf16 (fp16-mixed on V100/T4), fp32 on CPU; fp16-mixed uses a gradient scaler."""
    activation_checkpointing: bool = False
    """Recompute CLIP blocks and aggregator layers in the backward pass (less memory, ~30% slower)."""
    compile: bool = False
    """torch.compile the model for the training step (slow first steps while it compiles; same loss)."""
    find_unused_parameters: bool = False
    """DDP: set when some trainable parameter gets no gradient in a step (costs one extra graph walk)."""
    log_every: int = 20
    checkpoint_every: int = 5_000
    keep_last: int = 2
    """Step checkpoints kept on disk (the best-by-mIoU checkpoint is kept separately)."""
    eval_every: int = 0
    """Evaluate on eval_benches every N steps and at the end; 0 = only at the end (if eval_benches is set)."""
    eval_benches: list[str] = field(default_factory=list)
    eval_limit: Optional[int] = None
    """Evaluate on the first N images of each benchmark only."""
    eval_mode: Literal["sliding", "whole"] = "sliding"
    tensorboard: Optional[bool] = None
    """Also write TensorBoard events to <run>/tensorboard/ (`tensorboard --logdir runs`); null: when the
    `tensorboard` package is installed (pip install tensorboard). metrics.jsonl is always written (`ovss runs`)."""

    def validate(self) -> None:
        for name in ("iterations", "log_every", "checkpoint_every", "keep_last"):
            if getattr(self, name) < 1:
                raise UsageError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise UsageError(f"train.eval_every must be >= 0, got {self.eval_every}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise UsageError(f"train.eval_limit must be positive or null, got {self.eval_limit}")
        expand_benchmarks(list(self.eval_benches))  # unknown names fail here; the trainer expands 'all' at use
