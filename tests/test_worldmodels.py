"""World model: closed-form KL balancing, free nats, meta weights, learning, second-order derivatives."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch.distributions import kl_divergence as torch_kl
from torch.func import functional_call, grad, jvp

from bilevel import stopgrad
from worldmodels import RSSM, GRUCell, WorldModel, kl_balance_terms, weighted_elbo_loss

LOG_2PI = math.log(2 * math.pi)



def tiny_wm(discrete: int = 0, dtype: torch.dtype = torch.float32, **kw) -> WorldModel:
    cfg = dict(deter=8, stoch=4, discrete=discrete, hidden=8, units=8, layers=2, discount_head=True)
    cfg.update(kw)
    return WorldModel({"state": (3,)}, 2, **cfg).to(dtype)


def vec_batch(T: int = 4, B: int = 2, D: int = 3, A: int = 2, dtype: torch.dtype = torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    is_first = torch.zeros(T, B, dtype=torch.bool)
    is_first[0] = True
    if T > 2:
        is_first[2, 1] = True
    return {"state": torch.randn(T, B, D, generator=g, dtype=dtype),
            "action": torch.randn(T, B, A, generator=g, dtype=dtype),
            "reward": torch.randn(T, B, generator=g, dtype=dtype), "is_first": is_first,
            "is_terminal": torch.rand(T, B, generator=g) < 0.3}


def flat(xs) -> torch.Tensor:
    return torch.cat([x.reshape(-1) for x in xs])


# --------------------------------------------------------------------------------------------------------
# KL balancing and the weighted loss
# --------------------------------------------------------------------------------------------------------
def test_kl_gaussian_closed_form():
    rssm = RSSM(action_dim=2, embed_dim=3, deter=4, stoch=5, discrete=0, hidden=4).double()
    g = torch.Generator().manual_seed(0)
    T, B, S = 3, 2, 5
    post = {"mean": torch.randn(T, B, S, generator=g, dtype=torch.float64),
            "std": torch.rand(T, B, S, generator=g, dtype=torch.float64) + 0.1}
    prior = {"mean": torch.randn(T, B, S, generator=g, dtype=torch.float64),
             "std": torch.rand(T, B, S, generator=g, dtype=torch.float64) + 0.1}
    lhs, rhs, value = kl_balance_terms(post, prior, rssm)
    mq, sq, mp, sp = (x.numpy() for x in (post["mean"], post["std"], prior["mean"], prior["std"]))
    by_hand = (np.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5).sum(-1)
    ref = torch_kl(rssm.dist(post), rssm.dist(prior))
    for kl in (lhs, rhs, value):
        assert kl.shape == (T, B)
        np.testing.assert_allclose(kl.numpy(), by_hand, rtol=1e-12)
        torch.testing.assert_close(kl, ref)
    assert (value > 0.1).all()


def test_kl_categorical_closed_form():
    rssm = RSSM(action_dim=2, embed_dim=3, deter=4, stoch=3, discrete=5, hidden=4).double()
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64)
    p = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64) * 2
    lhs, rhs, value = kl_balance_terms({"logits": q}, {"logits": p}, rssm)
    pq, pp = torch.softmax(q, -1).numpy(), torch.softmax(p, -1).numpy()
    by_hand = (pq * (np.log(pq) - np.log(pp))).sum((-2, -1))
    ref = torch_kl(rssm.dist({"logits": q}), rssm.dist({"logits": p}))
    for kl in (lhs, rhs, value):
        np.testing.assert_allclose(kl.numpy(), by_hand, rtol=1e-12)
        torch.testing.assert_close(kl, ref)


def test_categorical_samples_are_one_hot_with_the_distributions_frequencies_and_straight_through_gradient():
    torch.manual_seed(0)
    rssm = RSSM(action_dim=2, embed_dim=3, deter=4, stoch=2, discrete=5, hidden=4)
    p = torch.tensor([[0.1, 0.2, 0.0, 0.3, 0.4], [0.0, 0.0, 0.5, 0.5, 0.0]])  # zero-probability classes too
    n = 200_000
    logits = torch.log(p).expand(n, 2, 5).clone().requires_grad_(True)  # [B, stoch, discrete]
    s = rssm._sample({"logits": logits}).reshape(n, 2, 5)
    assert ((s.detach() == 0) | (s.detach() == 1)).all() and (s.detach().sum(-1) == 1).all()  # exactly one-hot
    freq = s.detach().mean(0)
    assert (freq[p == 0] == 0).all()  # never a class of probability 0
    np.testing.assert_allclose(freq.numpy(), p.numpy(), atol=4 * math.sqrt(0.25 / n))  # 4 sigma
    # the straight-through gradient is that of the probabilities: d/dlogits <c, s> = d/dlogits <c, softmax(logits)>
    c = torch.randn(2, 5)
    (g,) = torch.autograd.grad((s * c).sum(), logits)
    (ref,) = torch.autograd.grad((torch.softmax(logits, -1) * c).sum(), logits)
    torch.testing.assert_close(g, ref)
    # drawn noise (`RSSM.noise`) gives the sample the global RNG would have
    h = torch.zeros(n, 4)
    torch.manual_seed(1)
    fresh = rssm._sample({"logits": logits})
    torch.manual_seed(1)
    assert torch.equal(rssm._sample({"logits": logits}, rssm.noise(h)), fresh)


def test_free_nats_clamp_and_balance_weights():
    T, B = 3, 4
    small = {"kl_lhs": torch.full((T, B), 0.3, requires_grad=True),
             "kl_rhs": torch.full((T, B), 0.5, requires_grad=True)}
    loss, _ = weighted_elbo_loss(small, None, balance=0.8, free=1.0)
    assert loss.item() == pytest.approx(1.0)  # 0.8 * 1 + 0.2 * 1
    gl, gr = torch.autograd.grad(loss, [small["kl_lhs"], small["kl_rhs"]])
    assert (gl == 0).all() and (gr == 0).all()

    big = {"kl_lhs": torch.full((T, B), 3.0, requires_grad=True),
           "kl_rhs": torch.full((T, B), 5.0, requires_grad=True)}
    loss, _ = weighted_elbo_loss(big, None, balance=0.8, free=1.0, kl_scale=0.5)
    assert loss.item() == pytest.approx(0.5 * (0.8 * 3.0 + 0.2 * 5.0))
    gl, gr = torch.autograd.grad(loss, [big["kl_lhs"], big["kl_rhs"]])
    torch.testing.assert_close(gl, torch.full((T, B), 0.5 * 0.8 / (T * B)))
    torch.testing.assert_close(gr, torch.full((T, B), 0.5 * 0.2 / (T * B)))


@pytest.mark.parametrize("discrete", [0, 4])
def test_balance_splits_kl_gradient_between_prior_and_posterior(discrete):
    """With T=1 the prior-only (img_out) parameters get 0.8 and posterior-only (obs_out) parameters 0.2 of
    the full KL(post || prior) gradient."""
    torch.manual_seed(0)
    wm = tiny_wm(discrete, torch.float64, kl_free=0.0)
    batch = vec_batch(T=1, B=8, dtype=torch.float64)
    torch.manual_seed(1)
    post, prior, _ = wm.observe(batch)
    terms = wm.elbo_terms(batch, post, prior)
    kl_terms = {k: terms[k] for k in ("kl_lhs", "kl_rhs")}
    loss, _ = weighted_elbo_loss(kl_terms, None, balance=0.8, free=0.0)
    prior_p, post_p = list(wm.rssm.img_out.parameters()), list(wm.rssm.obs_out.parameters())
    g_bal = torch.autograd.grad(loss, prior_p + post_p, retain_graph=True)
    g_full = torch.autograd.grad(terms["kl"].mean(), prior_p + post_p)
    n = len(prior_p)
    assert flat(g_full[:n]).abs().max() > 1e-3 and flat(g_full[n:]).abs().max() > 1e-3
    torch.testing.assert_close(flat(g_bal[:n]), 0.8 * flat(g_full[:n]))
    torch.testing.assert_close(flat(g_bal[n:]), 0.2 * flat(g_full[n:]))


def test_meta_weights_enter_every_term_before_free_nats():
    torch.manual_seed(0)
    wm = tiny_wm(0, torch.float64, kl_free=1.0, kl_scale=0.7, discount_scale=5.0)
    batch = vec_batch(T=5, B=3, dtype=torch.float64)
    _, terms, _, _, _ = wm.loss(batch)
    terms = {k: v.detach() for k, v in terms.items()}
    w = 0.5 * torch.rand(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + 0.75

    loss, metrics = weighted_elbo_loss(terms, w, 0.8, 1.0, 0.7, {"discount": 5.0})
    m = lambda k: (w * terms[k]).mean()  # noqa: E731
    kl = 0.8 * max(m("kl_lhs"), 1.0) + 0.2 * max(m("kl_rhs"), 1.0)
    manual = m("state") + m("reward") + 5.0 * m("discount") + 0.7 * kl
    torch.testing.assert_close(loss, manual, rtol=1e-12, atol=0)

    # Doubling w doubles every weighted nll exactly; with KL above free nats the whole loss doubles.
    _, metrics2 = weighted_elbo_loss(terms, 2 * w, 0.8, 1.0, 0.7, {"discount": 5.0})
    for k in ("state", "reward", "discount"):
        assert torch.equal(metrics2[f"{k}_nll_w"], 2 * metrics[f"{k}_nll_w"])
        assert torch.equal(metrics2[f"{k}_nll"], metrics[f"{k}_nll"])  # unweighted log unchanged
    big = dict(terms, kl_lhs=terms["kl_lhs"] + 5, kl_rhs=terms["kl_rhs"] + 5)
    l1, _ = weighted_elbo_loss(big, w, 0.8, 1.0)
    l2, _ = weighted_elbo_loss(big, 2 * w, 0.8, 1.0)
    torch.testing.assert_close(l2, 2 * l1, rtol=1e-14, atol=0)
    # With tiny weights the KL sits at the free-nats floor: loss = nll part + kl_scale * free.
    tiny = 1e-3 * w
    l3, m3 = weighted_elbo_loss(terms, tiny, 0.8, 1.0, 0.7)
    nll = sum(m3[f"{k}_nll_w"] for k in ("state", "reward", "discount"))
    torch.testing.assert_close(l3, nll + 0.7 * 1.0, rtol=1e-12, atol=0)
    gw = torch.autograd.grad(weighted_elbo_loss(terms, tiny.requires_grad_(), 0.8, 1.0, 0.7)[0], tiny)[0]
    nll_only = (terms["state"] + terms["reward"] + terms["discount"]) / w.numel()
    torch.testing.assert_close(gw, nll_only)  # no KL contribution to dloss/dw below free nats


@pytest.mark.parametrize("discrete", [0, 4])
def test_w_ones_bit_identical_to_none(discrete):
    torch.manual_seed(0)
    wm = tiny_wm(discrete)
    batch = vec_batch(T=5, B=3)
    out = []
    for w in (None, torch.ones(5, 3)):
        torch.manual_seed(7)
        loss = wm.loss(batch, w)[0]
        out.append((loss, torch.autograd.grad(loss, list(wm.parameters()))))
    assert torch.equal(out[0][0], out[1][0])
    assert all(torch.equal(a, b) for a, b in zip(out[0][1], out[1][1], strict=True))


# --------------------------------------------------------------------------------------------------------
# RSSM behaviour
# --------------------------------------------------------------------------------------------------------
def test_gru_cell_matches_equations():
    torch.manual_seed(0)
    cell = GRUCell(3, 5, norm=True)
    x, h = torch.randn(4, 3), torch.randn(4, 5)
    parts = torch.nn.functional.layer_norm(torch.cat([x, h], -1) @ cell.layer.weight.T + cell.layer.bias, (15,),
                                           cell.norm.weight, cell.norm.bias, eps=1e-3)
    r, c, u = parts.split(5, -1)
    c = torch.tanh(torch.sigmoid(r) * c)
    u = torch.sigmoid(u - 1.0)
    torch.testing.assert_close(cell(x, h), u * c + (1 - u) * h)


@pytest.mark.parametrize("discrete", [0, 4])
def test_observe_resets_state_at_is_first(discrete):
    torch.manual_seed(0)
    wm = tiny_wm(discrete)
    a, b = vec_batch(T=5, B=2, seed=0), vec_batch(T=5, B=2, seed=1)
    b["is_first"] = a["is_first"].clone()  # element 1 restarts at t=2; element 0 never does after t=0
    for k in ("state", "action", "reward"):
        b[k][2:] = a[k][2:]  # same data from t=2 on, different history before
    outs = []
    for batch in (a, b):
        torch.manual_seed(3)
        with torch.no_grad():
            outs.append(wm.observe(batch)[:2])
    (post_a, prior_a), (post_b, prior_b) = outs
    for k in post_a:
        torch.testing.assert_close(post_a[k][2:, 1], post_b[k][2:, 1])  # reset: history forgotten
        torch.testing.assert_close(prior_a[k][2:, 1], prior_b[k][2:, 1])
    assert not torch.allclose(post_a["h"][2:, 0], post_b["h"][2:, 0])  # no reset: history matters
    # The prior at a reset step is img_step(zero state, zero action).
    with torch.no_grad():
        p0 = wm.rssm.img_step(wm.rssm.initial(1), torch.zeros(1, 2))
    torch.testing.assert_close(prior_a["h"][2, 1], p0["h"][0])
    stat = "logits" if discrete else "mean"
    torch.testing.assert_close(prior_a[stat][2, 1], p0[stat][0])
    if discrete:  # one-hot samples, unimix keeps every class probability >= 1% / K
        s = post_a["s"].reshape(5, 2, 4, 4)
        assert torch.equal(s.sum(-1), torch.ones(5, 2, 4)) and set(s.unique().tolist()) == {0.0, 1.0}
        assert torch.softmax(post_a["logits"], -1).min() >= 0.01 / 4 - 1e-7


@pytest.mark.parametrize("discrete", [0, 4])
def test_imagine_shapes_and_semantics(discrete):
    torch.manual_seed(0)
    wm = tiny_wm(discrete)
    batch = vec_batch(T=3, B=2)
    post, _, _ = wm.observe(batch)
    start = {k: v.detach().reshape(-1, *v.shape[2:]) for k, v in post.items()}  # [N=6, ...]
    pol = torch.nn.Linear(wm.rssm.feat_dim, 2)
    policy = lambda f, onehot=None: torch.tanh(pol(f))  # noqa: E731
    H, N, F = 5, 6, wm.rssm.feat_dim
    torch.manual_seed(11)
    traj = wm.imagine(policy, start, H)
    assert traj["feat"].shape == (H + 1, N, F) and traj["action"].shape == (H, N, 2)
    assert torch.equal(traj["feat"][0], wm.feat(start))
    torch.testing.assert_close(traj["action"], policy(traj["feat"][:-1]))  # action[i] taken at feat[i]
    torch.manual_seed(11)
    step = wm.rssm.img_step(start, policy(wm.feat(start)))
    torch.testing.assert_close(traj["feat"][1], wm.feat(step))
    # Actions are not detached: the last imagined reward depends on the policy through the dynamics.
    g = torch.autograd.grad(wm.reward(traj["feat"][-1]).sum(), pol.weight)[0]
    assert g.abs().sum() > 0
    assert wm.discount(traj["feat"]).shape == (H + 1, N)
    if discrete:  # feat's s block is exactly one-hot, at the columns traj['onehot'] names
        hot = traj["onehot"]
        s = traj["feat"][..., wm.rssm.deter:].reshape(H + 1, N, -1, discrete)
        assert hot.start == wm.rssm.deter and torch.equal(s.sum(-1), torch.ones_like(s.sum(-1)))
        assert torch.equal(hot.idx, s.argmax(-1) + torch.arange(s.shape[2]) * discrete)
        torch.testing.assert_close(wm.reward(traj["feat"], hot), wm.reward(traj["feat"]), rtol=1e-6, atol=1e-6)
    else:
        assert "onehot" not in traj


# --------------------------------------------------------------------------------------------------------
# Learning
# --------------------------------------------------------------------------------------------------------
def point_mass_batch(T: int = 12, B: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """2-D point, pos_{t} = clip(pos_{t-1} + 0.3 a_{t-1}); obs = 2 * pos; reward = -|pos|."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(B, 2, generator=g) * 4 - 2
    action = torch.rand(T, B, 2, generator=g) * 2 - 1
    action[0] = 0  # action[t] led to obs t: none before the first
    obs, rew = [], []
    for t in range(T):
        pos = (pos + 0.3 * action[t]).clamp(-2, 2)
        obs.append(2 * pos)
        rew.append(-pos.norm(dim=-1))
    is_first = torch.zeros(T, B, dtype=torch.bool)
    is_first[0] = True
    return {"state": torch.stack(obs), "action": action, "reward": torch.stack(rew), "is_first": is_first,
            "is_terminal": torch.zeros(T, B, dtype=torch.bool)}


