"""TEMPO's bilevel problem on a tiny real RSSM: every strategy runs, contractions agree, approx vs unroll."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bilevel import BilevelConfig, BilevelTrainer, contractions
from bilevel.strategies import approx_coef
from losses import VVAML, get_upper_loss
from worldmodels import WorldModel
from worldmodels.tempo_problem import TempoProblem

T, B, OBS, ACT = 5, 3, 6, 2



def make(cfg: dict, discrete: int = 0, eta: float = 1e-2, kl_free: float = 1.0, upper: str = "vvaml",
         inputs: str = "DSV", dtype=torch.float64):
    torch.manual_seed(0)
    wm = WorldModel({"state": (OBS,)}, ACT, deter=16, stoch=4, discrete=discrete, hidden=16, units=32,
                    layers=2, kl_free=kl_free).to(dtype)
    with torch.no_grad():  # move ELUs off their kink at exactly zero (biases start at 0)
        for p in wm.parameters():
            p.add_(1e-2 * torch.randn_like(p))
    critic = nn.Sequential(nn.Linear(wm.rssm.feat_dim, 32), nn.ELU(), nn.Linear(32, 1)).to(dtype)
    critic.requires_grad_(False)
    problem = TempoProblem(wm, get_upper_loss(upper), lambda f: critic(f).squeeze(-1), inputs)
    bc = BilevelConfig(**cfg, weighter={"layers": 3, "units": 32})
    trainer = BilevelTrainer(wm, problem.input_dim, bc, lower_opt=torch.optim.SGD(wm.parameters(), lr=eta))
    g = torch.Generator().manual_seed(1)
    batch = {
        "state": torch.randn(T, B, OBS, generator=g, dtype=dtype),
        "action": torch.rand(T, B, ACT, generator=g, dtype=dtype) * 2 - 1,
        "reward": torch.randn(T, B, generator=g, dtype=dtype),
        "is_first": torch.zeros(T, B, dtype=torch.bool),
        "is_terminal": torch.zeros(T, B, dtype=torch.bool),
    }
    batch["is_first"][0] = True
    batch["is_first"][3, 1] = True  # an episode boundary inside the chunk
    return problem, trainer, batch


def hypergrad(problem, trainer, batch, seed: int = 7) -> torch.Tensor:
    torch.manual_seed(seed)  # same posterior/prior samples for every strategy compared
    sc = trainer.forward(problem, batch)
    return torch.cat([g.reshape(-1) for g in trainer.alpha_grad(sc)])


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def cos(a, b) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


@pytest.mark.parametrize("contraction", ["jvp", "terms_jvp"])
@pytest.mark.parametrize("discrete", [0, 4], ids=["gaussian", "categorical"])
def test_double_backward_and_forward_mode_agree(discrete, contraction):
    p1, t1, b1 = make({"strategy": "approx", "contraction": "double_backward"}, discrete)
    p2, t2, b2 = make({"strategy": "approx", "contraction": contraction}, discrete)
    g1, g2 = hypergrad(p1, t1, b1), hypergrad(p2, t2, b2)
    assert float(g1.norm()) > 0
    assert rel(g2, g1) < 1e-4


@pytest.mark.parametrize("engine", ["native", "betty"])
@pytest.mark.parametrize("discrete", [0, 4], ids=["gaussian", "categorical"])
def test_finite_difference_and_darts_match_autograd_through_stop_gradients(discrete, engine):
    """KL balancing and straight-through samples stop gradients; the central difference replays the forward
    pass's stop-gradient values, so it estimates the derivative autograd takes (KL balancing active)."""
    p1, t1, b1 = make({"strategy": "approx"}, discrete, kl_free=0.0)
    cfg = {"strategy": "approx", "contraction": "finite_difference", "fd_radius": 1e-4, "engine": engine}
    p2, t2, b2 = make(cfg, discrete, kl_free=0.0)
    g1, g2 = hypergrad(p1, t1, b1), hypergrad(p2, t2, b2)
    assert float(g1.norm()) > 0
    assert rel(g2, g1) < 1e-5


