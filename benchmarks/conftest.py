"""Options of the benchmark suites.

`benchmarks/` is NOT under `testpaths` (pyproject.toml: testpaths = ["tests"], addopts has
--benchmark-disable), so the plain `python -m pytest` of CI never runs it. Run it explicitly:

    python -m pytest benchmarks/ --benchmark-enable --bench-size tiny -q                      # ~1-2 min, CPU
    python -m pytest benchmarks/ --benchmark-enable --bench-size dmc --bench-device cuda \\
        --benchmark-json=benchmarks/results/dmc_cuda.json
    python -m benchmarks.report benchmarks/results/dmc_cuda.json       # markdown table + PNG

Options: --bench-size tiny|dmc|atari (default tiny), --bench-device cpu|cuda (default cpu),
--bench-rounds N (interleaved A/B rounds of test_train_step.py; default 10 tiny, 3 otherwise),
--bench-mem-steps N (steps per fresh memory process; default 3 tiny, 2 otherwise),
--bench-mem-rounds N (interleaved A/B memory processes; default 2 tiny, 1 otherwise),
--bench-no-memory / --bench-no-fidelity to skip those extras, --bench-keep-denormals to keep CPU
denormals (by default they are flushed to zero: see `set_flush_denormal` in common.py).
pytest-benchmark's own options (--benchmark-min-rounds, --benchmark-max-time, --benchmark-json, ...)
control the timed rounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from benchmarks.common import SIZES, set_flush_denormal


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("tempo-bench", "TEMPO benchmarks")
    g.addoption("--bench-size", default="tiny", choices=list(SIZES), help="model/batch size (default tiny)")
    g.addoption("--bench-device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    g.addoption("--bench-rounds", type=int, default=None, help="interleaved A/B rounds (default 10 tiny, else 3)")
    g.addoption("--bench-mem-steps", type=int, default=None, help="steps per memory process (3 tiny, else 2)")
    g.addoption("--bench-mem-rounds", type=int, default=None,
                help="interleaved A/B fresh memory processes (2 tiny, else 1)")
    g.addoption("--bench-no-memory", action="store_true", help="skip the peak-memory measurements")
    g.addoption("--bench-no-fidelity", action="store_true", help="skip the α-gradient fidelity check")
    g.addoption("--bench-keep-denormals", action="store_true",
                help="do NOT flush denormal floats to zero on CPU (default: flush, see benchmarks/common.py)")


def pytest_configure(config: pytest.Config) -> None:
    device = config.getoption("--bench-device", default="cpu")
    if device is not None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--bench-device cuda was asked for but torch sees no CUDA device")
    set_flush_denormal(not config.getoption("--bench-keep-denormals", default=False))


@dataclass(frozen=True)
class BenchOptions:
    size: str
    device: str
    rounds: int
    mem_steps: int
    mem_rounds: int
    memory: bool
    fidelity: bool


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
        memory=not o("--bench-no-memory"), fidelity=not o("--bench-no-fidelity"),
    )
