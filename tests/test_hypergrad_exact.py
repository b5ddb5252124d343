"""Every hypergradient against an independent float64 finite difference, on a problem with stop-gradients and
sampling noise, for every contraction, engine and differentiable optimizer option.

The references never call the code under test's hypergradient machinery:
* approx / implicit: c · mixed(v), with mixed(v)_j = ∂/∂α_j [∇θ L_low(θ, α) · v] taken by central differences
  over every α entry of a plain first-order autograd ∇θ L_low (sg values are constants there, as autograd says).
* unroll: central differences over every α entry of L_up(θ_K(α)), where θ_K comes from K steps of the *real*
  torch optimizer (a copy of the trainer's, with its state) after `torch.nn.utils.clip_grad_norm_`, the step's
  noise, and the stop-gradient values of the unperturbed trajectory replayed (`unroll` treats them as constants).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bilevel import BilevelConfig, BilevelProblem, BilevelTrainer, stopgrad
from bilevel.engines import combinations
from bilevel.trainer import make_optimizer

N, D, K_FEAT, M = 16, 3, 3, 9
WEIGHTER = {"layers": 2, "units": 4}  # BatchNorms on the hidden layer and on the output logit: the real design


class SGProblem(BilevelProblem):
    """A small tanh network whose per-sample loss has a stop-gradient and sampling noise:

        pred_i = f_θ(x_i) + σ ε_i,   l_i = ½ (pred_i - y_i)² · (1 + sg(pred_i)²),   L_up = ½ mean_j (f_θ(x'_j) - y'_j)²

    Autograd's ∂l_i/∂θ = (pred_i - y_i)(1 + sg(pred_i)²) ∂pred_i; the derivative of the value is another one, so a
    finite difference that does not replay sg estimates the wrong thing."""

    def __init__(self, seed: int = 0, noise: float = 0.1):
        g = torch.Generator().manual_seed(seed)
        r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(D, 5), nn.Tanh(), nn.Linear(5, 1)).double()
        self.batch = {"x": r(N, D), "y": r(N), "f": r(N, K_FEAT), "xv": r(M, D), "yv": r(M)}
        self.noise = noise

    def lower_losses(self, batch, params):
        pred = self.call(params, batch["x"]).squeeze(-1) + self.noise * torch.randn(N, dtype=torch.float64)
        return 0.5 * (pred - batch["y"]) ** 2 * (1 + stopgrad.sg(pred) ** 2), {"params": params}

    def weighter_inputs(self, ctx):
        return self.batch["f"]

    def upper_objective(self, batch, ctx):
        return 0.5 * ((self.call(ctx["params"], batch["xv"]).squeeze(-1) - batch["yv"]) ** 2).mean()


def make(cfg: dict, opt=None, clip: float = 100.0, seed: int = 0):
    problem = SGProblem(seed)
    bc = BilevelConfig(**{"approx_scale": "lr", **cfg}, weighter=WEIGHTER)
    lower = (opt or (lambda ps: torch.optim.SGD(ps, lr=0.05)))(problem.model.parameters())
    trainer = BilevelTrainer(problem.model, K_FEAT, bc, lower_opt=lower, lower_clip=clip)
    torch.manual_seed(seed + 1)
    with torch.no_grad():  # a non-trivial weighter (BN affine parameters off their init)
        for p in trainer.weighter.parameters() if trainer.weighter is not None else []:
            p.add_(0.3 * torch.randn_like(p))
    return problem, trainer


def flat(gs) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in (gs.values() if isinstance(gs, dict) else gs)])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def alpha_fd(trainer: BilevelTrainer, fn, h: float = 1e-6) -> torch.Tensor:
    """Central differences of the scalar fn(weighter) over every α entry (on a copy of the weighter)."""
    weighter = copy.deepcopy(trainer.weighter)
    out = []
    for p in weighter.parameters():
        for j in range(p.numel()):
            vals = []
            for s in (1.0, -1.0):
                with torch.no_grad():
                    p.view(-1)[j] += s * h
                vals.append(fn(weighter))
                with torch.no_grad():
                    p.view(-1)[j] -= s * h
            out.append((vals[0] - vals[1]) / (2 * h))
    return torch.tensor(out, dtype=torch.float64)


def hypergrad(problem, trainer, seed: int = 11) -> torch.Tensor:
    torch.manual_seed(seed)
    return flat(trainer.hypergradient(problem, problem.batch))


# ---- approx and implicit: c · mixed(v) ----------------------------------------------------------------
def lower_grad_dot(problem, trainer, weighter, v: list[torch.Tensor], seed: int) -> float:
    """∇θ L_low(θ, α) · v by plain first-order autograd, with the step's noise."""
    theta = list(problem.model.parameters())
    torch.manual_seed(seed)
    losses, ctx = problem.lower_losses(problem.batch, dict(problem.model.named_parameters()))
    lower = problem.lower_objective(losses, weighter(problem.weighter_inputs(ctx)))
    g = torch.autograd.grad(lower, theta)
    return float(sum((gi * vi).sum() for gi, vi in zip(g, v, strict=True)))


def upper_grad(problem) -> list[torch.Tensor]:
    out = problem.upper_objective(problem.batch, {"params": dict(problem.model.named_parameters())})
    return [g.detach() for g in torch.autograd.grad(out, list(problem.model.parameters()))]


def inverse_hessian_times(problem, trainer, v: list[torch.Tensor], seed: int, damping: float) -> list[torch.Tensor]:
    """(H + λI)⁻¹v with the dense Hessian of L_low in θ (autograd.functional, sg constant), at the current α."""
    names = [n for n, _ in problem.model.named_parameters()]
    shapes = [p.shape for p in problem.model.parameters()]
    theta0 = torch.cat([p.detach().reshape(-1) for p in problem.model.parameters()])
    x = problem.weighter_inputs(None)

    def objective(flat_theta):
        parts = torch.split(flat_theta, [s.numel() for s in shapes])
        params = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        torch.manual_seed(seed)
        losses, _ = problem.lower_losses(problem.batch, params)
        return problem.lower_objective(losses, trainer.weighter(x))

    H = torch.autograd.functional.hessian(objective, theta0)
    sol = torch.linalg.solve(H + damping * torch.eye(len(theta0), dtype=H.dtype), torch.cat([t.reshape(-1) for t in v]))
    return [t.reshape(s) for t, s in zip(torch.split(sol, [s.numel() for s in shapes]), shapes, strict=True)]


DAMPING = 1.0
FIRST_ORDER = {"approx": -0.05, "implicit": -1.0}  # c: -η (approx_scale 'lr'), -1 (implicit)
CASES = [(e, s, c) for e, strategies in combinations().items() for s, cs in strategies.items()
         if s in FIRST_ORDER for c in cs]
TOL = {"finite_difference": 1e-6, "terms_fd": 1e-5}  # central O(ε²) / one-sided O(ε) at the radii below


@pytest.mark.parametrize("engine,strategy,contraction", CASES, ids=["-".join(c) for c in CASES])
def test_first_order_strategies_match_finite_differences(engine, strategy, contraction):
    # A tanh network's Hessian need not be positive definite: CG solves the damped system (H + λI)x = v.
    extra = {"implicit": "cg", "implicit_iters": 30, "cg_damping": DAMPING} if strategy == "implicit" else {}
    cfg = {"engine": engine, "strategy": strategy, "contraction": contraction, "fd_radius": 1e-4,
           "terms_fd_radius": 1e-7, **extra}
    problem, trainer = make(cfg)
    got = hypergrad(problem, trainer, seed=11)
    v = upper_grad(problem)
    if strategy == "implicit":
        v = inverse_hessian_times(problem, trainer, v, seed=11, damping=DAMPING)
    want = FIRST_ORDER[strategy] * alpha_fd(trainer, lambda w: lower_grad_dot(problem, trainer, w, v, 11))
    assert float(want.norm()) > 1e-3
    assert rel(got, want) < TOL.get(contraction, 1e-7), (got, want)


@pytest.mark.parametrize("engine", ["native", "betty"])
def test_finite_differences_without_the_replay_estimate_another_derivative(engine):
    """The negative control: the same finite difference with the stop-gradient values recomputed at θ ± εv
    (no recorded tape) is far from the derivative autograd takes, so the test above can fail."""
    cfg = {"engine": engine, "strategy": "approx", "contraction": "finite_difference", "fd_radius": 1e-4}
    problem, trainer = make(cfg)
    exact = hypergrad(problem, trainer)
    torch.manual_seed(11)
    sc = trainer.forward(problem, problem.batch, record_sg=False)
    trainer.lower_grad(sc)
    plain = flat(trainer.alpha_grad(sc))
    print("finite difference without replay, rel err:", rel(plain, exact))
    assert rel(plain, exact) > 0.05


# ---- unroll: the real optimizer's K steps ---------------------------------------------------------------
def upper_after_real_steps(problem, trainer, weighter, steps: int, seed: int, tapes: list, record: bool) -> float:
    """L_up after `steps` steps of a copy of the trainer's optimizer (with its state) on a copy of θ: clip like
    `BilevelTrainer.step`, the step's noise at every step, stop-gradient values recorded or replayed."""
    model = copy.deepcopy(problem.model)
    opt = type(trainer.lower_opt)(model.parameters())
    opt.load_state_dict(copy.deepcopy(trainer.lower_opt.state_dict()))  # torch would share the state tensors
    x = problem.weighter_inputs(None)
    for k in range(steps):
        torch.manual_seed(seed)
        ctx = stopgrad.record(tapes[k]) if record else stopgrad.replay(tapes[k])
        with ctx:
            losses, _ = problem.lower_losses(problem.batch, dict(model.named_parameters()))
        loss = problem.lower_objective(losses, weighter(x))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), trainer.lower_clip)
        opt.step()
    with torch.no_grad():
        return float(problem.upper_objective(problem.batch, {"params": dict(model.named_parameters())}))