def fd_hypergrad(problem, trainer, batch, linearised: bool, seed: int = 7) -> torch.Tensor:
    """terms_fd's α-gradient as `BilevelTrainer.step` forms it: ∇θ L_up, then the lower backward (which
    leaves the heads' per-sample gradients for the linearised loss_deltas), then the contraction.
    `linearised=False` skips the lower backward, so loss_deltas re-runs the whole model instead."""
    torch.manual_seed(seed)
    sc = trainer.forward(problem, batch)
    sc.upper_grad()
    if linearised:
        sc.lower_grad(retain_graph=False)
    decoder_calls = []
    hook = problem.model.decoder.register_forward_hook(lambda *a: decoder_calls.append(1))
    try:
        g = torch.cat([x.reshape(-1) for x in trainer.alpha_grad(sc)])
    finally:
        hook.remove()
    assert len(decoder_calls) == (0 if linearised else 1)  # the linearised path never runs the decoder
    return g


@pytest.mark.parametrize("linearised", [True, False], ids=["heads-linearised", "full-rerun"])
@pytest.mark.parametrize("discrete", [0, 4], ids=["gaussian", "categorical"])
def test_terms_fd_matches_autograd_with_replayed_stop_gradients(discrete, linearised):
    """terms_fd's one no-grad pass replays the stop-gradient values (KL balancing, straight-through samples),
    so it converges to autograd's exact mixed derivative, first order in the radius - both when it re-runs
    the whole model and when TEMPO's loss_deltas linearises the heads; a plain finite difference of the
    same losses (no replay) converges to a different derivative."""
    p1, t1, b1 = make({"strategy": "approx", "contraction": "double_backward"}, discrete, kl_free=0.0)
    exact = hypergrad(p1, t1, b1)
    errs = {}
    for r in (1e-3, 1e-5):
        cfg = {"strategy": "approx", "contraction": "terms_fd", "terms_fd_radius": r}
        p2, t2, b2 = make(cfg, discrete, kl_free=0.0)
        errs[r] = rel(fd_hypergrad(p2, t2, b2, linearised), exact)
    print("terms_fd rel err by radius:", errs)
    assert errs[1e-5] < 1e-4
    assert errs[1e-5] < 0.05 * errs[1e-3]  # first order: 100x smaller radius, ~100x smaller error

    # The same one-sided difference of the same losses WITHOUT the replay estimates another derivative.
    p3, t3, b3 = make({"strategy": "approx", "contraction": "terms_fd", "terms_fd_radius": 1e-5}, discrete, kl_free=0.0)
    torch.manual_seed(7)
    sc = t3.forward(p3, b3)
    v = sc.upper_grad()
    eps = 1e-5 / float(torch.sqrt(sum((x**2).sum() for x in v)))
    shifted_params = {n: q.detach() + eps * vi for (n, q), vi in zip(p3.model.named_parameters(), v, strict=True)}
    with torch.no_grad(), sc.rng.replay():
        shifted = p3.lower_losses(b3, shifted_params)[0]
    u = [(shifted[k] - sc.losses[k].detach()) / eps for k in sc.losses]
    coef = approx_coef(t3.cfg, sc.lr)
    plain = torch.cat([(coef * m).reshape(-1) for m in contractions.contract_terms(sc, u)])
    print("plain FD rel err:", rel(plain, exact))
    assert rel(plain, exact) > 100 * errs[1e-5]


def test_terms_fd_without_a_recorded_pass_says_what_to_do():
    p, t, b = make({"strategy": "approx", "contraction": "terms_fd"})
    sc = t.forward(p, b, record_sg=False)
    with pytest.raises(RuntimeError, match="stop-gradient values"):
        t.alpha_grad(sc)


