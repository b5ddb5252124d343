"""A sweep's sittings are pinned to one code version (`recipes.provenance.code_version`), and its trials run with
the threads they were given CPUs for."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from recipes import sweep as sweep_mod
from recipes.provenance import code_version
from recipes.sweep import Spec, Trial, trial_argv


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_code_version_names_the_commit_and_every_edit(tmp_path):
    assert code_version(tmp_path) == "unknown"  # not a checkout
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "t@t")
    git(tmp_path, "config", "user.name", "t")
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / ".gitignore").write_text("runs/\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "one")
    head = git(tmp_path, "rev-parse", "HEAD")
    assert code_version(tmp_path) == head
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "log").write_text("ignored files are not code")
    assert code_version(tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")
    edit_a = code_version(tmp_path)
    assert edit_a.startswith(head + "+dirty.")
    (tmp_path / "a.py").write_text("x = 3\n")
    edit_b = code_version(tmp_path)
    assert edit_b.startswith(head + "+dirty.") and edit_b != edit_a  # two edits, two versions
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "new.py").write_text("y = 1\n")  # an untracked module is code too
    assert code_version(tmp_path).startswith(head + "+dirty.")
    (tmp_path / "new.py").unlink()
    assert code_version(tmp_path) == head


ARGS = ["--tasks", "cartpole_swingup", "--methods", "dreamerv2", "--seeds", "1", "--preset", "debug",
        "--steps", "150"]


@pytest.fixture
def no_ray(monkeypatch):
    """The sweep up to Ray: what `fit` was asked to run is recorded instead of run."""
    calls: list[list[str]] = []
    monkeypatch.setattr(sweep_mod, "connect", lambda address: None)
    monkeypatch.setattr(sweep_mod, "fit", lambda root, spec, todo, table, until, max_concurrent=None,
                        on_complete=None: calls.append([t.name for t in todo]))
    return calls


def test_a_sitting_under_other_code_is_refused_unless_allowed(tmp_path, monkeypatch, no_ray, capsys):
    root = tmp_path / "sweep"
    monkeypatch.setattr(sweep_mod, "code_version", lambda: "aaa111")
    assert sweep_mod.main([str(root), *ARGS, "--until", "60"]) == 1  # no trial ran: 'did not finish'
    assert no_ray == [["cartpole_swingup/dreamerv2/0"]]
    spec = yaml.safe_load((root / "sweep.yaml").read_text())
    assert [(s["commit"], s["until"], s["allow_code_change"]) for s in spec["sittings"]] == [("aaa111", 60, False)]

    monkeypatch.setattr(sweep_mod, "code_version", lambda: "bbb222+dirty.0123")
    before = (root / "sweep.yaml").read_bytes()
    capsys.readouterr()
    assert sweep_mod.main([str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "aaa111" in err and "bbb222+dirty.0123" in err, err
    assert "--allow-code-change" in err and "git worktree add DIR aaa111" in err
    assert (root / "sweep.yaml").read_bytes() == before and len(no_ray) == 1  # nothing written, nothing run

    assert sweep_mod.main([str(root), "--allow-code-change"]) == 1
    spec = yaml.safe_load((root / "sweep.yaml").read_text())
    assert [(s["commit"], s["allow_code_change"]) for s in spec["sittings"]] == [("aaa111", False),
                                                                                 ("bbb222+dirty.0123", True)]
    assert sweep_mod.main([str(root)]) == 1  # the same code as the last sitting: no question asked
    assert len(yaml.safe_load((root / "sweep.yaml").read_text())["sittings"]) == 3
    # another sweep's history never comes in through --config
    other = tmp_path / "other"
    assert sweep_mod.main([str(other), "--config", str(root / "sweep.yaml")]) == 1
    history = yaml.safe_load((other / "sweep.yaml").read_text())["sittings"]
    assert [s["commit"] for s in history] == ["bbb222+dirty.0123"]


def test_trials_run_with_the_threads_of_their_cpus(tmp_path):
    spec = Spec(tasks=["cartpole_swingup"], methods=["tempo"], seeds=[0], cpus_per_trial=1.5)
    trial = Trial("cartpole_swingup", "tempo", 0, (), str(tmp_path / "t"))
    argv = trial_argv(spec, trial)
    assert argv[argv.index("--run.threads") + 1] == "2"
    argv = trial_argv(Spec(tasks=["x"], methods=["tempo"], seeds=[0]), trial)  # the default: one CPU, one thread
    assert argv[argv.index("--run.threads") + 1] == "1"
    mine = Spec(tasks=["cartpole_swingup"], methods=["tempo"], seeds=[0], overrides={"run.threads": 4})
    argv = trial_argv(mine, trial)
    assert argv.count("--run.threads") == 1 and argv[argv.index("--run.threads") + 1] == "4"
