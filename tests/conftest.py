"""Shared test setup."""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", choices=["cpu", "cuda"],
                     help="device of the device-generic tests (tests/test_device.py); default cpu")


@pytest.fixture
def device(request: pytest.FixtureRequest) -> str:
    """The device `--device` names; skipped where it is absent."""
    name = request.config.getoption("--device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda: torch sees no CUDA device")
    return name


@pytest.fixture(autouse=True)
def one_thread():
    """Every model in the suite is tiny: intra-op threads only contend on a shared 2-core machine
    (measured up to 10x slower with 2 threads under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
