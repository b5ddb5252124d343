"""One call does one bilevel step (Algorithm 1 of the TEMPO paper), its phases named after the paper:

    forward       w = N_α(x) on the detached weighter inputs x, per-sample losses and L_low(θ, w): once, at θ
    lower grad    g_θ = ∇θ L_low(θ, w)                       (and ∇θ L_up first, when the graph is freed)
    hypergrad     g_α = strategy: upper gradient -> mixed product (∂²L_low/∂θ∂α)ᵀ v, at θ before θ moves
    lower step    θ <- opt_θ(clip(g_θ))
    α step        α <- opt_α(clip(g_α))                      (every `meta_every` steps)

The strategy (`bilevel.strategies`), its contraction (`bilevel.contractions`) and the engine (`bilevel.engines`)
are registered classes picked by name from the config; this file reads their declarations, never their names.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bilevel import diffopt, stopgrad
from bilevel.config import BilevelConfig
from bilevel.context import RngState, StepContext
from bilevel.contractions import CONTRACTIONS
from bilevel.engines import ENGINES
from bilevel.precision import Precision, autocast_enabled, float32
from bilevel.problem import BilevelProblem
from bilevel.strategies import STRATEGIES
from bilevel.weighter import MetaWeighter

OPTIMIZER_FIELDS = {"lr", "eps", "clip", "weight_decay"}  # WeighterConfig fields of the meta optimizer


@dataclass
class StepResult:
    """What one `BilevelTrainer.step` returns: its metrics, and `problem.step_outputs` of its forward pass."""

    metrics: dict[str, float]
    outputs: Any


def make_optimizer(params: Any, name: str, lr: float, eps: float, weight_decay: float,
                   decoupled: bool = True) -> torch.optim.Optimizer:
    """Adam or SGD. `decoupled=True` applies weight decay as DreamerV2's optimizer does, p <- (1 - wd)·p before
    each step, not scaled by the learning rate: torch's decoupled decay is p <- (1 - lr·wd')·p, so wd' = wd/lr.
    `decoupled=False` is L2 regularisation (wd·p added to the gradient)."""
    if name == "adam":
        if decoupled and weight_decay:
            return torch.optim.Adam(params, lr=lr, eps=eps, weight_decay=weight_decay / lr,
                                    decoupled_weight_decay=True)
        return torch.optim.Adam(params, lr=lr, eps=eps, weight_decay=weight_decay)
    if name == "sgd":
        if decoupled and weight_decay:
            raise ValueError("decoupled weight decay is defined for 'adam'; use decoupled=False with 'sgd'")
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; accepted: ['adam', 'sgd']")


def set_learning_rate(opt: torch.optim.Optimizer, lr: float, weight_decay: float | None = None) -> None:
    """Change an optimizer's learning rate; keep a `make_optimizer` decoupled decay at `weight_decay` per step."""
    for group in opt.param_groups:
        group["lr"] = lr
        if weight_decay is not None and group.get("decoupled_weight_decay") and group["weight_decay"]:
            group["weight_decay"] = weight_decay / lr


def apply_gradients(opt: torch.optim.Optimizer, params: list[Tensor], grads: list[Tensor], clip: float,
                    total_norm: Tensor, step: Any = None) -> None:
    """One optimizer step from given gradients, clipped to global norm `clip` with their precomputed norm."""
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    torch.nn.utils.clip_grads_with_norm_(params, clip, total_norm)
    (step or opt.step)()
    opt.zero_grad(set_to_none=True)


