"""An extension point is one registered class: config validation, the trainer, the CLI help and the combination
table (which the closed-form and exactness tests iterate) all read the registry."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from bilevel import BilevelConfig, BilevelTrainer
from bilevel.contractions import CONTRACTIONS, Contraction
from bilevel.engines import ENGINES, combinations
from bilevel.registry import Registry
from bilevel.strategies import STRATEGIES, Approx
from tests.lsq import LSQProblem

AFFINE = {"layers": 1, "norm": "none", "out_norm": "none"}


def alpha_grad(cfg: BilevelConfig) -> torch.Tensor:
    problem = LSQProblem(seed=0, noise=0.0)
    trainer = BilevelTrainer(problem.model, weighter_in_dim=3, config=cfg,
                             lower_opt=torch.optim.SGD(problem.model.parameters(), lr=0.1))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in trainer.weighter.parameters():
            p.normal_(0, 0.5)
    return torch.cat([g.reshape(-1) for g in trainer.hypergradient(problem, problem.batch).values()])


class Halved(Contraction):
    """double_backward scaled by 1/2: a contraction whose effect is known exactly."""

    name = "halved_double_backward"
    needs_graph = True

    def __call__(self, sc, v):
        return [0.5 * g for g in CONTRACTIONS["double_backward"]()(sc, v)]


class Doubled(Approx):
    name = "doubled_approx"

    def alpha_grad(self, sc, engine):
        return [2.0 * g for g in super().alpha_grad(sc, engine)]


@pytest.fixture
def extensions():
    CONTRACTIONS.register(Halved)
    STRATEGIES.register(Doubled)
    yield
    CONTRACTIONS.unregister(Halved.name)
    STRATEGIES.unregister(Doubled.name)


def test_a_new_contraction_and_strategy_are_one_class_each(extensions):
    table = combinations()
    assert "halved_double_backward" in table["native"]["approx"]
    # the strategy asks for mixed(v) (as approx): every engine that computes it runs the strategy
    assert "doubled_approx" in table["native"] and table["betty"]["doubled_approx"] == ["finite_difference"]
    assert "doubled_approx" not in table["higher"]
    with pytest.raises(ValidationError, match="engine 'higher' does not support strategy 'doubled_approx'"):
        BilevelConfig(strategy="doubled_approx", engine="higher")

    base = alpha_grad(BilevelConfig(contraction="double_backward", weighter=AFFINE))
    assert float(base.norm()) > 1e-3
    halved = alpha_grad(BilevelConfig(contraction="halved_double_backward", weighter=AFFINE))
    doubled = alpha_grad(BilevelConfig(strategy="doubled_approx", contraction="double_backward", weighter=AFFINE))
    torch.testing.assert_close(halved, 0.5 * base, rtol=1e-6, atol=0)
    torch.testing.assert_close(doubled, 2.0 * base, rtol=1e-6, atol=0)

    from recipes.cli import build_parser  # the recipe's help lists what is registered when it is built
    assert "halved_double_backward" in build_parser().format_help().replace("\n", " ").replace("  ", "")


def test_unknown_names_fail_with_the_accepted_ones():
    for field, registry in (("strategy", STRATEGIES), ("contraction", CONTRACTIONS), ("engine", ENGINES)):
        with pytest.raises(ValidationError) as err:
            BilevelConfig(**{field: "nope"})
        assert f"unknown {registry.kind} 'nope'; accepted: {registry.names()}" in str(err.value)


def test_registry_refuses_a_taken_name_and_a_missing_one():
    reg: Registry = Registry("thing")

    class A:
        name = "a"

    class B:
        name = "a"

    reg.register(A)
    reg.register(A)  # idempotent (a module re-imported)
    with pytest.raises(ValueError, match="thing 'a' is already registered to"):
        reg.register(B)
    with pytest.raises(ValueError, match=r"unknown thing 'b'; accepted: \['a'\]"):
        reg["b"]
