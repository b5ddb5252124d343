"""What the allocator settings of a run buy an update: keeping freed memory (`recipes.cpu.keep_freed_memory`, which
every CPU run applies), and where the update runs (the main thread, or a second thread as a Ray Tune trial runs).

    python -m benchmarks.malloc --size dmc_small --configs none,approx-terms_fd --updates 6 --rounds 4 \\
        --threads 1 --out benchmarks/results/malloc_dmc_small_1thread.json
    python -m benchmarks.malloc --size dmc_small --configs none,approx-terms_fd --arms kept,thread,thread_one_arena

Each round times `--updates` updates (`Bench.train_step`, after one warm-up update) in one fresh process per arm,
alternating, per config; the allocator settings are process-wide and cannot be undone. Arms: `default` (glibc's
defaults: the run's call is replaced with a no-op before building the run), `kept` (the run's settings), `thread`
(the run's settings, the updates in a second thread: glibc gives it an arena of its own), `thread_one_arena` (the
same with `MALLOC_ARENA_MAX=1`, as `recipes.sweep` starts its trials' workers). Each arm's ratio to the first arm is
the median of the rounds' paired ratios; the page faults per update are counted in each process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

from benchmarks.common import CONFIGS, REPO_ROOT, SIZES, machine

ARMS = {  # name: (keep freed memory, updates in a second thread, MALLOC_ARENA_MAX or None for unset)
    "default": (False, False, None),
    "kept": (True, False, None),
    "thread": (True, True, None),
    "thread_one_arena": (True, True, "1"),
}


def worker(size: str, config: str, updates: int, keep: bool, in_thread: bool) -> dict[str, float]:
    from benchmarks.common import build
    from recipes import cpu

    if not keep:
        cpu.keep_freed_memory = lambda: False  # glibc's defaults: the run's call does nothing in this process
    out: dict[str, float] = {}

    def run() -> None:  # faults counted per process: the other threads' are the same in every arm
        with build(size, config) as bench:
            bench.train_step()
            f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            for _ in range(updates):
                bench.train_step()
            seconds = time.perf_counter() - t0
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        out.update(s_per_update=seconds / updates, faults_per_update=faults / updates)

    if in_thread:
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
    else:
        run()
    if not out:
        raise RuntimeError("the update thread failed (its traceback is above)")
    return out


def run_worker(size: str, config: str, updates: int, arm: str, threads: int) -> dict[str, float]:
    keep, in_thread, arena_max = ARMS[arm]
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    env |= {"OMP_NUM_THREADS": str(threads), "PYTHONPATH": REPO_ROOT}
    env |= {"MALLOC_ARENA_MAX": arena_max} if arena_max else {}
    cmd = [sys.executable, "-m", "benchmarks.malloc", "--worker", "--size", size, "--configs", config,
           "--updates", str(updates), "--threads", str(threads), "--arms", arm]
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(size: str, configs: list[str], updates: int, rounds: int, threads: int, arms: list[str]) -> dict:
    result = {}
    for config in configs:
        rows = [{arm: run_worker(size, config, updates, arm, threads) for arm in arms} for _ in range(rounds)]
        ratios = {arm: [r[arm]["s_per_update"] / r[arms[0]]["s_per_update"] for r in rows] for arm in arms[1:]}
        result[config] = {"rounds": rows, "ratios": ratios,
                          "ratio_median": {arm: statistics.median(v) for arm, v in ratios.items()}}
    return {"size": size, "updates": updates, "threads": threads, "arms": arms, "configs": result,
            "machine": machine("cpu")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.malloc", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="dmc_small", choices=list(SIZES))
    p.add_argument("--configs", default="none,approx-terms_fd", help="comma-separated; none = DreamerV2")
    p.add_argument("--updates", type=int, default=6)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch threads of each process")
    p.add_argument("--arms", default="default,kept",
                   help=f"comma-separated, the first is the reference: {', '.join(ARMS)}")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help="write the result as JSON here")
    a = p.parse_args(argv)
    configs, arms = a.configs.split(","), a.arms.split(",")
    bad = [c for c in configs if c not in CONFIGS]
    bad_arms = [x for x in arms if x not in ARMS]
    if bad:
        p.error(f"--configs {bad} not in {sorted(CONFIGS)}")
    if bad_arms or len(arms) < (1 if a.worker else 2):
        p.error(f"--arms {a.arms!r}: two or more of {', '.join(ARMS)}")
    if a.updates < 1 or a.rounds < 1 or a.threads < 1:
        p.error(f"--updates, --rounds and --threads must be >= 1, got {a.updates}, {a.rounds}, {a.threads}")
    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        keep, in_thread, _ = ARMS[arms[0]]
        print(json.dumps(worker(a.size, configs[0], a.updates, keep, in_thread)))
        return
    result = measure(a.size, configs, a.updates, a.rounds, a.threads, arms)
    if a.out:
        with open(a.out, "w") as f:
            f.write(json.dumps(result, indent=1) + "\n")
    for config, r in result["configs"].items():
        faults = {arm: statistics.median(x[arm]["faults_per_update"] for x in r["rounds"]) for arm in arms}
        ratios = ", ".join(f"{arm} {v:.3f}" for arm, v in r["ratio_median"].items())
        print(f"{a.size} {config}: time per update / {arms[0]}'s: {ratios} (median of {a.rounds} paired rounds); "
              "page faults per update " + ", ".join(f"{arm} {v:.0f}" for arm, v in faults.items()))


if __name__ == "__main__":
    main()
