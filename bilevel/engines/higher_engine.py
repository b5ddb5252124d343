"""Exact unrolling with `higher`: its patched functional model and its differentiable-optimizer machinery,
stepping the optimizer the trainer really steps.

`higher.innerloop_ctx` would pick higher's own DifferentiableAdam, which adds eps to √v before the bias
correction (the legacy torch formula): its α-gradient is off most at the first steps (README) and it ignores
`decoupled_weight_decay` and clipping. So we build the two pieces ourselves: `higher.monkeypatch` for the fast
weights (`copy_initial_weights=False`: the trajectory starts at the live θ; unlike the native unroll step 0
re-runs the lower loss, with the same noise), and `ExactDifferentiableOptimizer`, a
`higher.optim.DifferentiableOptimizer` whose `_update` is `bilevel.diffopt.step_param` (torch's SGD / Adam /
AdamW with every option) after the trainer's global-norm clipping in the grad callback. higher copies the
optimizer's state (moments, step counts, momentum buffers) into it, as the native unroll does.
"""

from __future__ import annotations

from typing import Any

import higher
import torch
from higher.optim import DifferentiableOptimizer
from torch import Tensor

from bilevel.context import StepContext
from bilevel.diffopt import check_differentiable, clip_by_global_norm, optimizer_kind, step_param
from bilevel.engines.native import lower_objective_at, upper_grad_through


class ExactDifferentiableOptimizer(DifferentiableOptimizer):
    """higher's differentiable optimizer interface with torch's exact update (`bilevel.diffopt.step_param`)."""

    def __init__(self, other: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
        check_differentiable(other)
        self.kind = optimizer_kind(other)
        super().__init__(other, *args, **kwargs)

    def _update(self, grouped_grads: list[list[Tensor | None]], **kwargs: Any) -> None:
        for gi, (group, grads) in enumerate(zip(self.param_groups, grouped_grads, strict=True)):
            for pi, (p, g) in enumerate(zip(group["params"], grads, strict=True)):
                g = torch.zeros_like(p) if g is None else g
                group["params"][pi] = step_param(p, g, self.state[gi][pi], group, self.kind)


def unroll(sc: StepContext, steps: int, opt: torch.optim.Optimizer, clip: float | None) -> list[Tensor]:
    model = sc.problem.model
    fmodel = higher.monkeypatch(model, copy_initial_weights=False, track_higher_grads=True)

    def clip_grads(gs: list[Tensor | None]) -> list[Tensor]:
        gs = [torch.zeros_like(p) if g is None else g for g, p in zip(gs, fmodel.fast_params, strict=True)]
        return gs if clip is None else clip_by_global_norm(gs, clip)

    dopt = ExactDifferentiableOptimizer(opt, model.parameters(), fmodel=fmodel, grad_callback=clip_grads,
                                        track_higher_grads=True)
    for _ in range(steps):  # the native unroll's L_low at θ_k, at higher's fast weights (θ_0 included)
        dopt.step(lower_objective_at(sc, list(fmodel.fast_params)))
    return upper_grad_through(sc, list(fmodel.fast_params))