def train(wm: WorldModel, batch, steps: int, lr: float) -> list[dict[str, float]]:
    opt = torch.optim.Adam(wm.parameters(), lr=lr, eps=1e-5)
    hist = []
    for _ in range(steps):
        loss, _, _, _, metrics = wm.loss(batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(wm.parameters(), 100.0)
        opt.step()
        hist.append({k: v.item() for k, v in metrics.items()})
    return hist


def test_world_model_learns_point_mass():
    torch.manual_seed(0)
    wm = WorldModel({"state": (2,)}, 2, deter=32, stoch=8, hidden=32, units=64, layers=2)
    batch = point_mass_batch()
    t0 = time.time()
    hist = train(wm, batch, steps=100, lr=1e-3)
    secs = time.time() - t0
    first, last = hist[0], np.mean([h["loss"] for h in hist[-5:]])
    const = 2 * 0.5 * LOG_2PI  # the unit-variance nll floor of the 2-D state
    print(f"\npoint mass: loss {first['loss']:.3f} -> {last:.3f} ({1 - last / first['loss']:.0%} drop); "
          f"state nll excess {first['state_nll'] - const:.3f} -> {hist[-1]['state_nll'] - const:.3f}; "
          f"reward nll {first['reward_nll']:.3f} -> {hist[-1]['reward_nll']:.3f}; {secs:.1f}s")
    assert last < 0.7 * first["loss"]
    assert hist[-1]["state_nll"] - const < 0.25 * (first["state_nll"] - const)
    assert hist[-1]["reward_nll"] < first["reward_nll"]


def test_world_model_learns_moving_dot_images():
    T, B = 6, 4
    g = torch.Generator().manual_seed(0)
    img = torch.zeros(T, B, 64, 64, 1, dtype=torch.uint8)
    pos = torch.randint(8, 48, (B, 2), generator=g)
    action = torch.zeros(T, B, 2)
    for t in range(T):
        if t:
            action[t] = torch.randint(-1, 2, (B, 2), generator=g).float()
            pos = pos + 3 * action[t].long()
        for b in range(B):
            y, x = pos[b].tolist()
            img[t, b, y - 3:y + 3, x - 3:x + 3] = 255
    is_first = torch.zeros(T, B, dtype=torch.bool)
    is_first[0] = True
    batch = {"image": img, "action": action, "reward": torch.zeros(T, B), "is_first": is_first,
             "is_terminal": torch.zeros(T, B, dtype=torch.bool)}
    torch.manual_seed(0)
    wm = WorldModel({"image": (64, 64, 1)}, 2, depth=4, deter=16, stoch=8, hidden=16, units=16,
                    layers=2)
    t0 = time.time()
    hist = train(wm, batch, steps=40, lr=1e-3)
    const = 64 * 64 * 0.5 * LOG_2PI
    e0, e1 = hist[0]["image_nll"] - const, hist[-1]["image_nll"] - const
    print(f"\nmoving dot: image nll excess {e0:.1f} -> {e1:.1f}; {time.time() - t0:.1f}s")
    assert e1 < 0.5 * e0


# --------------------------------------------------------------------------------------------------------
# Second-order derivatives (what the bilevel hypergradient needs)
# --------------------------------------------------------------------------------------------------------
def _setup_second_order(discrete: int):
    torch.manual_seed(0)
    wm = tiny_wm(discrete, torch.float64, kl_free=0.0)  # free=0 so the KL terms are active
    with torch.no_grad():  # zero biases + zero reset state put ELUs exactly at their kink (ELU'' jumps
        for p in wm.parameters():  # at 0, so the Hessian is one-sided there): move off it
            p.add_(0.1 * torch.randn_like(p))
    batch = vec_batch(T=4, B=2, dtype=torch.float64)
    params = {k: v.detach().clone() for k, v in wm.named_parameters()}
    g = torch.Generator().manual_seed(5)
    v = {k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in params.items()}
    w = torch.rand(4, 2, generator=g, dtype=torch.float64) + 0.5

    def loss_fn(p):
        torch.manual_seed(1)  # same sampling noise in every evaluation
        terms = functional_call(wm, p, (batch,)).terms  # WorldModel.forward: one pass, unweighted terms
        return weighted_elbo_loss(terms, w, wm.kl_balance, wm.kl_free, wm.kl_scale, wm.loss_scales)[0]

    return wm, batch, params, v, loss_fn


def _grad(loss_fn, p):
    p = {k: x.clone().requires_grad_() for k, x in p.items()}
    return torch.autograd.grad(loss_fn(p), list(p.values()))


def _double_backward_hvp(loss_fn, params, v):
    p = {k: x.clone().requires_grad_() for k, x in params.items()}
    g = torch.autograd.grad(loss_fn(p), list(p.values()), create_graph=True)
    dot = sum((gi * v[k]).sum() for gi, k in zip(g, p, strict=True))
    return flat(torch.autograd.grad(dot, list(p.values())))


def _fd_hvp(loss_fn, params, v, eps=1e-6):
    gp = _grad(loss_fn, {k: params[k] + eps * v[k] for k in params})
    gm = _grad(loss_fn, {k: params[k] - eps * v[k] for k in params})
    return (flat(gp) - flat(gm)) / (2 * eps)


@pytest.mark.parametrize("discrete", [0, 4])
def test_hvp_double_backward_matches_finite_difference(discrete):
    wm, batch, params, v, loss_fn = _setup_second_order(discrete)
    hvp = _double_backward_hvp(loss_fn, params, v)
    # Autograd treats sg(x) as a constant, so the double-backward HVP is the derivative of the gradient with
    # those values frozen; the finite difference must freeze them too (also the categorical samples' argmax).
    tape = stopgrad.Tape()
    with torch.no_grad(), stopgrad.record(tape):
        loss_fn(params)  # record the stop-gradient values at θ

    def replayed(p):
        with stopgrad.replay(tape):
            return loss_fn(p)

    fd = _fd_hvp(replayed, params, v)
    assert hvp.abs().max() > 1e-2
    torch.testing.assert_close(hvp, fd, rtol=1e-6, atol=1e-6 * hvp.abs().max().item())
    # Every part of the model has curvature (the HVP is not zero on any module).
    sizes = [p.numel() for p in params.values()]
    per_module: dict[str, float] = {}
    for (name, _), chunk in zip(params.items(), hvp.split(sizes), strict=True):
        key = name.split(".")[0] if not name.startswith("rssm") else ".".join(name.split(".")[:2])
        per_module[key] = per_module.get(key, 0.0) + chunk.abs().sum().item()
    assert all(val > 0 for val in per_module.values()), per_module


def test_hvp_is_true_hessian_without_stop_gradients():
    """Gaussian latents, loss = nll + KL(post || prior) with no stop-gradient: plain finite differences."""
    wm, batch, params, v, _ = _setup_second_order(0)

    def loss_fn(p):
        torch.manual_seed(1)
        terms = functional_call(wm, p, (batch,)).terms
        return sum(terms[k].mean() for k in ("state", "reward", "discount", "kl"))

    hvp = _double_backward_hvp(loss_fn, params, v)
    fd = _fd_hvp(loss_fn, params, v)
    torch.testing.assert_close(hvp, fd, rtol=1e-6, atol=1e-6 * hvp.abs().max().item())


@pytest.mark.parametrize("discrete", [0, 4])
def test_forward_over_reverse_matches_double_backward(discrete):
    wm, batch, params, v, loss_fn = _setup_second_order(discrete)
    _, hvp_fwd = jvp(grad(loss_fn), (params,), (v,))
    hvp = _double_backward_hvp(loss_fn, params, v)
    torch.testing.assert_close(flat(hvp_fwd.values()), hvp, rtol=1e-10, atol=1e-12)


def test_dreamerv2_rssm_details():
    """DreamerV2's RSSM: std = 2·σ(x/2) + min_std ('sigmoid2'), no uniform mix of categorical latents, and a
    GRU whose Linear keeps its bias under the LayerNorm."""
    rssm = RSSM(2, 5, deter=6, stoch=3, hidden=7, min_std=0.1)
    assert rssm.unimix == 0.0 and rssm.std_act == "sigmoid2"
    x = torch.tensor([[-30.0, 0.0, 2.0, 0.5, -1.0, 30.0]])  # [mean(3), raw std(3)]
    stats = rssm._stats(x)
    torch.testing.assert_close(stats["std"], 2 * torch.sigmoid(x[:, 3:] / 2) + 0.1)
    assert float(stats["std"][0, 2]) == pytest.approx(2.1, abs=1e-6)  # bounded by 2 + min_std
    assert rssm.cell.layer.bias is not None
    cat = RSSM(2, 5, deter=6, stoch=3, discrete=4, hidden=7)
    logits = torch.randn(1, 12)
    torch.testing.assert_close(cat._stats(logits)["logits"], logits.reshape(1, 3, 4))  # raw logits, no mix
    with pytest.raises(ValueError, match="unknown std_act 'exp'; accepted"):
        RSSM(2, 5, std_act="exp")


def test_the_discount_head_learns_dreamerv2s_soft_label():
    """The discount term is the Bernoulli NLL of gamma * (1 - is_terminal) (DreamerV2's `discount` target), so the
    head's mean, which imagination uses as the discount, is the discount itself."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    wm = WorldModel({"state": (3,)}, 2, deter=8, stoch=4, hidden=8, units=8, layers=2, discount_head=True,
                    discount=0.9)
    batch = vec_batch(T=4, B=2)
    batch["is_terminal"][2, 1] = True
    torch.manual_seed(1)
    terms = wm(batch).terms
    torch.manual_seed(1)  # the same posterior samples
    logits = wm.discount_head(wm.rssm.feat(wm.observe(batch)[0])).squeeze(-1)
    target = 0.9 * (1 - batch["is_terminal"].to(logits.dtype))
    torch.testing.assert_close(terms["discount"], F.binary_cross_entropy_with_logits(logits, target, reduction="none"))
    hard = F.binary_cross_entropy_with_logits(logits, 1 - batch["is_terminal"].to(logits.dtype), reduction="none")
    assert not torch.allclose(terms["discount"], hard)  # a soft label, not the hard continue flag
