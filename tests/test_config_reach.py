"""Every field of `world_model`, `agent`, `replay` and `tempo` reaches the object that uses it.

A config field that never reaches its object is a silently wrong run (`replay.prioritize_ends` once was). Two
runs are built from configs in which, between them, every field has a value other than its default; for each
field `REACH` reads back what the built object uses. A field missing from `REACH` (e.g. a newly added one) fails
`test_every_field_is_checked`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import BaseModel

from recipes.config import Config, build, deep_update
from recipes.run import Run

SECTIONS = ("world_model", "agent", "replay", "tempo")

BASE = {"env": {"task": "cartpole_swingup", "obs": "pixels", "time_limit": 30}, "run": {"steps": 0}}
COMMON = {
    "world_model": {"deter": 12, "stoch": 3, "discrete": 5, "hidden": 14, "min_std": 0.2, "std_act": "softplus",
                    "unimix": 0.05, "depth": 3, "units": 24, "layers": 3, "discount_head": True, "kl_balance": 0.7,
                    "kl_free": 0.5, "kl_scale": 0.9, "reward_scale": 1.5, "discount_scale": 2.5, "lr": 1e-3,
                    "eps": 1e-6, "clip": 50.0, "weight_decay": 1e-5},
    "agent": {"horizon": 4, "gamma": 0.9, "lambda_": 0.8, "actor_lr": 1e-4, "critic_lr": 2e-4,
              "slow_target_every": 7, "actor_grad": "both", "actor_ent": "linear(1e-3,1e-4,100)",
              "actor_grad_mix": 0.3, "reward_transform": "tanh", "units": 20, "layers": 3, "eps": 1e-6, "clip": 50.0,
              "weight_decay": 1e-5, "trunc_grad": "exact"},
    "replay": {"capacity": 5000, "batch": 3, "length": 6, "prioritize_ends": True, "uniform_over": "steps",
               "disk_capacity": 7000},
    "tempo": {"upper_loss": "vagram", "value_norm": "moving", "weighter_inputs": "SV",
              "bilevel": {"weighter": {"layers": 3, "units": 9, "act": "tanh", "norm": "layer", "out_norm": "none",
                                       "norm_eps": 1e-4, "out_scale": 0.4, "out_shift": 0.8, "lr": 2e-4,
                                       "eps": 1e-6, "clip": 10.0, "weight_decay": 1e-5}}},
}
# The strategy fields cannot all be off their defaults in one valid combination: two runs.
VARIANTS = {
    "approx": {"tempo": {"bilevel": {"contraction": "jvp", "sign": "official", "approx_scale": "lr",
                                     "fd_radius": 2e-2, "terms_fd_radius": 2e-4, "meta_every": 3,
                                     "naive_momentum": 0.9, "concurrent_upper": "on",
                                     "hypergrad_precision": "step"}}},
    "implicit": {"tempo": {"bilevel": {"strategy": "implicit", "engine": "betty", "contraction": "double_backward",
                                       "unroll_steps": 2, "implicit": "cg", "implicit_iters": 3,
                                       "neumann_alpha": 0.01, "cg_damping": 0.5}}},
}


def group(run: Run) -> dict[str, Any]:
    return run.trainer.lower_opt.param_groups[0]


def agent_group(run: Run) -> dict[str, Any]:
    """The critic's optimizer group (the actor's has the same decay: one config field)."""
    return run.agent.critic_opt.param_groups[0]


def linears(module: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)]


def sample_args(run: Run) -> tuple[int, int]:
    """(batch, length) of what Run.train_once samples from the replay, and run one update with it."""
    seen = []
    sample = run.replay.sample

    def recorded(*args, **kwargs):
        out = sample(*args, **kwargs)
        seen.append(out["reward"].shape)  # [B, T]
        return out

    run.replay.sample = recorded  # type: ignore[method-assign]
    run.train_once()
    run.replay.sample = sample  # type: ignore[method-assign]
    return tuple(seen[0])


def reward_as_trained(run: Run) -> float:
    """What Run.to_torch makes of a replay reward of 2.0 (DreamerV2's clip_rewards)."""
    return float(run.to_torch({"reward": np.full((1, 1), 2.0)})["reward"])


Getter = Callable[[Run], Any]
W = "tempo.bilevel.weighter."
REACH: dict[str, Getter] = {
    "world_model.deter": lambda r: r.wm.rssm.deter,
    "world_model.stoch": lambda r: r.wm.rssm.stoch,
    "world_model.discrete": lambda r: r.wm.rssm.discrete,
    "world_model.hidden": lambda r: r.wm.rssm.img_in[0].out_features,
    "world_model.min_std": lambda r: r.wm.rssm.min_std,
    "world_model.std_act": lambda r: r.wm.rssm.std_act,
    "world_model.unimix": lambda r: r.wm.rssm.unimix,
    "world_model.depth": lambda r: r.wm.encoder.net[0].out_channels,
    "world_model.units": lambda r: r.wm.reward_head.net[0].out_features,
    "world_model.layers": lambda r: len(linears(r.wm.reward_head)) - 1,
    "world_model.discount_head": lambda r: r.wm.discount_head is not None,
    "world_model.kl_balance": lambda r: r.wm.kl_balance,
    "world_model.kl_free": lambda r: r.wm.kl_free,
    "world_model.kl_scale": lambda r: r.wm.kl_scale,
    "world_model.reward_scale": lambda r: r.wm.loss_scales["reward"],
    "world_model.discount_scale": lambda r: r.wm.loss_scales["discount"],
    "world_model.lr": lambda r: group(r)["lr"],
    "world_model.eps": lambda r: group(r)["eps"],
    "world_model.clip": lambda r: r.trainer.lower_clip,
    # DreamerV2's decoupled decay θ <- (1 - wd)θ is torch's decoupled decay with wd/lr
    "world_model.weight_decay": lambda r: group(r)["weight_decay"] * group(r)["lr"]
    if group(r)["decoupled_weight_decay"] else None,
    "agent.horizon": lambda r: r.agent.horizon,
    "agent.gamma": lambda r: r.agent.gamma,
    "agent.lambda_": lambda r: r.agent.lambda_,
    "agent.actor_lr": lambda r: r.agent.actor_opt.param_groups[0]["lr"],
    "agent.critic_lr": lambda r: r.agent.critic_opt.param_groups[0]["lr"],
    "agent.slow_target_every": lambda r: r.agent.slow_target_every,
    "agent.actor_grad": lambda r: r.agent.actor_grad,
    "agent.actor_ent": lambda r: r.agent.actor_ent,
    "agent.actor_grad_mix": lambda r: r.agent.actor_grad_mix,
    "agent.reward_transform": lambda r: "tanh" if abs(reward_as_trained(r) - math.tanh(2.0)) < 1e-6 else "none",
    "agent.units": lambda r: r.agent.actor.net[0].out_features,
    "agent.layers": lambda r: len(linears(r.agent.actor)) - 1,
    "agent.eps": lambda r: r.agent.actor_opt.param_groups[0]["eps"],
    "agent.trunc_grad": lambda r: r.agent.actor(torch.zeros(1, r.agent.feat_dim)).grad,
    "agent.clip": lambda r: r.agent.updater.parts["actor"].clip,  # actor and critic: the same config field
    "agent.weight_decay": lambda r: agent_group(r)["weight_decay"] * agent_group(r)["lr"]
    if agent_group(r)["decoupled_weight_decay"] else None,
    "replay.capacity": lambda r: r.replay.capacity,
    "replay.batch": lambda r: sample_args(r)[0],
    "replay.length": lambda r: sample_args(r)[1],
    "replay.prioritize_ends": lambda r: r.replay.prioritize_ends,
    "replay.uniform_over": lambda r: r.replay.uniform_over,
    "replay.disk_capacity": lambda r: r.replay.disk_capacity,
    "tempo.upper_loss": lambda r: type(r.problem.upper).__name__.lower(),
    "tempo.value_norm": lambda r: r.problem.upper.value_norm.mode,
    "tempo.weighter_inputs": lambda r: r.problem.inputs,
    W + "layers": lambda r: len(linears(r.trainer.weighter)),
    W + "units": lambda r: r.trainer.weighter.net[0].out_features,
    W + "act": lambda r: type(r.trainer.weighter.net[2]).__name__.lower(),
    W + "norm": lambda r: {torch.nn.LayerNorm: "layer", torch.nn.BatchNorm1d: "batch"}[type(r.trainer.weighter.net[1])],
    W + "out_norm": lambda r: "batch" if isinstance(r.trainer.weighter.net[-1], torch.nn.BatchNorm1d) else "none",
    W + "norm_eps": lambda r: r.trainer.weighter.net[1].eps,
    W + "out_scale": lambda r: r.trainer.weighter.out_scale,
    W + "out_shift": lambda r: r.trainer.weighter.out_shift,
    W + "lr": lambda r: r.trainer.meta_opt.param_groups[0]["lr"],
    W + "eps": lambda r: r.trainer.meta_opt.param_groups[0]["eps"],
    W + "clip": lambda r: r.trainer.updater.parts["meta"].clip,  # the clip of g_α
    W + "weight_decay": lambda r: r.trainer.meta_opt.param_groups[0]["weight_decay"]
    * r.trainer.meta_opt.param_groups[0]["lr"],
}
# The trainer reads its strategy fields from its own BilevelConfig at every step: reaching it is reaching them.
for _name in ("strategy", "contraction", "engine", "sign", "approx_scale", "unroll_steps", "implicit",
              "implicit_iters", "neumann_alpha", "cg_damping", "fd_radius", "terms_fd_radius", "meta_every",
              "naive_momentum", "concurrent_upper", "hypergrad_precision"):
    REACH[f"tempo.bilevel.{_name}"] = lambda r, n=_name: getattr(r.trainer.cfg, n)
# Fields the recipe itself uses, with where; each is checked by the named test.
RECIPE_LEVEL = {
    "tempo.weighting": "picks the trainer's strategy (meta/naive/none): test_weighting_picks_the_strategy",
}


def leaves(model: BaseModel, prefix: str = "") -> dict[str, Any]:
    out = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out.update(leaves(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def config_fields(cfg: Config) -> dict[str, Any]:
    return {k: v for s in SECTIONS for k, v in leaves(getattr(cfg, s), f"{s}.").items()}


def build_run(tmp_path: Path, variant: str) -> tuple[Config, Run]:
    cfg = build("debug", deep_update(deep_update(BASE, COMMON), VARIANTS[variant]))
    cfg.run.logdir = str(tmp_path / variant)
    torch.set_num_threads(1)
    run = Run(cfg, tmp_path / variant)
    rng = np.random.default_rng(0)
    for _ in range(3):  # a few random episodes, so the run can take an update
        t = 12
        run.replay.add_episode({
            "image": rng.integers(0, 255, (t, 64, 64, 3), dtype=np.uint8),
            "action": rng.uniform(-1, 1, (t, run.env.action_dim)).astype(np.float32),
            "reward": rng.normal(size=t).astype(np.float32), "is_first": np.arange(t) == 0,
            "is_last": np.arange(t) == t - 1, "is_terminal": np.zeros(t, bool)})
    return cfg, run


def test_every_field_is_checked():
    fields = set(config_fields(Config()))
    assert fields == set(REACH) | set(RECIPE_LEVEL), (fields ^ (set(REACH) | set(RECIPE_LEVEL)))


def test_every_field_is_off_its_default_in_some_variant():
    default = config_fields(Config())
    changed = set()
    for variant in VARIANTS:
        cfg = build("debug", deep_update(deep_update(BASE, COMMON), VARIANTS[variant]))
        changed |= {k for k, v in config_fields(cfg).items() if v != default[k]}
    assert set(REACH) - changed == set()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_field_reaches_its_object(tmp_path, variant):
    cfg, run = build_run(tmp_path, variant)
    default = config_fields(Config())
    wrong = {}
    for key, value in config_fields(cfg).items():
        if key in RECIPE_LEVEL or value == default[key]:
            continue
        got = REACH[key](run)
        same = math.isclose(got, value, rel_tol=1e-9) if isinstance(value, float) and got is not None else got == value
        if not same:
            wrong[key] = (value, got)
    assert not wrong, f"config value -> what the object uses: {wrong}"


@pytest.mark.parametrize("weighting,strategy", [("meta", "approx"), ("naive", "naive"), ("none", "none")])
def test_weighting_picks_the_strategy(tmp_path, weighting, strategy):
    cfg = build("debug", {"env": {"task": "cartpole_swingup"}, "tempo": {"weighting": weighting}})
    run = Run(cfg, tmp_path)
    assert run.trainer.cfg.strategy == strategy
    assert (run.trainer.weighter is not None) == (weighting == "meta")
