"""Tests for the sweep report (recipes/report/) on a synthetic sweep with known returns.

Every number the report computes is checked against an independent computation here: IQM against
``scipy.stats.trim_mean`` of the pooled normalised scores, the bootstrap CI against a hand-written stratified
bootstrap, the probability of improvement against pairwise counts, the Welch tests against scipy; the area under
the curve, the weight and diagnostic tail means and the published anchors against hand computations.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
from scipy import stats

from recipes.report import aggregates, build, cli, figures, runs, tasks
from recipes.report.stats import curve_stats

TARGET = 50_000  # run.steps of every run
EVAL_STEPS = list(range(0, TARGET + 1, 10_000))
# directory name -> config "task" (one with the suite prefix: it must be the same task as without)
TASKS = {"walker_stand": "walker_stand", "cheetah_run": "dmc:cheetah_run"}
SEEDS = {("walker_stand", "dreamerv2"): [0, 1, 2, 3], ("walker_stand", "tempo"): [0, 1, 2, 3],
         ("cheetah_run", "dreamerv2"): [0, 1, 2], ("cheetah_run", "tempo"): [0, 1, 2, 3]}
UNFINISHED = ("cheetah_run", "tempo", 2)  # stops at 30k frames: lowers cheetah_run's frame budget
UNFINISHED_AT = 30_000
BUDGET = {"walker_stand": TARGET, "cheetah_run": UNFINISHED_AT}
REPS = 300


def ret(task: str, method: str, seed: int, step: int) -> float:
    """Known eval return: grows with frames, tempo a bit faster, distinct values over seeds."""
    off = {"walker_stand": 120.0, "cheetah_run": 15.0}[task]
    gain = 3.0 if method == "tempo" else 2.2
    return off + gain * step / 1000 * (1 + 0.1 * seed) + 37.0 * ((seed * 7 + step // 10_000) % 5)


def write_leaf(leaf: Path, task: str, method: str, seed: int, steps: list[int], extra: tuple[str, ...] = (),
               evals: bool = True) -> None:
    leaf.mkdir(parents=True)
    cfg = {"task": task, "method": method, "seed": seed, "run": {"steps": TARGET, "eval_every": 10_000}}
    (leaf / "config.json").write_text(json.dumps(cfg))
    lines = []
    for s in steps:
        if s:
            lines.append(json.dumps({"step": s - 1000, "fps": 10.0, "train_return": 1.0}))  # training log
        rec = {"step": s, "fps": 10.0}
        if evals:
            rec["eval_return"] = ret(tasks.canonical_task(task), method, seed, s)
        lines.append(json.dumps(rec))
    (leaf / "metrics.jsonl").write_text("\n".join([*lines, *extra]) + "\n")


def build_sweep(root: Path) -> Path:
    for (task, method), seeds in SEEDS.items():
        for seed in seeds:
            stop = UNFINISHED_AT if (task, method, seed) == UNFINISHED else TARGET
            extra = ('{"step": 60000, "eval_ret',) if (task, method, seed) == ("walker_stand", "tempo", 1) else ()
            write_leaf(root / task / method / str(seed), TASKS[task], method, seed,
                       [s for s in EVAL_STEPS if s <= stop], extra)
    # A grid point (extra level below the seed): its own method label, only on one task.
    write_leaf(root / "walker_stand" / "tempo_grid" / "0" / "meta_lr=1e-4", "walker_stand", "tempo", 0, EVAL_STEPS)
    # Leaves with no evaluation yet: training lines only / no metrics.jsonl at all.
    write_leaf(root / "walker_stand" / "tempo" / "9", "walker_stand", "tempo", 9, [1000, 2000], evals=False)
    (root / "cheetah_run" / "dreamerv2" / "7").mkdir(parents=True)
    (root / "cheetah_run" / "dreamerv2" / "7" / "config.json").write_text(
        json.dumps({"task": "cheetah_run", "method": "dreamerv2", "seed": 7, "run": {"steps": TARGET}}))
    (root / "config.json").write_text(json.dumps({"grid": {"seeds": 4}}))  # the sweep's own spec: not a run
    write_leaf(root / ".tune" / "trial_0", "walker_stand", "tempo", 5, EVAL_STEPS)  # hidden: Ray Tune's files
    return root


def expected_finals(task: str, method: str, last_k: int = 1) -> np.ndarray:
    steps = [s for s in EVAL_STEPS if s <= BUDGET[task]][-last_k:]
    return np.array([np.mean([ret(task, method, seed, s) for s in steps]) for seed in SEEDS[(task, method)]])


def expected_matrix(method: str, last_k: int = 1) -> np.ndarray:
    """(runs, tasks) normalised scores, tasks sorted, the same runs per task: the lowest seeds."""
    cols = [expected_finals(t, method, last_k) / 1000.0 for t in sorted(TASKS)]
    n = min(len(c) for c in cols)
    return np.stack([c[:n] for c in cols], axis=1)


def expected_aucs(task: str, method: str) -> np.ndarray:
    """By hand: per seed, the mean return of the evaluations after step 0 up to the task's budget (walker_stand
    10k..50k, cheetah_run 10k..30k)."""
    steps = [s for s in EVAL_STEPS if 0 < s <= BUDGET[task]]
    return np.array([np.mean([ret(task, method, seed, s) for s in steps]) for seed in SEEDS[(task, method)]])


def expected_auc_matrix(method: str) -> np.ndarray:
    cols = [expected_aucs(t, method) / 1000.0 for t in sorted(TASKS)]
    n = min(len(c) for c in cols)
    return np.stack([c[:n] for c in cols], axis=1)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return build_sweep(tmp_path_factory.mktemp("sweep"))


@pytest.fixture(scope="module")
def result(sweep) -> dict:
    rc = cli.main([str(sweep), "--reps", str(REPS), "--seed", "0"])
    assert rc == 0
    out = sweep / "report"
    return {"out": out, "json": json.loads((out / "report.json").read_text()), "md": (out / "report.md").read_text()}


def test_writes_files(result):
    out, payload = result["out"], result["json"]
    for name in ("report.md", "report.json", "curves.png", "aggregates.png", "aggregates_auc.png",
                 "performance_profile.png", "sample_efficiency.png"):
        assert (out / name).is_file(), name
    for name in ("curves.png", "performance_profile.png", "sample_efficiency.png", "aggregates.png",
                 "aggregates_auc.png"):
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 100 and float(img[..., :3].std()) > 0.01, name
    assert set(payload["files"].values()) >= {"report.md", "report.json", "curves.png"}
    # no run logs a weight or diagnostic statistic: no such figure, said so in one line each
    assert not (out / "weights.png").exists() and not (out / "diagnostics.png").exists()
    assert "No weighted run" in result["md"] and "no `diagnostics.png`" in result["md"]
    assert set(payload["anchors"]) == {"walker_stand"}  # cheetah_run has no published anchor in the table


def test_discovery_labels_and_listing(result):
    payload = result["json"]
    labels = {(r["task"], r["method"]) for r in payload["runs"]}
    # dmc:cheetah_run and cheetah_run are one task; a grid point is its own method label
    assert labels == {*SEEDS, ("walker_stand", "tempo_grid/meta_lr=1e-4")}
    assert len(payload["runs"]) == sum(map(len, SEEDS.values())) + 1
    assert sorted(payload["no_evaluation"]) == ["cheetah_run/dreamerv2/7", "walker_stand/tempo/9"]
    assert any("unparsable" in w for w in payload["warnings"])  # the cut line, skipped
    assert payload["unfinished"] == ["cheetah_run/tempo/2"]
    assert "cheetah_run/tempo/2" in result["md"] and "walker_stand/tempo/9" in result["md"]


def test_frame_budget_rule(result):
    tasks = result["json"]["tasks"]
    assert tasks["walker_stand"]["frame_budget"] == TARGET
    assert tasks["walker_stand"]["budget_limited_by"] == []
    assert tasks["cheetah_run"]["frame_budget"] == UNFINISHED_AT  # lowered by the unfinished run, for everyone
    assert tasks["cheetah_run"]["budget_limited_by"] == ["cheetah_run/tempo/2"]
    run = next(r for r in result["json"]["runs"] if r["path"] == "cheetah_run/tempo/2")
    assert run["finished"] is False and run["frames_reached"] == UNFINISHED_AT and run["target_frames"] == TARGET


def test_per_task_final_scores(result):
    tasks = result["json"]["tasks"]
    for task, method in SEEDS:
        row = tasks[task]["methods"][method]
        exp = expected_finals(task, method)
        assert row["final"] == pytest.approx(exp.tolist(), abs=1e-9)
        assert row["final_mean"] == pytest.approx(exp.mean(), abs=1e-9)
        assert row["final_std"] == pytest.approx(exp.std(ddof=1), abs=1e-9)
        assert row["normalised"] == pytest.approx((exp / 1000).tolist(), abs=1e-12)
        assert row["n"] == len(SEEDS[(task, method)])


def test_iqm_mean_median_match_independent(result):
    agg = result["json"]["aggregate"]
    assert agg["tasks"] == sorted(TASKS)
    assert "tempo_grid/meta_lr=1e-4" in agg["excluded_methods"]  # not run on cheetah_run
    assert agg["runs_per_task"] == {"dreamerv2": 3, "tempo": 4}
    assert agg["dropped_runs"] == {"dreamerv2": ["walker_stand/dreamerv2/3"]}
    for method in ("dreamerv2", "tempo"):
        mat = expected_matrix(method)
        np.testing.assert_allclose(np.array(agg["matrices"][method]), mat, atol=1e-12)
        a = agg["methods"][method]
        # IQM: 25% trimmed on each side of the pooled runs x tasks scores (rliable's aggregate_iqm)
        assert a["iqm"]["point"] == pytest.approx(stats.trim_mean(mat.flatten(), 0.25), abs=1e-12)
        assert a["mean"]["point"] == pytest.approx(mat.mean(axis=0).mean(), abs=1e-12)
        assert a["median"]["point"] == pytest.approx(np.median(mat.mean(axis=0)), abs=1e-12)


def _hand_bootstrap_iqm_ci(mat: np.ndarray, reps: int = 20_000, seed: int = 123) -> tuple[float, float]:
    """Stratified bootstrap of the IQM: resample runs with replacement within each task (independently per
    task), IQM of each resampled (runs, tasks) matrix, percentile 95% interval."""
    rng = np.random.default_rng(seed)
    n, m = mat.shape
    idx = rng.integers(0, n, size=(reps, n, m))
    samples = mat[idx, np.arange(m)[None, None, :]]  # (reps, n, m)
    values = stats.trim_mean(samples.reshape(reps, n * m), 0.25, axis=1)
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def test_bootstrap_ci_matches_hand_written(result):
    agg = result["json"]["aggregate"]
    for method in ("dreamerv2", "tempo"):
        mat = expected_matrix(method)
        iqm = agg["methods"][method]["iqm"]
        lo, hi = _hand_bootstrap_iqm_ci(mat)
        width = hi - lo
        assert width > 0
        # the library ran REPS=300 replications: its percentiles carry Monte-Carlo error (up to ~0.19 width over
        # 20 seeds); an unstratified bootstrap would be off by 0.35-0.5 width here
        assert iqm["ci"][0] == pytest.approx(lo, abs=0.25 * width)
        assert iqm["ci"][1] == pytest.approx(hi, abs=0.25 * width)
        assert iqm["ci"][0] <= iqm["point"] <= iqm["ci"][1]


def test_probability_of_improvement_matches_pairwise(result):
    poi = result["json"]["aggregate"]["probability_of_improvement"]
    assert set(poi) == {"tempo"}
    x, y = expected_matrix("tempo"), expected_matrix("dreamerv2")
    per_task = []
    for t in range(x.shape[1]):
        a, b = x[:, t][:, None], y[:, t][None, :]
        per_task.append(float(np.mean((a > b) + 0.5 * (a == b))))  # = Mann-Whitney U / (n m)
    assert poi["tempo"]["vs"] == "dreamerv2"
    assert poi["tempo"]["point"] == pytest.approx(np.mean(per_task), abs=1e-12)
    lo, hi = poi["tempo"]["ci"]
    assert 0.0 <= lo <= poi["tempo"]["point"] <= hi <= 1.0
    assert "P(improvement over dreamerv2)" in result["md"]


def test_welch_matches_scipy(result):
    rows = {(w["task"], w["method"]): w for w in result["json"]["welch"]}
    assert set(rows) == {("walker_stand", "tempo"), ("cheetah_run", "tempo"),
                         ("walker_stand", "tempo_grid/meta_lr=1e-4")}
    for task in TASKS:
        a, b = expected_finals(task, "tempo"), expected_finals(task, "dreamerv2")
        two = stats.ttest_ind(a, b, equal_var=False)
        one = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
        row = rows[(task, "tempo")]
        assert (row["n"], row["n_baseline"]) == (len(a), len(b))
        assert row["t"] == pytest.approx(float(two.statistic), abs=1e-9)
        assert row["p_two_sided"] == pytest.approx(float(two.pvalue), abs=1e-12)
        assert row["p_greater"] == pytest.approx(float(one.pvalue), abs=1e-12)
    grid = rows[("walker_stand", "tempo_grid/meta_lr=1e-4")]
    assert grid["t"] is None and "< 2 seeds" in grid["note"]  # one seed: undefined, said so
    assert grid["detectable"] is None


def _t_test_power(diff: float, std: float, n_a: int, n_b: int, alpha: float = 0.05) -> float:
    """Power of the two-sided equal-variance t-test, from the noncentral t distribution (by hand)."""
    df = n_a + n_b - 2
    nc = diff / std / math.sqrt(1 / n_a + 1 / n_b)
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def test_detectable_difference_has_80_percent_power(result):
    """The detectable difference of each Welch row is the one at which the t-test's power, computed by hand from
    the noncentral t distribution at the runs' pooled std, is 0.8; a tenth less has less."""
    rows = {(w["task"], w["method"]): w for w in result["json"]["welch"]}
    for task in TASKS:
        a, b = expected_finals(task, "tempo"), expected_finals(task, "dreamerv2")
        pooled = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
        diff = rows[(task, "tempo")]["detectable"]
        assert _t_test_power(diff, pooled, len(a), len(b)) == pytest.approx(0.8, abs=1e-4)
        assert _t_test_power(0.9 * diff, pooled, len(a), len(b)) < 0.75
    assert "detectable (80% power)" in result["md"]


