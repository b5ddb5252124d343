"""The upper-loss base class `UpperLoss` and the value normalisation it applies (`ValueNorm`).

Kept apart from the concrete losses (`losses.upper`) so that the registry can import the base class at
module level while the concrete losses import the registry to register themselves.

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

from bilevel.norm import MovingNorm

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

    def __init__(self, mode: NormMode = "batch", momentum: float = 0.99, eps: float = 1e-3) -> None:
        super().__init__()
        if mode not in NORMS:
            raise ValueError(f"unknown value norm {mode!r}; accepted: {list(NORMS)}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.mode, self.momentum, self.eps = mode, momentum, eps
        self.stats = MovingNorm(momentum, eps)  # the 'moving' statistics (a non-finite batch leaves them as they are)

    def forward(self, v_post: Tensor, v_prior: Tensor, update: bool = False) -> tuple[Tensor, Tensor]:
        if self.mode == "none":
            return v_post, v_prior
        x = torch.stack([v_post, v_prior])  # [2, T, B]
        if self.mode == "moving":
            if update:
                self.stats.update(x.detach())
            if int(self.stats.count) > 0:
                x = self.stats(x)
                return x[0], x[1]
            mean, var = x.mean().detach(), x.var(correction=0).detach()
        else:
            mean, var = x.mean(), x.var(correction=0)  # scalars, with grad
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

    @property
    def updates_statistics(self) -> bool:
        """Whether evaluating the loss updates state (moving value statistics): then it must be evaluated once per
        step through `forward`/`per_sample`, not recombined from `values(..., update=False)`."""
        return self.value_norm.mode == "moving"

    def values_loss(self, v_post: Tensor, v_prior: Tensor) -> Tensor | None:
        """The per-sample loss `[T, B]` as a function of the values `values` gives, for losses that are one (so a
        caller holding those values needs no second pair of critic passes); None for the others."""
        return None

    @abc.abstractmethod
    def per_sample(self, h: Tensor, s_post: Tensor, s_prior: Tensor, value_fn: ValueFn) -> Tensor:
        """Per-timestep losses `[T, B]` (with graph; detach them for the naive weighting of §3.4)."""

    def forward(self, h: Tensor, s_post: Tensor, s_prior: Tensor, value_fn: ValueFn) -> Tensor:
        """Scalar loss: mean over (t, b) of `per_sample`."""
        return self.per_sample(h, s_post, s_prior, value_fn).mean()


class FunctionLoss(UpperLoss):
    """A plain callable `fn(h, s_post, s_prior, value_fn) -> scalar` as an `UpperLoss` (values unnormalised, no
    per-sample losses: the `naive` weighting and the weights' correlation need an `UpperLoss` subclass)."""

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        super().__init__(norm="none")
        self.fn = fn

    def per_sample(self, h: Tensor, s_post: Tensor, s_prior: Tensor, value_fn: ValueFn) -> Tensor:
        raise NotImplementedError(f"{self.fn!r} gives a scalar loss only; subclass losses.UpperLoss for per-sample "
                                  "losses")

    def forward(self, h: Tensor, s_post: Tensor, s_prior: Tensor, value_fn: ValueFn) -> Tensor:
        return self.fn(h, s_post, s_prior, value_fn)
