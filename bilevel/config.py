"""Validated configuration of the bilevel trainer (pydantic). Bad values fail here, before any work."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CONTRACTIONS = ("double_backward", "jvp", "terms_jvp", "terms_fd", "finite_difference")

# What each engine can do: strategy -> accepted contractions.
SUPPORTED: dict[str, dict[str, tuple[str, ...]]] = {
    "native": {
        "none": CONTRACTIONS, "naive": CONTRACTIONS, "approx": CONTRACTIONS,
        "unroll": ("double_backward",), "implicit": CONTRACTIONS,
    },
    # higher differentiates through its differentiable optimisers: unrolling only.
    "higher": {"none": CONTRACTIONS, "naive": CONTRACTIONS, "unroll": ("double_backward",)},
    # Betty's darts is a finite difference; its neumann/cg contract by double backward.
    "betty": {
        "none": CONTRACTIONS, "naive": CONTRACTIONS, "approx": ("finite_difference",),
        "implicit": ("double_backward",),
    },
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class WeighterConfig(_Strict):
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


class BilevelConfig(_Strict):
    """How weights are made and how α is updated."""

    strategy: Literal["none", "naive", "approx", "unroll", "implicit"] = "approx"
    contraction: Literal["double_backward", "jvp", "terms_jvp", "terms_fd", "finite_difference"] = "double_backward"
    engine: Literal["native", "higher", "betty"] = "native"
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
        1e-4, gt=0, description="terms_fd's one-sided step ε = radius / ||v||; 1e-4 measured best in float32 "
        "at DMC and Atari sizes (cosine to the exact contraction 0.999996 / 0.9999994)")
    meta_every: int = Field(1, ge=1, description="update α only every k steps")
    naive_momentum: float = Field(0.99, ge=0, lt=1, description="moving mean/var of the naive baseline")
    weighter: WeighterConfig = WeighterConfig()

    @model_validator(mode="after")
    def _check_combination(self) -> BilevelConfig:
        allowed = SUPPORTED[self.engine]
        if self.strategy not in allowed:
            raise ValueError(
                f"engine {self.engine!r} does not support strategy {self.strategy!r}; "
                f"supported strategies for {self.engine!r}: {sorted(allowed)}"
            )
        if self.contraction not in allowed[self.strategy]:
            raise ValueError(
                f"engine {self.engine!r} with strategy {self.strategy!r} does not support contraction "
                f"{self.contraction!r}; supported: {list(allowed[self.strategy])}"
            )
        if self.sign == "official" and self.strategy != "approx":
            raise ValueError(
                f"sign 'official' reproduces the official TEMPO code's approx update and is only defined "
                f"for strategy 'approx', not {self.strategy!r}"
            )
        return self

    @property
    def uses_weighter(self) -> bool:
        return self.strategy in ("approx", "unroll", "implicit")

    @property
    def replays_stop_gradients(self) -> bool:
        """The α-gradient re-evaluates the lower losses at a shifted θ by value (a finite difference), so the
        forward pass must record its `bilevel.stopgrad` values for the shifted passes to replay."""
        if not self.uses_weighter or self.strategy == "unroll":
            return False
        if self.engine == "betty":
            return self.strategy == "approx"  # darts
        return self.contraction in ("terms_fd", "finite_difference")
