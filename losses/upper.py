"""Task-aware upper losses for TEMPO (paper §2.2 eq. 4, §2.3, §3.4), independent of the world model.

Inputs are latent states of an RSSM-like model (any leading dims; `[T, B]` below):

* `h [T, B, D]`       deterministic states,
* `s_post [T, B, S]`  posterior stochastic states (flattened; for categorical latents straight-through
  one-hot samples, or class probabilities),
* `s_prior [T, B, S]` prior stochastic states, same layout,
* `value_fn(feat [..., F]) -> [...]` with `feat = cat(h, s)`: the slow target critic's mean (an
  output `[..., 1]` is squeezed).

Contract on `value_fn`: the losses never update it, and only differentiate w.r.t. the *states*, but
`loss.backward()` accumulates `.grad` into every leaf that requires grad, so the caller must pass a
critic whose parameters do not require grad (TEMPO passes the slow critic after `requires_grad_(False)`)
or differentiate with `torch.autograd.grad` w.r.t. the parameters it cares about.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from losses.registry import register

ValueFn = Callable[[Tensor], Tensor]
NormMode = Literal["batch", "moving", "none"]
NORMS = ("batch", "moving", "none")


def evaluate_value(value_fn: ValueFn, h: Tensor, s: Tensor) -> Tensor:
    """V(h, s) = value_fn(cat(h, s)): `h [T, B, D]`, `s [T, B, S]` -> `[T, B]`."""
    if h.shape[:-1] != s.shape[:-1]:
        raise ValueError(f"h {tuple(h.shape)} and s {tuple(s.shape)} must share leading dims")
    v = value_fn(torch.cat([h, s], dim=-1))
    lead = h.shape[:-1]
    if v.shape == (*lead, 1):
        v = v.squeeze(-1)
    if v.shape != lead:
        raise ValueError(f"value_fn must return shape {tuple(lead)} (or {(*lead, 1)}), got {tuple(v.shape)}")
    return v


class ValueNorm(nn.Module):
    """Joint normalisation of posterior and prior values, Norm({V(s_post), V(s_prior)}) (Alg. 1 line 5).

    With x = [v_post, v_prior] `[2, T, B]` and statistics (μ, σ²):  v̂ = (v - μ) / sqrt(σ² + eps), eps = 1e-3 as
    the official code's Keras BatchNormalization(center=False, scale=False) in training mode.

    * `'batch'`  (official code): μ, σ² = mean and population variance of x over all its entries,
      computed with gradient (the statistics are part of the graph).
    * `'moving'` (paper text, §2.3): buffers updated without gradient on each call with `update=True`,
      μ ← m·μ + (1-m)·mean(x), σ² ← m·σ² + (1-m)·var(x) (the first update copies the batch statistics),
      then used as constants. Before any update, the (detached) batch statistics are used.
    * `'none'`: identity.
    """

    moving_mean: Tensor
    moving_var: Tensor
    num_updates: Tensor

    def __init__(self, mode: NormMode = "batch", momentum: float = 0.99, eps: float = 1e-3) -> None:
        super().__init__()
        if mode not in NORMS:
            raise ValueError(f"unknown value norm {mode!r}; accepted: {list(NORMS)}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.mode, self.momentum, self.eps = mode, momentum, eps
        self.register_buffer("moving_mean", torch.zeros(()))
        self.register_buffer("moving_var", torch.ones(()))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def forward(self, v_post: Tensor, v_prior: Tensor, update: bool = False) -> tuple[Tensor, Tensor]:
        if self.mode == "none":
            return v_post, v_prior
        x = torch.stack([v_post, v_prior])  # [2, T, B]
        mean, var = x.mean(), x.var(correction=0)  # scalars, with grad
        if self.mode == "moving":
            if update:
                with torch.no_grad():
                    m = self.momentum if self.num_updates > 0 else 0.0
                    self.moving_mean.mul_(m).add_((1 - m) * mean.detach().to(self.moving_mean))
                    self.moving_var.mul_(m).add_((1 - m) * var.detach().to(self.moving_var))
                    self.num_updates += 1
            if self.num_updates > 0:
                mean, var = self.moving_mean.to(x), self.moving_var.to(x)
            else:
                mean, var = mean.detach(), var.detach()
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x[0], x[1]


class UpperLoss(nn.Module, abc.ABC):
    """Base class of task-aware upper losses L^upper(h, s_post, s_prior; V).

    Subclasses implement `per_sample -> [T, B]`; `loss(h, s_post, s_prior, value_fn)` is its mean over
    (t, b) (a scalar). `values` gives the (normalised) values (v_post, v_prior) `[T, B]` that the loss
    uses, which TEMPO also feeds to the meta weighter (eq. 5).

    Stateful normalisation (`norm='moving'`) updates its statistics once per `loss(...)` / `per_sample`
    call in training mode; use `.eval()` or `values(..., update=False)` for extra evaluations (e.g. the
    weighter's inputs) so the statistics are not updated twice per step.

    `use_probs` tells the caller which stochastic states to pass for categorical latents: straight-through
    one-hot samples (False) or class probabilities (True).
    """

    use_probs: bool = False

    def __init__(self, norm: NormMode = "none", momentum: float = 0.99, eps: float = 1e-3) -> None:
        super().__init__()
        self.value_norm = ValueNorm(norm, momentum, eps)

    def values(
        self, h: Tensor, s_post: Tensor, s_prior: Tensor, value_fn: ValueFn, update: bool | None = None
    ) -> tuple[Tensor, Tensor]:
        """(Norm(V(h, s_post)), Norm(V(h, s_prior))) `[T, B]` each; `update=None` means `self.training`."""
        if s_post.shape != s_prior.shape:
            raise ValueError(
                f"s_post {tuple(s_post.shape)} and s_prior {tuple(s_prior.shape)} differ in shape"
            )
        v_post = evaluate_value(value_fn, h, s_post)  # [T, B]
        v_prior = evaluate_value(value_fn, h, s_prior)  # [T, B]
        return self.value_norm(v_post, v_prior, update=self.training if update is None else update)

    @abc.abstractmethod
    def per_sample(self, h: Tensor, s_post: Tensor, s_prior: Tensor, value_fn: ValueFn) -> Tensor:
        """Per-timestep losses `[T, B]` (with graph; detach them for the naive weighting of §3.4)."""

    def forward(self, h: Tensor, s_post: Tensor, s_prior: Tensor, value_fn: ValueFn) -> Tensor:
        """Scalar loss: mean over (t, b) of `per_sample`."""
        return self.per_sample(h, s_post, s_prior, value_fn).mean()


@register("vvaml")
class VVAML(UpperLoss):
    """V-VAML, the paper's task-aware model loss (eq. 4), averaged instead of summed:

        L = 1/(T·B) Σ_{t,b} | V̂(h_t, s_t^post) - V̂(h_t, s_t^prior) |²,   V̂ = Norm(V)  (see `ValueNorm`)

    V is evaluated on cat(h_t, s_t) with the same h_t for both terms; no stop-gradient anywhere, so
    gradients reach the states (hence the world model) through both V(s_post) and V(s_prior) (and,
    with `norm='batch'`, through the batch statistics). Default `norm='batch'` follows the official code;
    `norm='moving'` follows the paper text (§2.3).
    """

    def __init__(self, norm: NormMode = "batch", momentum: float = 0.99, eps: float = 1e-3) -> None:
        super().__init__(norm=norm, momentum=momentum, eps=eps)

    def per_sample(self, h: Tensor, s_post: Tensor, s_prior: Tensor, value_fn: ValueFn) -> Tensor:
        v_post, v_prior = self.values(h, s_post, s_prior, value_fn)  # [T, B] each
        return (v_post - v_prior).square()  # [T, B]


@register("vagram")
class VaGraM(UpperLoss):
    """Value-gradient weighted model loss (VaGraM, Voelcker et al. 2022) adapted to latent states:

        L = 1/(T·B) Σ_{t,b} Σ_d ( g_{t,b,d} · (s^prior_{t,b,d} - sg(s^post_{t,b,d})) )²
        g_{t,b} = sg( c_{t,b} · ∇_s V(h_t, s)|_{s = s^post_{t,b}} ),  c_{t,b} = min(1, q / ||∇_s V||_{t,b})

    with q the `clip_quantile` (default 95th) percentile (linear interpolation) of the per-sample
    gradient norms over the batch (`clip_quantile=None` disables clipping).

    Adapted from VaGraM: the model error is measured in the RSSM's latent space (prior vs. posterior
    stochastic state) instead of the observation space, the posterior plays the role of the observed next
    state (a stop-gradient target) and the prior the model prediction; the value gradient is taken w.r.t.
    s only (h fixed) at the posterior. Gradients reach s_prior only. For categorical latents pass class
    probabilities (the gradient w.r.t. a one-hot sample is the same function but evaluated at a vertex).

    `norm` only affects `values()` (the weighter's inputs); the loss uses raw value gradients.
    """

    use_probs = True

    def __init__(
        self,
        clip_quantile: float | None = 0.95,
        norm: NormMode = "none",
        momentum: float = 0.99,
        eps: float = 1e-3,
    ) -> None:
        super().__init__(norm=norm, momentum=momentum, eps=eps)
        if clip_quantile is not None and not 0.0 < clip_quantile <= 1.0:
            raise ValueError(f"clip_quantile must be in (0, 1] or None, got {clip_quantile}")
        self.clip_quantile = clip_quantile

    def value_gradient(self, h: Tensor, s_post: Tensor, value_fn: ValueFn) -> Tensor:
        """g = sg(clipped ∇_s V(h, s) at s = s_post) `[T, B, S]` (autograd.grad w.r.t. s only: no .grad
        is accumulated anywhere, and no graph is kept)."""
        with torch.enable_grad():
            s = s_post.detach().requires_grad_(True)  # [T, B, S]
            v = evaluate_value(value_fn, h.detach(), s)  # [T, B]
            if not v.requires_grad:  # V does not depend on s (or on anything differentiable)
                return torch.zeros_like(s_post).detach()
            (g,) = torch.autograd.grad(v.sum(), s, allow_unused=True)
        if g is None:
            return torch.zeros_like(s_post).detach()
        if self.clip_quantile is not None:
            norms = g.norm(dim=-1)  # [T, B]
            q = torch.quantile(norms.flatten(), self.clip_quantile)
            scale = torch.where(norms > q, q / norms, torch.ones_like(norms))  # [T, B]
            g = g * scale.unsqueeze(-1)
        return g.detach()

    def per_sample(self, h: Tensor, s_post: Tensor, s_prior: Tensor, value_fn: ValueFn) -> Tensor:
        if s_post.shape != s_prior.shape:
            raise ValueError(
                f"s_post {tuple(s_post.shape)} and s_prior {tuple(s_prior.shape)} differ in shape"
            )
        g = self.value_gradient(h, s_post, value_fn)  # [T, B, S]
        return (g * (s_prior - s_post.detach())).square().sum(-1)  # [T, B]
