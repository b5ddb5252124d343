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
  reduced-precision forward pass (autocast) both sides of the difference are float32 passes (the base one read
  from the upper loss's float32 pass where the problem can: `BilevelProblem.loss_deltas_from`).
* finite_difference: (∇α L_low(θ+εv) - ∇α L_low(θ-εv)) / 2ε with ε = r/||v|| (DARTS), same noise in
  both evaluations, and θ restored bit-exactly by copying the saved values back (never by add/sub).

The native engine's primitives contract with the configured one (`bilevel.engines.native`); Betty contracts its
own way (darts is a `finite_difference`, its neumann and cg a `double_backward`), so each engine declares the
contractions it accepts (`Engine.primitives`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from bilevel.context import StepContext, grads_or_zeros, norm
from bilevel.precision import float32
from bilevel.registry import CONTRACTIONS
from bilevel.stopgrad import replay


class Contraction:
    """mixed(v) for one step: `__call__(sc, v)` returns one tensor per α entry.

    A new contraction is one registered subclass with a `name` that declares:
    * `needs_graph`: it differentiates ∇θ L_low of the forward pass again, so that gradient is taken with
      `create_graph=True` and the pass's graph is kept (second order: refused under float16);
    * `replays_stop_gradients`: it re-evaluates the lower losses at a shifted θ by value, so the forward pass
      records its `bilevel.stopgrad` values for the shifted passes to replay.
    """

    name: ClassVar[str]
    needs_graph: ClassVar[bool] = False
    replays_stop_gradients: ClassVar[bool] = False

    def __call__(self, sc: StepContext, v: list[Tensor]) -> list[Tensor]:
        raise NotImplementedError

    def prepare(self, sc: StepContext, v: list[Tensor]) -> None:
        """Do ahead what `__call__(sc, v)` needs neither the lower backward nor the pass's graph for, keeping it in
        `sc.cache.prepared`: the trainer calls this in the upper-grad thread while the lower backward runs
        (`BilevelConfig.concurrent_upper`). Default: nothing."""


@CONTRACTIONS.register
class DoubleBackward(Contraction):
    name = "double_backward"
    needs_graph = True

    def __call__(self, sc: StepContext, v: list[Tensor]) -> list[Tensor]:
        g = sc.lower_grad(create_graph=True)
        # Contract only where v is non-zero (for `approx`: the upper parameters): zero blocks would still cost
        # a full second backward through e.g. the decoder.
        nonzero = torch.stack([vi.any() for vi in v]).tolist()  # one host sync, not one per tensor
        idx = [i for i, nz in enumerate(nonzero) if nz]
        if not idx:
            return [torch.zeros_like(a) for a in sc.alpha]
        return grads_or_zeros([g[i] for i in idx], sc.alpha, grad_outputs=[v[i] for i in idx], retain_graph=True)


@CONTRACTIONS.register
class Jvp(Contraction):
    name = "jvp"

    def __call__(self, sc: StepContext, v: list[Tensor]) -> list[Tensor]:
        assert sc.weighter is not None
        theta = {n: p.detach() for n, p in sc.named_theta}
        alpha = {n: p.detach() for n, p in sc.weighter.named_parameters()}
        tangent = {n: t.detach() for n, t in zip(theta, v, strict=True)}

        def grad_alpha(th: dict[str, Tensor]) -> dict[str, Tensor]:
            return torch.func.grad(lambda a: sc.lower_at(th, a))(alpha)

        _, out = torch.func.jvp(grad_alpha, (theta,), (tangent,))
        return [out[n] for n in alpha]


@CONTRACTIONS.register
class TermsJvp(Contraction):
    name = "terms_jvp"

    def __call__(self, sc: StepContext, v: list[Tensor]) -> list[Tensor]:
        theta = {n: p.detach() for n, p in sc.named_theta}
        tangent = {n: t.detach() for n, t in zip(theta, v, strict=True)}

        def losses_at(th: dict[str, Tensor]) -> Any:
            with sc.rng.replay():
                return sc.problem.lower_losses(sc.batch, th)[0]

        _, u = torch.func.jvp(losses_at, (theta,), (tangent,))  # J_losses v, same structure as the losses
        return contract_terms(sc, tree_flatten(u)[0])


@dataclass(frozen=True)
class ShiftedPass:
    """`terms_fd`'s pass at θ + εv, made for one v: the problem's `upper_context` there (float32, no graph, the
    forward's noise and stop-gradient values replayed; None when the problem reads no loss changes from it) and
    where its replay of the stop-gradient values stopped."""

    v: list[Tensor]
    eps: float
    params: dict[str, Tensor]
    shifted: set[str]
    ctx: Any
    sg_end: int


@CONTRACTIONS.register
class TermsFd(Contraction):
    name = "terms_fd"
    replays_stop_gradients = True

    def __call__(self, sc: StepContext, v: list[Tensor]) -> list[Tensor]:
        if sc.sg_tape is None:
            raise RuntimeError("terms_fd needs the stop-gradient values of the forward pass: build the "
                               "StepContext with BilevelTrainer (it records them for this contraction)")
        c = sc.cache
        shift = c.prepared if isinstance(c.prepared, ShiftedPass) and c.prepared.v is v else self._shift(sc, v)
        if shift is None:
            return [torch.zeros_like(a) for a in sc.alpha]
        deltas = self._deltas(sc, shift.params, shift.shifted, shift.ctx, shift.sg_end)
        if sc.reduced:
            # The forward pass's losses are reduced-precision values: against them a float32 shift measures the
            # rounding, not the shift. Subtract the same float32 pass at θ instead (the forward's values cancel):
            # the step's float32 upper-context pass (L_up's own, or one of its own, perhaps taken beside the lower
            # backward by `prepare`) where the problem reads loss changes from it, else its `loss_deltas` at θ.
            theta = {n: p.detach() for n, p in sc.named_theta}
            base = self._deltas(sc, theta, shift.shifted, *self._base_context(sc))
            deltas = [d - b for d, b in zip(deltas, base, strict=True)]
        return contract_terms(sc, [d / shift.eps for d in deltas])

    def prepare(self, sc: StepContext, v: list[Tensor]) -> None:
        """The shifted pass, which needs only v, and after a reduced-precision pass the float32 baseline at θ,
        which needs nothing: run beside the lower backward, they leave `__call__` the cheap part (reading the loss
        changes needs the heads' gradients that backward captures)."""
        sc.cache.prepared = self._shift(sc, v)
        if sc.reduced:
            self._base_context(sc)  # L_up's own float32 pass already, or one pass at θ (hypergrad_precision 'step')

    @staticmethod
    def _base_context(sc: StepContext) -> tuple[Any, int]:
        """The float32 upper-context pass at θ the baseline is read from (`StepContext.float32_context`), or
        (None, 0) when the problem reads no loss changes from such a pass (its `loss_deltas` then runs)."""
        return sc.float32_context() if sc.problem.reads_deltas_from_passes else (None, 0)

    @staticmethod
    def _shift(sc: StepContext, v: list[Tensor]) -> ShiftedPass | None:
        vnorm = float(norm(v))
        if vnorm == 0.0:
            return None
        eps = sc.cfg.terms_fd_radius / vnorm
        nonzero = torch.stack([vi.any() for vi in v]).tolist()
        named = list(sc.named_theta)
        params = {n: p.detach() + eps * vi if nz else p.detach()
                  for (n, p), vi, nz in zip(named, v, nonzero, strict=True)}
        shifted = {n for (n, _), nz in zip(named, nonzero, strict=True) if nz}
        ctx, sg_end = None, 0
        if sc.problem.reads_deltas_from_passes:
            with (torch.no_grad(), float32(sc.lower.device), sc.rng.replay(),
                  replay(sc.sg_tape, partial=True) as cur):
                ctx = sc.problem.upper_context(sc.batch, params)
            sg_end = cur.i
        return ShiftedPass(v, eps, params, shifted, ctx, sg_end)

    @staticmethod
    def _deltas(sc: StepContext, params: dict[str, Tensor], shifted: set[str], ctx: Any, sg_end: int) -> list[Tensor]:
        """losses(params) − the forward pass's, read from `ctx` (an `upper_context` pass at params whose replay of
        the stop-gradient values stopped at `sg_end`) where the problem can, else its `loss_deltas`."""
        if ctx is not None:
            with torch.no_grad(), replay(sc.sg_tape, partial=True, start=sg_end):  # the sg values it did not reach
                deltas = sc.problem.loss_deltas_from(sc.batch, ctx, params, sc.lower_ctx, sc.losses, shifted)
            if deltas is not None:
                return tree_flatten(deltas)[0]
        with torch.no_grad(), sc.rng.replay(), replay(sc.sg_tape):
            return tree_flatten(sc.problem.loss_deltas(sc.batch, params, sc.lower_ctx, sc.losses, shifted))[0]


@CONTRACTIONS.register
class FiniteDifference(Contraction):
    name = "finite_difference"
    replays_stop_gradients = True

    def __call__(self, sc: StepContext, v: list[Tensor]) -> list[Tensor]:
        theta = sc.theta
        vnorm = float(norm(v))
        if vnorm == 0.0:
            return [torch.zeros_like(a) for a in sc.alpha]
        eps = sc.cfg.fd_radius / vnorm
        saved = [p.detach().clone() for p in theta]
        params = dict(sc.named_theta)
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


def contract_terms(sc: StepContext, flat_u: list[Tensor]) -> list[Tensor]:
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
