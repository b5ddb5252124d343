"""Betty engine: the α-gradient computed by Betty's own hypergradient functions (betty-ml 0.2.1).

Real Betty problems, no adapters
--------------------------------
We build genuine `betty.problems.ImplicitProblem` objects, without a `betty.Engine`: an
ImplicitProblem's constructor needs only a name, a `betty.configs.Config` and a module, and Betty's
hypergradient functions touch only `config`, `_strategy` (None: no distributed strategy), `paths`
([]: a two-level problem), `cur_batch`, `training_step_exec(batch)`, `trainable_parameters()`,
`parameters()` and `meta_trainable_parameters()` (the last three all `list(module.parameters())`, so
the list Betty's cg differentiates against (`parameters()`) is the same as `trainable_parameters()`).
An Engine would add data loaders, optimizer patching, logging and its own training loop, none of
which a single hypergradient evaluation inside our trainer needs.

* lower = `_LowerProblem(module=problem.model)`: `training_step(batch)` is the weighted lower loss at
  the live θ with the step's RNG replayed and the weighter inputs `sc.x` held fixed (exactly what
  `StepContext.lower_at` computes), `cur_batch = sc.batch`. Its `Config` selects the method:
  `Config(type='darts', darts_alpha=cfg.fd_radius)`,
  `Config(type='neumann', neumann_iterations=cfg.implicit_iters, neumann_alpha=cfg.neumann_alpha or η)`,
  `Config(type='cg', cg_iterations=cfg.implicit_iters, cg_alpha=1.0)`.
* upper = `_UpperProblem(module=weighter)`: its `trainable_parameters()` are α.
* the vector v is what the strategy asks the primitive for (∇θ L_up at θ, zero outside the upper params, for
  `approx` and `implicit`) and Betty's function is called as `fn(v, lower, upper, sync=False)`, which returns
  a list with one tensor per α entry.

Mapping Betty's outputs to the engine primitives (`bilevel.engines.base`)
--------------------------------------------------------------------------
mixed(u) = (∂²L_low/∂θ∂α)ᵀ u.
* darts returns (∇α L_low(θ-εv) - ∇α L_low(θ+εv)) / 2ε ≈ -mixed(v), ε = darts_alpha/(‖v‖+1e-15): the
  engine's `mixed(v)` is -darts (`approx` then scales it by its c = `strategies.approx_coef`). Both lower-loss
  evaluations replay the forward pass's `bilevel.stopgrad` values, so darts estimates the derivative autograd
  takes on models with stop-gradients.
* neumann returns -mixed(α Σ_{j=0..J} (I-αH)^j v) with α = neumann_alpha (the step size), J =
  neumann_iterations: exactly -mixed(H⁻¹v) with the native Neumann series, so `mixed_inverse(v)` is -neumann.
* cg returns -mixed(cg_alpha · x) where x solves (cg_alpha·H) x = v; with cg_alpha = 1 this is
  -mixed(H⁻¹v), so `mixed_inverse(v)` is -cg. (We always pass cg_alpha = 1: Betty scales the Hessian by cg_alpha
  in the step size's denominator but not in the residual update, so other values are inconsistent.)
  `cfg.cg_damping` λ is realised inside the lower problem's training step as + ½λ‖θ‖² (for cg only):
  it adds λI to the Hessian and nothing to the mixed derivative, i.e. Betty then solves (H+λI)x = v.
  The term is also added with λ = 0 (exact zeros) for neumann/cg so that every θ enters the graph of
  ∇θ L_low (Betty differentiates it without `allow_unused`).

Betty bugs worked around
------------------------
* darts perturbs θ in place, `p.data.add_(εv); sub_(2εv); add_(εv)`, which is not bit-exact in floating
  point (betty-ml 0.1.1 restored with a non-in-place add and left θ shifted). We save θ before the
  call and copy the saved values back afterwards (`p.data.copy_`: bit-exact and, like Betty's own
  `.data` edits, invisible to autograd's version counters, so the step's shared graph at θ stays
  usable).
* betty-ml 0.2.1's `cg` updates the search direction with the OLD residual (`p_new = r + β p` instead
  of `r_new + β p`; leopard-ai/betty issue #15, fixed upstream after the 0.2.1 release). It does not
  converge: on a 4-d quadratic the error grows with the iteration count. `_betty_cg_fixed` below is
  Betty 0.2.1's `cg` line for line with only that line corrected (as upstream did); it runs on the
  same Betty problems and Betty helpers. Like Betty's (and unlike the native CG) it has no early exit,
  so a residual that becomes exactly zero before the last iteration gives 0/0 = NaN (the trainer then
  skips the step as non-finite); a zero v is returned as zeros before Betty is called.
  `tests/test_betty.py` checks that the installed Betty still has the bug (so the copy is removed when
  Betty is upgraded) and that the copy agrees with it bit for bit where the bug cannot act.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, Any

import torch
from betty.configs import Config
from betty.hypergradient.darts import darts as betty_darts
from betty.hypergradient.neumann import neumann as betty_neumann
from betty.problems import ImplicitProblem
from betty.utils import neg_with_none, to_vec
from torch import Tensor

from bilevel.context import StepContext, norm
from bilevel.stopgrad import replay

if TYPE_CHECKING:
    from bilevel.config import BilevelConfig


class _LowerProblem(ImplicitProblem):
    """θ: the problem's model; its loss is the step's weighted lower loss at the live parameters
    (+ ½·damping·‖θ‖² when damping is not None; see the module docstring)."""

    def __init__(self, sc: StepContext, config: Config, damping: float | None = None) -> None:
        super().__init__("lower", config, module=sc.problem.model)
        self.sc = sc
        self.damping = damping

    def training_step(self, batch: Any) -> Tensor:
        sc = self.sc
        params = dict(self.module.named_parameters())  # live: darts perturbs them in place
        # The step's sampling noise, and its stop-gradient values when recorded (darts: a finite difference of
        # ∇α L_low then estimates autograd's mixed derivative, not that of the value with sg's moving too).
        sg = replay(sc.sg_tape) if sc.sg_tape is not None else contextlib.nullcontext()
        with sc.rng.replay(), sg:
            losses, _ = sc.problem.lower_losses(batch, params)
        loss = sc.problem.lower_objective(losses, sc.weights())  # weighter inputs sc.x held fixed
        if self.damping is not None:
            loss = loss + 0.5 * self.damping * sum((p * p).sum() for p in params.values())
        return loss


class _UpperProblem(ImplicitProblem):
    """α: the weighter; its loss (unused by the hypergradient functions) is the task loss at θ."""

    def __init__(self, sc: StepContext) -> None:
        assert sc.weighter is not None
        super().__init__("weighter", Config(), module=sc.weighter)
        self.sc = sc

    def training_step(self, batch: Any) -> Tensor:
        return self.sc.upper()


def betty_config(method: str, cfg: BilevelConfig, lr: float) -> Config:
    """Betty's `Config` for `method`: 'darts' (mixed(v)), 'neumann' or 'cg' (mixed(H⁻¹v))."""
    if method == "darts":
        return Config(type="darts", darts_alpha=cfg.fd_radius)
    if method == "neumann":
        return Config(type="neumann", neumann_iterations=cfg.implicit_iters, neumann_alpha=cfg.neumann_alpha or lr)
    if method == "cg":
        return Config(type="cg", cg_iterations=cfg.implicit_iters, cg_alpha=1.0)
    raise ValueError(f"unknown Betty method {method!r}; accepted: ['darts', 'neumann', 'cg']")


