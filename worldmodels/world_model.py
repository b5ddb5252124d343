"""DreamerV2 world model M_θ: encoder + RSSM + decoder/reward/discount heads, trained on the weighted ELBO.

Batches are dicts of time-major tensors [T, B, ...]:
    'image'  uint8 [T, B, 64, 64, C] (channel-last)   or   'state' float [T, B, D]
    'action' float [T, B, A]  (one-hot if discrete; action[t] produced obs t, zeros at episode start)
    'reward' [T, B], 'is_first' bool [T, B], 'is_terminal' bool [T, B]
The float dtype of 'action' sets the compute dtype (float32, or float64 for finite-difference checks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from bilevel.precision import f32
from worldmodels.elbo import kl_balance_terms, weighted_elbo_loss
from worldmodels.nets import (
    ELU,
    MLP,
    ConvDecoder,
    ConvEncoder,
    bernoulli_log_prob,
    dreamer_init,
    unit_normal_log_prob,
)
from worldmodels.onehot import OneHot
from worldmodels.rssm import RSSM, State


class Pass(NamedTuple):
    """What one pass of the world model over a [T, B] batch gives: states [T, B, ...], embeddings [T, B, E] and
    the per-step ELBO terms {name: [T, B]} (None for a pass without the heads)."""

    post: State
    prior: State
    embed: Tensor
    terms: dict[str, Tensor] | None


class WorldModel(nn.Module):
    """Config-agnostic: plain kwargs with DreamerV2/TEMPO-DMC defaults (Atari: deter=600, discrete=32,
    kl_scale=0.1, discount_scale=5.0, discount_head=True)."""

    # Submodules the task (upper) loss V(s_post) - V(s_prior) is differentiated through.
    upper_modules = ["encoder", "rssm"]

    def __init__(self, obs_space: dict[str, tuple[int, ...]], action_dim: int,
                 discrete_actions: bool = False, *, deter: int = 200, stoch: int = 32, discrete: int = 0,
                 hidden: int = 200, min_std: float = 0.1, unimix: float = 0.0, std_act: str = "sigmoid2",
                 depth: int = 48,
                 units: int = 400, layers: int = 4,
                 discount_head: bool = False, kl_balance: float = 0.8, kl_free: float = 1.0,
                 kl_scale: float = 1.0, reward_scale: float = 1.0, discount_scale: float = 1.0,
                 discount: float = 0.99, act: type[nn.Module] = ELU):
        super().__init__()
        keys = [k for k in ("image", "state") if k in obs_space]
        if len(keys) != 1:
            raise ValueError(f"obs_space needs exactly one of 'image' or 'state', got {list(obs_space)}")
        self.obs_key = keys[0]
        self.obs_shape = tuple(obs_space[self.obs_key])
        self.action_dim, self.discrete_actions = action_dim, discrete_actions
        self.kl_balance, self.kl_free, self.kl_scale = kl_balance, kl_free, kl_scale
        self.loss_scales = {"reward": reward_scale, "discount": discount_scale}
        self.gamma = discount  # γ of the discount head's soft label (DreamerV2's `discount`, the agent's gamma)

        if self.obs_key == "image":
            if len(self.obs_shape) != 3 or self.obs_shape[:2] != (64, 64):
                raise ValueError(f"image obs must be (64, 64, C), got {self.obs_shape}")
            channels = self.obs_shape[-1]
            self.encoder: nn.Module = ConvEncoder(channels, depth, act=act)
        else:
            if len(self.obs_shape) != 1:
                raise ValueError(f"state obs must be (D,), got {self.obs_shape}")
            self.encoder = MLP(self.obs_shape[0], None, layers, units, act)
        self.rssm = RSSM(action_dim, self.encoder.out_dim, deter, stoch, discrete, hidden, min_std, unimix, std_act,
                         act)
        feat = self.rssm.feat_dim
        if self.obs_key == "image":
            self.decoder: nn.Module = ConvDecoder(feat, channels, depth, act=act)
        else:
            self.decoder = MLP(feat, self.obs_shape[0], layers, units, act)
        self.reward_head = MLP(feat, 1, layers, units, act)
        self.discount_head = MLP(feat, 1, layers, units, act) if discount_head else None
        for m in (self.encoder, self.decoder, self.reward_head, self.discount_head):
            if m is not None:
                dreamer_init(m)

    # -- inference --------------------------------------------------------------------------------------
    def preprocess(self, obs: Tensor, dtype: torch.dtype) -> Tensor:
        """uint8 [..., 64, 64, C] -> float [..., C, 64, 64] in [-0.5, 0.5]; vectors just cast."""
        if self.obs_key == "image":
            return (obs.to(dtype) / 255.0 - 0.5).movedim(-1, -3)
        return obs.to(dtype)

    def observe(self, batch: dict[str, Tensor], state: State | None = None) -> tuple[State, State, Tensor]:
        """(post, prior, embed) for a [T, B] batch; post/prior dicts of [T, B, ...], embed [T, B, E]."""
        action = batch["action"]
        embed = self.encoder(self.preprocess(batch[self.obs_key], action.dtype))  # [T, B, E]
        post, prior = self.rssm.observe(embed, action, batch["is_first"], state)
        return post, prior, embed

    def elbo_terms(self, batch: dict[str, Tensor], post: State, prior: State,
                   capture: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Per-step negative log-likelihoods and KL-balancing terms, each [T, B] (heads read feat(post)).

        With `capture` (a dict) and autograd on, the backward of any loss of these terms fills it with, per
        head k: 'dfeat/k' = ∂loss/∂feat through head k only [T, B, F] and 'dterm/k' = ∂loss/∂term_k [T, B];
        plus 'feat' [T, B, F]. Heads are per-sample, so dfeat/dterm is each sample's own ∂term/∂feat
        (`TempoProblem.loss_deltas` linearises the heads with it instead of re-running them).
        """
        feat = self.rssm.feat(post)  # [T, B, F]
        dtype = feat.dtype
        track = capture is not None and feat.requires_grad

        def head_input(k: str) -> Tensor:  # a separate view per head, so its hook sees only that head
            if not track:
                return feat
            x = feat.view_as(feat)
            x.register_hook(lambda g: capture.__setitem__(f"dfeat/{k}", g))
            return x

        target = self.preprocess(batch[self.obs_key], dtype)
        event = 3 if self.obs_key == "image" else 1
        # Heads may run under autocast; their outputs enter the log-likelihoods in float32 (`f32`).
        terms = {self.obs_key: -unit_normal_log_prob(f32(self.decoder(head_input(self.obs_key))), target, event)}
        reward = batch["reward"].to(dtype)
        terms["reward"] = -unit_normal_log_prob(f32(self.reward_head(head_input("reward")).squeeze(-1)), reward, 0)
        if self.discount_head is not None:
            # DreamerV2's soft label: the head learns the discount gamma * (1 - is_terminal) itself
            target = self.gamma * (1.0 - batch["is_terminal"].to(dtype))
            logits = f32(self.discount_head(head_input("discount")).squeeze(-1))
            terms["discount"] = -bernoulli_log_prob(logits, target)
        if track:
            capture["feat"] = feat.detach()
            for k, term in terms.items():
                term.register_hook(lambda g, k=k: capture.__setitem__(f"dterm/{k}", g))
        terms["kl_lhs"], terms["kl_rhs"], terms["kl"] = kl_balance_terms(post, prior, self.rssm)
        return terms

    def loss(self, batch: dict[str, Tensor], w: Tensor | None = None, capture: dict[str, Tensor] | None = None
             ) -> tuple[Tensor, dict[str, Tensor], State, State, dict[str, Tensor]]:
        """(loss, terms, post, prior, metrics): one pass + weighted_elbo_loss(w [T, B] | None)."""
        out = self(batch, capture)
        loss, metrics = weighted_elbo_loss(out.terms, w, self.kl_balance, self.kl_free, self.kl_scale,
                                           self.loss_scales)
        return loss, out.terms, out.post, out.prior, metrics

    def forward(self, batch: dict[str, Tensor], capture: dict[str, Tensor] | None = None,
                heads: bool = True) -> Pass:
        """One pass over a [T, B] batch: `observe`, then (with `heads`) the per-step ELBO terms. The forward of the
        module, so that `torch.func.functional_call(wm, params, (batch,))` runs it at any parameters; the weighting
        of the terms is the caller's (`loss`, or TEMPO's `lower_objective`)."""
        post, prior, embed = self.observe(batch)
        terms = self.elbo_terms(batch, post, prior, capture) if heads else None
        return Pass(post, prior, embed, terms)

    @torch.no_grad()
    def filter(self, obs: Tensor, state: State, prev_action: Tensor, is_first: Tensor) -> State:
        """One step of acting: the posterior [N, ...] after the raw observation `obs` [N, ...], from the previous
        posterior and action (DreamerV2's policy step, before the actor reads feat(post))."""
        embed = self.encoder(self.preprocess(obs, torch.float32))
        return self.rssm.obs_step(state, prev_action, embed, is_first)[0]

    # -- protocol for the agent ---------------------------------------------------------------------------
    def feat(self, state: State) -> Tensor:
        return self.rssm.feat(state)

    def imagine(self, policy: Callable[[Tensor, OneHot | None], Tensor], start: State, horizon: int,
                detach_policy_input: bool = True, noise: Sequence[Tensor] | None = None) -> dict[str, Any]:
        """See RSSM.imagine: {'feat': [H+1, N, F], 'action': [H, N, A]} (+ 'onehot' for categorical latents)."""
        return self.rssm.imagine(policy, start, horizon, detach_policy_input, noise)

    def noise(self, like: Tensor) -> Tensor:
        """The random numbers one imagination step from the states `like` ([N, ...], e.g. their h) draws."""
        return self.rssm.noise(like)

    def reward(self, feat: Tensor, onehot: OneHot | None = None) -> Tensor:
        """Mean predicted reward [...] from feat [..., F] (float32)."""
        return f32(self.reward_head(feat, onehot).squeeze(-1))

    def discount(self, feat: Tensor, onehot: OneHot | None = None) -> Tensor | None:
        """Predicted discount [...]: the head's mean, trained on γ·(1 - is_terminal) (None without a head)."""
        if self.discount_head is None:
            return None
        return torch.sigmoid(f32(self.discount_head(feat, onehot).squeeze(-1)))
