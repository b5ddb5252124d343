"""Builders shared by the benchmark suites: the real DreamerV2 RSSM world model, TEMPO's
`TempoProblem`, a `BilevelTrainer` for one named strategy config, the actor-critic, and a synthetic
replay batch (random data with the replay's dtypes: uint8 images, float actions/rewards, bool flags).

Sizes (`SIZES`):

* `tiny`  - CI: deter 16, stoch 4 (Gaussian), hidden 16, MLP units 32 x 2, state observations (8,),
            batch B=4 x T=10, agent 32 x 2 units with horizon 5, weighter 3 x 32.
* `dmc_state` - the `dmc_state` preset (DreamerV2's dmc_proprio): 24-d proprioceptive observations (walker),
            32 x 32 categorical latents, deter 200, hidden 200, MLPs 400 x 4, batch 16 x 50, agent 400 x 4
            with horizon 15, weighter 5 x 400; 6 continuous actions.
* `dmc`   - the paper's DMC sizes (appendix C / DreamerV2 defaults): deter 200, stoch 32 Gaussian,
            hidden 200, MLP units 400 x 4, conv depth 48, 64x64 RGB, batch 16 x 50, agent 400 x 4
            with horizon 15, weighter 5 x 400; 6 continuous actions (walker).
* `atari` - the paper's Atari sizes: deter 600, hidden 600, 32 x 32 categorical latents, 64x64x1
            grayscale, discount head, KL scale 0.1 / free nats 0, batch 16 x 50, 6 discrete actions (pong),
            REINFORCE actor with the discount head.

Strategy configs (`CONFIGS`): name -> `BilevelConfig` fields. The lower optimiser is the recipe's
Adam (`recipes/tempo.py`) unless `lower_opt='sgd'` is asked for (the α-gradient fidelity check, see
`alpha_grad_fidelity`).

Nothing here hard-codes a device: pass `device='cuda'` to build on a GPU.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from agents import ActorCritic
from bilevel import BilevelConfig, BilevelTrainer
from bilevel.precision import Precision, cpu_flags, cpu_model, native_bf16
from losses import get_upper_loss
from worldmodels import WorldModel
from worldmodels.tempo_problem import TempoProblem

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")


# ---------------------------------------------------------------------------------------------------
# sizes
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Size:
    name: str
    obs_key: str  # 'state' or 'image'
    obs_shape: tuple[int, ...]
    action_dim: int
    discrete_actions: bool
    T: int
    B: int
    world_model: dict[str, Any]
    agent: dict[str, Any]
    weighter: dict[str, Any] = field(default_factory=dict)  # {} = BilevelConfig's default (5 x 400)
    lower_lr: float = 3e-4
    lower_eps: float = 1e-5
    lower_weight_decay: float = 1e-6
    lower_clip: float = 100.0


SIZES: dict[str, Size] = {
    "tiny": Size(
        "tiny", "state", (8,), 2, False, T=10, B=4,
        world_model=dict(deter=16, stoch=4, discrete=0, hidden=16, depth=4, mlp_units=32, mlp_layers=2),
        agent=dict(horizon=5, units=32, layers=2, slow_target_every=5),
        weighter=dict(layers=3, units=32),
    ),
    "dmc_state": Size(
        "dmc_state", "state", (24,), 6, False, T=50, B=16,
        world_model=dict(deter=200, stoch=32, discrete=32, hidden=200, mlp_units=400, mlp_layers=4),
        agent=dict(horizon=15, units=400, layers=4),
    ),
    "dmc": Size(
        "dmc", "image", (64, 64, 3), 6, False, T=50, B=16,
        world_model=dict(deter=200, stoch=32, discrete=0, hidden=200, depth=48, mlp_units=400, mlp_layers=4),
        agent=dict(horizon=15, units=400, layers=4),
    ),
    "atari": Size(
        "atari", "image", (64, 64, 1), 6, True, T=50, B=16,
        world_model=dict(deter=600, stoch=32, discrete=32, hidden=600, depth=48, mlp_units=400, mlp_layers=4,
                         discount_head=True, kl_free=0.0, kl_scale=0.1,
                         loss_scales={"reward": 1.0, "discount": 5.0}),
        agent=dict(horizon=15, units=400, layers=4, gamma=0.999, actor_lr=4e-5, critic_lr=1e-4, actor_ent=1e-3,
                   actor_grad="reinforce", use_discount_head=True),
        lower_lr=2e-4,
    ),
}


# ---------------------------------------------------------------------------------------------------
# strategy configs
# ---------------------------------------------------------------------------------------------------
CONFIGS: dict[str, dict[str, Any]] = {
    "none": {"strategy": "none"},
    "naive": {"strategy": "naive"},
    "approx-double_backward": {"strategy": "approx", "contraction": "double_backward"},
    "approx-jvp": {"strategy": "approx", "contraction": "jvp"},
    "approx-terms_jvp": {"strategy": "approx", "contraction": "terms_jvp"},
    "approx-terms_fd": {"strategy": "approx", "contraction": "terms_fd"},
    "approx-terms_fd-every2": {"strategy": "approx", "contraction": "terms_fd", "meta_every": 2},
    "approx-terms_fd-every4": {"strategy": "approx", "contraction": "terms_fd", "meta_every": 4},
    "approx-finite_difference": {"strategy": "approx", "contraction": "finite_difference"},
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


def bilevel_config(name: str, size: Size) -> BilevelConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown benchmark config {name!r}; accepted: {list(CONFIGS)}")
    return BilevelConfig(**CONFIGS[name], weighter=dict(size.weighter))


def get_size(name: str) -> Size:
    if name not in SIZES:
        raise ValueError(f"unknown benchmark size {name!r}; accepted: {list(SIZES)}")
    return SIZES[name]


def check_device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device")
    return dev


# ---------------------------------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------------------------------
def make_batch(size: Size, device: str | torch.device = "cpu", seed: int = 1) -> dict[str, torch.Tensor]:
    """A synthetic replay chunk, time-major [T, B, ...], with the dtypes `Run.to_torch` produces."""
    g = torch.Generator().manual_seed(seed)
    T, B, A = size.T, size.B, size.action_dim
    if size.obs_key == "image":
        obs = torch.randint(0, 256, (T, B, *size.obs_shape), generator=g, dtype=torch.uint8)
    else:
        obs = torch.randn(T, B, *size.obs_shape, generator=g)
    if size.discrete_actions:
        action = nn.functional.one_hot(torch.randint(0, A, (T, B), generator=g), A).float()
    else:
        action = torch.rand(T, B, A, generator=g) * 2 - 1
    action[0] = 0.0  # zeros at episode start, as the replay stores them
    is_first = torch.zeros(T, B, dtype=torch.bool)
    is_first[0] = True
    is_terminal = torch.zeros(T, B, dtype=torch.bool)
    if T > 2:
        is_first[T // 2, 0] = True  # an episode boundary inside the chunk
        is_terminal[T // 2 - 1, 0] = True
    batch = {size.obs_key: obs, "action": action, "reward": torch.randn(T, B, generator=g),
             "is_first": is_first, "is_terminal": is_terminal}
    return {k: v.to(device) for k, v in batch.items()}


def make_trainer(problem: TempoProblem, name: str, size: Size, lower_opt: str = "adam",
                 precision: Precision | None = None) -> BilevelTrainer:
    """A trainer for config `name` on `problem`; the lower optimiser is the recipe's Adam (or SGD, same lr)."""
    wm = problem.model
    if lower_opt == "adam":
        opt = torch.optim.Adam(wm.parameters(), lr=size.lower_lr, eps=size.lower_eps,
                               weight_decay=size.lower_weight_decay)
    elif lower_opt == "sgd":
        opt = torch.optim.SGD(wm.parameters(), lr=size.lower_lr)
    else:
        raise ValueError(f"lower_opt must be 'adam' or 'sgd', got {lower_opt!r}")
    return BilevelTrainer(wm, problem.input_dim, bilevel_config(name, size), lower_opt=opt,
                          lower_clip=size.lower_clip, precision=precision)


