"""End-to-end runs of `python -m recipes.tempo` at the debug preset: outputs, resume, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]


def run_cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    # the inherited PYTHONPATH stays after ROOT: a GPU session installs missing packages to a --target folder
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "recipes.tempo", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def records(logdir: Path) -> list[dict]:
    return [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]


def test_debug_state_dmc_writes_all_outputs(tmp_path):
    logdir = tmp_path / "run"
    p = run_cli(["--task", "cartpole_swingup", "--preset", "debug", "--logdir", str(logdir),
                 "--run.progress_every", "0.5"])
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    # no terminal: a progress line at each evaluation (steps 0, 150, 300; the last is the end) and every 0.5 s;
    # how many timed lines a run gets depends on the machine's speed (tests/test_progress.py covers them under a
    # fake clock), so only the evaluations' lines are counted here
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("progress ")]
    pattern = re.compile(r"progress frames=(\d+)/300 fps=[\d.]+ updates=(\d+)( pretrain=\d+/2)? eval=(-|-?[\d.]+) "
                         r"eta=(-|[\d:]+)$")
    assert len(lines) >= 3 and all(pattern.match(ln) for ln in lines), lines
    assert pattern.match(lines[-1]).group(1, 2) == ("300", "12")
    # 150 agent steps: 2 pretrain updates when the 60-step prefill is done, then one every 10 agent steps
    assert summary["step"] == 300 and summary["updates"] == 2 + 10 and summary["method"] == "tempo"
    cfg = json.loads((logdir / "config.json").read_text())
    assert cfg["task"] == "cartpole_swingup" and cfg["preset"] == "debug" and cfg["method"] == "tempo"
    assert cfg["tempo"]["bilevel"]["weighter"]["lr"] == 1e-4  # the paper's default survives the preset
    recs = records(logdir)
    steps = [r["step"] for r in recs]
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 300
    evals = [r for r in recs if "eval_return" in r]
    assert len(evals) >= 3 and all(np.isfinite(r["eval_return"]) for r in evals)
    trained = [r for r in recs if "wm/upper_loss" in r]
    assert trained, "no trainer metrics logged"
    last = trained[-1]
    for key in ("wm/lower_loss", "wm/lower_loss_unweighted", "wm/weight_mean", "wm/weight_std", "wm/weight_min",
                "wm/weight_max", "wm/hypergrad_norm", "agent/critic_loss", "wm/kl", "wm/state_loss",
                "wm/reward_loss", "wm/prior_ent", "wm/post_ent", "wm/weight_reward_corr", "wm/weight_phase_corr",
                "wm/weight_chunk_start"):
        assert key in last and np.isfinite(last[key]), key
    assert 0.75 <= last["wm/weight_min"] <= last["wm/weight_max"] <= 1.25
    assert (logdir / "checkpoint.pt").exists()
    assert list((logdir / "tb").glob("events.out.tfevents.*"))
    assert list(logdir.glob("eval_*.gif"))
    assert len(list((logdir / "replay").glob("*.npz"))) >= 2


def test_debug_baseline_and_atari(tmp_path):
    p = run_cli(["--task", "atari:pong", "--preset", "debug", "--weighting", "none", "--logdir",
                 str(tmp_path / "pong"), "--run.steps", "600", "--run.prefill", "60", "--run.eval_every", "600",
                 "--env.time_limit", "30"])
    assert p.returncode == 0, p.stderr[-3000:]
    cfg = json.loads((tmp_path / "pong" / "config.json").read_text())
    assert cfg["method"] == "dreamerv2" and cfg["env"]["obs"] == "pixels"
    # prefill and train_every count agent steps: 600 frames at repeat 4 update as often as 300 at repeat 2
    assert json.loads(p.stdout.strip().splitlines()[-1])["updates"] == 2 + 10
    last = [r for r in records(tmp_path / "pong") if "wm/lower_loss" in r][-1]
    assert last["wm/weight_min"] == last["wm/weight_max"] == 1.0  # uniform weights: plain DreamerV2
    assert "wm/hypergrad_norm" not in last


def test_debug_pixel_dmc_renders_real_frames(tmp_path):
    import imageio.v2 as imageio

    logdir = tmp_path / "pix"
    p = run_cli(["--task", "cartpole_swingup", "--preset", "debug", "--env.obs", "pixels", "--logdir", str(logdir),
                 "--run.steps", "160", "--run.eval_every", "1000", "--env.time_limit", "40"])
    assert p.returncode == 0, p.stderr[-3000:]
    gif = sorted(logdir.glob("eval_*.gif"))[0]
    frames = np.stack(imageio.mimread(gif))
    assert frames.shape[1:3] == (64, 64) and frames.std() > 5  # real rendered content
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 0.5  # the pole moved


def test_an_eval_video_renders_only_the_frames_it_keeps(tmp_path):
    """An episode longer than VIDEO_FRAMES keeps every second frame; the dropped ones are never rendered."""
    from recipes.config import build
    from recipes.run import VIDEO_FRAMES, Run

    for steps in (VIDEO_FRAMES, VIDEO_FRAMES + 51):
        run = Run(build("debug", {"env": {"task": "cartpole_swingup", "time_limit": steps},
                                  "run": {"video_every": 1}}), tmp_path / str(steps))
        calls: list[int] = []

        def frame(obs: dict, calls: list[int] = calls) -> np.ndarray:  # the n-th render is a frame of value n
            calls.append(len(calls))
            return np.full((2, 2, 3), calls[-1], np.uint8)

        run.frame = frame
        _, frames = run.evaluate()
        # renders: every step up to VIDEO_FRAMES, then every second one; kept: every step, or every second one
        kept_steps = range(steps) if steps <= VIDEO_FRAMES else range(0, steps, 2)
        rendered_steps = [t for t in range(steps) if t < VIDEO_FRAMES or t % 2 == 0]
        assert len(calls) == len(rendered_steps)
        assert [int(f[0, 0, 0]) for f in frames] == [rendered_steps.index(t) % 256 for t in kept_steps]


def test_until_pauses_a_sitting_and_the_next_one_goes_on(tmp_path):
    """--until 150 of 300 frames stops with a checkpoint and a logged record at 150; the plain command then trains
    to 300, with exactly the updates of an uninterrupted run (2 pretraining + 10) and no step logged twice."""
    logdir = tmp_path / "run"
    args = ["--task", "cartpole_swingup", "--preset", "debug", "--logdir", str(logdir), "--run.video_every", "0"]
    p = run_cli([*args, "--until", "150"])
    assert p.returncode == 0, p.stderr[-3000:]
    first = json.loads(p.stdout.strip().splitlines()[-1])
    assert first["step"] == 150 and first["paused_until"] == 150
    assert records(logdir)[-1]["step"] == 150
    p = run_cli(args)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["step"] == 300 and summary["updates"] == 2 + 10 and "paused_until" not in summary
    steps = [r["step"] for r in records(logdir)]
    assert steps == sorted(set(steps)) and steps[-1] == 300


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_interrupt_saves_checkpoint_and_exits_cleanly(tmp_path, sig, code):
    logdir = tmp_path / "int"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "recipes.tempo", "--task", "cartpole_swingup", "--preset", "debug",
                             "--logdir", str(logdir), "--run.steps", "100000", "--run.checkpoint_every", "100000"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (logdir / "metrics.jsonl").exists():
        time.sleep(0.2)
    time.sleep(3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "checkpoint saved" in err and "Traceback" not in err
    assert (logdir / "checkpoint.pt").exists()


@pytest.mark.parametrize("args,needle", [
    (["--task", "finger_spn"], "finger_spin"),
    (["--preset", "huge"], "huge"),
    (["--upper-loss", "nope"], "vvaml"),
    (["--upper-loss", "no_such_module_xyz:Loss"], "no_such_module_xyz"),
    (["--steps", "-5"], "steps"),
    (["--weighting", "meta2"], "'naive'"),
    (["--hypergrad", "unroll", "--engine", "betty"], "supported strategies for 'betty'"),
    (["--device", "cuda"], "cuda"),
    (["--world_model.lr", "0"], "world_model.lr"),
    (["--bogus.field", "1"], "bogus"),
    (["--world_model.lr", "inf"], "finite"),
    (["--agent.gamma", "nan"], "finite"),
    (["--preset", "atari", "--task", "finger_spin"], "preset 'atari' is for atari"),
    (["--env.obs", "pixels", "--env.size", "[0,0]"], "env.size"),
    (["--env.obs", "pixels", "--env.size", "[32,32]"], "64x64"),
    (["--task", "cartpole_swingup", "--replay.length", "100"], "replay.length 100"),
    (["--logdir", ""], "--logdir is empty"),
    (["--until", "0"], "--until 0: expected a positive number of frames"),
    (["--run.compile", "maybe"], "run.compile"),
    (["--run.precision", "16", "--run.world_model_precision", "16", "--tempo.bilevel.contraction", "double_backward"],
     "--run.world_model_precision 16: precision '16' supports strategies ['approx'] with contractions"),
    (["--run.world_model_precision", "16", "--tempo.bilevel.hypergrad_precision", "step"],
     "--run.world_model_precision 16: precision '16' takes ∇θ L_up from a float32 pass"),
    (["--env.distractors.mode", "sometimes"], "env.distractors.mode: Input should be 'none', 'constant' or"),
    (["--env.distractors.switch_prob", "1.5"], "env.distractors.switch_prob"),
    (["--env.distractors.mode", "constant", "--env.obs", "pixels"], "appends dims to state observations"),
])
def test_bad_input_fails_before_creating_anything(tmp_path, args, needle):
    import torch

    if needle == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA present: --device cuda is valid here")
    logdir = tmp_path / "never"
    p = run_cli(["--preset", "debug", "--logdir", str(logdir), *args], timeout=120)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert needle in p.stderr and p.stderr.startswith("error: ") and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr  # one line
    assert not logdir.exists()


def test_compile_without_a_cxx_compiler_is_a_usage_error(tmp_path, monkeypatch):
    """torch.compile on CPU builds C++ kernels: without a compiler `--run.compile true` fails up front, not at the
    first update after the prefill."""
    import shutil

    from recipes.cli import UsageError, preflight
    from recipes.config import build

    cfg = build("debug", {"env": {"task": "finger_spin"}, "run": {"compile": True, "logdir": str(tmp_path / "x")}})
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    with pytest.raises(UsageError, match=r"needs a C\+\+ compiler .* none is on the PATH"):
        preflight(cfg)
    monkeypatch.delenv("CXX")
    if shutil.which("g++"):
        preflight(cfg)  # found on the PATH: accepted
    assert not (tmp_path / "x").exists()


def test_unwritable_logdir():
    target = Path("/proc/tempo-test-run")  # /proc refuses new files even for root
    p = run_cli(["--preset", "debug", "--logdir", str(target)], timeout=120)
    assert p.returncode == 2 and "not writable" in p.stderr, p.stderr
    assert not target.exists()


def test_logdir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    p = run_cli(["--preset", "debug", "--logdir", str(f)], timeout=120)
    assert p.returncode == 2 and "not a directory" in p.stderr


def test_persistent_nonfinite_stops_with_a_clear_message(tmp_path):
    logdir = tmp_path / "nan"
    p = run_cli(["--task", "cartpole_swingup", "--preset", "debug", "--logdir", str(logdir),
                 "--world_model.lr", "1e30", "--run.max_nonfinite", "3"])
    assert p.returncode == 1, p.stderr[-2000:]
    assert "consecutive non-finite bilevel steps" in p.stderr and "Traceback" not in p.stderr
    assert (logdir / "checkpoint.pt").exists()
    skipped = [r["wm/nonfinite_steps"] for r in records(logdir) if "wm/nonfinite_steps" in r]
    assert skipped and max(skipped) >= 1  # skipped updates were counted in the metrics before stopping
