"""The presets' numbers against the reference configs, in the references' units.

Reference values are copied from danijar/dreamerv2 and deng-ai-lab/TEMPO `configs.yaml` (`defaults` +
`dmc_vision` / `dmc_proprio` / `atari`), where `prefill`, `train_every` and `eval_every` count agent steps
(one `env.step` = `action_repeat` frames). The recipe keeps `steps` and `eval_every` in frames.
"""

from __future__ import annotations

import pytest

from recipes.config import Config, build

REPEAT = {"dmc_pixels": 2, "dmc_state": 2, "atari": 4}
# preset -> (reference config, {our field: reference value in the reference's units})
REFERENCE = {
    "dmc_pixels": ("TEMPO dmc_vision", {
        "run.prefill": 1000, "run.pretrain": 100, "run.train_every": 5, "eval_every_agent_steps": 5000,
        "steps_agent_steps": 500_000, "world_model.deter": 200, "world_model.hidden": 200,
        "world_model.discrete": 0, "world_model.stoch": 32, "world_model.kl_free": 1.0, "world_model.lr": 3e-4,
        "world_model.discount_head": False, "agent.actor_lr": 8e-5, "agent.critic_lr": 8e-5,
        "agent.actor_ent": 1e-4, "agent.gamma": 0.99, "replay.prioritize_ends": False,
        "agent.reward_transform": "none"}),
    "dmc_state": ("DreamerV2/TEMPO dmc_proprio", {
        "run.prefill": 1000, "run.pretrain": 100, "run.train_every": 5, "eval_every_agent_steps": 10_000,
        "world_model.deter": 200, "world_model.hidden": 200, "world_model.discrete": 32, "world_model.stoch": 32,
        "world_model.kl_free": 1.0, "world_model.lr": 3e-4, "world_model.discount_head": False,
        "agent.actor_lr": 8e-5, "agent.critic_lr": 8e-5, "agent.actor_ent": 1e-4, "replay.prioritize_ends": False,
        "world_model.units": 400, "world_model.layers": 4}),
    "atari": ("TEMPO atari", {
        "run.prefill": 50_000, "run.pretrain": 1, "run.train_every": 16, "eval_every_agent_steps": 25_000,
        "world_model.deter": 600, "world_model.hidden": 600, "world_model.discrete": 32, "world_model.stoch": 32,
        "world_model.kl_free": 0.0, "world_model.kl_scale": 0.1, "world_model.discount_scale": 5.0,
        "world_model.lr": 2e-4, "world_model.discount_head": True, "agent.actor_lr": 4e-5, "agent.critic_lr": 1e-4,
        "agent.actor_ent": 1e-3, "agent.gamma": 0.999, "replay.prioritize_ends": True,
        "agent.reward_transform": "tanh"}),
}
COMMON = {  # DreamerV2 `defaults` that every preset keeps
    "world_model.kl_balance": 0.8, "world_model.min_std": 0.1, "world_model.std_act": "sigmoid2",
    "world_model.unimix": 0.0, "world_model.eps": 1e-5, "world_model.clip": 100.0, "world_model.weight_decay": 1e-6,
    "agent.horizon": 15, "agent.lambda_": 0.95, "agent.slow_target_every": 100, "agent.eps": 1e-5,
    "agent.clip": 100.0, "agent.weight_decay": 1e-6, "agent.actor_grad_mix": 0.1, "replay.batch": 16,
    "replay.length": 50, "replay.capacity": 2_000_000, "replay.uniform_over": "episodes",
    "tempo.value_norm": "batch", "tempo.bilevel.weighter.lr": 1e-4, "tempo.bilevel.weighter.eps": 1e-5,
    "tempo.bilevel.weighter.weight_decay": 1e-6, "tempo.bilevel.weighter.clip": 100.0,
    "tempo.bilevel.weighter.layers": 5, "tempo.bilevel.weighter.units": 400, "tempo.bilevel.weighter.norm": "batch",
    "tempo.bilevel.weighter.out_norm": "batch", "tempo.bilevel.weighter.norm_eps": 1e-3,
    "tempo.bilevel.sign": "correct", "tempo.bilevel.approx_scale": "unit", "tempo.bilevel.strategy": "approx",
}


def get(cfg: Config, key: str):
    if key == "eval_every_agent_steps":
        return cfg.run.eval_every / REPEAT[cfg.preset]
    if key == "steps_agent_steps":
        return cfg.run.steps / REPEAT[cfg.preset]
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("preset", list(REFERENCE))
def test_preset_matches_its_reference_config(preset):
    cfg = build(preset, {"env": {"task": "atari:pong" if preset == "atari" else "walker_walk"}})
    _, ref = REFERENCE[preset]
    wrong = {k: (get(cfg, k), v) for k, v in {**COMMON, **ref}.items() if get(cfg, k) != v}
    assert not wrong, f"ours vs {REFERENCE[preset][0]}: {wrong}"


@pytest.mark.parametrize("preset,updates", [("dmc_pixels", 10_000), ("dmc_state", 10_000), ("atari", 1562.5)])
def test_updates_per_1e5_frames(preset, updates):
    """One update every train_every agent steps = train_every × action_repeat frames (DreamerV2's rate)."""
    cfg = build(preset, {"env": {"task": "atari:pong" if preset == "atari" else "walker_walk"}})
    assert 1e5 / (cfg.run.train_every * REPEAT[preset]) == updates
