"""The Betty engine (betty-ml 0.2.1 darts / neumann / cg) against closed forms and the native strategies."""

from __future__ import annotations

import inspect

import pytest
import torch
from betty.hypergradient.cg import cg as betty_cg
from betty.hypergradient.darts import darts as betty_darts
from betty.problems import ImplicitProblem

from bilevel import BilevelConfig
from bilevel.engines import betty_engine
from tests.lsq import closed_form
from tests.test_bilevel_closed_form import make, rel

ETA = 0.1
APPROX = {"strategy": "approx", "contraction": "finite_difference"}
CG = {"strategy": "implicit", "implicit": "cg", "implicit_iters": 8}  # d = 4: CG is exact in 4 iterations
NEUMANN = {"strategy": "implicit", "implicit": "neumann", "implicit_iters": 3}


def flat(gs: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in gs])


def betty_and_native(cfg: dict, eta: float = ETA, **kw):
    """(betty hypergradient, native hypergradient, betty problem, betty trainer) for the same config."""
    pb, tb = make({**cfg, "engine": "betty"}, eta, **kw)
    pn, tn = make(cfg, eta, **kw)
    seed = kw.get("seed", 0)
    torch.manual_seed(100 + seed)  # the same lower-loss noise in both (when the problem has noise)
    scb = tb.forward(pb, pb.batch)
    gb = flat(tb.alpha_grad(scb))
    torch.manual_seed(100 + seed)
    scn = tn.forward(pn, pn.batch)
    gn = flat(tn.alpha_grad(scn))
    return gb, gn, pb, tb


@pytest.mark.parametrize("cfg,kind,tol_closed,tol_native", [
    (APPROX, "approx", 1e-3, 1e-6),
    (CG, "cg", 1e-5, 1e-8),
    (NEUMANN, "neumann", 1e-5, 1e-8),
], ids=["approx-darts", "implicit-cg", "implicit-neumann"])
def test_matches_closed_form_and_native(cfg, kind, tol_closed, tol_native):
    gb, gn, pb, tb = betty_and_native(cfg)
    want = closed_form(pb, tb.weighter, ETA, kind, iters=cfg.get("implicit_iters", 0))
    assert float(want.norm()) > 1e-4
    assert rel(gb, want) < tol_closed, (gb, want)
    assert rel(gb, gn) < tol_native, (gb, gn)


@pytest.mark.parametrize("cfg", [
    {**APPROX, "sign": "official"},
    {**APPROX, "fd_radius": 1e-3},
    {**NEUMANN, "neumann_alpha": 0.05, "implicit_iters": 6},
    {**CG, "cg_damping": 0.3, "implicit_iters": 2},  # damped, and truncated before convergence
    {**CG, "implicit_iters": 1},
], ids=["official-sign", "fd-radius", "neumann-alpha", "cg-damping-truncated", "cg-one-iteration"])
def test_agrees_with_native_for_the_same_config(cfg):
    gb, gn, _, _ = betty_and_native(cfg)
    assert float(gn.norm()) > 1e-6
    assert rel(gb, gn) < 1e-6, (gb, gn)


def test_official_sign_and_unit_scale():
    """official = -correct at either scale; 'lr' = η × 'unit' (darts is scaled once, after the call)."""
    g_lr, _, _, _ = betty_and_native(APPROX, 0.05)
    g_off, _, _, _ = betty_and_native({**APPROX, "sign": "official"}, 0.05)
    g_unit, gn_unit, _, _ = betty_and_native({**APPROX, "approx_scale": "unit"}, 0.05)
    assert torch.equal(g_off, -g_lr)
    assert torch.allclose(g_lr, 0.05 * g_unit, rtol=1e-12, atol=0)
    assert rel(g_unit, gn_unit) < 1e-6


def test_noise_replayed_in_betty_training_step():
    """With sampling noise in the lower loss, Betty's re-evaluations must see the step's noise."""
    for cfg in (APPROX, NEUMANN, CG):
        gb, gn, _, _ = betty_and_native(cfg, noise=0.3)
        assert rel(gb, gn) < 1e-6, cfg


def test_problems_are_real_betty_implicit_problems():
    pb, tb = make({**CG, "engine": "betty"}, ETA)
    sc = tb.forward(pb, pb.batch)
    lower, upper = betty_engine.build_problems(sc, "cg")
    assert isinstance(lower, ImplicitProblem) and isinstance(upper, ImplicitProblem)
    assert lower.config.type == "cg" and lower.config.cg_iterations == 8 and lower.config.cg_alpha == 1.0
    assert lower.cur_batch is pb.batch and lower.paths == []
    assert [id(p) for p in lower.parameters()] == [id(p) for p in lower.trainable_parameters()]
    assert [id(p) for p in lower.trainable_parameters()] == [id(p) for p in sc.theta]
    assert [id(p) for p in upper.trainable_parameters()] == [id(p) for p in sc.alpha]
    assert torch.equal(lower.training_step_exec(lower.cur_batch), sc.lower)  # same loss as the step's
    cfg_n = BilevelConfig(**NEUMANN, engine="betty", weighter={"layers": 1, "norm": "none"})
    ln, _ = betty_engine.build_problems(sc, "neumann", cfg_n)
    assert (ln.config.type, ln.config.neumann_iterations, ln.config.neumann_alpha) == ("neumann", 3, sc.lr)
    ld, _ = betty_engine.build_problems(sc, "darts", BilevelConfig(**APPROX, engine="betty", fd_radius=0.02))
    assert (ld.config.type, ld.config.darts_alpha) == ("darts", 0.02)


