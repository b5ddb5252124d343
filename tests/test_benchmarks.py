"""The benchmark tooling itself (fast, runs in CI): report numbers, memory helper, builder sizes.

The benchmark suites live in `benchmarks/` (not under testpaths); see benchmarks/conftest.py.
"""

from __future__ import annotations

import gc
import json
import math

import pytest
import torch

from benchmarks import report
from benchmarks.common import (
    BASELINE,
    CONFIGS,
    REPO_ROOT,
    SIZES,
    TEMPO,
    Size,
    alpha_grad_fidelity,
    bilevel_config,
    build,
    config_for,
    count_flops,
    gemm_gflops,
    get_size,
    interleaved,
    make_batch,
    param_count,
)
from benchmarks.memory import measure_subprocess
from bilevel import BilevelConfig
from recipes.config import build as build_config
from recipes.run import bilevel_config as run_bilevel_config


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
    for size in SIZES:
        weighter = config_for(size, "none").tempo.bilevel.weighter  # the preset's
        for name, fields in CONFIGS.items():
            cfg = config_for(size, name)
            b = bilevel_config(name, size)
            assert b == run_bilevel_config(cfg) and b.strategy == fields["strategy"]
            if fields["strategy"] in ("none", "naive"):
                assert cfg.tempo.weighting == fields["strategy"]
            else:  # exactly the config's fields over the library defaults (not the recipe's terms_fd)
                assert cfg.tempo.weighting == "meta"
                assert b == BilevelConfig(**fields, weighter=weighter)
    assert config_for("tiny", "implicit-neumann").tempo.bilevel.contraction == "double_backward"
    assert config_for("tiny", TEMPO).tempo.bilevel == build_config("debug").tempo.bilevel  # the recipe's TEMPO
    assert SIZES["tiny"].preset == "debug" and get_size("atari").task == "atari:pong"
    with pytest.raises(ValueError, match="unknown benchmark config"):
        config_for("tiny", "approx-typo")
    with pytest.raises(ValueError, match="unknown benchmark size"):
        config_for("huge", "none")


def test_builders_produce_documented_sizes():
    tiny = build("tiny", "approx-double_backward")
    rssm = tiny.wm.rssm
    assert tiny.cfg.preset == "debug" and tiny.cfg.env.task == "finger_spin" and tiny.cfg.run.precision == "32"
    assert (rssm.deter, rssm.stoch, rssm.discrete, rssm.img_in[0].out_features) == (16, 4, 0, 16)
    assert tiny.agent.horizon == 5 and tiny.trainer.weighter is not None
    assert tiny.wm.obs_key == "state" and tiny.run.env.obs_space == {"state": (9,)}  # finger_spin: 9-d, 2 actions
    assert tiny.batch["state"].shape == (10, 4, 9) and tiny.batch["action"].shape == (10, 4, 2)
    assert param_count(tiny.trainer.weighter) == 2083  # 3 x 32 (the debug preset's), not 5 x 400
    assert isinstance(tiny.trainer.lower_opt, torch.optim.Adam)
    assert tiny.trainer.lower_opt.param_groups[0]["lr"] == 3e-4

    dmc = build("dmc", "none")
    wm = dmc.wm
    assert (dmc.cfg.preset, dmc.cfg.env.task, dmc.cfg.tempo.weighting) == ("dmc_pixels", "walker_stand", "none")
    assert (wm.rssm.deter, wm.rssm.stoch, wm.rssm.discrete, wm.rssm.img_in[0].out_features) == (200, 32, 0, 200)
    assert wm.obs_key == "image" and wm.discount_head is None and dmc.trainer.weighter is None
    assert param_count(wm) == 11_151_940  # conv encoder/decoder depth 48, MLPs 4 x 400 (as before the recipe)
    b = dmc.batch
    assert b["image"].shape == (50, 16, 64, 64, 3) and b["image"].dtype == torch.uint8
    assert int(b["image"].max()) > 250 and int(b["image"].min()) < 5  # raw bytes: the model normalises them
    assert b["action"].shape == (50, 16, 6) and b["action"].dtype == torch.float32
    assert bool((b["action"].abs() <= 1).all()) and float(b["action"][1:].abs().max()) > 0.9
    assert b["reward"].shape == (50, 16) and float(b["reward"].abs().max()) > 1  # no reward transform on DMC
    assert b["is_first"].dtype == torch.bool and bool(b["is_first"][0].all())
    assert int(b["is_first"].sum()) == 17 and bool(b["is_terminal"][24, 0]) and bool(b["is_first"][25, 0])
    assert bool((b["action"][b["is_first"]] == 0).all())  # zeros at episode start, as the replay stores them

    atari = build("atari", "none")
    r = atari.wm.rssm
    assert (r.deter, r.stoch, r.discrete, r.img_in[0].out_features) == (600, 32, 32, 600)
    assert atari.wm.discount_head is not None and atari.agent.actor_grad == "reinforce"
    assert atari.cfg.world_model.lr == 2e-4 and atari.trainer.lower_opt.param_groups[0]["lr"] == 2e-4
    assert atari.batch["image"].shape == (50, 16, 64, 64, 1)
    first = atari.batch["is_first"]
    assert bool((atari.batch["action"].sum(-1) == (~first).float()).all())  # one-hot, zeros at episode starts
    assert bool((atari.batch["action"].amax(-1) == (~first).float()).all())
    assert float(atari.batch["reward"].abs().max()) < 1  # the atari preset's tanh, applied by Run.to_torch
    assert param_count(atari.wm) == 19_968_179 and param_count(atari.wm) > param_count(wm)


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_build_is_seeded_and_cleans_up():
    a, b, c = build("tiny", TEMPO, seed=0), build("tiny", TEMPO, seed=0), build("tiny", TEMPO, seed=1)
    assert _same(_params(a.wm), _params(b.wm)) and _same(_params(a.agent), _params(b.agent))
    assert _same(_params(a.trainer.weighter), _params(b.trainer.weighter))  # same α
    assert all(torch.equal(a.batch[k], b.batch[k]) for k in a.batch)
    assert not _same(_params(a.wm), _params(c.wm)) and not torch.equal(a.batch["state"], c.batch["state"])
    assert not _same(_params(a.trainer.weighter), _params(c.trainer.weighter))
    assert all(torch.equal(make_batch(a.run, 2)[k], c.batch[k]) for k in c.batch)  # the batch seed is seed + 1
    logdirs = [x.run.logdir for x in (a, b, c)]
    assert all((d / "replay").is_dir() for d in logdirs) and len(set(logdirs)) == 3
    a.close()
    assert not logdirs[0].exists()
    del b
    gc.collect()
    assert not logdirs[1].exists() and logdirs[2].exists()
    with c:
        pass
    assert not logdirs[2].exists()