def test_terms_fd_step_updates_theta_like_the_exact_contraction():
    """terms_fd frees the forward graph in the lower backward; θ must move exactly as with double_backward,
    and α almost so (the hypergradient differs only by the finite-difference error)."""
    p1, t1, b1 = make({"strategy": "approx"}, eta=1e-2, kl_free=0.0)
    p2, t2, b2 = make({"strategy": "approx", "contraction": "terms_fd", "terms_fd_radius": 1e-5}, eta=1e-2, kl_free=0.0)
    t1.updater.parts["meta"].opt = torch.optim.SGD(t1.weighter.parameters(), lr=10.0)  # α moves visibly in one step
    t2.updater.parts["meta"].opt = torch.optim.SGD(t2.weighter.parameters(), lr=10.0)
    a0 = torch.cat([q.detach().reshape(-1).clone() for q in t1.weighter.parameters()])
    torch.manual_seed(3)
    t1.step(p1, b1)
    torch.manual_seed(3)
    t2.step(p2, b2)
    for q1, q2 in zip(p1.model.parameters(), p2.model.parameters(), strict=True):
        assert torch.equal(q1, q2)
    a1 = torch.cat([q.detach().reshape(-1) for q in t1.weighter.parameters()])
    a2 = torch.cat([q.detach().reshape(-1) for q in t2.weighter.parameters()])
    assert float((a1 - a0).norm()) > 1e-6
    assert rel(a2 - a0, a1 - a0) < 1e-3


def test_approx_vs_exact_one_step_unroll_cosine():
    """Measured: cosine(approx, unroll K=1) -> 1 as η -> 0 (the θ'≈θ approximation's regime)."""
    cosines = {}
    for eta in (1e-1, 1e-2, 1e-3):
        pa, ta, ba = make({"strategy": "approx"}, eta=eta)
        pu, tu, bu = make({"strategy": "unroll"}, eta=eta)
        cosines[eta] = cos(hypergrad(pa, ta, ba), hypergrad(pu, tu, bu))
    print("cosine(approx, unroll-1) by eta:", cosines)
    assert cosines[1e-3] > 0.999
    assert cosines[1e-2] > 0.95
    assert cosines[1e-3] >= cosines[1e-1]


