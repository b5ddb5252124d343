"""Builders shared by the benchmark suites. A benchmark's run is the recipe's own: `recipes.run.Run(cfg, logdir)`
from a `recipes.config.Config` of a preset, a task and overrides (`config_for`), with its environment, replay,
DreamerV2 RSSM world model, actor-critic, TEMPO `TempoProblem` and `BilevelTrainer`. `Bench.train_step()` is the
recipe's whole update (`Run.update`), `Bench.step()` the bilevel world-model step alone
(`run.trainer.step(run.problem, batch)`). Only the replay batch is synthetic: random data with the replay's dtypes
(uint8 images, float32 states/actions/rewards, bool flags) in the shapes of the run's environment and
`replay.batch` x `replay.length`, converted by `Run.to_torch` (time-major [T, B, ...]; Atari's tanh rewards).

Sizes (`SIZES`: name -> preset + task + overrides; the model sizes are the presets'):

* `tiny`  - CI: preset `debug` on finger_spin: deter 16, stoch 4 (Gaussian), hidden 16, MLP units 32 x 2,
            batch B=4 x T=10, agent 32 x 2 units with horizon 5, weighter 3 x 32. Observation and action sizes
            are the task's: 9-d states, 2 continuous actions (before the benchmarks used the recipe: (8,), 2).
* `dmc_state` - preset `dmc_state` (DreamerV2's dmc_proprio) on walker_stand: 24-d proprioceptive observations,
            32 x 32 categorical latents, deter 200, hidden 200, MLPs 400 x 4, batch 16 x 50, agent 400 x 4
            with horizon 15, weighter 5 x 400; 6 continuous actions.
* `dmc_small` - preset `dmc_small` (the evidence campaigns' reduced scale) on walker_stand: 23-d states (the
            reference drops the scalar `height`), 32-d Gaussian latents, deter 200, hidden 200, MLPs 200 x 2,
            batch 16 x 50, agent 200 x 2 with horizon 15, weighter 5 x 400; 6 continuous actions.
* `dmc`   - preset `dmc_pixels` (the paper's DMC sizes, appendix C / DreamerV2 defaults) on walker_stand:
            deter 200, stoch 32 Gaussian, hidden 200, MLP units 400 x 4, conv depth 48, 64x64 RGB, batch 16 x 50,
            agent 400 x 4 with horizon 15, weighter 5 x 400; 6 continuous actions.
* `atari` - preset `atari` on atari:pong (the paper's Atari sizes): deter 600, hidden 600, 32 x 32 categorical
            latents, 64x64x1 grayscale, discount head, KL scale 0.1 / free nats 0, world-model lr 2e-4, batch
            16 x 50, 6 discrete actions, REINFORCE actor with the discount head, tanh-squashed replay rewards.

Strategy configs (`CONFIGS`): name -> `BilevelConfig` fields over the library defaults. `none` and `naive` are the
recipe's `tempo.weighting none` / `naive`; every other config is `tempo.weighting meta` with `tempo.bilevel` set
to exactly those fields (so a config that names no contraction uses the library's exact `double_backward`, not the
recipe's `terms_fd`; `approx-terms_fd` is the recipe's default TEMPO). The lower optimiser is the recipe's Adam
unless `lower_opt='sgd'` is asked for (the α-gradient fidelity check, see `alpha_grad_fidelity`).

The run's logdir (its replay directory) is a temporary directory removed, with the run's environments closed,
when the `Bench` is garbage-collected or `close()`d (or its `with` block ends). Nothing here hard-codes a
device: pass `device='cuda'` to build on a GPU.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import statistics
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bilevel import BilevelConfig, BilevelTrainer
from bilevel.contractions import CONTRACTIONS
from bilevel.precision import MODES, Precision, cpu_flags, cpu_model, native_bf16, resolve
from recipes.config import HYPERGRADIENTS, Config, RunConfig, deep_update
from recipes.config import build as build_config
from recipes.run import Run
from recipes.run import bilevel_config as run_bilevel_config
from worldmodels.tempo_problem import TempoProblem

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")


# ---------------------------------------------------------------------------------------------------
# sizes
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchSize:
    """A benchmark size: the recipe's `preset` on `task`, plus config `overrides` (a nested dict, as
    `recipes.config.build` takes them) on top of the preset."""

    name: str
    preset: str
    task: str
    overrides: dict[str, Any] = field(default_factory=dict)


SIZES: dict[str, BenchSize] = {
    "tiny": BenchSize("tiny", "debug", "finger_spin"),
    # walker's scalar `height` kept: the 24-d input of every dmc_state result before the reference's drop
    "dmc_state": BenchSize("dmc_state", "dmc_state", "walker_stand", {"env": {"scalar_keys": "keep"}}),
    "dmc_small": BenchSize("dmc_small", "dmc_small", "walker_stand"),
    "dmc": BenchSize("dmc", "dmc_pixels", "walker_stand"),
    "atari": BenchSize("atari", "atari", "atari:pong"),
}


@dataclass(frozen=True)
class Size:
    """A size BY VALUE, the form `benchmarks/compare_commits.py` passes to every checkout's `build` (older checkouts
    built their models from it directly). Here it becomes overrides on the size `name`'s preset and task
    (`bench_size`); `build` then checks that the task's observations and actions are the ones described."""

    name: str
    obs_key: str  # 'state' or 'image'
    obs_shape: tuple[int, ...]
    action_dim: int
    discrete_actions: bool
    T: int
    B: int
    world_model: dict[str, Any]
    agent: dict[str, Any]
    weighter: dict[str, Any] = field(default_factory=dict)  # {} = the preset's
    lower_lr: float = 3e-4
    lower_eps: float = 1e-5
    lower_weight_decay: float = 1e-6
    lower_clip: float = 100.0

    def bench_size(self) -> BenchSize:
        base = get_size(self.name)
        agent = dict(self.agent)
        discount = agent.pop("use_discount_head", None)  # the recipe's agent follows world_model.discount_head
        if discount is not None and bool(discount) != bool(self.world_model.get("discount_head", False)):
            raise ValueError(f"size {self.name!r}: agent use_discount_head={discount} needs world_model "
                             f"discount_head={discount} in the recipe")
        wm = {**self.world_model, "lr": self.lower_lr, "eps": self.lower_eps,
              "weight_decay": self.lower_weight_decay, "clip": self.lower_clip}
        overrides: dict[str, Any] = {"world_model": wm, "agent": agent, "replay": {"batch": self.B, "length": self.T}}
        if self.weighter:
            overrides["tempo"] = {"bilevel": {"weighter": dict(self.weighter)}}
        return BenchSize(self.name, base.preset, base.task, deep_update(base.overrides, overrides))

    def check(self, run: Run) -> None:
        got = (run.env.obs_space, run.env.action_dim, run.env.discrete)
        want = ({self.obs_key: tuple(self.obs_shape)}, self.action_dim, self.discrete_actions)
        if got != want:
            raise ValueError(f"size {self.name!r} describes observations/actions {want}, but its task "
                             f"{run.cfg.env.task!r} has {got}")