def test_auc_per_task_by_hand(result):
    tasks = result["json"]["tasks"]
    for task, method in SEEDS:
        row = tasks[task]["methods"][method]
        exp = expected_aucs(task, method)
        assert row["auc"] == pytest.approx(exp.tolist(), abs=1e-9)
        assert row["auc_mean"] == pytest.approx(exp.mean(), abs=1e-9)
        assert row["auc_std"] == pytest.approx(exp.std(ddof=1), abs=1e-9)
        assert row["auc_normalised"] == pytest.approx((exp / 1000).tolist(), abs=1e-12)
        assert set(row["auc_evals"]) == {BUDGET[task] // 10_000}  # 10k..budget: the step-0 evaluation is not one
    # one run by hand, in full: walker_stand tempo seed 1, evaluations at 10k, 20k, ..., 50k
    by_hand = sum(ret("walker_stand", "tempo", 1, s) for s in (10_000, 20_000, 30_000, 40_000, 50_000)) / 5
    run = next(r for r in result["json"]["runs"] if r["path"] == "walker_stand/tempo/1")
    assert run["auc"] == pytest.approx(by_hand, abs=1e-9)
    assert by_hand != pytest.approx(np.mean([ret("walker_stand", "tempo", 1, s) for s in EVAL_STEPS]))


def test_auc_aggregates_and_welch(result):
    auc = result["json"]["aggregate"]["auc"]
    assert auc["excluded_methods"] == {}
    for method in ("dreamerv2", "tempo"):
        mat = expected_auc_matrix(method)  # the same runs as the final scores: seeds 0-2 of dreamerv2
        np.testing.assert_allclose(np.array(auc["matrices"][method]), mat, atol=1e-12)
        a = auc["methods"][method]
        assert a["iqm"]["point"] == pytest.approx(stats.trim_mean(mat.flatten(), 0.25), abs=1e-12)
        assert a["mean"]["point"] == pytest.approx(mat.mean(), abs=1e-12)
        assert a["median"]["point"] == pytest.approx(np.median(mat.mean(axis=0)), abs=1e-12)
        assert a["iqm"]["ci"][0] <= a["iqm"]["point"] <= a["iqm"]["ci"][1]
    x, y = expected_auc_matrix("tempo"), expected_auc_matrix("dreamerv2")
    per_task = [np.mean((x[:, t][:, None] > y[:, t][None, :]) + 0.5 * (x[:, t][:, None] == y[:, t][None, :]))
                for t in range(x.shape[1])]
    assert auc["probability_of_improvement"]["tempo"]["point"] == pytest.approx(np.mean(per_task), abs=1e-12)
    rows = {(w["task"], w["method"]): w for w in result["json"]["welch_auc"]}
    for task in TASKS:
        a, b = expected_aucs(task, "tempo"), expected_aucs(task, "dreamerv2")
        row = rows[(task, "tempo")]
        assert row["mean"] == pytest.approx(a.mean(), abs=1e-9)
        assert row["t"] == pytest.approx(float(stats.ttest_ind(a, b, equal_var=False).statistic), abs=1e-9)
        assert row["p_greater"] == pytest.approx(
            float(stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue), abs=1e-12)
    md = result["md"]
    assert "## Area under the curve" in md
    assert f"{expected_aucs('walker_stand', 'tempo').mean():.1f} ± " in md


def test_auc_without_evaluation_in_range(tmp_path):
    """A run whose coarser evaluation grid has nothing in (0, budget] has no AUC: listed, left out of the AUC rows
    and, with its method, out of the AUC aggregates; its final score still counts."""
    root = tmp_path / "grid"
    evals = {("dreamerv2", 0): {0: 10.0, 10_000: 100.0, 20_000: 200.0}, ("dreamerv2", 1): {0: 12.0, 10_000: 120.0},
             ("tempo", 0): {0: 11.0, 20_000: 300.0}, ("tempo", 1): {0: 9.0, 10_000: 90.0, 20_000: 190.0}}
    for (method, seed), ev in evals.items():
        _leaf(root / "walker_walk" / method / str(seed), "walker_walk", method, seed, ev, 20_000)
    payload = build.build_report(root, tmp_path / "out", reps=20)
    row = payload["tasks"]["walker_walk"]["methods"]["tempo"]
    assert payload["tasks"]["walker_walk"]["frame_budget"] == 10_000
    assert row["auc"] == [None, 90.0] and row["auc_mean"] == 90.0 and row["final"] == [11.0, 90.0]
    auc = payload["aggregate"]["auc"]
    assert set(auc["methods"]) == {"dreamerv2"} and "walker_walk/tempo/0" in auc["excluded_methods"]["tempo"]
    assert auc["methods"]["dreamerv2"]["mean"]["point"] == pytest.approx((100.0 + 120.0) / 2 / 1000)
    welch = payload["welch_auc"][0]
    assert (welch["n"], welch["n_baseline"]) == (1, 2) and "< 2 seeds" in welch["note"]
    assert set(payload["aggregate"]["methods"]) == {"dreamerv2", "tempo"}  # final scores: both


def test_sample_efficiency_curve(result):
    curves = result["json"]["aggregate"]["sample_efficiency"]
    tempo = curves["tempo"]
    assert tempo["frames"] == EVAL_STEPS
    # the unfinished cheetah_run run has no evaluation past 30k: 3 runs per task there, 4 before
    assert tempo["runs_per_task"] == [4, 4, 4, 4, 3, 3]
    for i, frame in enumerate(EVAL_STEPS[:4]):
        mat = np.array([[ret(t, "tempo", s, frame) / 1000 for t in sorted(TASKS)] for s in range(4)])
        assert tempo["iqm"][i] == pytest.approx(stats.trim_mean(mat.flatten(), 0.25), abs=1e-12)
        assert tempo["ci_low"][i] <= tempo["iqm"][i] <= tempo["ci_high"][i]


def test_last_k(sweep, tmp_path):
    payload = build.build_report(sweep, tmp_path / "rep", reps=50, last_k=2)
    for task, method in SEEDS:
        exp = expected_finals(task, method, last_k=2)
        assert payload["tasks"][task]["methods"][method]["final"] == pytest.approx(exp.tolist(), abs=1e-9)


def test_atari_normalisation_by_hand():
    # Pong: random -20.7, human 14.6 (DQN Zoo / Mnih et al. 2015)
    assert tasks.normalise("atari:pong", 0.0) == pytest.approx((0.0 + 20.7) / (14.6 + 20.7))
    assert tasks.normalise("atari:pong", 14.6) == pytest.approx(1.0)
    assert tasks.normalise("atari:pong", -20.7) == pytest.approx(0.0)
    assert tasks.normalise("atari:hero", 1027.0 + 0.5 * (30826.4 - 1027.0)) == pytest.approx(0.5)
    assert tasks.normalise("walker_stand", 500.0) == pytest.approx(0.5)
    assert tasks.normalise("dmc:walker_stand", 1000.0) == pytest.approx(1.0)
    assert tasks.normalise("gym:Pendulum-v1", 1.0) is None
    atari_100k = ("alien amidar assault asterix bank_heist battle_zone boxing breakout chopper_command "
                  "crazy_climber demon_attack freeway frostbite gopher hero jamesbond kangaroo krull "
                  "kung_fu_master ms_pacman pong private_eye qbert road_runner seaquest up_n_down").split()
    assert len(atari_100k) == 26 and set(atari_100k) <= set(tasks.ATARI_RANDOM_HUMAN)
    assert all(human > random for random, human in tasks.ATARI_RANDOM_HUMAN.values())


@pytest.mark.parametrize(
    ("parts", "seed", "label"),
    [
        (("walker_stand", "tempo", "3"), 3, "tempo"),
        (("walker_stand", "tempo", "3", "bilevel.meta_lr=1e-4"), 3, "tempo/bilevel.meta_lr=1e-4"),
        (("walker_stand", "tempo", "bilevel.meta_lr=1e-4", "seed_3"), 3, "tempo/bilevel.meta_lr=1e-4"),
        (("walker_stand", "tempo", "s3"), 3, "tempo"),
        (("walker_stand", "tempo"), 3, "tempo"),
        (("walker_stand", "3"), 3, "cfg_method"),
        ((), 3, "cfg_method"),
    ],
)
def test_method_label(parts, seed, label):
    assert runs.method_label(parts, seed, "cfg_method") == label


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_bad_input_missing_and_empty(tmp_path, capsys):
    assert cli.main([str(tmp_path / "nope")]) == 2
    assert "no such directory" in _one_error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert cli.main([str(tmp_path / "empty")]) == 2
    assert "no run directory" in _one_error_line(capsys)
    write_leaf(tmp_path / "noeval" / "walker_stand" / "tempo" / "0", "walker_stand", "tempo", 0, [1000],
               evals=False)
    assert cli.main([str(tmp_path / "noeval")]) == 2
    assert "no run with an evaluation" in _one_error_line(capsys)


@pytest.mark.parametrize("module,args,needle", [
    ("recipes.report", ["--reps", "many"], "argument --reps: invalid int value: 'many'"),
    ("recipes.report", [], "the following arguments are required: SWEEP_DIR"),
    ("recipes.plot", [], "the following arguments are required: RUN_DIR"),
])
def test_cli_argument_errors_are_one_line(module, args, needle):
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"error: {needle}"]


