"""`recipes.cpu.keep_freed_memory`: a training loop's freed activations are reused without new page faults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
CHILD = """
import resource, sys, torch
if sys.argv[1] == "1":
    from recipes.cpu import keep_freed_memory
    assert keep_freed_memory()
def update():  # 12 blocks of 5-20 MB and two of 63 MB alive at once, then all freed: an update's activations
    ts = [torch.ones(n) for n in (2_500_000, 5_000_000, 1_250_000, 3_750_000) * 3 + (15_667_200,) * 2]
    del ts
update(); update()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    update()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 5)
"""


def faults_per_update(tuned: bool) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("MALLOC_")}  # glibc's own knobs would blur the test
    out = subprocess.run([sys.executable, "-c", CHILD, str(int(tuned))], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_without_page_faults():
    # glibc's default trims the freed heap in most processes but not all (its thresholds adapt to the first
    # allocations): the most faults of three processes stands for the default; the fewest of three for the tuned
    # allocator (a loaded host's reclaim can fault a process's pages back in: CI once saw 1953 beside 6097). The two
    # blocks above glibc's 32 MB mmap ceiling (dmc_state's imagined features and their gradient) fault 44% of the
    # default's pages unless mmap is off altogether.
    default = max(faults_per_update(False) for _ in range(3))
    tuned = min(faults_per_update(True) for _ in range(3))
    if default < 1000:
        pytest.skip(f"this libc already keeps freed memory ({default:.0f} page faults per update): nothing to show")
    assert tuned < 0.25 * default, (default, tuned)


def test_training_runs_apply_it(monkeypatch, tmp_path):
    from recipes import cpu, run
    from recipes.config import build

    calls = []
    monkeypatch.setattr(cpu, "keep_freed_memory", lambda: calls.append(1) or True)
    cfg = build("debug", {"env": {"task": "cartpole_swingup"}})
    r = run.Run(cfg, tmp_path / "run")
    r.env.close()
    r.eval_env.close()
    assert calls == [1]