def unroll_reference(problem, trainer, steps: int, seed: int) -> torch.Tensor:
    tapes = [stopgrad.Tape() for _ in range(steps)]
    upper_after_real_steps(problem, trainer, trainer.weighter, steps, seed, tapes, record=True)
    return alpha_fd(trainer, lambda w: upper_after_real_steps(problem, trainer, w, steps, seed, tapes, False))


OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05),
    "sgd-momentum-nesterov-wd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True,
                                                           weight_decay=0.1),
    "sgd-momentum-dampening-maximize": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.5, dampening=0.3,
                                                                  maximize=True),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.01, eps=1e-5),
    "adam-l2-amsgrad": lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.1, amsgrad=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.5),
    "adam-dreamer-decoupled-wd": lambda ps: make_optimizer(ps, "adam", 0.01, 1e-5, 1e-2),
    "adam-maximize": lambda ps: torch.optim.Adam(ps, lr=0.01, maximize=True),
}


def warm_up(problem, trainer, n: int = 2) -> None:
    """A few real steps so the optimizer state (moments, step counts, buffers, amsgrad maxima) is not empty."""
    for i in range(n):
        torch.manual_seed(100 + i)
        trainer.step(problem, problem.batch)


@pytest.mark.parametrize("engine", ["native", "higher"])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("steps,clip", [(1, 100.0), (3, 100.0), (2, 0.05)], ids=["K1", "K3", "K2-clipped"])
def test_unroll_matches_the_real_optimizer(engine, opt, steps, clip):
    problem, trainer = make({"engine": engine, "strategy": "unroll", "unroll_steps": steps}, OPTIMIZERS[opt], clip)
    warm_up(problem, trainer)
    got = hypergrad(problem, trainer, seed=11)
    want = unroll_reference(problem, trainer, steps, seed=11)
    assert float(want.norm()) > 1e-6
    assert rel(got, want) < 1e-6, (got, want)


