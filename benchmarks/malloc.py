"""What keeping freed memory (`recipes.cpu.keep_freed_memory`, which every CPU run applies) buys an update.

    python -m benchmarks.malloc --size dmc_small --configs none,approx-terms_fd --updates 6 --rounds 4 \\
        --threads 1 --out benchmarks/results/malloc_dmc_small_1thread.json

Each round times `--updates` updates (`Bench.train_step`, after one warm-up update) in fresh processes, one with
glibc's default allocator settings and one with the run's, alternating, per config: the allocator settings are
process-wide and cannot be undone, so the default arm replaces the call with a no-op before building the run. The
ratio (kept / default seconds) is the median of the rounds' paired ratios; the page faults per update are counted
in each process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from benchmarks.common import CONFIGS, REPO_ROOT, SIZES, machine


def worker(size: str, config: str, updates: int, keep: bool) -> dict[str, float]:
    from benchmarks.common import build
    from recipes import cpu

    if not keep:
        cpu.keep_freed_memory = lambda: False  # glibc's defaults: the run's call does nothing in this process
    with build(size, config) as bench:
        bench.train_step()
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        for _ in range(updates):
            bench.train_step()
        seconds = time.perf_counter() - t0
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    return {"s_per_update": seconds / updates, "faults_per_update": faults / updates}


def run_worker(size: str, config: str, updates: int, keep: bool, threads: int) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": REPO_ROOT}
    cmd = [sys.executable, "-m", "benchmarks.malloc", "--worker", "--size", size, "--configs", config,
           "--updates", str(updates), "--threads", str(threads), *(["--keep"] if keep else [])]
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(size: str, configs: list[str], updates: int, rounds: int, threads: int) -> dict:
    result = {}
    for config in configs:
        rows = [{arm: run_worker(size, config, updates, arm == "kept", threads) for arm in ("default", "kept")}
                for _ in range(rounds)]
        ratios = [r["kept"]["s_per_update"] / r["default"]["s_per_update"] for r in rows]
        result[config] = {"rounds": rows, "ratio_median": statistics.median(ratios), "ratios": ratios}
    return {"size": size, "updates": updates, "threads": threads, "configs": result, "machine": machine("cpu")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.malloc", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="dmc_small", choices=list(SIZES))
    p.add_argument("--configs", default="none,approx-terms_fd", help="comma-separated; none = DreamerV2")
    p.add_argument("--updates", type=int, default=6)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch threads of each process")
    p.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help="write the result as JSON here")
    a = p.parse_args(argv)
    configs = a.configs.split(",")
    bad = [c for c in configs if c not in CONFIGS]
    if bad or a.updates < 1 or a.rounds < 1 or a.threads < 1:
        p.error(f"--configs {bad} not in {sorted(CONFIGS)}, or --updates/--rounds/--threads < 1" if bad
                else f"--updates, --rounds and --threads must be >= 1, got {a.updates}, {a.rounds}, {a.threads}")
    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        print(json.dumps(worker(a.size, configs[0], a.updates, a.keep)))
        return
    result = measure(a.size, configs, a.updates, a.rounds, a.threads)
    if a.out:
        with open(a.out, "w") as f:
            f.write(json.dumps(result, indent=1) + "\n")
    for config, r in result["configs"].items():
        faults = {arm: statistics.median(x[arm]["faults_per_update"] for x in r["rounds"])
                  for arm in ("default", "kept")}
        print(f"{a.size} {config}: kept / default time per update = {r['ratio_median']:.3f} (median of {a.rounds} "
              f"paired rounds); page faults per update {faults['default']:.0f} -> {faults['kept']:.0f}")


if __name__ == "__main__":
    main()
