"""`recipes.bank` and `recipes.sweep --bank`: finished trials' logs kept in a bank, put back into a lost sweep
directory so that the sweep does not run them again; never a run replaced, never a run in flight touched."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from recipes.bank import FILES, banked, deposit, withdraw
from recipes.sweep import Spec, progress, trial_argv, trials
from tests.test_recipe_tempo import ROOT, records
from tests.test_sweep import DEBUG, env, sweep_cmd

NAME = "cartpole_swingup/dreamerv2/0"


def _run(root: Path, name: str, frames: int, steps: int = 100, tag: str = "a") -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"task": "cartpole_swingup", "method": "dreamerv2",
                                                 "run": {"steps": steps}}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": frames, "eval_return": 1.0, "tag": tag}) + "\n")
    (run / "progress.json").write_text(json.dumps({"step": frames}))
    return run


def test_deposit_banks_the_named_runs_once_and_never_replaces_one(tmp_path):
    root, bank = tmp_path / "sweep", tmp_path / "bank"
    (root / "x").mkdir(parents=True)
    (root / "sweep.yaml").write_text("tasks: []\n")
    assert deposit(root, bank, [], "sweep.yaml") == ([], [])  # a new bank, nothing finished: the spec alone
    assert (bank / "sweep.yaml").read_text() == "tasks: []\n"
    _run(root, NAME, 100)
    (root / NAME / "checkpoint.pt").write_bytes(b"x" * 1000)  # not banked: what the run needs to go on
    (root / "sweep.yaml").write_text("tasks: [cartpole_swingup]\n")
    assert deposit(root, bank, [NAME], "sweep.yaml") == ([NAME], [])
    assert sorted(p.name for p in (bank / NAME).iterdir()) == sorted(FILES)
    assert all((bank / NAME / f).read_bytes() == (root / NAME / f).read_bytes() for f in FILES)
    assert (bank / "sweep.yaml").read_text() == "tasks: [cartpole_swingup]\n"
    assert deposit(root, bank, [NAME], "sweep.yaml") == ([], [])  # already there, the same run
    shutil.rmtree(root / NAME)
    _run(root, NAME, 100, tag="another run")
    before = (bank / NAME / "metrics.jsonl").read_bytes()
    assert deposit(root, bank, [NAME], "sweep.yaml") == ([], [NAME])
    assert (bank / NAME / "metrics.jsonl").read_bytes() == before


def test_withdraw_restores_only_where_the_sweep_has_no_run_of_its_own(tmp_path):
    root, bank = tmp_path / "sweep", tmp_path / "bank"
    names = [f"cartpole_swingup/dreamerv2/{s}" for s in range(4)]
    for name in names:
        _run(bank, name, 100, tag="banked")
    (bank / names[3] / "progress.json").unlink()  # a copy cut short: not a banked run
    _run(root, names[1], 60, tag="in flight")  # checkpointed, not finished: the sweep's own, untouched
    (root / names[2]).mkdir(parents=True)  # an attempt that never checkpointed: replaced
    (root / names[2] / "metrics.jsonl").write_text('{"step": 0}\n')
    assert withdraw(bank, root, names) == [names[0], names[2]]
    assert json.loads((root / names[1] / "metrics.jsonl").read_text())["tag"] == "in flight"
    for name in (names[0], names[2]):
        assert sorted(p.name for p in (root / name).iterdir()) == sorted(FILES)
        assert json.loads((root / name / "metrics.jsonl").read_text())["tag"] == "banked"
    assert not (root / names[3]).exists() and not banked(bank, names[3])


def test_commands_of_a_lost_sweep_come_from_its_bank_without_the_banked_trials(tmp_path):
    """The sweep directory is gone: `--bank` supplies its spec (no --tasks needed) and the banked trial is not
    listed; nothing is written."""
    root, bank = tmp_path / "lost", tmp_path / "bank"
    spec = Spec(tasks=["cartpole_swingup"], methods=["dreamerv2"], seeds=[0, 1], preset="debug", steps=100)
    bank.mkdir()
    (bank / "sweep.yaml").write_text(yaml.safe_dump({**spec.model_dump(), "sittings": []}, sort_keys=False))
    _run(bank, NAME, 100)
    before = sorted(tmp_path.rglob("*"))
    p = subprocess.run(sweep_cmd(root, "--bank", str(bank), "--commands"), cwd=ROOT, env=env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert sorted(tmp_path.rglob("*")) == before
    (second,) = [t for t in trials(spec, root) if t.seed == 1]
    assert [shlex.split(line) for line in p.stdout.strip().splitlines()] == [trial_argv(spec, second)]
    (tmp_path / "a_file").write_text("")
    for bad in (root, tmp_path / "a_file", tmp_path / "a_file" / "bank"):
        p = subprocess.run(sweep_cmd(root, "--bank", str(bad), "--commands"), cwd=ROOT, env=env(),
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 2 and p.stderr.startswith(f"error: --bank {bad}: ") and len(p.stderr.splitlines()) == 1


@pytest.mark.slow
def test_a_lost_sweep_directory_keeps_its_finished_runs_through_the_bank(tmp_path):
    """A sitting banks each trial as it finishes (seed 0 is in the bank before seed 1, run after it, has finished);
    the sweep directory is lost; the next sitting (one seed more) restores both from the bank, runs only the new
    trial, and records the restore beside the first sitting's commit; `recipes.report` reads the bank."""
    root, bank = tmp_path / "sweep", tmp_path / "bank"
    args = ["--tasks", "cartpole_swingup", "--methods", "dreamerv2", *DEBUG, "--bank", str(bank)]
    first = subprocess.run(sweep_cmd(root, *args, "--seeds", "2", "--max-concurrent", "1"), cwd=ROOT, env=env(),
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    seed1 = "cartpole_swingup/dreamerv2/1"
    assert banked(bank, NAME) and banked(bank, seed1)
    assert (bank / NAME / "progress.json").stat().st_mtime_ns < (root / seed1 / "progress.json").stat().st_mtime_ns
    kept = {name: {f: (root / name / f).read_bytes() for f in FILES} for name in (NAME, seed1)}
    shutil.rmtree(root)  # the machine's scratch directory is gone

    second = subprocess.run(sweep_cmd(root, *args, "--seeds", "3"), cwd=ROOT, env=env(), capture_output=True,
                            text=True, timeout=600)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    assert f"0 run(s) banked, 2 restored: {NAME}, {seed1}" in second.stdout
    assert "3 trials, 2 finished, 1 to run" in second.stdout
    assert {name: {f: (root / name / f).read_bytes() for f in FILES} for name in kept} == kept  # not run again
    spec = Spec(tasks=["cartpole_swingup"], methods=["dreamerv2"], seeds=[0, 1, 2], preset="debug", steps=150)
    for t in trials(spec, root):
        frames, steps, _ = progress(t)
        assert frames == steps == 150 and banked(bank, t.name), t.name
        assert [r["step"] for r in records(Path(t.logdir)) if "eval_return" in r][-1] == 150
    history = yaml.safe_load((root / "sweep.yaml").read_text())["sittings"]
    assert [h.get("restored") for h in history] == [[], [NAME, seed1]]
    assert history[0]["commit"] == history[1]["commit"]
    assert yaml.safe_load((bank / "sweep.yaml").read_text())["sittings"] == history
    report = subprocess.run([sys.executable, "-m", "recipes.report", str(bank), "--out", str(tmp_path / "report")],
                            cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    runs = json.loads((tmp_path / "report" / "report.json").read_text())["runs"]
    assert sorted((r["path"], r["frames_reached"], r["finished"]) for r in runs) == [
        (f"cartpole_swingup/dreamerv2/{s}", 150, True) for s in range(3)]


@pytest.mark.slow
def test_a_sitting_killed_at_once_has_its_record_in_the_bank(tmp_path):
    """The bank's sweep.yaml has a sitting's record from its start, not from its end: a sitting killed with its
    machine (SIGKILL to the whole process group) is still in the history a lost directory comes back with, so the
    next sitting's commit check compares with the right commit."""
    root, bank = tmp_path / "sweep", tmp_path / "bank"
    # --steps 100000: the trial cannot finish before the kill, however fast the machine
    args = ["--tasks", "cartpole_swingup", "--methods", "dreamerv2", "--seeds", "1", *DEBUG, "--steps", "100000",
            "--bank", str(bank)]
    proc = subprocess.Popen(sweep_cmd(root, *args), cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (root / NAME / "metrics.jsonl").exists():
            time.sleep(0.2)
        assert proc.poll() is None, "the sitting ended before the kill"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not banked(bank, NAME)
    (record,) = yaml.safe_load((bank / "sweep.yaml").read_text())["sittings"]
    assert record["bank"] == str(bank) and record["restored"] == [] and record["commit"]
    assert (bank / "sweep.yaml").read_text() == (root / "sweep.yaml").read_text()