def build_problems(sc: StepContext, method: str, cfg: BilevelConfig | None = None
                   ) -> tuple[_LowerProblem, _UpperProblem]:
    """The lower and upper Betty problems of the step for `method`, configured from `cfg` (default: the step's)."""
    cfg = cfg or sc.cfg
    bc = betty_config(method, cfg, sc.lr)
    damping = None if method == "darts" else (cfg.cg_damping if method == "cg" else 0.0)
    lower = _LowerProblem(sc, bc, damping)
    lower.cur_batch = sc.batch
    upper = _UpperProblem(sc)
    upper.cur_batch = sc.batch
    return lower, upper


def darts(sc: StepContext, v: list[Tensor]) -> list[Tensor]:
    """Betty's darts at the step: ≈ -mixed(v), θ restored bit-exactly."""
    if float(norm(v)) == 0.0:
        return [torch.zeros_like(a) for a in sc.alpha]
    lower, upper = build_problems(sc, "darts")
    return darts_restoring(v, lower, upper)


def implicit(sc: StepContext, v: list[Tensor]) -> list[Tensor]:
    """Betty's neumann or (fixed) cg at the step, by `sc.cfg.implicit`: -mixed(H⁻¹v)."""
    if float(norm(v)) == 0.0:
        return [torch.zeros_like(a) for a in sc.alpha]
    lower, upper = build_problems(sc, sc.cfg.implicit)
    fn = betty_neumann if sc.cfg.implicit == "neumann" else _betty_cg_fixed
    out = fn(v, lower, upper, False)
    return [torch.zeros_like(a) if g is None else g for g, a in zip(out, sc.alpha, strict=True)]