CONFIGS = [
    {"strategy": "none"}, {"strategy": "naive"},
    {"strategy": "approx"}, {"strategy": "approx", "contraction": "jvp"},
    {"strategy": "approx", "contraction": "terms_jvp"}, {"strategy": "approx", "contraction": "terms_fd"},
    {"strategy": "approx", "contraction": "finite_difference"}, {"strategy": "approx", "sign": "official"},
    {"strategy": "unroll"}, {"strategy": "unroll", "unroll_steps": 2},
    {"strategy": "unroll", "engine": "higher"},
    {"strategy": "implicit", "implicit": "neumann"}, {"strategy": "implicit", "implicit": "cg", "cg_damping": 1.0},
    {"strategy": "approx", "engine": "betty", "contraction": "finite_difference"},
    {"strategy": "implicit", "engine": "betty", "implicit": "neumann"},
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
@pytest.mark.parametrize("discrete", [0, 4], ids=["gaussian", "categorical"])
def test_every_strategy_runs_end_to_end(cfg, discrete):
    problem, trainer, batch = make(cfg, discrete, dtype=torch.float32)
    theta0 = [p.detach().clone() for p in problem.model.parameters()]
    for _ in range(2):
        m = trainer.step(problem, batch).metrics
    assert all(torch.isfinite(torch.tensor(v)) for v in m.values())
    assert m["nonfinite_steps"] == 0
    assert any(not torch.equal(a, p) for a, p in zip(theta0, problem.model.parameters(), strict=True))
    if trainer.weighter is not None:
        assert m["hypergrad_norm"] > 0
    else:
        assert "hypergrad_norm" not in m


def test_weighter_inputs_are_detached_state_summaries():
    problem, trainer, batch = make({"strategy": "approx"})
    torch.manual_seed(0)
    sc = trainer.forward(problem, batch)
    post, prior = sc.lower_ctx.post, sc.lower_ctx.prior
    v_post, v_prior = problem.values(sc.lower_ctx)
    want = torch.cat([post["h"], post["mean"], prior["mean"], v_post[..., None], v_prior[..., None]], -1)
    assert sc.x.shape == (T, B, 16 + 2 * 4 + 2) and problem.input_dim == 26
    assert torch.equal(sc.x, want.detach()) and not sc.x.requires_grad
    # values are standardised jointly over post and prior with the official BatchNorm's eps 1e-3
    raw = torch.stack([problem.value_fn(torch.cat([post["h"], st["s"]], -1)) for st in (post, prior)])
    want = (raw - raw.mean()) / torch.sqrt(raw.var(unbiased=False) + 1e-3)
    assert torch.allclose(torch.stack([v_post, v_prior]), want, rtol=1e-12, atol=0)
    for flags, dim in (("SV", 10), ("S", 8), ("D", 16)):
        p, t, b = make({"strategy": "approx"}, inputs=flags)
        assert p.input_dim == dim and t.forward(p, b).x.shape[-1] == dim


def test_categorical_weighter_inputs_are_the_logits():
    """The official weighter reads post['logit'] and prior['logit'] flattened (its Atari branch)."""
    problem, trainer, batch = make({"strategy": "approx"}, discrete=4)
    sc = trainer.forward(problem, batch)
    assert torch.equal(sc.x[..., 16:32], sc.lower_ctx.post["logits"].flatten(-2).detach())
    assert torch.equal(sc.x[..., 32:48], sc.lower_ctx.prior["logits"].flatten(-2).detach())


def test_upper_gradient_only_through_encoder_and_rssm():
    problem, trainer, batch = make({"strategy": "approx"})
    names = problem.upper_parameter_names()
    assert names and all(n.startswith(("encoder.", "rssm.")) for n in names)
    sc = trainer.forward(problem, batch)
    v = dict(zip(sc.names, sc.upper_grad(), strict=True))
    assert all(float(g.abs().sum()) == 0 for n, g in v.items() if n.startswith(("decoder.", "reward_head.")))
    assert sum(float(g.abs().sum()) for n, g in v.items() if n.startswith("rssm.")) > 0


def test_weights_enter_elbo_terms():
    """With w = 1 the lower objective is exactly DreamerV2's loss; scaling w scales the NLL part."""
    problem, trainer, batch = make({"strategy": "none"}, kl_free=0.0)
    torch.manual_seed(0)
    terms, ctx = problem.lower_losses(batch, dict(problem.model.named_parameters()))
    ones = torch.ones(T, B, dtype=torch.float64)
    torch.manual_seed(0)
    ref = problem.model.loss(batch)[0]
    assert torch.equal(problem.lower_objective(terms, ones), ref)
    base = problem.lower_objective(terms, ones)  # no free nats: every term is linear in w
    assert torch.allclose(problem.lower_objective(terms, 2 * ones), 2 * base)


def test_vvaml_is_zero_when_prior_equals_posterior():
    problem, trainer, batch = make({"strategy": "approx"})
    sc = trainer.forward(problem, batch)
    h, s = sc.lower_ctx.post["h"], sc.lower_ctx.post["s"]
    assert float(VVAML()(h, s, s, problem.value_fn)) == 0.0


def test_implicit_contracts_through_all_parameters():
    """H⁻¹v is dense even though v lives on encoder + RSSM: the contraction must not drop other blocks."""
    cfg = {"strategy": "implicit", "implicit": "neumann", "implicit_iters": 2}
    p1, t1, b1 = make(cfg)
    p2, t2, b2 = make({**cfg, "contraction": "jvp"})
    assert rel(hypergrad(p1, t1, b1), hypergrad(p2, t2, b2)) < 1e-4


def test_vvaml_per_sample_losses_reuse_the_weighters_values():
    problem, trainer, batch = make({"strategy": "approx"})
    torch.manual_seed(0)
    sc = trainer.forward(problem, batch)
    post, prior = sc.lower_ctx.post, sc.lower_ctx.prior
    want = problem.upper.per_sample(post["h"], post["s"], prior["s"], problem.value_fn)
    torch.testing.assert_close(problem.upper_losses(batch, sc.lower_ctx), want, rtol=0, atol=0)


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_vvaml_upper_loss_reuses_the_weighters_values(norm):
    problem, trainer, batch = make({"strategy": "approx"})
    problem.upper = VVAML(norm=norm)
    torch.manual_seed(0)
    sc = trainer.forward(problem, batch)
    want = VVAML(norm=norm)(sc.lower_ctx.post["h"], sc.lower_ctx.post["s"], sc.lower_ctx.prior["s"], problem.value_fn)
    got = problem.upper_objective(batch, sc.lower_ctx)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    g1 = torch.autograd.grad(got, sc.lower_ctx.post["s"], retain_graph=True)[0]
    g2 = torch.autograd.grad(want, sc.lower_ctx.post["s"])[0]
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-14)


