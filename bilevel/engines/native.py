"""The native engine: every primitive on torch.autograd / torch.func, mixed(v) by the configured contraction.

* `mixed_inverse`: H⁻¹v by a Neumann series or conjugate gradient on Hessian-vector products of the forward pass's
  ∇θ L_low, then the contraction.
* `unrolled`: K differentiable copies of the trainer's real lower step (`bilevel.diffopt`), L_up re-evaluated at
  θ_K, gradient to α through the steps. Every step uses the step's batch and noise. For K > 1 the weighter's
  inputs and the model's stop-gradient values at θ_k are recomputed at each θ_k and treated as constants
  (detached), as any autograd unroll does: the result is the exact derivative of L_up(θ_K(α)) with those held
  at their values along the trajectory. (`lower_objective_at` and `upper_grad_through` are shared with `higher`.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from bilevel.context import StepContext, dot, grads_or_zeros
from bilevel.diffopt import DiffOptimizer
from bilevel.engines.base import Engine
from bilevel.registry import ENGINES


@ENGINES.register
class Native(Engine):
    name = "native"
    primitives = {"mixed": None, "mixed_inverse": None, "unrolled": None}
    float16 = True

    def needs_graph(self, primitive: str | None) -> bool:
        # Neumann/CG take HVPs of the pass's ∇θ L_low and the unroll's step 0 is the pass's own step; mixed(v)
        # needs the graph when the contraction differentiates that gradient again (double_backward).
        if primitive in ("mixed_inverse", "unrolled"):
            return True
        return primitive == "mixed" and self.contraction.needs_graph

    def mixed(self, sc: StepContext, v: list[Tensor]) -> list[Tensor]:
        return self.contraction(sc, v)

    def prepare_mixed(self, sc: StepContext, v: list[Tensor]) -> None:
        self.contraction.prepare(sc, v)

    def mixed_inverse(self, sc: StepContext, v: list[Tensor]) -> list[Tensor]:
        cfg = sc.cfg
        hvp = hvp_fn(sc)
        if cfg.implicit == "neumann":
            x = neumann_inverse_hvp(hvp, v, cfg.implicit_iters, cfg.neumann_alpha or sc.lr)
        else:
            x = cg_inverse_hvp(hvp, v, cfg.implicit_iters, cfg.cg_damping)
        return self.contraction(sc, x)

    def unrolled(self, sc: StepContext) -> list[Tensor]:
        dopt = DiffOptimizer(self.lower.opt, sc.theta, self.lower.clip)
        params = sc.theta
        for k in range(sc.cfg.unroll_steps):
            if k == 0:  # the shared forward pass
                g = sc.lower_grad(create_graph=True)
            else:
                g = grads_or_zeros(lower_objective_at(sc, params), params, create_graph=True)
            params = dopt.step(params, g)
        return upper_grad_through(sc, params)


# ---- H⁻¹v ---------------------------------------------------------------------------------------------------
def hvp_fn(sc: StepContext) -> Callable[[list[Tensor]], list[Tensor]]:
    g = sc.lower_grad(create_graph=True)
    theta = sc.theta
    return lambda u: [h.detach() for h in grads_or_zeros(g, theta, grad_outputs=u, retain_graph=True)]


def neumann_inverse_hvp(hvp: Callable, v: list[Tensor], iters: int, alpha: float) -> list[Tensor]:
    """H⁻¹v ≈ α Σ_{j=0..J} (I - αH)^j v (converges when α·λ_max(H) < 2)."""
    cur = list(v)
    acc = list(v)
    for _ in range(iters):
        hv = hvp(cur)
        cur = [c - alpha * h for c, h in zip(cur, hv, strict=True)]
        acc = [a + c for a, c in zip(acc, cur, strict=True)]
    return [alpha * a for a in acc]


def cg_inverse_hvp(hvp: Callable, v: list[Tensor], iters: int, damping: float) -> list[Tensor]:
    """Solve (H + damping·I) x = v by conjugate gradient from x=0 (H must be positive definite)."""
    x = [torch.zeros_like(t) for t in v]
    r = [t.clone() for t in v]
    p = [t.clone() for t in v]
    rr = dot(r, r)
    for _ in range(iters):
        if float(rr) == 0.0:
            break
        hp = [h + damping * pi for h, pi in zip(hvp(p), p, strict=True)]
        a = rr / dot(p, hp)
        x = [xi + a * pi for xi, pi in zip(x, p, strict=True)]
        r = [ri - a * hi for ri, hi in zip(r, hp, strict=True)]
        rr_new = dot(r, r)
        p = [ri + (rr_new / rr) * pi for ri, pi in zip(r, p, strict=True)]
        rr = rr_new
    return x


# ---- the unroll's re-evaluations ------------------------------------------------------------------------------
def lower_objective_at(sc: StepContext, params: list[Tensor]) -> Tensor:
    """L_low at θ_k = `params` (k ≥ 1 of an unroll): the step's batch and noise, the weighter's inputs recomputed
    at θ_k and detached, stop-gradient values those of θ_k (constants to autograd)."""
    with sc.rng.replay():
        losses, ctx = sc.problem.lower_losses(sc.batch, dict(zip(sc.names, params, strict=True)))
    return sc.problem.lower_objective(losses, sc.weighter(sc.problem.weighter_inputs(ctx).detach()))


def upper_grad_through(sc: StepContext, params: list[Tensor]) -> list[Tensor]:
    """∇α L_up(θ_K) for θ_K = `params` reached by differentiable steps: L_up re-evaluated with the step's batch and
    noise, differentiated back through the steps to α (the unroll's tail, for every engine)."""
    with sc.rng.replay():
        _, ctx = sc.problem.lower_losses(sc.batch, dict(zip(sc.names, params, strict=True)))
    return grads_or_zeros(sc.problem.upper_objective(sc.batch, ctx), sc.alpha)
