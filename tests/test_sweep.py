"""`python -m recipes.sweep` on Ray Tune: interrupted and resumed, on a two-node local cluster, with a failing trial,
and bad input refused before anything starts."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from recipes.sweep import STATUS_FILE, LiveTable, Spec, Trial, progress, trials
from tests.test_recipe_tempo import ROOT, records

pytest.importorskip("ray")

DEBUG = ["--preset", "debug", "--steps", "150", "--run.video_every", "0", "--run.checkpoint_every", "60"]


def env(extra: dict | None = None) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0", **(extra or {})}


def sweep_cmd(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "recipes.sweep", str(root), *args]


def digest(logdir: str) -> str:
    h = hashlib.sha256()
    for name in ("metrics.jsonl", "checkpoint.pt", "config.json"):
        h.update((Path(logdir) / name).read_bytes())
    return h.hexdigest()


def all_trials(root: Path) -> list[Trial]:
    import yaml

    data = yaml.safe_load((root / "sweep.yaml").read_text())
    data.pop("sittings", None)  # the sweep's history of sittings, not part of its spec
    return trials(Spec.model_validate(data), root)


def finished(t: Trial) -> bool:
    frames, steps, _ = progress(t)
    return steps is not None and frames >= steps


@pytest.mark.slow
def test_interrupted_sweep_resumes_and_skips_finished_trials(tmp_path):
    root = tmp_path / "sweep"
    args = ["--tasks", "cartpole_swingup,cartpole_balance", "--methods", "tempo,dreamerv2", "--seeds", "2", *DEBUG]
    # One trial at a time, polled every 0.1 s: the stop comes while the third trial runs, whatever the machine's
    # speed (on a fast CI machine 150 debug frames took 0.3 s, and a poll every second with two trials at a time let
    # six finish and the last two start before the stop).
    proc = subprocess.Popen(sweep_cmd(root, *args, "--max-concurrent", "1"), cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
        if (root / "sweep.yaml").exists() and sum(finished(t) for t in all_trials(root)) >= 2:
            break
    assert proc.poll() is None, f"the sweep ended before the interrupt:\n{proc.stdout.read()[-3000:]}"
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=180)[0]
    assert proc.returncode != 0, out[-3000:]
    assert "stopping: every running trial saves a checkpoint" in out, out[-3000:]
    # Tune still hands out the trials pending at Ctrl-C: each must see the stop file and write nothing (before, each
    # ran its step-0 evaluation and left a zero-frame run directory). One at a time, 2 done and the stop in the
    # third: at least four of the 8 had not started.
    unstarted = [t.name for t in all_trials(root) if not Path(t.logdir).exists()]
    assert len(unstarted) >= 4, out[-3000:]
    done = {t.name: digest(t.logdir) for t in all_trials(root) if finished(t)}
    assert 2 <= len(done) < 8, out[-3000:]

    res = subprocess.run(sweep_cmd(root), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert f"8 trials, {len(done)} finished, {8 - len(done)} to run" in res.stdout
    for t in all_trials(root):
        assert finished(t), t.name
        steps = [r["step"] for r in records(Path(t.logdir))]
        assert steps == sorted(set(steps)) and steps[-1] == 150, (t.name, steps)  # no duplicated or lost step
        if t.name in done:
            assert digest(t.logdir) == done[t.name], f"{t.name} was finished but ran again"
    status = json.loads((root / STATUS_FILE).read_text())["trials"]
    assert all(s["state"] == "finished" and s["frames"] == 150 for s in status.values())


@pytest.mark.slow
def test_until_pauses_every_trial_and_a_later_sitting_goes_on(tmp_path):
    """--until 90 of 150 frames: all trials stop there (paused, exit 0), it is not part of the sweep's spec (only
    of the sitting's record); with --max-concurrent 1 the trials of that sitting run one after the other;
    the same command without either finishes them, each metrics log without a duplicated or lost step. Every
    trial runs in a second thread of its worker (as Ray runs them) and allocates from the main heap (`trial_env`),
    which the arena probe it imports records."""
    root, probes = tmp_path / "sweep", tmp_path / "probes"
    probes.mkdir()
    args = ["--tasks", "cartpole_swingup", "--methods", "tempo,dreamerv2", "--seeds", "1", *DEBUG,
            "--import", "tests.arena_probe"]
    res = subprocess.run(sweep_cmd(root, *args, "--until", "90", "--max-concurrent", "1"), cwd=ROOT,
                         env=env({"ARENA_PROBE_DIR": str(probes)}), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert "2 trial(s) paused at --until 90 frames" in res.stdout
    import yaml

    written = yaml.safe_load((root / "sweep.yaml").read_text())
    assert "until" not in {k for k in written if k != "sittings"} and written["sittings"][-1]["until"] == 90
    assert written["sittings"][-1]["max_concurrent"] == 1
    # each run's life: its config written at the start, its checkpoint at the stop; one ended before the other began
    spans = sorted(tuple((Path(t.logdir) / f).stat().st_mtime for f in ("config.json", "checkpoint.pt"))
                   for t in all_trials(root))
    assert spans[0][1] <= spans[1][0], spans
    status = json.loads((root / STATUS_FILE).read_text())["trials"]
    assert all(s["state"] == "paused" and 90 <= s["frames"] < 150 for s in status.values()), status
    for t in all_trials(root):
        assert [r["step"] for r in records(Path(t.logdir))][-1] == progress(t)[0]  # the stop is logged

    res = subprocess.run(sweep_cmd(root), cwd=ROOT, env=env({"ARENA_PROBE_DIR": str(probes)}), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert "2 trials, 0 finished, 2 to run" in res.stdout
    seen = [json.loads(f.read_text()) for f in probes.iterdir()]  # a process imports it once; the sweep's own too
    assert any(not p["main_thread"] for p in seen), seen
    if platform.libc_ver()[0] == "glibc":  # MALLOC_ARENA_MAX and `[heap]` are glibc's
        assert all(p["main_heap"] for p in seen), seen
    for t in all_trials(root):
        steps = [r["step"] for r in records(Path(t.logdir))]
        assert finished(t) and steps == sorted(set(steps)) and steps[-1] == 150, (t.name, steps)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_node(ray_env: dict, *args: str) -> subprocess.Popen:
    """`ray start --block` in its own process group: stopping it stops this node only (`ray stop` would end every
    Ray cluster of the user on the machine)."""
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--node-ip-address=127.0.0.1",
           "--num-cpus=1", "--disable-usage-stats", *args]
    return subprocess.Popen(cmd, env=ray_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def alive_nodes(address: str, ray_env: dict) -> int:
    code = (f"import ray; ray.init(address={address!r}, log_to_driver=False); "
            "print(sum(n['Alive'] for n in ray.nodes()))")
    res = subprocess.run([sys.executable, "-c", code], env=ray_env, capture_output=True, text=True, timeout=120)
    return int(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 and res.stdout.strip() else 0


@pytest.mark.slow
def test_cluster_of_two_nodes_runs_trials_on_both_and_reports_a_failing_one(tmp_path):
    port = free_port()
    address = f"127.0.0.1:{port}"
    # a short temp dir: Ray's unix sockets live under it, and their paths are limited to ~107 characters;
    # loopback only, so no token authentication (a real cluster shares one token, see the README)
    ray_env = env({"RAY_TMPDIR": tempfile.mkdtemp(prefix="ray", dir="/tmp"), "RAY_AUTH_MODE": "disabled"})
    nodes = [ray_node(ray_env, "--head", f"--port={port}", "--include-dashboard=false")]
    try:
        deadline = time.time() + 180
        while time.time() < deadline and alive_nodes(address, ray_env) < 1:
            time.sleep(2)
        nodes.append(ray_node(ray_env, f"--address={address}"))
        while time.time() < deadline and alive_nodes(address, ray_env) < 2:
            time.sleep(2)
        assert alive_nodes(address, ray_env) == 2, "the two-node cluster did not come up"
        root = tmp_path / "sweep"
        args = ["--tasks", "cartpole_swingup,cartpole_balance,reacher_easy", "--methods", "dreamerv2", "--seeds", "1",
                "--max-failures", "1", "--memory-per-trial-gb", "0.5", "--address", address, *DEBUG,
                "--import", "tests.failing_task"]  # every trial imports it: reacher_easy's run raises
        failing = "reacher_easy/dreamerv2/0"
        res = subprocess.run(sweep_cmd(root, *args), cwd=ROOT, env=ray_env, capture_output=True, text=True,
                             timeout=900)
        assert res.returncode == 1, (res.stdout + res.stderr)[-3000:]
        assert f"1 trial(s) did not finish: {failing}" in res.stderr
        status = json.loads((root / STATUS_FILE).read_text())["trials"]
        assert status[failing]["state"] == "failed"
        ok = [s for n, s in status.items() if n != failing]
        assert all(s["state"] == "finished" for s in ok), status
        assert len({s["node"] for s in ok}) == 2, status  # one CPU per node: the two trials ran side by side
    finally:
        for proc in reversed(nodes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in nodes:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("args,needle", [
    (["--tasks", "cartpole_swingup", "--methods", "tempo,foo", "--seeds", "1"], "unknown method 'foo'; accepted:"),
    (["--tasks", "nosuchtask", "--methods", "tempo", "--seeds", "1"], "trial nosuchtask/tempo/0:"),
    (["--tasks", "cartpole_swingup", "--methods", "tempo", "--seeds", "1", "--grid", "world_model.lr=fast"],
     "world_model.lr: Input should be a valid number"),
    (["--tasks", "cartpole_swingup", "--methods", "tempo", "--seeds", "1", "--grid", "world_model.nope=1"],
     "world_model.nope: Extra inputs are not permitted"),
    (["--tasks", "cartpole_swingup", "--methods", "tempo", "--seeds", "1", "--address", "127.0.0.1:1"],
     "cannot reach Ray at '127.0.0.1:1'"),
    (["--methods", "tempo", "--seeds", "1"], "no tasks given"),
    (["--tasks", "cartpole_swingup", "--methods", "tempo", "--seeds", "1", "--cpus-per-trial", "0"],
     "cpus_per_trial: Input should be greater than 0"),
    (["--tasks", "cartpole_swingup", "--methods", "tempo", "--seeds", "1", "--max-concurrent", "0"],
     "--max-concurrent 0: must be at least 1"),
    (["--tasks", "cartpole_swingup", "--methods", "tempo", "--seeds", "1", "--until", "0"],
     "--until 0: expected a positive number of frames"),
    (["--tasks", "cartpole_swingup", "--methods", "tempo", "--seeds", "1", "--steps", "many"],
     "argument --steps: invalid int value: 'many'"),
    (["--tasks", "cartpole_swingup", "--methods", "tempo", "--seeds", "1", "--status", "--commands"],
     "argument --commands: not allowed with argument --status"),
], ids=["method", "task", "grid-type", "grid-field", "address", "missing", "cpus", "concurrent", "until", "steps",
        "modes"])
def test_bad_input_is_one_line_before_any_trial(tmp_path, args, needle):
    root = tmp_path / "sweep"
    res = subprocess.run(sweep_cmd(root, *args, "--preset", "debug"), cwd=ROOT, env=env(), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert not any((root / d).exists() for d in ("cartpole_swingup", "nosuchtask")), "a trial directory was made"


def test_live_table_keeps_the_last_eval_return_until_a_new_one(capsys):
    """A resumed trial reports frames before its first evaluation of the sitting: the table keeps the return it
    read from the checkpoint, and shows a new one as soon as a report has it."""
    table = LiveTable(["a/tempo/0"], every=0.0)
    table.update("a/tempo/0", frames=2500, eval_return=316.0)  # from the checkpoint, before the sitting starts
    table.result("a/tempo/0", {"frames": 3000, "fps": 0.25, "node": "n1"})
    assert table.rows["a/tempo/0"] == {"state": "running", "frames": 3000, "fps": 0.25, "eval_return": 316.0,
                                       "node": "n1"}
    table.print()
    assert capsys.readouterr().out.splitlines()[1].split() == ["a/tempo/0", "running", "3000", "0.2", "316.0"]
    table.result("a/tempo/0", {"frames": 5000, "fps": 0.3, "eval_return": 402.5, "node": "n1"})
    assert table.rows["a/tempo/0"]["eval_return"] == 402.5 and table.rows["a/tempo/0"]["frames"] == 5000


def test_status_shows_each_trial_from_its_run_directory_and_writes_nothing(tmp_path):
    """`--status` on a sweep directory: finished, running (a live process holds the run directory), stopped
    (checkpointed, not held: its holder was killed) and pending trials, the last sitting, whether a sweep holds the
    directory; a running trial's frames and fps from its newest logged record (ahead of its checkpoint; a line cut
    by a writer is passed over), the frames left and the trial-hours they take at the running trials' rate; every
    file as it was, and it works while a sweep holds the directory. No sweep there: one line, 2."""
    import yaml

    root = tmp_path / "s"
    sitting = {"started": "2026-01-02T03:04:05", "commit": "abc123", "until": None, "allow_code_change": False}
    spec = Spec(tasks=["cartpole_swingup"], methods=["dreamerv2", "tempo"], seeds=[0, 1], steps=100)
    root.mkdir()
    (root / "sweep.yaml").write_text(yaml.safe_dump({**spec.model_dump(), "sittings": [sitting]}))
    runs = {t.name: Path(t.logdir) for t in trials(spec, root)}
    for name, frames, ret in [("cartpole_swingup/dreamerv2/0", 100, 5.5), ("cartpole_swingup/tempo/0", 40, 2.5),
                              ("cartpole_swingup/dreamerv2/1", 60, -1.0)]:
        runs[name].mkdir(parents=True)
        (runs[name] / "config.json").write_text(json.dumps({"run": {"steps": 100}}))
        (runs[name] / "progress.json").write_text(json.dumps({"step": frames, "last_eval": ret}))
    logged = {"cartpole_swingup/tempo/0": [{"step": 20, "fps": 2.0}, {"step": 50, "fps": 0.5},
                                           {"step": 50, "eval_return": 3.0}],
              "cartpole_swingup/dreamerv2/1": [{"step": 80, "fps": 9.0}]}  # stopped: its checkpoint counts
    for name, recs in logged.items():
        (runs[name] / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"step": 6')
    from tests.test_rundir import HOLD

    holders = [subprocess.Popen([sys.executable, "-c", HOLD, str(runs[name])], cwd=ROOT, stdout=subprocess.PIPE,
                                text=True) for name in ("cartpole_swingup/tempo/0", "cartpole_swingup/dreamerv2/1")]
    try:
        for h in holders:
            assert h.stdout.readline().strip() == "held"
        holders[1].kill()  # dreamerv2/1's process died: its lock file still names it
        holders[1].wait()
        from recipes.rundir import hold

        def files() -> dict:
            return {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in root.rglob("*") if f.is_file()}

        with hold(root, "sweep"):  # a sitting is running
            before = files()
            p = subprocess.run([sys.executable, "-m", "recipes.sweep", str(root), "--status"], cwd=ROOT, env=env(),
                               capture_output=True, text=True, timeout=120)
            assert files() == before
    finally:
        for h in holders:
            h.kill()
            h.wait()
    assert p.returncode == 0, p.stderr
    head, *rows = p.stdout.strip().splitlines()
    assert head == (f"sweep {root}: 4 trials, 1 finished, 1 pending, 1 running, 1 stopped; last sitting started "
                    f"2026-01-02T03:04:05 at code abc123, running now (process {os.getpid()}); 190 frames to go: "
                    "about 0.1 trial-hours at the running trials' mean rate (0.50 fps)")  # (100-50 + 100-60 + 100)
    table = {r.split()[0]: r.split()[1:] for r in rows[1:]}
    assert table == {"cartpole_swingup/dreamerv2/0": ["finished", "100", "-", "5.5"],
                     "cartpole_swingup/tempo/0": ["running", "50", "0.5", "2.5"],
                     "cartpole_swingup/dreamerv2/1": ["stopped", "60", "-", "-1.0"],
                     "cartpole_swingup/tempo/1": ["pending", "0", "-", "-"]}
    p = subprocess.run([sys.executable, "-m", "recipes.sweep", str(tmp_path / "none"), "--status"], cwd=ROOT,
                       env=env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        f"error: --status: {tmp_path / 'none'} holds no sweep (sweep.yaml is missing)"]
    assert not (tmp_path / "none").exists()


def test_status_into_a_closed_pipe_ends_quietly(tmp_path):
    """`--status | head` whose reader is gone before the table is printed: exit 141 (as a process ended by
    SIGPIPE), no traceback."""
    import yaml

    root = tmp_path / "s"
    root.mkdir()
    spec = Spec(tasks=["cartpole_swingup"], methods=["dreamerv2", "tempo"], seeds=[0, 1], steps=100)
    (root / "sweep.yaml").write_text(yaml.safe_dump(spec.model_dump()))
    proc = subprocess.Popen(sweep_cmd(root, "--status"), cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader leaves before the command has imported anything, let alone printed
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_commands_print_each_unfinished_trials_recipe_arguments_in_the_sittings_order(tmp_path):
    """`--commands`: one line per trial still to run, seed-major as a sitting orders them, each the arguments the
    sitting would give `recipes.tempo` (so they can run elsewhere, e.g. as the GPU session's JOBS); a finished trial
    is left out; nothing is written; bad input is the sitting's one-line error."""
    import shlex

    root = tmp_path / "s"
    args = ["--tasks", "gym:Pendulum-v1", "--methods", "dreamerv2,tempo", "--seeds", "2", "--preset", "debug",
            "--steps", "100", "--grid", "env.distractors.mode=none,intermittent", "--run.eval_every", "50"]
    spec = Spec(tasks=["gym:Pendulum-v1"], methods=["dreamerv2", "tempo"], seeds=[0, 1], preset="debug", steps=100,
                grid={"env.distractors.mode": ["none", "intermittent"]}, overrides={"run.eval_every": 50})
    done = next(t for t in trials(spec, root) if t.method == "tempo" and t.seed == 0)
    Path(done.logdir).mkdir(parents=True)
    (Path(done.logdir) / "config.json").write_text(json.dumps({"run": {"steps": 100}}))
    (Path(done.logdir) / "progress.json").write_text(json.dumps({"step": 100}))
    before = sorted(p for p in tmp_path.rglob("*"))
    p = subprocess.run(sweep_cmd(root, *args, "--commands"), cwd=ROOT, env=env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert sorted(p for p in tmp_path.rglob("*")) == before
    lines = [shlex.split(line) for line in p.stdout.strip().splitlines()]
    from recipes.sweep import trial_argv

    expect = [trial_argv(spec, t) for t in trials(spec, root) if t != done]
    assert lines == expect and len(lines) == 7
    assert [(a[a.index("--seed") + 1], a[a.index("--weighting") + 1], a[-1]) for a in lines] == [
        ("0", "none", "none"), ("0", "none", "intermittent"), ("0", "meta", "intermittent"),
        ("1", "none", "none"), ("1", "none", "intermittent"), ("1", "meta", "none"), ("1", "meta", "intermittent")]
    from recipes.cli import resolve

    assert resolve(lines[0]).cfg.env.distractors.mode == "none"  # the recipe's own parser takes them as they are
    bad = subprocess.run(sweep_cmd(root, *args[:-2], "--run.eval_every", "soon", "--commands"), cwd=ROOT, env=env(),
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and bad.stdout == ""
