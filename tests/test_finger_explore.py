"""docs/evidence/finger_spin/explore.py: the replay windows' numbers on a run directory whose answer is known, and
the probe's rollout on the real task."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from tests.test_recipe_tempo import ROOT

spec = importlib.util.spec_from_file_location("explore", ROOT / "docs/evidence/finger_spin/explore.py")
explore = importlib.util.module_from_spec(spec)
spec.loader.exec_module(explore)


def _episode(path, reward, action):
    """An episode file as the replay writes it: index 0 is the reset (no action's reward)."""
    n = len(reward) + 1
    np.savez(path, reward=np.r_[0.0, reward], action=np.r_[np.zeros((1, action.shape[1])), action],
             is_first=np.arange(n) == 0, is_last=np.arange(n) == n - 1, is_terminal=np.zeros(n, bool))


def test_replay_windows_count_rewards_and_describe_actions(tmp_path):
    (tmp_path / "replay").mkdir()
    (tmp_path / "config.json").write_text(json.dumps({"env": {"action_repeat": None}}))  # DMC's 2
    alternating = np.tile([[1.0, -1.0], [-1.0, 1.0]], (250, 1))  # lag-1 autocorrelation exactly -1, all saturated
    ramp = np.stack([np.linspace(-0.5, 0.5, 500)] * 2, 1)  # lag-1 autocorrelation ~1, none saturated
    _episode(tmp_path / "replay/20260101T000000-a-501.npz", np.r_[np.ones(3), np.zeros(497)], alternating)
    _episode(tmp_path / "replay/20260101T000001-b-501.npz", np.zeros(500), alternating)
    _episode(tmp_path / "replay/20260101T000002-c-501.npz", np.r_[np.zeros(490), np.full(10, 2.0)], ramp)
    rows = explore.replay_windows(str(tmp_path), every=2000)  # two 1000-frame episodes per window
    assert [r["frames"] for r in rows] == [2000, 3000]  # the last window partial
    assert rows[0]["rewarded_per_1k"] == pytest.approx(1000 * 3 / 2000)
    assert rows[1]["rewarded_per_1k"] == pytest.approx(1000 * 20 / 1000)
    assert rows[0]["action_lag1"] == pytest.approx(-1.0)
    assert rows[1]["action_lag1"] == pytest.approx(1.0, abs=1e-6)
    assert (rows[0]["saturated"], rows[1]["saturated"]) == (1.0, 0.0)


def test_probe_rollout_counts_the_rewarded_frames_dm_control_reports():
    """The sine policy is open-loop and deterministic, so the raw suite task, stepped twice per action, must pay the
    same frames as the rollout through envs.make_env (action repeat, reward summing, episode length). The actions are
    rescaled to the actuator bounds as the wrapper (and DreamerV2's NormalizeAction) does: the task is chaotic, and
    the last bit that `-1 + (a + 1)` changes is enough to make a different episode."""
    from dm_control import suite

    policy = explore.probe_policies()["sine, period 20 steps"]
    rewarded, frames = explore.rollout(policy, episodes=1, seed=0)
    env = suite.load("finger", "spin", task_kwargs={"random": 0})
    low, high = env.action_spec().minimum, env.action_spec().maximum
    ts, t, expected, physics_steps = env.reset(), 0, 0, 0
    while not ts.last():
        action = policy(np.random.default_rng(), t).astype(np.float32).astype(np.float64)
        action = low + (action + 1.0) * 0.5 * (high - low)
        for _ in range(2):
            ts = env.step(action)
            expected += int(ts.reward > 0)
            physics_steps += 1
        t += 1
    assert (rewarded, frames) == (expected, physics_steps) == (expected, 1000)
    assert expected > 0  # this policy does spin the spinner on seed 0 (39 per 1 000 frames over 20 episodes)
