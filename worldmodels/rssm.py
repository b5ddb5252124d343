"""Recurrent State-Space Model (TEMPO eq. 1, DreamerV2):

    h_t = f(h_{t-1}, s_{t-1}, a_{t-1})      deterministic state (norm-GRU)
    s_t ~ p(s_t | h_t)                      prior        (img_step)
    s_t ~ q(s_t | h_t, o_t)                 posterior    (obs_step)

A state is a plain dict of tensors so it can be stacked, flattened and detached with dict comprehensions:
    Gaussian    {'h': [..., deter], 's': [..., stoch], 'mean': [..., stoch], 'std': [..., stoch]}
    categorical {'h': [..., deter], 's': [..., stoch*discrete], 'logits': [..., stoch, discrete]}
Sampling is reparameterised (Gaussian) or straight-through (categorical), so every state depends on θ
differentiably - the task loss V(s_post) - V(s_prior) is differentiated through it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal, OneHotCategoricalStraightThrough

from bilevel.precision import f32
from worldmodels.nets import ELU, GRUCell, dreamer_init, sg
from worldmodels.onehot import OneHot

State = dict[str, Tensor]

# Gaussian std from the raw output x (+ min_std). DreamerV2's configs use 'sigmoid2', which bounds the std to
# (min_std, 2 + min_std) and gives std = 1 + min_std at x = 0.
STD_ACTS = {"sigmoid2": lambda x: 2 * torch.sigmoid(x / 2), "softplus": F.softplus, "sigmoid": torch.sigmoid}


def stack_states(states: list[State]) -> State:
    """[{k: [B, ...]}] * T -> {k: [T, B, ...]} (stacking, never writing into preallocated tensors)."""
    return {k: torch.stack([s[k] for s in states], 0) for k in states[0]}


class RSSM(nn.Module):
    """DreamerV2 RSSM with Gaussian (`discrete=0`) or categorical (`discrete>0`) stochastic latents."""

    def __init__(self, action_dim: int, embed_dim: int, deter: int = 200, stoch: int = 32, discrete: int = 0,
                 hidden: int = 200, min_std: float = 0.1, unimix: float = 0.0, std_act: str = "sigmoid2",
                 act: type[nn.Module] = ELU):
        super().__init__()
        if std_act not in STD_ACTS:
            raise ValueError(f"unknown std_act {std_act!r}; accepted: {list(STD_ACTS)}")
        self.std_act = std_act
        self.action_dim, self.embed_dim = action_dim, embed_dim
        self.deter, self.stoch, self.discrete = deter, stoch, discrete
        self.min_std, self.unimix = min_std, unimix
        self.stoch_flat = stoch * discrete if discrete else stoch
        self.feat_dim = deter + self.stoch_flat
        stats = stoch * discrete if discrete else 2 * stoch
        self.img_in = nn.Sequential(nn.Linear(self.stoch_flat + action_dim, hidden), act())
        self.cell = GRUCell(hidden, deter)
        self.img_out = nn.Sequential(nn.Linear(deter, hidden), act(), nn.Linear(hidden, stats))
        self.obs_out = nn.Sequential(nn.Linear(deter + embed_dim, hidden), act(), nn.Linear(hidden, stats))
        # `imagine` runs img_step through torch.compile (`compile_imagination`); observe stays eager, since the
        # bilevel world-model step differentiates it twice and through torch.func.
        self.compile_imagination = False
        dreamer_init(self)

    @property
    def state_keys(self) -> tuple[str, ...]:
        return ("h", "s", "logits") if self.discrete else ("h", "s", "mean", "std")

    def initial(self, batch_size: int) -> State:
        """All-zeros state (DreamerV2 resets to zeros, not to a learned state)."""
        w = self.img_in[0].weight  # dtype/device follow the (possibly functional_call'ed) parameters
        z = lambda *shape: torch.zeros(batch_size, *shape, dtype=w.dtype, device=w.device)  # noqa: E731
        if self.discrete:
            return {"h": z(self.deter), "s": z(self.stoch_flat), "logits": z(self.stoch, self.discrete)}
        return {"h": z(self.deter), "s": z(self.stoch), "mean": z(self.stoch), "std": z(self.stoch)}

    def _stats(self, x: Tensor) -> State:
        x = f32(x)  # distribution parameters are a float32 island under autocast
        if self.discrete:
            logits = x.reshape(*x.shape[:-1], self.stoch, self.discrete)  # [B, stoch, discrete]
            if self.unimix > 0:  # DreamerV3's uniform mixture (DreamerV2 has none): probabilities >= unimix/K
                probs = (1 - self.unimix) * torch.softmax(logits, -1) + self.unimix / self.discrete
                logits = torch.log(probs)
            return {"logits": logits}
        mean, std = x.chunk(2, -1)
        return {"mean": mean, "std": STD_ACTS[self.std_act](std) + self.min_std}

    def noise(self, like: Tensor) -> Tensor:
        """The random numbers one `_sample` of the states `like` ([B, ...], e.g. their h) draws, drawn as it would
        draw them: uniform (categorical) or standard normal (Gaussian) [B, stoch], in the dtype of the distribution
        parameters (the float32 island; float64 for float64 models)."""
        kw = {"dtype": torch.float64 if like.dtype == torch.float64 else torch.float32, "device": like.device}
        return (torch.rand if self.discrete else torch.randn)(like.shape[0], self.stoch, **kw)

    def _sample(self, stats: State, noise: Tensor | None = None) -> Tensor:
        """A sample from the distribution `stats` describes, from `noise` (`self.noise`) or freshly drawn."""
        if self.discrete:
            logits = stats["logits"]  # [B, stoch, discrete]
            probs = torch.softmax(logits, -1)
            # Inverse-CDF sample, one uniform per variable: class k where cdf_{k-1} <= u < cdf_k (a zero-probability
            # class never), the last class where rounding left cdf_K below u. Cheaper than Gumbel-max, which draws a
            # uniform, takes two logs and an argmax per class; it runs under torch.func as well.
            u = torch.rand_like(logits[..., 0]) if noise is None else noise  # [B, stoch]
            idx = (sg(probs).cumsum(-1) <= u[..., None]).sum(-1).clamp(max=self.discrete - 1)
            onehot = F.one_hot(idx, self.discrete).to(logits.dtype)
            s = onehot + (probs - sg(probs))  # straight-through: value exactly one-hot, gradient of probs
            return s.reshape(*s.shape[:-2], self.stoch_flat)
        return stats["mean"] + stats["std"] * (torch.randn_like(stats["mean"]) if noise is None else noise)

    def img_step(self, state: State, action: Tensor, noise: Tensor | None = None) -> State:
        """Prior: h_t = f(h_{t-1}, s_{t-1}, a_{t-1}), s_t ~ p(s_t | h_t).  [B, ...], [B, A] -> [B, ...]"""
        x = self.img_in(torch.cat([state["s"], action], -1))  # [B, hidden]
        h = self.cell(x, state["h"])  # [B, deter]
        stats = self._stats(self.img_out(h))
        return {"h": h, "s": self._sample(stats, noise), **stats}

    def obs_step(self, state: State, action: Tensor, embed: Tensor, is_first: Tensor) -> tuple[State, State]:
        """Posterior q(s_t | h_t, embed_t) and prior p(s_t | h_t); state and action zeroed where is_first."""
        keep = (1.0 - is_first.to(action.dtype))[:, None]  # [B, 1]
        return self._obs_step(state, action * keep, embed, keep)

    def _obs_step(self, state: State, action: Tensor, embed: Tensor, keep: Tensor) -> tuple[State, State]:
        """`obs_step` with the action already masked and `keep` [B, 1] = 1 - is_first: `observe` masks a whole
        sequence's actions at once. Only h and s of the previous state enter the step, so only they are masked."""
        prior = self.img_step({"h": state["h"] * keep, "s": state["s"] * keep}, action)
        stats = self._stats(self.obs_out(torch.cat([prior["h"], embed], -1)))
        post = {"h": prior["h"], "s": self._sample(stats), **stats}
        return post, prior

    def observe(self, embed: Tensor, action: Tensor, is_first: Tensor,
                state: State | None = None) -> tuple[State, State]:
        """Filter a sequence.  embed [T, B, E], action [T, B, A] (action[t] led to obs t), is_first [T, B].

        Returns (post, prior), dicts of [T, B, ...] tensors.
        """
        if state is None:
            state = self.initial(embed.shape[1])
        keep = (1.0 - is_first.to(action.dtype))[..., None]  # [T, B, 1]
        action = action * keep  # the actions into an episode's first step are zeroed, as its state is
        posts, priors = [], []
        for t in range(embed.shape[0]):
            post, prior = self._obs_step(state, action[t], embed[t], keep[t])
            posts.append(post)
            priors.append(prior)
            state = post
        return stack_states(posts), stack_states(priors)

    def imagine(self, policy: Callable[[Tensor, OneHot | None], Tensor], start: State, horizon: int,
                detach_policy_input: bool = True, noise: Sequence[Tensor] | None = None) -> dict[str, Any]:
        """Roll the prior `horizon` steps from `start` ([N, ...]) under `policy(feat [N, F], onehot) -> [N, A]`.

        Returns {'feat': [H+1, N, F], 'action': [H, N, A]}: feat[0] is the start state and action[i] the
        action taken at feat[i]; none is sampled at the last state (it would lead nowhere). Actions enter
        img_step as produced and states are not detached, so actor gradients can flow through the dynamics; as
        in DreamerV2 the policy's *input* is detached by default. feat = cat(h, s) holds the whole state the
        agent needs: no other state key is stacked.

        With categorical latents s is exactly one-hot (a straight-through sample; `start` must hold such samples,
        as a posterior does), and the result also has 'onehot': a `OneHot` [H+1, N, G] over feat, which the
        policy receives per step too, so heads can skip the zeros of their first layer (`worldmodels.onehot`).

        `noise`: each step's random numbers (`self.noise`), drawn beforehand; by default drawn here, step by step.
        """
        def hot(st: State) -> OneHot | None:
            return OneHot.of(st["s"], self.deter, self.discrete) if self.discrete else None

        # The step's noise is drawn here, in the order img_step would draw it, so that a compiled step is a
        # pure function (inductor would draw its own random numbers) and both give the same rollout.
        # Within a compiled caller (the actor-critic's compiled losses) the step is traced with it.
        compiled = self.compile_imagination and not torch.compiler.is_compiling()
        step = _compiled(type(self).img_step) if compiled else type(self).img_step
        state = {k: start[k] for k in self.state_keys}
        feats, actions, hots = [self.feat(state)], [], [hot(state)]
        for i in range(horizon):
            actions.append(policy(feats[-1].detach() if detach_policy_input else feats[-1], hots[-1]))
            state = step(self, state, actions[-1], self.noise(state["h"]) if noise is None else noise[i])
            feats.append(self.feat(state))
            hots.append(hot(state))
        seq: dict[str, Any] = {"feat": torch.stack(feats, 0), "action": torch.stack(actions, 0)}
        if self.discrete:  # every entry is a OneHot then
            seq["onehot"] = OneHot(self.deter, torch.stack([h.idx for h in hots], 0))  # type: ignore[union-attr]
        return seq

    def feat(self, state: State) -> Tensor:
        """cat(h, s): [..., deter + stoch_flat] - the input of every head, the critic and the weighter."""
        return torch.cat([state["h"], state["s"]], -1)

    def dist(self, state: State) -> Distribution:
        """p or q over s as a torch.distributions object (event dim = the stochastic dims)."""
        if self.discrete:
            cat = OneHotCategoricalStraightThrough(logits=state["logits"], validate_args=False)
            return Independent(cat, 1)
        return Independent(Normal(state["mean"], state["std"], validate_args=False), 1)


@functools.cache
def _compiled(img_step: Callable[..., State]) -> Callable[..., State]:
    """An RSSM class's img_step through torch.compile, made once per process (dynamo guards on the module it
    is called with, so one compiled function serves every instance; a new shape or dtype recompiles)."""
    return torch.compile(img_step, dynamic=False)