@dataclass
class Bench:
    """Everything one benchmarked training step touches."""

    size: Size
    config: str
    device: torch.device
    wm: WorldModel
    agent: ActorCritic
    problem: TempoProblem
    trainer: BilevelTrainer
    batch: dict[str, torch.Tensor]
    precision: Precision = field(default_factory=lambda: Precision("cpu", "32"))

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self) -> dict[str, float]:
        """One bilevel world-model step (weights -> θ -> α)."""
        with self.precision.autocast():
            return self.trainer.step(self.problem, self.batch).metrics

    def train_step(self) -> dict[str, float]:
        """One whole training step as `recipes.tempo.Run.train_once` does it: the bilevel world-model
        step, then one actor-critic update from the posterior states of that pass."""
        with self.precision.autocast():
            result = self.trainer.step(self.problem, self.batch)
        metrics, start = result.metrics, result.outputs
        with self.precision.autocast():
            ac = self.agent.train_step(self.wm, start, self.batch["is_terminal"])
        return {**metrics, **{f"agent/{k}": v for k, v in ac.items()}}

    def timed(self, fn: Callable[[], Any]) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0


def build(size: str | Size, config: str = TEMPO, device: str | torch.device = "cpu", seed: int = 0,
          lower_opt: str = "adam", precision: str = "32") -> Bench:
    """World model + agent + problem + trainer + batch, seeded (same seed -> same θ, α, batch); the steps run
    in `precision` ('32', 'bf16', '16' or 'auto', `bilevel.precision`) as the recipe runs them."""
    sz = get_size(size) if isinstance(size, str) else size
    dev = check_device(str(device))
    prec = Precision(dev, precision)
    torch.manual_seed(seed)
    obs_space = {sz.obs_key: sz.obs_shape}
    wm = WorldModel(obs_space, sz.action_dim, sz.discrete_actions, **sz.world_model).to(dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=prec.mode == "16")
    agent = ActorCritic(wm.rssm.feat_dim, sz.action_dim, sz.discrete_actions, **sz.agent, scaler=scaler).to(dev)
    upper = get_upper_loss("vvaml")
    if isinstance(upper, nn.Module):
        upper.to(dev)
    problem = TempoProblem(wm, upper, lambda f: agent.value(f, slow=True), "DSV")
    trainer = make_trainer(problem, config, sz, lower_opt, prec)
    batch = make_batch(sz, dev, seed + 1)
    return Bench(sz, config, dev, wm, agent, problem, trainer, batch, prec)


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

    Both use a plain SGD lower step with η = the size's lower lr: that is the update eq. 8 (exact) and
    eq. 9 (θ'≈θ) are written for. (With the recipe's Adam, a 1-step unroll from a fresh optimiser state
    differentiates Adam's first update lr·g/(|g|+eps), which is sign-like and has a near-zero derivative,
    so the 'exact' reference would be degenerate.) `none`/`naive` have no α: fidelity is n/a (None).
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
        ref_trainer = make_trainer(bench.problem, REFERENCE, bench.size, "sgd")
        ref_trainer.weighter.load_state_dict(bench.trainer.weighter.state_dict())
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