def test_cli_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "recipes.report", str(tmp_path / "missing")],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1


def test_iqm_per_frame_is_rliables_iqm_per_frame():
    from rliable import metrics

    scores = np.random.default_rng(0).normal(size=(5, 3, 7))
    expected = [metrics.aggregate_iqm(scores[..., j]) for j in range(7)]
    np.testing.assert_allclose(aggregates.iqm_per_frame(scores), expected, rtol=0, atol=1e-12)


def _leaf(leaf: Path, task: str, method: str, seed: int, evals: dict[int, float], target: int,
          eval_every: int | None = None) -> None:
    leaf.mkdir(parents=True)
    run = {"steps": target} | ({"eval_every": eval_every} if eval_every else {})
    (leaf / "config.json").write_text(json.dumps({"task": task, "method": method, "seed": seed, "run": run}))
    (leaf / "metrics.jsonl").write_text("".join(json.dumps({"step": st, "eval_return": r}) + "\n"
                                                for st, r in evals.items()))


def test_atari_sweep_without_baseline(tmp_path):
    """Atari scores are human-normalised end to end; a suite with no reference is reported but not aggregated;
    an absent baseline skips the comparisons instead of failing."""
    root = tmp_path / "atari"
    final = {("a", s): -15.0 + 5 * s for s in range(3)} | {("b", s): -10.0 + s for s in range(3)}
    for (method, seed), r in final.items():
        _leaf(root / "atari:pong" / method / str(seed), "atari:pong", method, seed, {0: -21.0, 100_000: r}, 100_000)
    _leaf(root / "pendulum" / "a" / "0", "gym:Pendulum-v1", "a", 0, {0: -1500.0, 10_000: -300.0}, 10_000)
    payload = build.build_report(root, tmp_path / "out", baseline="dreamerv2", reps=20)
    agg = payload["aggregate"]
    assert agg["tasks"] == ["atari:pong"] and "gym:Pendulum-v1" in agg["excluded_tasks"]
    for method in ("a", "b"):
        exp = [[(final[(method, s)] + 20.7) / (14.6 + 20.7)] for s in range(3)]  # by hand: random -20.7, human 14.6
        np.testing.assert_allclose(agg["matrices"][method], exp, atol=1e-12)
    assert payload["tasks"]["gym:Pendulum-v1"]["methods"]["a"]["final"] == [-300.0]
    assert not payload["baseline_present"]
    assert agg["probability_of_improvement"] == {} and payload["welch"] == []
    assert "**absent**" in (tmp_path / "out" / "report.md").read_text()


