"""Tests for ``python -m recipes.plot`` (recipes/report/plot_cli.py): loading, plotting, and the averaged one-tailed
Welch t-test, with the report's one std convention (sample std, ddof=1)."""

from __future__ import annotations

import json
import math

import matplotlib.image as mpimg
import numpy as np
import pytest
from scipy import stats

from recipes import plot
from recipes.report import figures, plot_cli
from recipes.report import stats as report_stats
from recipes.report.runs import group_runs, label_variants, load_run

TASK = "cartpole_swingup"
STEPS = [10_000, 20_000, 30_000, 40_000, 50_000]
SEEDS = [0, 1, 2]


def _returns(method: str, seed: int) -> list[float]:
    """Deterministic returns; tempo has a higher mean, both vary over seeds."""
    if method == "tempo":
        return [100.0 + 150.0 * i + 13.0 * seed + 7.0 * (i * seed % 3) for i in range(len(STEPS))]
    return [80.0 + 110.0 * i + 21.0 * seed - 5.0 * ((i + seed) % 2) for i in range(len(STEPS))]


def _write_run(root, method, seed, steps=STEPS, returns=None, extra_lines=()):
    d = root / f"{TASK}-{method}-s{seed}"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"task": TASK, "method": method, "seed": seed, "lr": 3e-4}))
    returns = _returns(method, seed) if returns is None else returns
    lines = []
    for s, r in zip(steps, returns, strict=True):
        lines.append(json.dumps({"step": s - 500, "loss": 1.0}))  # training log
        lines.append(json.dumps({"step": s, "eval_return": r}))
    lines += list(extra_lines)
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return d


@pytest.fixture
def run_dirs(tmp_path):
    root = tmp_path / "runs"
    return [_write_run(root, m, s) for m in ("tempo", "dreamerv2") for s in SEEDS]


