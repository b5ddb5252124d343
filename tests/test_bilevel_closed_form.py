"""Every supported strategy × contraction × engine against hand-derived hypergradients."""

from __future__ import annotations

import pytest
import torch

from bilevel import BilevelConfig, BilevelTrainer
from bilevel.engines import combinations
from tests.lsq import LSQProblem, closed_form

AFFINE = {"layers": 1, "norm": "none", "out_norm": "none"}  # w = 0.5σ(a·f+b)+0.75: a closed form exists


def make(cfg: dict, eta: float = 0.1, opt: str = "sgd", seed: int = 0, noise: float = 0.0):
    problem = LSQProblem(seed=seed, noise=noise)
    bc = BilevelConfig(**{"approx_scale": "lr", **cfg}, weighter=AFFINE)  # closed forms carry η
    if opt == "sgd":
        lower = torch.optim.SGD(problem.model.parameters(), lr=eta)
    else:
        lower = torch.optim.Adam(problem.model.parameters(), lr=eta)
    trainer = BilevelTrainer(problem.model, weighter_in_dim=3, config=bc, lower_opt=lower)
    torch.manual_seed(seed)
    with torch.no_grad():  # non-trivial weights
        for p in trainer.weighter.parameters() if trainer.weighter is not None else []:
            p.normal_(0, 0.5)
    return problem, trainer


def hypergrad(problem, trainer) -> torch.Tensor:
    sc = trainer.forward(problem, problem.batch)
    g = trainer.alpha_grad(sc)
    return torch.cat([t.reshape(-1) for t in g])


def rel(a, b):
    return float((a - b).norm() / b.norm())


TOL = {"double_backward": 1e-5, "jvp": 1e-5, "terms_jvp": 1e-5, "finite_difference": 1e-3,
       "terms_fd": 1e-3}  # one-sided: first order in terms_fd_radius (1e-4 -> 2.9e-5 here)

CASES = []
for engine, strategies in combinations().items():
    if engine == "betty":
        continue  # tests/test_betty.py
    for strategy, contractions in strategies.items():
        if strategy in ("none", "naive"):
            continue
        for contraction in contractions:
            if strategy == "implicit":
                CASES.append((engine, strategy, contraction, {"implicit": "cg", "implicit_iters": 8}, "cg"))
                CASES.append((engine, strategy, contraction, {"implicit": "neumann", "implicit_iters": 3}, "neumann"))
            else:
                CASES.append((engine, strategy, contraction, {}, strategy))


@pytest.mark.parametrize("engine,strategy,contraction,extra,kind", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[4]}" for c in CASES])
def test_matches_closed_form(engine, strategy, contraction, extra, kind):
    eta = 0.1
    problem, trainer = make({"strategy": strategy, "contraction": contraction, "engine": engine, **extra}, eta)
    got = hypergrad(problem, trainer)
    want = closed_form(problem, trainer.weighter, eta, kind, iters=extra.get("implicit_iters", 0))
    assert float(want.norm()) > 1e-4  # not a trivially zero case
    assert rel(got, want) < TOL[contraction], (got, want)


@pytest.mark.parametrize("contraction", ["double_backward", "terms_fd", "finite_difference"])
def test_unit_scale_is_exactly_minus_the_official_update_and_lr_scale_is_eta_times_unit(contraction):
    """The default (correct sign, unit scale) α-gradient is exactly -1 times the official code's +mixed(∇θL_up),
    so Adam moves α by the official step size in the opposite direction; approx_scale='lr' is η times it."""
    eta = 0.05
    base = {"strategy": "approx", "contraction": contraction}
    g = {}
    for key, extra in {"default": {"approx_scale": "unit"}, "official": {"approx_scale": "unit", "sign": "official"},
                       "lr": {"approx_scale": "lr"}}.items():
        p, t = make({**base, **extra}, eta)
        g[key] = hypergrad(p, t)
    assert BilevelConfig().approx_scale == "unit"
    assert float(g["default"].norm()) > 1e-3
    assert torch.equal(g["default"], -g["official"])
    assert torch.allclose(g["lr"], eta * g["default"], rtol=1e-12, atol=0)


