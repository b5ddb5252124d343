"""The one pydantic config tree of a TEMPO / DreamerV2 run, with presets.

Defaults are the official TEMPO / DreamerV2 configs (deng-ai-lab/TEMPO and danijar/dreamerv2 `configs.yaml`,
`defaults` + `dmc_vision`), which the paper's appendix C summarises. Presets only override fields;
`recipes.cli.resolve()` picks one from the task and device when none is given. Every field can be overridden
from the command line as `--section.field value`.

Units, as in the references: `run.steps`, `run.eval_every`, `run.log_every` and `run.checkpoint_every` count
environment frames (what curves are plotted against); `run.prefill` and `run.train_every` count agent steps
(one `env.step`, i.e. `action_repeat` frames), like DreamerV2's `prefill` and `train_every`; `run.pretrain`
counts updates; `env.time_limit` counts agent steps.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, PositiveInt, ValidationError, field_validator

from agents import schedules
from bilevel.config import BilevelConfig, Strict
from bilevel.strategies import STRATEGIES
from losses import check_upper_loss

PRESETS = ("dmc_pixels", "dmc_state", "dmc_small", "atari", "debug")
# `tempo.weighting` alone decides whether and how samples are weighted; `tempo.bilevel.strategy` is then the
# hypergradient of the 'meta' weighting (one source for the method: no "meta weighting without a weighter").
HYPERGRADIENTS = [s for s in STRATEGIES if STRATEGIES[s].uses_weighter]


class DistractorConfig(Strict):
    """Chaotic distractor dims appended to state observations (`envs.distractors`): a designed test of per-step
    weighting. `intermittent` switches them on and off within episodes; `constant` is the control."""

    mode: Literal["none", "constant", "intermittent"] = Field("none", description="gate always on (constant), "
                                                                                   "switching (intermittent) or none")
    dims: int = Field(3, ge=1, description="extra observation dims (Lorenz-63 coordinates, standardised)")
    scale: float = Field(1.0, gt=0, allow_inf_nan=False, description="their std when the gate is on")
    switch_prob: float = Field(0.1, gt=0, le=1, description="probability per agent step that the gate flips")


class EnvConfig(Strict):
    task: str = Field("finger_spin", description="'dmc:<domain>_<task>' (prefix optional), 'atari:<game>' or "
                                                  "'gym:<id>'; see envs/registry.py")
    obs: Literal["auto", "pixels", "state"] = Field("pixels", description="observations: 64x64 images or the "
                                                                           "simulator's state vector")
    size: tuple[PositiveInt, PositiveInt] = Field((64, 64), description="image (height, width) in pixels")
    action_repeat: int | None = Field(None, ge=1, description="None = suite default (DMC 2, Atari 4)")
    time_limit: int | None = Field(None, ge=1, description="agent steps; None = suite default")
    scalar_keys: Literal["drop", "keep"] = Field(
        "drop", description="DMC states: drop the scalar observation keys (walker's height, quadruped's "
                            "torso_upright) as DreamerV2/TEMPO's encoders do (they read 1-D keys only), or keep them")
    distractors: DistractorConfig = DistractorConfig()


class WorldModelConfig(Strict):
    deter: int = Field(200, ge=1, description="size of the deterministic state h (GRU units)")
    stoch: int = Field(32, ge=1, description="stochastic latents: Gaussian dims, or categorical variables")
    discrete: int = Field(0, ge=0, description="classes per categorical latent; 0 = Gaussian (DMC)")
    hidden: int = Field(200, ge=1, description="units of the RSSM's hidden layers (img_in, img_out, obs_out)")
    min_std: float = Field(0.1, gt=0, description="lower bound of the Gaussian latents' std")
    std_act: Literal["sigmoid2", "softplus", "sigmoid"] = Field("sigmoid2", description="Gaussian latent std")
    unimix: float = Field(0.0, ge=0, lt=1, description="uniform mix of categorical latents (DreamerV3; 0 in V2)")
    depth: int = Field(48, ge=1, description="conv encoder/decoder depth")
    units: int = Field(400, ge=1, description="MLP units (encoder, decoder, heads)")
    layers: int = Field(4, ge=1, description="hidden layers of those MLPs")
    discount_head: bool = Field(False, description="predict episode continuation (Atari); else discount = gamma")
    kl_balance: float = Field(0.8, ge=0, le=1, description="share of the KL that trains the prior (DreamerV2)")
    kl_free: float = Field(1.0, ge=0, description="free nats: the KL loss is clamped below this (nats per step)")
    kl_scale: float = Field(1.0, ge=0, description="weight of the KL term in the ELBO")
    reward_scale: float = Field(1.0, ge=0, description="weight of the reward log-likelihood")
    discount_scale: float = Field(1.0, ge=0, description="weight of the discount log-likelihood")
    lr: float = Field(3e-4, gt=0, description="world-model Adam learning rate (η of the hypergradient)")
    eps: float = Field(1e-5, gt=0, description="Adam epsilon")
    clip: float = Field(100.0, gt=0, description="global gradient-norm clip")
    weight_decay: float = Field(1e-6, ge=0, description="DreamerV2's decoupled decay: θ <- (1 - wd)·θ per step")


class AgentConfig(Strict):
    """DreamerV2's actor-critic (`agents.ActorCritic`); `reward_transform` is DreamerV2's `clip_rewards`."""

    horizon: int = Field(15, ge=1, description="imagination horizon (agent steps)")
    gamma: float = Field(0.99, gt=0, le=1, description="discount per agent step")
    lambda_: float = Field(0.95, ge=0, le=1, description="λ of the λ-returns")
    actor_lr: float = Field(8e-5, gt=0, description="actor Adam learning rate")
    critic_lr: float = Field(8e-5, gt=0, description="critic Adam learning rate")
    slow_target_every: int = Field(100, ge=1, description="updates between copies of the critic to the slow critic")
    actor_grad: Literal["auto", "dynamics", "reinforce", "both"] = Field(
        "auto", description="actor gradient: auto = dynamics backprop for continuous, reinforce for discrete actions")
    actor_ent: float | str = Field(1e-4, description="a number or a DreamerV2 schedule, e.g. 'linear(3e-3,1e-4,1e6)'")
    actor_grad_mix: float | str = Field(0.1, description="dynamics share for actor_grad 'both' (number or schedule)")
    reward_transform: Literal["none", "tanh"] = Field("none", description="squash replay rewards (Atari: tanh)")
    units: int = Field(400, ge=1, description="MLP units of the actor and the critic")
    layers: int = Field(4, ge=1, description="hidden layers of the actor and the critic")
    trunc_grad: Literal["tf", "exact"] = Field(
        "tf", description="gradient of a continuous action sample (truncated normal) w.r.t. its mean and std: 'tf' "
                          "as TensorFlow, with which the references train (d/dmean 1, d/dstd (x - mean)/std, as if "
                          "untruncated), 'exact' the implicit reparameterisation with the bounds fixed (runs made "
                          "before 2026-12-05)")
    eps: float = Field(1e-5, gt=0, description="Adam epsilon (actor and critic)")
    clip: float = Field(100.0, gt=0, description="global gradient-norm clip (actor and critic)")
    weight_decay: float = Field(1e-6, ge=0, description="DreamerV2's decoupled decay (actor and critic)")

    @field_validator("actor_ent", "actor_grad_mix")
    @classmethod
    def _schedule(cls, v: float | str) -> float | str:
        schedules.parse(v)  # a bad schedule string fails with the accepted forms named
        return v


class ReplayConfig(Strict):
    capacity: int = Field(2_000_000, ge=1, description="agent steps kept in memory")
    batch: int = Field(16, ge=1, description="sequences per update (B)")
    length: int = Field(50, ge=2, description="agent steps per sequence (T)")
    prioritize_ends: bool = Field(False, description="DreamerV2's Atari trick: sample episode ends more often")
    disk_capacity: int | None = Field(None, ge=1, description="steps kept on disk; None = capacity")
    uniform_over: Literal["episodes", "steps"] = Field(
        "episodes", description="draw an episode uniformly, then a start (DreamerV2), or every start equally")


class TempoConfig(Strict):
    """The task-aware part: how samples are weighted and by what upper loss."""

    weighting: Literal["meta", "naive", "none"] = Field(
        "meta", description="meta = TEMPO (a weighter trained by the hypergradient), naive = the paper's §3.4 "
                            "baseline, none = DreamerV2 (uniform weights)")
    upper_loss: str = Field("vvaml", description="'vvaml', 'vagram' or 'module.path:ClassName'")
    value_norm: Literal["batch", "moving", "none"] = Field(
        "batch", description="values standardised jointly over the batch (official code) or moving stats (paper)"
    )
    weighter_inputs: Literal["DSV", "SV", "S", "DS", "DV", "D", "V"] = Field(
        "DSV", description="what the weighter reads (paper §3.5): D = h, S = post and prior latents, V = their values")
    # terms_fd: the mixed derivative from one no-grad encoder+RSSM re-run, no second-order graph (its accuracy
    # and cost against the exact double_backward: README and benchmarks/results). The library default stays exact.
    bilevel: BilevelConfig = BilevelConfig(contraction="terms_fd")

    @field_validator("upper_loss")
    @classmethod
    def _upper_loss(cls, v: str) -> str:
        return check_upper_loss(v)  # an unknown name or an unimportable path fails before any file is written

    @field_validator("bilevel")
    @classmethod
    def _hypergradient(cls, b: BilevelConfig) -> BilevelConfig:
        if b.strategy not in HYPERGRADIENTS:
            raise ValueError(f"tempo.bilevel.strategy {b.strategy!r} is a weighting, not a hypergradient: set "
                             f"tempo.weighting (--weighting) instead; hypergradients: {HYPERGRADIENTS}")
        return b


class RunConfig(Strict):
    steps: int = Field(1_000_000, ge=0, description="environment frames")
    prefill: int = Field(1000, ge=0, description="agent steps of random actions before training")
    pretrain: int = Field(100, ge=0, description="updates right after the prefill")
    train_every: int = Field(5, ge=1, description="one update every this many agent steps")
    eval_every: int = Field(10_000, ge=1, description="environment frames")
    eval_episodes: int = Field(1, ge=1, description="episodes per evaluation (policy mode), averaged")
    log_every: int = Field(1000, ge=1, description="environment frames")
    progress_every: float = Field(30.0, gt=0, description="seconds between progress lines without a terminal")
    video_every: int = Field(5, ge=0, description="save an eval video every N evaluations (0 = never)")
    checkpoint_every: int = Field(10_000, ge=1, description="environment frames")
    seed: int = Field(0, description="seeds torch, numpy, the replay and the environments")
    device: Literal["cpu", "cuda"] = Field("cpu", description="the command line's default: cuda where available")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads; None = every core torch sees")
    precision: Literal["auto", "32", "bf16", "16"] = Field(
        "auto", description="matmuls in bf16/fp16 with float32 islands; auto = bf16 where native, else 32")
    world_model_precision: Literal["auto", "32", "bf16", "16"] | None = Field(
        "auto", description="the world model's step (TEMPO's bilevel step with it) in this precision instead of "
                            "run.precision, which then sets the actor-critic's; auto = float32 on a CPU, run.precision "
                            "on CUDA; None = run.precision (runs made before 2026-12-05)")
    compile: bool = Field(False, description="torch.compile the actor-critic's losses (imagination, heads, "
                                             "λ-returns; the imagination step alone for discrete actions); "
                                             "the first update compiles them")
    logdir: str = Field("runs/default", description="the run directory (re-use it to resume); the command line's "
                                                      "default is runs/<task>/<method>/<seed>")
    max_nonfinite: int = Field(20, ge=1, description="consecutive non-finite updates before stopping")

    @field_validator("precision", "world_model_precision", mode="before")
    @classmethod
    def _precision(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v  # --run.precision 16 parses as int

    @property
    def precisions(self) -> dict[str, str]:
        """The precision mode of each part: 'agent' (the actor-critic's update) and 'world_model'.

        On a CPU the world model's step stays float32 unless `world_model_precision` says otherwise: that step is 50
        sequential RSSM steps of 16-sample matmuls, where bf16 buys casts rather than speed, and TEMPO's
        hypergradient would need float32 passes of its own beside a bf16 one (benchmarks/README.md: TEMPO faster
        this way at both sizes measured, DreamerV2 about even; both methods' world models train alike). Runs made
        before this rule saved `world_model_precision` None, which follows run.precision as it did."""
        wm = self.world_model_precision
        if wm == "auto":
            wm = "32" if self.device == "cpu" else self.precision
        return {"agent": self.precision, "world_model": wm or self.precision}


class Config(Strict):
    preset: Literal["dmc_pixels", "dmc_state", "dmc_small", "atari", "debug"] = "dmc_pixels"
    env: EnvConfig = EnvConfig()
    world_model: WorldModelConfig = WorldModelConfig()
    agent: AgentConfig = AgentConfig()
    replay: ReplayConfig = ReplayConfig()
    tempo: TempoConfig = TempoConfig()
    run: RunConfig = RunConfig()

    @field_validator("preset", mode="before")
    @classmethod
    def _preset(cls, v: Any) -> Any:
        if v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; accepted: {list(PRESETS)}")
        return v

    @property
    def method(self) -> str:
        """A label for plots: tempo / naive / dreamerv2 (+ non-default hypergradient)."""
        w = self.tempo.weighting
        if w == "none":
            return "dreamerv2"
        if w == "naive":
            return f"naive-{self.tempo.upper_loss}"
        b = self.tempo.bilevel
        tag = "tempo" if self.tempo.upper_loss == "vvaml" else f"tempo-{self.tempo.upper_loss}"
        if b.strategy != "approx":
            tag += f"-{b.strategy}"
        if self.tempo.weighter_inputs != "DSV":
            tag += f"-{self.tempo.weighter_inputs}"
        if b.sign != "correct":
            tag += "-official"
        return tag


PRESET_OVERRIDES: dict[str, dict[str, Any]] = {
    # The defaults: TEMPO's dmc_vision (DreamerV2's, with Gaussian latents).
    "dmc_pixels": {"env": {"obs": "pixels"}},
    # Proprioceptive DMC: DreamerV2's / TEMPO's dmc_proprio (categorical 32x32 latents, the defaults'
    # sizes otherwise; evaluation every 1e4 agent steps).
    "dmc_state": {"env": {"obs": "state"}, "world_model": {"discrete": 32}, "run": {"eval_every": 20_000}},
    # A reduced-scale protocol for CPUs, not the reference: dmc_proprio with the paper's DMC latents (Gaussian,
    # 32-d) and 200-unit, 2-layer MLPs in the encoder, decoder, heads, actor and critic (about a tenth of
    # dmc_state's matmul work per update). Everything else is the reference's, the 4x400 weighter included.
    # Evaluation: every 1e4 frames, 5 episodes (the evidence campaigns' protocol).
    "dmc_small": {"env": {"obs": "state"}, "world_model": {"discrete": 0, "units": 200, "layers": 2},
                  "agent": {"units": 200, "layers": 2}, "run": {"eval_every": 10_000, "eval_episodes": 5}},
    # TEMPO's atari config (DreamerV2's atari, evaluated every 2.5e4 agent steps); the paper's 1e7-frame budget.
    "atari": {
        "env": {"obs": "pixels", "task": "atari:pong"},
        "world_model": {"deter": 600, "hidden": 600, "discrete": 32, "discount_head": True, "kl_free": 0.0,
                        "kl_scale": 0.1, "discount_scale": 5.0, "lr": 2e-4},
        "agent": {"gamma": 0.999, "actor_lr": 4e-5, "critic_lr": 1e-4, "actor_ent": 1e-3,
                  "actor_grad": "reinforce", "reward_transform": "tanh"},
        "replay": {"prioritize_ends": True},
        "run": {"prefill": 50_000, "pretrain": 1, "train_every": 16, "eval_every": 100_000, "log_every": 100_000,
                "steps": 10_000_000},
    },
    # Tiny everything: runs end to end in seconds on CPU (tests, smoke runs).
    "debug": {
        "env": {"obs": "state", "time_limit": 60},
        "world_model": {"deter": 16, "stoch": 4, "hidden": 16, "depth": 4, "units": 32, "layers": 2},
        "agent": {"horizon": 5, "units": 32, "layers": 2, "slow_target_every": 5},
        "replay": {"batch": 4, "length": 10},
        "tempo": {"bilevel": {"weighter": {"layers": 3, "units": 32}}},
        "run": {"steps": 300, "prefill": 60, "pretrain": 2, "train_every": 10, "eval_every": 150,
                "log_every": 60, "checkpoint_every": 100, "video_every": 1},
    },
}


def deep_update(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in upd.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build(preset: str, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults <- preset <- overrides (nested dict), validated as a whole."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; accepted: {list(PRESETS)}")
    data = deep_update(Config().model_dump(), PRESET_OVERRIDES[preset])
    data = deep_update(data, overrides or {})
    data["preset"] = preset
    explicit_obs = (overrides or {}).get("env", {}).get("obs")
    if str(data["env"]["task"]).startswith("atari:") and explicit_obs is None:
        data["env"]["obs"] = "pixels"  # Atari has no state observations (e.g. the debug preset on pong)
    return Config.model_validate(data)


def parse_dotted(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """[('world_model.lr', '1e-4')] -> {'world_model': {'lr': 1e-4}} (values parsed as JSON if possible)."""
    out: dict[str, Any] = {}
    for key, raw in pairs:
        try:
            val: Any = json.loads(raw)
        except json.JSONDecodeError:
            val = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = val
    return out


def format_error(err: ValidationError) -> str:
    """One readable line per problem: `field.path: message (got value)`."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        scalar = "input" in e and loc and not isinstance(e["input"], dict)  # a whole section is no news
        lines.append(f"{loc}: {msg}" + (f" (got {e['input']!r})" if scalar else ""))
    return "; ".join(lines)
