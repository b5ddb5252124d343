"""Run-level settings of the evidence protocol: the `dmc_small` preset, `run.threads`, DMC's scalar observation
keys, and a resume that would change the run's resolved precision."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recipes.config import build
from tests.test_recipe_tempo import run_cli


def test_dmc_small_is_dmc_state_with_the_paper_latents_and_small_mlps():
    small, state = build("dmc_small"), build("dmc_state")
    assert (small.world_model.discrete, small.world_model.stoch) == (0, 32)  # Gaussian, 32-d (paper's DMC)
    assert (small.world_model.units, small.world_model.layers) == (200, 2)
    assert (small.agent.units, small.agent.layers) == (200, 2)
    assert (small.run.eval_every, small.run.eval_episodes) == (10_000, 5)
    # everything else is the reference's: the same as dmc_state, the 4x400 weighter included
    a, b = small.model_dump(), state.model_dump()
    for section, keys in {"world_model": ("discrete", "units", "layers"), "agent": ("units", "layers"),
                          "run": ("eval_every", "eval_episodes"), "": ("preset",)}.items():
        for k in keys:
            (a[section] if section else a).pop(k), (b[section] if section else b).pop(k)
    assert a == b
    w = small.tempo.bilevel.weighter
    assert (w.layers, w.units) == (5, 400)  # 4 hidden Dense(400) layers + the output layer


def test_run_threads_reaches_torch(tmp_path):
    from recipes.run import Run

    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            cfg = build("debug", {"env": {"task": "cartpole_swingup"}, "run": {"threads": n}})
            Run(cfg, tmp_path / str(n))
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="run.threads"):
        build("debug", {"run": {"threads": 0}})


def test_dmc_scalar_keys_are_dropped_as_the_reference_does():
    from envs import make_env

    drop, keep = make_env("walker_walk", "state", seed=3), make_env("walker_walk", "state", seed=3,
                                                                    scalar_keys="keep")
    # walker: orientations (14), height (a scalar), velocity (9); DreamerV2's encoder reads the 1-D keys only
    assert drop.obs_space == {"state": (23,)} and keep.obs_space == {"state": (24,)}
    a, b = drop.reset()["state"], keep.reset()["state"]
    height = float(keep._env.physics.torso_height())
    np.testing.assert_array_equal(a, np.concatenate([b[:14], b[15:]]))
    assert b[14] == np.float32(height)
    for _ in range(5):
        action = np.full(drop.action_dim, 0.3, np.float32)
        a, b = drop.step(action)["state"], keep.step(action)["state"]
        np.testing.assert_array_equal(a, np.concatenate([b[:14], b[15:]]))
    # a task without scalar keys is unchanged
    assert make_env("cartpole_swingup", "state").obs_space == make_env("cartpole_swingup", "state",
                                                                       scalar_keys="keep").obs_space
    with pytest.raises(ValueError, match="scalar_keys must be one of .* got 'some'"):
        make_env("walker_walk", "state", scalar_keys="some")
    assert build("dmc_small").env.scalar_keys == "drop"


def test_a_resume_that_would_change_the_resolved_precision_is_refused(tmp_path):
    from bilevel.precision import resolve

    here = resolve("auto", "cpu")  # what `auto` gives on this machine
    other = "bf16" if here == "32" else "32"
    logdir = tmp_path / "run"
    args = ["--task", "cartpole_swingup", "--preset", "debug", "--logdir", str(logdir), "--run.video_every", "0"]
    p = run_cli([*args, "--until", "150"])
    assert p.returncode == 0, p.stderr[-3000:]
    config = json.loads((logdir / "config.json").read_text())
    assert config["precision_resolved"] == here
    # the same run as if it had been made on a machine where `auto` resolved otherwise
    config["precision_resolved"] = other
    (logdir / "config.json").write_text(json.dumps(config))
    before = {p.name: p.read_bytes() for p in logdir.iterdir() if p.is_file()}
    p = run_cli(args)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert f"trained at precision {other!r}" in p.stderr and f"resolves to {here!r}" in p.stderr
    assert {p.name: p.read_bytes() for p in logdir.iterdir() if p.is_file()} == before  # nothing written
    # naming the precision it resolves to here is allowed when it is the run's own
    config["precision_resolved"] = here
    (logdir / "config.json").write_text(json.dumps(config))
    p = run_cli([*args, "--run.precision", here])
    assert p.returncode == 0, p.stderr[-3000:]
    assert "changed on resume: run.precision auto -> " + here in p.stderr


def test_every_distractor_field_reaches_both_environments(tmp_path):
    from envs.distractors import Distractors
    from recipes.run import Run

    d = {"mode": "constant", "dims": 4, "scale": 2.5, "switch_prob": 0.3}
    run = Run(build("debug", {"env": {"task": "gym:Pendulum-v1", "distractors": d}, "run": {"seed": 7}}), tmp_path)
    for env, seed in [(run.env, 7), (run.eval_env, 7 + 10_000)]:
        assert isinstance(env, Distractors)
        assert (env.mode, env.dims, env.scale, env.switch_prob, env.seed) == (*d.values(), seed)


def test_world_model_precision_sets_the_world_models_step_and_precision_the_actor_critics():
    from benchmarks.common import TEMPO
    from benchmarks.common import build as bench

    def after_one_update(setting: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with bench("tiny", TEMPO, precision=setting) as b:  # same seed: same θ, α, φ and batch
            b.train_step()  # the world model's (bilevel) step, then the actor-critic's from its states
            return ([p.detach().clone() for p in b.wm.parameters()],
                    [p.detach().clone() for p in b.agent.parameters()])

    def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    wm32, ac32 = after_one_update("32")
    wm16, ac16 = after_one_update("bf16")
    wm_a, ac_a = after_one_update("bf16/32")  # actor-critic bf16, world model float32
    wm_b, ac_b = after_one_update("32/bf16")
    assert not same(wm32, wm16) and not same(ac32, ac16)  # bf16 changes both steps at this size
    assert same(wm_a, wm32) and not same(ac_a, ac32)  # the world model's step bit for bit float32's
    assert same(wm_b, wm16) and not same(ac_b, ac16)


def test_the_world_model_stays_float32_on_a_cpu_unless_asked_otherwise():
    from recipes.config import RunConfig

    def modes(**run: str | None) -> tuple[str, str]:
        m = RunConfig(**run).precisions
        return m["agent"], m["world_model"]

    for p in ("auto", "32", "bf16", "16"):  # run.precision sets the actor-critic's
        assert modes(precision=p) == (p, "32")  # the default world_model_precision, auto: float32 on a CPU
        assert modes(precision=p, device="cuda") == (p, p)  # and run.precision on CUDA
        assert modes(precision=p, world_model_precision=None) == (p, p)  # runs made before: as run.precision
    assert modes(precision="bf16", world_model_precision="bf16") == ("bf16", "bf16")
    assert modes(precision="32", world_model_precision="bf16", device="cuda") == ("32", "bf16")


def test_a_resume_that_would_change_the_world_models_precision_is_refused(tmp_path):
    from bilevel.precision import resolve

    here = resolve("auto", "cpu")  # `auto` keeps the world model float32 on a CPU, bf16 or not
    other = "bf16"
    logdir = tmp_path / "run"
    args = ["--task", "cartpole_swingup", "--preset", "debug", "--logdir", str(logdir), "--run.video_every", "0"]
    p = run_cli([*args, "--until", "150"])
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout.strip().splitlines()[-1])["world_model_precision"] == "32"
    path = logdir / "config.json"
    config = json.loads(path.read_text())
    assert (config["precision_resolved"], config["world_model_precision_resolved"]) == (here, "32")

    def refused(cli_args: list[str], trained: str, now: str) -> None:
        before = {p.name: p.read_bytes() for p in logdir.iterdir() if p.is_file()}
        p = run_cli(cli_args)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert f"trained its world model at precision {trained!r}" in p.stderr, p.stderr
        assert f"resolves to {now!r}" in p.stderr, p.stderr
        assert {p.name: p.read_bytes() for p in logdir.iterdir() if p.is_file()} == before  # nothing written

    # asked for on resume: the world model would change precision mid-run
    refused([*args, "--run.world_model_precision", other], trained="32", now=other)
    # made where its world model trained otherwise
    path.write_text(json.dumps({**config, "world_model_precision_resolved": other}))
    refused(args, trained=other, now="32")
    # runs from before the field existed, and from before `auto` kept it float32 (None), trained their world
    # model at their one precision and resume as they were: bf16 where `auto` was bf16
    for saved_run in ({k: v for k, v in config["run"].items() if k != "world_model_precision"},
                      {**config["run"], "world_model_precision": None}):
        old = {k: v for k, v in config.items() if k != "world_model_precision_resolved"}
        path.write_text(json.dumps({**old, "run": saved_run}))
        p = run_cli([*args, "--until", "300" if "world_model_precision" in saved_run else "225"])
        assert p.returncode == 0, p.stderr[-3000:]
        assert json.loads(p.stdout.strip().splitlines()[-1])["world_model_precision"] == here


def test_runs_made_before_trunc_grad_resume_with_the_exact_gradient():
    """`agent.trunc_grad` defaults to TensorFlow's gradient, the references'; a run saved before the field existed
    trained with the exact one and must go on with it, and a resume may not switch it mid-run (one line)."""
    from recipes.cli import resume_config
    from recipes.usage import UsageError

    saved = build("debug").model_dump(mode="json")
    assert saved["agent"]["trunc_grad"] == "tf"
    cfg, changed = resume_config(saved, {}, None)
    assert cfg.agent.trunc_grad == "tf" and changed == {}
    old = {**saved, "agent": {k: v for k, v in saved["agent"].items() if k != "trunc_grad"}}
    cfg, changed = resume_config(old, {}, None)
    assert cfg.agent.trunc_grad == "exact" and changed == {}
    with pytest.raises(UsageError, match=r"agent\.trunc_grad 'exact' -> 'tf'"):
        resume_config(old, {"agent": {"trunc_grad": "tf"}}, None)
