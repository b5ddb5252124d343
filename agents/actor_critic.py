"""DreamerV2 actor-critic learned purely in imagination (Hafner et al., 2020), as used unchanged by TEMPO.

The agent never sees the world model's internals: it programs against the small `LatentModel` protocol
(imagine / reward / discount / feat), so it never imports the world model; all it takes from `worldmodels`
is the layer builder `worldmodels.nets.MLP` and `worldmodels.onehot.OneHot` (how a model says that its features
end in an exactly one-hot block), and `worldmodels` never imports `agents`.

Time alignment (DreamerV2's, kept on purpose because TEMPO leaves the agent untouched):

    Actions:      a0    a1    a2    .. a_{H-1}   (a_t is taken at z_t and leads to z_{t+1})
    States:       z0 -> z1 -> z2 -> .. -> z_H     (z0 = posterior start state from replay)
    Rewards:      r0    r1    r2    .. r_H       (r_t = reward head at z_t: the reward of *arriving* at z_t)
    Discounts:    d0    d1    d2    .. d_H       (d_t = gamma * P(episode continues after z_t))
    Values:       v0    v1    v2    .. v_H       (slow critic at z_t)
    Targets:      R0    R1    R2    .. R_{H-1}   (lambda-returns, R_H := v_H is the bootstrap)
    Weights:      1     d0   d0d1   ..           (cumprod of the *previous* discounts: is z_t still reachable)

So a state's value includes the reward that came with it, V(z_t) = r_t + d_t V(z_{t+1}). The critic regresses
v_0..v_{H-1} to R_0..R_{H-1}; the actor is scored on R_1..R_{H-1} for the decisions a_0..a_{H-2} made at
z_0..z_{H-2} (the last state only bootstraps and its action leads nowhere).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import typing
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Normal, OneHotCategoricalStraightThrough
from torch.func import functional_call

from agents import schedules
from bilevel.precision import Precision, f32
from bilevel.updater import Part, Updater, load_keeping_decay, loss_scaler, make_optimizer
from worldmodels.nets import ELU, MLP, dreamer_init
from worldmodels.onehot import OneHot

ActorGrad = Literal["dynamics", "reinforce", "both", "auto"]
PolicyMode = Literal["explore", "eval", "random"]
TruncGrad = Literal["exact", "tf"]


@runtime_checkable
class LatentModel(Protocol):
    """What the agent needs from a world model (implemented by `worldmodels.WorldModel`)."""

    def imagine(self, policy: Callable[[Tensor, OneHot | None], Tensor], start: dict[str, Tensor],
                horizon: int, detach_policy_input: bool = True,
                noise: Sequence[Tensor] | None = None) -> dict[str, Any]:
        """Roll the prior from `start` ([N, ...]); {'feat': [H+1, N, F], 'action': [H, N, A]}, and optionally
        'onehot': a `OneHot` [H+1, N, G] when feat's last block is exactly one-hot (categorical latents).

        Index 0 is the start state and action[i] is the action taken at feat[i] (none at the last state).
        policy(feat [N, F], onehot [N, G] | None) -> action [N, A]. `noise[i]`: step i's random numbers (`noise`),
        drawn beforehand; None draws them during the rollout.
        """
        ...

    def noise(self, like: Tensor) -> Tensor:
        """The random numbers one imagination step from the states `like` ([N, ...]) draws, drawn as it would."""
        ...

    def reward(self, feat: Tensor, onehot: OneHot | None = None) -> Tensor:  # [..., F] -> [...] mean reward
        ...

    def discount(self, feat: Tensor, onehot: OneHot | None = None) -> Tensor | None:  # [...] discount or None
        ...

    def feat(self, state: dict[str, Tensor]) -> Tensor:  # state -> [..., F]
        ...


@contextlib.contextmanager
def frozen(model: Any) -> Iterator[None]:
    """Within the block the module's trainable parameters do not require grad (restored on exit, also after
    an exception). A plain object that is not an nn.Module is left as it is."""
    params = [p for p in model.parameters() if p.requires_grad] if isinstance(model, nn.Module) else []
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@functools.cache
def _compiled_losses() -> Callable[..., tuple[Tensor, Tensor, dict[str, Tensor]]]:
    """`ActorCritic.losses` through torch.compile, made once per process (dynamo guards on the modules it is called
    with; a new shape or dtype recompiles)."""
    return torch.compile(ActorCritic.losses, dynamic=False)


def cut(onehot: OneHot | None, stop: int) -> OneHot | None:
    """onehot[:stop] along the horizon, as feat[:stop] (None stays None)."""
    return None if onehot is None else onehot[:stop]


def lambda_return(reward: Tensor, value: Tensor, discount: Tensor | float, lambda_: float,
                  bootstrap: Tensor | None = None) -> Tensor:
    """TD(lambda) targets along the leading (time) axis, DreamerV2's recursion.

        R_t = r_t + d_t * ((1 - lambda) * v_{t+1} + lambda * R_{t+1}),   R_H = v_H

    reward [H, N], discount [H, N] (or a float), value [H+1, N] (v_0..v_H), or value [H, N] (v_0..v_{H-1})
    plus bootstrap [N] (v_H). r_t and d_t belong to the transition out of step t, v_t to step t, so v_0 is
    never used (it is the quantity being estimated). lambda=0 gives one-step TD targets r_t + d_t v_{t+1};
    lambda=1 the discounted Monte Carlo return over the horizon plus the discounted bootstrap v_H.
    Returns [H, N].
    """
    horizon = reward.shape[0]
    if bootstrap is None:
        if value.shape[0] != horizon + 1:
            raise ValueError(f"value needs H+1={horizon + 1} steps without a bootstrap, got {value.shape[0]}")
        value, bootstrap = value[:-1], value[-1]
    elif value.shape[0] != horizon:
        raise ValueError(f"value needs H={horizon} steps with a bootstrap, got {value.shape[0]}")
    if not isinstance(discount, Tensor):
        discount = torch.full_like(reward, float(discount))
    next_value = torch.cat([value[1:], bootstrap[None]], 0)  # [H, N] v_{t+1}
    inputs = reward + discount * (1 - lambda_) * next_value  # [H, N]
    ret, out = bootstrap, []
    for t in reversed(range(horizon)):
        ret = inputs[t] + discount[t] * lambda_ * ret
        out.append(ret)
    return torch.stack(out[::-1], 0)


class TruncNormal:
    """Normal(mean, std) truncated to [low, high] per action dim (an `Independent(..., 1)`: log_prob and
    entropy sum over the last axis), like DreamerV2's `TruncNormalDist`.

    rsample uses the inverse CDF, x = mean + std * ndtri(U(Phi(alpha), Phi(beta))). The uniform is kept in
    [1e-6, 1 - 1e-6] so ndtri stays finite and its gradient bounded (this drops < 1e-6 of the mass, beyond 4.75
    std). As in DreamerV2, samples are then clipped to [low + 1e-6, high - 1e-6] with a straight-through gradient.

    `grad` is the sample's gradient with respect to mean and std. 'exact': the inverse CDF's, i.e. the implicit
    reparameterisation gradient with the bounds held fixed (a sample near a bound barely moves with the mean).
    'tf': TensorFlow's, which the references train with (TFP's TruncatedNormal samples with
    `stateless_parameterized_truncated_normal`, whose registered gradient is dx/dmean = 1 and dx/dstd =
    (x - mean) / std, the untruncated mean + std * z's, in TF 2.4.2, 2.6.0 and 2.15.1): the same samples, another
    direction for the actor's dynamics gradient (docs/FIDELITY.md).
    """

    def __init__(self, mean: Tensor, std: Tensor, low: float = -1.0, high: float = 1.0, clip: float = 1e-6,
                 grad: TruncGrad = "exact"):
        accepted = list(typing.get_args(TruncGrad))
        if grad not in accepted:
            raise ValueError(f"unknown truncated-normal gradient {grad!r}; accepted: {accepted}")
        self.mean, self.std, self.low, self.high, self.clip, self.grad = mean, std, low, high, clip, grad
        self.alpha = (low - mean) / std
        self.beta = (high - mean) / std
        self.cdf_low, self.cdf_high = torch.special.ndtr(self.alpha), torch.special.ndtr(self.beta)
        self.z = (self.cdf_high - self.cdf_low).clamp_min(1e-8)  # normaliser, >= ~0.3 for |mean| < 1

    @property
    def mode(self) -> Tensor:
        return self.mean.clamp(self.low, self.high)

    def rsample(self, u: Tensor | None = None) -> Tensor:
        """A reparameterised sample from uniforms `u` [..., A] (drawn here by default, as `torch.rand_like(mean)`)."""
        u = torch.rand_like(self.mean) if u is None else u
        u = (self.cdf_low + u * (self.cdf_high - self.cdf_low)).clamp(1e-6, 1 - 1e-6)
        x = self.mean + self.std * torch.special.ndtri(u)
        if self.grad == "tf":  # the same value; d/dmean 1 and d/dstd (x - mean) / std
            eps = ((x - self.mean) / self.std).detach()
            x = x.detach() + (self.mean - self.mean.detach()) + (self.std - self.std.detach()) * eps
        clipped = x.clamp(self.low + self.clip, self.high - self.clip)
        return x + (clipped - x).detach()

    def sample(self) -> Tensor:
        with torch.no_grad():
            return self.rsample()

    def log_prob(self, x: Tensor) -> Tensor:  # [..., A] -> [...]
        y = (x - self.mean) / self.std
        logp = -0.5 * y**2 - 0.5 * math.log(2 * math.pi) - self.std.log() - self.z.log()
        return logp.sum(-1)

    def entropy(self) -> Tensor:  # [...]
        def pdf(v: Tensor) -> Tensor:
            return torch.exp(-0.5 * v**2) / math.sqrt(2 * math.pi)

        ent = (0.5 * math.log(2 * math.pi * math.e) + self.std.log() + self.z.log()
               + (self.alpha * pdf(self.alpha) - self.beta * pdf(self.beta)) / (2 * self.z))
        return ent.sum(-1)


Dist = TruncNormal | OneHotCategoricalStraightThrough


class Actor(nn.Module):
    """pi(a | feat): MLP -> TruncNormal on [-1, 1] (continuous) or straight-through one-hot (discrete).

    Continuous (DreamerV2 'trunc_normal'): mean = tanh(x), std = 2 sigmoid((x_std + init_std) / 2) + min_std.
    DreamerV2's DistLayer default is init_std = 0, giving an initial std of ~1.1. `trunc_grad`: the sample's
    gradient (`TruncNormal`), 'tf' as the references train.
    Discrete (DreamerV2 'onehot'): rsample() = sample + probs - probs.detach(), so the sampled one-hot can
    carry gradients into the dynamics.
    """

    def __init__(self, feat_dim: int, action_dim: int, discrete: bool, layers: int = 4, units: int = 400,
                 act: type[nn.Module] = ELU, min_std: float = 0.1, init_std: float = 0.0,
                 trunc_grad: TruncGrad = "tf"):
        super().__init__()
        self.discrete, self.action_dim = discrete, action_dim
        self.min_std, self.init_std, self.trunc_grad = min_std, init_std, trunc_grad
        self.net = MLP(feat_dim, action_dim if discrete else 2 * action_dim, layers, units, act)
        dreamer_init(self.net)  # Keras' glorot-uniform kernels and zero biases, as DreamerV2

    def forward(self, feat: Tensor, onehot: OneHot | None = None) -> Dist:  # [..., F] -> dist over [..., A]
        return self.dist(self.net(feat, onehot))

    def dist(self, out: Tensor) -> Dist:
        """The distribution from the network's raw output [..., A or 2A] (a float32 island under autocast)."""
        out = f32(out)
        if self.discrete:
            return OneHotCategoricalStraightThrough(logits=out, validate_args=False)
        mean, std = out.chunk(2, -1)
        std = 2 * torch.sigmoid((std + self.init_std) / 2) + self.min_std
        return TruncNormal(torch.tanh(mean), std, grad=self.trunc_grad)