def test_train_step_is_the_recipes_update_and_step_the_trainers():
    a, b = build("tiny", TEMPO), build("tiny", TEMPO)
    wm0, agent0, alpha0 = _params(a.wm), _params(a.agent), _params(a.trainer.weighter)
    torch.manual_seed(7)
    metrics = a.train_step()
    torch.manual_seed(7)
    b.run.update(b.batch)  # what the recipe does with a replay batch
    assert _same(_params(a.wm), _params(b.wm)) and _same(_params(a.agent), _params(b.agent))
    assert _same(_params(a.trainer.weighter), _params(b.trainer.weighter))
    recorded = {k: v[-1] for k, v in b.run.pending.items()}
    assert metrics.keys() == recorded.keys() and a.run.pending == {}
    assert {k: v for k, v in metrics.items() if "/time_" not in k} == {  # all but the phase timings
        k: v for k, v in recorded.items() if "/time_" not in k}
    assert a.run.updates == 1 and metrics["wm/meta_step"] == 1.0 and math.isfinite(metrics["agent/actor_loss"])
    assert not _same(_params(a.wm), wm0) and not _same(_params(a.agent), agent0)
    assert not _same(_params(a.trainer.weighter), alpha0)

    wm1, agent1, alpha1 = _params(a.wm), _params(a.agent), _params(a.trainer.weighter)
    m = a.step()  # the bilevel world-model step alone: θ and α move, the actor-critic does not
    assert m["meta_step"] == 1.0 and "grad_norm" in m and not any(k.startswith("agent/") for k in m)
    assert not _same(_params(a.wm), wm1) and not _same(_params(a.trainer.weighter), alpha1)
    assert _same(_params(a.agent), agent1) and a.run.updates == 1


def test_sgd_lower_optimizer_keeps_the_runs_alpha():
    adam, sgd = build("tiny", TEMPO), build("tiny", TEMPO, lower_opt="sgd")
    assert isinstance(sgd.trainer.lower_opt, torch.optim.SGD) and sgd.trainer.lr == sgd.cfg.world_model.lr
    assert sgd.trainer.cfg == adam.trainer.cfg and sgd.trainer.model is sgd.wm
    assert _same(_params(sgd.trainer.weighter), _params(adam.trainer.weighter))
    assert _same(_params(sgd.wm), _params(adam.wm))
    theta = _params(sgd.wm)
    sgd.train_step()  # the run's update goes through the SGD trainer
    assert not _same(_params(sgd.wm), theta) and sgd.run.trainer is sgd.trainer


