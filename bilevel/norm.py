"""The moving normaliser (the paper's `Norm`): the `naive` weighting's, and V-VAML's `value_norm='moving'`."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MovingNorm(nn.Module):
    """Moving mean/variance normaliser: the first update copies the batch statistics, later ones mix them in
    with `momentum`; `(x - mean) / sqrt(var + eps)`. Its buffers are saved with its owner."""

    def __init__(self, momentum: float = 0.99, eps: float = 1e-8) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("var", torch.ones(()))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        # in the buffers' dtype, so a float64 input updates float32 statistics as float32 arithmetic would
        m, v = x.mean().to(self.mean), x.var(unbiased=False).to(self.var)
        if not (torch.isfinite(m) and torch.isfinite(v)):
            return  # a non-finite batch is skipped by the trainer; it must not poison the statistics
        if int(self.count) == 0:
            self.mean.copy_(m)
            self.var.copy_(v)
        else:
            self.mean.mul_(self.momentum).add_((1 - self.momentum) * m)
            self.var.mul_(self.momentum).add_((1 - self.momentum) * v)
        self.count += 1

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x)) / torch.sqrt(self.var.to(x) + self.eps)
