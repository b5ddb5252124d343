"""How to spend a machine's cores on a sweep: one trial with all threads, or one single-thread trial per core.

    python -m benchmarks.threads --size dmc_small --config none --updates 8 --rounds 3 \\
        --out benchmarks/results/threads_dmc_small.json

Each round times the recipe's whole update (`Bench.train_step`) in fresh processes, interleaved: one process with
`--cores` torch threads, then `--cores` single-thread processes at once. Throughput is updates per second of
wall-clock summed over the processes; the ratio (parallel / threaded) above 1 means one-thread trials side by
side make more updates, which `recipes.sweep --cpus-per-trial 1` does. The first update of each process (warm-up)
is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks.common import CONFIGS, REPO_ROOT, SIZES, machine


def worker(size: str, config: str, updates: int) -> float:
    """Seconds for `updates` timed train steps in this process (after one warm-up step)."""
    from benchmarks.common import build

    with build(size, config) as bench:
        bench.train_step()
        t0 = time.perf_counter()
        for _ in range(updates):
            bench.train_step()
        return time.perf_counter() - t0


def spawn(size: str, config: str, updates: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": REPO_ROOT}
    cmd = [sys.executable, "-m", "benchmarks.threads", "--worker", "--size", size, "--config", config,
           "--updates", str(updates), "--threads", str(threads)]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)


def seconds(procs: list[subprocess.Popen]) -> list[float]:
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"a benchmark worker failed ({p.returncode})")
        out.append(float(stdout.strip().splitlines()[-1]))
    return out


def measure(size: str, config: str, updates: int, rounds: int, cores: int) -> dict:
    rows = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        threaded = seconds([spawn(size, config, updates, cores)])
        t1 = time.perf_counter()
        parallel = seconds([spawn(size, config, updates, 1) for _ in range(cores)])
        t2 = time.perf_counter()
        rows.append({"threaded_s_per_update": threaded[0] / updates,
                     "parallel_s_per_update": [s / updates for s in parallel],
                     "threaded_updates_per_s": updates / threaded[0],
                     "parallel_updates_per_s": sum(updates / s for s in parallel),
                     "wall_s": [t1 - t0, t2 - t1]})
    ratios = [r["parallel_updates_per_s"] / r["threaded_updates_per_s"] for r in rows]
    return {"size": size, "config": config, "cores": cores, "updates": updates, "rounds": rows,
            "ratio_median": statistics.median(ratios), "machine": machine("cpu")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.threads", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="dmc_small", choices=list(SIZES))
    p.add_argument("--config", default="none", choices=list(CONFIGS), help="none = DreamerV2 (default)")
    p.add_argument("--updates", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument("--threads", type=int, default=1, help="(worker) torch threads")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help="write the result as JSON here")
    a = p.parse_args(argv)
    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        print(worker(a.size, a.config, a.updates))
        return
    result = measure(a.size, a.config, a.updates, a.rounds, a.cores)
    text = json.dumps(result, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(f"{a.size} {a.config}: {a.cores} single-thread processes make {result['ratio_median']:.2f}x the updates "
          f"of one {a.cores}-thread process (median of {a.rounds} interleaved rounds)")


if __name__ == "__main__":
    main()
