"""The meta weighter N_α of TEMPO (paper §3.1, appendix C) — usable by any problem.

Dense layers with normalisation + activation after each hidden layer, and a bounded output
`w = scale * sigmoid(x) + shift` (default 0.5*σ+0.75, so weights stay in (0.75, 1.25) and start ≈ 1).
BatchNorm always uses batch statistics (the official code runs it in training mode always), so we
build it without running statistics: the weighter is then a pure function of (α, inputs), which
forward-mode AD and finite differences need.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

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
        mods: list[nn.Module] = []
        d = in_dim
        for _ in range(layers - 1):  # hidden dense layers; the last dense layer is the output
            mods.append(nn.Linear(d, units))
            if norm == "batch":
                mods.append(nn.BatchNorm1d(units, track_running_stats=False))
            elif norm == "layer":
                mods.append(nn.LayerNorm(units))
            mods.append(ACTIVATIONS[act]())
            d = units
        mods.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*mods)
        self.out_scale, self.out_shift = out_scale, out_shift

    def forward(self, x: Tensor) -> Tensor:
        """`x [..., F]` -> weights `[...]` (leading dims flattened for the normalisation)."""
        lead = x.shape[:-1]
        logits = self.net(x.reshape(-1, x.shape[-1])).squeeze(-1)  # [N]
        return (self.out_scale * torch.sigmoid(logits) + self.out_shift).reshape(lead)
