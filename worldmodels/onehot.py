"""A linear layer on features whose last block is exactly one-hot: DreamerV2's categorical latents.

In imagination every categorical sample is the straight-through `onehot + (p - sg(p))`, whose value is exactly
one-hot (`p - sg(p)` is exactly zero). Every head that reads feat = cat(h, s) [..., deter + G*K] therefore
multiplies, in its first layer, G*K columns of which only G are non-zero per row: for 32 x 32 latents, 1024 of
the 1224 input columns of the reward head, the critics and the actor. `onehot_linear` computes that layer's
forward as a dense matmul over h plus a gather-sum of G weight columns (`embedding_bag`), and its backward
exactly as `F.linear`'s, so the straight-through gradient still reaches every column of s. The values are
those of the dense layer up to the order of the float summation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class OneHot:
    """Says that x[..., start:] of a layer input is exactly one-hot in groups of `classes` entries.

    idx [..., G] (int64): the column of the one in each group, relative to `start`, i.e. g * classes + k.
    """

    start: int
    idx: Tensor

    @classmethod
    def of(cls, s: Tensor, start: int, classes: int) -> OneHot:
        """From an exactly one-hot s [..., G * classes] that sits at x[..., start:]."""
        k = s.detach().reshape(*s.shape[:-1], -1, classes).argmax(-1)  # [..., G]
        offsets = torch.arange(k.shape[-1], device=k.device) * classes
        return cls(start, k + offsets)

    def __getitem__(self, item: Any) -> OneHot:
        """Index the leading (batch) dimensions, as the feature tensor it describes is indexed."""
        return OneHot(self.start, self.idx[item])


class _OneHotLinear(torch.autograd.Function):
    """y = x @ W^T + b with x[..., start:] one-hot at `idx`; backward is the dense layer's."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, idx: Tensor, weight: Tensor, bias: Tensor | None, start: int) -> Tensor:
        dense = F.linear(x[..., :start], weight[:, :start], bias)  # autocast, if on, applies here as to F.linear
        table = weight[:, start:].t().to(dense.dtype).contiguous()  # [G*K, out]: one row per one-hot column
        gathered = F.embedding_bag(idx.reshape(-1, idx.shape[-1]), table, mode="sum")  # [N, out]
        ctx.save_for_backward(x, weight)
        ctx.dtype, ctx.has_bias = dense.dtype, bias is not None
        return dense + gathered.reshape(dense.shape)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        dt = ctx.dtype  # the matmul dtype of the forward (autocast's), as a dense layer's backward uses it
        g2 = g.reshape(-1, g.shape[-1]).to(dt)  # [N, out]
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = (g2 @ weight.to(dt)).to(x.dtype).reshape(x.shape)
        if ctx.needs_input_grad[2]:
            gw = (g2.t() @ x.reshape(-1, x.shape[-1]).to(dt)).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            gb = g2.sum(0).to(weight.dtype)
        return gx, None, gw, gb, None


def onehot_linear(x: Tensor, onehot: OneHot, weight: Tensor, bias: Tensor | None) -> Tensor:
    """`F.linear(x, weight, bias)`, computed sparsely over the one-hot block `onehot` describes.

    The caller guarantees that block is exactly one-hot (`OneHot.of` from a straight-through sample); nothing
    here checks it, since checking would cost the pass this saves. Differentiable once (the actor-critic's
    first-order update), not twice: the bilevel world-model step keeps dense layers.
    """
    return _OneHotLinear.apply(x, onehot.idx, weight, bias, onehot.start)
