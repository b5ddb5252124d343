"""Replay tests: atomic episode files, crash-tolerant reload (also in a fresh process), eviction, sampling."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

from envs import Replay, make_env

NAME_RE = re.compile(r"^\d{8}T\d{6}-[0-9a-f]{32}-(\d+)\.npz$")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_episode(replay: Replay, ep: int, length: int, act_dim: int = 2, image: bool = False):
    """Feed an episode whose every value encodes (episode id, step) so samples can be traced back exactly."""
    path = None
    for t in range(length):
        obs = {
            "reward": np.float32(ep * 1000 + t),
            "is_first": t == 0,
            "is_last": t == length - 1,
            "is_terminal": False,
        }
        if image:
            obs["image"] = np.full((64, 64, 3), t % 256, np.uint8)
        else:
            obs["state"] = np.array([ep, t], np.float32)
        action = np.full(act_dim, ep + t / 1000, np.float32)  # the action that led to step t
        path = replay.add(obs, action)
        assert (path is not None) == (t == length - 1)
    return path


def test_episode_file_format_and_first_action(tmp_path):
    replay = Replay(tmp_path, capacity=1000)
    path = add_episode(replay, ep=3, length=12)
    assert NAME_RE.match(path.name) and int(NAME_RE.match(path.name).group(1)) == 12
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temp file left behind
    with np.load(path) as f:
        assert set(f.files) == {"state", "action", "reward", "is_first", "is_last", "is_terminal"}
        np.testing.assert_array_equal(f["action"][0], 0.0)  # no action led to the first obs
        np.testing.assert_allclose(f["action"][1:, 0], 3 + np.arange(1, 12) / 1000)
        np.testing.assert_array_equal(f["reward"], 3000 + np.arange(12))
        assert f["is_first"].tolist() == [True] + [False] * 11
        assert f["is_last"].tolist() == [False] * 11 + [True]
        assert f["state"].dtype == np.float32 and f["is_last"].dtype == bool


def test_reload_in_new_process_samples_identically(tmp_path):
    replay = Replay(tmp_path, capacity=10_000, seed=7)
    for ep in range(3):
        add_episode(replay, ep, length=20 + 5 * ep)
    out = tmp_path.parent / f"{tmp_path.name}_batch.npz"
    code = (
        "import sys, numpy as np; from envs import Replay; "
        f"r = Replay({str(tmp_path)!r}, capacity=10_000, seed=7); "
        "s = r.stats(); assert s['episodes'] == 3 and s['steps'] == 75, s; "
        f"np.savez({str(out)!r}, **r.sample(8, 10))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
    with np.load(out) as f:
        other = {k: f[k] for k in f.files}
    mine = replay.sample(8, 10)
    assert mine.keys() == other.keys()
    for key in mine:
        np.testing.assert_array_equal(mine[key], other[key])


def test_truncated_and_temp_files_are_skipped_with_warning(tmp_path):
    replay = Replay(tmp_path, capacity=1000)
    good = add_episode(replay, 0, 15)
    broken = add_episode(replay, 1, 15)
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # simulated crash mid-write of a final file
    stray = tmp_path / (good.name[:-4] + ".tmp.npz")
    stray.write_bytes(good.read_bytes()[:100])  # leftover temp file of an interrupted atomic write
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reloaded = Replay(tmp_path, capacity=1000)
    messages = " | ".join(str(w.message) for w in caught)
    assert broken.name in messages and stray.name in messages
    assert reloaded.stats()["episodes"] == 1
    np.testing.assert_array_equal(reloaded.episodes[0]["state"][:, 0], 0)


def test_interrupted_write_leaves_no_final_file(tmp_path, monkeypatch):
    replay = Replay(tmp_path, capacity=1000)

    def crash(*args):
        raise KeyboardInterrupt  # process killed between fsync and rename

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        add_episode(replay, 0, 10)
    monkeypatch.undo()
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].endswith(".tmp.npz")
    with pytest.warns(UserWarning, match=re.escape(files[0])):
        assert Replay(tmp_path, capacity=1000).stats()["episodes"] == 0


def test_capacity_evicts_oldest_in_memory_and_on_reload(tmp_path):
    replay = Replay(tmp_path, capacity=25)
    for ep in range(4):
        add_episode(replay, ep, 10)
    kept = [int(e["state"][0, 0]) for e in replay.episodes]
    assert kept == [2, 3] and replay.stats()["steps"] == 20
    assert len(os.listdir(tmp_path)) == 2  # disk is bounded too: by default to the same capacity
    reloaded = Replay(tmp_path, capacity=25)
    assert [int(e["state"][0, 0]) for e in reloaded.episodes] == [2, 3]

    longer = tmp_path / "longer"  # a larger disk capacity keeps the older record for a later, larger replay
    replay = Replay(longer, capacity=25, disk_capacity=1000)
    for ep in range(4):
        add_episode(replay, ep, 10)
    assert [int(e["state"][0, 0]) for e in replay.episodes] == [2, 3] and len(os.listdir(longer)) == 4
    assert [int(e["state"][0, 0]) for e in Replay(longer, capacity=1000).episodes] == [0, 1, 2, 3]


@pytest.mark.parametrize("uniform_over", ["steps", "episodes"])
def test_samples_are_exact_subwindows(tmp_path, uniform_over):
    replay = Replay(tmp_path, capacity=10_000, seed=1, uniform_over=uniform_over)
    lengths = {0: 30, 1: 8, 2: 50}  # episode 1 is shorter than the chunk length: never sampled
    for ep, n in lengths.items():
        add_episode(replay, ep, n)
    n = 2000
    batch = replay.sample(batch=n, length=10)
    assert batch["state"].shape == (n, 10, 2) and batch["action"].shape == (n, 10, 2)
    starts = {0: [], 2: []}
    for b in range(n):
        ep, t0 = int(batch["state"][b, 0, 0]), int(batch["state"][b, 0, 1])
        assert ep in (0, 2) and 0 <= t0 <= lengths[ep] - 10
        t = t0 + np.arange(10)
        np.testing.assert_array_equal(batch["state"][b], np.stack([np.full(10, ep), t], -1))
        np.testing.assert_array_equal(batch["reward"][b], ep * 1000 + t)
        expected_action = np.where(t == 0, 0.0, ep + t / 1000).astype(np.float32)
        np.testing.assert_array_equal(batch["action"][b, :, 0], expected_action)
        np.testing.assert_array_equal(batch["is_first"][b], (t == 0) | (t == t0))  # every chunk starts fresh
        np.testing.assert_array_equal(batch["is_last"][b], t == lengths[ep] - 1)
        np.testing.assert_array_equal(batch["episode_step"][b], t)  # where in its episode each step is
        starts[ep].append(t0)
    if uniform_over == "steps":  # uniform over all 21 + 41 valid starts: ~32 draws each, episode 0 gets 21/62
        assert len(starts[0]) / n == pytest.approx(21 / 62, abs=0.04)
        counts = np.concatenate([np.bincount(starts[0], minlength=21), np.bincount(starts[2], minlength=41)])
        assert len(counts) == 62 and counts.min() >= 12 and counts.max() <= 60
    else:  # DreamerV2: each long-enough episode half the time, then uniform within it (~48 / ~24 draws a start)
        assert len(starts[0]) / n == pytest.approx(1 / 2, abs=0.04)
        c0, c2 = np.bincount(starts[0], minlength=21), np.bincount(starts[2], minlength=41)
        assert len(c0) == 21 and len(c2) == 41 and c0.min() >= 25 and c2.max() <= 45
    with pytest.raises(ValueError, match="no stored episode has >= 60 steps"):
        replay.sample(4, 60)


def test_prioritize_ends(tmp_path):
    n, length, draws = 100, 10, 4000

    def end_fraction(prioritize: bool) -> float:
        replay = Replay(tmp_path / str(prioritize), capacity=1000, seed=0, prioritize_ends=prioritize)
        add_episode(replay, 0, n)
        batch = replay.sample(draws, length)
        return batch["is_last"][:, -1].mean()

    uniform, prioritized = end_fraction(False), end_fraction(True)
    assert uniform == pytest.approx(1 / (n - length + 1), abs=0.01)
    assert prioritized == pytest.approx((length + 1) / (n + 1), abs=0.03)
    assert prioritized > 5 * uniform


def test_rng_state_round_trip(tmp_path):
    replay = Replay(tmp_path, capacity=1000, seed=5)
    for ep in range(3):
        add_episode(replay, ep, 20)
    replay.sample(4, 5)
    state = replay.rng_state()
    first = replay.sample(16, 5)
    second = replay.sample(16, 5)
    assert not np.array_equal(first["state"], second["state"])
    replay.set_rng_state(state)
    np.testing.assert_array_equal(replay.sample(16, 5)["state"], first["state"])
    resumed = Replay(tmp_path, capacity=1000, seed=123)  # resumed run restores the sampler state
    resumed.set_rng_state(state)
    np.testing.assert_array_equal(resumed.sample(16, 5)["state"], first["state"])


def test_image_bytes_per_step_and_uint8_batches(tmp_path):
    replay = Replay(tmp_path, capacity=1000)
    add_episode(replay, 0, 20, act_dim=6, image=True)
    stats = replay.stats()
    # 64*64*3 image + 6 float32 action + float32 reward + 3 bool flags, nothing upcast in memory.
    assert stats["bytes_per_step"] == 64 * 64 * 3 + 6 * 4 + 4 + 3
    assert stats["bytes"] == 20 * stats["bytes_per_step"] and stats["steps"] == 20
    batch = replay.sample(2, 5)
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (2, 5, 64, 64, 3)
    t0 = int(batch["reward"][0, 0])
    np.testing.assert_array_equal(batch["image"][0, :, 0, 0, 0], np.arange(t0, t0 + 5))


def test_real_env_round_trip(tmp_path):
    """A real DMC episode goes through add() and comes back from disk bit-exact."""
    rng = np.random.default_rng(0)
    replay = Replay(tmp_path, capacity=1000)
    with make_env("finger_spin", obs="state", time_limit=30) as env:
        obs = env.reset()
        path, states, actions = replay.add(obs), [obs["state"]], [np.zeros(2, np.float32)]
        while path is None:
            action = env.random_action(rng)
            obs = env.step(action)
            path = replay.add(obs, action)
            states.append(obs["state"])
            actions.append(action)
    reloaded = Replay(tmp_path, capacity=1000).episodes[0]
    np.testing.assert_array_equal(reloaded["state"], np.stack(states))
    np.testing.assert_array_equal(reloaded["action"], np.stack(actions))
    assert len(reloaded["state"]) == 31 and reloaded["is_last"][-1] and not reloaded["is_terminal"].any()
