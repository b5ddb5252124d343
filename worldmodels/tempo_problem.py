"""TEMPO as a `BilevelProblem`: weighted ELBO below, a task-aware (value) loss above.

    lower:  Σ_t w_t · ELBO_t(θ)              (weights enter every NLL term and both KL-balance terms)
    upper:  e.g. V-VAML  mean_t |V(s_post_t) − V(s_prior_t)|²  through encoder + RSSM only
    w_t  =  N_α( sg[h_t, s_post_t, s_prior_t, V(s_post_t), V(s_prior_t)] )    (paper eq. 5)

Everything comes from ONE pass of the world model (`observe` + `elbo_terms`), which is what lets the
θ'≈θ approximation infer the states once per update.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bilevel import stopgrad
from bilevel.problem import BilevelProblem, Params
from losses.base import FunctionLoss, UpperLoss
from worldmodels.elbo import KL_KEYS, kl_balance_terms, weighted_elbo_loss
from worldmodels.rssm import State
from worldmodels.world_model import WorldModel

INPUT_FLAGS = ("DSV", "SV", "S", "DS", "DV", "D", "V")


def _corr(x: Tensor, y: Tensor) -> Tensor:
    """Pearson correlation of two same-shape tensors over all their entries (nan when either is constant)."""
    return torch.corrcoef(torch.stack([x.reshape(-1).float(), y.reshape(-1).to(x.device).float()]))[0, 1]


@dataclass
class TempoContext:
    """What one pass of the world model left for the weighter, the upper loss and `loss_deltas`."""

    post: State  # [T, B, ...]
    prior: State
    capture: dict[str, Tensor] | None = None  # head gradients for loss_deltas (terms_fd passes only)
    _values: tuple[Tensor, Tensor] | None = None


class TempoProblem(BilevelProblem):
    """Binds a `WorldModel`, an upper loss from `losses/` and a value function (the slow critic)."""

    def __init__(self, world_model: WorldModel, upper: Any, value_fn: Callable[[Tensor], Tensor],
                 inputs: str = "DSV") -> None:
        if inputs not in INPUT_FLAGS:
            raise ValueError(f"unknown weighter inputs {inputs!r}; accepted: {list(INPUT_FLAGS)}")
        self.model = world_model
        self.upper = upper if isinstance(upper, UpperLoss) else FunctionLoss(upper)
        self.value_fn = value_fn
        self.inputs = inputs
        rssm = world_model.rssm
        self.discrete = bool(rssm.discrete)
        self.input_dim = ("D" in inputs) * rssm.deter + ("S" in inputs) * 2 * rssm.stoch_flat + ("V" in inputs) * 2

    # -- lower ---------------------------------------------------------------------------------------
    def lower_losses(self, batch: Mapping[str, Tensor], params: Params) -> tuple[dict[str, Tensor], TempoContext]:
        # A pass that a finite difference will re-evaluate keeps the heads' per-sample gradients (loss_deltas).
        capture = {} if stopgrad.recording() and torch.is_grad_enabled() else None
        out = self.call(params, batch, capture=capture)  # WorldModel.forward
        return out.terms, TempoContext(out.post, out.prior, capture)

    def upper_context(self, batch: Mapping[str, Tensor], params: Params) -> TempoContext:
        """The task loss reads the states only: encoder + RSSM, no heads."""
        out = self.call(params, batch, heads=False)
        return TempoContext(out.post, out.prior)

    def loss_deltas(self, batch: Mapping[str, Tensor], params: Params, ctx: TempoContext,
                    losses: Mapping[str, Tensor], shifted: set[str]) -> dict[str, Tensor]:
        """Δterms for a shift of encoder + RSSM parameters only: re-run inference (encoder + RSSM, the cheap
        part), recompute the KL terms exactly, and take the heads' change to first order,
        Δℓ_k = ⟨∂ℓ_k/∂feat, feat' - feat⟩ per sample, from the gradients the lower backward left in
        `ctx.capture` - instead of re-running the decoder (≈75% of a DMC forward pass). The result is exact
        to first order in the shift, which is all a finite difference keeps."""
        if not self._first_order_heads(ctx, losses, shifted):
            return super().loss_deltas(batch, params, ctx, losses, shifted)  # re-run everything
        return self._deltas(self.upper_context(batch, params), ctx, losses)

    def loss_deltas_from(self, batch: Mapping[str, Tensor], base: TempoContext, params: Params, ctx: TempoContext,
                         losses: Mapping[str, Tensor], shifted: set[str]) -> dict[str, Tensor] | None:
        """`loss_deltas` read from `base`: the upper context's pass is the pass `loss_deltas` re-runs (encoder +
        RSSM, same noise and stop-gradient values), so the same numbers without running it again."""
        return self._deltas(base, ctx, losses) if self._first_order_heads(ctx, losses, shifted) else None

    def _first_order_heads(self, ctx: TempoContext, losses: Mapping[str, Tensor], shifted: set[str]) -> bool:
        """Whether the heads' change can be taken to first order: their gradients were captured (and are usable)
        and only encoder + RSSM parameters move."""
        cap = ctx.capture or {}
        heads = [k for k in losses if k not in KL_KEYS]
        ready = all(f"dfeat/{k}" in cap and f"dterm/{k}" in cap for k in heads)
        return (ready and shifted <= set(self.upper_parameter_names())
                and not any(bool((cap[f"dterm/{k}"] == 0).any()) for k in heads))

    def _deltas(self, shifted: TempoContext, ctx: TempoContext, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Δterms of the pass that left the states of `shifted` [T, B, ...] against the forward pass `ctx`."""
        cap = ctx.capture or {}
        heads = [k for k in losses if k not in KL_KEYS]
        post, prior = ({k: v.detach() for k, v in st.items()} for st in (shifted.post, shifted.prior))
        delta = self.model.rssm.feat(post) - cap["feat"]  # [T, B, F]
        out = {k: ((cap[f"dfeat/{k}"] / cap[f"dterm/{k}"].unsqueeze(-1)) * delta).sum(-1) for k in heads}
        kl = dict(zip(KL_KEYS, kl_balance_terms(post, prior, self.model.rssm), strict=True))
        out.update({k: kl[k] - losses[k].detach() for k in KL_KEYS})
        return {k: out[k] for k in losses}

    def lower_objective(self, losses: Mapping[str, Tensor], w: Tensor) -> Tensor:
        wm = self.model
        return weighted_elbo_loss(dict(losses), w, wm.kl_balance, wm.kl_free, wm.kl_scale, wm.loss_scales)[0]

    # -- weighter ------------------------------------------------------------------------------------
    def _stoch(self, state: State) -> Tensor:
        """The latent's distribution parameters the official weighter reads: the Gaussian mean, or the flattened
        categorical logits (`post['logit']` in the deng-ai-lab code) [T, B, stoch_flat]."""
        if self.discrete:
            return state["logits"].flatten(-2)
        return state["mean"]

    def values(self, ctx: TempoContext) -> tuple[Tensor, Tensor]:
        """(v_post, v_prior) [T, B] as the upper loss normalises them (cached per forward pass; update=False: the
        upper loss itself updates any moving statistics, once per step)."""
        if ctx._values is None:
            post, prior = ctx.post, ctx.prior
            ctx._values = self.upper.values(post["h"], post["s"], prior["s"], self.value_fn, update=False)
        return ctx._values

    def weighter_inputs(self, ctx: TempoContext) -> Tensor:
        parts = []
        if "D" in self.inputs:
            parts.append(ctx.post["h"])
        if "S" in self.inputs:
            parts += [self._stoch(ctx.post), self._stoch(ctx.prior)]
        if "V" in self.inputs:
            v_post, v_prior = self.values(ctx)
            parts += [v_post.unsqueeze(-1), v_prior.unsqueeze(-1)]
        return torch.cat(parts, -1).detach()  # [T, B, F]

    # -- upper ---------------------------------------------------------------------------------------
    def _upper_states(self, ctx: TempoContext) -> tuple[Tensor, Tensor, Tensor]:
        post, prior = ctx.post, ctx.prior
        if self.discrete and self.upper.use_probs:
            probs = lambda st: torch.softmax(st["logits"], -1).flatten(-2)  # noqa: E731
            return post["h"], probs(post), probs(prior)
        return post["h"], post["s"], prior["s"]

    def upper_objective(self, batch: Any, ctx: TempoContext) -> Tensor:
        # a loss of the values the weighter read reuses them, with their graph: no second pair of critic passes
        # (unless the loss must update moving statistics itself, once per step)
        per = None if self.upper.updates_statistics else self.upper.values_loss(*self.values(ctx))
        if per is not None:
            return per.mean()
        return self.upper(*self._upper_states(ctx), self.value_fn)

    def upper_losses(self, batch: Any, ctx: TempoContext) -> Tensor:
        per = self.upper.values_loss(*self.values(ctx))  # from the values the weighter read, where it can
        return per if per is not None else self.upper.per_sample(*self._upper_states(ctx), self.value_fn)

    def step_metrics(self, batch: Mapping[str, Tensor], ctx: TempoContext, losses: Mapping[str, Tensor],
                     w: Tensor) -> dict[str, float]:
        """DreamerV2's world-model diagnostics, unweighted so that TEMPO and DreamerV2 compare: `kl`, `<head>_loss`
        (the per-step negative log-likelihoods: state or image, reward, discount), `prior_ent`, `post_ent`. With
        non-uniform weights, also which steps they favour: Pearson correlations of w with the reward
        (`weight_reward_corr`) and with the step's index in its episode (`weight_phase_corr`), and the mean weight
        at episode starts and at chunk starts (where the RSSM starts from the zero state) over the batch's mean
        (`weight_episode_start`, `weight_chunk_start`), and where each boolean `log_<flag>` of the batch is set
        (`weight_<flag>`, e.g. `weight_distractor_on`)."""
        out = {"kl": losses["kl"].mean()}
        out.update({f"{k}_loss": v.mean() for k, v in losses.items() if k not in KL_KEYS})
        rssm = self.model.rssm
        out["prior_ent"] = rssm.dist(ctx.prior).entropy().mean()
        out["post_ent"] = rssm.dist(ctx.post).entropy().mean()
        if float(w.std()) > 0:
            w = w.float()
            out["weight_reward_corr"] = _corr(w, batch["reward"])
            out["weight_chunk_start"] = w[0].mean() / w.mean()  # [T, B]: row 0 starts every chunk
            if "episode_step" in batch:
                step = batch["episode_step"]
                out["weight_phase_corr"] = _corr(w, step)
                if bool((step == 0).any()):
                    out["weight_episode_start"] = w[step == 0].mean() / w.mean()
            for key in (k for k in batch if k.startswith("log_") and batch[k].dtype == torch.bool):
                if bool(batch[key].any()):  # e.g. log_distractor_on: the mean weight where the flag is set
                    out[f"weight_{key.removeprefix('log_')}"] = w[batch[key]].mean() / w.mean()
        return {k: float(v) for k, v in out.items() if math.isfinite(float(v))}

    def step_outputs(self, ctx: TempoContext) -> State:
        """The posterior states of the step's pass [T, B, ...], detached: the actor-critic starts from them."""
        return {k: v.detach() for k, v in ctx.post.items()}

    def upper_parameter_names(self) -> list[str]:
        """The task loss sees the model only through the states: encoder + RSSM."""
        prefixes = tuple(f"{m}." for m in self.model.upper_modules)
        return [n for n, _ in self.model.named_parameters() if n.startswith(prefixes)]
