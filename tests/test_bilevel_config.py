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
    with pytest.raises(ValueError, match="SGD and torch.optim.Adam, got RMSprop"):
        BilevelTrainer(model, 2, BilevelConfig(strategy="unroll"), lower_opt=rms)


def test_weighter_architecture_and_range():
    w = MetaWeighter(7, layers=5, units=400)
    linears = [m for m in w.net if isinstance(m, torch.nn.Linear)]
    bns = [m for m in w.net if isinstance(m, torch.nn.BatchNorm1d)]
    assert [lin.out_features for lin in linears] == [400, 400, 400, 400, 1]
    assert len(bns) == 4 and all(not b.track_running_stats for b in bns)
    x = torch.randn(50, 7) * 100
    out = w(x)
    assert out.shape == (50,) and float(out.min()) >= 0.75 and float(out.max()) <= 1.25
    # batch statistics always: same output in eval mode
    w.eval()
    assert torch.allclose(w(x), out)
    with pytest.raises(ValueError, match="unknown weighter norm 'group'"):
        MetaWeighter(3, norm="group")
