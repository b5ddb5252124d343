"""Process settings for training on a CPU that the libraries leave at defaults made for other workloads."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit: larger blocks are mmap'ed unless M_MMAP_MAX is 0
TRIM_THRESHOLD = (1 << 31) - 1  # an int: never give the heap's free top back to the kernel


def keep_freed_memory() -> bool:
    """Keep freed heap memory in the process instead of returning it to the kernel (glibc only; False elsewhere,
    or when glibc refuses).

    Why: torch allocates CPU tensors with malloc. A training update frees and reallocates the same large
    activations (e.g. [16, 800, 200] float32, 10 MB) hundreds of times, and with glibc's defaults each one comes from
    a fresh mmap or a heap top that was just trimmed, so every page is faulted in and zeroed by the kernel again on
    first touch. Raising the mmap threshold to its maximum and never trimming makes the second update reuse the
    first one's pages (the process keeps its peak memory, which the next update needs anyway). Blocks above the
    threshold's 32 MB ceiling (at `dmc_state` the imagined features [16, 800, 1224] float32, 63 MB, and their
    gradients) would still be mmap'ed, and faulted in, every time: no mmap at all (M_MMAP_MAX 0) serves them from
    the heap too. (Other threads' arenas still map their heaps, and unmap them when they empty; a block too large for
    one comes from the main heap. A Ray trial runs in such a thread: `recipes.sweep.trial_env` gives its worker
    one arena, the main heap's.) The effect is measured in benchmarks/results (`malloc_*.json`); tests/test_cpu.py
    counts the page faults.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    return (bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            and bool(mallopt(M_MMAP_MAX, 0)))
