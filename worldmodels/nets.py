"""Building blocks of the DreamerV2 world model: MLP, norm-GRU, conv encoder/decoder, log-likelihoods.

The MLP also builds the agent's actor and critic (`agents` imports it from here).

Everything here is written with smooth activations (ELU, tanh, sigmoid, softplus) and out-of-place ops but one
(the ELU, see `ELU`), so the world-model loss is twice differentiable, both by double backward and by
`torch.func.jvp` over `torch.func.grad`: the bilevel hypergradient differentiates the lower-level gradient once more.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bilevel.precision import f32  # every stop-gradient of the model: replayable by finite differences
from bilevel.stopgrad import sg as sg
from worldmodels.onehot import OneHot, onehot_linear

LOG_2PI = math.log(2.0 * math.pi)


class ELU(nn.ELU):
    """DreamerV2's activation, applied in place to the fresh output of the layer before it. Why: autograd then
    differentiates it from its output (y + 1 where x ≤ 0) instead of evaluating exp(x) again, a 2-4x faster
    backward on CPU (benchmarks/README.md). Values are `nn.ELU`'s; gradients agree to rounding, also by double
    backward and `torch.func` (tests/test_mlp.py). Only for inputs nothing else reads: a layer's own output."""

    def __init__(self) -> None:
        super().__init__(inplace=True)


def dreamer_init(module: nn.Module) -> None:
    """Keras defaults used by DreamerV2: glorot-uniform kernels, zero biases (torch defaults differ)."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class MLP(nn.Sequential):
    """`layers` x (Linear(units) [+ LayerNorm] + act), then an optional linear output layer.

    The one MLP builder of the project: the world model's vector encoder, decoder, reward and discount heads
    and the agent's actor and critic. With `out=None` the last hidden activation is the output (DreamerV2's
    vector encoder has no output layer); otherwise heads map to `out` raw parameters (mean, logit, ...).

    Layers keep torch's default initialisation, so that building consumes the random stream exactly as a
    plain stack of these layers would; callers apply `dreamer_init` when they want Keras' init (the world
    model does it once all its parts exist, the agent right away).

    A Sequential itself, so the layers are `mlp[i]` and the parameters `0.weight`, `0.bias`, ...
    """

    def __init__(self, inp: int, out: int | None, layers: int = 4, units: int = 400,
                 act: type[nn.Module] = ELU, norm: bool = False):
        mods: list[nn.Module] = []
        dim = inp
        for _ in range(layers):
            mods.append(nn.Linear(dim, units, bias=not norm))
            if norm:
                mods.append(nn.LayerNorm(units, eps=1e-3))
            mods.append(act())
            dim = units
        if out is not None:
            mods.append(nn.Linear(dim, out))
            dim = out
        super().__init__(*mods)
        self.out_dim = dim
        # Checkpoints of the world model written before the MLP was a Sequential name its layers 'net.<i>.*'.
        self._register_load_state_dict_pre_hook(_drop_net_prefix)

    def forward(self, x: Tensor, onehot: OneHot | None = None) -> Tensor:  # [..., inp] -> [..., out_dim]
        """`onehot`, if given, says that x's last block is exactly one-hot (`worldmodels.onehot`): the first
        layer then gathers weight columns instead of multiplying zeros. Same values, up to summation order.

        The layers run on x flattened to [N, inp]. Why: `F.linear` returns a view of its matmul for an input of
        more than two dims, and the in-place ELU on a view costs autograd a copy of the whole layer's gradient in
        the backward (`CopySlices`); on [N, inp] each layer's output is a fresh tensor. Same values."""
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])  # [N, inp]
        if onehot is None:
            y = super().forward(x)
        else:
            first = self[0]
            y = onehot_linear(x, OneHot(onehot.start, onehot.idx.reshape(-1, onehot.idx.shape[-1])), first.weight,
                              first.bias)
            for layer in list(self)[1:]:
                y = layer(y)
        return y.reshape(*lead, y.shape[-1])  # [..., out_dim]

    def __getitem__(self, idx: int | slice) -> nn.Module:
        if isinstance(idx, slice):  # Sequential would rebuild a slice as type(self)(OrderedDict), not an MLP call
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)

    @property
    def net(self) -> MLP:
        """The layer stack, i.e. the module itself (kept for callers that index `head.net[i]`)."""
        return self


