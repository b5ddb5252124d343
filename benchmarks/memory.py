"""Peak memory of a few steps of one config, measured in a FRESH process.

    python -m benchmarks.memory --config approx-double_backward --size tiny [--device cpu] [--steps 3]
                                [--train-step] [--threads N]

prints one JSON line:
    {"config", "size", "device", "steps", "train_step", "threads", "flush_denormal",
     "rss_start_mb"  peak RSS after importing torch and the project (before building anything),
     "rss_built_mb"  peak RSS after building world model, agent, trainer and batch,
     "rss_peak_mb"   peak RSS after the steps,
     "peak_mb"       rss_peak - rss_start: everything this config's model + steps needed at their peak,
     "step_peak_mb"  rss_peak - rss_built: the extra memory of the steps themselves (graphs, optimiser state),
     and on CUDA "cuda_peak_mb"/"cuda_built_mb" (torch.cuda.max_memory_allocated / memory_allocated);
     on CUDA "peak_mb"/"step_peak_mb" are the CUDA numbers.}

Why a fresh process (on CPU): the only cheap, allocator-independent peak measure of a process is the
kernel's RSS high-water mark (`resource.getrusage(RUSAGE_SELF).ru_maxrss`, or on Linux the equivalent
per-address-space `VmHWM`, see `maxrss_mb`), and a high-water mark never goes down within a process.
Inside the pytest process it would still hold the peak of whichever benchmark ran before (a larger
config, or the same one with more rounds), and freed memory is not always returned to the OS (glibc
arenas, torch's CPU allocator), so a "before" value is not a clean baseline either. A fresh process
that imports, builds, records the high-water mark, runs the steps and records it again measures
exactly one config. On CUDA `torch.cuda.max_memory_allocated` can be reset in process (test_hypergrad
does that), but the train-step ratio uses fresh processes on both devices (nothing else allocated).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
from typing import Any

import torch

from benchmarks.common import CONFIGS, FLUSH_ENV, REPO_ROOT, SIZES, build, set_flush_denormal


def maxrss_mb() -> float:
    """This process' peak resident set size so far, MB.

    Linux: `VmHWM` of /proc/self/status, the high-water mark of the current address space. Not
    `ru_maxrss`: Linux keeps the pre-exec high-water mark in it across exec (signal->maxrss), so a
    child started from a big pytest process reports the PARENT's RSS as its own peak (measured: every
    tiny config gave a delta of 0). Elsewhere `ru_maxrss` (macOS reports bytes, others KiB)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 2**10


def measure(config: str, size: str, device: str = "cpu", steps: int = 3, train_step: bool = False,
            seed: int = 0) -> dict[str, Any]:
    """Run in THIS process (meant to be a fresh one: see the module docstring)."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    # One-time lazy initialisation (measured: ~75 MB of RSS at the first build of anything, the same for
    # every config, 0.4 MB for a second build) would otherwise count as this config's memory: absorb it
    # with a throwaway build of the tiny size of the same config first.
    warm = build("tiny", config, dev, seed)
    del warm
    gc.collect()
    if cuda:
        torch.cuda.init()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    rss_start = maxrss_mb()
    cuda_start = torch.cuda.memory_allocated(dev) / 2**20 if cuda else 0.0
    bench = build(size, config, dev, seed)
    bench.sync()
    rss_built = maxrss_mb()
    cuda_built = torch.cuda.memory_allocated(dev) / 2**20 if cuda else 0.0
    fn = bench.train_step if train_step else bench.step
    for _ in range(steps):
        fn()
    bench.sync()
    rss_peak = maxrss_mb()
    out: dict[str, Any] = {
        "config": config, "size": size, "device": str(dev), "steps": steps, "train_step": train_step,
        "threads": torch.get_num_threads(), "flush_denormal": os.environ.get(FLUSH_ENV, "1") == "1",
        "rss_start_mb": rss_start, "rss_built_mb": rss_built,
        "rss_peak_mb": rss_peak, "peak_mb": rss_peak - rss_start, "step_peak_mb": rss_peak - rss_built,
    }
    if cuda:
        cuda_peak = torch.cuda.max_memory_allocated(dev) / 2**20
        out.update(cuda_built_mb=cuda_built - cuda_start, cuda_peak_mb=cuda_peak - cuda_start,
                   peak_mb=cuda_peak - cuda_start, step_peak_mb=cuda_peak - cuda_built)
    return out


def measure_subprocess(config: str, size: str, device: str = "cpu", steps: int = 3, train_step: bool = False,
                       threads: int | None = None, timeout: float | None = None) -> dict[str, Any]:
    """`measure` in a fresh `python -m benchmarks.memory` process; returns its JSON."""
    cmd = [sys.executable, "-m", "benchmarks.memory", "--config", config, "--size", size, "--device", str(device),
           "--steps", str(steps), "--threads", str(threads or torch.get_num_threads())]
    if train_step:
        cmd.append("--train-step")
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, choices=list(CONFIGS))
    p.add_argument("--size", default="tiny", choices=list(SIZES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--train-step", action="store_true", help="whole training step (world model + actor-critic)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    set_flush_denormal(os.environ.get(FLUSH_ENV, "1") == "1")  # the parent's setting (env is inherited)
    print(json.dumps(measure(a.config, a.size, a.device, a.steps, a.train_step, a.seed)))


if __name__ == "__main__":
    main()
