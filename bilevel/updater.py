"""The one update mechanism: θ and α in `BilevelTrainer.step`, actor and critic in `agents.ActorCritic.train_step`.

An `Updater` steps a few named parts (each an optimizer and the global-norm clip of its parameters' gradient)
together, from their gradients, in four phases:

    gradients  of each part's loss (`gradients_of`, one backward pass: scaled under float16, then unscaled), or
               taken elsewhere (`unscale` them when they are of the scaled loss)
    check      the global norm of each part's gradient and any given values (the loss), in ONE host sync: all
               finite, or the whole update is skipped, never applied, and counted; more than `max_nonfinite`
               skips in a row stop training
    apply      per part: clip with the norm the check computed (`torch.nn.utils.clip_grads_with_norm_`), then the
               optimizer's step (through the GradScaler under float16: it skips a step whose gradients overflowed)
    finish     once per update: the float16 loss scale it ran with (a metric), then the GradScaler's adjustment
               (halved after an overflow, grown after a run of finite updates)

`step` runs check, apply and finish; `BilevelTrainer.step` runs them one by one to time its lower and meta steps.
Weight decay is the optimizer's own (`make_optimizer`: DreamerV2's decoupled θ <- (1 - wd)·θ before each step), so
the differentiable copy of the lower step that `unroll` takes (`bilevel.diffopt`) sees it too.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from bilevel.precision import Precision


def make_optimizer(params: Any, name: str, lr: float, eps: float, weight_decay: float,
                   decoupled: bool = True) -> torch.optim.Optimizer:
    """Adam or SGD. `decoupled=True` applies weight decay as DreamerV2's optimizer does, p <- (1 - wd)·p before
    each step, not scaled by the learning rate: torch's decoupled decay is p <- (1 - lr·wd')·p, so wd' = wd/lr.
    `decoupled=False` is L2 regularisation (wd·p added to the gradient)."""
    if name == "adam":
        if decoupled and weight_decay:
            return torch.optim.Adam(params, lr=lr, eps=eps, weight_decay=weight_decay / lr,
                                    decoupled_weight_decay=True)
        return torch.optim.Adam(params, lr=lr, eps=eps, weight_decay=weight_decay)
    if name == "sgd":
        if decoupled and weight_decay:
            raise ValueError("decoupled weight decay is defined for 'adam'; use decoupled=False with 'sgd'")
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; accepted: ['adam', 'sgd']")


def set_learning_rate(opt: torch.optim.Optimizer, lr: float, weight_decay: float | None = None) -> None:
    """Change an optimizer's learning rate, keeping a `make_optimizer` decoupled decay at `weight_decay` per step
    (None: at the decay per step it has now)."""
    for group in opt.param_groups:
        if group.get("decoupled_weight_decay") and group["weight_decay"]:
            if weight_decay is not None:
                group["weight_decay"] = weight_decay / lr
            elif lr != group["lr"]:
                group["weight_decay"] = group["weight_decay"] * group["lr"] / lr
        group["lr"] = lr


def load_keeping_decay(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """`opt.load_state_dict(state)`, keeping the decoupled decay `opt` was built with where the saved groups have
    none: checkpoints of `ActorCritic` from before it used `make_optimizer` hold Adam without decay (it decayed
    by hand), and torch restores a group's hyperparameters from the checkpoint."""
    built = [group["weight_decay"] * group["lr"] if group.get("decoupled_weight_decay") else 0.0
             for group in opt.param_groups]
    opt.load_state_dict(state)
    for group, per_step in zip(opt.param_groups, built, strict=True):
        if per_step and not group.get("decoupled_weight_decay"):
            group.update(weight_decay=per_step / group["lr"], decoupled_weight_decay=True)


def loss_scaler(precision: Precision | None) -> torch.amp.GradScaler | None:
    """The GradScaler an update needs: float16's range needs loss scaling, bfloat16 has float32's."""
    if precision is None or precision.mode != "16":
        return None
    # Keras's dynamic LossScaleOptimizer (DreamerV2's float16 path): start at 2^15 (torch's default is 2^16), halve
    # and skip on an overflow, double after 2000 finite steps
    return torch.amp.GradScaler(precision.device.type, init_scale=2.0**15, growth_interval=2000)


@dataclass
class Part:
    """One optimizer of an update. `scaled`: its gradients are of the scaled loss under float16 (the trainer's α
    gradient is not: it comes from float32 re-evaluations)."""

    opt: torch.optim.Optimizer
    clip: float
    scaled: bool = True


@dataclass
class Check:
    """The outcome of `Updater.check`: finite or skipped, and the host values it synced (metrics); `step` adds the
    float16 loss scale the update ran with."""

    finite: bool
    norms: dict[str, float]
    values: dict[str, float]
    pending: dict[str, tuple[list[Tensor], list[Tensor], Tensor]] = field(default_factory=dict, repr=False)
    loss_scale: float | None = None


