"""The benchmark tooling itself (fast, runs in CI): report numbers, memory helper, builder sizes.

The benchmark suites live in `benchmarks/` (not under testpaths); see benchmarks/conftest.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import report
from benchmarks.common import (
    CONFIGS,
    SIZES,
    alpha_grad_fidelity,
    bilevel_config,
    build,
    interleaved,
    make_batch,
    param_count,
)
from benchmarks.memory import measure_subprocess


def _bench(name: str, median: float, iqr: float, **extra) -> dict:
    """One entry in pytest-benchmark 5's JSON format (only the fields the report reads, plus a few)."""
    return {
        "group": "hypergrad-tiny-cpu", "name": f"test_hypergrad[{name}]", "fullname": f"x::test_hypergrad[{name}]",
        "params": {"config": name}, "param": name,
        "stats": {"min": median * 0.9, "max": median * 1.2, "mean": median, "stddev": iqr / 2, "rounds": 7,
                  "median": median, "iqr": iqr, "q1": median - iqr / 2, "q3": median + iqr / 2,
                  "iqr_outliers": 0, "stddev_outliers": 0, "outliers": "0;0", "ld15iqr": median * 0.9,
                  "hd15iqr": median * 1.2, "ops": 1 / median, "total": 7 * median, "iterations": 1},
        "extra_info": {"kind": "hypergrad", "config": name, "size": "tiny", "device": "cpu", **extra},
    }


def test_report_turns_benchmark_json_into_table(tmp_path):
    machine = {"cpu": "Test CPU 9000", "cpu_count": 2, "torch": "2.13.0", "torch_threads": 2, "device": "cpu",
               "python": "3.11.7"}
    data = {
        "machine_info": {"node": "n", "processor": "x86_64", "python_version": "3.11.7", "cpu": {"count": 2}},
        "commit_info": {}, "datetime": "2026-01-01T00:00:00", "version": "5.2.3",
        "benchmarks": [
            _bench("none", 0.100, 0.010, peak_mem_mb=50.0, cosine_vs_unroll1=None, rel_norm_vs_unroll1=None,
                   machine=machine),
            _bench("approx-double_backward", 0.150, 0.020, peak_mem_mb=60.5, cosine_vs_unroll1=0.99991,
                   rel_norm_vs_unroll1=0.98765, machine=machine),
            _bench("unroll1-native", 0.300, 0.040, peak_mem_mb=80.0, cosine_vs_unroll1=1.0,
                   rel_norm_vs_unroll1=1.0, machine=machine),
            {"group": "ratio-tiny-cpu", "name": "test_train_step_tempo_vs_none", "stats": {"median": 0.5, "iqr": 0.1},
             "extra_info": {"kind": "ratio", "what": "whole train step", "a": "approx-double_backward", "b": "none",
                            "size": "tiny", "device": "cpu", "rounds": 4, "median_a_s": 0.3, "median_b_s": 0.2,
                            "time_ratio": 1.234, "goal_time_ratio": 1.15, "mem_ratio": 1.05,
                            "goal_mem_ratio": 1.1, "machine": machine}},
        ],
    }
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    md = report.main([str(path), "--out-dir", str(tmp_path / "out")])
    assert (tmp_path / "out" / "latest.md").read_text() == md
    assert (tmp_path / "out" / "latest.png").stat().st_size > 1000
    lines = md.splitlines()
    row = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in lines
           if ln.startswith("| ") and not ln.startswith("| ---")}
    # median ms | IQR ms | rounds | peak mem MB | cosine | rel norm | ratio vs none
    assert row["none"] == ["100.0", "10.0", "7", "50.0", "n/a", "n/a", "1.00x"]
    assert row["approx-double_backward"] == ["150.0", "20.0", "7", "60.5", "0.9999", "0.988", "1.50x"]
    assert row["unroll1-native"] == ["300.0", "40.0", "7", "80.0", "1.0000", "1.000", "3.00x"]
    ratio = row["whole train step"]
    assert ratio[:7] == ["tiny/cpu", "approx-double_backward", "none", "4", "300.0", "200.0", "1.234"]
    assert ratio[8] == "1.050"
    assert "Test CPU 9000" in md and "torch 2.13.0" in md and "torch threads: 2" in md


def test_memory_subprocess_reports_positive_rss():
    out = measure_subprocess("approx-double_backward", "tiny", "cpu", steps=2, threads=1, timeout=120)
    assert out["config"] == "approx-double_backward" and out["steps"] == 2
    assert out["peak_mb"] > 0 and out["rss_peak_mb"] >= out["rss_built_mb"] >= out["rss_start_mb"] > 50


def test_every_config_is_valid_for_every_size():
    for size in SIZES.values():
        for name in CONFIGS:
            cfg = bilevel_config(name, size)
            assert cfg.strategy == CONFIGS[name]["strategy"]


