"""Mixed precision: `bf16-mixed` (default on GPU), `fp16-mixed` (with a grad scaler) and `fp32`."""

from __future__ import annotations

import contextlib

import torch

from ovss_cli.errors import UsageError
from ovss_cli.runtime.config import PRECISIONS


def resolve_precision(precision: str | None, device: str) -> str:
    """'auto'/None -> bf16-mixed on CUDA GPUs that have bf16 (Ampere and later), fp16-mixed (with the grad
    scaler) on older ones (V100, T4), fp32 on CPU."""
    if precision in (None, "auto"):
        if not device.startswith("cuda"):
            return "fp32"
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "fp16-mixed"
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)} or auto")
    return precision


def autocast(precision: str, device: str):
    """The autocast context for a precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype)