class Updater:
    """The parts of one update (`parts`: name -> `Part`), their float16 `scaler` (None: no loss scaling) and the
    non-finite rule: skip and count, and stop after more than `max_nonfinite` skips in a row (None: never)."""

    def __init__(self, parts: Mapping[str, Part], scaler: torch.amp.GradScaler | None = None,
                 max_nonfinite: int | None = None, what: str = "updates") -> None:
        self.parts = dict(parts)
        self.scaler = scaler
        self.max_nonfinite = max_nonfinite  # None: skip and count, never stop
        self.what = what  # in the error that stops training: "... consecutive non-finite {what}"
        self.skipped = 0  # updates skipped so far
        self.streak = 0  # ... in a row

    @property
    def float16(self) -> bool:
        return self.scaler is not None and self.scaler.is_enabled()

    def _scaling(self, name: str) -> bool:
        return self.float16 and self.parts[name].scaled

    def scale(self, loss: Tensor) -> Tensor:
        """The loss a float16 backward takes (scaled), else the loss itself."""
        return self.scaler.scale(loss) if self.float16 else loss

    def gradients_of(self, losses: Mapping[str, tuple[list[Tensor], Tensor]]) -> dict[str, tuple[list[Tensor],
                                                                                          list[Tensor]]]:
        """{part: (params, d loss / d params)} for {part: (params, loss)}, unscaled, from one backward pass over
        every loss: for parts whose losses reach no other part's parameters (as the actor's and the critic's), where
        it equals each loss's own gradient. One pass, since a compiled graph's backward can run only once."""
        outputs = [self.scale(loss) if self._scaling(n) else loss for n, (_, loss) in losses.items()]
        flat = [p for params, _ in losses.values() for p in params]
        grads = iter(torch.autograd.grad(outputs, flat, allow_unused=True))  # in `flat`'s order, part by part
        out: dict[str, tuple[list[Tensor], list[Tensor]]] = {}
        for n, (params, _) in losses.items():
            gs = [g if (g := next(grads)) is not None else torch.zeros_like(p) for p in params]
            out[n] = (params, self.unscale(n, params, gs))
        return out

    def unscale(self, name: str, params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        """Gradients of the scaled loss, unscaled in place (the GradScaler also records whether they overflowed);
        anything else as it is."""
        if not self._scaling(name):
            return grads
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        self.scaler.unscale_(self.parts[name].opt)
        return [p.grad for p in params]

    def check(self, grads: Mapping[str, tuple[list[Tensor], list[Tensor]]],
              values: Mapping[str, Tensor] | None = None) -> Check:
        """Norms of each part's (params, grads) and the `values`, one host sync: apply all, or skip and count."""
        values = dict(values or {})
        norms = {name: torch.nn.utils.get_total_norm(g) for name, (_, g) in grads.items()}
        tensors = [v.detach() for v in values.values()] + list(norms.values())
        dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
        synced = torch.stack([t.to(dtype) for t in tensors]).tolist()
        value_f = dict(zip(values, synced[:len(values)], strict=True))
        norm_f = dict(zip(norms, synced[len(values):], strict=True))
        finite = all(math.isfinite(x) for x in synced)
        pending = {name: (params, g, norms[name]) for name, (params, g) in grads.items()}
        if finite:
            self.streak = 0
        else:
            self.discard()
            self.skipped += 1
            self.streak += 1
            if self.max_nonfinite is not None and self.streak > self.max_nonfinite:
                detail = ", ".join(f"{k} {v}" for k, v in value_f.items())
                raise FloatingPointError(f"{self.streak} consecutive non-finite {self.what}" + (
                    f" ({detail})" if detail else "") + "; stopping. Lower the learning rates or check the inputs.")
        return Check(finite, norm_f, value_f, pending if finite else {})

    def apply(self, check: Check, name: str) -> None:
        """Part `name`'s step from its checked gradients: clipped with their norm, then the optimizer (nothing
        when the check skipped the update, or the part was not in it)."""
        if name not in check.pending:
            return
        params, grads, total_norm = check.pending[name]
        part = self.parts[name]
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        torch.nn.utils.clip_grads_with_norm_(params, part.clip, total_norm)
        if self._scaling(name):
            self.scaler.step(part.opt)
        else:
            part.opt.step()
        part.opt.zero_grad(set_to_none=True)

    def discard(self) -> None:
        """Drop whatever gradients the parts hold (a skipped update: unscaling wrote some)."""
        for part in self.parts.values():
            part.opt.zero_grad(set_to_none=True)

    def finish(self) -> float | None:
        """Once per update, after its check: the float16 loss scale it ran with (None otherwise), then the
        GradScaler's update."""
        if not self.float16:
            return None
        scale = self.scaler.get_scale()
        self.scaler.update()
        return scale

    def step(self, grads: Mapping[str, tuple[list[Tensor], list[Tensor]]],
             values: Mapping[str, Tensor] | None = None) -> Check:
        """check, apply every part, finish: the whole update."""
        check = self.check(grads, values)
        for name in grads:
            self.apply(check, name)
        check.loss_scale = self.finish()
        return check

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def scaler_state(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_scaler_state(self, state: dict[str, Any] | None) -> None:
        if state and self.scaler is not None:
            self.scaler.load_state_dict(state)
