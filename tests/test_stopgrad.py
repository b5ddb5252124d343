"""bilevel.stopgrad: recorded stop-gradient values are replayed in order, and misuse fails loudly."""

from __future__ import annotations

import pytest
import torch

from bilevel import stopgrad
from bilevel.stopgrad import Tape, sg


def f(x: torch.Tensor) -> torch.Tensor:
    return (x * sg(x)).sum() + sg(2 * x).sum()  # autograd: d/dx = sg(x) ; the value's derivative: 2x + 2


def test_plain_sg_is_detach_and_records_nothing_outside_a_tape():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    (g,) = torch.autograd.grad(f(x), x)
    assert torch.equal(g, x.detach())


def test_replayed_finite_difference_gives_autograds_derivative():
    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    v = torch.tensor([0.3, 0.1, -1.0], dtype=torch.float64)
    eps = 1e-6
    tape = Tape()
    with stopgrad.record(tape):
        f0 = f(x)
    assert len(tape.values) == 2
    with stopgrad.replay(tape):
        f1 = f(x + eps * v)
    fd_replayed = (f1 - f0) / eps
    fd_plain = (f(x + eps * v) - f(x)) / eps
    autograd = (x * v).sum()  # d/dε of f with the sg values frozen at x
    assert abs(float(fd_replayed - autograd)) < 1e-8
    assert abs(float(fd_plain - (2 * x * v + 2 * v).sum())) < 1e-5  # the other derivative
    assert abs(float(fd_plain - autograd)) > 0.1


def test_replay_that_takes_another_path_is_an_error():
    tape = Tape()
    with stopgrad.record(tape):
        sg(torch.zeros(3))
    with pytest.raises(RuntimeError, match=r"recorded shape \(3,\), got \(4,\)"), stopgrad.replay(tape):
        sg(torch.zeros(4))
    with pytest.raises(RuntimeError, match="called sg 0 times, 1 recorded"), stopgrad.replay(tape):
        pass
    with pytest.raises(RuntimeError, match="more than the 1 recorded"), stopgrad.replay(tape):
        sg(torch.zeros(3))
        sg(torch.zeros(3))


def test_tapes_nest_and_restore():
    outer, inner = Tape(), Tape()
    with stopgrad.record(outer):
        sg(torch.ones(1))
        with stopgrad.record(inner):
            sg(torch.ones(2))
        sg(torch.ones(3))
    assert [t.shape[0] for t in outer.values] == [1, 3]
    assert [t.shape[0] for t in inner.values] == [2]
    x = torch.ones(2, requires_grad=True)
    assert not sg(x).requires_grad  # no tape active again


def test_replay_resumes_where_a_partial_replay_stopped():
    """A pass that stops early (the upper context: no heads) leaves `tape.i` where the rest of it resumes."""
    tape = Tape()
    with stopgrad.record(tape):
        values = [sg(torch.full((1,), float(i))) for i in range(3)]
    with stopgrad.replay(tape, partial=True) as t:
        sg(torch.zeros(1))
    with stopgrad.replay(tape, start=t.i):
        rest = [sg(torch.zeros(1)), sg(torch.zeros(1))]
    assert rest[0] is values[1] and rest[1] is values[2]
    with pytest.raises(ValueError, match="replay start 4 is outside the tape's 0..3 values"):
        with stopgrad.replay(tape, start=4):
            pass
