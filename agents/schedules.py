"""DreamerV2's hyperparameter schedules (`common/other.py: schedule`), evaluated at the agent-step counter.

A schedule is a number, or a string: `'1e-4'` (constant), `'linear(a,b,n)'` (a to b over n steps, then b),
`'warmup(n,v)'` (0 to v over n steps), `'exp(a,b,h)'` (a decays to b with half-life h) or
`'horizon(a,b,n)'` (1 - 1/H with H linear from a to b over n steps). Steps are agent steps (environment steps
after action repeat), DreamerV2's `step` counter.
"""

from __future__ import annotations

import re

Schedule = float | str

def _mix(step: float, duration: float) -> float:
    return min(max(step / duration, 0.0), 1.0)


_FORMS = {
    "linear": lambda a, b, n, s: (1 - _mix(s, n)) * a + _mix(s, n) * b,
    "warmup": lambda n, v, s: _mix(s, n) * v,
    "exp": lambda a, b, h, s: (a - b) * 0.5 ** (s / h) + b,
    "horizon": lambda a, b, n, s: 1 - 1 / ((1 - _mix(s, n)) * a + _mix(s, n) * b),
}
_ARITY = {"linear": 3, "warmup": 2, "exp": 3, "horizon": 3}
ACCEPTED = "a number, 'linear(a,b,n)', 'warmup(n,v)', 'exp(a,b,halflife)' or 'horizon(a,b,n)'"


def parse(spec: Schedule) -> tuple[str, tuple[float, ...]]:
    """('const', (v,)) or (form, args); raises ValueError naming the spec and the accepted forms."""
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        return "const", (float(spec),)
    try:
        return "const", (float(spec),)
    except (TypeError, ValueError):
        pass
    m = re.fullmatch(r"\s*(\w+)\((.*)\)\s*", str(spec))
    if m and m.group(1) in _FORMS:
        try:
            args = tuple(float(x) for x in m.group(2).split(","))
        except ValueError:
            args = ()
        if len(args) == _ARITY[m.group(1)]:
            return m.group(1), args
    raise ValueError(f"bad schedule {spec!r}; accepted: {ACCEPTED}")


def value(spec: Schedule, step: int) -> float:
    """The schedule's value at agent step `step`."""
    form, args = parse(spec)
    return args[0] if form == "const" else float(_FORMS[form](*args, float(step)))
