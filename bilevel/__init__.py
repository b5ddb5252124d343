"""Generic bilevel sample reweighting: a model θ trained on weighted per-sample losses, a weighter α
trained by a hypergradient of a task (upper) loss. Knows nothing about world models.

Extension points (one registered class each, tables in `bilevel.registry`): `CONTRACTIONS` / `Contraction`,
`STRATEGIES` / `Strategy`, `ENGINES` / `Engine`. Importing the package registers the built-in ones: the
implementations are imported here before the config, whose field descriptions list the registered names.
"""

from bilevel.contractions import CONTRACTIONS, Contraction
from bilevel.engines import ENGINES, Engine
from bilevel.strategies import STRATEGIES, Strategy

from bilevel.config import BilevelConfig, WeighterConfig  # isort: skip (after the registrations above)
from bilevel.norm import MovingNorm
from bilevel.problem import BilevelProblem, Params
from bilevel.trainer import BilevelTrainer, StepResult
from bilevel.weighter import MetaWeighter

__all__ = ["CONTRACTIONS", "ENGINES", "STRATEGIES", "BilevelConfig", "BilevelProblem", "BilevelTrainer",
           "Contraction", "Engine", "MetaWeighter", "MovingNorm", "Params", "StepResult", "Strategy",
           "WeighterConfig"]
