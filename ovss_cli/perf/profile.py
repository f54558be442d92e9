"""`--profile`: the top operators of one call (torch.profiler key_averages), written as a text table."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def write_operator_profile(call: Callable[[], object], folder: Path, name: str, rows: int = 40) -> Path:
    """Run `call` once under the profiler; write `folder/name.txt`, operators sorted by self time on the device
    that did the work (CUDA when it ran there, else CPU)."""
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities, record_shapes=True) as prof:
        call()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.txt"
    path.write_text(prof.key_averages().table(sort_by=sort, row_limit=rows) + "\n")
    return path
