"""Weighted linear least squares: a bilevel problem whose hypergradients have closed forms.

    lower:  l_i(θ) = ½ (x_i·θ - y_i)²,   L_low = mean_i w_i l_i,   w_i = 0.5 σ(a·f_i + b) + 0.75
    upper:  L_up(θ) = ½ mean_j (x'_j·θ - y'_j)²  on a separate (validation) set
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bilevel import BilevelProblem


class LSQProblem(BilevelProblem):
    def __init__(self, d: int = 4, n: int = 12, m: int = 7, k: int = 3, seed: int = 0, noise: float = 0.0):
        g = torch.Generator().manual_seed(seed)
        r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
        self.model = nn.Linear(d, 1, bias=False).double()
        with torch.no_grad():
            self.model.weight.copy_(r(1, d))
        self.batch = {"x": r(n, d), "y": r(n), "f": r(n, k), "xv": r(m, d), "yv": r(m)}
        self.noise = noise  # > 0 adds sampling noise to the lower loss (for noise-fixing tests)

    def lower_losses(self, batch, params):
        pred = self.call(params, batch["x"]).squeeze(-1)  # [N]
        if self.noise:
            pred = pred + self.noise * torch.randn_like(pred)
        res = pred - batch["y"]
        return 0.5 * res**2, {"res": res, "params": params}

    def weighter_inputs(self, ctx):
        return self.batch["f"]

    def upper_objective(self, batch, ctx):
        pred = self.call(ctx["params"], batch["xv"]).squeeze(-1)
        return 0.5 * ((pred - batch["yv"]) ** 2).mean()

    def upper_losses(self, batch, ctx):
        return 0.5 * ctx["res"].detach() ** 2


def closed_form(problem: LSQProblem, weighter: nn.Module, eta: float, kind: str, iters: int = 0) -> Tensor:
    """Hand-derived dL_up/dα (flattened [a, b] of a single affine layer) for one SGD lower step."""
    b = problem.batch
    x, y, f, xv, yv = b["x"], b["y"], b["f"], b["xv"], b["yv"]
    n = x.shape[0]
    th = problem.model.weight.detach().reshape(-1)
    lin = weighter.net[0]
    a, c = lin.weight.detach().reshape(-1), lin.bias.detach().reshape(())
    z = f @ a + c
    s = torch.sigmoid(z)
    w = 0.5 * s + 0.75
    dw = 0.5 * s * (1 - s)  # dw_i/dz_i
    res = x @ th - y  # [N]
    g_up = lambda t: xv.T @ (xv @ t - yv) / xv.shape[0]  # noqa: E731
    H = (x.T * w) @ x / n
    if kind == "approx":
        v = eta * g_up(th)
    elif kind == "unroll":
        th1 = th - eta * (x.T @ (w * res)) / n
        v = eta * g_up(th1)
    elif kind == "cg":
        v = torch.linalg.solve(H, g_up(th))
    elif kind == "neumann":
        I = torch.eye(len(th), dtype=th.dtype)
        v = eta * sum(torch.linalg.matrix_power(I - eta * H, j) for j in range(iters + 1)) @ g_up(th)
    else:
        raise ValueError(kind)
    # dL_up/dw_i = -(res_i x_i · v) / N ; chain through w_i = 0.5σ(z_i)+0.75, z_i = a·f_i + c
    dL_dz = -(res * (x @ v)) / n * dw
    return torch.cat([f.T @ dL_dz, dL_dz.sum().reshape(1)])
