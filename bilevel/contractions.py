"""Five ways to contract the mixed second derivative with a vector v over θ:

    mixed(v) = ∂/∂α [ ∇θ L_low(θ, α) · v ]   = (∂²L_low/∂θ∂α)ᵀ v      (one entry per α)

* double_backward: reverse-over-reverse on the graph of the shared forward pass (no re-evaluation).
* jvp: forward-over-reverse, d/dε ∇α L_low(θ + εv, α) with torch.func — what the official TF code does.
  It re-runs the lower loss functionally (the "second RSSM pass").
* terms_jvp: exact and second-order-free. L_low = F(losses(θ), w(α)), so
  mixed(v) = ∂α[ ∂F/∂losses · u ] with u = J_losses(θ)·v, one forward-mode JVP of the per-sample losses
  (re-runs the lower loss with dual numbers; no create_graph backward through the model).
* terms_fd: terms_jvp with u = (losses(θ + εv) - losses(θ)) / ε from ONE no-grad forward pass, ε = r/||v||
  (`BilevelProblem.loss_deltas`, which a problem may shorten: TEMPO re-runs only encoder + RSSM).
  The pass replays the stop-gradient values recorded at θ (`bilevel.stopgrad`), so it estimates the JVP
  autograd would take (KL balancing, straight-through samples), with the step's noise. It needs no graph
  through the model at all: the cheapest contraction in time and memory; first-order accurate in ε. After a
  reduced-precision forward pass (autocast) both sides of the difference are float32 passes.
* finite_difference: (∇α L_low(θ+εv) - ∇α L_low(θ-εv)) / 2ε with ε = r/||v|| (DARTS), same noise in
  both evaluations, and θ restored bit-exactly by copying the saved values back (never by add/sub).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from bilevel import stopgrad
from bilevel.context import StepContext, grads_or_zeros, norm

Contraction = Callable[[StepContext, list[Tensor]], list[Tensor]]


def double_backward(sc: StepContext, v: list[Tensor]) -> list[Tensor]:
    g = sc.lower_grad(create_graph=True)
    # Contract only where v is non-zero (for `approx`: the upper parameters): zero blocks would still cost
    # a full second backward through e.g. the decoder (measured -34% time of this step at DMC size).
    nonzero = torch.stack([vi.any() for vi in v]).tolist()  # one host sync, not one per tensor
    idx = [i for i, nz in enumerate(nonzero) if nz]
    if not idx:
        return [torch.zeros_like(a) for a in sc.alpha]
    return grads_or_zeros([g[i] for i in idx], sc.alpha, grad_outputs=[v[i] for i in idx], retain_graph=True)


def jvp(sc: StepContext, v: list[Tensor]) -> list[Tensor]:
    assert sc.weighter is not None
    theta = {n: p.detach() for n, p in sc.problem.model.named_parameters()}
    alpha = {n: p.detach() for n, p in sc.weighter.named_parameters()}
    tangent = {n: t.detach() for n, t in zip(theta, v, strict=True)}

    def grad_alpha(th: dict[str, Tensor]) -> dict[str, Tensor]:
        return torch.func.grad(lambda a: sc.lower_at(th, a))(alpha)

    _, out = torch.func.jvp(grad_alpha, (theta,), (tangent,))
    return [out[n] for n in alpha]


def terms_jvp(sc: StepContext, v: list[Tensor]) -> list[Tensor]:
    theta = {n: p.detach() for n, p in sc.problem.model.named_parameters()}
    tangent = {n: t.detach() for n, t in zip(theta, v, strict=True)}

    def losses_at(th: dict[str, Tensor]) -> Any:
        with sc.rng.replay():
            return sc.problem.lower_losses(sc.batch, th)[0]

    _, u = torch.func.jvp(losses_at, (theta,), (tangent,))  # J_losses v, same structure as the losses
    return _contract_terms(sc, tree_flatten(u)[0])


def terms_fd(sc: StepContext, v: list[Tensor], radius: float = 1e-4) -> list[Tensor]:
    if sc.sg_tape is None:
        raise RuntimeError("terms_fd needs the stop-gradient values of the forward pass: build the StepContext "
                           "with BilevelTrainer (it records them when contraction='terms_fd')")
    vnorm = float(norm(v))
    if vnorm == 0.0:
        return [torch.zeros_like(a) for a in sc.alpha]
    eps = radius / vnorm
    nonzero = torch.stack([vi.any() for vi in v]).tolist()
    named = list(sc.problem.model.named_parameters())
    params = {n: p.detach() + eps * vi if nz else p.detach() for (n, p), vi, nz in zip(named, v, nonzero, strict=True)}
    shifted = {n for (n, _), nz in zip(named, nonzero, strict=True) if nz}
    with torch.no_grad(), sc.rng.replay(), stopgrad.replay(sc.sg_tape):
        deltas = tree_flatten(sc.problem.loss_deltas(sc.batch, params, sc.ctx, sc.losses, shifted))[0]
    if sc.reduced:
        # The forward pass's losses are reduced-precision values: against them a float32 shift measures the
        # rounding, not the shift. Subtract the same float32 pass at θ instead (the forward's values cancel).
        at_theta = {n: p.detach() for n, p in named}
        with torch.no_grad(), sc.rng.replay(), stopgrad.replay(sc.sg_tape):
            base = tree_flatten(sc.problem.loss_deltas(sc.batch, at_theta, sc.ctx, sc.losses, shifted))[0]
        deltas = [d - b for d, b in zip(deltas, base, strict=True)]
    return _contract_terms(sc, [d / eps for d in deltas])


def _contract_terms(sc: StepContext, flat_u: list[Tensor]) -> list[Tensor]:
    """∂α[ Σ_i ∂F/∂losses_i · u_i ] where F = lower_objective(losses, w(α)) and u = J_losses·v (flattened)."""
    flat_l, spec = tree_flatten(sc.losses)
    leaves = [t.detach().requires_grad_() for t in flat_l]
    # w(α) with its graph: the forward pass's (the θ backward never runs the weighter's nodes, so their saved
    # tensors are still there), or a float32 recomputation after a reduced-precision forward.
    w = sc.weights() if sc.reduced or not sc.w.requires_grad else sc.w
    objective = sc.problem.lower_objective(tree_unflatten(leaves, spec), w)  # graph to α only
    g = torch.autograd.grad(objective, leaves, create_graph=True, allow_unused=True)
    s = sum((gi * ui).sum() for gi, ui in zip(g, flat_u, strict=True) if gi is not None)
    return grads_or_zeros(s, sc.alpha, retain_graph=True)


def finite_difference(sc: StepContext, v: list[Tensor], radius: float = 1e-2) -> list[Tensor]:
    theta = sc.theta
    vnorm = float(norm(v))
    if vnorm == 0.0:
        return [torch.zeros_like(a) for a in sc.alpha]
    eps = radius / vnorm
    saved = [p.detach().clone() for p in theta]
    params = dict(sc.problem.model.named_parameters())
    try:
        grads = []
        for sgn in (1.0, -1.0):
            with torch.no_grad():
                for p, p0, vi in zip(theta, saved, v, strict=True):
                    p.copy_(p0 + sgn * eps * vi)
            grads.append(grads_or_zeros(sc.lower_at(params), sc.alpha))
    finally:
        with torch.no_grad():
            for p, p0 in zip(theta, saved, strict=True):
                p.copy_(p0)  # bit-exact restore
    return [(gp - gm) / (2 * eps) for gp, gm in zip(*grads, strict=True)]


def get(name: str, fd_radius: float = 1e-2, terms_fd_radius: float = 1e-4) -> Contraction:
    if name == "double_backward":
        return double_backward
    if name == "jvp":
        return jvp
    if name == "terms_jvp":
        return terms_jvp
    if name == "terms_fd":
        return lambda sc, v: terms_fd(sc, v, terms_fd_radius)
    if name == "finite_difference":
        return lambda sc, v: finite_difference(sc, v, fd_radius)
    accepted = ["double_backward", "jvp", "terms_jvp", "terms_fd", "finite_difference"]
    raise ValueError(f"unknown contraction {name!r}; accepted: {accepted}")
