"""Imported by a sweep's trials (`recipes.sweep ... --import tests.arena_probe`): records, for the thread a trial
runs in, whether it is the process's main thread and whether its allocations come from the main heap (glibc's
main arena, `[heap]` in /proc/self/maps), as `$ARENA_PROBE_DIR/<pid>-<thread id>.json` (tests/test_sweep.py). A
test harness, not part of the recipes."""

from __future__ import annotations

import ctypes
import json
import os
import threading
from pathlib import Path


def allocates_from_main_heap(size: int = 64 << 10) -> bool:
    """A block below glibc's smallest mmap threshold (128 KiB) comes from the calling thread's arena: the main
    arena's lies in `[heap]`, any other arena's in an anonymous mapping of its own."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block = libc.malloc(size)
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            if line.endswith("[heap]"):
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                return lo <= block < hi
        return False
    finally:
        libc.free(block)


out = Path(os.environ["ARENA_PROBE_DIR"]) / f"{os.getpid()}-{threading.get_native_id()}.json"
out.write_text(json.dumps({"main_thread": threading.current_thread() is threading.main_thread(),
                           "main_heap": allocates_from_main_heap()}))
