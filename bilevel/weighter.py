"""The meta weighter N_α of TEMPO (paper §3.1, appendix C) — usable by any problem.

As the official code's `MLP_meta`: `layers - 1` x [Dense(units) → norm → act], then Dense(1) → BatchNorm →
`w = scale * sigmoid(·) + shift` (default 0.5σ + 0.75: weights in (0.75, 1.25)). Dense layers start with
Keras' glorot-uniform kernels and zero biases, norms use Keras' eps 1e-3. The BatchNorm on the output logit
standardises it over the batch, so from the first step the weights spread over most of their range instead of
sitting at ≈1 (the paper reports that batch normalisation in the weighter matters most).

BatchNorm always uses batch statistics (the official code runs it in training mode always), so it is built
without running statistics: the weighter is then a pure function of (α, inputs), which forward-mode AD and
finite differences need.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from bilevel.precision import f32

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "elu": nn.ELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU,
}
NORMS = ("batch", "layer", "none")


class MetaWeighter(nn.Module):
    def __init__(
        self,
        in_dim: int,
        layers: int = 5,
        units: int = 400,
        act: str = "elu",
        norm: Literal["batch", "layer", "none"] = "batch",
        out_norm: Literal["batch", "none"] = "batch",
        norm_eps: float = 1e-3,
        out_scale: float = 0.5,
        out_shift: float = 0.75,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"weighter layers must be >= 1 (dense layers incl. output), got {layers}")
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown weighter activation {act!r}; accepted: {sorted(ACTIVATIONS)}")
        if norm not in NORMS:
            raise ValueError(f"unknown weighter norm {norm!r}; accepted: {list(NORMS)}")
        if out_norm not in ("batch", "none"):
            raise ValueError(f"unknown weighter out_norm {out_norm!r}; accepted: ['batch', 'none']")
        mods: list[nn.Module] = []
        d = in_dim
        for _ in range(layers - 1):  # hidden dense layers; the last dense layer is the output
            mods.append(nn.Linear(d, units))
            if norm == "batch":
                mods.append(nn.BatchNorm1d(units, eps=norm_eps, track_running_stats=False))
            elif norm == "layer":
                mods.append(nn.LayerNorm(units, eps=norm_eps))
            mods.append(ACTIVATIONS[act]())
            d = units
        mods.append(nn.Linear(d, 1))
        if out_norm == "batch":
            mods.append(nn.BatchNorm1d(1, eps=norm_eps, track_running_stats=False))
        self.net = nn.Sequential(*mods)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.out_scale, self.out_shift = out_scale, out_shift

    def forward(self, x: Tensor) -> Tensor:
        """`x [..., F]` -> weights `[...]` (leading dims flattened for the normalisation)."""
        lead = x.shape[:-1]
        h = x.reshape(-1, x.shape[-1])  # [N, F]
        for m in self.net:  # norms (and their statistics) in float32 when the Linears run under autocast
            h = m(f32(h) if isinstance(m, nn.BatchNorm1d | nn.LayerNorm) else h)
        logits = f32(h.squeeze(-1))  # [N]
        return (self.out_scale * torch.sigmoid(logits) + self.out_shift).reshape(lead)
