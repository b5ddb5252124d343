"""Differentiable copies of the torch optimizers the trainer really steps, for exact unrolling.

`unroll` differentiates L_up(θ_K(α)) through K lower steps. The steps must be the ones `BilevelTrainer.step`
takes: global-norm clipping at `lower_clip` exactly as `torch.nn.utils.clip_grads_with_norm_` does it, then
the update of `torch.optim.SGD` / `torch.optim.Adam` (`AdamW`) with every option that changes the update:

* SGD: `weight_decay`, `momentum`, `dampening`, `nesterov`, `maximize`.
* Adam/AdamW: `weight_decay` (L2, or decoupled p <- p(1 - lr·wd) when `decoupled_weight_decay`, which
  `torch.optim.AdamW` sets), `amsgrad`, `maximize`, and eps added after the bias correction of √v (torch's
  placement, not the legacy one of `higher`'s own DifferentiableAdam).

Anything else (another optimizer class, a tensor-valued lr that requires grad) is refused when the trainer
is built, naming what is accepted. `step_param` is the one update formula: the native unroll and the
`higher` engine both call it, so the two engines cannot drift apart.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

ACCEPTED = "torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW"


def check_differentiable(opt: torch.optim.Optimizer) -> None:
    """Raise if `opt` is not an optimizer whose step `step_param` reproduces (called when the trainer is built)."""
    if not isinstance(opt, torch.optim.SGD | torch.optim.Adam):
        raise ValueError(f"unroll differentiates {ACCEPTED}; got {type(opt).__name__}")
    for i, group in enumerate(opt.param_groups):
        for key in ("lr", "weight_decay"):
            if isinstance(group.get(key), Tensor) and group[key].requires_grad:
                raise ValueError(f"unroll: param group {i} has a {key} that requires grad; accepted: floats")


def clip_by_global_norm(grads: list[Tensor], max_norm: float) -> list[Tensor]:
    """`torch.nn.utils.clip_grads_with_norm_` without the in-place write, so it can be differentiated."""
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return [g * coef for g in grads]


def initial_state(opt: torch.optim.Optimizer, p: Tensor) -> dict[str, Any]:
    """A detached copy of `opt`'s state for parameter `p` (empty before its first step)."""
    return {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in opt.state.get(p, {}).items()}


def step_param(p: Tensor, g: Tensor, state: dict[str, Any], group: dict[str, Any], kind: str) -> Tensor:
    """p after one step of optimizer `kind` ('sgd' | 'adam') on gradient g, differentiably; updates `state`
    (a dict in torch's layout: 'momentum_buffer', or 'step'/'exp_avg'/'exp_avg_sq'/'max_exp_avg_sq')."""
    lr = float(group["lr"])
    wd = float(group["weight_decay"])
    if group.get("maximize", False):
        g = -g
    if kind == "sgd":
        if wd:
            g = g + wd * p
        mom = group["momentum"]
        if mom:
            buf = state.get("momentum_buffer")
            buf = g if buf is None else mom * buf + (1 - group["dampening"]) * g
            state["momentum_buffer"] = buf
            g = g + mom * buf if group["nesterov"] else buf
        return p - lr * g
    # Adam / AdamW, in the order of torch.optim.adam._single_tensor_adam
    if wd:
        if group.get("decoupled_weight_decay", False):
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
    b1, b2 = (float(b) for b in group["betas"])
    t = float(state.get("step", 0)) + 1
    m = b1 * state.get("exp_avg", torch.zeros_like(p)) + (1 - b1) * g
    v = b2 * state.get("exp_avg_sq", torch.zeros_like(p)) + (1 - b2) * g * g
    state.update(step=torch.tensor(t), exp_avg=m, exp_avg_sq=v)
    if group.get("amsgrad", False):
        v = torch.maximum(state.get("max_exp_avg_sq", torch.zeros_like(p)), v)
        state["max_exp_avg_sq"] = v
    # √ has an infinite derivative at 0 (an entry whose gradient was always exactly 0): clamp to the smallest
    # normal number, which changes the value by < 1e-19 and gives that entry the subgradient 0 instead of NaN.
    denom = torch.sqrt(torch.clamp(v, min=torch.finfo(v.dtype).tiny)) / math.sqrt(1 - b2**t) + group["eps"]
    return p - (lr / (1 - b1**t)) * m / denom


def optimizer_kind(opt: torch.optim.Optimizer) -> str:
    return "sgd" if isinstance(opt, torch.optim.SGD) else "adam"


class DiffOptimizer:
    """The trainer's optimizer as a pure function of (params, grads), starting from a copy of its state."""

    def __init__(self, opt: torch.optim.Optimizer, params: list[Tensor], clip: float | None = None) -> None:
        check_differentiable(opt)
        self.kind = optimizer_kind(opt)
        self.clip = clip
        group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
        missing = [i for i, p in enumerate(params) if id(p) not in group_of]
        if missing:
            raise ValueError(f"unroll: parameters {missing[:5]} of the model are not in the lower optimizer")
        self.groups = [group_of[id(p)] for p in params]
        self.state = [initial_state(opt, p) for p in params]

    def step(self, params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        if self.clip is not None:
            grads = clip_by_global_norm(grads, self.clip)
        return [step_param(p, g, s, grp, self.kind)
                for p, g, s, grp in zip(params, grads, self.state, self.groups, strict=True)]
