"""envs/distractors.py: seeding, pass-through of the inner env, the gate, standardisation and the Lorenz system."""

from __future__ import annotations

import numpy as np
import pytest

from envs import Replay, make_env
from envs.distractors import Distractors, attractor_stats, lorenz, on_attractor, rk4, wrap_distractors

FLAGS = ("reward", "is_first", "is_last", "is_terminal")


def pendulum(seed: int = 0):
    return make_env("gym:Pendulum-v1", obs="state", seed=seed)  # 200-step episodes, ends by truncation


def rollout(env, steps: int, seed: int = 0) -> list[dict]:
    """Observations over `steps` calls (random actions from a fixed rng, a reset after each episode end)."""
    rng = np.random.default_rng(seed)
    obs = [env.reset()]
    for _ in range(steps):
        obs.append(env.reset() if obs[-1]["is_last"] else env.step(env.random_action(rng)))
    return obs


def extra(obs: list[dict], dims: int) -> np.ndarray:
    return np.stack([o["state"][-dims:] for o in obs])


def gates(obs: list[dict]) -> np.ndarray:
    return np.array([o["log_distractor_on"] for o in obs])


def test_same_seed_same_observations_other_seed_and_episode_differ():
    def run(seed):
        return rollout(Distractors(pendulum(), "intermittent", dims=4, seed=seed), 402)  # 2 episodes + a reset

    a, b, c = run(7), run(7), run(8)
    assert sum(o["is_first"] for o in a) == 3
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert not np.array_equal(extra(a, 4), extra(c, 4))
    assert not np.array_equal(gates(a), gates(c))
    np.testing.assert_array_equal([o["state"][:3] for o in a], [o["state"][:3] for o in c])  # same inner env
    # episodes of one run differ: other Lorenz starts and other gate sequences
    assert not np.array_equal(extra(a, 4)[:201], extra(a, 4)[201:402])


TASKS = [("gym:Pendulum-v1", 401), ("gym:CartPole-v1", 300), ("cartpole_swingup", 1001)]  # (task, rollout steps)


@pytest.mark.parametrize("task, steps", TASKS)
def test_inner_env_untouched(task, steps):
    """Reward, flags and the original dims are the inner env's, step by step, given the same actions."""
    plain = make_env(task, obs="state", seed=3)
    wrapped = Distractors(make_env(task, obs="state", seed=3), "intermittent", dims=5, switch_prob=0.2, seed=1)
    dim = plain.obs_space["state"][0]
    assert wrapped.obs_space == {"state": (dim + 5,)}
    assert (wrapped.action_dim, wrapped.discrete, wrapped.action_repeat) == (
        plain.action_dim, plain.discrete, plain.action_repeat)
    ours, theirs = rollout(wrapped, steps), rollout(plain, steps)
    for w, p in zip(ours, theirs, strict=True):
        assert set(w) == set(p) | {"log_distractor_on"}
        np.testing.assert_array_equal(w["state"][:dim], p["state"])
        assert w["state"].dtype == np.float32 and np.isfinite(w["state"]).all()
        for k in FLAGS:
            assert w[k] == p[k] and type(w[k]) is type(p[k]), k
    assert sum(o["is_last"] for o in theirs) >= 2  # episode ends were compared, not only mid-episode steps
    if task == "gym:CartPole-v1":
        assert any(o["is_terminal"] for o in theirs)  # a true termination went through
    else:
        assert not any(o["is_terminal"] for o in theirs)  # time-limit ends stay truncations


def test_none_is_identity():
    env = pendulum()
    assert wrap_distractors(env, "none", dims=3) is env
    wrapped = Distractors(pendulum(), "none", dims=3)
    assert wrapped.obs_space == env.obs_space
    for w, p in zip(rollout(wrapped, 250), rollout(env, 250), strict=True):
        assert w.keys() == p.keys()
        for k in p:
            np.testing.assert_array_equal(w[k], p[k])


def test_constant_gate_always_on():
    env = wrap_distractors(pendulum(), "constant", dims=3, seed=2)
    obs = rollout(env, 300)
    assert gates(obs).all() and env.gate is True
    x = extra(obs, 3)
    assert (x != 0).all()
    assert (np.abs(np.diff(x, axis=0)) > 0).all()
    assert (x.std(0) > 0.5).all()


def test_intermittent_gate_switches_and_zeroes():
    env = wrap_distractors(pendulum(), "intermittent", dims=3, switch_prob=0.1, seed=0)
    obs = rollout(env, 1004)  # 5 episodes of 200 steps
    g, x = gates(obs), extra(obs, 3)
    assert g[-1] == env.gate
    assert 0.3 < g.mean() < 0.7
    within = np.array([not o["is_first"] for o in obs[1:]])  # transitions inside an episode
    switches = (g[1:] != g[:-1])[within].sum()
    assert within.sum() == 1000 and 60 < switches < 140  # Binomial(1000, 0.1): 100 +- 9.5
    assert (x[~g] == 0).all() and (x[g] != 0).all()
    assert all(type(o["log_distractor_on"]) is bool for o in obs)