def test_approx_tends_to_unroll_as_eta_goes_to_zero():
    errs = []
    for eta in (1e-1, 1e-2, 1e-3):
        pa, ta = make({"strategy": "approx"}, eta)
        pu, tu = make({"strategy": "unroll"}, eta)
        errs.append(rel(hypergrad(pa, ta), hypergrad(pu, tu)))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 1e-2 * errs[0] * 1.5  # first order in η


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("steps", [1, 3])
def test_native_and_higher_unroll_agree(opt, steps):
    pn, tn = make({"strategy": "unroll", "unroll_steps": steps}, 0.05, opt)
    ph, th = make({"strategy": "unroll", "unroll_steps": steps, "engine": "higher"}, 0.05, opt)
    # give Adam a non-empty state first, identically in both
    for p, t in ((pn, tn), (ph, th)):
        t.cfg.meta_every = 1000
        t.step(p, p.batch)
        t.step_count = 0
    gn, gh = hypergrad(pn, tn), hypergrad(ph, th)
    assert float(gn.norm()) > 1e-6
    # higher's Adam adds eps before the bias correction of √v (old torch formula); ours matches
    # torch.optim.Adam today. The two differ at O(eps·√(1-β2^t)/√v): tiny, but not 1e-10.
    assert rel(gh, gn) < (1e-10 if opt == "sgd" else 1e-4)


def test_unroll_sgd_one_step_equals_actual_update_direction():
    """K=1 SGD unroll is exact: a finite difference of L_up(θ'(α)) in α agrees."""
    eta = 0.1
    problem, trainer = make({"strategy": "unroll"}, eta)
    g = hypergrad(problem, trainer)
    a = trainer.weighter.net[0].bias
    theta0 = problem.model.weight.detach().clone()

    def upper_after_step(delta):
        with torch.no_grad():
            a.add_(delta)
            problem.model.weight.copy_(theta0)
        sc = trainer.forward(problem, problem.batch)
        gth = torch.autograd.grad(sc.lower, problem.model.weight)[0]
        with torch.no_grad():
            th1 = theta0 - eta * gth
            up = problem.upper_objective(problem.batch, {"params": {"weight": th1}})
            a.sub_(delta)
            problem.model.weight.copy_(theta0)
        return float(up)

    h = 1e-5
    fd = (upper_after_step(h) - upper_after_step(-h)) / (2 * h)
    assert abs(fd - float(g[-1])) < 1e-6 * max(1.0, abs(fd)) + 1e-9


def test_noise_held_fixed_and_theta_bit_identical_after_finite_difference():
    problem, trainer = make({"strategy": "approx", "contraction": "finite_difference"}, 0.1, noise=0.3)
    _, ref = make({"strategy": "approx", "contraction": "double_backward"}, 0.1, noise=0.3)
    before = problem.model.weight.detach().clone()
    torch.manual_seed(3)
    g_fd = hypergrad(problem, trainer)
    torch.manual_seed(3)
    g_db = hypergrad(problem, ref)
    assert torch.equal(problem.model.weight.detach(), before)  # bit-identical, not just close
    assert rel(g_fd, g_db) < 1e-3  # would be far off if the noise were resampled


def test_jvp_noise_held_fixed():
    problem, trainer = make({"strategy": "approx", "contraction": "jvp"}, 0.1, noise=0.3)
    _, ref = make({"strategy": "approx"}, 0.1, noise=0.3)
    torch.manual_seed(5)
    g_j = hypergrad(problem, trainer)
    torch.manual_seed(5)
    g_d = hypergrad(problem, ref)
    assert rel(g_j, g_d) < 1e-8


def test_meta_every_skips_exactly_the_right_steps():
    problem, trainer = make({"strategy": "approx", "meta_every": 3}, 0.01)
    metas = []
    for _ in range(7):
        before = [p.detach().clone() for p in trainer.weighter.parameters()]
        m = trainer.step(problem, problem.batch).metrics
        changed = any(not torch.equal(b, p) for b, p in zip(before, trainer.weighter.parameters(), strict=True))
        assert changed == bool(m["meta_step"])
        metas.append(changed)
    assert metas == [True, False, False, True, False, False, True]