def test_main_end_to_end(run_dirs, tmp_path, capsys):
    out = tmp_path / "figs" / "curves.png"
    rc = plot.main([str(d) for d in run_dirs] + ["--out", str(out), "--baseline", "dreamerv2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "tempo" in printed

    # Valid, non-trivial PNG.
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5_000
    img = mpimg.imread(out)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 10
    assert float(img[..., :3].std()) > 0.01

    # Independent computation of the averaged one-tailed Welch t-test.
    a = np.array([_returns("tempo", s) for s in SEEDS])
    b = np.array([_returns("dreamerv2", s) for s in SEEDS])
    ts, ps = [], []
    for i in range(len(STEPS)):
        r = stats.ttest_ind(a[:, i], b[:, i], equal_var=False, alternative="greater")
        ts.append(r.statistic)
        ps.append(r.pvalue)
    exp_t, exp_p = sum(ts) / len(ts), sum(ps) / len(ps)

    saved = json.loads((out.parent / "stats.json").read_text())
    rows = [r for r in saved["rows"] if r["task"] == TASK and r["method"] == "tempo"]
    assert len(rows) == 1
    row = rows[0]
    assert row["baseline"] == "dreamerv2" and row["n_evals"] == len(STEPS)
    assert row["mean_t"] == pytest.approx(exp_t, abs=1e-9)
    assert row["mean_p"] == pytest.approx(exp_p, abs=1e-9)
    assert exp_t > 0 and 0 < exp_p < 0.5
    assert row["final_mean"] == pytest.approx(a[:, -1].mean(), abs=1e-9)
    assert row["final_std"] == pytest.approx(a[:, -1].std(ddof=1), abs=1e-9)  # the sample std, as in the report
    assert row["baseline_final_mean"] == pytest.approx(b[:, -1].mean(), abs=1e-9)
    assert row["baseline_final_std"] == pytest.approx(b[:, -1].std(ddof=1), abs=1e-9)
    assert all(r["method"] != "dreamerv2" for r in saved["rows"])  # baseline is not tested against itself


def test_default_out_is_parent_curves_png(run_dirs, capsys):
    assert plot.main([str(d) for d in run_dirs]) == 0
    expected = run_dirs[0].parent / "curves.png"
    assert expected.is_file() and (run_dirs[0].parent / "stats.json").is_file()
    assert str(expected) in capsys.readouterr().out


def test_truncated_last_line_is_skipped_with_warning(tmp_path):
    d = _write_run(tmp_path, "tempo", 0, extra_lines=['{"step": 60000, "eval_ret'])
    with pytest.warns(UserWarning, match="unparsable"):
        run = load_run(d)
    assert run.task == TASK and run.method == "tempo" and run.seed == 0
    np.testing.assert_array_equal(run.steps, STEPS)
    np.testing.assert_allclose(run.returns, _returns("tempo", 0))


def test_non_run_path_exits_2(run_dirs, tmp_path, capsys):
    bogus = tmp_path / "not_a_run"
    bogus.mkdir()
    (bogus / "config.json").write_text("{}")
    rc = plot.main([str(run_dirs[0]), str(bogus), "--out", str(tmp_path / "x.png")])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(bogus) in err and "metrics.jsonl" in err
    assert plot.main([str(tmp_path / "missing_dir")]) == 2
    assert "missing_dir" in capsys.readouterr().err


def test_common_grid_intersection_and_single_seed_nan(tmp_path):
    root = tmp_path / "r"
    # tempo seed 1 stops one evaluation early -> tempo grid is the first 4 steps.
    runs = [load_run(_write_run(root, "tempo", 0))]
    runs.append(load_run(_write_run(root, "tempo", 1, steps=STEPS[:4], returns=_returns("tempo", 1)[:4])))
    runs.append(load_run(_write_run(root, "dreamerv2", 0)))  # single baseline seed
    groups = group_runs(runs)
    grid, mat = report_stats.common_grid(groups[(TASK, "tempo")])
    np.testing.assert_array_equal(grid, STEPS[:4])
    assert mat.shape == (2, 4)
    rows = report_stats.welch_over_evals(groups, "dreamerv2")
    assert len(rows) == 1
    assert math.isnan(rows[0]["mean_t"]) and math.isnan(rows[0]["mean_p"])
    assert "< 2 seeds" in rows[0]["note"] and rows[0]["n_evals"] == 4
    assert math.isnan(rows[0]["baseline_final_std"])  # one seed: the sample std is undefined, not 0
    assert "nan" in plot_cli.format_table(rows)
    figures.plot_curves(groups, tmp_path / "c.png")  # does not crash with 1 seed
    assert (tmp_path / "c.png").is_file()


def test_missing_baseline_reported(tmp_path, capsys):
    root = tmp_path / "r"
    dirs = [_write_run(root, "tempo", s) for s in SEEDS]
    assert plot.main([str(d) for d in dirs] + ["--baseline", "dreamerv2"]) == 0
    out = capsys.readouterr().out
    assert "no baseline runs" in out
    saved = json.loads((root / "stats.json").read_text())
    assert saved["rows"][0]["mean_t"] is None and "no baseline" in saved["rows"][0]["note"]


def test_cli_prints_truncation_warning(tmp_path, capsys):
    root = tmp_path / "r"
    dirs = [_write_run(root, m, s) for m in ("tempo", "dreamerv2") for s in SEEDS[:2]]
    with open(dirs[0] / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 6')
    assert plot.main([str(d) for d in dirs]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "unparsable" in err and str(dirs[0]) in err


def test_loader_reads_evaluations_and_every_series_in_one_pass(tmp_path):
    """The one loader of both commands: evaluations, and every finite number of the training log by frame (bools,
    strings and NaN left out; a frame logged twice keeps its last record)."""
    d = _write_run(tmp_path, "tempo", 0, extra_lines=[
        json.dumps({"step": 60_000, "wm/kl": 0.5, "flag": True, "name": "x", "wm/weight_std": float("nan")}),
        json.dumps({"step": 60_000, "wm/kl": 0.7}), '["not", "a", "record"]'])
    run = load_run(d)
    np.testing.assert_array_equal(run.steps, STEPS)
    assert run.rel == run.path == str(d) and run.config_method == "tempo" and run.target_frames is None
    assert set(run.series) == {"loss", "eval_return", "wm/kl"}
    frames, values = run.series["wm/kl"]
    assert frames.tolist() == [60_000] and values.tolist() == [0.7]
    np.testing.assert_array_equal(run.series["loss"][0], [s - 500 for s in STEPS])


def test_welch_two_and_one_sided_match_scipy():
    a, b = np.array([3.0, 4.5, 5.0, 6.2]), np.array([2.0, 2.5, 4.1])
    w = report_stats.welch(a, b)
    two = stats.ttest_ind(a, b, equal_var=False)
    assert (w.t, w.p_two_sided) == (float(two.statistic), float(two.pvalue))
    assert w.p_greater == float(stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)
    assert w.p_greater == pytest.approx(w.p_two_sided / 2)  # t > 0
    assert all(math.isnan(x) for x in (report_stats.welch(a, b[:1]).t, report_stats.welch(a[:1], b).p_greater))
    assert math.isnan(report_stats.sample_std(np.array([1.0]))) and report_stats.sample_std(a) == np.std(a, ddof=1)


def _write_variant(root, name, seed, cfg_extra, returns):
    """A run under ``root/name/seed`` with a real preset's config plus ``cfg_extra`` (dotted-free nested dict)."""
    from recipes.config import build, deep_update

    d = root / name / str(seed)
    d.mkdir(parents=True)
    cfg = deep_update(build("dmc_small", {"env": {"task": TASK}}).model_dump(), cfg_extra)
    cfg.update(task=TASK, method="dreamerv2", seed=seed, precision_resolved="32", history=[])
    cfg["run"].update(seed=seed, logdir=str(d), threads=1 + seed % 2)  # bookkeeping differs between seeds
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "eval_return": r}) + "\n"
                                             for s, r in zip(STEPS, returns, strict=True)))
    return d


