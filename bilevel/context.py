"""One bilevel step's forward pass, as an immutable record, and the derivatives of it that several phases read.

The forward pass at θ is run once (`BilevelTrainer.forward`): the per-sample losses, the detached weighter inputs
`x`, the weights and L_low, with the global RNG state from before the pass kept so any re-evaluation of the lower
loss (forward-mode AD, finite differences, unrolling) sees exactly the same sampling noise. `StepContext` holds that
record (frozen: no phase can change what the pass was) and one explicit `PassCache` of the derivatives taken from
its graph, each at most once. The lower backward frees the graph when nothing after it reads the graph, so the
order of the phases matters: it is written once, in `BilevelTrainer.step` (and ∇θ L_up asked for after the graph
was freed says so).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from bilevel.precision import float32
from bilevel.problem import BilevelProblem, Params
from bilevel.stopgrad import Tape, replay

if TYPE_CHECKING:
    from bilevel.config import BilevelConfig


@dataclass(frozen=True)
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
class PassCache:
    """What the phases of a step take from the forward pass's graph, each at most once.

    `scale`: float16 loss scaling of the lower backward (the lower step's gradients stay scaled until its
    `bilevel.updater.Updater` unscales them); None otherwise. `graph_freed`: a lower backward without
    `retain_graph` ran, so nothing else can backpropagate through the pass."""

    scale: Callable[[Tensor], Tensor] | None = None
    lower_grad: list[Tensor] | None = None
    lower_grad_graph: bool = False
    upper: Tensor | None = None
    upper_ctx: Any = None  # `StepContext.float32_context`: a float32 upper-context pass at θ (L_up's own, or not)
    upper_ctx_sg: int = 0  # where that pass's replay of the stop-gradient tape stopped
    upper_ctx_graph: bool = False  # that pass kept its graph
    prepared: Any = None  # what the contraction did ahead, beside the lower backward (`Contraction.prepare`)
    upper_grad: list[Tensor] | None = None
    graph_freed: bool = False


@dataclass(frozen=True)
class StepContext:
    """The step's forward pass at θ (what strategies, contractions and engines read) and its `cache`."""

    problem: BilevelProblem
    batch: Any
    weighter: nn.Module | None
    lr: float  # lower learning rate η
    cfg: BilevelConfig  # the trainer's config when the step ran (strategies and contractions read it here)
    # what the pass produced
    rng: RngState  # the global RNG state before the pass: re-evaluations replay its noise
    losses: Any  # per-sample lower losses
    lower_ctx: Any  # the problem's context from that same pass (`lower_losses`' second output)
    x: Tensor  # detached weighter inputs [..., F]
    w: Tensor  # weights [...] (graph to α when a weighter is used)
    lower: Tensor  # scalar weighted lower objective
    sg_tape: Tape | None = None  # stop-gradient values of the pass (kept when a contraction replays them)
    reduced: bool = False  # the pass ran in reduced precision (the trainer's `precision`)
    cache: PassCache = field(default_factory=PassCache, repr=False, compare=False)
    # θ's (name, parameter) pairs, read once when the step starts: a re-evaluation in the upper-grad thread
    # re-parametrises the module (`functional_call`) while this thread takes ∇θ L_low of these very tensors.
    named_theta: tuple[tuple[str, Tensor], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "named_theta", tuple(self.problem.model.named_parameters()))

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.named_theta]

    @property
    def theta(self) -> list[Tensor]:
        return [p for _, p in self.named_theta]

    @property
    def upper_own_pass(self) -> bool:
        """L_up comes from a float32 pass of its own: the forward pass ran in reduced precision and the config keeps
        the hypergradient's inputs in float32 (`BilevelConfig.hypergrad_precision`)."""
        return self.reduced and self.cfg.hypergrad_precision == "32"

    @property
    def alpha(self) -> list[Tensor]:
        assert self.weighter is not None
        return list(self.weighter.parameters())

    def lower_grad(self, create_graph: bool = False, retain_graph: bool = True) -> list[Tensor]:
        """∇θ L_low at θ from the pass (cached; with a graph when asked; scaled under float16).

        `retain_graph=False` frees the pass's saved tensors as the backward runs (lower peak memory); only for
        callers that need no further backward through that pass.
        """
        c = self.cache
        if c.lower_grad is None or (create_graph and not c.lower_grad_graph):
            lower = self.lower if c.scale is None else c.scale(self.lower)
            keep = retain_graph or create_graph
            c.lower_grad = grads_or_zeros(lower, self.theta, create_graph=create_graph, retain_graph=keep)
            c.lower_grad_graph = create_graph
            c.graph_freed = c.graph_freed or not keep
        return c.lower_grad

    def upper(self) -> Tensor:
        """L_up at θ: on the pass's own context, or (`upper_own_pass`) from a float32 pass with the pass's noise and
        stop-gradient values, whose context is kept for `terms_fd` (∇θ L_up through a bfloat16 graph is visibly
        off). Cached."""
        c = self.cache
        if c.upper is None:
            if self.upper_own_pass:
                ctx, _ = self.float32_context(graph=True)
                with float32(self.lower.device):
                    c.upper = self.problem.upper_objective(self.batch, ctx)
            else:
                c.upper = self.problem.upper_objective(self.batch, self.lower_ctx)
        return c.upper

    def float32_context(self, graph: bool = False) -> tuple[Any, int]:
        """The problem's `upper_context` at θ from a float32 pass with this pass's noise and stop-gradient values
        (with a graph when asked; cached), and where its replay of the stop-gradient tape stopped."""
        c = self.cache
        if c.upper_ctx is None or (graph and not c.upper_ctx_graph):
            tape = replay(self.sg_tape, partial=True) if self.sg_tape is not None else contextlib.nullcontext()
            with (float32(self.lower.device), torch.set_grad_enabled(graph), self.rng.replay(), tape as cur):
                c.upper_ctx = self.problem.upper_context(self.batch, dict(self.named_theta))
            c.upper_ctx_sg, c.upper_ctx_graph = (cur.i if cur is not None else 0), graph
        return c.upper_ctx, c.upper_ctx_sg

    def upper_value(self) -> float:
        """L_up for the metrics: the value the hypergradient used, else one evaluation without a graph."""
        if self.cache.upper is not None:
            return float(self.cache.upper.detach())
        with torch.no_grad():
            return float(self.problem.upper_objective(self.batch, self.lower_ctx))

    def upper_grad(self) -> list[Tensor]:
        """∇θ L_up at θ from the SAME pass (θ'≈θ), zero outside the problem's upper params (cached). When L_up is a
        float32 pass of its own (`upper_own_pass`) it needs no loss scaling and no graph of the pass; otherwise it
        must be taken before a lower backward frees that graph."""
        c = self.cache
        if c.upper_grad is None:
            try:
                c.upper_grad = upper_grad_at(self.problem, self.upper(), self.theta, self.names)
            except RuntimeError as e:  # torch's message does not say which backward came first
                if not c.graph_freed:
                    raise
                raise RuntimeError("∇θ L_up needs the forward pass's graph, which the lower backward freed: take it "
                                   "first (the order of BilevelTrainer.step)") from e
        return c.upper_grad

    # -- functional re-evaluation (same noise, fixed weighter inputs) --------------------------------
    def lower_at(self, params: Params, alpha: Params | None = None) -> Tensor:
        """L_low(θ=params, α) re-evaluated with the step's noise and weighter inputs held fixed, and the pass's
        stop-gradient values replayed when it recorded them (a finite difference then estimates the derivative
        autograd takes)."""
        sg = replay(self.sg_tape) if self.sg_tape is not None else contextlib.nullcontext()
        with self.rng.replay(), sg:
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
