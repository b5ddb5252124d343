"""`worldmodels.onehot`: the sparse first layer over exactly one-hot feature blocks equals the dense layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from agents.actor_critic import frozen
from worldmodels.nets import MLP
from worldmodels.onehot import OneHot, onehot_linear

G, K, D, OUT = 3, 4, 5, 7  # groups, classes, dense columns, outputs


def features(lead: tuple[int, ...], dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, OneHot]:
    """x = cat(h, s) [*lead, D + G*K] with s exactly one-hot per group, as a straight-through sample is."""
    h = torch.randn(*lead, D, dtype=dtype)
    s = F.one_hot(torch.randint(K, (*lead, G)), K).to(dtype).reshape(*lead, G * K)
    x = torch.cat([h, s], -1)
    return x, OneHot.of(s, D, K)


def test_of_names_the_ones():
    x, hot = features((6,))
    cols = hot.idx + D  # absolute columns
    assert torch.equal(x[..., D:].sum(-1), torch.full((6,), float(G)))
    assert torch.equal(x.gather(-1, cols), torch.ones(6, G, dtype=x.dtype))
    assert hot[2:4].idx.shape == (2, G) and torch.equal(hot[2:4].idx, hot.idx[2:4])


@pytest.mark.parametrize("bias", [True, False])
def test_values_and_gradients_equal_the_dense_layer(bias):
    torch.manual_seed(0)
    x, hot = features((4, 3))
    x.requires_grad_(True)
    w = torch.randn(OUT, D + G * K, dtype=torch.float64, requires_grad=True)
    b = torch.randn(OUT, dtype=torch.float64, requires_grad=True) if bias else None
    g = torch.randn(4, 3, OUT, dtype=torch.float64)
    ins = [x, w] + ([b] if bias else [])
    y = onehot_linear(x, hot, w, b)
    ref = F.linear(x, w, b)
    torch.testing.assert_close(y, ref, rtol=1e-13, atol=1e-13)
    for got, want in zip(torch.autograd.grad(y, ins, g), torch.autograd.grad(ref, ins, g), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)


def test_only_the_needed_gradients_are_computed():
    """A detached input gets no input gradient, frozen weights no weight gradient (and none is asked for)."""
    x, hot = features((5,))
    w = torch.randn(OUT, D + G * K, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(OUT, dtype=torch.float64, requires_grad=True)
    gw, gb = torch.autograd.grad(onehot_linear(x, hot, w, b).sum(), [w, b])
    torch.testing.assert_close(gw, torch.ones(5, OUT, dtype=x.dtype).t() @ x)
    x.requires_grad_(True)
    (gx,) = torch.autograd.grad(onehot_linear(x, hot, w.detach(), b.detach()).sum(), [x])
    torch.testing.assert_close(gx, (torch.ones(5, OUT, dtype=x.dtype) @ w).detach())


def test_mlp_with_onehot_equals_dense_mlp_float32_and_bf16():
    torch.manual_seed(1)
    mlp = MLP(D + G * K, 2, layers=2, units=16)
    x, hot = features((8, 6), torch.float32)
    torch.testing.assert_close(mlp(x, hot), mlp(x), rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", torch.bfloat16):  # the reduced-precision path: same dtype as the dense layer's
        y, ref = mlp(x, hot), mlp(x)
    assert y.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref.float(), rtol=2e-2, atol=2e-2)


def test_frozen_restores_requires_grad_after_an_error():
    mlp = MLP(3, 1, layers=1, units=4)
    mlp[0].bias.requires_grad_(False)  # a parameter frozen by its owner stays frozen
    with pytest.raises(RuntimeError), frozen(mlp):
        assert not any(p.requires_grad for p in mlp.parameters())
        raise RuntimeError("boom")
    assert [p.requires_grad for p in mlp.parameters()] == [True, False, True, True]