class Critic(nn.Module):
    """v(feat): MLP -> mean of Normal(mean, 1) (DreamerV2 'mse' head)."""

    def __init__(self, feat_dim: int, layers: int = 4, units: int = 400, act: type[nn.Module] = ELU):
        super().__init__()
        self.net = MLP(feat_dim, 1, layers, units, act)
        dreamer_init(self.net)

    def forward(self, feat: Tensor, onehot: OneHot | None = None) -> Tensor:  # [..., F] -> [...] (float32)
        return f32(self.net(feat, onehot).squeeze(-1))


class ActorCritic(nn.Module):
    """DreamerV2 behaviour learning: actor and critic trained on H-step imagined rollouts of a LatentModel.

    Defaults are the paper's DMC agent (appendix C / DreamerV2 'dmc'). The Atari preset is set by the caller:
    gamma=0.999, actor_lr=4e-5, critic_lr=1e-4, actor_ent=1e-3, actor_grad='reinforce',
    use_discount_head=True (DreamerV2's tanh on Atari rewards is applied to the replay rewards that train the
    reward head, by the caller: `recipes.run.Run.to_torch`).

    Optimisers: Adam(eps) on each of actor and critic, global-norm clipping at `clip`, and DreamerV2's
    decoupled weight decay p <- (1 - weight_decay) * p applied before each Adam step (not scaled by the
    learning rate, unlike torch.optim.AdamW, to match dreamerv2/common/tfutils.py): `bilevel.updater`, the
    mechanism of the world model's step too. Under float16 (`precision`) the losses are scaled; a non-finite
    update is skipped and counted, never applied.

    The actor's gradient comes either from backpropagating the lambda-returns through the learned dynamics
    ('dynamics', DMC) or from REINFORCE with the slow critic as baseline ('reinforce', Atari); 'auto' picks
    dynamics for continuous and reinforce for discrete actions; 'both' mixes them as
    mix * dynamics + (1 - mix) * reinforce with mix = `actor_grad_mix`. As in DreamerV2's `actor_loss`, 'both'
    takes the log-probability of the imagined actions without stopping their gradient ('reinforce' stops it).
    Through the dynamics, a continuous action's gradient reaches the actor by `trunc_grad` ('tf', the references'
    TensorFlow gradient of a truncated-normal sample, or 'exact'; `TruncNormal`).

    `actor_ent` and `actor_grad_mix` are DreamerV2 schedules (`agents.schedules`: a number or e.g.
    'linear(3e-3,3e-4,2.5e6)'), evaluated at the `step` (agent steps) passed to `train_step`.
    """

    def __init__(self, feat_dim: int, action_dim: int, discrete: bool, *, horizon: int = 15,
                 gamma: float = 0.99, lambda_: float = 0.95, actor_lr: float = 8e-5, critic_lr: float = 8e-5,
                 slow_target_every: int = 100, slow_target_fraction: float = 1.0,
                 actor_grad: ActorGrad = "auto", actor_ent: schedules.Schedule = 1e-4,
                 actor_grad_mix: schedules.Schedule = 0.1,
                 use_discount_head: bool = False,
                 layers: int = 4, units: int = 400, act: type[nn.Module] = ELU, min_std: float = 0.1,
                 init_std: float = 0.0, trunc_grad: TruncGrad = "tf", eps: float = 1e-5, clip: float = 100.0,
                 weight_decay: float = 1e-6, expl_noise: float = 0.0, eval_noise: float = 0.0,
                 precision: Precision | None = None):
        super().__init__()
        if actor_grad not in ("dynamics", "reinforce", "both", "auto"):
            raise ValueError(f"actor_grad must be dynamics|reinforce|both|auto, got {actor_grad!r}")
        schedules.parse(actor_ent), schedules.parse(actor_grad_mix)  # bad schedule strings fail here
        if slow_target_every < 1 or not 0 < slow_target_fraction <= 1:
            raise ValueError("need slow_target_every >= 1 and 0 < slow_target_fraction <= 1")
        self.feat_dim, self.action_dim, self.discrete = feat_dim, action_dim, discrete
        self.horizon, self.gamma, self.lambda_ = horizon, gamma, lambda_
        self.actor_grad = ("reinforce" if discrete else "dynamics") if actor_grad == "auto" else actor_grad
        self.actor_ent, self.actor_grad_mix = actor_ent, actor_grad_mix
        self.use_discount_head = use_discount_head
        self.slow_target_every, self.slow_target_fraction = slow_target_every, slow_target_fraction
        self.expl_noise, self.eval_noise = expl_noise, eval_noise

        self.actor = Actor(feat_dim, action_dim, discrete, layers, units, act, min_std, init_std, trunc_grad)
        self.critic = Critic(feat_dim, layers, units, act)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)  # only ever hard/soft-copied
        # Actor and critic step together, or (a non-finite gradient: a diverged model, a float16 overflow) neither.
        self.updater = Updater({
            "actor": Part(make_optimizer(self.actor.parameters(), "adam", actor_lr, eps, weight_decay), clip),
            "critic": Part(make_optimizer(self.critic.parameters(), "adam", critic_lr, eps, weight_decay), clip),
        }, loss_scaler(precision), what="actor-critic updates")
        self.updates = 0  # train_step calls so far; drives the slow-target schedule
        self.compile_losses = False  # `losses` through torch.compile (continuous actions; set from run.compile)

    @property
    def actor_opt(self) -> torch.optim.Optimizer:
        return self.updater.parts["actor"].opt

    @property
    def critic_opt(self) -> torch.optim.Optimizer:
        return self.updater.parts["critic"].opt

    # ---------------------------------------------------------------- acting / values used elsewhere

    @torch.no_grad()
    def policy(self, feat: Tensor, mode: PolicyMode = "explore") -> Tensor:
        """feat [..., F] -> action [..., A]: a sample ('explore'), the distribution's mode ('eval'), or
        uniform ('random', for prefilling). Optional DreamerV2 action noise (expl_noise / eval_noise)."""
        shape = (*feat.shape[:-1], self.action_dim)
        if mode == "random":
            if self.discrete:
                idx = torch.randint(self.action_dim, shape[:-1], device=feat.device)
                return F.one_hot(idx, self.action_dim).to(feat.dtype)
            return torch.rand(shape, device=feat.device, dtype=feat.dtype) * 2 - 1
        dist = self.actor(feat)
        if mode == "eval":
            return self._noise(dist.mode, self.eval_noise)
        if mode == "explore":
            return self._noise(dist.sample(), self.expl_noise)
        raise ValueError(f"mode must be explore|eval|random, got {mode!r}")

    def _noise(self, action: Tensor, amount: float) -> Tensor:
        """DreamerV2 `action_noise`: epsilon-random one-hot (discrete) or clipped Gaussian (continuous)."""
        if amount == 0:
            return action
        if self.discrete:
            idx = torch.randint(self.action_dim, action.shape[:-1], device=action.device)
            rand = F.one_hot(idx, self.action_dim).to(action.dtype)
            pick = torch.rand(action.shape[:-1], device=action.device)[..., None] < amount
            return torch.where(pick, rand, action)
        return (action + amount * torch.randn_like(action)).clamp(-1, 1)

    def value(self, feat: Tensor, slow: bool = True, onehot: OneHot | None = None) -> Tensor:
        """Critic mean v(feat) [...] from feat [..., F], differentiable w.r.t. feat only.

        Used by TEMPO's V-VAML upper loss: gradients flow into `feat` (hence the world model) but the critic
        parameters are detached, so no backward pass through this call ever writes a critic .grad.
        """
        net = self.slow_critic if slow else self.critic
        params = {k: v.detach() for k, v in net.named_parameters()}
        return functional_call(net, params, (feat, onehot))

    # ---------------------------------------------------------------- learning

    def train_step(self, model: LatentModel, start: dict[str, Tensor],
                   is_terminal: Tensor | None = None, step: int = 0) -> dict[str, float]:
        """One actor and one critic update from H-step imaginations starting at every posterior state.

        start: state dict [T, B, ...] (detached here); is_terminal: [T, B] or None; step: the agent-step
        counter the schedules (`actor_ent`, `actor_grad_mix`) are evaluated at. Only the agent's
        parameters receive gradients (via torch.autograd.grad restricted to them): the world model's .grad
        is never touched, although with actor_grad='dynamics' the actor's gradient flows through it.
        With `compile_losses` (`run.compile`) and continuous actions, `losses` runs through torch.compile on
        random numbers drawn beforehand in the rollout's order, so it computes what the eager one does.
        """
        start = {k: v.detach().reshape(-1, *v.shape[2:]) for k, v in start.items()}  # [N, ...]
        ent_scale = schedules.value(self.actor_ent, step)
        mix = schedules.value(self.actor_grad_mix, step) if self.actor_grad == "both" else None
        # The world model's weights get no gradient here: leave them out of the graph (a custom layer such as
        # `onehot_linear` cannot see that autograd.grad below asks for the agent's parameters only).
        with frozen(model):
            if self.compile_losses and not self.discrete:
                # schedule values as tensors: a changing Python float would recompile at every step
                dev = next(iter(start.values())).device
                actor_loss, critic_loss, stats = _compiled_losses()(
                    self, model, start, is_terminal, torch.tensor(ent_scale, device=dev),
                    None if mix is None else torch.tensor(mix, device=dev), self.draw_noise(model, start))
            else:
                actor_loss, critic_loss, stats = self.losses(model, start, is_terminal, ent_scale, mix)
        # Only the agent's parameters are differentiated: the world model's .grad is never written.
        update = self.updater.step(self.updater.gradients_of({
            "actor": (list(self.actor.parameters()), actor_loss),
            "critic": (list(self.critic.parameters()), critic_loss)}))
        if update.finite:
            self._update_slow_target()
        values = {"actor_loss": actor_loss, "critic_loss": critic_loss, **stats}
        return {
            **{k: v.item() for k, v in values.items()},
            "actor_grad_norm": update.norms["actor"], "critic_grad_norm": update.norms["critic"],
            "actor_ent_scale": ent_scale, "skipped_nonfinite": float(not update.finite),
            **({"actor_grad_mix": mix} if mix is not None else {}),
            **({"loss_scale": update.loss_scale} if update.loss_scale is not None else {}),
        }

    def draw_noise(self, model: LatentModel, start: dict[str, Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """The random numbers an imagination from `start` [N, ...] draws, drawn beforehand in its order: per step
        the action sample's uniforms [N, A], then the prior's noise (`model.noise`). Continuous actions only: the
        straight-through one-hot sample of discrete ones draws its own numbers."""
        if self.discrete:
            raise ValueError("draw_noise needs continuous actions: a discrete actor's one-hot sample draws its own "
                             "random numbers")
        like = next(iter(start.values()))  # [N, ...]: any state entry gives N, the device and float64 models
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32  # the distributions' float32 island
        uniforms, prior = [], []
        for _ in range(self.horizon):
            uniforms.append(torch.rand(like.shape[0], self.action_dim, dtype=dtype, device=like.device))
            prior.append(model.noise(like))
        return uniforms, prior

    def losses(self, model: LatentModel, start: dict[str, Tensor], is_terminal: Tensor | None,
               ent_scale: float | Tensor, mix: float | Tensor | None,
               noise: tuple[Sequence[Tensor], Sequence[Tensor]] | None = None) -> tuple[Tensor, Tensor, dict]:
        """The actor's and the critic's loss from H-step imaginations from every state of `start` [N, ...], and
        the statistics `train_step` reports (0-d tensors). `noise`: `draw_noise`'s numbers, or None to draw them
        during the rollout; with them the function is pure, as torch.compile needs it (inductor would draw its own
        random numbers)."""
        # REINFORCE needs no gradient through the rollout: skip building that graph.
        track = self.actor_grad in ("dynamics", "both")
        outs: list[Tensor] = []  # the actor's raw outputs at z_0..z_{H-1}, reused by the actor loss

        def act(feat: Tensor, onehot: OneHot | None) -> Tensor:  # [N, F] -> [N, A]; sample keeps the actor path
            outs.append(self.actor.net(feat.detach(), onehot))
            pi = self.actor.dist(outs[-1])
            return pi.rsample() if noise is None else pi.rsample(noise[0][len(outs) - 1])

        with torch.set_grad_enabled(track):
            seq = model.imagine(act, start, self.horizon, noise=None if noise is None else noise[1])
            feat, hot = seq["feat"], seq.get("onehot")  # [H+1, N, F], OneHot [H+1, N, G] or None
            reward = model.reward(feat, hot)  # [H+1, N]
            disc = self._discount(model, feat, is_terminal, hot)  # [H+1, N]
            value = self.value(feat, slow=True, onehot=hot)  # [H+1, N]
            target = lambda_return(reward[:-1], value, disc[:-1], self.lambda_)  # [H, N]
        # weight_t = prod_{k<t} d_k: probability-weighted discount of reaching z_t at all.
        weight = torch.cumprod(torch.cat([torch.ones_like(disc[:1]), disc[:-1]], 0), 0).detach()  # [H+1, N]

        # Actor: decisions at z_0..z_{H-2}, scored by R_1..R_{H-1}, under the distributions the rollout sampled
        # them from (same inputs, same parameters: no second actor pass), unless it ran without a graph.
        pi = self.actor.dist(torch.stack(outs[:-1])) if track else self.actor(feat[:-2].detach(), cut(hot, -2))
        if self.actor_grad == "dynamics":
            objective = target[1:]  # [H-1, N]
        else:
            advantage = (target[1:] - value[:-2]).detach()
            action = seq["action"][:-1]  # [H-1, N, A]
            objective = pi.log_prob(action.detach() if mix is None else action) * advantage
            if mix is not None:
                objective = mix * target[1:] + (1 - mix) * objective
        ent = pi.entropy()  # [H-1, N]
        actor_loss = -(weight[:-2] * (objective + ent_scale * ent)).mean()

        # Critic: v(z_0..z_{H-1}) -> R_0..R_{H-1} on detached states.
        v = self.critic(feat[:-1].detach(), cut(hot, -1))  # [H, N]
        critic_loss = -(Normal(v, 1.0, validate_args=False).log_prob(target.detach()) * weight[:-1]).mean()
        with torch.no_grad():
            stats = {"actor_ent": ent.mean(), "imag_return": (weight[1:] * reward[1:]).sum(0).mean(),
                     "imag_reward": reward.mean(), "critic_target": target.mean(), "critic_value": v.mean(),
                     "critic_slow": value.mean(), "discount": disc.mean()}
        return actor_loss, critic_loss, stats

    def _discount(self, model: LatentModel, feat: Tensor, is_terminal: Tensor | None,
                  onehot: OneHot | None = None) -> Tensor:
        """d_t [H+1, N]: the discount head's mean, or the constant gamma without a discount head.

        As in DreamerV2 the head learns the soft label gamma * (1 - is_terminal), so its mean is the discount itself;
        the start states' d_0 is replaced by the true gamma * (1 - is_terminal) from replay (without a head,
        DreamerV2 ignores is_terminal).
        """
        disc = model.discount(feat, onehot) if self.use_discount_head else None
        if disc is None:
            return torch.full(feat.shape[:-1], self.gamma, device=feat.device, dtype=feat.dtype)
        if is_terminal is not None:
            first = self.gamma * (1 - is_terminal.reshape(-1).to(disc.dtype))
            disc = torch.cat([first[None], disc[1:]], 0)
        return disc

    @torch.no_grad()
    def _update_slow_target(self) -> None:
        """Copy (mix=1 on the very first update, else slow_target_fraction) every `slow_target_every` updates,
        counting from update 0, after that update's critic step (DreamerV2 `update_slow_target`)."""
        if self.updates % self.slow_target_every == 0:
            mix = 1.0 if self.updates == 0 else self.slow_target_fraction
            for s, d in zip(self.critic.parameters(), self.slow_critic.parameters(), strict=True):
                d.copy_(mix * s + (1 - mix) * d)
        self.updates += 1

    # ---------------------------------------------------------------- checkpoints

    def get_extra_state(self) -> dict[str, Any]:
        """Put the update counter and both optimizer states into `state_dict()` (resumable runs)."""
        return {"updates": self.updates, "actor_opt": self.actor_opt.state_dict(),
                "critic_opt": self.critic_opt.state_dict(), "scaler": self.updater.scaler_state(),
                "skipped": self.updater.skipped}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        load_keeping_decay(self.actor_opt, state["actor_opt"])  # older checkpoints hold Adam without the decay
        load_keeping_decay(self.critic_opt, state["critic_opt"])
        self.updater.load_scaler_state(state.get("scaler"))
        self.updater.skipped = int(state.get("skipped", 0))

    def checkpoint(self) -> dict[str, Any]:
        """Deep copy of state_dict() (networks, slow critic, optimizers, counter): later training won't
        mutate it, unlike torch's state_dict which shares storage. RNG state is the caller's business."""
        return copy.deepcopy(self.state_dict())

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.load_state_dict(ckpt)
