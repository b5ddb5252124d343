"""docs/evidence/gpu/session.sh, the prepared GPU session (issue 19 §5), on the CPU: its device tests and its
benchmark run, its jobs run in parallel, the one still running at the budget's end is stopped with a checkpoint,
and the evidence comes back packed."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile

from tests.test_recipe_tempo import ROOT


def test_the_gpu_session_script_runs_its_jobs_and_packs_them(tmp_path):
    jobs = tmp_path / "JOBS"
    jobs.write_text("# a comment, then a blank line\n\n"
                    "--task cartpole_swingup --preset debug --steps 300 --run.video_every 0 --logdir a/tempo/0\n"
                    "--task gym:Pendulum-v1 --preset debug --steps 1000000 --weighting none --run.video_every 0 "
                    "--run.checkpoint_every 60 --logdir a/dreamerv2/0\n"
                    "--task gym:Pendulum-v1 --preset debug --steps 300 --logdir a/dreamerv2/1\n")  # never: COUNT
    out = tmp_path / "out"
    runs = tmp_path / "machine_runs"  # kept between two calls on a warm machine
    env = {**os.environ, "OUT": str(out), "DEVICE": "cpu", "BUDGET": "45", "PARALLEL": "2", "BENCH": "300",
           "BENCH_SIZE": "tiny", "RUNS": str(runs), "COUNT": "2", "CPU_BENCH": "300", "CPU_BENCH_SIZES": "tiny"}
    p = subprocess.run(["bash", "docs/evidence/gpu/session.sh", str(jobs)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "passed" in (out / "tests.log").read_text()
    rows = json.loads((out / "bench.json").read_text())["benchmarks"][0]["extra_info"]["rows"]
    assert {(r["precision"], r["compile"]) for r in rows} == {("32", False), ("32", True), ("bf16", False),
                                                              ("bf16", True)}
    assert all(r["none_ms"] > 0 and r["tempo_ms"] > 0 for r in rows)
    cpu = json.loads((out / "cpu_bench_tiny.json").read_text())["benchmarks"][0]["extra_info"]
    assert cpu["device"] == "cpu" and cpu["machine"]["torch_threads"] == 2
    assert {r["precision"] for r in cpu["rows"]} == {"32", "bf16"} and all(r["tempo_ms"] > 0 for r in cpu["rows"])
    done = {line.split()[0]: line.split()[2] for line in (out / "jobs.log").read_text().splitlines()}
    assert done == {"a/tempo/0": "0", "a/dreamerv2/0": "124"}  # finished; stopped at the budget (SIGINT -> 124)
    with tarfile.open(out / "runs.tgz") as tar:
        tar.extractall(tmp_path / "runs", filter="data")
    for name, method in [("a/tempo/0", "tempo"), ("a/dreamerv2/0", "dreamerv2")]:
        run = tmp_path / "runs" / name
        assert json.loads((run / "config.json").read_text())["method"] == method
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps == sorted(set(steps)) and steps[-1] > 0
    assert "checkpoint saved" in (tmp_path / "runs" / "a/dreamerv2/0.log").read_text()

    # the second call on the warm machine: no device tests, from the second job on, the stopped run resumed
    out2 = tmp_path / "out2"
    p = subprocess.run(["bash", "docs/evidence/gpu/session.sh", str(jobs)], cwd=ROOT, capture_output=True, text=True,
                       env={**env, "OUT": str(out2), "BUDGET": "25", "BENCH": "", "CPU_BENCH": "", "TESTS": "0",
                            "FROM": "2", "COUNT": "1"},
                       timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert not any((out2 / f).exists() for f in ("tests.log", "bench.json", "cpu_bench_tiny.json"))
    assert [line.split()[0] for line in (out2 / "jobs.log").read_text().splitlines()] == ["a/dreamerv2/0"]
    with tarfile.open(out2 / "runs.tgz") as tar:
        tar.extractall(tmp_path / "runs2", filter="data")
    log = (tmp_path / "runs2" / "a/dreamerv2/0.log").read_text()
    assert log.count("checkpoint saved") == 2 and "resuming" in log  # both calls' output, in one log
    steps2 = [json.loads(line)["step"] for line in (tmp_path / "runs2/a/dreamerv2/0/metrics.jsonl").read_text()
              .splitlines()]
    assert steps2[:len(steps)] == steps and steps2[-1] > steps[-1]  # steps: the loop's last run, this one
