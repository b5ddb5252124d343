"""What an engine is: a back-end that computes the primitives a strategy's α-gradient is made of.

A strategy names the one it asks for (`Strategy.asks`); the engine computes it at the step's forward pass:

* `mixed(sc, v)`         (∂²L_low/∂θ∂α)ᵀ v, the mixed second derivative contracted with v over θ;
* `mixed_inverse(sc, v)` mixed(H⁻¹ v), H = ∇²θ L_low, H⁻¹v by `sc.cfg.implicit` (Neumann series or CG);
* `unrolled(sc)`         ∇α L_up(θ_K(α)) through K = `sc.cfg.unroll_steps` differentiable copies of the lower step.

So a strategy is one formula for every engine, and an engine never needs to know which strategy asked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from torch import Tensor

if TYPE_CHECKING:
    from bilevel.context import StepContext
    from bilevel.contractions import Contraction
    from bilevel.updater import Part

PRIMITIVES = ("mixed", "mixed_inverse", "unrolled")


class Engine:
    """A new engine is one registered subclass with a `name` that declares:
    * `primitives`: the primitives it computes -> the contractions accepted with each (None: every one);
    * `float16`: it runs under float16 loss scaling;
    and implements `needs_graph(primitive)` where its primitive differentiates ∇θ L_low of the forward pass again
    (that gradient is then taken with a graph). It is built with the configured contraction and the lower
    optimizer's `Part` (the real step `unrolled` differentiates, its clip included)."""

    name: ClassVar[str]
    primitives: ClassVar[dict[str, tuple[str, ...] | None]]
    float16: ClassVar[bool] = False

    def __init__(self, contraction: Contraction, lower: Part) -> None:
        self.contraction, self.lower = contraction, lower

    def needs_graph(self, primitive: str | None) -> bool:
        return False

    def mixed(self, sc: StepContext, v: list[Tensor]) -> list[Tensor]:
        raise NotImplementedError(f"engine {self.name!r} does not compute mixed(v)")

    def prepare_mixed(self, sc: StepContext, v: list[Tensor]) -> None:
        """Do ahead what `mixed(sc, v)` needs neither the lower backward nor the pass's graph for (the trainer calls
        this beside the lower backward). Default: nothing."""

    def mixed_inverse(self, sc: StepContext, v: list[Tensor]) -> list[Tensor]:
        raise NotImplementedError(f"engine {self.name!r} does not compute mixed(H⁻¹v)")

    def unrolled(self, sc: StepContext) -> list[Tensor]:
        raise NotImplementedError(f"engine {self.name!r} does not unroll")
