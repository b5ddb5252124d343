"""Exact unrolling with `higher`: innerloop_ctx + its differentiable copy of the trainer's optimizer.

`copy_initial_weights=False` makes the unrolled trajectory start at the live θ (higher clones it into
fast weights, so unlike the native unroll step 0 re-runs the lower loss, with the same noise), and
higher copies the optimizer's state (Adam moments), as the native unroll does.
"""

from __future__ import annotations

import higher
import torch
from torch import Tensor

from bilevel.context import StepContext, grads_or_zeros


def unroll(sc: StepContext, steps: int, opt: torch.optim.Optimizer) -> list[Tensor]:
    names = sc.names
    model = sc.problem.model
    with higher.innerloop_ctx(model, opt, copy_initial_weights=False, track_higher_grads=True) as (fmodel, dopt):
        for _ in range(steps):
            with sc.rng.replay():
                losses, ctx = sc.problem.lower_losses(sc.batch, dict(zip(names, fmodel.fast_params, strict=True)))
            loss = sc.problem.lower_objective(losses, sc.weighter(sc.problem.weighter_inputs(ctx).detach()))
            dopt.step(loss, grad_callback=lambda gs: [torch.zeros_like(p) if g is None else g
                                                      for g, p in zip(gs, fmodel.fast_params, strict=True)])
        with sc.rng.replay():
            _, ctx = sc.problem.lower_losses(sc.batch, dict(zip(names, fmodel.fast_params, strict=True)))
        up = sc.problem.upper_loss(sc.batch, ctx)
        sc.unrolled_upper = float(up.detach())
        return grads_or_zeros(up, sc.alpha)
