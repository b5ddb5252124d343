"""`ValueNorm('moving')`: its statistics over three updates against a closed form, its buffers in the
state_dict, and its agreement with `bilevel.MovingNorm`'s update where the two coincide (same-dtype,
finite batches)."""

from __future__ import annotations

import math

import pytest
import torch

from bilevel import MovingNorm
from losses import VVAML, ValueNorm

EPS = 1e-3  # ValueNorm's default, as Keras' BatchNormalization

# Three batches (v_post, v_prior) whose joint statistics are exact in float32:
#   x1 = [1, 3, 1, 3]  mean 2, population var 1
#   x2 = [4, 8, 4, 8]  mean 6, var 4
#   x3 = [0, 0, 0, 0]  mean 0, var 0
BATCHES = [([1.0, 3.0], [1.0, 3.0]), ([4.0, 8.0], [4.0, 8.0]), ([0.0, 0.0], [0.0, 0.0])]
# With momentum 1/2: the first update copies (2, 1); then (2+6)/2 = 4, (1+4)/2 = 2.5; then (4+0)/2 = 2,
# (2.5+0)/2 = 1.25. Every number is a dyadic rational, so float32 holds them exactly.
STATS_HALF = [(2.0, 1.0), (4.0, 2.5), (2.0, 1.25)]


def tensors(batch: tuple[list[float], list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(batch[0]), torch.tensor(batch[1])


def test_moving_statistics_and_outputs_over_three_updates() -> None:
    norm = ValueNorm("moving", momentum=0.5)
    for i, (batch, (mean, var)) in enumerate(zip(BATCHES, STATS_HALF, strict=True)):
        v_post, v_prior = tensors(batch)
        out_post, out_prior = norm(v_post, v_prior, update=True)
        assert norm.stats.mean.item() == mean and norm.stats.var.item() == var
        assert int(norm.stats.count) == i + 1
        sd = math.sqrt(var + EPS)  # the updated statistics normalise the batch that updated them
        assert out_post.tolist() == pytest.approx([(v - mean) / sd for v in batch[0]], rel=1e-6)
        assert out_prior.tolist() == pytest.approx([(v - mean) / sd for v in batch[1]], rel=1e-6)

    # without update: the statistics are only read
    out_post, _ = norm(*tensors(BATCHES[0]), update=False)
    assert norm.stats.mean.item() == 2.0 and norm.stats.var.item() == 1.25 and int(norm.stats.count) == 3
    assert out_post.tolist() == pytest.approx([(1 - 2) / math.sqrt(1.25 + EPS), (3 - 2) / math.sqrt(1.25 + EPS)])


def test_moving_statistics_with_default_momentum() -> None:
    norm = ValueNorm("moving")  # momentum 0.99
    for batch in BATCHES:
        norm(*tensors(batch), update=True)
    mean = 0.99 * (0.99 * 2 + 0.01 * 6) + 0.01 * 0  # = 1.9899
    var = 0.99 * (0.99 * 1 + 0.01 * 4) + 0.01 * 0  # = 1.0197
    assert norm.stats.mean.item() == pytest.approx(mean, rel=1e-6)
    assert norm.stats.var.item() == pytest.approx(var, rel=1e-6)


def test_moving_before_any_update_uses_detached_batch_statistics() -> None:
    v_post = torch.tensor([1.0, 3.0], requires_grad=True)
    v_prior = torch.tensor([1.0, 3.0])
    out_post, _ = ValueNorm("moving")(v_post, v_prior, update=False)
    sd = math.sqrt(1.0 + EPS)
    assert out_post.tolist() == pytest.approx([-1 / sd, 1 / sd], rel=1e-6)
    (g,) = torch.autograd.grad(out_post.sum(), v_post)
    assert g.tolist() == pytest.approx([1 / sd, 1 / sd], rel=1e-6)  # constants: no path through mean/var


def test_moving_statistics_are_constants_for_the_gradient() -> None:
    norm = ValueNorm("moving", momentum=0.5)
    norm(*tensors(BATCHES[0]), update=True)
    v_post = torch.tensor([4.0, 8.0], requires_grad=True)
    out_post, _ = norm(v_post, torch.tensor([4.0, 8.0]), update=True)
    (g,) = torch.autograd.grad(out_post.sum(), v_post)
    assert g.tolist() == pytest.approx([1 / math.sqrt(2.5 + EPS)] * 2, rel=1e-6)


def test_buffers_are_in_the_state_dict_and_restore() -> None:
    loss = VVAML(norm="moving", momentum=0.5)
    for batch in BATCHES[:2]:
        loss.value_norm(*tensors(batch), update=True)
    state = loss.state_dict()
    assert set(state) == {"value_norm.stats.mean", "value_norm.stats.var", "value_norm.stats.count"}
    assert state["value_norm.stats.mean"].item() == 4.0 and state["value_norm.stats.var"].item() == 2.5
    assert state["value_norm.stats.count"].dtype == torch.long and int(state["value_norm.stats.count"]) == 2

    other = VVAML(norm="moving", momentum=0.5)
    other.load_state_dict(state)
    x = tensors(BATCHES[2])
    for a, b in zip(loss.value_norm(*x, update=True), other.value_norm(*x, update=True), strict=True):
        assert torch.equal(a, b)
    assert other.value_norm.stats.mean.item() == 2.0 and other.value_norm.stats.var.item() == 1.25


def test_batch_and_none_modes_keep_buffers_untouched() -> None:
    for mode in ("batch", "none"):
        norm = ValueNorm(mode)
        norm(*tensors(BATCHES[0]), update=True)
        assert norm.stats.mean.item() == 0.0 and norm.stats.var.item() == 1.0 and int(norm.stats.count) == 0
    out_post, out_prior = ValueNorm("batch")(*tensors(BATCHES[1]))
    sd = math.sqrt(4.0 + EPS)
    assert out_post.tolist() == pytest.approx([-2 / sd, 2 / sd], rel=1e-6)
    assert torch.equal(out_post, out_prior)


def test_value_norm_keeps_its_statistics_in_the_one_moving_normaliser() -> None:
    """ValueNorm('moving') uses bilevel's MovingNorm: float64 values update float32 buffers in float32 arithmetic
    (as ValueNorm always did), and a non-finite batch leaves the statistics as they are."""
    vn = ValueNorm("moving", momentum=0.9)
    assert isinstance(vn.stats, MovingNorm) and vn.stats.mean.dtype == torch.float32
    g = torch.Generator().manual_seed(0)
    mean, var = torch.zeros((), dtype=torch.float32), torch.ones((), dtype=torch.float32)
    for i in range(20):
        v_post, v_prior = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g,
                                                                                              dtype=torch.float64)
        vn(v_post, v_prior, update=True)
        x = torch.stack([v_post, v_prior])
        bm, bv = x.mean().to(torch.float32), x.var(correction=0).to(torch.float32)
        mean, var = (bm, bv) if i == 0 else (0.9 * mean + 0.1 * bm, 0.9 * var + 0.1 * bv)
        assert torch.equal(vn.stats.mean, mean) and torch.equal(vn.stats.var, var)
    bad = torch.full((3, 5), float("nan"), dtype=torch.float64)
    vn(bad, bad, update=True)
    assert torch.equal(vn.stats.mean, mean) and int(vn.stats.count) == 20

