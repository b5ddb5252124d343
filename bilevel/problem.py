"""The abstract bilevel sample-reweighting problem.

A problem owns a model θ and says how to compute, in ONE forward pass, the per-sample lower
losses and a context (e.g. inferred latent states). Everything a hypergradient strategy needs is
expressed through the five methods below, so `bilevel/` never needs to know what the model is.

    lower:  θ*(α) = argmin_θ  lower_objective(lower_losses(θ), w)      w = N_α(weighter_inputs)
    upper:  min_α  upper_objective(θ*(α))
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

Params = dict[str, Tensor]


class BilevelProblem(ABC):
    """Subclass this to make any weighted-loss model trainable by `BilevelTrainer`.

    `params` passed to `lower_losses` is a name -> tensor mapping covering `model.named_parameters()`.
    It is either the live parameters or functional copies (perturbed, unrolled, or dual tensors for
    forward-mode AD); implementations must use it through `torch.func.functional_call` (see
    `call`) rather than reading `self.model`'s parameters directly.
    """

    model: nn.Module

    @abstractmethod
    def lower_losses(self, batch: Any, params: Params) -> tuple[Tensor | Mapping[str, Tensor], Any]:
        """Per-sample lower losses (any shape `[...]`, or a dict of such terms) and a context."""

    @abstractmethod
    def weighter_inputs(self, ctx: Any) -> Tensor:
        """Features for the weighter, `[..., F]` with the per-sample shape `[...]` as leading dims."""

    @abstractmethod
    def upper_objective(self, batch: Any, ctx: Any) -> Tensor:
        """Scalar task loss, differentiable in θ through `ctx` (from the same forward pass)."""

    def lower_objective(self, losses: Tensor | Mapping[str, Tensor], w: Tensor) -> Tensor:
        """Scalar weighted lower loss. Default: mean of `w * losses`. Override when weights must enter
        a structured loss (e.g. before free nats in a KL term)."""
        if not isinstance(losses, Tensor):
            raise TypeError("dict-valued lower_losses need an overridden lower_objective")
        return (w * losses).mean()

    def upper_losses(self, batch: Any, ctx: Any) -> Tensor:
        """Per-sample task losses `[...]`, used only by the `naive` weighting baseline."""
        raise NotImplementedError(
            f"{type(self).__name__} does not define per-sample upper_losses, which 'naive' weighting needs"
        )

    def loss_deltas(self, batch: Any, params: Params, ctx: Any, losses: Tensor | Mapping[str, Tensor],
                    shifted: set[str]) -> Tensor | Mapping[str, Tensor]:
        """losses(params) - losses(θ), same structure as `losses`, for `params` that differ from the forward
        pass's θ only in the names `shifted` (the `terms_fd` contraction, under no_grad, with the pass's
        noise and stop-gradient values replayed, after the lower backward of that pass).

        Default: re-run `lower_losses` and subtract. Override to reuse what the shift cannot change; the
        forward pass ran while `bilevel.stopgrad.recording()` was true, so it could keep what it needs.
        """
        new = self.lower_losses(batch, params)[0]
        if isinstance(new, Tensor):
            return new - losses.detach()
        return {k: v - losses[k].detach() for k, v in new.items()}

    def loss_deltas_from(self, batch: Any, base: Any, params: Params, ctx: Any,
                         losses: Tensor | Mapping[str, Tensor], shifted: set[str]) -> Any:
        """`loss_deltas` at `params` read from `base`, the `upper_context` of a float32 pass at `params` (no graph;
        the forward's noise and stop-gradient values replayed), or None where it cannot be (the default: `terms_fd`
        then calls `loss_deltas`). A problem whose `loss_deltas` re-runs just the upper context's pass overrides
        this: `terms_fd` can then run its shifted pass beside the lower backward (`Contraction.prepare`), and after
        a reduced-precision forward read its float32 baseline at θ from the upper loss's own float32 pass. Called
        under no_grad, with the stop-gradient values replayed from where `base`'s pass stopped."""
        return None

    @property
    def reads_deltas_from_passes(self) -> bool:
        """Whether this problem reads its loss changes from an `upper_context` pass (`loss_deltas_from`)."""
        return type(self).loss_deltas_from is not BilevelProblem.loss_deltas_from

    def upper_context(self, batch: Any, params: Params) -> Any:
        """The context `upper_objective` needs, from a pass at `params` (the default: the whole `lower_losses`).

        Used after a reduced-precision forward pass: the trainer recomputes the upper loss in float32 from this
        context (same noise, the forward's stop-gradient values replayed), since ∇θ L_up through a bfloat16
        graph is visibly off. Override to run only what the upper loss reads; the pass may stop calling
        `bilevel.stopgrad.sg` early.
        """
        return self.lower_losses(batch, params)[1]

    def step_outputs(self, ctx: Any) -> Any:
        """What callers of `BilevelTrainer.step` need from the step's forward pass (e.g. the posterior states an
        actor-critic starts from), detached: the pass's graph is freed when the step returns. Default: None."""
        return None

    def step_metrics(self, batch: Any, ctx: Any, losses: Tensor | Mapping[str, Tensor], w: Tensor) -> dict[str, float]:
        """Diagnostics of the step's forward pass (`losses` and the weights `w` it used), logged with the trainer's
        metrics; called under no_grad after the step. Default: none."""
        return {}

    def upper_parameter_names(self) -> list[str] | None:
        """Names of θ the upper loss is differentiated through (None = all). E.g. encoder + RSSM."""
        return None

    # ---- helpers -------------------------------------------------------------------------------
    def call(self, params: Params, *args: Any, **kwargs: Any) -> Any:
        """Run `self.model` with the given parameters (buffers taken from the module)."""
        return torch.func.functional_call(self.model, params, args, kwargs, strict=False)

    def sample_shape(self, losses: Tensor | Mapping[str, Tensor]) -> torch.Size:
        if isinstance(losses, Tensor):
            return losses.shape
        return next(iter(losses.values())).shape