def test_variants_of_one_method_are_not_averaged_as_seeds(tmp_path, capsys):
    """Two settings of DreamerV2 (the reference entropy bonus and a 20x one): seeds of each are grouped, the two
    settings are not; the reference setting keeps the bare name, so it stays the baseline."""
    root = tmp_path / "pilot"
    ref = [_write_variant(root, "dreamerv2", s, {}, [10.0 + s, 20.0 + s, 30.0, 40.0, 50.0 + 10 * s]) for s in (0, 1)]
    ent = [_write_variant(root, "ent", s, {"agent": {"actor_ent": 2e-3}}, [100.0, 200.0, 300.0, 400.0, 500.0 + s])
           for s in (0, 1)]
    runs = label_variants([load_run(d) for d in ref + ent])
    groups = group_runs(runs)
    assert sorted(m for _, m in groups) == ["dreamerv2", "dreamerv2 (agent.actor_ent=0.002)"]
    assert [r.path for r in groups[(TASK, "dreamerv2")]] == [str(d) for d in ref]
    assert [r.path for r in groups[(TASK, "dreamerv2 (agent.actor_ent=0.002)")]] == [str(d) for d in ent]

    out = tmp_path / "curves.png"
    assert plot.main([str(d) for d in ref + ent] + ["--out", str(out)]) == 0
    rows = json.loads(out.with_name("stats.json").read_text())["rows"]
    (row,) = rows
    assert row["method"] == "dreamerv2 (agent.actor_ent=0.002)" and row["baseline"] == "dreamerv2"
    assert row["final_mean"] == pytest.approx(500.5) and row["baseline_final_mean"] == pytest.approx(55.0)
    capsys.readouterr()


def test_bookkeeping_and_fields_missing_from_a_run_do_not_split(tmp_path):
    """Seeds that ran with other threads/logdirs are one group; a field only newer code writes is not compared; a
    variant off its preset's defaults in every run of the group gets no label (nothing varies)."""
    root = tmp_path / "pilot"
    dirs = [_write_variant(root, "a", s, {"agent": {"actor_ent": 2e-3}}, [1.0, 2.0, 3.0, 4.0, 5.0]) for s in (0, 1)]
    cfg = json.loads((dirs[1] / "config.json").read_text())
    cfg["agent"]["a_field_from_newer_code"] = 7
    (dirs[1] / "config.json").write_text(json.dumps(cfg))
    runs = label_variants([load_run(d) for d in dirs])
    assert [r.method for r in runs] == ["dreamerv2", "dreamerv2"]