def test_the_clip_is_active_in_the_clipped_cases():
    problem, trainer = make({"strategy": "unroll"}, OPTIMIZERS["sgd"], 0.05)
    torch.manual_seed(11)
    sc = trainer.forward(problem, problem.batch)
    assert float(torch.nn.utils.get_total_norm(sc.lower_grad())) > 3 * 0.05


@pytest.mark.parametrize("bad,match", [
    (lambda ps: torch.optim.RMSprop(ps), "got RMSprop"),
    (lambda ps: torch.optim.SGD(ps, lr=torch.tensor(0.1, requires_grad=True)), "lr that requires grad"),
])
def test_unroll_refuses_what_it_cannot_differentiate(bad, match):
    problem = SGProblem()
    for engine in ("native", "higher"):
        with pytest.raises(ValueError, match=match):
            BilevelTrainer(problem.model, K_FEAT, BilevelConfig(strategy="unroll", engine=engine),
                           lower_opt=bad(problem.model.parameters()))


# ---- the public hypergradient ----------------------------------------------------------------------------
def test_hypergradient_applies_nothing_and_is_what_step_applies():
    problem, trainer = make({"strategy": "approx", "contraction": "terms_fd"}, OPTIMIZERS["adam"])
    warm_up(problem, trainer)
    snap = lambda: ([p.detach().clone() for p in problem.model.parameters()],  # noqa: E731
                    [p.detach().clone() for p in trainer.weighter.parameters()],
                    copy.deepcopy(trainer.lower_opt.state_dict()), copy.deepcopy(trainer.meta_opt.state_dict()),
                    trainer.step_count)
    before = snap()
    torch.manual_seed(5)
    g = trainer.hypergradient(problem, problem.batch)
    after = snap()
    assert list(g) == [n for n, _ in trainer.weighter.named_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before[0] + before[1], after[0] + after[1], strict=True))
    assert str(before[2:]) == str(after[2:])
    # a step with plain SGD(lr=1) on α (and no clipping) moves α by exactly -hypergradient
    trainer.updater.parts["meta"].opt = torch.optim.SGD(trainer.weighter.parameters(), lr=1.0)
    trainer.updater.parts["meta"].clip = 1e9
    torch.manual_seed(5)
    trainer.step(problem, problem.batch)
    for (n, p), a0 in zip(trainer.weighter.named_parameters(), before[1], strict=True):
        torch.testing.assert_close(p.detach(), a0 - g[n], rtol=0, atol=1e-14)


def test_hypergradient_without_a_weighter_says_so():
    problem, trainer = make({"strategy": "none"})
    with pytest.raises(ValueError, match="strategy 'none' has no weighter"):
        trainer.hypergradient(problem, problem.batch)


def test_dreamer_decoupled_weight_decay_is_exact():
    """make_optimizer's decoupled decay is DreamerV2's: θ <- (1 - wd)·θ, then the plain Adam step."""
    torch.manual_seed(0)
    p = torch.randn(5, dtype=torch.float64, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    ours = make_optimizer([p], "adam", 3e-4, 1e-5, 1e-2)
    plain = torch.optim.Adam([q], lr=3e-4, eps=1e-5)
    for _ in range(3):
        g = torch.randn(5, dtype=torch.float64)
        p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        with torch.no_grad():
            q.mul_(1 - 1e-2)
        plain.step()
        torch.testing.assert_close(p, q, rtol=1e-14, atol=0)
