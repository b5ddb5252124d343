"""Bad configuration fails at construction with the bad value and the accepted ones named."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from bilevel import BilevelConfig, BilevelTrainer, MetaWeighter


@pytest.mark.parametrize("field,value,accepted", [
    ("strategy", "magic", "'approx'"),
    ("engine", "jax", "'higher'"),
    ("contraction", "hessian", "'jvp'"),
    ("sign", "plus", "'official'"),
    ("hypergrad_precision", "bf16", "'step'"),
])
def test_unknown_names(field, value, accepted):
    with pytest.raises(ValidationError) as e:
        BilevelConfig(**{field: value})
    msg = str(e.value)
    assert value in msg and accepted in msg


@pytest.mark.parametrize("kw,needle", [
    ({"unroll_steps": 0}, "unroll_steps"),
    ({"meta_every": 0}, "meta_every"),
    ({"weighter": {"lr": 0.0}}, "lr"),
    ({"weighter": {"lr": -1e-3}}, "lr"),
])
def test_out_of_range(kw, needle):
    with pytest.raises(ValidationError) as e:
        BilevelConfig(**kw)
    assert needle in str(e.value)


@pytest.mark.parametrize("kw,needle", [
    ({"engine": "higher", "strategy": "approx"}, "supported strategies for 'higher'"),
    ({"engine": "betty", "strategy": "unroll"}, "supported strategies for 'betty'"),
    ({"strategy": "unroll", "contraction": "jvp"}, "supported: ['double_backward']"),
    ({"strategy": "unroll", "sign": "official"}, "only defined for strategy 'approx'"),
])
def test_unsupported_combinations(kw, needle):
    with pytest.raises(ValidationError) as e:
        BilevelConfig(**kw)
    assert needle in str(e.value)


def test_nonpositive_lower_lr_and_unroll_optimizer():
    model = torch.nn.Linear(3, 1)
    with pytest.raises(ValueError, match="lower_lr must be > 0, got -0.1"):
        BilevelTrainer(model, 2, lower_lr=-0.1)
    rms = torch.optim.RMSprop(model.parameters())
    with pytest.raises(ValueError, match="torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW; got RMSprop"):
        BilevelTrainer(model, 2, BilevelConfig(strategy="unroll"), lower_opt=rms)


def test_weighter_architecture_and_range():
    """The official MLP_meta: 4 x [Dense 400 -> BN -> ELU] -> Dense(1) -> BN -> σ/2 + 0.75, glorot kernels,
    zero biases, Keras' BN eps 1e-3, batch statistics always."""
    torch.manual_seed(0)
    w = MetaWeighter(7, layers=5, units=400)
    linears = [m for m in w.net if isinstance(m, torch.nn.Linear)]
    bns = [m for m in w.net if isinstance(m, torch.nn.BatchNorm1d)]
    assert [lin.out_features for lin in linears] == [400, 400, 400, 400, 1]
    assert [b.num_features for b in bns] == [400, 400, 400, 400, 1] and isinstance(w.net[-1], torch.nn.BatchNorm1d)
    assert all(not b.track_running_stats and b.eps == 1e-3 for b in bns)
    for lin in linears:  # glorot-uniform: U(±sqrt(6 / (fan_in + fan_out))), zero bias
        bound = (6 / (lin.in_features + lin.out_features)) ** 0.5
        assert float(lin.weight.abs().max()) <= bound and float(lin.weight.abs().max()) > 0.9 * bound
        assert torch.equal(lin.bias, torch.zeros_like(lin.bias))
    x = torch.randn(256, 7) * 100
    out = w(x)
    assert out.shape == (256,) and float(out.min()) >= 0.75 and float(out.max()) <= 1.25
    w.eval()  # batch statistics always: same output in eval mode
    assert torch.allclose(w(x), out)
    # the output BN standardises the logits over the batch, whatever the scale of the inputs or of α
    z = torch.logit((out.double() - 0.75) / 0.5)
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.var(unbiased=False)) - 1) < 1e-2
    with torch.no_grad():
        w.net[-2].weight.mul_(0.1)  # a 10x smaller output layer: without the BN the logits' var would be 100x less
    z = torch.logit((w(x).double() - 0.75) / 0.5)
    assert float(z.var(unbiased=False)) > 0.9
    with pytest.raises(ValueError, match="unknown weighter norm 'group'"):
        MetaWeighter(3, norm="group")