def _drop_net_prefix(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Rename an old checkpoint's '<prefix>net.<rest>' keys of an MLP to '<prefix><rest>', in place."""
    old = prefix + "net."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + key[len(old):]] = state_dict.pop(key)


class GRUCell(nn.Module):
    """DreamerV2's layer-normalised GRU: one Linear on cat(x, h) -> 3*units, LayerNorm, then gates.

    A hand-written cell instead of `nn.GRUCell`/cuDNN so that it supports double backward and forward-mode
    AD, and the update gate is biased by -1 so the state is mostly carried over at initialisation. The Linear
    keeps its bias under the LayerNorm, as DreamerV2's (`use_bias=norm is not None`, which is always true).
    """

    def __init__(self, inp: int, units: int, norm: bool = True, update_bias: float = -1.0):
        super().__init__()
        self.units = units
        self.update_bias = update_bias
        self.layer = nn.Linear(inp + units, 3 * units)
        self.norm = nn.LayerNorm(3 * units, eps=1e-3) if norm else nn.Identity()

    def forward(self, x: Tensor, h: Tensor) -> Tensor:  # [B, inp], [B, units] -> [B, units]
        # Under autocast the Linear runs in reduced precision; the norm, the gates and the state h stay float32.
        parts = self.norm(f32(self.layer(torch.cat([x, h], -1))))
        reset, cand, update = parts.chunk(3, -1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update + self.update_bias)
        return update * cand + (1 - update) * h


class ConvEncoder(nn.Module):
    """Stride-2 valid convs, channels depth*2^i: 64x64 -> 31 -> 14 -> 6 -> 2, flattened to 32*depth."""

    def __init__(self, channels: int = 3, depth: int = 48, kernels: tuple[int, ...] = (4, 4, 4, 4),
                 act: type[nn.Module] = ELU):
        super().__init__()
        mods: list[nn.Module] = []
        cin = channels
        for i, k in enumerate(kernels):
            cout = depth * 2**i
            mods += [nn.Conv2d(cin, cout, k, stride=2), act()]
            cin = cout
        self.net = nn.Sequential(*mods)
        with torch.no_grad():
            self.out_dim = int(self.net(torch.zeros(1, channels, 64, 64)).numel())

    def forward(self, x: Tensor) -> Tensor:  # [..., C, 64, 64] in [-0.5, 0.5] -> [..., E]
        lead = x.shape[:-3]
        y = self.net(x.reshape(-1, *x.shape[-3:]))
        return y.reshape(*lead, -1)


class ConvDecoder(nn.Module):
    """Linear to 32*depth at 1x1, then stride-2 transposed convs: 1 -> 5 -> 13 -> 30 -> 64 pixels.

    Output is the mean of a unit-variance Normal over pixels (DreamerV2 image head).
    """

    def __init__(self, feat_dim: int, channels: int = 3, depth: int = 48,
                 kernels: tuple[int, ...] = (5, 5, 6, 6), act: type[nn.Module] = ELU):
        super().__init__()
        self.channels = channels
        self.inp = nn.Linear(feat_dim, 32 * depth)
        mods: list[nn.Module] = []
        cin = 32 * depth
        for i, k in enumerate(kernels):
            last = i == len(kernels) - 1
            cout = channels if last else depth * 2 ** (len(kernels) - i - 2)
            mods.append(nn.ConvTranspose2d(cin, cout, k, stride=2))
            if not last:
                mods.append(act())
            cin = cout
        self.net = nn.Sequential(*mods)

    def forward(self, feat: Tensor) -> Tensor:  # [..., F] -> [..., C, 64, 64]
        lead = feat.shape[:-1]
        x = self.inp(feat.reshape(-1, feat.shape[-1]))
        x = self.net(x.reshape(x.shape[0], -1, 1, 1))
        return x.reshape(*lead, *x.shape[1:])


def unit_normal_log_prob(mean: Tensor, x: Tensor, event_dims: int) -> Tensor:
    """log N(x; mean, 1) summed over the last `event_dims` dims (explicit: torch.func friendly)."""
    lp = -0.5 * (x - mean) ** 2 - 0.5 * LOG_2PI
    return lp.sum(dim=tuple(range(-event_dims, 0))) if event_dims > 0 else lp


def bernoulli_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """log Bernoulli(x; sigmoid(logits)), elementwise; stable for large |logits|."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none")