def test_standardised_to_unit_scale():
    one = extra(rollout(wrap_distractors(pendulum(), "constant", dims=6, scale=1.0, seed=5), 3000), 6)
    two = extra(rollout(wrap_distractors(pendulum(), "constant", dims=6, scale=2.0, seed=5), 3000), 6)
    assert (np.abs(one.mean(0)) < 0.3).all(), one.mean(0)
    assert (np.abs(one.std(0) - 1) < 0.3).all(), one.std(0)
    np.testing.assert_allclose(two, 2 * one, rtol=1e-6)
    np.testing.assert_allclose(two.std(0) / one.std(0), 2.0, rtol=1e-5)
    mean, std = attractor_stats()  # the known Lorenz-63 attractor statistics
    np.testing.assert_allclose(mean, [0, 0, 23.6], atol=0.2)
    np.testing.assert_allclose(std, [7.9, 9.0, 8.6], atol=0.2)


def test_lorenz_field_and_rk4_order():
    s = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(lorenz(s), [10.0, 23.0, -6.0])  # sigma (y - x), x (rho - z) - y, x y - beta z
    np.testing.assert_allclose((rk4(s, 1, 1e-7) - s) / 1e-7, [10.0, 23.0, -6.0], rtol=1e-5)
    ref = rk4(s, 4000, 0.5 / 4000)  # half a time unit
    errors = [np.abs(rk4(s, n, 0.5 / n) - ref).max() for n in (100, 200)]
    assert 13 < errors[0] / errors[1] < 20  # halving the step divides the error by 2^4: fourth order


def test_lorenz_chaotic_and_bounded():
    a = on_attractor(np.random.default_rng(0), 16)
    b = a + 1e-8
    diffs = []
    for _ in range(4000):  # 40 time units (these 16 pairs separate after 16-37)
        a, b = rk4(a), rk4(b)
        diffs.append(np.abs(a - b).max(1))
        assert (np.abs(a[:, :2]) < 30).all() and (0 < a[:, 2]).all() and (a[:, 2] < 60).all()
    diffs = np.array(diffs)
    assert (diffs[99] < 1e-5).all()  # still together after one time unit
    assert (diffs.max(0) > 1).all()  # every pair separated to O(1)


@pytest.mark.parametrize("kw, bad", [
    ({"mode": "sometimes"}, "mode 'sometimes'"),
    ({"dims": 0}, "dims 0"),
    ({"dims": 2.5}, "dims 2.5"),
    ({"scale": 0.0}, "scale 0.0"),
    ({"scale": -1.5}, "scale -1.5"),
    ({"scale": float("nan")}, "scale nan"),
    ({"switch_prob": 0.0}, "switch_prob 0.0"),
    ({"switch_prob": 1.5}, "switch_prob 1.5"),
    ({"seed": -1}, "seed -1"),
])
def test_bad_values_one_line_errors(kw, bad):
    args = {"mode": "intermittent", **kw}
    for make in (Distractors, wrap_distractors):
        with pytest.raises(ValueError) as err:
            make(pendulum(), **args)
        msg = str(err.value)
        assert "\n" not in msg and bad in msg and "accepted" in msg, msg


def test_image_observations_rejected():
    with pytest.raises(ValueError) as err:
        Distractors(make_env("cartpole_swingup", obs="pixels"), "constant")
    msg = str(err.value)
    assert "\n" not in msg and "'image'" in msg and "'state'" in msg, msg


def test_replay_stores_the_wrapped_state(tmp_path):
    """The replay stores the wrapped state and the gate (a `log_` key), and batches carry the gate."""
    replay = Replay(tmp_path, capacity=1000)
    rng = np.random.default_rng(0)
    env = wrap_distractors(pendulum(), "intermittent", dims=3, seed=0)
    obs, steps = env.reset(), []
    replay.add(obs)
    while not obs["is_last"]:
        action = env.random_action(rng)
        obs = env.step(action)
        replay.add(obs, action)
        steps.append(obs)
    (episode,) = Replay(tmp_path, capacity=1000).episodes  # reloaded from disk
    np.testing.assert_array_equal(episode["state"][1:], np.stack([o["state"] for o in steps]))
    np.testing.assert_array_equal(episode["log_distractor_on"][1:], [o["log_distractor_on"] for o in steps])
    assert episode["log_distractor_on"].dtype == bool
    batch = Replay(tmp_path, capacity=1000, batch=4, length=20).sample()
    assert batch["log_distractor_on"].shape == (4, 20) and batch["log_distractor_on"].dtype == bool


def test_a_run_with_intermittent_distractors_logs_where_the_weights_go(tmp_path):
    """`--env.distractors.*` reaches the environment of a real run: the world model sees the extra dims, the replay
    keeps the gate, and the run logs the mean weight on gate-on steps over the batch mean."""
    import json

    from tests.test_recipe_tempo import records, run_cli

    logdir = tmp_path / "run"
    p = run_cli(["--task", "gym:Pendulum-v1", "--preset", "debug", "--steps", "600", "--logdir", str(logdir),
                 "--env.distractors.mode", "intermittent", "--env.distractors.dims", "5", "--run.video_every", "0"])
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((logdir / "config.json").read_text())["env"]["distractors"]["dims"] == 5
    episodes = [np.load(f) for f in sorted((logdir / "replay").glob("*.npz"))]
    assert all(e["state"].shape[1] == 3 + 5 for e in episodes)  # Pendulum's 3 dims + 5 distractor dims
    gate = np.concatenate([e["log_distractor_on"] for e in episodes])
    extra = np.concatenate([e["state"][:, 3:] for e in episodes])
    assert 0 < gate.mean() < 1 and np.all(extra[~gate] == 0) and np.all(np.abs(extra[gate]).sum(-1) > 0)
    ratios = [r["wm/weight_distractor_on"] for r in records(logdir) if "wm/weight_distractor_on" in r]
    assert ratios and all(0.5 < x < 1.5 for x in ratios)