def test_builders_produce_documented_sizes():
    tiny = build("tiny", "approx-double_backward")
    rssm = tiny.wm.rssm
    assert (rssm.deter, rssm.stoch, rssm.discrete) == (16, 4, 0) and tiny.wm.obs_key == "state"
    assert tiny.batch["state"].shape == (10, 4, 8) and tiny.batch["action"].shape == (10, 4, 2)
    assert tiny.trainer.weighter is not None

    dmc = SIZES["dmc"]
    wm = build("dmc", "none").wm
    assert (wm.rssm.deter, wm.rssm.stoch, wm.rssm.discrete, wm.rssm.img_in[0].out_features) == (200, 32, 0, 200)
    assert wm.obs_key == "image" and wm.discount_head is None
    assert 5e6 < param_count(wm) < 3e7  # 11.2M: conv encoder/decoder depth 48, MLPs 4 x 400
    b = make_batch(dmc)
    assert b["image"].shape == (50, 16, 64, 64, 3) and b["image"].dtype == torch.uint8
    assert b["action"].shape == (50, 16, 6) and b["action"].dtype == torch.float32
    assert b["reward"].shape == (50, 16) and b["is_first"].dtype == torch.bool and bool(b["is_first"][0].all())

    atari = build("atari", "none")
    r = atari.wm.rssm
    assert (r.deter, r.stoch, r.discrete, r.img_in[0].out_features) == (600, 32, 32, 600)
    assert atari.wm.discount_head is not None and atari.agent.actor_grad == "reinforce"
    assert atari.batch["image"].shape == (50, 16, 64, 64, 1)
    assert bool((atari.batch["action"].sum(-1)[1:] == 1).all())  # one-hot discrete actions
    assert param_count(atari.wm) > param_count(wm)


def test_fidelity_of_exact_and_approximate_hypergradients():
    assert alpha_grad_fidelity("tiny", "none")["cosine_vs_unroll1"] is None
    ref = alpha_grad_fidelity("tiny", "unroll1-native")
    assert ref["cosine_vs_unroll1"] == pytest.approx(1.0) and ref["rel_err_vs_unroll1"] == pytest.approx(0.0)
    approx = alpha_grad_fidelity("tiny", "approx-double_backward")
    assert approx["cosine_vs_unroll1"] > 0.99 and 0.9 < approx["rel_norm_vs_unroll1"] < 1.1


def test_interleaved_alternates_and_takes_median_of_paired_ratios():
    calls = []
    ta = iter([2.0, 4.0, 9.0])
    tb = iter([1.0, 1.0, 3.0])

    def a():
        calls.append("a")
        return next(ta)

    def b():
        calls.append("b")
        return next(tb)

    res = interleaved(a, b, 3)
    assert calls == ["a", "b"] * 3
    assert res["ratios"] == [2.0, 4.0, 3.0] and res["median_ratio"] == 3.0


def test_tiny_suites_run_and_report(tmp_path):
    """The benchmark suites themselves, at `tiny` size, as a user runs them (subprocess: their own options
    and conftest), then the report. Fewer rounds than by hand; the timings are not asserted (shared CI
    machine), only that every config ran, measured memory and fidelity, and the report shows them."""
    import subprocess
    import sys

    out = tmp_path / "tiny.json"
    cmd = [sys.executable, "-m", "pytest", "benchmarks/", "-q", "-p", "no:cacheprovider", "--benchmark-enable",
           "--bench-size", "tiny", "--bench-rounds", "3", "--bench-mem-rounds", "1", "--benchmark-min-rounds", "3",
           "--benchmark-max-time", "0.05", "--benchmark-warmup=off", f"--benchmark-json={out}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads(out.read_text())
    infos = {b["extra_info"].get("config", b["name"]): b["extra_info"] for b in data["benchmarks"]}
    assert set(CONFIGS) <= set(infos)
    for name in CONFIGS:
        assert infos[name]["peak_mem_mb"] > 0
    assert infos["approx-terms_fd"]["cosine_vs_unroll1"] > 0.99
    ratios = [b["extra_info"] for b in data["benchmarks"] if b["extra_info"].get("kind") == "ratio"]
    assert {r["what"] for r in ratios} == {"whole train step", "bilevel world-model step"}
    assert all(r["time_ratio"] > 0 for r in ratios)
    precision = [b["extra_info"] for b in data["benchmarks"] if b["extra_info"].get("kind") == "precision"]
    assert len(precision) == 1 and [r["precision"] for r in precision[0]["rows"]][0] == "32"
    assert precision[0]["machine"]["cpu_flags"] and "native_bf16" in precision[0]["machine"]
    md = report.main([str(out), "--out-dir", str(tmp_path)])  # what `python -m benchmarks.report` does
    assert "approx-terms_fd" in md and "Interleaved ratios" in md and "by precision" in md and "CPU flags" in md
