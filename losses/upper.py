"""Task-aware upper losses for TEMPO (paper §2.2 eq. 4, §2.3, §3.4), independent of the world model:
V-VAML and VaGraM, registered as 'vvaml' and 'vagram'.

Input layout and the contract on `value_fn`: see `losses.base`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losses.base import NORMS, NormMode, UpperLoss, ValueFn, ValueNorm, evaluate_value
from losses.registry import register

__all__ = ["NORMS", "VVAML", "NormMode", "UpperLoss", "VaGraM", "ValueFn", "ValueNorm", "evaluate_value"]


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
        return self.values_loss(*self.values(h, s_post, s_prior, value_fn))  # [T, B]

    def values_loss(self, v_post: Tensor, v_prior: Tensor) -> Tensor:
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
