"""Options of the benchmark suites.

`benchmarks/` is NOT under `testpaths` (pyproject.toml: testpaths = ["tests"], addopts has
--benchmark-disable), so the plain `python -m pytest` of CI never runs it. Run it explicitly:

    python -m pytest benchmarks/ --benchmark-enable --bench-size tiny -q   # ~2 min on 2 idle cores
    python -m pytest benchmarks/ --benchmark-enable --bench-size dmc --bench-device cuda \\
        --benchmark-json=benchmarks/results/dmc_cuda.json
    python -m benchmarks.report benchmarks/results/dmc_cuda.json       # markdown table + PNG

Options: --bench-size tiny|dmc_state|dmc_small|dmc|atari (default tiny), --bench-device cpu|cuda (default cpu),
--bench-precision 32,bf16,16,auto,bf16/32 (the precision settings of test_train_step_precisions, P/W: the
actor-critic at P, the world model at W; default 32,auto),
--bench-compile off,on (the `run.compile` settings of test_train_step_precisions; default off),
--bench-rounds N (interleaved A/B rounds of test_train_step.py; default 10 tiny, 3 otherwise),
--bench-mem-steps N (steps per fresh memory process; default 3 tiny, 2 otherwise),
--bench-mem-rounds N (interleaved A/B memory processes; default 2 tiny, 1 otherwise),
--bench-mem-workers N (memory processes at once, before any timing; default 2 tiny, 1 otherwise),
--bench-threads N (torch CPU threads; default 1 for tiny, else torch's default),
--bench-no-memory / --bench-no-fidelity to skip those extras, --bench-keep-denormals to keep CPU
denormals (by default they are flushed to zero: see `set_flush_denormal` in common.py).
pytest-benchmark's own options (--benchmark-min-rounds, --benchmark-max-time, --benchmark-json, ...)
control the timed rounds.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import torch

from benchmarks.common import SIZES, TEMPO, set_flush_denormal
from benchmarks.memory import measure_subprocess


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("tempo-bench", "TEMPO benchmarks")
    g.addoption("--bench-size", default="tiny", choices=list(SIZES), help="model/batch size (default tiny)")
    g.addoption("--bench-device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    g.addoption("--bench-rounds", type=int, default=None, help="interleaved A/B rounds (default 10 tiny, else 3)")
    g.addoption("--bench-mem-steps", type=int, default=None, help="steps per memory process (3 tiny, else 2)")
    g.addoption("--bench-mem-rounds", type=int, default=None,
                help="interleaved A/B fresh memory processes (2 tiny, else 1)")
    g.addoption("--bench-mem-workers", type=int, default=None,
                help="fresh memory processes run at once (default 2 for tiny, else 1); they run before any timing")
    g.addoption("--bench-tempo", default=None,
                help="the TEMPO config of the ratio benchmarks (default approx-terms_fd, the recipe's)")
    g.addoption("--bench-no-memory", action="store_true", help="skip the peak-memory measurements")
    g.addoption("--bench-no-fidelity", action="store_true", help="skip the α-gradient fidelity check")
    g.addoption("--bench-threads", type=int, default=None,
                help="torch CPU threads (default: 1 for tiny, whose ops are too small to parallelise; "
                     "else torch's default)")
    g.addoption("--bench-precision", default="32,auto",
                help="comma-separated precision settings of test_train_step_precisions (32, bf16, 16, auto, or P/W: "
                     "the actor-critic at P, the world model at W; default 32,auto)")
    g.addoption("--bench-compile", default="off",
                help="comma-separated run.compile settings of test_train_step_precisions (off, on; default off)")
    g.addoption("--bench-keep-denormals", action="store_true",
                help="do NOT flush denormal floats to zero on CPU (default: flush, see benchmarks/common.py)")


def pytest_configure(config: pytest.Config) -> None:
    device = config.getoption("--bench-device", default="cpu")
    if device is not None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--bench-device cuda was asked for but torch sees no CUDA device")
    set_flush_denormal(not config.getoption("--bench-keep-denormals", default=False))
    threads = config.getoption("--bench-threads", default=None)
    if threads is None and config.getoption("--bench-size", default=None) == "tiny":
        threads = 1
    if threads:
        torch.set_num_threads(threads)  # memory subprocesses get the same count (--threads)


@dataclass(frozen=True)
class BenchOptions:
    size: str
    device: str
    rounds: int
    mem_steps: int
    mem_rounds: int
    mem_workers: int
    memory: bool
    fidelity: bool
    tempo: str
    precisions: tuple[str, ...] = ("32", "auto")
    compiles: tuple[bool, ...] = (False,)


@pytest.fixture(scope="session")
def bench_opts(request: pytest.FixtureRequest) -> BenchOptions:
    o = request.config.getoption
    size = o("--bench-size")
    tiny = size == "tiny"
    return BenchOptions(
        size=size, device=o("--bench-device"),
        rounds=o("--bench-rounds") or (10 if tiny else 3),
        mem_steps=o("--bench-mem-steps") or (3 if tiny else 2),
        mem_rounds=o("--bench-mem-rounds") or (2 if tiny else 1),
        mem_workers=o("--bench-mem-workers") or (2 if tiny else 1),
        memory=not o("--bench-no-memory"), fidelity=not o("--bench-no-fidelity"),
        tempo=o("--bench-tempo") or TEMPO,
        precisions=tuple(p.strip() for p in o("--bench-precision").split(",") if p.strip()),
        compiles=_compiles(o("--bench-compile")),
    )


def _compiles(text: str) -> tuple[bool, ...]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in ("off", "on")]
    if bad or not values:
        raise pytest.UsageError(f"--bench-compile {text!r}: accepted values are off, on (comma-separated)")
    return tuple(dict.fromkeys(v == "on" for v in values))


@pytest.fixture(scope="session")
def cpu_memory(bench_opts: BenchOptions, request: pytest.FixtureRequest) -> dict[str, dict]:
    """Fresh-process peak memory (CPU) of every test_hypergrad config selected in this session, measured
    up front, `--bench-mem-workers` processes at a time, BEFORE the first timing (so the concurrency never
    disturbs a timed step; peak RSS of a process does not depend on what else runs)."""
    o = bench_opts
    if not o.memory or torch.device(o.device).type != "cpu":
        return {}
    configs = list(dict.fromkeys(
        item.callspec.params["config"] for item in request.session.items
        if getattr(item, "originalname", None) == "test_hypergrad" and hasattr(item, "callspec")))
    run = lambda c: measure_subprocess(c, o.size, o.device, steps=o.mem_steps)  # noqa: E731
    with ThreadPoolExecutor(max(1, o.mem_workers)) as pool:
        return dict(zip(configs, pool.map(run, configs), strict=True))