def test_sizes_by_value_of_compare_commits_build_the_same_runs(tmp_path, monkeypatch):
    """`benchmarks/compare_commits.py` passes sizes by value (`Size(**SIZE_ARGS[...])`) to each checkout's
    `build`: here they become the same configs as the named sizes, and its child script runs on this tree."""
    from benchmarks import compare_commits

    for name, args in compare_commits.SIZE_ARGS.items():
        for config in (BASELINE, TEMPO):
            assert config_for(Size(**args), config) == config_for(name, config), name
    legacy_tiny = Size("tiny", "state", (8,), 2, False, T=10, B=4, world_model={}, agent={})
    with pytest.raises(ValueError, match="finger_spin"):  # the task's observations are (9,), not (8,)
        build(legacy_tiny, "none")
    with pytest.raises(ValueError, match="use_discount_head"):
        Size("atari", "image", (64, 64, 1), 6, True, T=2, B=2, world_model={},
             agent={"use_discount_head": True}).bench_size()

    small = {**compare_commits.SIZE_ARGS["dmc_state"], "T": 3, "B": 2}  # the real child code, a small batch
    monkeypatch.setitem(compare_commits.SIZE_ARGS, "dmc_state", small)
    out = compare_commits.run_in(REPO_ROOT, "dmc_state", "none", steps=1, threads=1)
    assert len(out["times_s"]) == 1 and out["median_s"] > 0 and out["precision"] == "32"
    assert compare_commits.run_in(REPO_ROOT, "dmc_state", "none", steps=1, threads=1,
                                  precision="bf16")["precision"] == "bf16"


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
           "--benchmark-max-time", "0.05", "--benchmark-warmup=off", "--bench-compile", "off,on",
           f"--benchmark-json={out}"]
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
    assert len(precision) == 1 and [(r["precision"], r["compile"]) for r in precision[0]["rows"]][:2] == [
        ("32", False), ("32", True)]
    assert precision[0]["machine"]["cpu_flags"] and "native_bf16" in precision[0]["machine"]
    row = precision[0]["rows"][0]
    assert row["tempo_gflop"] > row["none_gflop"] > 0 and precision[0]["gemm_gflops_fp32"] > 0
    assert row["none_gflops"] == pytest.approx(row["none_gflop"] / (row["none_ms"] / 1e3))
    md = report.main([str(out), "--out-dir", str(tmp_path)])  # what `python -m benchmarks.report` does
    assert "approx-terms_fd" in md and "Interleaved ratios" in md and "by precision" in md and "CPU flags" in md
    assert "| tiny/cpu | 32 | on |" in md


def test_count_flops_is_twice_the_multiply_adds():
    """A linear layer's forward and backward against the closed form: 2mkn per matmul (forward x Wᵀ, backward
    g W and gᵀ x)."""
    m, k, n = 8, 5, 3
    x, w = torch.randn(m, k, requires_grad=True), torch.randn(n, k, requires_grad=True)
    assert count_flops(lambda: torch.nn.functional.linear(x, w)) == 2 * m * k * n
    assert count_flops(lambda: torch.nn.functional.linear(x, w).sum().backward()) == 3 * 2 * m * k * n
    assert gemm_gflops(n=64, repeats=1) > 0


def med_upper(res: dict, arm: str) -> float:
    return res["median_s"][arm]["time_upper_grad"]


def test_breakdown_parts_sum_to_the_update_and_name_tempos_extra(tmp_path):
    from benchmarks import breakdown

    out = tmp_path / "b.json"
    assert breakdown.main(["--size", "tiny", "--rounds", "2", "--threads", "1", "--out", str(out),
                           "--also", "approx-terms_fd-concurrent"]) == 0
    res = json.loads(out.read_text())
    also = res["also"]["approx-terms_fd-concurrent"]
    assert also["over_tempo"] == pytest.approx(sorted(also["ratios_over_tempo"])[0] / 2
                                               + sorted(also["ratios_over_tempo"])[1] / 2)
    assert res["median_s"]["approx-terms_fd-concurrent"]["time_upper_grad"] < med_upper(res, "tempo")
    with pytest.raises(SystemExit):
        breakdown.main(["--also", "nope"])
    assert res["precision"] == "32" and set(res["precisions"].values()) == {"32"}
    assert res["machine"]["cpu_count"] >= 1 and len(res["ratios"]) == 2
    for rows in res["samples_s"].values():
        for parts in rows:
            total = parts.pop("total")
            assert sum(parts.values()) == pytest.approx(total, rel=1e-9)  # the parts partition the update
            assert parts["actor_critic"] > 0 and parts["time_forward"] > 0 and parts["run_update_rest"] >= 0
    med = res["median_s"]
    for phase in ("time_upper_grad", "time_hypergrad"):  # only TEMPO takes ∇θ L_up and an α-gradient
        assert med["dreamerv2"][phase] < med["tempo"][phase]
    assert res["tempo_minus_dreamerv2_s"]["total"] == pytest.approx(med["tempo"]["total"] - med["dreamerv2"]["total"])
    assert res["tempo_over_dreamerv2"] == pytest.approx(sorted(res["ratios"])[0] / 2 + sorted(res["ratios"])[1] / 2)


