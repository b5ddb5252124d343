"""Everything one bilevel step has computed, shared by the strategies so work is done once.

The forward pass at θ is run once (`lower_losses`), the weighter inputs `x` are detached and held
fixed, and the global RNG state from before that pass is kept so any re-evaluation of the lower
loss (forward-mode AD, finite differences, unrolling) sees exactly the same sampling noise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from bilevel import stopgrad
from bilevel.precision import float32
from bilevel.problem import BilevelProblem, Params
from bilevel.stopgrad import Tape

if TYPE_CHECKING:
    from bilevel.config import BilevelConfig


@dataclass
class RngState:
    cpu: Tensor
    cuda: list[Tensor] | None

    @staticmethod
    def capture() -> RngState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return RngState(torch.get_rng_state(), cuda)

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Run a block with the captured noise, then return the RNG to where it was."""
        devices = list(range(torch.cuda.device_count())) if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


def grads_or_zeros(out: Tensor | list[Tensor], inputs: list[Tensor], **kw: Any) -> list[Tensor]:
    gs = torch.autograd.grad(out, inputs, allow_unused=True, **kw)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(gs, inputs, strict=True)]


def dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))


def norm(a: list[Tensor]) -> Tensor:
    return torch.sqrt(sum((x.detach() ** 2).sum() for x in a))


@dataclass
class StepContext:
    problem: BilevelProblem
    batch: Any
    weighter: nn.Module | None
    rng: RngState
    losses: Any  # per-sample lower losses from the forward pass at θ
    lower_ctx: Any  # the problem's context from that same pass (`lower_losses`' second output)
    x: Tensor  # detached weighter inputs [..., F]
    w: Tensor  # weights [...] (graph to α when a weighter is used)
    lower: Tensor  # scalar weighted lower objective
    lr: float  # lower learning rate η
    cfg: BilevelConfig  # the trainer's config when the step ran (strategies and contractions read it here)
    sg_tape: Tape | None = None  # stop-gradient values of the forward pass (kept for `terms_fd` only)
    reduced: bool = False  # the forward pass ran under a reduced-precision autocast
    scaler: torch.amp.GradScaler | None = None  # float16: backward passes through the forward graph scale the loss
    _lower_grad: list[Tensor] | None = field(default=None, repr=False)
    _lower_grad_graph: bool = field(default=False, repr=False)
    _upper: Tensor | None = field(default=None, repr=False)
    _upper_grad: list[Tensor] | None = field(default=None, repr=False)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.problem.model.named_parameters()]

    @property
    def theta(self) -> list[Tensor]:
        return [p for _, p in self.problem.model.named_parameters()]

    @property
    def alpha(self) -> list[Tensor]:
        assert self.weighter is not None
        return list(self.weighter.parameters())

    def lower_grad(self, create_graph: bool = False, retain_graph: bool = True) -> list[Tensor]:
        """∇θ L_low at θ from the shared forward pass (cached; with a graph when asked).

        `retain_graph=False` frees the forward pass's saved tensors as the backward runs (lower peak
        memory); only for callers that need no further backward through that pass.
        """
        if self._lower_grad is None or (create_graph and not self._lower_grad_graph):
            lower = self.lower if self.scaler is None else self.scaler.scale(self.lower)  # grads stay scaled
            self._lower_grad = grads_or_zeros(
                lower, self.theta, create_graph=create_graph, retain_graph=retain_graph or create_graph
            )
            self._lower_grad_graph = create_graph
        return self._lower_grad

    def upper(self) -> Tensor:
        if self._upper is None:
            if self.reduced:  # L_up in float32, from a float32 pass with the forward's noise and sg values
                replay = (stopgrad.replay(self.sg_tape, partial=True) if self.sg_tape is not None
                          else contextlib.nullcontext())
                with float32(self.lower.device), self.rng.replay(), replay:
                    ctx = self.problem.upper_context(self.batch, dict(self.problem.model.named_parameters()))
                    self._upper = self.problem.upper_objective(self.batch, ctx)
            else:
                self._upper = self.problem.upper_objective(self.batch, self.lower_ctx)
        return self._upper

    def upper_value(self) -> float:
        """L_up for the metrics: the value the hypergradient used, else one evaluation without a graph."""
        if self._upper is not None:
            return float(self._upper.detach())
        with torch.no_grad():
            return float(self.problem.upper_objective(self.batch, self.lower_ctx))

    def upper_grad(self) -> list[Tensor]:
        """∇θ L_up at θ from the SAME forward pass (θ'≈θ), zero outside the problem's upper params (cached)."""
        if self._upper_grad is None:  # (after a reduced-precision forward, L_up is a float32 pass: no scaling)
            self._upper_grad = upper_grad_at(self.problem, self.upper(), self.theta, self.names)
        return self._upper_grad

    # -- functional re-evaluation (same noise, fixed weighter inputs) --------------------------------
    def lower_at(self, params: Params, alpha: Params | None = None) -> Tensor:
        """L_low(θ=params, α) re-evaluated with the step's noise and weighter inputs held fixed, and the forward
        pass's stop-gradient values replayed when it recorded them (a finite difference then estimates the
        derivative autograd takes)."""
        replay = stopgrad.replay(self.sg_tape) if self.sg_tape is not None else contextlib.nullcontext()
        with self.rng.replay(), replay:
            losses, _ = self.problem.lower_losses(self.batch, params)
        return self.problem.lower_objective(losses, self.weights(alpha))

    def weights(self, alpha: Params | None = None) -> Tensor:
        assert self.weighter is not None
        if alpha is None:
            return self.weighter(self.x)
        return torch.func.functional_call(self.weighter, alpha, (self.x,))


def upper_grad_at(problem: BilevelProblem, upper: Tensor, theta: list[Tensor], names: list[str]) -> list[Tensor]:
    allowed = problem.upper_parameter_names()
    if allowed is None:
        return [g.detach() for g in grads_or_zeros(upper, theta, retain_graph=True)]
    allowed_set = set(allowed)
    idx = [i for i, n in enumerate(names) if n in allowed_set]
    if not idx:
        raise ValueError(f"upper_parameter_names() matched no parameter of the model: {allowed[:5]}...")
    sub = grads_or_zeros(upper, [theta[i] for i in idx], retain_graph=True)
    out = [torch.zeros_like(p) for p in theta]
    for i, g in zip(idx, sub, strict=True):
        out[i] = g.detach()
    return out