def darts_restoring(v: list[Tensor], lower: _LowerProblem, upper: _UpperProblem) -> list[Tensor]:
    """Betty's darts, with θ restored bit-exactly afterwards (Betty's add/sub round trip is not)."""
    theta = lower.meta_trainable_parameters()
    saved = [p.detach().clone() for p in theta]
    try:
        out = betty_darts(v, lower, upper, False)
    finally:
        for p, p0 in zip(theta, saved, strict=True):
            p.data.copy_(p0)
    return list(out)


def _betty_cg_fixed(vector, curr, prev, sync):  # Betty's signature and argument names
    """betty-ml 0.2.1 `betty.hypergradient.cg.cg`, with `p_new` built from `r_new` (betty issue #15)."""
    assert len(curr.paths) == 0, "cg method is not supported for higher order MLO!"
    config = curr.config
    in_loss = curr.training_step_exec(curr.cur_batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        in_grad = torch.autograd.grad(in_loss, curr.trainable_parameters(), create_graph=True)

    x = [torch.zeros_like(vi) for vi in vector]
    r = [torch.zeros_like(vi).copy_(vi) for vi in vector]
    p = [torch.zeros_like(rr).copy_(rr) for rr in r]

    for _ in range(config.cg_iterations):
        hvp = torch.autograd.grad(in_grad, curr.parameters(), grad_outputs=p, retain_graph=True)
        hvp_vec = to_vec(hvp, alpha=config.cg_alpha)
        r_vec = to_vec(r)
        p_vec = to_vec(p)
        numerator = torch.dot(r_vec, r_vec)
        denominator = torch.dot(hvp_vec, p_vec)
        alpha = numerator / denominator

        x_new = [xx + alpha * pp for xx, pp in zip(x, p, strict=True)]
        r_new = [rr - alpha * pp for rr, pp in zip(r, hvp, strict=True)]
        r_new_vec = to_vec(r_new)
        beta = torch.dot(r_new_vec, r_new_vec) / numerator
        p_new = [rr + beta * pp for rr, pp in zip(r_new, p, strict=True)]  # Betty 0.2.1: zip(r, p)

        x, p, r = x_new, p_new, r_new
    x = [config.cg_alpha * xx for xx in x]

    if sync:
        x = [neg_with_none(x_i) for x_i in x]
        torch.autograd.backward(in_grad, inputs=prev.trainable_parameters(), grad_tensors=x)
        implicit_grad = None
    else:
        implicit_grad = torch.autograd.grad(in_grad, prev.trainable_parameters(), grad_outputs=x)
        implicit_grad = [neg_with_none(ig) for ig in implicit_grad]

    return implicit_grad
