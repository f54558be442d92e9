"""`--profile`: the top operators of one call (torch.profiler key_averages), written as a text table."""

from __future__ import annotations

import resource
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
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with profile(activities=activities, record_shapes=True) as prof:
        call()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.txt"
    # The profiler's own allocations move the host heap, so a profiled CPU call can fault in fresh pages
    # that an unprofiled one reuses; that time lands on whichever operators first touch them.
    note = (f"host page faults during the profiled call: {faults} (a steady unprofiled step has ~0; their cost is "
            "counted in the operators that first touched the new pages, memory-bound ones above all)\n")
    path.write_text(note + prof.key_averages().table(sort_by=sort, row_limit=rows) + "\n")
    return path