def get_size(name: str) -> BenchSize:
    if name not in SIZES:
        raise ValueError(f"unknown benchmark size {name!r}; accepted: {list(SIZES)}")
    return SIZES[name]


def _bench_size(size: str | BenchSize | Size) -> BenchSize:
    if isinstance(size, str):
        return get_size(size)
    return size.bench_size() if isinstance(size, Size) else size


# ---------------------------------------------------------------------------------------------------
# strategy configs
# ---------------------------------------------------------------------------------------------------
CONFIGS: dict[str, dict[str, Any]] = {
    "none": {"strategy": "none"},
    "naive": {"strategy": "naive"},
    # θ'≈θ with every registered contraction (a new one is benchmarked without an edit here)
    **{f"approx-{c}": {"strategy": "approx", "contraction": c} for c in CONTRACTIONS},
    "approx-terms_fd-every2": {"strategy": "approx", "contraction": "terms_fd", "meta_every": 2},
    "approx-terms_fd-every4": {"strategy": "approx", "contraction": "terms_fd", "meta_every": 4},
    # ∇θ L_up beside the lower backward (`concurrent_upper`), forced either way whatever `auto` would pick
    "approx-terms_fd-serial": {"strategy": "approx", "contraction": "terms_fd", "concurrent_upper": "off"},
    "approx-terms_fd-concurrent": {"strategy": "approx", "contraction": "terms_fd", "concurrent_upper": "on"},
    # after a bf16 pass: ∇θ L_up from the pass's own graph (`hypergrad_precision`), serial and beside the lower one
    "approx-terms_fd-step": {"strategy": "approx", "contraction": "terms_fd", "hypergrad_precision": "step",
                             "concurrent_upper": "off"},
    "approx-terms_fd-step-concurrent": {"strategy": "approx", "contraction": "terms_fd",
                                        "hypergrad_precision": "step", "concurrent_upper": "on"},
    "unroll1-native": {"strategy": "unroll", "unroll_steps": 1, "engine": "native"},
    "unroll3-native": {"strategy": "unroll", "unroll_steps": 3, "engine": "native"},
    "unroll1-higher": {"strategy": "unroll", "unroll_steps": 1, "engine": "higher"},
    "unroll3-higher": {"strategy": "unroll", "unroll_steps": 3, "engine": "higher"},
    "implicit-neumann": {"strategy": "implicit", "implicit": "neumann"},
    "implicit-cg": {"strategy": "implicit", "implicit": "cg", "cg_damping": 1.0},  # H is not PD: damp
    "betty-approx-darts": {"strategy": "approx", "engine": "betty", "contraction": "finite_difference"},
    "betty-implicit-neumann": {"strategy": "implicit", "engine": "betty", "implicit": "neumann"},
}
TEMPO = "approx-terms_fd"  # the paper's method with the recipe's default contraction
BASELINE = "none"  # DreamerV2 (weighting none) on the same code
REFERENCE = "unroll1-native"  # exact one-step unrolled hypergradient


