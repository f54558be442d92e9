"""Host memory of a CPU run: freed blocks stay with the process for the next step to reuse.

glibc serves each block above its mmap threshold (128 KB, raised dynamically to at most 32 MB)
with fresh pages from the kernel and unmaps it on free. A CPU training step makes and frees
gigabytes of activations, so every step paid a page fault and the kernel's zeroing for each 4 KB
page: 4.5 million faults per CAT-Seg aggregation pass at batch 2, about a quarter of the step's
CPU time. Serving those blocks from the heap and never trimming it keeps them for the next step,
as a GPU's caching allocator does. The heap settles after two or three steps; the cost is a
higher resident peak, held until the process ends (CAT-Seg ViT-B/16 training at batch 2: 17.5 GB
instead of 14.8 GB). `init_distributed` turns it on for CPU training, evaluation, pseudo-labels
and the benchmarks, which repeat one shape of work; `ovss predict` on a few images does not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
KEEP_BLOCKS_UP_TO = 1 << 30  # bytes; larger blocks (rare) still come from mmap
NEVER = -1  # as a trim threshold: never hand the heap's free top back (a step frees gigabytes at its end)


@functools.cache
def reuse_freed_host_memory() -> bool:
    """Ask glibc to serve blocks up to 1 GB from its heap and never trim the heap; False where the C library
    is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BLOCKS_UP_TO)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER))