class BilevelTrainer:
    """Trains θ with weighted lower losses and α with the configured hypergradient.

    `lower_opt` may be any torch optimizer; `unroll` additionally requires SGD, Adam or AdamW (the ones
    `bilevel.diffopt` differentiates exactly, every option included). `lower_lr` is η in the hypergradient
    formulas; it defaults to the optimizer's lr. The default lower optimizer is Adam with DreamerV2's decoupled
    weight decay `lower_weight_decay`.
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
        self.lower_opt = lower_opt or make_optimizer(model.parameters(), "adam", lower_lr, lower_eps,
                                                     lower_weight_decay)
        self.lr = float(self.lower_opt.param_groups[0]["lr"]) if lower_opt is not None else lower_lr
        self.lower_clip = lower_clip
        p0 = next(model.parameters())
        device, dtype = p0.device, p0.dtype
        self.weighter: MetaWeighter | None = None
        self.meta_opt: torch.optim.Optimizer | None = None
        if cfg.uses_weighter:
            wc = cfg.weighter
            self.weighter = MetaWeighter(weighter_in_dim, **wc.model_dump(exclude=OPTIMIZER_FIELDS)).to(device, dtype)
            self.meta_opt = make_optimizer(self.weighter.parameters(), "adam", wc.lr, wc.eps, wc.weight_decay)
        self.strategy = STRATEGIES[cfg.strategy](cfg).to(device, dtype)
        self.mixed = CONTRACTIONS[cfg.contraction]()
        self.engine = ENGINES[cfg.engine]()
        if self.strategy.differentiates_optimizer:
            diffopt.DiffOptimizer(self.lower_opt, list(model.parameters()))  # an unsupported optimizer fails now
        # float16 needs loss scaling; its second-order graphs (double backward, unroll, implicit) would underflow
        # or overflow unscaled, so float16 takes the α-gradient only from float32 re-evaluations.
        self.fp16 = precision is not None and precision.mode == "16"
        if self.fp16 and cfg.uses_weighter and not (self.strategy.float16 and self.engine.float16
                                                    and not self.mixed.needs_graph):
            first_order = [c for c in CONTRACTIONS if not CONTRACTIONS[c].needs_graph]
            strategies = [s for s in STRATEGIES if STRATEGIES[s].uses_weighter and STRATEGIES[s].float16]
            engines = [e for e in ENGINES if ENGINES[e].float16]
            raise ValueError(f"precision '16' supports strategies {strategies} with contractions {first_order} on "
                             f"engines {engines}; got {cfg.strategy!r} / {cfg.contraction!r} / {cfg.engine!r} "
                             "(use precision 'bf16' or '32')")
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.fp16)
        self.step_count = 0
        self.nonfinite = 0
        self.nonfinite_streak = 0
        self.max_nonfinite = max_nonfinite

    # ------------------------------------------------------------------------------------------------
    def alpha_grad(self, sc: StepContext) -> list[Tensor]:
        """The hypergradient phase: the engine's α-gradient of the configured strategy and contraction."""
        return self.engine.alpha_grad(sc, self.strategy, self.mixed, self.lower_opt, self.lower_clip)

    def forward(self, problem: BilevelProblem, batch: Any, record_sg: bool | None = None) -> StepContext:
        """The single forward pass at θ that every later phase reuses. `record_sg` keeps its stop-gradient
        values for a finite-difference re-evaluation (`bilevel.stopgrad`); default: when the configured
        α-gradient takes one (`BilevelConfig.replays_stop_gradients`)."""
        if record_sg is None:
            record_sg = self.cfg.replays_stop_gradients
        rng = RngState.capture()
        params = dict(problem.model.named_parameters())
        tape = stopgrad.Tape() if record_sg else None
        with stopgrad.record(tape) if tape is not None else contextlib.nullcontext():
            losses, ctx = problem.lower_losses(batch, params)
        x = problem.weighter_inputs(ctx).detach()
        w = self.strategy.weights(problem, batch, ctx, x, self.weighter, problem.sample_shape(losses))
        lower = problem.lower_objective(losses, w)
        device = next(self.model.parameters()).device
        return StepContext(problem, batch, self.weighter, rng, losses, ctx, x, w, lower, self.lr, self.cfg, tape,
                           reduced=autocast_enabled(device), scaler=self.scaler if self.fp16 else None)

    def lower_grad(self, sc: StepContext, meta: bool = True) -> list[Tensor]:
        """∇θ L_low of the pass (detached), taken so that what the α-gradient needs next is ready and the
        forward graph is freed as early as the configured strategy allows."""
        s, e = self.strategy, self.engine
        needs_graph = meta and (s.needs_graph or (e.uses_contraction and self.mixed.needs_graph))
        # With a re-evaluating contraction, `approx` needs nothing from the forward graph but ∇θ L_up: take it
        # first, then let the lower backward free the graph as it goes (peak memory as without a weighter;
        # for terms_fd that backward also leaves the problem what its loss_deltas may reuse).
        free_graph = not meta or (s.frees_forward_graph and e.uses_contraction and not needs_graph)
        if meta and free_graph and s.uses_weighter:
            sc.upper_grad()
        return [g.detach() for g in sc.lower_grad(create_graph=needs_graph, retain_graph=not free_graph)]

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
        with float32(next(self.model.parameters()).device):  # a difference of reduced-precision losses is noise
            grads = self.alpha_grad(sc)
        return {n: g.detach() for (n, _), g in zip(self.weighter.named_parameters(), grads, strict=True)}

    def step(self, problem: BilevelProblem, batch: Any) -> StepResult:
        """One bilevel step on `batch`; returns its metrics and `problem.step_outputs` of the forward pass."""
        cfg = self.cfg
        sync = torch.cuda.synchronize if next(self.model.parameters()).is_cuda else (lambda: None)
        times = [time.perf_counter()]

        def lap() -> None:
            sync()
            times.append(time.perf_counter())

        meta = cfg.uses_weighter and self.step_count % cfg.meta_every == 0
        sc = self.forward(problem, batch, record_sg=meta and cfg.replays_stop_gradients)  # forward
        g_theta = self.lower_grad(sc, meta)  # lower grad
        theta = list(self.model.parameters())
        if self.fp16:  # unscale in place (GradScaler also records whether the scaled gradients overflowed)
            for p, g in zip(theta, g_theta, strict=True):
                p.grad = g
            self.scaler.unscale_(self.lower_opt)
            g_theta = [p.grad for p in theta]
        lap()
        g_alpha = None
        if meta:
            with float32(theta[0].device):  # hypergrad: a float32 island
                g_alpha = self.alpha_grad(sc)
        lap()

        metrics: dict[str, float] = {}
        # One host sync decides finiteness: the gradient norms are needed for clipping anyway.
        theta_norm = torch.nn.utils.get_total_norm(g_theta)
        alpha_norm = torch.nn.utils.get_total_norm(g_alpha) if g_alpha is not None else theta_norm.new_zeros(())
        lower_value, theta_norm_f, alpha_norm_f = torch.stack(
            [sc.lower.detach(), theta_norm, alpha_norm.to(theta_norm)]).tolist()
        finite = math.isfinite(lower_value) and math.isfinite(theta_norm_f) and math.isfinite(alpha_norm_f)
        if finite:  # lower step
            self.nonfinite_streak = 0
            metrics["grad_norm"] = theta_norm_f
            apply_gradients(self.lower_opt, theta, g_theta, self.lower_clip, theta_norm,
                            step=lambda: self.scaler.step(self.lower_opt))  # a plain step unless float16
        else:
            self.lower_opt.zero_grad(set_to_none=True)
            self.nonfinite += 1
            self.nonfinite_streak += 1
            if self.nonfinite_streak > self.max_nonfinite:
                raise FloatingPointError(
                    f"{self.nonfinite_streak} consecutive non-finite bilevel steps (lower loss "
                    f"{lower_value}); stopping. Lower the learning rates or check the inputs."
                )
        if self.fp16:
            metrics["loss_scale"] = self.scaler.get_scale()
            self.scaler.update()  # halves the scale after an overflow, grows it after a run of finite steps
        lap()
        if finite and g_alpha is not None:  # α step
            assert self.weighter is not None and self.meta_opt is not None
            metrics["hypergrad_norm"] = alpha_norm_f
            apply_gradients(self.meta_opt, list(self.weighter.parameters()), g_alpha, cfg.weighter.clip, alpha_norm)
        lap()
        self.step_count += 1
        metrics.update(self.step_metrics(sc, lower_value, meta=g_alpha is not None))
        t0, t1, t2, t3, t4 = times
        metrics.update({"time_forward": t1 - t0, "time_hypergrad": t2 - t1,
                        "time_lower_update": t3 - t2, "time_meta_update": t4 - t3})
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
                "meta_step": float(meta), "nonfinite_steps": float(self.nonfinite),
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
            "step_count": self.step_count, "nonfinite": self.nonfinite, "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lower_opt.load_state_dict(state["lower_opt"])
        if self.weighter is not None:
            self.weighter.load_state_dict(state["weighter"])
            assert self.meta_opt is not None
            self.meta_opt.load_state_dict(state["meta_opt"])
        self.strategy.load_state_dict(state["strategy"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step_count, self.nonfinite = state["step_count"], state["nonfinite"]