def tempo_overrides(name: str) -> dict[str, Any]:
    """The `tempo` config section of strategy config `name`: a weighting (`none`, `naive`), or `meta` with
    `tempo.bilevel` set to the config's fields over the library's `BilevelConfig` defaults (the weighter stays
    the preset's)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown benchmark config {name!r}; accepted: {list(CONFIGS)}")
    fields = CONFIGS[name]
    if fields["strategy"] not in HYPERGRADIENTS:
        return {"weighting": fields["strategy"]}
    return {"weighting": "meta", "bilevel": BilevelConfig(**fields).model_dump(exclude={"weighter"})}


def config_for(size: str | BenchSize | Size, config: str = TEMPO, device: str | torch.device = "cpu",
               seed: int = 0, precision: str = "32", compile: bool = False) -> Config:
    """The recipe's config of one benchmark run: `size`'s preset, task and overrides, strategy `config`
    (`tempo_overrides`), and run.device / run.seed / run.precision / run.compile."""
    sz = _bench_size(size)
    run_fields = {"device": torch.device(device).type, "seed": seed, **precision_fields(precision),
                  "compile": compile}
    overrides = deep_update(sz.overrides, {"env": {"task": sz.task}, "tempo": tempo_overrides(config),
                                           "run": run_fields})
    return build_config(sz.preset, overrides)


def bilevel_config(name: str, size: str | BenchSize | Size) -> BilevelConfig:
    """The `BilevelConfig` the run of config `name` at `size` trains with (`recipes.run.bilevel_config`)."""
    return run_bilevel_config(config_for(size, name))


def precision_fields(setting: str) -> dict[str, str]:
    """The `run` fields of a precision setting: 'P' runs everything at P, 'P/W' the actor-critic at P and the world
    model's step at W (`run.world_model_precision`); each one of 32, bf16, 16, auto (`bilevel.precision`; 'auto'
    is a run's default, `RunConfig.precisions`: 'bf16/32' on a CPU with native bf16)."""
    parts = setting.split("/")
    if len(parts) > 2 or any(p not in MODES for p in parts):
        raise ValueError(f"precision setting {setting!r} is not P or P/W with P, W in {list(MODES)}")
    return {"precision": parts[0], "world_model_precision": parts[-1]}


def setting_of(agent: str, world_model: str) -> str:
    """The precision setting of an actor-critic at `agent` and a world model at `world_model` ('bf16', 'bf16/32')."""
    return agent if agent == world_model else f"{agent}/{world_model}"


def resolve_setting(setting: str, device: str | torch.device) -> str:
    """`setting` as a run on `device` resolves it (`RunConfig.precisions`: 'auto' -> 'bf16/32' on a bf16 CPU,
    '32' on one without, 'bf16' on a bf16 GPU; 'bf16/bf16' -> 'bf16')."""
    modes = RunConfig(device=torch.device(device).type, **precision_fields(setting)).precisions
    return setting_of(resolve(modes["agent"], device), resolve(modes["world_model"], device))


def check_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device")
    return dev


