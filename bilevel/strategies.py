"""Hypergradient strategies: how the α-gradient is formed from one step's shared computations.

With the lower update θ' = θ - η ∇θ L_low(θ, w(α)) the true one-step hypergradient is

    ∇α L_up(θ') = -η · (∂²L_low/∂θ∂α)ᵀ ∇θ' L_up(θ')                         (paper eq. 8)

* `approx`   (eq. 9): evaluate ∇θ L_up at θ from the same forward pass:  c · mixed(∇θ L_up(θ)) with
             c = -η (`approx_scale='lr'`, the exact derivative's scale) or c = -1 (`'unit'`, the default: the
             official code's magnitude; with Adam on α only the direction of each entry relative to eps
             matters, and -η pushes almost every entry below eps). `sign='official'` flips c to +1 / +η, as
             the deng-ai-lab TF code does. η is the lower optimizer's lr: with Adam as the lower optimizer,
             `approx` (and `implicit`) differentiate an SGD step of size η, not Adam's step; only `unroll`
             differentiates the real optimizer.
* `unroll`   : K differentiable copies of the trainer's real lower step (clipping, then SGD/Adam/AdamW with all
             their options, from the optimizer's state; `bilevel.diffopt`), L_up re-evaluated at θ_K, gradient
             to α through the steps (native torch.autograd, or `higher`). Every step uses the step's batch and
             noise. For K > 1 the weighter's inputs and the model's stop-gradient values at θ_k are recomputed
             at each θ_k and treated as constants (detached), as any autograd unroll does: the result is the
             exact derivative of L_up(θ_K(α)) with those held at their values along the trajectory.
* `implicit` : implicit function theorem, -mixed(H⁻¹ ∇θ L_up) with H⁻¹v by Neumann series or CG (no η).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from bilevel import contractions, diffopt
from bilevel.config import BilevelConfig
from bilevel.context import StepContext, dot, grads_or_zeros


def approx_coef(cfg: BilevelConfig, lr: float) -> float:
    """c in c · mixed(∇θ L_up): the sign of the exact derivative (or the official code's +), times η or 1."""
    return (-1.0 if cfg.sign == "correct" else 1.0) * (lr if cfg.approx_scale == "lr" else 1.0)


def approx(sc: StepContext, mixed: contractions.Contraction, cfg: BilevelConfig) -> list[Tensor]:
    coef = approx_coef(cfg, sc.lr)
    return [coef * m for m in mixed(sc, sc.upper_grad())]


# ---- implicit -------------------------------------------------------------------------------------
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


def implicit(sc: StepContext, mixed: contractions.Contraction, cfg: BilevelConfig) -> list[Tensor]:
    v = sc.upper_grad()
    hvp = hvp_fn(sc)
    if cfg.implicit == "neumann":
        x = neumann_inverse_hvp(hvp, v, cfg.implicit_iters, cfg.neumann_alpha or sc.lr)
    else:
        x = cg_inverse_hvp(hvp, v, cfg.implicit_iters, cfg.cg_damping)
    return [-m for m in mixed(sc, x)]


# ---- unroll (native) ------------------------------------------------------------------------------
def lower_grad_at(sc: StepContext, params: list[Tensor]) -> list[Tensor]:
    """∇θ L_low at θ_k = `params` (k ≥ 1 of an unroll), with a graph: the step's batch and noise, the weighter's
    inputs recomputed at θ_k and detached, stop-gradient values those of θ_k (constants to autograd)."""
    with sc.rng.replay():
        losses, ctx = sc.problem.lower_losses(sc.batch, dict(zip(sc.names, params, strict=True)))
    w = sc.weighter(sc.problem.weighter_inputs(ctx).detach())
    return grads_or_zeros(sc.problem.lower_objective(losses, w), params, create_graph=True)


def upper_at(sc: StepContext, params: list[Tensor]) -> Tensor:
    """L_up at θ_K = `params`, with the step's batch and noise."""
    with sc.rng.replay():
        _, ctx = sc.problem.lower_losses(sc.batch, dict(zip(sc.names, params, strict=True)))
    return sc.problem.upper_loss(sc.batch, ctx)


def unroll(sc: StepContext, steps: int, opt: torch.optim.Optimizer, clip: float | None) -> list[Tensor]:
    """∇α L_up(θ_K): K differentiable copies of the trainer's real step (clip, then `opt`'s update)."""
    dopt = diffopt.DiffOptimizer(opt, sc.theta, clip)
    params = sc.theta
    for k in range(steps):
        g = sc.lower_grad(create_graph=True) if k == 0 else lower_grad_at(sc, params)  # k = 0: the shared pass
        params = dopt.step(params, g)
    return grads_or_zeros(upper_at(sc, params), sc.alpha)