def test_malloc_benchmark_pairs_fresh_processes(tmp_path):
    from benchmarks import malloc

    out = tmp_path / "m.json"
    arms = ["default", "kept", "thread", "thread_one_arena"]
    malloc.main(["--size", "tiny", "--configs", "none", "--updates", "2", "--rounds", "1", "--out", str(out),
                 "--arms", ",".join(arms)])
    res = json.loads(out.read_text())["configs"]["none"]
    (row,) = res["rounds"]
    assert res["ratio_median"] == {arm: pytest.approx(row[arm]["s_per_update"] / row["default"]["s_per_update"])
                                   for arm in arms[1:]}
    assert all(row[arm]["s_per_update"] > 0 and row[arm]["faults_per_update"] >= 0 for arm in arms)
    for bad in (["--configs", "nope"], ["--arms", "kept"], ["--arms", "kept,nope"]):
        with pytest.raises(SystemExit):
            malloc.main(bad)


def test_breakdown_runs_every_arm_in_the_asked_precision(tmp_path):
    from benchmarks import breakdown

    out = tmp_path / "b.json"
    assert breakdown.main(["--size", "tiny", "--rounds", "1", "--threads", "1", "--precision", "bf16", "--out",
                           str(out), "--also", "approx-terms_fd-step"]) == 0
    res = json.loads(out.read_text())
    assert res["precisions"] == {"dreamerv2": "bf16", "tempo": "bf16", "approx-terms_fd-step": "bf16"}
    with pytest.raises(SystemExit):
        breakdown.main(["--precision", "fp8"])
    with pytest.raises(SystemExit):
        breakdown.main(["--precision", "bf16/32/16"])


def test_breakdown_times_every_precision_setting_in_the_same_rounds(tmp_path):
    from torch._dynamo.utils import counters

    from benchmarks import breakdown

    out = tmp_path / "b.json"
    torch._dynamo.reset()  # an earlier test's compiled graphs would be reused, not counted
    counters.clear()
    assert breakdown.main(["--size", "tiny", "--rounds", "2", "--threads", "1", "--precision", "32,bf16/32,32/bf16",
                           "--out", str(out), "--compile"]) == 0
    res = json.loads(out.read_text())
    assert res["compile"] is True and counters["stats"]["unique_graphs"] >= 2  # the float32 and bf16 losses
    assert res["precisions"] == {"dreamerv2": "32", "tempo": "32", "dreamerv2@bf16/32": "bf16/32",
                                 "tempo@bf16/32": "bf16/32", "dreamerv2@32/bf16": "32/bf16", "tempo@32/bf16": "32/bf16"}
    samples = res["samples_s"]
    assert all(len(rows) == 2 for rows in samples.values())
    for setting, sfx in (("bf16/32", "@bf16/32"), ("32/bf16", "@32/bf16")):
        r = res["settings"][setting]
        def ratios(a: str, b: str) -> list[float]:
            return [x["total"] / y["total"] for x, y in zip(samples[a], samples[b], strict=True)]

        assert r["tempo_over_dreamerv2"] == pytest.approx(sum(ratios("tempo" + sfx, "dreamerv2" + sfx)) / 2)
        assert r["dreamerv2_over_first"] == pytest.approx(sum(ratios("dreamerv2" + sfx, "dreamerv2")) / 2)


def test_precision_settings_name_each_parts_precision():
    from benchmarks.common import build, precision_fields, resolve_setting
    from bilevel.precision import native_bf16

    assert precision_fields("bf16") == {"precision": "bf16", "world_model_precision": "bf16"}  # both parts
    assert resolve_setting("auto", "cpu") == ("bf16/32" if native_bf16("cpu") else "32")  # a run's default
    assert precision_fields("bf16/32") == {"precision": "bf16", "world_model_precision": "32"}
    assert resolve_setting("32/32", "cpu") == "32" and resolve_setting("16/32", "cpu") == "16/32"
    for bad in ("fp8", "bf16/", "32/bf16/16", ""):
        with pytest.raises(ValueError, match=f"precision setting {bad!r} is not P or P/W"):
            precision_fields(bad)
    with build("tiny", "none", precision="bf16/32") as bench:
        assert (bench.precision.mode, bench.run.wm_precision.mode, bench.trainer.precision.mode) == ("bf16", "32", "32")
        assert bench.setting == "bf16/32"