def test_step_updates_theta_with_weighted_gradient_and_reports_metrics():
    eta = 0.1
    problem, trainer = make({"strategy": "approx"}, eta)
    x, y = problem.batch["x"], problem.batch["y"]
    th = problem.model.weight.detach().reshape(-1).clone()
    with torch.no_grad():
        w = trainer.weighter(problem.batch["f"])
    m = trainer.step(problem, problem.batch).metrics
    expect = th - eta * (x.T @ (w * (x @ th - y))) / len(y)
    assert torch.allclose(problem.model.weight.detach().reshape(-1), expect, rtol=1e-12)
    assert m["weight_mean"] == pytest.approx(float(w.mean()))
    assert m["lower_loss"] == pytest.approx(float((w * 0.5 * (x @ th - y) ** 2).mean()))
    assert m["lower_loss_unweighted"] == pytest.approx(float((0.5 * (x @ th - y) ** 2).mean()))
    assert m["hypergrad_norm"] > 0


def test_step_times_each_phase_in_its_own_metric(monkeypatch):
    """`time_<phase>` for each of `PHASES` is the time of that phase alone: a known delay put into the first
    (uncached) ∇θ L_up and another into the first ∇θ L_low shows up in `time_upper_grad` and `time_lower_grad`
    respectively, not in a neighbouring phase. The delays are long against this problem's own work (microseconds),
    so the bounds hold on any machine that runs the suite."""
    import time

    from bilevel.context import StepContext
    from bilevel.trainer import PHASES

    problem, trainer = make({"strategy": "approx", "contraction": "terms_fd"})
    delays = {"upper_grad": 0.5, "lower_grad": 1.0}
    for phase, delay in delays.items():
        original = getattr(StepContext, phase)

        def slowed(self, *args, _original=original, _phase=phase, _delay=delay, **kwargs):
            if getattr(self.cache, _phase) is None:  # a cached value costs nothing
                time.sleep(_delay)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(StepContext, phase, slowed)
    m = trainer.step(problem, problem.batch).metrics
    assert {f"time_{p}" for p in PHASES} <= m.keys() and all(m[f"time_{p}"] >= 0 for p in PHASES)
    assert 0.5 <= m["time_upper_grad"] < 1.0 <= m["time_lower_grad"] < 1.5
    assert max(m["time_forward"], m["time_hypergrad"], m["time_lower_update"], m["time_meta_update"]) < 0.5


def test_none_and_naive_weights():
    problem, trainer = make({"strategy": "none"})
    assert trainer.weighter is None
    sc = trainer.forward(problem, problem.batch)
    assert torch.equal(sc.w, torch.ones_like(sc.w))
    problem, trainer = make({"strategy": "naive"})
    sc = trainer.forward(problem, problem.batch)
    per = problem.upper_losses(problem.batch, sc.lower_ctx)
    expect = 1 + (per - per.mean()) / torch.sqrt(per.var(unbiased=False) + 1e-8)  # first step: batch stats
    assert torch.allclose(sc.w, expect)
    assert float(sc.w.mean()) == pytest.approx(1.0)


def test_nonfinite_steps_are_skipped_counted_and_stop_when_persistent():
    problem, trainer = make({"strategy": "approx"}, 0.1)
    trainer.updater.max_nonfinite = 2
    bad = {**problem.batch, "y": problem.batch["y"].clone()}
    bad["y"][0] = float("nan")
    theta = problem.model.weight.detach().clone()
    alpha = [p.detach().clone() for p in trainer.weighter.parameters()]
    m = trainer.step(problem, bad).metrics
    assert m["nonfinite_steps"] == 1
    assert torch.equal(problem.model.weight.detach(), theta)  # θ and α untouched
    assert all(torch.equal(a, p) for a, p in zip(alpha, trainer.weighter.parameters(), strict=True))
    m = trainer.step(problem, problem.batch).metrics  # a finite step resets the streak and trains
    assert m["nonfinite_steps"] == 1 and not torch.equal(problem.model.weight.detach(), theta)
    trainer.step(problem, bad)
    trainer.step(problem, bad)
    with pytest.raises(FloatingPointError, match="3 consecutive non-finite bilevel steps"):
        trainer.step(problem, bad)
