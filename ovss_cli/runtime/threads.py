"""CPU threads: the main process takes its share of the cores this machine gives it; loader workers take one.

Oversubscription is what makes CPU training crawl: every parallel operator waits at a barrier
for its slowest thread, and a thread that shares its core with another busy process runs one
scheduler slice in two. N local ranks each running one thread per core ask for N times the
cores; so does one process on a machine whose cores another job already keeps busy. A rank
therefore takes its share of the cores that are idle: affine cores minus those other processes
keep busy, which is the larger of the 1-minute load and a 0.3 s sample of /proc/stat (the load
average trails a job that started a few seconds ago: two quickstarts started together each took
two threads on a 2-core machine and ran 4x slower than with one).
"""

from __future__ import annotations

import os
import time

import torch

SAMPLE_SECONDS = 0.3  # how long the busy cores are sampled for


def affine_cores() -> set[int]:
    """Cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))


def read_cpu_times(cores: set[int], path: str = "/proc/stat") -> tuple[int, int]:
    """(busy, total) clock ticks of these cores since boot, from /proc/stat; (0, 0) where it cannot be read."""
    busy = total = 0
    try:
        with open(path) as stat:
            for line in stat:
                name, *fields = line.split() or [""]
                if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores):
                    continue
                ticks = [int(value) for value in fields[:8]]  # user nice system idle iowait irq softirq steal
                total += sum(ticks)
                busy += sum(ticks) - ticks[3] - ticks[4]
    except OSError:
        return 0, 0
    return busy, total


def busy_cores_now(cores: set[int], seconds: float = SAMPLE_SECONDS) -> float:
    """Cores (of these) other processes keep busy now: this process sleeps while two reads of /proc/stat are taken."""
    busy0, total0 = read_cpu_times(cores)
    time.sleep(seconds)
    busy1, total1 = read_cpu_times(cores)
    if total1 <= total0:
        return 0.0
    return len(cores) * (busy1 - busy0) / (total1 - total0)


def idle_cores(cores: set[int], local_ranks: int = 1) -> int:
    """Affine cores not kept busy by other processes: the larger of the 1-minute load average and a sample of
    /proc/stat, both rounded; the other local ranks (starting now, counted by `threads_per_rank`) are not others."""
    try:
        load = round(os.getloadavg()[0])
    except (AttributeError, OSError):
        load = 0
    sampled = max(0, round(busy_cores_now(cores)) - (local_ranks - 1))
    return max(1, len(cores) - max(load, sampled))


def threads_per_rank(cores: int, local_ranks: int) -> int:
    return max(1, cores // max(1, local_ranks))


def configure_threads() -> str:
    """Set this process's intra-op threads to its share of the cores, unless OMP_NUM_THREADS chose;
    returns the one line that says what was chosen and why."""
    cores = affine_cores()
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    chosen = os.environ.get("OMP_NUM_THREADS")
    if chosen:
        return f"threads: {torch.get_num_threads()} intra-op per process (OMP_NUM_THREADS={chosen})"
    idle = idle_cores(cores, local_ranks)
    threads = threads_per_rank(idle, local_ranks)
    torch.set_num_threads(threads)
    return (f"threads: {threads} intra-op per process ({idle} of {len(cores)} cores idle / {local_ranks} local "
            "processes; OMP_NUM_THREADS overrides)")


def single_thread_worker() -> None:
    """In a data-loader worker: one intra-op thread, so workers never compete with the step.
    (OpenCV's pool is left alone: resizing it in a forked child can wait forever on the parent's threads.)"""
    torch.set_num_threads(1)
