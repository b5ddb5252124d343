"""Engines: who computes the α-gradient. `native` (this package's strategies on torch.autograd/torch.func),
`higher` (unrolling with its functional model) and Betty (darts, neumann, cg).

A new engine is one registered `Engine` subclass that declares what it supports; config validation reads that
table, so a combination it cannot compute fails before any work. The third-party libraries are imported only
when an engine computes something, so validating a config never imports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from bilevel.contractions import CONTRACTIONS, Contraction
from bilevel.registry import Registry
from bilevel.strategies import STRATEGIES, Strategy

if TYPE_CHECKING:
    from bilevel.context import StepContext


class Engine:
    """Declares:
    * `strategies`: the weighter strategies it computes -> the contractions accepted with each (None: what the
      strategy itself accepts); `strategies = None`: every registered strategy (it runs the strategy's code);
    * `uses_contraction`: its α-gradient goes through the configured `Contraction` (whose `needs_graph` applies);
    * `float16`: it runs under float16 loss scaling."""

    name: ClassVar[str]
    strategies: ClassVar[dict[str, tuple[str, ...] | None] | None]
    uses_contraction: ClassVar[bool] = False
    float16: ClassVar[bool] = False

    def alpha_grad(self, sc: StepContext, strategy: Strategy, mixed: Contraction,
                   lower_opt: torch.optim.Optimizer, lower_clip: float | None) -> list[Tensor]:
        raise NotImplementedError


ENGINES: Registry[type[Engine]] = Registry("engine")


@ENGINES.register
class Native(Engine):
    name = "native"
    strategies = None
    uses_contraction = True
    float16 = True

    def alpha_grad(self, sc: StepContext, strategy: Strategy, mixed: Contraction,
                   lower_opt: torch.optim.Optimizer, lower_clip: float | None) -> list[Tensor]:
        return strategy.alpha_grad(sc, mixed, lower_opt, lower_clip)


@ENGINES.register
class Higher(Engine):
    """Unrolling only: higher differentiates through its differentiable optimizers."""

    name = "higher"
    strategies = {"unroll": ("double_backward",)}

    def alpha_grad(self, sc: StepContext, strategy: Strategy, mixed: Contraction,
                   lower_opt: torch.optim.Optimizer, lower_clip: float | None) -> list[Tensor]:
        from bilevel.engines import higher_engine

        return higher_engine.unroll(sc, sc.cfg.unroll_steps, lower_opt, lower_clip)


@ENGINES.register
class Betty(Engine):
    """Betty's darts is a finite difference (`approx`); its neumann and cg contract by double backward."""

    name = "betty"
    strategies = {"approx": ("finite_difference",), "implicit": ("double_backward",)}

    def alpha_grad(self, sc: StepContext, strategy: Strategy, mixed: Contraction,
                   lower_opt: torch.optim.Optimizer, lower_clip: float | None) -> list[Tensor]:
        from bilevel.engines import betty_engine

        return betty_engine.alpha_grad(sc, sc.cfg)


def supported(engine: str, strategy: str) -> list[str] | None:
    """The contractions `engine` accepts with `strategy`, or None if it cannot run that strategy. A strategy
    without a weighter computes no α-gradient, so every engine runs it with any contraction."""
    s = STRATEGIES[strategy]
    if not s.uses_weighter:
        return CONTRACTIONS.names()
    e = ENGINES[engine]
    if e.strategies is not None and strategy not in e.strategies:
        return None
    accepted = (e.strategies or {}).get(strategy) or s.contractions
    return list(accepted) if accepted is not None else CONTRACTIONS.names()


def combinations() -> dict[str, dict[str, list[str]]]:
    """engine -> strategy -> accepted contractions, for every registered combination (tests, benchmarks)."""
    out: dict[str, dict[str, list[str]]] = {}
    for e in ENGINES:
        for s in STRATEGIES:
            cs = supported(e, s)
            if cs is not None:
                out.setdefault(e, {})[s] = cs
    return out
