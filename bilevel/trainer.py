"""One call does one bilevel step (Algorithm 1 of the TEMPO paper), its phases named after the paper:

    forward       w = N_α(x) on the detached weighter inputs x, per-sample losses and L_low(θ, w): once, at θ
    upper grad    ∇θ L_up of that pass, first when the lower backward will free the pass's graph
    lower grad    g_θ = ∇θ L_low(θ, w)
    hypergrad     g_α = the strategy's formula in its engine's primitives, at θ before θ moves
    lower step    θ <- opt_θ(clip(g_θ))
    meta step     α <- opt_α(clip(g_α))                      (every `meta_every` steps)

`BilevelTrainer.step` runs them in this order, which is required: see the comments there. The strategy
(`bilevel.strategies`), its contraction (`bilevel.contractions`) and the engine (`bilevel.engines`) are registered
classes picked by name from the config; this file reads their declarations, never their names. The two steps are
one `bilevel.updater.Updater` (clipping, non-finite skips, float16 loss scaling), the agent's mechanism too.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor, nn

from bilevel.config import BilevelConfig
from bilevel.context import PassCache, RngState, StepContext
from bilevel.diffopt import DiffOptimizer
from bilevel.precision import Precision, float32
from bilevel.problem import BilevelProblem
from bilevel.registry import CONTRACTIONS, ENGINES, STRATEGIES
from bilevel.stopgrad import Tape, record
from bilevel.updater import Part, Updater, loss_scaler, make_optimizer, set_learning_rate
from bilevel.weighter import MetaWeighter

__all__ = ["OPTIMIZER_FIELDS", "PHASES", "PHASE_METRICS", "BilevelTrainer", "StepResult", "make_optimizer",
           "set_learning_rate"]

OPTIMIZER_FIELDS = {"lr", "eps", "clip", "weight_decay"}  # WeighterConfig fields of the meta optimizer
# `step` logs the seconds of each phase as `time_<phase>` (lower_update includes the float16 scaler's update)
PHASES = ("forward", "upper_grad", "lower_grad", "hypergrad", "lower_update", "meta_update")
PHASE_METRICS = tuple(f"time_{phase}" for phase in PHASES)


@dataclass
class StepResult:
    """What one `BilevelTrainer.step` returns: its metrics, and `problem.step_outputs` of its forward pass."""

    metrics: dict[str, float]
    outputs: Any


def check_float16(cfg: BilevelConfig) -> None:
    """A one-line ValueError where `cfg`'s step cannot run at precision '16'. float16 needs loss scaling; its
    second-order graphs (double backward, unroll, implicit) would underflow or overflow unscaled, so float16 takes the
    α-gradient only from float32 re-evaluations, and ∇θ L_up from a float32 pass."""
    if not cfg.uses_weighter:
        return
    strategy = STRATEGIES[cfg.strategy]
    engine = ENGINES[cfg.engine](CONTRACTIONS[cfg.contraction](), None)  # needs_graph reads the contraction only
    if not (strategy.float16 and engine.float16 and not engine.needs_graph(strategy.asks)):
        first_order = [c for c in CONTRACTIONS if not CONTRACTIONS[c].needs_graph]
        strategies = [s for s in STRATEGIES if STRATEGIES[s].uses_weighter and STRATEGIES[s].float16]
        engines = [e for e in ENGINES if ENGINES[e].float16]
        raise ValueError(f"precision '16' supports strategies {strategies} with contractions {first_order} on "
                         f"engines {engines}; got {cfg.strategy!r} / {cfg.contraction!r} / {cfg.engine!r} "
                         "(use precision 'bf16' or '32')")
    if cfg.hypergrad_precision != "32":
        raise ValueError(f"precision '16' takes ∇θ L_up from a float32 pass (an unscaled float16 backward would "
                         f"underflow): hypergrad_precision must be '32', got {cfg.hypergrad_precision!r}")


class BilevelTrainer:
    """Trains θ with weighted lower losses and α with the configured hypergradient.

    `lower_opt` may be any torch optimizer; `unroll` additionally requires SGD, Adam or AdamW (the ones
    `bilevel.diffopt` differentiates exactly, every option included). `lower_lr` is η in the hypergradient
    formulas; it defaults to the optimizer's lr. The default lower optimizer is Adam with DreamerV2's decoupled
    weight decay `lower_weight_decay`. `precision` (default float32) is the one source of the step's precision:
    the forward pass runs in it whatever autocast surrounds the call, and float16 adds loss scaling.
    """

    def __init__(
        self,
        model: nn.Module,
        weighter_in_dim: int,
        config: BilevelConfig | None = None,
        lower_opt: torch.optim.Optimizer | None = None,
        lower_lr: float = 3e-4,
        lower_eps: float = 1e-5,
        lower_clip: float = 100.0,
        lower_weight_decay: float = 0.0,
        max_nonfinite: int = 100,
        precision: Precision | None = None,
    ) -> None:
        self.cfg = cfg = config or BilevelConfig()
        if lower_lr <= 0:
            raise ValueError(f"lower_lr must be > 0, got {lower_lr}")
        self.model = model
        self.lr = float(lower_opt.param_groups[0]["lr"]) if lower_opt is not None else lower_lr
        lower_opt = lower_opt or make_optimizer(model.parameters(), "adam", lower_lr, lower_eps, lower_weight_decay)
        p0 = next(model.parameters())
        device, dtype = p0.device, p0.dtype
        self.precision = precision or Precision(device, "32")
        parts = {"lower": Part(lower_opt, lower_clip)}
        self.weighter: MetaWeighter | None = None
        if cfg.uses_weighter:
            wc = cfg.weighter
            self.weighter = MetaWeighter(weighter_in_dim, **wc.model_dump(exclude=OPTIMIZER_FIELDS)).to(device, dtype)
            meta_opt = make_optimizer(self.weighter.parameters(), "adam", wc.lr, wc.eps, wc.weight_decay)
            parts["meta"] = Part(meta_opt, wc.clip, scaled=False)  # g_α comes from float32 re-evaluations
        self.strategy = STRATEGIES[cfg.strategy](cfg).to(device, dtype)
        self.engine = ENGINES[cfg.engine](CONTRACTIONS[cfg.contraction](), parts["lower"])
        if self.strategy.differentiates_optimizer:
            DiffOptimizer(lower_opt, list(model.parameters()))  # an unsupported optimizer fails now
        self.fp16 = self.precision.mode == "16"
        if self.fp16:
            check_float16(cfg)
        self.updater = Updater(parts, loss_scaler(self.precision), max_nonfinite, what="bilevel steps")
        self.step_count = 0

    # -- views of the updater (recipes set learning rates on these; tests and checks read them) ----------------
    @property
    def lower_opt(self) -> torch.optim.Optimizer:
        return self.updater.parts["lower"].opt

    @property
    def meta_opt(self) -> torch.optim.Optimizer | None:
        part = self.updater.parts.get("meta")
        return None if part is None else part.opt

    @property
    def lower_clip(self) -> float:
        return self.updater.parts["lower"].clip

    @property
    def nonfinite(self) -> int:
        """Steps skipped so far because a loss or gradient norm was not finite."""
        return self.updater.skipped

    # -- the phases ------------------------------------------------------------------------------------------
    def forward(self, problem: BilevelProblem, batch: Any, record_sg: bool | None = None) -> StepContext:
        """The single forward pass at θ that every later phase reuses, in the trainer's precision. `record_sg` keeps
        its stop-gradient values for a finite-difference re-evaluation (`bilevel.stopgrad`); default: when the
        configured α-gradient takes one (`BilevelConfig.replays_stop_gradients`)."""
        if record_sg is None:
            record_sg = self.cfg.replays_stop_gradients
        rng = RngState.capture()
        params = dict(problem.model.named_parameters())
        tape = Tape() if record_sg else None
        with self.precision.pinned():
            with record(tape) if tape is not None else contextlib.nullcontext():
                losses, ctx = problem.lower_losses(batch, params)
            x = problem.weighter_inputs(ctx).detach()
            w = self.strategy.weights(problem, batch, ctx, x, self.weighter, problem.sample_shape(losses))
            lower = problem.lower_objective(losses, w)
        scale = self.updater.scale if self.fp16 else None  # the lower backward then takes the scaled loss
        return StepContext(problem, batch, self.weighter, self.lr, self.cfg, rng, losses, ctx, x, w, lower, tape,
                           reduced=self.precision.reduced, cache=PassCache(scale=scale))

    def lower_grad(self, sc: StepContext, meta: bool = True,
                   lap: Callable[[], None] = lambda: None) -> list[Tensor]:
        """The upper-grad and lower-grad phases of `step`, in their required order: ∇θ L_low of the pass (detached,
        scaled under float16), with a graph when the engine's primitive differentiates it again. When the lower
        backward can free the pass's graph (the strategy reads nothing of it but ∇θ L_up, and the primitive does
        not differentiate it), ∇θ L_up is taken first and the backward frees the graph as it goes (peak memory as
        without a weighter; for terms_fd that backward also leaves the problem what its loss_deltas may reuse).
        `lap` is called between the two phases (`step` times each)."""
        s = self.strategy
        needs_graph = meta and self.engine.needs_graph(s.asks)
        free_graph = not meta or (s.frees_forward_graph and not needs_graph)
        with self.precision.pinned():  # L_up, when a float32 trainer is called under autocast
            if meta and free_graph and s.uses_weighter:
                if self.concurrent_upper():
                    lap()  # the upper grad's time is counted in the lower grad's, which it overlaps
                    return [g.detach() for g in self.both_grads(sc, needs_graph)]
                sc.upper_grad()  # upper grad
            lap()
            return [g.detach() for g in sc.lower_grad(create_graph=needs_graph, retain_graph=not free_graph)]

    def concurrent_upper(self) -> bool:
        """Whether `lower_grad` overlaps the upper and lower backwards (`BilevelConfig.concurrent_upper`). 'auto' is
        where it measured faster (benchmarks/README.md): a CPU with ≥ 2 intra-op threads, when ∇θ L_up is read from
        the pass's graph (float32, or bf16 with `hypergrad_precision` 'step'); not for a float32 upper pass of its
        own after bf16, which a single intra-op thread slows more than the overlap gains at `dmc_state`."""
        mode = self.cfg.concurrent_upper
        if mode == "auto":
            p = self.precision
            own_pass = p.reduced and self.cfg.hypergrad_precision == "32"
            return p.device.type == "cpu" and not own_pass and torch.get_num_threads() >= 2
        return mode == "on"

    def both_grads(self, sc: StepContext, needs_graph: bool) -> list[Tensor]:
        """∇θ L_up in a second thread while this one takes ∇θ L_low. Both backwards are chains of small sequential
        ops through the same 50-step recurrence, which a second intra-op thread barely speeds up; run side by side
        with one intra-op thread each, they take the time of about one. After ∇θ L_up the second thread does what
        the α-gradient needs only that for (`Strategy.prepare`: terms_fd's float32 passes). Its passes may replay
        the step's noise through the global RNG state and re-parametrise the model (`torch.func.functional_call`)
        because this thread only runs a backward meanwhile. The values are the sequential order's (up to the
        rounding of a matmul's thread count: the second thread's passes run on one intra-op thread). The pass's
        graph must outlive both (the upper backward reads it while the lower one runs), unless L_up is a float32
        pass of its own (`StepContext.upper_own_pass`)."""
        threads, failed = torch.get_num_threads(), []

        def upper() -> None:
            torch.set_num_threads(1)
            try:
                with self.precision.pinned():  # autocast state is per thread
                    sc.upper_grad()
                    self.strategy.prepare(sc, self.engine)
            except BaseException as e:  # re-raised in the caller's thread
                failed.append(e)

        torch.set_num_threads(1)
        worker = threading.Thread(target=upper, name="upper-grad")
        worker.start()
        try:
            lower = sc.lower_grad(create_graph=needs_graph, retain_graph=not sc.upper_own_pass)
        finally:
            worker.join()
            torch.set_num_threads(threads)
        if failed:
            raise failed[0]
        return lower

    def alpha_grad(self, sc: StepContext) -> list[Tensor]:
        """The hypergrad phase: the strategy's α-gradient from the primitives its engine computes, in float32 whatever
        the step's precision (a difference of reduced-precision losses is rounding noise)."""
        with float32(sc.lower.device):
            return self.strategy.alpha_grad(sc, self.engine)

    def hypergradient(self, problem: BilevelProblem, batch: Any) -> dict[str, Tensor]:
        """The α-gradient one `step` on `batch` would apply (before clipping), by weighter parameter name.

        Nothing is applied: θ, α, both optimizers' states and the step counter are left as they are. Like `step`
        it draws the forward pass's noise from the global RNG (seed it to compare configurations); state the
        problem itself keeps (e.g. an upper loss's moving statistics) is the problem's business.
        """
        if self.weighter is None:
            raise ValueError(f"strategy {self.cfg.strategy!r} has no weighter, so there is no α-gradient")
        sc = self.forward(problem, batch)
        self.lower_grad(sc, meta=True)
        grads = self.alpha_grad(sc)
        return {n: g.detach() for (n, _), g in zip(self.weighter.named_parameters(), grads, strict=True)}

    def step(self, problem: BilevelProblem, batch: Any) -> StepResult:
        """One bilevel step on `batch`; returns its metrics and `problem.step_outputs` of the forward pass. Every
        phase runs in the trainer's precision (the hypergrad in float32), whatever autocast surrounds the call."""
        with self.precision.pinned():
            cfg, updater = self.cfg, self.updater
            theta = list(self.model.parameters())
            sync = torch.cuda.synchronize if theta[0].is_cuda else (lambda: None)
            times = [time.perf_counter()]

            def lap() -> None:
                sync()
                times.append(time.perf_counter())

            meta = cfg.uses_weighter and self.step_count % cfg.meta_every == 0
            # forward: the one pass at θ; its noise and (for finite differences) its stop-gradient values are kept.
            sc = self.forward(problem, batch, record_sg=meta and cfg.replays_stop_gradients)
            lap()
            # upper grad, then lower grad: ∇θ L_up must be read from the pass's graph before a lower backward that
            # frees it; the lower backward must run before the hypergrad, which may reuse what it leaves (TEMPO's
            # loss_deltas reads the heads' per-sample gradients its hooks capture) or differentiate its graph again.
            g_theta = updater.unscale("lower", theta, self.lower_grad(sc, meta, lap))
            lap()
            # hypergrad: at θ, before the lower step moves it (in float32).
            g_alpha = self.alpha_grad(sc) if meta else None
            lap()
            # lower step, then meta step: both or neither (one host sync decides whether the loss and both gradient
            # norms are finite; the norms are needed for clipping anyway).
            grads = {"lower": (theta, g_theta)}
            if g_alpha is not None:
                assert self.weighter is not None
                grads["meta"] = (list(self.weighter.parameters()), g_alpha)
            check = updater.check(grads, {"lower loss": sc.lower})
            metrics: dict[str, float] = {}
            if check.finite:
                metrics["grad_norm"] = check.norms["lower"]
            updater.apply(check, "lower")
            loss_scale = updater.finish()  # float16: the scale this step ran with, then its adjustment
            if loss_scale is not None:
                metrics["loss_scale"] = loss_scale
            lap()
            if check.finite and g_alpha is not None:
                metrics["hypergrad_norm"] = check.norms["meta"]
            updater.apply(check, "meta")
            lap()
            self.step_count += 1
            metrics.update(self.step_metrics(sc, check.values["lower loss"], meta=g_alpha is not None))
            metrics.update({key: b - a for key, (a, b) in zip(PHASE_METRICS, pairwise(times), strict=True)})
            return StepResult(metrics, problem.step_outputs(sc.lower_ctx))  # the pass's graph dies with `sc` here

    def step_metrics(self, sc: StepContext, lower_value: float, meta: bool) -> dict[str, float]:
        """Losses and weight statistics of the step's forward pass (no graph is built)."""
        problem = sc.problem
        upper = sc.upper_value()  # first: an upper loss with moving statistics updates them here, as before
        with torch.no_grad():
            w = sc.w.detach()
            metrics = {}
            if self.weighter is not None and type(problem).upper_losses is not BilevelProblem.upper_losses:
                # Do the weights follow the task loss? Pearson correlation of w with the per-sample upper losses.
                per = problem.upper_losses(sc.batch, sc.lower_ctx).detach().reshape(-1).to(w)
                corr = float(torch.corrcoef(torch.stack([w.reshape(-1), per]))[0, 1])
                if math.isfinite(corr):  # undefined when either side is constant
                    metrics["weight_upper_corr"] = corr
            metrics.update({
                "lower_loss": lower_value,
                "lower_loss_unweighted": float(problem.lower_objective(sc.losses, torch.ones_like(w))),
                "upper_loss": upper,
                "weight_mean": float(w.mean()), "weight_std": float(w.std()) if w.numel() > 1 else 0.0,
                "weight_min": float(w.min()), "weight_max": float(w.max()),
                "meta_step": float(meta), "nonfinite_steps": float(self.updater.skipped),
            })
            metrics.update(problem.step_metrics(sc.batch, sc.lower_ctx, sc.losses, w))
        return metrics

    # ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "lower_opt": self.lower_opt.state_dict(),
            "weighter": None if self.weighter is None else self.weighter.state_dict(),
            "meta_opt": None if self.meta_opt is None else self.meta_opt.state_dict(),
            "strategy": self.strategy.state_dict(),  # e.g. the naive baseline's moving statistics
            "step_count": self.step_count, "nonfinite": self.updater.skipped, "scaler": self.updater.scaler_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lower_opt.load_state_dict(state["lower_opt"])
        if self.weighter is not None:
            self.weighter.load_state_dict(state["weighter"])
            assert self.meta_opt is not None
            self.meta_opt.load_state_dict(state["meta_opt"])
        self.strategy.load_state_dict(state["strategy"])
        self.updater.load_scaler_state(state.get("scaler"))
        self.step_count, self.updater.skipped = state["step_count"], state["nonfinite"]