# ---------------------------------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------------------------------
def make_batch(run: Run, seed: int = 1) -> dict[str, torch.Tensor]:
    """A synthetic replay chunk for `run`: what `run.replay.sample()` returns ([B, T] numpy arrays of the replay's
    dtypes, B x T = replay.batch x replay.length, observations and actions shaped as `run.env`'s), random, passed
    through `run.to_torch` (time-major [T, B, ...] on the run's device)."""
    rng = np.random.default_rng(seed)
    B, T = run.cfg.replay.batch, run.cfg.replay.length
    env = run.env
    (key, shape), = env.obs_space.items()
    if key == "image":
        obs = rng.integers(0, 256, (B, T, *shape), dtype=np.uint8)
    else:
        obs = rng.standard_normal((B, T, *shape), dtype=np.float32)
    A = env.action_dim
    if env.discrete:
        action = np.eye(A, dtype=np.float32)[rng.integers(0, A, (B, T))]
    else:
        action = rng.uniform(-1, 1, (B, T, A)).astype(np.float32)
    is_first = np.zeros((B, T), bool)
    is_last = np.zeros((B, T), bool)
    is_terminal = np.zeros((B, T), bool)
    is_first[:, 0] = True  # every sampled chunk starts with is_first (`Replay.sample`)
    if T > 2:  # an episode boundary inside the first chunk (a terminal step, then a new episode)
        is_last[0, T // 2 - 1] = is_terminal[0, T // 2 - 1] = True
        is_first[0, T // 2] = True
    action[is_first] = 0.0  # zeros at episode start, as the replay stores them
    batch = {key: obs, "action": action, "reward": rng.standard_normal((B, T), dtype=np.float32),
             "is_first": is_first, "is_last": is_last, "is_terminal": is_terminal}
    return run.to_torch(batch)


def sgd_trainer(run: Run, cfg: BilevelConfig) -> BilevelTrainer:
    """A trainer with `cfg` over `run.wm` and `run.problem` whose lower optimiser is plain SGD at the world model's
    lr (everything else as `Run` builds its trainer); its weighter starts from `run.trainer`'s (same α)."""
    m = run.cfg.world_model
    trainer = BilevelTrainer(run.wm, run.problem.input_dim, cfg, lower_opt=torch.optim.SGD(run.wm.parameters(),
                             lr=m.lr), lower_clip=m.clip, max_nonfinite=run.cfg.run.max_nonfinite,
                             precision=run.wm_precision)
    if trainer.weighter is not None and run.trainer.weighter is not None:
        trainer.weighter.load_state_dict(run.trainer.weighter.state_dict())
    return trainer


def _close(envs: Sequence[Any], logdir: str) -> None:
    for env in envs:
        env.close()
    shutil.rmtree(logdir, ignore_errors=True)


@dataclass(eq=False)
class Bench:
    """One benchmark run: the recipe's `Run` of a size and strategy config, and its synthetic batch."""

    size: BenchSize
    config: str
    run: Run = field(repr=False)
    batch: dict[str, torch.Tensor] = field(repr=False)

    def __post_init__(self) -> None:
        self._finalizer = weakref.finalize(self, _close, (self.run.env, self.run.eval_env), str(self.run.logdir))

    # the run's objects
    @property
    def cfg(self) -> Config:
        return self.run.cfg

    @property
    def device(self) -> torch.device:
        return self.run.device

    @property
    def precision(self) -> Precision:
        """The actor-critic's precision (the world model's is `run.wm_precision`)."""
        return self.run.precision

    @property
    def setting(self) -> str:
        """The run's precision setting as resolved here, in `precision_fields`' notation ('bf16', 'bf16/32')."""
        return setting_of(self.run.precision.mode, self.run.wm_precision.mode)

    @property
    def wm(self) -> nn.Module:
        return self.run.wm

    @property
    def agent(self) -> nn.Module:
        return self.run.agent

    @property
    def problem(self) -> TempoProblem:
        return self.run.problem

    @property
    def trainer(self) -> BilevelTrainer:
        return self.run.trainer

    def close(self) -> None:
        """Close the run's environments and remove its temporary logdir (also done when garbage-collected)."""
        self._finalizer()

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self) -> dict[str, float]:
        """One bilevel world-model step (weights -> θ -> α): `run.trainer.step`, in the run's precision as
        `Run.update` runs it. Returns the trainer's metrics."""
        with self.run.wm_precision.autocast():
            return self.trainer.step(self.problem, self.batch).metrics

    def train_step(self) -> dict[str, float]:
        """One whole training step, the recipe's own `Run.update`: the bilevel world-model step, then one
        actor-critic update from the posterior states of that pass. Returns what it recorded in `run.pending`
        (`wm/...`, `agent/...`), which is cleared."""
        self.run.pending.clear()
        self.run.update(self.batch)
        metrics = {k: v[-1] for k, v in self.run.pending.items()}
        self.run.pending.clear()
        return metrics

    def timed(self, fn: Callable[[], Any]) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0


def build(size: str | BenchSize | Size, config: str = TEMPO, device: str | torch.device = "cpu", seed: int = 0,
          lower_opt: str = "adam", precision: str = "32", compile: bool = False) -> Bench:
    """The recipe's `Run` of `config_for(size, config, device, seed, precision, compile)` in a temporary logdir, and its
    synthetic batch (`make_batch`, seed + 1): same seed -> same θ, α, batch. The steps run in `precision` (a setting
    of `precision_fields`: '32', 'bf16', '16', 'auto', or 'P/W' for a world model at W) as the recipe runs them.
    `lower_opt='sgd'` replaces the run's trainer by `sgd_trainer` (same config and α). `device` 'cuda:N' makes N
    the current CUDA device."""
    if lower_opt not in ("adam", "sgd"):
        raise ValueError(f"lower_opt must be 'adam' or 'sgd', got {lower_opt!r}")
    sz = _bench_size(size)
    dev = check_device(device)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)  # the recipe's run.device is 'cuda': the current device
    cfg = config_for(sz, config, dev, seed, precision, compile)
    logdir = tempfile.mkdtemp(prefix=f"tempo-bench-{sz.name}-")
    try:
        run = Run(cfg, Path(logdir))
    except BaseException:
        shutil.rmtree(logdir, ignore_errors=True)
        raise
    bench = Bench(sz, config, run, {})
    if os.environ.get(FLUSH_ENV) == "0" and dev.type == "cpu":
        torch.set_flush_denormal(False)  # `Run` flushes denormals on CPU; --bench-keep-denormals keeps them
    if isinstance(size, Size):
        size.check(run)
    if lower_opt == "sgd":
        run.trainer = sgd_trainer(run, run.trainer.cfg)
    bench.batch = make_batch(run, seed + 1)
    return bench


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------
# α-gradient fidelity vs the exact one-step unrolled hypergradient
# ---------------------------------------------------------------------------------------------------
_REF_CACHE: dict[tuple, tuple[list[torch.Tensor], torch.Tensor]] = {}


