"""A run directory that never lies: kill -9 at any moment, corrupt checkpoints, reruns with other settings."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_recipe_tempo import ROOT, records, run_cli

REPEAT = 2  # DMC
ARGS = ["--task", "cartpole_swingup", "--preset", "debug", "--run.steps", "900", "--run.checkpoint_every", "200",
        "--run.log_every", "60", "--run.eval_every", "300"]


def start(logdir: Path, module: str = "recipes.tempo", args: list[str] = ARGS) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", module, *args, "--logdir", str(logdir)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def logged_past(logdir: Path, step: int) -> bool:
    """Whether metrics.jsonl has a record at `step` frames or later (lines cut by the writer are skipped)."""
    try:
        lines = (logdir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return False
    for line in reversed(lines):
        try:
            return json.loads(line)["step"] >= step
        except (json.JSONDecodeError, KeyError):
            continue
    return False


def stored_agent_steps(logdir: Path) -> int:
    """Agent steps the replay holds: each episode file stores its first observation plus one per step."""
    return sum(int(p.stem.rsplit("-", 1)[1]) - 1 for p in (logdir / "replay").glob("*.npz"))


def check_consistent(logdir: Path, total: int | None = None) -> None:
    steps = [r["step"] for r in records(logdir)]
    assert steps == sorted(set(steps)), f"metrics steps not strictly increasing: {steps}"
    state = torch.load(logdir / "checkpoint.pt", weights_only=False)
    assert json.loads((logdir / "progress.json").read_text()) == state["counters"]  # the sidecar sweeps read
    pending = state["replay"]["pending"]
    agent_steps = stored_agent_steps(logdir) + (len(pending["action"]) - 1 if pending is not None else 0)
    assert agent_steps * REPEAT == state["counters"]["step"], "frame counter != what the replay holds"
    newest = state["replay"]["last_file"]
    assert all(p.name <= newest for p in (logdir / "replay").glob("*.npz"))
    if total is not None:
        assert state["counters"]["step"] == total and steps[-1] == total
        assert [s for s in steps if s % 60 == 0] == list(range(0, total + 1, 60)), "a log step is missing"


def test_sigkill_at_any_moment_then_resume_keeps_the_run_consistent(tmp_path):
    """kill -9 before the first checkpoint, in the middle of a checkpoint write, and at two random moments;
    each rerun resumes or starts clean, and the finished run has every log step once and a frame counter equal
    to what the replay holds."""
    logdir = tmp_path / "run"
    rng = random.Random(0)
    # 1. before the first checkpoint: metrics exist, no checkpoint yet
    proc = start(logdir)
    kill_when(proc, lambda: (logdir / "metrics.jsonl").exists() and (logdir / "replay").exists())
    assert not (logdir / "checkpoint.pt").exists()
    # 2. a rerun starts clean (and says so); killed while a checkpoint is being written
    proc = start(logdir, "tests.slow_checkpoint")  # pauses between a checkpoint's temp file and its rename
    kill_when(proc, lambda: (logdir / "checkpoint.pt.tmp").exists() and (logdir / "checkpoint.pt").exists())
    assert "starting clean" in proc.stderr.read()
    # 3, 4. random moments, drawn from the run's own progress (never from the clock: a fast machine would finish
    # the run first): a random number of log steps past the checkpoint it resumes from
    for _ in range(2):
        resumed = torch.load(logdir / "checkpoint.pt", weights_only=False)["counters"]["step"]
        target = min(resumed + 60 * rng.randint(1, 5), 840)  # 900 is the end: always killed before it
        proc = start(logdir)
        kill_when(proc, lambda target=target: logged_past(logdir, target))
    p = run_cli([*ARGS, "--logdir", str(logdir)])
    assert p.returncode == 0 and "resuming" in p.stderr, p.stderr[-3000:]
    check_consistent(logdir, total=900)
    assert json.loads(p.stdout.strip().splitlines()[-1])["step"] == 900


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path):
    logdir = tmp_path / "run"
    args = [*ARGS[:-6], "--run.checkpoint_every", "60", "--run.steps", "300"]
    assert run_cli([*args, "--logdir", str(logdir)]).returncode == 0
    ckpt = logdir / "checkpoint.pt"
    assert (logdir / "checkpoint.prev.pt").exists()
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated
    p = run_cli([*args, "--run.steps", "360", "--logdir", str(logdir)])
    assert p.returncode == 0, p.stderr[-2000:]
    warnings = [ln for ln in p.stderr.splitlines() if ln.startswith("warning:") and "checkpoint.pt" in ln]
    assert len(warnings) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "from checkpoint.prev.pt" in p.stderr
    check_consistent(logdir, total=360)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):  # both unreadable: one line, exit 2, nothing touched
        (logdir / name).write_bytes(os.urandom(500))
    before = sorted(p.name for p in logdir.rglob("*"))
    p = run_cli([*args, "--run.steps", "420", "--logdir", str(logdir)])
    assert p.returncode == 2 and "no readable checkpoint" in p.stderr.splitlines()[-1], p.stderr
    assert [ln for ln in p.stderr.splitlines() if ln.startswith("error:")] and "Traceback" not in p.stderr
    assert sorted(p.name for p in logdir.rglob("*")) == before


def test_garbage_in_metrics_and_missing_config(tmp_path):
    logdir = tmp_path / "run"
    args = [*ARGS[:-6], "--run.steps", "240", "--run.checkpoint_every", "60"]
    assert run_cli([*args, "--logdir", str(logdir)]).returncode == 0
    with open(logdir / "metrics.jsonl", "ab") as f:
        f.write(b"\xff\xfe\x00garbage\n{not json\n")
    p = run_cli([*args, "--run.steps", "300", "--logdir", str(logdir)])
    assert p.returncode == 0 and "dropped 2 unreadable line(s)" in p.stderr and "Traceback" not in p.stderr
    check_consistent(logdir, total=300)
    (logdir / "config.json").unlink()
    p = run_cli([*args, "--run.steps", "360", "--logdir", str(logdir)])
    assert p.returncode == 2 and p.stderr.startswith("error:") and "config.json is missing" in p.stderr


def test_resume_refuses_other_settings_and_records_safe_changes(tmp_path):
    logdir = tmp_path / "run"
    base = [*ARGS[:-6], "--run.steps", "240", "--run.checkpoint_every", "60", "--logdir", str(logdir)]
    assert run_cli(base).returncode == 0
    config = (logdir / "config.json").read_text()
    for extra, needle in ((["--world_model.deter", "8"], "world_model.deter 16 -> 8"),
                          (["--task", "walker_walk"], "env.task 'cartpole_swingup' -> 'walker_walk'"),
                          (["--preset", "dmc_state"], "preset 'debug' -> 'dmc_state'")):
        p = run_cli([*base, *extra])
        assert p.returncode == 2 and needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert (logdir / "config.json").read_text() == config  # nothing written
    p = run_cli([*base, "--run.steps", "300", "--world_model.lr", "1e-4"])
    assert p.returncode == 0, p.stderr[-2000:]
    saved = json.loads((logdir / "config.json").read_text())
    assert saved["world_model"]["lr"] == 1e-4 and saved["run"]["steps"] == 300
    assert saved["history"][-1]["changed"] == {"run.steps": [240, 300], "world_model.lr": [3e-4, 1e-4]}
    # the resumed run trained with the new learning rate (DreamerV2's decoupled decay kept at 1e-6 per step)
    state = torch.load(logdir / "checkpoint.pt", weights_only=False)
    group = state["trainer"]["lower_opt"]["param_groups"][0]
    assert group["lr"] == 1e-4 and group["weight_decay"] * group["lr"] == pytest.approx(1e-6)
    # a plain rerun with no options resumes the run's own settings
    p = run_cli(["--logdir", str(logdir), "--run.steps", "360"])
    assert p.returncode == 0 and "resuming" in p.stderr, p.stderr[-2000:]


def test_sigint_works_in_a_background_job_that_ignores_it(tmp_path):
    """A shell starts background jobs with SIGINT ignored; the recipe installs its handler explicitly."""
    logdir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "recipes.tempo", *ARGS, "--run.steps", "100000", "--logdir",
                             str(logdir)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    kill = proc.send_signal
    deadline = time.time() + 120
    while time.time() < deadline and not (logdir / "metrics.jsonl").exists():
        time.sleep(0.1)
    time.sleep(2)
    kill(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "checkpoint saved" in err, err[-2000:]


# ---- the replay's own guards ------------------------------------------------------------------------------
def episode_steps(n: int, reward=None):
    for t in range(n):
        yield {"state": np.full(3, float(t), np.float32), "reward": np.float32(1.0 if reward is None else reward(t)),
               "is_first": t == 0, "is_last": t == n - 1, "is_terminal": False}


def test_replay_sanitises_nonfinite_data_counts_and_warns_once(tmp_path):
    from envs import Replay

    replay = Replay(tmp_path, capacity=1000)
    with pytest.warns(UserWarning, match="non-finite reward in a step, stored as 0") as w:
        for _ in range(2):
            for obs in episode_steps(10, reward=lambda t: np.nan if t in (3, 4) else 1.0):
                replay.add(obs, np.zeros(2, np.float32))
    assert len(w) == 1 and replay.counters()["replay_sanitized_steps"] == 4
    batch = replay.sample(8, 10)
    assert np.isfinite(batch["reward"]).all() and (batch["reward"] == 0).sum() == 16


def test_replay_bounds_its_disk_use(tmp_path):
    from envs import Replay

    replay = Replay(tmp_path, capacity=1000, disk_capacity=25)
    for _ in range(5):
        for obs in episode_steps(10):
            replay.add(obs, np.zeros(2, np.float32))
    files = sorted(tmp_path.glob("*.npz"))
    assert len(files) == 2 and replay.counters()["replay_deleted_files"] == 3 and len(replay) == 20


def test_a_run_directory_has_one_writer(tmp_path):
    """A second process on a directory in use exits 2 with one line naming the holder's pid and touches nothing;
    after a kill -9 of the holder (no stale lock: the kernel released it) the directory resumes as usual."""
    logdir = tmp_path / "run"
    args = [*ARGS[:-6], "--run.steps", "100000", "--run.checkpoint_every", "60", "--run.log_every", "60"]
    first = start(logdir, args=args)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (logdir / "checkpoint.pt").exists():
            assert first.poll() is None, first.stderr.read()[-2000:]
            time.sleep(0.1)
        assert (logdir / "lock").read_text().strip() == str(first.pid)
        before = {p: p.stat().st_mtime_ns for p in [logdir / "config.json", logdir / "lock"]}
        p = run_cli([*args, "--logdir", str(logdir)], timeout=120)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert f"in use by another run (process {first.pid})" in p.stderr and p.stderr.startswith("error: ")
        assert {p: p.stat().st_mtime_ns for p in before} == before
        assert first.poll() is None  # the holder runs on, untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    p = run_cli([*args, "--run.steps", "1200", "--logdir", str(logdir)])
    assert p.returncode == 0 and "resuming" in p.stderr, p.stderr[-3000:]
    check_consistent(logdir, total=1200)


def test_a_sweep_directory_has_one_writer(tmp_path):
    from recipes.rundir import RunDirError, hold
    from recipes.sweep import main as sweep_main

    root = tmp_path / "sweep"
    code = f"import time; from pathlib import Path; from recipes.rundir import hold\n" \
           f"with hold(Path({str(root)!r}), 'sweep'):\n    print('held', flush=True); time.sleep(120)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=f"in use by another sweep \\(process {holder.pid}\\)"):
            with hold(root, "sweep"):
                pass
        args = [str(root), "--tasks", "cartpole_swingup", "--methods", "tempo", "--seeds", "1", "--preset", "debug"]
        assert sweep_main(args) == 2
        assert not (root / "sweep.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    with hold(root, "sweep"):  # killed: free again
        pass


def test_a_stop_file_ends_the_sitting_with_a_checkpoint(tmp_path):
    """`--stop-file PATH`: when PATH appears the run checkpoints where it is and exits 0 (how a sweep's Ctrl-C
    stops its trials without losing the frames since their last periodic checkpoint); the next sitting goes on."""
    logdir, stop = tmp_path / "run", tmp_path / "stop"
    args = [*ARGS[:-6], "--run.steps", "100000", "--run.checkpoint_every", "100000", "--run.log_every", "60",
            "--stop-file", str(stop)]
    proc = start(logdir, args=args)
    deadline = time.time() + 240
    while time.time() < deadline and not logged_past(logdir, 300):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.1)
    stop.touch()
    assert proc.wait(timeout=120) == 0, proc.stderr.read()[-2000:]
    assert "stopped:" in proc.stderr.read()
    state = torch.load(logdir / "checkpoint.pt", weights_only=False)
    assert state["counters"]["step"] >= 300  # saved at the stop, not at the (never reached) periodic checkpoint
    stop.unlink()
    p = run_cli([*args[:-2], "--run.steps", "1200", "--logdir", str(logdir)])
    assert p.returncode == 0 and "resuming" in p.stderr, p.stderr[-3000:]
    check_consistent(logdir, total=1200)


def test_a_stop_file_that_exists_already_starts_nothing(tmp_path):
    """A sweep's trial handed out after its Ctrl-C: the stop file is there, so the run writes nothing (no run
    directory, no step-0 evaluation) and exits 0; without the file the same command runs."""
    logdir, stop = tmp_path / "run", tmp_path / "stop"
    stop.touch()
    p = run_cli([*ARGS, "--logdir", str(logdir), "--stop-file", str(stop)])
    assert p.returncode == 0 and f"not started: {stop} exists" in p.stderr, p.stderr[-2000:]
    assert not logdir.exists()


HOLD = "import sys, time; from pathlib import Path; from recipes.rundir import hold\n" \
       "with hold(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)"


def test_holder_names_the_live_holder_only(tmp_path):
    """`holder` reads who holds a directory without taking its lock: the holding process's pid while it lives,
    None after a kill -9, and None for a pid in the lock file whose process is alive but does not hold it (a
    reused pid); a directory that was never held has none."""
    from recipes.rundir import LOCK, holder

    assert holder(tmp_path) is None
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert holder(tmp_path) == proc.pid
        assert holder(tmp_path) == proc.pid  # looking twice changes nothing: the lock was never taken
    finally:
        proc.kill()
        proc.wait()
    assert holder(tmp_path) is None  # the kernel released the lock with the process; its pid is in the file still
    assert (tmp_path / LOCK).read_text().strip() == str(proc.pid)
    (tmp_path / LOCK).write_text(f"{os.getpid()}\n")  # alive, but not holding the file
    assert holder(tmp_path) is None


@pytest.mark.parametrize("at", [300, 900], ids=["scheduled", "final"])
def test_a_stop_during_an_evaluation_redoes_it_on_resuming(tmp_path, monkeypatch, at):
    """Ctrl-C while the agent at frame `at` is being evaluated: the checkpoint holds that frame, and the resumed run
    evaluates that agent first, once (the final one too: before, a run stopped in its final evaluation resumed as
    finished without it). In-process, the interrupt raised from inside `Run.evaluate` at that frame."""
    from recipes import tempo
    from recipes.run import Run

    evaluate = Run.evaluate

    def interrupted(self):
        if self.step == at:
            raise KeyboardInterrupt
        return evaluate(self)

    logdir = tmp_path / "run"
    argv = [*ARGS, "--run.video_every", "0", "--logdir", str(logdir)]
    monkeypatch.setattr(Run, "evaluate", interrupted)
    assert tempo.main(argv) == 130
    evals = [r["step"] for r in records(logdir) if "eval_return" in r]
    assert evals == [s for s in (0, 300, 600) if s < at]
    monkeypatch.setattr(Run, "evaluate", evaluate)
    assert tempo.main(argv) == 0
    evals = [r["step"] for r in records(logdir) if "eval_return" in r]
    assert evals == [0, 300, 600, 900]


def test_ctrl_c_during_an_update_checkpoints_it_whole(tmp_path, monkeypatch):
    """SIGINT arriving between the world-model step and the actor-critic step of an update: the run finishes that
    update before it checkpoints, so the checkpoint holds both steps of it or neither (before: the world model's
    step without the actor-critic's, and a resume redid the world model's). In-process, a real signal."""
    from agents import ActorCritic
    from recipes import tempo
    from recipes.rundir import RunDir

    train_step, sent = ActorCritic.train_step, []

    def signalled(self, *args, **kwargs):
        if not sent:
            sent.append(os.kill(os.getpid(), signal.SIGINT))  # handled at the next bytecode, in this frame
        return train_step(self, *args, **kwargs)

    monkeypatch.setattr(ActorCritic, "train_step", signalled)
    before = signal.getsignal(signal.SIGINT)
    logdir = tmp_path / "run"
    assert tempo.main([*ARGS, "--run.video_every", "0", "--logdir", str(logdir)]) == 130
    assert signal.getsignal(signal.SIGINT) is before  # the run's handlers are put back
    state, _ = RunDir(logdir).load_checkpoint()
    updates = state["counters"]["updates"]
    assert updates >= 1 and state["trainer"]["step_count"] == updates
    agent = state["agent"]["_extra_state"]
    assert agent["updates"] == updates
    assert {int(s["step"]) for s in agent["actor_opt"]["state"].values()} == {updates}
    # the signal came in the pretraining (2 updates in `debug`): the resumed run finishes it, as a run never stopped
    monkeypatch.setattr(ActorCritic, "train_step", train_step)
    assert updates < 2 and tempo.main([*ARGS, "--run.video_every", "0", "--logdir", str(logdir)]) == 0
    assert tempo.main([*ARGS, "--run.video_every", "0", "--logdir", str(tmp_path / "whole")]) == 0
    finals = [RunDir(d).load_checkpoint()[0]["counters"]["updates"] for d in (logdir, tmp_path / "whole")]
    assert finals[0] == finals[1]
