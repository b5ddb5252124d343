"""Hypergradient strategies: how a step's weights are made and what its α-gradient is, as a formula in the
primitives an engine computes (`bilevel.engines.base.Engine`: `mixed`, `mixed_inverse`, `unrolled`).

With the lower update θ' = θ - η ∇θ L_low(θ, w(α)) the true one-step hypergradient is

    ∇α L_up(θ') = -η · (∂²L_low/∂θ∂α)ᵀ ∇θ' L_up(θ')                         (paper eq. 8)

* `approx`   (eq. 9): evaluate ∇θ L_up at θ from the same forward pass:  c · mixed(∇θ L_up(θ)) with
             c = -η (`approx_scale='lr'`, the exact derivative's scale) or c = -1 (`'unit'`, the default: the
             official code's magnitude; with Adam on α only the direction of each entry relative to eps
             matters, and -η pushes almost every entry below eps). `sign='official'` flips c to +1 / +η, as
             the deng-ai-lab TF code does. η is the lower optimizer's lr: with Adam as the lower optimizer,
             `approx` (and `implicit`) differentiate an SGD step of size η, not Adam's step; only `unroll`
             differentiates the real optimizer.
* `implicit` : implicit function theorem, -mixed(H⁻¹ ∇θ L_up) (no η); H⁻¹v by Neumann series or CG.
* `unroll`   : ∇α L_up(θ_K) through K differentiable copies of the trainer's real lower step (clipping, then
             SGD/Adam/AdamW with all their options, from the optimizer's state).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from bilevel.context import StepContext
from bilevel.norm import MovingNorm
from bilevel.problem import BilevelProblem
from bilevel.registry import STRATEGIES

if TYPE_CHECKING:
    from bilevel.config import BilevelConfig
    from bilevel.engines.base import Engine


class Strategy(nn.Module):
    """How one step makes its weights and, with a weighter, its α-gradient.

    A new strategy is one registered subclass with a `name` that declares:
    * `uses_weighter`: the weights come from the weighter N_α, which this strategy trains;
    * `asks`: the engine primitive its α-gradient is made of (`Engine.primitives`): the engines that compute it
      run the strategy (`bilevel.registry.supported`);
    * `frees_forward_graph`: it reads nothing of the forward graph but ∇θ L_up, so the trainer takes that first
      and lets the lower backward free the graph (when the engine's primitive does not differentiate it again);
    * `contractions`: the ones it accepts (None: all the engine accepts);
    * `float16`: its α-gradient is first order, so it runs under float16 loss scaling;
    * `differentiates_optimizer`: it differentiates the lower optimizer's real step (`bilevel.diffopt`), so an
      optimizer that cannot be differentiated is refused when the trainer is built.
    A module, so state it keeps (the naive baseline's moving statistics) is saved with the trainer.
    """

    name: ClassVar[str]
    uses_weighter: ClassVar[bool] = True
    asks: ClassVar[str | None] = None
    frees_forward_graph: ClassVar[bool] = False
    contractions: ClassVar[tuple[str, ...] | None] = None
    float16: ClassVar[bool] = False
    differentiates_optimizer: ClassVar[bool] = False

    def __init__(self, cfg: BilevelConfig) -> None:
        super().__init__()  # the α-gradient reads the step's config (`sc.cfg`), which callers may swap per step

    def weights(self, problem: BilevelProblem, batch: Any, ctx: Any, x: Tensor, weighter: nn.Module | None,
                shape: torch.Size) -> Tensor:
        """w for the forward pass: N_α(x) with its graph to α."""
        assert weighter is not None
        return weighter(x)

    def alpha_grad(self, sc: StepContext, engine: Engine) -> list[Tensor]:
        """The α-gradient of the step, from the primitives `engine` computes."""
        raise ValueError(f"strategy {self.name!r} has no weighter, so there is no α-gradient")

    def prepare(self, sc: StepContext, engine: Engine) -> None:
        """Do ahead what `alpha_grad` needs only ∇θ L_up for (the trainer calls this beside the lower backward,
        after ∇θ L_up: `BilevelConfig.concurrent_upper`). Default: nothing."""


@STRATEGIES.register
class NoWeights(Strategy):
    """Every weight 1: the unweighted baseline (DreamerV2)."""

    name = "none"
    uses_weighter = False
    float16 = True

    def weights(self, problem: BilevelProblem, batch: Any, ctx: Any, x: Tensor, weighter: nn.Module | None,
                shape: torch.Size) -> Tensor:
        return torch.ones(shape, device=x.device)


@STRATEGIES.register
class Naive(Strategy):
    """w = 1 + Norm(per-sample upper loss): weight by the task loss directly, no hypergradient (paper §4)."""

    name = "naive"
    uses_weighter = False
    float16 = True

    def __init__(self, cfg: BilevelConfig) -> None:
        super().__init__(cfg)
        self.norm = MovingNorm(cfg.naive_momentum)

    def weights(self, problem: BilevelProblem, batch: Any, ctx: Any, x: Tensor, weighter: nn.Module | None,
                shape: torch.Size) -> Tensor:
        with torch.no_grad():
            per_sample = problem.upper_losses(batch, ctx).detach()
            self.norm.update(per_sample)
            return 1.0 + self.norm(per_sample)


def approx_coef(cfg: BilevelConfig, lr: float) -> float:
    """c in c · mixed(∇θ L_up): the sign of the exact derivative (or the official code's +), times η or 1."""
    return (-1.0 if cfg.sign == "correct" else 1.0) * (lr if cfg.approx_scale == "lr" else 1.0)


@STRATEGIES.register
class Approx(Strategy):
    """θ' ≈ θ (paper eq. 9): c · mixed(∇θ L_up(θ)) from the forward pass's own upper gradient."""

    name = "approx"
    asks = "mixed"
    frees_forward_graph = True
    float16 = True

    def alpha_grad(self, sc: StepContext, engine: Engine) -> list[Tensor]:
        coef = approx_coef(sc.cfg, sc.lr)
        return [coef * m for m in engine.mixed(sc, sc.upper_grad())]

    def prepare(self, sc: StepContext, engine: Engine) -> None:
        engine.prepare_mixed(sc, sc.upper_grad())


@STRATEGIES.register
class Implicit(Strategy):
    """Implicit function theorem: -mixed(H⁻¹ ∇θ L_up), H⁻¹v by a Neumann series or CG (`cfg.implicit`)."""

    name = "implicit"
    asks = "mixed_inverse"

    def alpha_grad(self, sc: StepContext, engine: Engine) -> list[Tensor]:
        return [-m for m in engine.mixed_inverse(sc, sc.upper_grad())]


@STRATEGIES.register
class Unroll(Strategy):
    """∇α L_up(θ_K): K differentiable copies of the trainer's real step (clip, then the lower optimizer's update)."""

    name = "unroll"
    asks = "unrolled"
    differentiates_optimizer = True
    contractions = ("double_backward",)  # it contracts nothing; the default name keeps configs unambiguous

    def alpha_grad(self, sc: StepContext, engine: Engine) -> list[Tensor]:
        return engine.unrolled(sc)