def _flat(gs: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.detach().reshape(-1).double() for g in gs])


def alpha_grad_at(trainer: BilevelTrainer, problem: TempoProblem, batch: Any, noise_seed: int) -> torch.Tensor:
    """The α-gradient at the current θ (θ is not updated), with the step's sampling noise fixed by seed."""
    torch.manual_seed(noise_seed)
    sc = trainer.forward(problem, batch)
    trainer.lower_grad(sc)  # as `step` does before the α-gradient (terms_fd then reuses that backward)
    return _flat(trainer.alpha_grad(sc))


def alpha_grad_fidelity(size: str, config: str, device: str = "cpu", seed: int = 0,
                        noise_seed: int = 123) -> dict[str, float | None]:
    """Cosine and norm ratio of config's α-gradient vs the exact 1-step unroll, same θ, α, batch, noise.

    Both use a plain SGD lower step with η = the run's world-model lr (`sgd_trainer`, over the same `Run`): that
    is the update eq. 8 (exact) and eq. 9 (θ'≈θ) are written for. (With the recipe's Adam, a 1-step unroll
    from a fresh optimiser state differentiates Adam's first update lr·g/(|g|+eps), which is sign-like and has
    a near-zero derivative, so the 'exact' reference would be degenerate.) `none`/`naive` have no α: fidelity is
    n/a (None).
    """
    if not bilevel_config(config, get_size(size)).uses_weighter:
        return {"cosine_vs_unroll1": None, "rel_norm_vs_unroll1": None, "rel_err_vs_unroll1": None}
    bench = build(size, config, device, seed, lower_opt="sgd")
    key = (size, str(device), seed, noise_seed)
    alpha_state = [p.detach().clone() for p in bench.trainer.weighter.parameters()]
    cached = _REF_CACHE.get(key)
    if cached is not None and all(torch.equal(a, b) for a, b in zip(cached[0], alpha_state, strict=True)):
        ref = cached[1]
    else:
        ref_trainer = sgd_trainer(bench.run, bilevel_config(REFERENCE, bench.size))  # α from bench.trainer
        ref = alpha_grad_at(ref_trainer, bench.problem, bench.batch, noise_seed)
        _REF_CACHE[key] = (alpha_state, ref)
    # Compare derivatives at the derivative's scale: approx with -η, not the recipe's unit (official) scale.
    bench.trainer.cfg = bench.trainer.cfg.model_copy(update={"approx_scale": "lr"})
    g = alpha_grad_at(bench.trainer, bench.problem, bench.batch, noise_seed)
    rn = float(ref.norm())
    return {
        "cosine_vs_unroll1": float(torch.nn.functional.cosine_similarity(g, ref, dim=0)),
        "rel_norm_vs_unroll1": float(g.norm()) / rn if rn > 0 else math.nan,
        "rel_err_vs_unroll1": float((g - ref).norm()) / rn if rn > 0 else math.nan,
    }