def test_curve_stats_count_seeds_per_frame_and_clip_dmc_intervals():
    """A point evaluated by fewer seeds says so; the t-interval is computed by hand and, for DMC, clipped to the
    returns a task can pay (0..1000)."""
    def run(steps, returns):
        return runs.Run(path="x", task="reacher_easy", method="m", seed=0, steps=np.array(steps),
                        returns=np.array(returns, dtype=float))

    evaluated = [run([0, 2500, 5000], [100.0, 300.0, 320.0]), run([0, 2500, 5000], [110.0, 0.0, 0.0]),
            run([0, 2500], [120.0, 3.0])]
    c = curve_stats(evaluated, "reacher_easy")
    assert c["frames"].tolist() == [0, 2500, 5000] and c["n"].tolist() == [3, 3, 2]
    assert c["mean"].tolist() == pytest.approx([110.0, 101.0, 160.0])
    half0 = stats.t.ppf(0.975, 2) * np.std([100.0, 110.0, 120.0], ddof=1) / np.sqrt(3)  # inside the bounds
    assert c["lo"][0] == pytest.approx(110.0 - half0) and c["hi"][0] == pytest.approx(110.0 + half0)
    half2 = stats.t.ppf(0.975, 1) * np.std([320.0, 0.0], ddof=1) / np.sqrt(2)  # ±2033: beyond 0..1000
    assert 160.0 + half2 > 1000 and c["lo"][2] == 0.0 and c["hi"][2] == 1000.0
    single = curve_stats([run([0, 5000], [1.0, 2.0])], "reacher_easy")
    assert np.isnan(single["lo"]).all() and single["n"].tolist() == [1, 1]
    atari = curve_stats(evaluated[:2], "atari:pong")  # no bounds: the interval is left as it is
    assert atari["lo"][2] == pytest.approx(160.0 - half2)


