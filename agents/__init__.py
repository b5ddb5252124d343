"""DreamerV2 actor-critic learned in imagination, programmed against the `LatentModel` protocol."""

from agents.actor_critic import Actor, ActorCritic, Critic, LatentModel, TruncNormal, lambda_return

__all__ = ["Actor", "ActorCritic", "Critic", "LatentModel", "TruncNormal", "lambda_return"]