def test_theta_bit_identical_after_betty_darts():
    problem, trainer = make({**APPROX, "engine": "betty"}, ETA, noise=0.3)
    before = problem.model.weight.detach().clone()
    sc = trainer.forward(problem, problem.batch)
    g_theta = torch.autograd.grad(sc.lower, sc.theta, retain_graph=True)[0]
    g = trainer.alpha_grad(sc)
    assert float(flat(g).norm()) > 0
    assert torch.equal(problem.model.weight.detach(), before)  # bit-identical, not just close
    # the restore is invisible to autograd: the step's shared graph at θ is still usable and unchanged
    assert torch.equal(torch.autograd.grad(sc.lower, sc.theta)[0], g_theta)


def test_raw_betty_darts_round_trip_drifts_theta():
    """Why we restore: Betty's own add/sub/add round trip leaves θ off by rounding (here ≈ 1 ulp)."""
    drifts = []
    for seed in range(3):
        problem, trainer = make({**APPROX, "engine": "betty"}, ETA, seed=seed)
        sc = trainer.forward(problem, problem.batch)
        lower, upper = betty_engine.build_problems(sc, "darts")
        before = problem.model.weight.detach().clone()
        betty_darts(sc.upper_grad(), lower, upper, False)  # raw, without our restore
        drifts.append(float((problem.model.weight.detach() - before).abs().max()))
    assert max(drifts) > 0.0, drifts  # not bit-identical (seed 0: 2.2e-16)
    assert max(drifts) < 1e-12, drifts  # ... but only by rounding: Betty 0.2.1 does restore θ


def test_installed_betty_cg_still_has_the_search_direction_bug():
    """betty-ml 0.2.1's cg builds p_new from the old residual (leopard-ai/betty#15) and does not converge.
    If this fails, Betty was upgraded/fixed: drop `_betty_cg_fixed` and call Betty's cg directly."""
    src = inspect.getsource(betty_cg)
    assert "p_new = [rr + beta * pp for rr, pp in zip(r, p)]" in src
    problem, trainer = make({**CG, "engine": "betty"}, ETA)
    sc = trainer.forward(problem, problem.batch)
    lower, upper = betty_engine.build_problems(sc, "cg")
    upstream = flat(betty_cg(sc.upper_grad(), lower, upper, False))
    want = closed_form(problem, trainer.weighter, ETA, "cg")
    assert rel(upstream, want) > 1e-2  # 0.13 here: the upstream solve is wrong
    assert rel(flat(trainer.alpha_grad(sc)), want) < 1e-5


def test_fixed_cg_copy_equals_betty_cg_where_the_bug_does_not_act():
    """With one iteration the stale search direction is never used: copy and upstream agree bit for bit."""
    problem, trainer = make({**CG, "implicit_iters": 1, "engine": "betty"}, ETA)
    sc = trainer.forward(problem, problem.batch)
    lower, upper = betty_engine.build_problems(sc, "cg")
    v = sc.upper_grad()
    ours = betty_engine._betty_cg_fixed(v, lower, upper, False)
    theirs = betty_cg(v, lower, upper, False)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


@pytest.mark.parametrize("cfg", [APPROX, CG, NEUMANN], ids=["approx", "cg", "neumann"])
def test_full_trainer_step_updates_alpha_and_theta(cfg):
    problem, trainer = make({**cfg, "engine": "betty"}, 0.01)
    alpha0 = [p.detach().clone() for p in trainer.weighter.parameters()]
    theta0 = problem.model.weight.detach().clone()
    for _ in range(2):
        m = trainer.step(problem, problem.batch).metrics
        assert m["meta_step"] == 1.0 and m["hypergrad_norm"] > 0
    assert all(not torch.equal(a, p) for a, p in zip(alpha0, trainer.weighter.parameters(), strict=True))
    assert not torch.equal(theta0, problem.model.weight.detach())


@pytest.mark.parametrize("cfg", [APPROX, CG], ids=["darts", "cg"])
def test_zero_upper_gradient_gives_zero_alpha_gradient(cfg):
    problem, trainer = make({**cfg, "engine": "betty"}, ETA)
    sc = trainer.forward(problem, problem.batch)
    sc.cache.upper_grad = [torch.zeros_like(p) for p in sc.theta]  # what the strategy reads as ∇θ L_up
    g = trainer.alpha_grad(sc)
    assert all(torch.equal(x, torch.zeros_like(a)) for x, a in zip(g, sc.alpha, strict=True))


@pytest.mark.parametrize("cfg,bad,supported", [
    ({"strategy": "unroll"}, "'unroll'", "['approx', 'implicit', 'naive', 'none']"),
    ({"strategy": "approx", "contraction": "jvp"}, "'jvp'", "['finite_difference']"),
    ({"strategy": "approx", "contraction": "double_backward"}, "'double_backward'", "['finite_difference']"),
    ({"strategy": "implicit", "contraction": "finite_difference"}, "'finite_difference'",
     "['double_backward']"),
], ids=["unroll", "approx-jvp", "approx-double_backward", "implicit-finite_difference"])
def test_unsupported_combinations_raise(cfg, bad, supported):
    with pytest.raises(ValueError) as e:
        BilevelConfig(**cfg, engine="betty")
    msg = str(e.value)
    assert bad in msg and supported in msg and "'betty'" in msg, msg
