"""Validated configuration of the bilevel trainer (pydantic). Bad values fail here, before any work."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The registries only: validation looks names up in the tables the implementations fill, and imports none of them.
# (The descriptions below list the built-in names: `bilevel/__init__` imports every implementation before this.)
from bilevel.registry import CONTRACTIONS, ENGINES, STRATEGIES, supported


class Strict(BaseModel):
    """Every config section: unknown fields, wrong types and non-finite floats fail at validation."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class WeighterConfig(Strict):
    """Meta weighter N_α (paper appendix C; every knob of the Fig. 6 ablation)."""

    layers: int = Field(5, ge=1, description="dense layers including the output layer")
    units: int = Field(400, ge=1)
    act: Literal["elu", "relu", "tanh", "silu", "leaky_relu"] = "elu"
    norm: Literal["batch", "layer", "none"] = "batch"
    out_norm: Literal["batch", "none"] = Field(
        "batch", description="BatchNorm on the output logit before the sigmoid, as the official code (it "
        "standardises the logits over the batch, so the initial weights spread over the whole range)")
    norm_eps: float = Field(1e-3, gt=0, description="eps of the weighter's Batch/LayerNorms (Keras' 1e-3)")
    out_scale: float = 0.5
    out_shift: float = 0.75
    lr: float = Field(1e-4, gt=0)
    eps: float = Field(1e-5, gt=0)
    clip: float = Field(100.0, gt=0)
    weight_decay: float = Field(1e-6, ge=0, description="DreamerV2's decoupled decay: α <- (1 - wd)·α per step")


class BilevelConfig(Strict):
    """How weights are made and how α is updated."""

    strategy: str = Field("approx", description=f"one of {STRATEGIES.names()} (`bilevel.strategies`)")
    contraction: str = Field("double_backward", description=f"one of {CONTRACTIONS.names()} (`bilevel.contractions`)")
    engine: str = Field("native", description=f"one of {ENGINES.names()} (`bilevel.engines`)")
    sign: Literal["correct", "official"] = Field(
        "correct", description="'official': apply +(d2L_low/dθdα)·∇θL_up as the deng-ai-lab code does"
    )
    approx_scale: Literal["unit", "lr"] = Field(
        "unit", description="(approx only) its α-gradient is -s·(d2L_low/dθdα)·∇θL_up with s = 1 ('unit', the official "
        "code's step size) or s = η ('lr', the exact one-step derivative's scale)")
    unroll_steps: int = Field(1, ge=1, description="K differentiable lower steps for 'unroll'")
    implicit: Literal["neumann", "cg"] = "neumann"
    implicit_iters: int = Field(5, ge=1)
    neumann_alpha: float | None = Field(
        None, gt=0, description="Neumann step size; None = the lower learning rate η"
    )
    cg_damping: float = Field(0.0, ge=0)
    fd_radius: float = Field(1e-2, gt=0, description="finite difference ε = radius / ||v|| (DARTS)")
    terms_fd_radius: float = Field(
        1e-4, gt=0, description="terms_fd's one-sided step ε = radius / ||v||; the default is the most accurate "
        "in float32 at DMC and Atari sizes (README)")
    meta_every: int = Field(1, ge=1, description="update α only every k steps")
    concurrent_upper: Literal["auto", "on", "off"] = Field(
        "auto", description="take ∇θ L_up in a second thread while the lower backward runs, one core each (the same "
        "numbers; the pass's graph is kept until both end), then terms_fd's shifted pass; 'auto': on a CPU with ≥ 2 "
        "intra-op threads in float32, or in bf16 with hypergrad_precision 'step'")
    hypergrad_precision: Literal["32", "step"] = Field(
        "32", description="after a reduced-precision (bf16) pass: '32' takes ∇θ L_up from a float32 pass of its own "
        "(same noise and stop-gradient values); 'step' from the pass's own graph, as in float32 (cheaper, less "
        "exact: README). terms_fd differences and the weighter's α-backward are float32 either way")
    naive_momentum: float = Field(0.99, ge=0, lt=1, description="moving mean/var of the naive baseline")
    weighter: WeighterConfig = WeighterConfig()

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        return STRATEGIES.check(v)

    @field_validator("contraction")
    @classmethod
    def _contraction(cls, v: str) -> str:
        return CONTRACTIONS.check(v)

    @field_validator("engine")
    @classmethod
    def _engine(cls, v: str) -> str:
        return ENGINES.check(v)

    @model_validator(mode="after")
    def _check_combination(self) -> BilevelConfig:
        contractions = supported(self.engine, self.strategy)
        if contractions is None:
            strategies = sorted(s for s in STRATEGIES if supported(self.engine, s) is not None)
            raise ValueError(
                f"engine {self.engine!r} does not support strategy {self.strategy!r}; "
                f"supported strategies for {self.engine!r}: {strategies}"
            )
        if self.contraction not in contractions:
            raise ValueError(
                f"engine {self.engine!r} with strategy {self.strategy!r} does not support contraction "
                f"{self.contraction!r}; supported: {contractions}"
            )
        if self.sign == "official" and self.strategy != "approx":
            raise ValueError(
                f"sign 'official' reproduces the official TEMPO code's approx update and is only defined "
                f"for strategy 'approx', not {self.strategy!r}"
            )
        return self

    @property
    def uses_weighter(self) -> bool:
        return STRATEGIES[self.strategy].uses_weighter

    @property
    def replays_stop_gradients(self) -> bool:
        """The α-gradient re-evaluates the lower losses at a shifted θ by value (a finite difference), so the
        forward pass must record its `bilevel.stopgrad` values for the shifted passes to replay. (Betty's darts
        is the `finite_difference` contraction; the strategies that contract nothing accept only
        `double_backward`.)"""
        return self.uses_weighter and CONTRACTIONS[self.contraction].replays_stop_gradients