# --------------------------------------------------------------------------------------------
# Training-log statistics (weights, diagnostics) and published anchors, on a second small sweep
# --------------------------------------------------------------------------------------------

LOG_EVERY, LOG_TARGET = 1000, 10_000
# method -> what its training log holds: dreamerv2 logs wm/weight_std = 0 (uniform weights) and the diagnostics;
# "pixels" logs wm/image_loss instead of wm/state_loss; "older" logs neither (a run from before these keys).
LOG_SEEDS = {"dreamerv2": [0, 1], "tempo": [0, 1, 2], "tempo-official": [0, 1], "pixels": [0, 1], "older": [0]}
LOG_STOP = {("tempo", 2): 6000}  # a slow seed: its last evaluation (5000) is the task's frame budget
NO_EPISODE_START = {("tempo-official", 1)}  # no episode start in any batch: that statistic is never logged
NAN_AT = ("tempo", 0, "wm/kl", 5000)  # a non-finite value in the tail: skipped


def log_value(method: str, seed: int, key: str, step: int) -> float:
    """Known training-log values, distinct over methods, seeds, keys and frames."""
    k = (runs.WEIGHT_METRICS + ("wm/kl", "wm/state_loss", "wm/image_loss", "wm/reward_loss", "wm/post_ent",
                                  "agent/imag_return", "agent/actor_ent")).index(key)
    m = list(LOG_SEEDS).index(method)
    return 0.01 * (k + 1) * (1 + 0.3 * seed) * step / 1000 - 0.05 * m + 0.1 * ((seed + step // 1000) % 3)


def log_keys(method: str, seed: int) -> list[str]:
    diag = ["wm/kl", "wm/image_loss" if method == "pixels" else "wm/state_loss", "wm/reward_loss", "wm/post_ent",
            "agent/imag_return", "agent/actor_ent"]
    if method == "older":
        return []
    if method in ("dreamerv2", "pixels"):
        return ["wm/weight_std", *diag]
    return [k for k in runs.WEIGHT_METRICS
            if not (k == "wm/weight_episode_start" and (method, seed) in NO_EPISODE_START)] + diag


def write_logged_leaf(leaf: Path, method: str, seed: int) -> None:
    leaf.mkdir(parents=True)
    (leaf / "config.json").write_text(json.dumps({"task": "cartpole_swingup", "method": method, "seed": seed,
                                                  "run": {"steps": LOG_TARGET}}))
    lines = [json.dumps({"step": 0, "eval_return": 50.0 + seed})]
    for step in range(LOG_EVERY, LOG_STOP.get((method, seed), LOG_TARGET) + 1, LOG_EVERY):
        rec: dict = {"step": step, "fps": 5.0}
        for key in log_keys(method, seed):
            rec[key] = 0.0 if key == "wm/weight_std" and method in ("dreamerv2", "pixels") else \
                log_value(method, seed, key, step)
        if NAN_AT[:2] == (method, seed) and step == NAN_AT[3]:
            rec[NAN_AT[2]] = float("nan")
        if step % 5000 == 0:
            rec["eval_return"] = 100.0 + step / 100 + seed
        lines.append(json.dumps(rec))
    (leaf / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def expected_tail(method: str, key: str, budget: int = 5000) -> tuple[float, float | None, int]:
    """By hand: per seed, the mean over its records at frames in [0.8 budget, budget], the task's frame budget (set
    by the slow seed's last evaluation unless given); over seeds (std None, as in report.json, for one seed)."""
    per_seed = []
    for seed in LOG_SEEDS[method]:
        if key not in log_keys(method, seed):
            continue
        last = LOG_STOP.get((method, seed), LOG_TARGET)
        if last < budget:
            continue
        tail = [s for s in range(LOG_EVERY, last + 1, LOG_EVERY) if 0.8 * budget <= s <= budget]
        tail = [s for s in tail if (method, seed, key, s) != NAN_AT]
        per_seed.append(np.mean([log_value(method, seed, key, s) for s in tail]))
    std = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else None
    return float(np.mean(per_seed)), std, len(per_seed)


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("logged")
    for method, seeds in LOG_SEEDS.items():
        for seed in seeds:
            write_logged_leaf(root / "cartpole_swingup" / method / str(seed), method, seed)
    out = root / "report"
    payload = build.build_report(root, out, reps=20)
    return {"out": out, "json": payload, "md": (out / "report.md").read_text()}


def test_weight_table_matches_hand_computation(logged):
    weights = logged["json"]["weights"]["tasks"]["cartpole_swingup"]
    assert set(weights) == {"tempo", "tempo-official"}  # dreamerv2 / pixels: weight_std 0; older: no keys
    for method in ("tempo", "tempo-official"):
        for key in runs.WEIGHT_METRICS:
            mean, std, n = expected_tail(method, key)
            cell = weights[method]["metrics"][key]
            assert cell["mean"] == pytest.approx(mean, abs=1e-12), (method, key)
            assert cell["std"] == (None if std is None else pytest.approx(std, abs=1e-12)), (method, key)
            assert cell["n"] == n
    assert weights["tempo"]["n"] == 3 and weights["tempo"]["window"] == [4000, 5000]
    assert weights["tempo"]["frames"] == {f"cartpole_swingup/tempo/{s}": 5000 for s in (0, 1, 2)}
    assert weights["tempo-official"]["metrics"]["wm/weight_episode_start"]["n"] == 1  # one seed never logs it
    # every seed at the same frames: a finished seed's records past the budget (6000..10000) do not count, by hand
    seed0 = weights["tempo"]["metrics"]["wm/weight_upper_corr"]["runs"]["cartpole_swingup/tempo/0"]
    assert seed0 == pytest.approx((log_value("tempo", 0, "wm/weight_upper_corr", 4000)
                                   + log_value("tempo", 0, "wm/weight_upper_corr", 5000)) / 2, abs=1e-12)
    md = logged["md"]
    mean, std, _ = expected_tail("tempo", "wm/weight_phase_corr")
    assert f"{mean:.3f} ± {std:.3f}" in md
    assert "(n=1)" in md  # the statistic only one of tempo-official's two seeds logs
    assert f"| cartpole_swingup | tempo | 3 | 4,000–5,000 | {expected_tail('tempo', runs.WEIGHT_METRICS[0])[0]:.3f}" \
        in md
    assert [r["weighted"] for r in logged["json"]["runs"] if r["path"].startswith("cartpole_swingup/tempo/")] \
        == [True] * 3


def test_diagnostics_table_matches_hand_computation(logged):
    diag = logged["json"]["diagnostics"]["tasks"]["cartpole_swingup"]
    assert set(diag) == {"dreamerv2", "tempo", "tempo-official", "pixels"}  # "older" logs none
    decoder = "wm/state_loss or wm/image_loss"
    for method in diag:
        for key in ("wm/kl", "wm/reward_loss", "agent/actor_ent"):
            mean, std, n = expected_tail(method, key)
            cell = diag[method]["metrics"][key]
            assert (cell["mean"], cell["std"], cell["n"]) == (pytest.approx(mean, abs=1e-12),
                                                              pytest.approx(std, abs=1e-12), n), (method, key)
    assert diag["pixels"]["metrics"][decoder]["keys"] == ["wm/image_loss"]
    assert diag["pixels"]["metrics"][decoder]["mean"] == pytest.approx(expected_tail("pixels", "wm/image_loss")[0])
    assert diag["dreamerv2"]["metrics"][decoder]["keys"] == ["wm/state_loss"]


def test_training_log_tables_at_frames_leave_out_the_runs_short_of_them(logged, tmp_path):
    """With `--frames`, the tables hold the runs scored there, over the window below it: the slow seed (6000
    frames) is only in the figures, and the others' records at 8000..10000 count."""
    payload = build.build_report(logged["out"].parent, tmp_path / "at", reps=20, frames=LOG_TARGET)
    tempo = payload["weights"]["tasks"]["cartpole_swingup"]["tempo"]
    assert tempo["window"] == pytest.approx([8000, 10_000]) and tempo["n"] == 2
    assert set(tempo["frames"]) == {"cartpole_swingup/tempo/0", "cartpole_swingup/tempo/1"}
    for key in runs.WEIGHT_METRICS:
        mean, std, n = expected_tail("tempo", key, LOG_TARGET)
        assert (tempo["metrics"][key]["mean"], tempo["metrics"][key]["std"], n) == (
            pytest.approx(mean, abs=1e-12), pytest.approx(std, abs=1e-12), 2), key
    kl = payload["diagnostics"]["tasks"]["cartpole_swingup"]["tempo"]["metrics"]["wm/kl"]
    assert kl["mean"] == pytest.approx(expected_tail("tempo", "wm/kl", LOG_TARGET)[0], abs=1e-12)
    assert payload["files"]["weights"] == "weights.png"  # drawn from every run, the slow seed's too


def test_training_log_figures_written(logged):
    out = logged["out"]
    assert logged["json"]["files"]["weights"] == "weights.png"
    assert logged["json"]["files"]["diagnostics"] == "diagnostics.png"
    for name in ("weights.png", "diagnostics.png", "curves.png"):
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 200 and float(img[..., :3].std()) > 0.01, name
    # one row per task, six panels per row: much wider than tall
    assert mpimg.imread(out / "weights.png").shape[1] > 3 * mpimg.imread(out / "weights.png").shape[0]


def test_anchors_listed_with_frames(logged):
    anchors = logged["json"]["anchors"]
    assert set(anchors) == {"cartpole_swingup"}
    got = {(a["label"], a["frames"]): (a["mean"], a["std"]) for a in anchors["cartpole_swingup"]}
    assert got == {("DreamerV3 (proprio)", 20_000): (189.0, 29.7), ("DreamerV3 (proprio)", 100_000): (527.7, 40.7),
                   ("DreamerV2 official (pixels)", 90_000): (386.8, 145.0)}
    assert all("danijar/dreamerv" in a["source"] for a in anchors["cartpole_swingup"])
    md = logged["md"]
    assert "## Published returns for scale" in md and "| cartpole_swingup | DreamerV3 (proprio) | 100,000 | 527.7" in md


def test_anchors_drawn_at_their_frames():
    fig, ax = plt.subplots()
    figures._draw_anchors(ax, tasks.anchors_for(["walker_walk", "cheetah_run"])["walker_walk"])
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["DreamerV3 (proprio) (published, ±1 std)", "DreamerV2 official (pixels) (published, ±1 std)"]
    v3, v2 = ax.containers  # one errorbar per source
    assert v3.lines[0].get_xdata().tolist() == [20_000, 100_000] and v3.lines[0].get_ydata().tolist() == [88.5, 475.2]
    assert v2.lines[0].get_xdata().tolist() == [90_000] and v2.lines[0].get_ydata().tolist() == [408.2]
    plt.close(fig)
    assert tasks.anchors_for(["cheetah_run"]) == {}


def test_no_weighted_run_says_so(tmp_path):
    root = tmp_path / "uniform"
    for seed in (0, 1):
        write_logged_leaf(root / "cartpole_swingup" / "dreamerv2" / str(seed), "dreamerv2", seed)
    payload = build.build_report(root, tmp_path / "out", reps=20)
    assert "weights" not in payload["files"] and not (tmp_path / "out" / "weights.png").exists()
    assert (tmp_path / "out" / "diagnostics.png").is_file()
    md = (tmp_path / "out" / "report.md").read_text()
    assert sum("No weighted run" in line for line in md.splitlines()) == 1


def test_a_late_evaluation_counts_where_it_was_due(tmp_path):
    """A run resumed by older code evaluated a step late (3 001 for 3 000): it counts at 3 000, so the frame
    budget that another run reached on time keeps it. An evaluation far from its due point (a final one at 2 500)
    and one whose due point has its own stay where they are."""
    root = tmp_path / "grid"
    evals = {("dreamerv2", 0): {0: -1200.0, 1000: -900.0, 2000: -700.0, 3000: -300.0},
             ("dreamerv2", 1): {0: -1100.0, 1000: -800.0, 2000: -600.0, 3000: -400.0, 4000: -100.0},
             ("tempo", 0): {0: -1200.0, 1000: -950.0, 2000: -650.0, 3001: -250.0},  # late
             ("tempo", 1): {0: -1100.0, 1000: -850.0, 2000: -550.0, 3000: -350.0, 3002: -340.0}}  # 3000 has its own
    for (method, seed), ev in evals.items():
        _leaf(root / "Pendulum-v1" / method / str(seed), "gym:Pendulum-v1", method, seed, ev, 5000, eval_every=1000)
    payload = build.build_report(root, tmp_path / "out", reps=20)
    task = payload["tasks"]["gym:Pendulum-v1"]
    assert task["frame_budget"] == 3000
    assert task["methods"]["tempo"]["final"] == [-250.0, -350.0]  # without the rule: -650 (3 001 > budget)
    assert task["methods"]["tempo"]["auc"] == [pytest.approx((-950 - 650 - 250) / 3),
                                               pytest.approx((-850 - 550 - 350) / 3)]
    run = runs.load_run(root / "Pendulum-v1" / "tempo" / "1")
    assert run.steps.tolist() == [0, 1000, 2000, 3000, 3002]
    other = tmp_path / "other"
    _leaf(other, "gym:Pendulum-v1", "tempo", 0, {0: 1.0, 1000: 2.0, 2000: 3.0, 2500: 4.0}, 2500, eval_every=1000)
    assert runs.load_run(other).steps.tolist() == [0, 1000, 2000, 2500]


def test_one_run_per_task_has_no_confidence_interval(tmp_path):
    """One run per task: the points are reported, every CI is undefined (a bootstrap of one run has zero width,
    which would read as certainty), in report.json, report.md and the curves; two runs per task give a CI again."""
    root = tmp_path / "one"
    for method, r in (("dreamerv2", 200.0), ("tempo", 800.0)):
        for task in ("cartpole_swingup", "walker_walk"):
            _leaf(root / task / method / "0", task, method, 0, {0: 30.0, 10_000: r}, 10_000)
    payload = build.build_report(root, tmp_path / "out", baseline="dreamerv2", reps=50)
    agg = payload["aggregate"]
    assert agg["methods"]["tempo"]["iqm"] == {"point": pytest.approx(0.8), "ci": [None, None]}
    assert agg["auc"]["methods"]["dreamerv2"]["mean"]["ci"] == [None, None]
    assert agg["probability_of_improvement"]["tempo"]["point"] == pytest.approx(1.0)
    assert agg["probability_of_improvement"]["tempo"]["ci"] == [None, None]
    assert agg["sample_efficiency"]["tempo"]["ci_low"] == [None, None]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| tempo | 0.800 [n/a, n/a] |" in md and "1.000 [1.000, 1.000]" not in md

    for method, r in (("dreamerv2", 300.0), ("tempo", 600.0)):  # a second seed: CIs are defined again
        for task in ("cartpole_swingup", "walker_walk"):
            _leaf(root / task / method / "1", task, method, 1, {0: 30.0, 10_000: r}, 10_000)
    agg = build.build_report(root, tmp_path / "out2", baseline="dreamerv2", reps=50)["aggregate"]
    lo, hi = agg["methods"]["tempo"]["mean"]["ci"]
    assert 0.6 <= lo < hi <= 0.8  # the bootstrap means of {0.6, 0.8} per task
    assert agg["probability_of_improvement"]["tempo"]["ci"][0] is not None


def test_every_evaluation_of_every_run_is_listed(tmp_path):
    """The runs' table lists each evaluation as recorded, the ones past the frame budget too, seed-ordered."""
    root = tmp_path / "s"
    _leaf(root / "cartpole_swingup" / "dreamerv2" / "10", "cartpole_swingup", "dreamerv2", 10,
          {0: 120.4, 2_500: 33.25, 10_000: -1522.2}, 10_000)
    _leaf(root / "cartpole_swingup" / "dreamerv2" / "2", "cartpole_swingup", "dreamerv2", 2, {0: 5.0}, 10_000)
    payload = build.build_report(root, tmp_path / "out", reps=20)
    run = next(r for r in payload["runs"] if r["seed"] == 10)
    assert run["evaluations"] == [[0, 120.4], [2500, 33.25], [10000, -1522.2]]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| `cartpole_swingup/dreamerv2/10` | 10,000 | 0: 120, 2.5k: 33.2, 10k: -1522 |" in md
    assert "| `cartpole_swingup/dreamerv2/2` | 0 / 10,000 | 0: 5.0 |" in md
    assert md.index("dreamerv2/2`") < md.index("dreamerv2/10`")


def test_frames_scores_every_task_there_and_leaves_out_the_runs_short_of_it(sweep, tmp_path, capsys):
    """--frames N: every task is scored at N frames (not at the frames its slowest run reached), the runs short of
    N are listed, not scored, and kept in the evaluation table; past every run, or below 1, it is one error line
    and nothing is written."""
    out = tmp_path / "at"
    assert cli.main([str(sweep), "--reps", "50", "--frames", str(TARGET), "--out", str(out)]) == 0
    p = json.loads((out / "report.json").read_text())
    assert p["frames"] == TARGET and [r["path"] for r in p["short_of_frames"]] == ["cheetah_run/tempo/2"]
    assert "cheetah_run/tempo/2" not in {r["path"] for r in p["runs"]}
    cheetah = p["tasks"]["cheetah_run"]
    assert cheetah["frame_budget"] == TARGET and cheetah["budget_limited_by"] == []  # not UNFINISHED_AT
    tempo = cheetah["methods"]["tempo"]
    assert tempo["final"] == pytest.approx([ret("cheetah_run", "tempo", s, TARGET) for s in (0, 1, 3)], abs=1e-9)
    assert tempo["auc"] == pytest.approx(
        [np.mean([ret("cheetah_run", "tempo", s, f) for f in EVAL_STEPS[1:]]) for s in (0, 1, 3)], abs=1e-9)
    md = (out / "report.md").read_text()
    assert "Short of `--frames` 50,000" in md and "| `cheetah_run/tempo/2` | 30,000 / 50,000 |" in md
    assert (out / "curves.png").exists()
    capsys.readouterr()  # the loader's warning about the sweep's cut line

    assert cli.main([str(sweep), "--frames", str(TARGET + 1), "--out", str(tmp_path / "past")]) == 2
    assert "--frames 50001: no run has an evaluation at or past it" in _one_error_line(capsys)
    assert cli.main([str(sweep), "--frames", "0", "--out", str(tmp_path / "zero")]) == 2
    assert "--frames must be >= 1, got 2000, 1, 0" in _one_error_line(capsys)
    assert not (tmp_path / "past").exists() and not (tmp_path / "zero").exists()
