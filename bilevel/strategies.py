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
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from bilevel import diffopt
from bilevel.context import StepContext, dot, grads_or_zeros
from bilevel.contractions import Contraction
from bilevel.norm import MovingNorm
from bilevel.problem import BilevelProblem
from bilevel.registry import Registry

if TYPE_CHECKING:
    from bilevel.config import BilevelConfig


class Strategy(nn.Module):
    """How one step makes its weights and, with a weighter, its α-gradient.

    A new strategy is one registered subclass with a `name` that declares:
    * `uses_weighter`: the weights come from the weighter N_α, which this strategy trains;
    * `needs_graph`: it differentiates ∇θ L_low of the forward pass itself (HVPs, unrolled steps), so that
      gradient is taken with a graph whatever the contraction;
    * `frees_forward_graph`: it reads nothing of the forward graph but ∇θ L_up, so the trainer takes that first
      and lets the lower backward free the graph (with a contraction that re-evaluates the losses);
    * `contractions`: the ones it accepts on the native engine (None: all; see `bilevel.engines`);
    * `float16`: its α-gradient is first order, so it runs under float16 loss scaling;
    * `differentiates_optimizer`: it differentiates the lower optimizer's real step (`bilevel.diffopt`), so an
      optimizer that cannot be differentiated is refused when the trainer is built.
    A module, so state it keeps (the naive baseline's moving statistics) is saved with the trainer.
    """

    name: ClassVar[str]
    uses_weighter: ClassVar[bool] = True
    needs_graph: ClassVar[bool] = False
    frees_forward_graph: ClassVar[bool] = False
    contractions: ClassVar[tuple[str, ...] | None] = None
    float16: ClassVar[bool] = False
    differentiates_optimizer: ClassVar[bool] = False

    def __init__(self, cfg: BilevelConfig) -> None:
        super().__init__()  # the α-gradient reads the step's config (`sc.cfg`), which callers may swap per step

    def weights(self, problem: BilevelProblem, batch: Any, ctx: Any, x: Tensor, weighter: nn.Module | None,
                shape: torch.Size) -> Tensor:
        """w for the forward pass: N_α(x) with its graph to α."""
        assert weighter is not None
        return weighter(x)

    def alpha_grad(self, sc: StepContext, mixed: Contraction, lower_opt: torch.optim.Optimizer,
                   lower_clip: float | None) -> list[Tensor]:
        raise ValueError(f"strategy {self.name!r} has no weighter, so there is no α-gradient")


STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


@STRATEGIES.register
class NoWeights(Strategy):
    """Every weight 1: the unweighted baseline (DreamerV2)."""

    name = "none"
    uses_weighter = False
    float16 = True

    def weights(self, problem: BilevelProblem, batch: Any, ctx: Any, x: Tensor, weighter: nn.Module | None,
                shape: torch.Size) -> Tensor:
        return torch.ones(shape, device=x.device)


@STRATEGIES.register
class Naive(Strategy):
    """w = 1 + Norm(per-sample upper loss): weight by the task loss directly, no hypergradient (paper §4)."""

    name = "naive"
    uses_weighter = False
    float16 = True

    def __init__(self, cfg: BilevelConfig) -> None:
        super().__init__(cfg)
        self.norm = MovingNorm(cfg.naive_momentum)

    def weights(self, problem: BilevelProblem, batch: Any, ctx: Any, x: Tensor, weighter: nn.Module | None,
                shape: torch.Size) -> Tensor:
        with torch.no_grad():
            per_sample = problem.upper_losses(batch, ctx).detach()
            self.norm.update(per_sample)
            return 1.0 + self.norm(per_sample)


def approx_coef(cfg: BilevelConfig, lr: float) -> float:
    """c in c · mixed(∇θ L_up): the sign of the exact derivative (or the official code's +), times η or 1."""
    return (-1.0 if cfg.sign == "correct" else 1.0) * (lr if cfg.approx_scale == "lr" else 1.0)


@STRATEGIES.register
class Approx(Strategy):
    """θ' ≈ θ (paper eq. 9): c · mixed(∇θ L_up(θ)) from the forward pass's own upper gradient."""

    name = "approx"
    frees_forward_graph = True
    float16 = True

    def alpha_grad(self, sc: StepContext, mixed: Contraction, lower_opt: torch.optim.Optimizer,
                   lower_clip: float | None) -> list[Tensor]:
        coef = approx_coef(sc.cfg, sc.lr)
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


@STRATEGIES.register
class Implicit(Strategy):
    """Implicit function theorem: -mixed(H⁻¹ ∇θ L_up), H⁻¹v by a Neumann series or CG."""

    name = "implicit"
    needs_graph = True

    def alpha_grad(self, sc: StepContext, mixed: Contraction, lower_opt: torch.optim.Optimizer,
                   lower_clip: float | None) -> list[Tensor]:
        cfg = sc.cfg
        v = sc.upper_grad()
        hvp = hvp_fn(sc)
        if cfg.implicit == "neumann":
            x = neumann_inverse_hvp(hvp, v, cfg.implicit_iters, cfg.neumann_alpha or sc.lr)
        else:
            x = cg_inverse_hvp(hvp, v, cfg.implicit_iters, cfg.cg_damping)
        return [-m for m in mixed(sc, x)]


# ---- unroll ---------------------------------------------------------------------------------------
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


@STRATEGIES.register
class Unroll(Strategy):
    """∇α L_up(θ_K): K differentiable copies of the trainer's real step (clip, then `lower_opt`'s update)."""

    name = "unroll"
    needs_graph = True
    differentiates_optimizer = True
    contractions = ("double_backward",)  # it contracts nothing; the default name keeps configs unambiguous

    def alpha_grad(self, sc: StepContext, mixed: Contraction, lower_opt: torch.optim.Optimizer,
                   lower_clip: float | None) -> list[Tensor]:
        dopt = diffopt.DiffOptimizer(lower_opt, sc.theta, lower_clip)
        params = sc.theta
        for k in range(sc.cfg.unroll_steps):
            if k == 0:  # the shared forward pass
                g = sc.lower_grad(create_graph=True)
            else:
                g = grads_or_zeros(lower_objective_at(sc, params), params, create_graph=True)
            params = dopt.step(params, g)
        return upper_grad_through(sc, params)
