"""Generic bilevel sample reweighting: a model θ trained on weighted per-sample losses, a weighter α
trained by a hypergradient of a task (upper) loss. Knows nothing about world models."""

from bilevel.config import BilevelConfig, WeighterConfig
from bilevel.norm import MovingNorm
from bilevel.problem import BilevelProblem, Params
from bilevel.trainer import BilevelTrainer, StepResult
from bilevel.weighter import MetaWeighter

__all__ = ["BilevelConfig", "BilevelProblem", "BilevelTrainer", "MetaWeighter", "MovingNorm", "Params",
           "StepResult", "WeighterConfig"]