# ---------------------------------------------------------------------------------------------------
# interleaved A/B timing
# ---------------------------------------------------------------------------------------------------
def interleaved(fn_a: Callable[[], float], fn_b: Callable[[], float], rounds: int) -> dict[str, Any]:
    """Run A, B, A, B, ... (`rounds` pairs); each fn returns its own measured seconds.

    Returns the per-round ratios A/B and their median: drifts in machine load hit both arms of a pair
    about equally, so the median of paired ratios is far steadier than a ratio of separate medians."""
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(fn_a())
        tb.append(fn_b())
    ratios = [a / b for a, b in zip(ta, tb, strict=True)]
    return {"times_a": ta, "times_b": tb, "ratios": ratios, "median_ratio": statistics.median(ratios),
            "median_a": statistics.median(ta), "median_b": statistics.median(tb)}


# ---------------------------------------------------------------------------------------------------
# arithmetic: how far a step is from the machine's matmul throughput
# ---------------------------------------------------------------------------------------------------
def count_flops(fn: Callable[[], Any]) -> float:
    """Floating-point operations of one call of `fn` (torch's FlopCounterMode: matmuls and convolutions, the
    work that bounds a step; elementwise ops and gathers are not counted). The call really runs."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def gemm_gflops(device: str | torch.device = "cpu", n: int = 2048, dtype: torch.dtype = torch.float32,
                repeats: int = 5) -> float:
    """This machine's square-matmul throughput (best of `repeats`, after one warm-up), the ceiling a
    matmul-bound step can approach in `dtype` with the current thread count."""
    dev = torch.device(device)
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    best = math.inf
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        a @ b
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i:
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


# ---------------------------------------------------------------------------------------------------
# machine description
# ---------------------------------------------------------------------------------------------------
def machine(device: str | torch.device = "cpu") -> dict[str, Any]:
    dev = torch.device(device)
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "cpu_flags": cpu_flags(), "native_bf16": native_bf16("cpu"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(), "device": str(dev), "python": platform.python_version(),
        "platform": platform.platform(),
        "flush_denormal": os.environ.get(FLUSH_ENV, "0") == "1",
    }
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


# ---------------------------------------------------------------------------------------------------
# CPU denormals
# ---------------------------------------------------------------------------------------------------
FLUSH_ENV = "TEMPO_BENCH_FLUSH_DENORMAL"


def set_flush_denormal(flush: bool) -> bool:
    """Flush denormal floats to zero on CPU (`torch.set_flush_denormal`), here and in memory subprocesses.

    Measured (tiny size, 2-core CPU): second-order graphs (double backward, jvp, finite differences)
    produce denormal intermediates, and x86 arithmetic on denormals is ~100x slower, so the SAME step
    took 0.06 s or 3 s depending on the process (e.g. approx-double_backward 0.12 s with flushing vs 2.8 s
    without; approx-finite_difference 0.08 s vs 3.0 s). Timings are only comparable with flushing on, which
    is also what GPU kernels effectively do; pass --bench-keep-denormals to measure without it.
    Returns whether the CPU supports it (SSE3)."""
    os.environ[FLUSH_ENV] = "1" if flush else "0"
    return torch.set_flush_denormal(flush)
