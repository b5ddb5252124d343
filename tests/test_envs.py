"""Real-environment tests for envs/: DMC (state + pixels), Atari (ALE), generic gymnasium."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from envs import PAPER_ATARI_GAMES, PAPER_DMC_TASKS, EpisodeEndedError, make_env, validate_task

FLAGS = ("is_first", "is_last", "is_terminal")


def check_obs(env, obs, first: bool) -> None:
    """Every obs must match the documented keys, shapes and dtypes."""
    ((key, shape),) = env.obs_space.items()
    assert set(obs) == {key, "reward", *FLAGS}
    assert obs[key].shape == shape
    assert obs[key].dtype == (np.uint8 if key == "image" else np.float32)
    assert isinstance(obs["reward"], np.float32) and np.isfinite(obs["reward"])
    assert all(isinstance(obs[k], bool) for k in FLAGS)
    assert obs["is_first"] is first
    if first:
        assert obs["reward"] == 0.0 and not obs["is_last"] and not obs["is_terminal"]


# ---------------------------------------------------------------------------------------------- DMC
def test_dmc_state_finger_spin():
    rng = np.random.default_rng(0)
    with make_env("finger_spin", obs="state", seed=1) as env:
        assert env.obs_space == {"state": (9,)} and env.action_dim == 2 and not env.discrete
        obs = env.reset()
        check_obs(env, obs, first=True)
        states = [obs["state"]]
        for _ in range(5):
            obs = env.step(env.random_action(rng))
            check_obs(env, obs, first=False)
            assert 0.0 <= obs["reward"] <= 2.0  # finger_spin reward in [0, 1] per control step, repeat 2
            states.append(obs["state"])
        assert not np.allclose(states[0], states[-1])


def test_dmc_seed_determinism():
    a, b = make_env("finger_spin", obs="state", seed=3), make_env("finger_spin", obs="state", seed=3)
    np.testing.assert_array_equal(a.reset()["state"], b.reset()["state"])
    c = make_env("finger_spin", obs="state", seed=4)
    assert not np.array_equal(a.reset()["state"], c.reset()["state"])


def test_dmc_pixels_cartpole_swingup():
    with make_env("dmc:cartpole_swingup", seed=0) as env:
        assert env.obs_space == {"image": (64, 64, 3)} and env.action_dim == 1
        obs = env.reset()
        check_obs(env, obs, first=True)
        frames = [obs["image"]]
        for _ in range(4):
            obs = env.step(np.ones(1))
            check_obs(env, obs, first=False)
            frames.append(obs["image"])
        assert frames[0].std() > 5  # a real rendered scene, not a blank buffer
        diffs = [np.abs(frames[i + 1].astype(int) - frames[i]).sum() for i in range(4)]
        assert all(d > 0 for d in diffs), diffs


@pytest.mark.parametrize("task", PAPER_DMC_TASKS)
def test_dmc_paper_tasks_construct_and_step(task):
    rng = np.random.default_rng(0)
    with make_env(task, obs="state") as env:
        obs = env.reset()
        check_obs(env, obs, first=True)
        for _ in range(2):
            check_obs(env, env.step(env.random_action(rng)), first=False)
        if task == "quadruped_walk":  # DreamerV2 uses camera 2 for quadruped
            assert env._camera == 2
            frame = env.render()
            assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
            assert not np.array_equal(frame, env.render(camera=0))


def test_dmc_cup_alias():
    from envs.dmc import dmc_tasks

    assert validate_task("cup_catch") == ("dmc", "cup_catch")
    assert dmc_tasks()["cup_catch"] == dmc_tasks()["ball_in_cup_catch"] == ("ball_in_cup", "catch")
    with make_env("cup_catch", obs="state") as env:
        assert env._env.task.__class__.__name__ == "BallInCup"


def test_dmc_default_episode_and_time_limit():
    rng = np.random.default_rng(0)
    with make_env("finger_spin", obs="state") as env:
        env.reset()
        steps, obs = 0, {"is_last": False}
        while not obs["is_last"]:
            obs = env.step(env.random_action(rng))
            steps += 1
        assert steps == 500  # 1000 control steps at action repeat 2
        assert obs["is_terminal"] is False
    with make_env("finger_spin", obs="state", time_limit=5) as env:
        env.reset()
        lasts = [env.step(env.random_action(rng)) for _ in range(5)]
        assert [o["is_last"] for o in lasts] == [False] * 4 + [True]
        assert not any(o["is_terminal"] for o in lasts)
        with pytest.raises(EpisodeEndedError, match="reset"):
            env.step(env.random_action(rng))
        check_obs(env, env.reset(), first=True)  # reset makes it usable again
        env.step(env.random_action(rng))


def test_step_before_reset_and_action_checks():
    with make_env("finger_spin", obs="state") as env:
        with pytest.raises(EpisodeEndedError):
            env.step(np.zeros(2))
        env.reset()
        with pytest.raises(ValueError, match="shape"):
            env.step(np.zeros(3))
        env.step(np.full(2, 7.0))  # out-of-range actions are clipped, not an error


# ---------------------------------------------------------------------------------------------- Atari
def test_atari_pong():
    with make_env("atari:pong", seed=0) as env:
        assert env.obs_space == {"image": (64, 64, 1)} and env.discrete and env.action_dim == 6
        # DreamerV2 settings live in the underlying ALE env / preprocessing wrapper.
        ale_env = env._env.unwrapped
        assert ale_env._frameskip == 1
        assert ale_env.ale.getFloat("repeat_action_probability") == pytest.approx(0.25)
        assert env._env.frame_skip == 4 and env._env.noop_max == 30 and env._time_limit == 27000
        obs = env.reset()
        check_obs(env, obs, first=True)
        frames = [obs["image"]]
        for t in range(20):
            action = t % 6 if t % 2 else np.eye(6)[t % 6]  # ints and one-hot vectors both accepted
            obs = env.step(action)
            check_obs(env, obs, first=False)
            assert obs["reward"] in (-1.0, 0.0, 1.0)
            frames.append(obs["image"])
        assert frames[-1].std() > 1  # real screen content
        assert any(not np.array_equal(frames[i], frames[i + 1]) for i in range(20))
        with pytest.raises(ValueError):
            env.step(6)


def test_atari_paper_games():
    for game in PAPER_ATARI_GAMES:
        with make_env(f"atari:{game}", seed=0) as env:
            obs = env.reset()
            check_obs(env, obs, first=True)
            check_obs(env, env.step(0), first=False)


def test_atari_time_limit_is_truncation():
    with make_env("atari:pong", time_limit=3) as env:
        env.reset()
        obs = [env.step(0) for _ in range(3)]
        assert obs[-1]["is_last"] and not obs[-1]["is_terminal"]


# ---------------------------------------------------------------------------------------------- gymnasium
def test_gym_pendulum_rescales_and_clips_actions():
    envs = [make_env("gym:Pendulum-v1", seed=0) for _ in range(3)]
    for env in envs:
        assert env.obs_space == {"state": (3,)} and env.action_dim == 1 and not env.discrete
        check_obs(env, env.reset(), first=True)
    plus, minus, clipped = (env.step(np.array([a])) for env, a in zip(envs, (1.0, -1.0, 5.0), strict=True))
    # state = (cos, sin, angular velocity): max torque +2 vs -2 must push the velocity in opposite directions.
    assert plus["state"][2] > minus["state"][2]
    np.testing.assert_array_equal(plus["state"], clipped["state"])
    assert plus["reward"] <= 0.0
    for env in envs:
        env.close()


def test_gym_tasks_need_no_ale_py(monkeypatch):
    """ale-py is for Atari only: a gym task resolves and runs where it is not installed (the GPU machine's image)."""
    monkeypatch.setitem(sys.modules, "ale_py", None)  # `import ale_py` now raises ImportError
    assert validate_task("gym:Pendulum-v1") == ("gym", "Pendulum-v1")
    env = make_env("gym:Pendulum-v1", seed=0)
    check_obs(env, env.reset(), first=True)
    env.close()


def test_gym_cartpole_discrete_one_hot_and_termination():
    a, b = make_env("gym:CartPole-v1", seed=0), make_env("gym:CartPole-v1", seed=0)
    assert a.discrete and a.action_dim == 2 and a.obs_space == {"state": (4,)}
    np.testing.assert_array_equal(a.reset()["state"], b.reset()["state"])
    steps = 0
    while True:  # always pushing right topples the pole long before the 500-step limit
        oa, ob = a.step(np.array([0.0, 1.0])), b.step(1)
        np.testing.assert_array_equal(oa["state"], ob["state"])
        steps += 1
        if oa["is_last"]:
            break
    assert oa["is_terminal"] and steps < 100
    a.close()
    b.close()


# ---------------------------------------------------------------------------------------------- names
def test_unknown_names_suggest_and_construct_nothing(monkeypatch):
    import dm_control.suite
    import gymnasium

    def boom(*args, **kwargs):
        raise AssertionError("an environment was constructed for an invalid name")

    monkeypatch.setattr(dm_control.suite, "load", boom)
    monkeypatch.setattr(gymnasium, "make", boom)
    cases = {
        "finger_spn": "finger_spin",
        "dmc:walker_wlak": "walker_walk",
        "atari:pongg": "atari:pong",
        "atari:crazyclimber": "atari:crazy_climber",
        "pong": "atari:pong",
        "gym:Pendulum-v2": "gym:Pendulum-v1",
        "dcm:finger_spin": "dmc",
    }
    for task, expected in cases.items():
        for fn in (validate_task, make_env):
            with pytest.raises(ValueError) as info:
                fn(task)
            assert expected in str(info.value), (task, str(info.value))
            assert "Known suites" in str(info.value)
    with pytest.raises(ValueError, match="obs"):
        make_env("finger_spin", obs="rgb")
    with pytest.raises(ValueError, match="pixel"):
        make_env("atari:pong", obs="state")
