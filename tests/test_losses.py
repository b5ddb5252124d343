"""Tests of the task-aware upper losses (losses/): hand computations, gradient routing, registry."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from losses import VVAML, UpperLoss, VaGraM, get_upper_loss, register
from losses.registry import _REGISTRY

T, B, D, S = 2, 2, 1, 2
W = [0.5, 1.0, -2.0]  # linear critic weights on cat(h, s) = [h, s1, s2]
BIAS = 0.3
EPS = 1e-8


def linear_value(feat: Tensor) -> Tensor:
    w = torch.tensor(W, dtype=feat.dtype)
    return feat @ w + BIAS  # [T, B]


def tiny_states(seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(T, B, D, generator=g, dtype=torch.float64)
    s_post = torch.randn(T, B, S, generator=g, dtype=torch.float64)
    s_prior = torch.randn(T, B, S, generator=g, dtype=torch.float64)
    return h, s_post, s_prior


def hand_values(h: Tensor, s: Tensor) -> list[float]:
    out = []
    for t in range(T):
        for b in range(B):
            x = [float(h[t, b, 0]), float(s[t, b, 0]), float(s[t, b, 1])]
            out.append(sum(wi * xi for wi, xi in zip(W, x, strict=True)) + BIAS)
    return out


def hand_stats(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, sum((x - m) ** 2 for x in xs) / len(xs)  # population variance


def hand_vvaml(vp: list[float], vq: list[float], mean: float, var: float) -> float:
    sd = math.sqrt(var + EPS)
    return sum(((a - mean) / sd - (b - mean) / sd) ** 2 for a, b in zip(vp, vq, strict=True)) / len(vp)


# ---------------------------------------------------------------- V-VAML


@pytest.mark.parametrize("norm", ["batch", "moving", "none"])
def test_vvaml_zero_when_post_equals_prior(norm: str) -> None:
    h, s_post, _ = tiny_states()
    loss = VVAML(norm=norm)
    assert loss(h, s_post, s_post.clone(), linear_value).item() == 0.0
    assert torch.all(loss.per_sample(h, s_post, s_post.clone(), linear_value) == 0)


def test_vvaml_hand_computation_batch_and_none() -> None:
    h, s_post, s_prior = tiny_states()
    vp, vq = hand_values(h, s_post), hand_values(h, s_prior)
    mean, var = hand_stats(vp + vq)  # joint over [2, T, B]
    got = VVAML(norm="batch", eps=EPS)(h, s_post, s_prior, linear_value).item()
    assert got == pytest.approx(hand_vvaml(vp, vq, mean, var), rel=1e-10)
    got_none = VVAML(norm="none")(h, s_post, s_prior, linear_value).item()
    expected_none = sum((a - b) ** 2 for a, b in zip(vp, vq, strict=True)) / len(vp)
    assert got_none == pytest.approx(expected_none, rel=1e-10)
    assert got != pytest.approx(got_none)  # the normalisation does something on this case

    per = VVAML(norm="batch", eps=EPS).per_sample(h, s_post, s_prior, linear_value)
    assert per.shape == (T, B)
    sd = math.sqrt(var + EPS)
    for i, (a, b) in enumerate(zip(vp, vq, strict=True)):
        assert per[i // B, i % B].item() == pytest.approx(((a - b) / sd) ** 2, rel=1e-10)


def test_vvaml_moving_norm_updates_across_calls() -> None:
    m = 0.9
    loss = VVAML(norm="moving", momentum=m, eps=EPS)
    h1, p1, q1 = tiny_states(1)
    h2, p2, q2 = tiny_states(2)
    mean1, var1 = hand_stats(hand_values(h1, p1) + hand_values(h1, q1))
    mean2, var2 = hand_stats(hand_values(h2, p2) + hand_values(h2, q2))

    out1 = loss(h1, p1, q1, linear_value).item()  # first call initialises from the batch
    assert loss.value_norm.stats.mean.item() == pytest.approx(mean1, rel=1e-6)
    assert loss.value_norm.stats.var.item() == pytest.approx(var1, rel=1e-6)
    assert out1 == pytest.approx(hand_vvaml(hand_values(h1, p1), hand_values(h1, q1), mean1, var1), rel=1e-5)

    out2 = loss(h2, p2, q2, linear_value).item()  # then μ ← mμ + (1-m)μ_batch, same for σ²
    mean12, var12 = m * mean1 + (1 - m) * mean2, m * var1 + (1 - m) * var2
    assert loss.value_norm.stats.mean.item() == pytest.approx(mean12, rel=1e-6)
    assert loss.value_norm.stats.var.item() == pytest.approx(var12, rel=1e-6)
    assert out2 == pytest.approx(
        hand_vvaml(hand_values(h2, p2), hand_values(h2, q2), mean12, var12), rel=1e-5
    )
    assert int(loss.value_norm.stats.count) == 2

    # no update in eval mode, nor with values(update=False)
    loss.values(h1, p1, q1, linear_value, update=False)
    loss.eval()
    loss(h1, p1, q1, linear_value)
    assert int(loss.value_norm.stats.count) == 2
    assert loss.value_norm.stats.mean.item() == pytest.approx(mean12, rel=1e-6)


@pytest.mark.parametrize("norm", ["batch", "moving", "none"])
def test_vvaml_gradients_reach_both_states_not_critic(norm: str) -> None:
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Linear(D + S, 8), nn.Tanh(), nn.Linear(8, 1)).requires_grad_(False)
    h = torch.randn(T, B, D, requires_grad=True)
    s_post = torch.randn(T, B, S, requires_grad=True)
    s_prior = torch.randn(T, B, S, requires_grad=True)
    VVAML(norm=norm)(h, s_post, s_prior, critic).backward()
    assert s_post.grad is not None and s_post.grad.abs().sum() > 0
    assert s_prior.grad is not None and s_prior.grad.abs().sum() > 0
    assert all(p.grad is None for p in critic.parameters())


def test_vvaml_batch_norm_gradient_flows_through_statistics() -> None:
    h, s_post, s_prior = tiny_states(3)
    s_post.requires_grad_(True)
    (g,) = torch.autograd.grad(VVAML(norm="batch", eps=EPS)(h, s_post, s_prior, linear_value), s_post)

    def manual(detach_stats: bool) -> Tensor:
        sp = s_post.detach().requires_grad_(True)
        x = torch.stack([linear_value(torch.cat([h, sp], -1)), linear_value(torch.cat([h, s_prior], -1))])
        mu, var = x.mean(), x.var(correction=0)
        if detach_stats:
            mu, var = mu.detach(), var.detach()
        x = (x - mu) / torch.sqrt(var + EPS)
        return torch.autograd.grad((x[0] - x[1]).square().mean(), sp)[0]

    torch.testing.assert_close(g, manual(False))
    assert not torch.allclose(g, manual(True))


def test_bad_norm_rejected() -> None:
    with pytest.raises(ValueError, match="accepted"):
        VVAML(norm="layer")  # type: ignore[arg-type]


# ---------------------------------------------------------------- VaGraM

C = [0.5, 2.0, -1.0]  # quadratic critic V(h, s) = Σ_d c_d s_d², ∇_s V = 2 c ⊙ s


def quad_value(feat: Tensor) -> Tensor:
    s = feat[..., D:]
    return (torch.tensor(C, dtype=feat.dtype) * s.square()).sum(-1)


def test_vagram_hand_computation_with_percentile_clipping() -> None:
    g = torch.Generator().manual_seed(0)
    Tq, Bq, Sq = 4, 5, 3
    h = torch.randn(Tq, Bq, D, generator=g, dtype=torch.float64)
    s_post = torch.randn(Tq, Bq, Sq, generator=g, dtype=torch.float64)
    s_post[2, 3] = torch.tensor([100.0, -50.0, 80.0], dtype=torch.float64)  # huge value gradient
    s_prior = s_post + 0.1 * torch.randn(Tq, Bq, Sq, generator=g, dtype=torch.float64)

    sp, sq = s_post.numpy().reshape(-1, Sq), s_prior.numpy().reshape(-1, Sq)
    grad = 2 * np.array(C) * sp  # [N, S], closed form
    norms = np.linalg.norm(grad, axis=-1)
    q = np.percentile(norms, 95)  # linear interpolation, like torch.quantile
    assert norms[2 * Bq + 3] > 10 * q  # the outlier is clipped ...
    assert (norms > q).sum() == 1  # ... and only it (20 samples: 95th pct lies between top two)
    clipped = grad * np.minimum(1.0, q / norms)[:, None]
    per = (clipped * (sq - sp)) ** 2
    expected = per.sum(-1).mean()
    unclipped = ((grad * (sq - sp)) ** 2).sum(-1).mean()

    s_post.requires_grad_(True)
    s_prior.requires_grad_(True)
    loss_fn = VaGraM()
    out = loss_fn(h, s_post, s_prior, quad_value)
    assert out.item() == pytest.approx(expected, rel=1e-10)
    assert out.item() != pytest.approx(unclipped)
    assert VaGraM(clip_quantile=None)(h, s_post, s_prior, quad_value).item() == pytest.approx(
        unclipped, rel=1e-10
    )
    np.testing.assert_allclose(
        loss_fn.per_sample(h, s_post, s_prior, quad_value).detach().numpy(), per.sum(-1).reshape(Tq, Bq)
    )

    out.backward()
    assert s_prior.grad is not None and s_prior.grad.abs().sum() > 0
    assert s_post.grad is None  # the posterior is a stop-gradient target
    # d/ds_prior = 2 g² (s_prior - s_post) / N
    np.testing.assert_allclose(
        s_prior.grad.numpy().reshape(-1, Sq), 2 * clipped**2 * (sq - sp) / (Tq * Bq), rtol=1e-10
    )


def test_vagram_zero_when_equal_and_no_critic_grad_and_works_under_no_grad() -> None:
    critic = nn.Sequential(nn.Linear(D + S, 8), nn.Tanh(), nn.Linear(8, 1))  # requires grad on purpose
    h, s_post, s_prior = (x.float() for x in tiny_states(4))
    s_prior.requires_grad_(True)
    assert VaGraM()(h, s_post, s_post.clone(), critic).item() == 0.0
    VaGraM()(h, s_post, s_prior, critic).backward()
    assert all(p.grad is None for p in critic.parameters())  # autograd.grad w.r.t. states only
    with torch.no_grad():  # per-sample losses for naive weighting, computed without a graph
        per = VaGraM().per_sample(h, s_post, s_prior, critic)
    assert per.shape == (T, B) and per.abs().sum() > 0


# ---------------------------------------------------------------- registry


class MyLoss(UpperLoss):
    """A user loss: scale · mean |s_post - s_prior|²."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def per_sample(self, h: Tensor, s_post: Tensor, s_prior: Tensor, value_fn: Callable) -> Tensor:
        return self.scale * (s_post - s_prior).square().sum(-1)


