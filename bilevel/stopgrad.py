"""Stop-gradients that a finite difference can see.

Autograd treats `sg(x)` as a constant: the derivative it takes of f(x, sg(x)) is ∂₁f only. A finite
difference of f's *value* moves both arguments, so it estimates a different derivative wherever a model
stops gradients (DreamerV2's KL balancing, straight-through samples). If every stop-gradient of a model goes
through `sg`, a pass run under `record()` keeps the values sg returned at θ, and a later pass under
`replay(tape)` returns exactly those values again: a finite difference taken with them frozen estimates the
derivative autograd would take. Nothing is recorded outside these contexts (plain `x.detach()`).

    tape = Tape()
    with record(tape):  loss0 = f(θ)            # sg values at θ kept in order
    with replay(tape):  loss1 = f(θ + εv)       # the same sg values, in the same order
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import Tensor

_active = threading.local()


@dataclass
class Tape:
    values: list[Tensor] = field(default_factory=list)
    replaying: bool = False
    i: int = 0


def sg(x: Tensor) -> Tensor:
    """Stop-gradient (`x.detach()`), recorded or replayed while a tape is active."""
    tape: Tape | None = getattr(_active, "tape", None)
    if tape is None:
        return x.detach()
    if not tape.replaying:
        tape.values.append(x.detach())
        return tape.values[-1]
    if tape.i >= len(tape.values):
        raise RuntimeError(f"stop-gradient replay: pass calls sg more than the {len(tape.values)} recorded times")
    y = tape.values[tape.i]
    if y.shape != x.shape:
        raise RuntimeError(f"stop-gradient replay out of step at call {tape.i}: recorded shape "
                           f"{tuple(y.shape)}, got {tuple(x.shape)} (the re-evaluated pass took another path)")
    tape.i += 1
    return y


def recording() -> bool:
    """True inside `record()`: the pass being run will be re-evaluated by a finite difference."""
    tape: Tape | None = getattr(_active, "tape", None)
    return tape is not None and not tape.replaying


@contextmanager
def _use(tape: Tape) -> Iterator[Tape]:
    prev = getattr(_active, "tape", None)
    _active.tape = tape
    try:
        yield tape
    finally:
        _active.tape = prev


@contextmanager
def record(tape: Tape) -> Iterator[Tape]:
    """Keep the value of every `sg` call in the block (in call order)."""
    tape.values.clear()
    tape.replaying, tape.i = False, 0
    with _use(tape):
        yield tape


@contextmanager
def replay(tape: Tape, partial: bool = False, start: int = 0) -> Iterator[Tape]:
    """Return the recorded values from `sg`, in order; the pass must call sg exactly as often as recorded (or,
    with `partial`, at most as often: a pass that stops early, e.g. before the heads). `start`: resume where an
    earlier partial replay of the same pass stopped (`tape.i` after it), e.g. to finish that pass's losses."""
    if not 0 <= start <= len(tape.values):
        raise ValueError(f"stop-gradient replay start {start} is outside the tape's 0..{len(tape.values)} values")
    tape.replaying, tape.i = True, start
    with _use(tape):
        yield tape
    if tape.i != len(tape.values) and not partial:
        raise RuntimeError(f"stop-gradient replay: pass called sg {tape.i} times, {len(tape.values)} recorded")
