"""DreamerV2 world model (RSSM + heads) with the per-step weighted ELBO used by TEMPO's lower level."""

from worldmodels.elbo import KL_KEYS, kl_balance_terms, kl_divergence, weighted_elbo_loss
from worldmodels.nets import MLP, ConvDecoder, ConvEncoder, GRUCell, bernoulli_log_prob, unit_normal_log_prob
from worldmodels.rssm import RSSM, State, stack_states
from worldmodels.tempo_problem import TempoProblem
from worldmodels.world_model import WorldModel

__all__ = ["KL_KEYS", "MLP", "RSSM", "ConvDecoder", "ConvEncoder", "GRUCell", "State", "TempoProblem", "WorldModel",
           "bernoulli_log_prob", "kl_balance_terms", "kl_divergence", "stack_states", "unit_normal_log_prob",
           "weighted_elbo_loss"]
