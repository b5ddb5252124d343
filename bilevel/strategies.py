"""Hypergradient strategies: how the α-gradient is formed from one step's shared computations.

With the lower update θ' = θ - η ∇θ L_low(θ, w(α)) the true one-step hypergradient is

    ∇α L_up(θ') = -η · (∂²L_low/∂θ∂α)ᵀ ∇θ' L_up(θ')                         (paper eq. 8)

* `approx`   (eq. 9): evaluate ∇θ L_up at θ from the same forward pass:  -η · mixed(∇θ L_up(θ)).
             sign='official' applies +mixed(∇θ L_up(θ)) instead, as the deng-ai-lab TF code does.
* `unroll`   : K differentiable lower steps (SGD or Adam, the trainer's optimizer state), L_up re-evaluated
             at θ_K, gradient to α through the steps (native torch.autograd, or `higher`).
* `implicit` : implicit function theorem, -mixed(H⁻¹ ∇θ L_up) with H⁻¹v by Neumann series or CG.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from bilevel import contractions
from bilevel.config import BilevelConfig
from bilevel.context import StepContext, dot, grads_or_zeros

AlphaGrad = Callable[[StepContext], list[Tensor]]


def approx(sc: StepContext, mixed: contractions.Contraction, sign: str) -> list[Tensor]:
    v = sc.upper_grad()
    coef = -sc.lr if sign == "correct" else 1.0
    return [coef * m for m in mixed(sc, v)]


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
class DiffOptimizer:
    """A differentiable copy of the trainer's torch optimizer (SGD or Adam), starting from its state."""

    def __init__(self, opt: torch.optim.Optimizer, params: list[Tensor]) -> None:
        if len(opt.param_groups) != 1:
            raise ValueError("unroll supports optimizers with a single param group")
        self.kind = type(opt).__name__
        if self.kind not in ("SGD", "Adam"):
            raise ValueError(f"unroll supports torch.optim.SGD and torch.optim.Adam, got {self.kind}")
        self.group = opt.param_groups[0]
        if self.kind == "SGD" and (self.group.get("nesterov") or self.group.get("dampening")):
            raise ValueError("unroll supports SGD without nesterov/dampening")
        self.state = []
        for p in params:
            s = opt.state.get(p, {})
            self.state.append({k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in s.items()})

    def step(self, params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        g_ = self.group
        out = []
        for p, g, s in zip(params, grads, self.state, strict=True):
            if g_["weight_decay"]:
                g = g + g_["weight_decay"] * p
            if self.kind == "SGD":
                if g_["momentum"]:
                    buf = g if "momentum_buffer" not in s or s["momentum_buffer"] is None else (
                        g_["momentum"] * s["momentum_buffer"] + g)
                    s["momentum_buffer"] = buf
                    g = buf
                out.append(p - g_["lr"] * g)
                continue
            b1, b2 = g_["betas"]
            t = float(s.get("step", 0)) + 1
            m = b1 * s.get("exp_avg", torch.zeros_like(p)) + (1 - b1) * g
            v = b2 * s.get("exp_avg_sq", torch.zeros_like(p)) + (1 - b2) * g * g
            s.update(step=t, exp_avg=m, exp_avg_sq=v)
            denom = torch.sqrt(v / (1 - b2**t) + 1e-38) + g_["eps"]  # +1e-38: finite d√v/dv at v = 0
            out.append(p - g_["lr"] * (m / (1 - b1**t)) / denom)
        return out


def unroll(sc: StepContext, steps: int, opt: torch.optim.Optimizer) -> list[Tensor]:
    names, theta = sc.names, sc.theta
    dopt = DiffOptimizer(opt, theta)
    params = list(theta)
    for k in range(steps):
        if k == 0:
            g = sc.lower_grad(create_graph=True)  # reuse the shared forward pass at θ
        else:
            with sc.rng.replay():
                losses, ctx = sc.problem.lower_losses(sc.batch, dict(zip(names, params, strict=True)))
            w = sc.weighter(sc.problem.weighter_inputs(ctx).detach())
            g = grads_or_zeros(sc.problem.lower_objective(losses, w), params, create_graph=True)
        params = dopt.step(params, g)
    with sc.rng.replay():
        _, ctx = sc.problem.lower_losses(sc.batch, dict(zip(names, params, strict=True)))
    up = sc.problem.upper_loss(sc.batch, ctx)
    sc.unrolled_upper = float(up.detach())
    return grads_or_zeros(up, sc.alpha)

