"""CPU threads: the main process takes its share of the cores this machine gives it; loader workers take one.

Oversubscription is what makes CPU training crawl: every parallel operator waits at a barrier
for its slowest thread, and a thread that shares its core with another busy process runs one
scheduler slice in two. N local ranks each running one thread per core ask for N times the
cores; so does one process on a machine whose cores another job already keeps busy. A rank
therefore takes its share of the cores that are idle (affine cores minus the 1-minute load).
"""

from __future__ import annotations

import os

import torch


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def idle_cores(cores: int) -> int:
    """Affine cores not already kept busy by running processes (the 1-minute load average, rounded)."""
    try:
        busy = round(os.getloadavg()[0])
    except (AttributeError, OSError):
        busy = 0
    return max(1, cores - busy)


def threads_per_rank(cores: int, local_ranks: int) -> int:
    return max(1, cores // max(1, local_ranks))


def configure_threads() -> str:
    """Set this process's intra-op threads to its share of the cores, unless OMP_NUM_THREADS chose;
    returns the one line that says what was chosen and why."""
    cores = available_cores()
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    chosen = os.environ.get("OMP_NUM_THREADS")
    if chosen:
        return f"threads: {torch.get_num_threads()} intra-op per process (OMP_NUM_THREADS={chosen})"
    idle = idle_cores(cores)
    threads = threads_per_rank(idle, local_ranks)
    torch.set_num_threads(threads)
    return (f"threads: {threads} intra-op per process ({idle} of {cores} cores idle / {local_ranks} local processes; "
            "OMP_NUM_THREADS overrides)")


def single_thread_worker() -> None:
    """In a data-loader worker: one intra-op thread, so workers never compete with the step.
    (OpenCV's pool is left alone: resizing it in a forked child can wait forever on the parent's threads.)"""
    torch.set_num_threads(1)