def test_step_metrics_are_the_unweighted_terms_and_what_the_weights_follow():
    """The logged diagnostics against an independent computation: the per-head means and KL of the pass's terms,
    the entropies in closed form, and numpy's Pearson correlations and masked means of the step's weights."""
    import math

    import numpy as np

    problem, trainer, batch = make({"strategy": "approx"})
    batch["episode_step"] = torch.arange(T).unsqueeze(-1) + torch.tensor([0, 7, 2])  # [T, B]; column 0 starts
    sc = trainer.forward(problem, batch)
    w = sc.w.detach()
    with torch.no_grad():
        got = problem.step_metrics(batch, sc.lower_ctx, sc.losses, w)
    terms, post, prior = sc.losses, sc.lower_ctx.post, sc.lower_ctx.prior
    assert got["state_loss"] == pytest.approx(float(terms["state"].mean()))
    assert got["reward_loss"] == pytest.approx(float(terms["reward"].mean()))
    kl = (torch.log(prior["std"] / post["std"])
          + (post["std"] ** 2 + (post["mean"] - prior["mean"]) ** 2) / (2 * prior["std"] ** 2) - 0.5).sum(-1)
    assert got["kl"] == pytest.approx(float(kl.mean()))
    ent = lambda st: float((0.5 * torch.log(2 * math.pi * math.e * st["std"] ** 2)).sum(-1).mean())  # noqa: E731
    assert got["prior_ent"] == pytest.approx(ent(prior)) and got["post_ent"] == pytest.approx(ent(post))
    wn, r, step = w.numpy().ravel(), batch["reward"].numpy().ravel(), batch["episode_step"].numpy().ravel()
    assert float(w.std()) > 0
    assert got["weight_reward_corr"] == pytest.approx(np.corrcoef(wn, r)[0, 1], abs=1e-6)
    assert got["weight_phase_corr"] == pytest.approx(np.corrcoef(wn, step)[0, 1], abs=1e-6)
    assert got["weight_episode_start"] == pytest.approx(wn[step == 0].mean() / wn.mean(), abs=1e-6)
    assert got["weight_chunk_start"] == pytest.approx(w[0].mean().item() / wn.mean(), abs=1e-6)
    # uniform weights (DreamerV2): the world model's diagnostics only
    with torch.no_grad():
        plain = problem.step_metrics(batch, sc.lower_ctx, sc.losses, torch.ones_like(w))
    assert set(plain) == {"kl", "state_loss", "reward_loss", "prior_ent", "post_ent"}


def test_a_plain_callable_upper_loss_is_wrapped_as_an_upper_loss():
    """A user's callable `fn(h, s_post, s_prior, value_fn) -> scalar` works as TEMPO's task loss: its value is the
    objective, the weighter reads unnormalised values, and per-sample losses are refused in one line."""
    from losses.base import FunctionLoss, evaluate_value

    problem, trainer, batch = make({"strategy": "approx"})
    fn = lambda h, s_post, s_prior, value_fn: (s_post - s_prior).abs().mean()  # noqa: E731
    plain = TempoProblem(problem.model, fn, problem.value_fn)
    assert isinstance(plain.upper, FunctionLoss)
    ctx = plain.lower_losses(batch, dict(plain.model.named_parameters()))[1]
    assert float(plain.upper_objective(batch, ctx)) == float(fn(ctx.post["h"], ctx.post["s"], ctx.prior["s"], None))
    v_post, _ = plain.values(ctx)
    torch.testing.assert_close(v_post, evaluate_value(plain.value_fn, ctx.post["h"], ctx.post["s"]))
    with pytest.raises(NotImplementedError, match="scalar loss only"):
        plain.upper_losses(batch, ctx)