def test_registry_builtins_and_kwargs() -> None:
    assert isinstance(get_upper_loss("vvaml"), VVAML)
    assert isinstance(get_upper_loss("VaGraM"), VaGraM)
    assert VaGraM.use_probs and not VVAML.use_probs  # categorical latents: probabilities for VaGraM
    v = get_upper_loss("vvaml", norm="moving", momentum=0.5)
    assert v.value_norm.mode == "moving" and v.value_norm.momentum == 0.5


def test_registry_loads_user_class_by_path() -> None:
    loss = get_upper_loss("tests.test_losses:MyLoss", scale=2.0)
    assert type(loss).__name__ == "MyLoss" and isinstance(loss, UpperLoss)
    h, s_post, s_prior = tiny_states()
    expected = 2.0 * (s_post - s_prior).square().sum(-1).mean()
    torch.testing.assert_close(loss(h, s_post, s_prior, linear_value), expected)


def test_register_decorator() -> None:
    try:

        @register("my_test_loss")
        class Registered(MyLoss):
            pass

        assert isinstance(get_upper_loss("my_test_loss"), Registered)
        with pytest.raises(ValueError, match="already registered"):
            register("my_test_loss")(MyLoss)
    finally:
        _REGISTRY.pop("my_test_loss", None)


def test_registry_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown upper loss 'nope'.*\['vagram', 'vvaml'\]"):
        get_upper_loss("nope")
    with pytest.raises(ValueError, match=r"no_such_module_xyz.*ModuleNotFoundError"):
        get_upper_loss("no_such_module_xyz:Foo")
    with pytest.raises(ValueError, match=r"tests\.test_losses.*no attribute 'Missing'"):
        get_upper_loss("tests.test_losses:Missing")
    with pytest.raises(ValueError, match="module.path:ClassName"):
        get_upper_loss("tests.test_losses:")
    with pytest.raises(ValueError, match="cannot build"):
        get_upper_loss("vvaml", bogus=1)
