"""Engines: who computes the primitives of a strategy's α-gradient (`bilevel.engines.base`). `native` (this
package's own, on torch.autograd/torch.func), `higher` (unrolling with its functional model) and Betty (darts for
mixed(v), neumann and cg for mixed(H⁻¹v)).

A new engine is one registered `Engine` subclass that declares the primitives it computes; `bilevel.registry`
derives from that which strategies it runs, so a combination it cannot compute fails when the config is built.
The third-party libraries are imported only when an engine computes something, so validating a config never
imports them.
"""

from __future__ import annotations

from torch import Tensor

from bilevel.context import StepContext
from bilevel.engines.base import PRIMITIVES, Engine
from bilevel.engines.native import Native
from bilevel.registry import ENGINES, combinations, supported

__all__ = ["ENGINES", "PRIMITIVES", "Betty", "Engine", "Higher", "Native", "combinations", "supported"]


@ENGINES.register
class Higher(Engine):
    """Unrolling only: higher differentiates through its differentiable optimizers (step 0 re-runs the lower
    loss, so the forward pass's gradient is not differentiated again)."""

    name = "higher"
    primitives = {"unrolled": ("double_backward",)}

    def unrolled(self, sc: StepContext) -> list[Tensor]:
        from bilevel.engines import higher_engine

        return higher_engine.unroll(sc, sc.cfg.unroll_steps, self.lower.opt, self.lower.clip)


@ENGINES.register
class Betty(Engine):
    """Betty's darts is mixed(v) by a central finite difference; its neumann and cg are mixed(H⁻¹v), contracted
    by double backward through a lower loss they re-evaluate (`bilevel.engines.betty_engine`)."""

    name = "betty"
    primitives = {"mixed": ("finite_difference",), "mixed_inverse": ("double_backward",)}

    def mixed(self, sc: StepContext, v: list[Tensor]) -> list[Tensor]:
        from bilevel.engines import betty_engine

        return [-g for g in betty_engine.darts(sc, v)]  # darts ≈ -mixed(v)

    def mixed_inverse(self, sc: StepContext, v: list[Tensor]) -> list[Tensor]:
        from bilevel.engines import betty_engine

        return [-g for g in betty_engine.implicit(sc, v)]  # neumann / cg return -mixed(H⁻¹v)
