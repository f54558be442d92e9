"""The device's peak FLOP/s: a table of known accelerators (dense tensor-core rates) and a measured matmul.

The measured square matmul is what the step's large matmuls can reach on this device, with
this thread count and precision; it is the honest ceiling on a CPU, whose vendor peak depends
on clocks and vector units no portable call reports.
"""

from __future__ import annotations

import time

import torch

# Dense (no sparsity) peak TFLOP/s by (name fragment, dtype), from the vendors' data sheets.
KNOWN_GPU_TFLOPS: dict[str, dict[torch.dtype, float]] = {
    "H200": {torch.bfloat16: 989.0, torch.float16: 989.0, torch.float32: 67.0},
    "H100": {torch.bfloat16: 989.0, torch.float16: 989.0, torch.float32: 67.0},
    "A100": {torch.bfloat16: 312.0, torch.float16: 312.0, torch.float32: 19.5},
    "L40S": {torch.bfloat16: 362.0, torch.float16: 362.0, torch.float32: 91.6},
    "A10": {torch.bfloat16: 125.0, torch.float16: 125.0, torch.float32: 31.2},
    "V100": {torch.float16: 125.0, torch.float32: 15.7},
    "4090": {torch.bfloat16: 165.0, torch.float16: 165.0, torch.float32: 82.6},
}


def known_peak(device: torch.device, dtype: torch.dtype) -> float | None:
    """Data-sheet FLOP/s of this CUDA device in `dtype`, or None when it is not in the table."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, rates in KNOWN_GPU_TFLOPS.items():
        if fragment in name and dtype in rates:
            return rates[dtype] * 1e12
    return None


def measured_matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of repeated [size x size] @ [size x size] products on `device` in `dtype` (after one warm-up)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)
    _sync(device)
    calls, start = 0, time.perf_counter()
    while True:
        torch.mm(a, b)
        calls += 1
        if calls % 4 == 0:
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return 2 * size**3 * calls / elapsed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
