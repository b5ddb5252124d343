"""Tests for recipes/report.py on a synthetic sweep with known returns.

Every number the report computes is checked against an independent computation here: IQM against
``scipy.stats.trim_mean`` of the pooled normalised scores, the bootstrap CI against a hand-written stratified
bootstrap, the probability of improvement against pairwise counts, the Welch tests against scipy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from scipy import stats

from recipes import report

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
            rec["eval_return"] = ret(report.canonical_task(task), method, seed, s)
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


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return build_sweep(tmp_path_factory.mktemp("sweep"))


@pytest.fixture(scope="module")
def result(sweep) -> dict:
    rc = report.main([str(sweep), "--reps", str(REPS), "--seed", "0"])
    assert rc == 0
    out = sweep / "report"
    return {"out": out, "json": json.loads((out / "report.json").read_text()), "md": (out / "report.md").read_text()}


def test_writes_files(result):
    out, payload = result["out"], result["json"]
    for name in ("report.md", "report.json", "curves.png", "aggregates.png", "performance_profile.png",
                 "sample_efficiency.png"):
        assert (out / name).is_file(), name
    for name in ("curves.png", "performance_profile.png", "sample_efficiency.png", "aggregates.png"):
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 100 and float(img[..., :3].std()) > 0.01, name
    assert set(payload["files"].values()) >= {"report.md", "report.json", "curves.png"}


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
    payload = report.build_report(sweep, tmp_path / "rep", reps=50, last_k=2)
    for task, method in SEEDS:
        exp = expected_finals(task, method, last_k=2)
        assert payload["tasks"][task]["methods"][method]["final"] == pytest.approx(exp.tolist(), abs=1e-9)


def test_atari_normalisation_by_hand():
    # Pong: random -20.7, human 14.6 (DQN Zoo / Mnih et al. 2015)
    assert report.normalise("atari:pong", 0.0) == pytest.approx((0.0 + 20.7) / (14.6 + 20.7))
    assert report.normalise("atari:pong", 14.6) == pytest.approx(1.0)
    assert report.normalise("atari:pong", -20.7) == pytest.approx(0.0)
    assert report.normalise("atari:hero", 1027.0 + 0.5 * (30826.4 - 1027.0)) == pytest.approx(0.5)
    assert report.normalise("walker_stand", 500.0) == pytest.approx(0.5)
    assert report.normalise("dmc:walker_stand", 1000.0) == pytest.approx(1.0)
    assert report.normalise("gym:Pendulum-v1", 1.0) is None
    atari_100k = ("alien amidar assault asterix bank_heist battle_zone boxing breakout chopper_command "
                  "crazy_climber demon_attack freeway frostbite gopher hero jamesbond kangaroo krull "
                  "kung_fu_master ms_pacman pong private_eye qbert road_runner seaquest up_n_down").split()
    assert len(atari_100k) == 26 and set(atari_100k) <= set(report.ATARI_RANDOM_HUMAN)
    assert all(human > random for random, human in report.ATARI_RANDOM_HUMAN.values())


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
    assert report.method_label(parts, seed, "cfg_method") == label


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_bad_input_missing_and_empty(tmp_path, capsys):
    assert report.main([str(tmp_path / "nope")]) == 2
    assert "no such directory" in _one_error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty")]) == 2
    assert "no run directory" in _one_error_line(capsys)
    write_leaf(tmp_path / "noeval" / "walker_stand" / "tempo" / "0", "walker_stand", "tempo", 0, [1000],
               evals=False)
    assert report.main([str(tmp_path / "noeval")]) == 2
    assert "no run with an evaluation" in _one_error_line(capsys)


def test_cli_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "recipes.report", str(tmp_path / "missing")],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1


def test_iqm_per_frame_is_rliables_iqm_per_frame():
    from rliable import metrics

    scores = np.random.default_rng(0).normal(size=(5, 3, 7))
    expected = [metrics.aggregate_iqm(scores[..., j]) for j in range(7)]
    np.testing.assert_allclose(report.iqm_per_frame(scores), expected, rtol=0, atol=1e-12)


def _leaf(leaf: Path, task: str, method: str, seed: int, evals: dict[int, float], target: int) -> None:
    leaf.mkdir(parents=True)
    (leaf / "config.json").write_text(json.dumps({"task": task, "method": method, "seed": seed,
                                                  "run": {"steps": target}}))
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
    payload = report.build_report(root, tmp_path / "out", baseline="dreamerv2", reps=20)
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
    from scipy import stats

    def run(steps, returns):
        return {"steps": np.array(steps), "returns": np.array(returns, dtype=float)}

    runs = [run([0, 2500, 5000], [100.0, 300.0, 320.0]), run([0, 2500, 5000], [110.0, 0.0, 0.0]),
            run([0, 2500], [120.0, 3.0])]
    c = report.curve_stats(runs, "reacher_easy")
    assert c["frames"].tolist() == [0, 2500, 5000] and c["n"].tolist() == [3, 3, 2]
    assert c["mean"].tolist() == pytest.approx([110.0, 101.0, 160.0])
    half0 = stats.t.ppf(0.975, 2) * np.std([100.0, 110.0, 120.0], ddof=1) / np.sqrt(3)  # inside the bounds
    assert c["lo"][0] == pytest.approx(110.0 - half0) and c["hi"][0] == pytest.approx(110.0 + half0)
    half2 = stats.t.ppf(0.975, 1) * np.std([320.0, 0.0], ddof=1) / np.sqrt(2)  # ±2033: beyond 0..1000
    assert 160.0 + half2 > 1000 and c["lo"][2] == 0.0 and c["hi"][2] == 1000.0
    single = report.curve_stats([run([0, 5000], [1.0, 2.0])], "reacher_easy")
    assert np.isnan(single["lo"]).all() and single["n"].tolist() == [1, 1]
    atari = report.curve_stats(runs[:2], "atari:pong")  # no bounds: the interval is left as it is
    assert atari["lo"][2] == pytest.approx(160.0 - half2)
