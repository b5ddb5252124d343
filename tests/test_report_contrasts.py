"""`recipes.report.contrasts` on a synthetic grid sweep with known returns: gains and interactions against hand
computations, their bootstrap CIs against a second, loop-written bootstrap, the flag-weight table against scipy,
and the report's markdown section."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from recipes.report import build
from recipes.report.contrasts import bootstrap_ci, split_label

TASK = "cartpole_swingup"
POINTS = ("env.distractors.mode=constant", "env.distractors.mode=intermittent")
STEPS = (0, 1000, 2000)
FLAG_STEPS = (1500, 1800, 2500)  # between the evaluations, and past the last one (outside the tail window)
SEEDS = {"dreamerv2": [0, 1, 2, 3], "tempo": [0, 1, 2]}
REPS = 4000


def final(method: str, point: str, seed: int) -> float:
    """Known final returns: TEMPO gains 50 with constant distractors and 200 with intermittent ones."""
    base = 300.0 + 20.0 * ((seed * 5) % 4)  # distinct values over seeds
    gain = {"dreamerv2": 0.0, "tempo": 50.0 if point == POINTS[0] else 200.0}[method]
    return base + gain - (100.0 if point == POINTS[1] else 0.0)


def flag(method: str, point: str, seed: int, step: int) -> float:
    return (0.8 if method == "tempo" else 1.0) + 0.01 * seed + 0.001 * step / 1000


def write_sweep(root: Path, grid: bool = True) -> Path:
    for method, seeds in SEEDS.items():
        for point in POINTS if grid else POINTS[:1]:
            for seed in seeds:
                leaf = root / TASK / method / str(seed) / point if grid else root / TASK / method / str(seed)
                leaf.mkdir(parents=True)
                (leaf / "config.json").write_text(json.dumps({"task": TASK, "method": method, "seed": seed,
                                                              "run": {"steps": STEPS[-1]}}))
                recs = [{"step": s, "eval_return": final(method, point, seed) - (STEPS[-1] - s) / 10} for s in STEPS]
                recs += [{"step": s, "wm/weight_distractor_on": flag(method, point, seed, s)}
                         for s in FLAG_STEPS if method == "tempo"]
                (leaf / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    root = write_sweep(tmp_path_factory.mktemp("grid"))
    return build.build_report(root, root / "report", reps=REPS, seed=3)


def finals(method: str, point: str) -> np.ndarray:
    return np.array([final(method, point, s) for s in SEEDS[method]])


def loop_bootstrap(samples: list[np.ndarray], signs: list[float], reps: int = 20_000) -> tuple[float, float]:
    """A second bootstrap, written as loops over replications with Python's own resampling."""
    import random
    rng = random.Random(11)
    stat = [sum(sign * np.mean(rng.choices(list(s), k=len(s))) for s, sign in zip(samples, signs, strict=True))
            for _ in range(reps)]
    return float(np.percentile(stat, 2.5)), float(np.percentile(stat, 97.5))


def test_split_label():
    assert split_label("tempo/env.distractors.mode=none") == ("tempo", "env.distractors.mode=none")
    assert split_label("tempo-official/a=1,b=2") == ("tempo-official", "a=1,b=2")
    assert split_label("dreamerv2") == ("dreamerv2", None)
    assert split_label("tempo/v2") == ("tempo/v2", None)  # a folder that names no field


def test_gains_by_hand_with_welch_and_a_second_bootstrap(report):
    gains = {(g["point"], g["method"]): g for g in report["contrasts"]["final"]["gains"]}
    assert set(gains) == {(p, "tempo") for p in POINTS}  # the baseline is never compared with itself
    for point, expected in zip(POINTS, (50.0, 200.0), strict=True):
        g = gains[(point, "tempo")]
        a, b = finals("tempo", point), finals("dreamerv2", point)
        assert g["gain"] == pytest.approx(a.mean() - b.mean())
        assert g["n"] == 3 and g["n_baseline"] == 4
        # the synthetic seeds are not paired, so the gain differs from the designed one by the seeds' means
        assert abs(g["gain"] - expected) < 20
        assert g["p_two_sided"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
        lo, hi = loop_bootstrap([a, b], [1.0, -1.0])
        assert g["ci"][0] == pytest.approx(lo, abs=6) and g["ci"][1] == pytest.approx(hi, abs=6)
        assert g["ci"][0] < g["gain"] < g["ci"][1]


def test_interaction_by_hand(report):
    (row,) = report["contrasts"]["final"]["interactions"]
    assert (row["method"], row["point_a"], row["point_b"]) == ("tempo", *POINTS)
    parts = [finals("tempo", POINTS[0]), finals("dreamerv2", POINTS[0]),
             finals("tempo", POINTS[1]), finals("dreamerv2", POINTS[1])]
    expected = parts[0].mean() - parts[1].mean() - parts[2].mean() + parts[3].mean()
    assert row["difference"] == pytest.approx(expected) and row["difference"] == pytest.approx(50 - 200)
    lo, hi = loop_bootstrap(parts, [1.0, -1.0, -1.0, 1.0])
    assert row["ci"][0] == pytest.approx(lo, abs=6) and row["ci"][1] == pytest.approx(hi, abs=6)
    assert row["ci"][1] < 0  # the designed interaction is far outside the seeds' spread
    assert row["n"] == [3, 4, 3, 4]


def test_auc_contrasts_use_the_auc(report):
    g = {(r["point"], r["method"]): r for r in report["contrasts"]["auc"]["gains"]}[(POINTS[1], "tempo")]
    auc = lambda m: np.array([np.mean([final(m, POINTS[1], s) - (STEPS[-1] - t) / 10 for t in STEPS[1:]])  # noqa: E731
                              for s in SEEDS[m]])
    assert g["gain"] == pytest.approx(auc("tempo").mean() - auc("dreamerv2").mean())


def test_flag_weights_against_scipy(report):
    rows = {(r["method"], r["metric"]): r for r in report["contrasts"]["flag_weights"]}
    assert set(rows) == {(f"tempo/{p}", "wm/weight_distractor_on") for p in POINTS}  # dreamerv2 logs none
    r = rows[(f"tempo/{POINTS[1]}", "wm/weight_distractor_on")]
    # tail: the last 20% of the frame budget 2 000, [1 600, 2 000] = the record at 1 800 alone (not 1 500 or 2 500)
    per = np.array([flag("tempo", POINTS[1], s, 1800) for s in SEEDS["tempo"]])
    assert r["mean"] == pytest.approx(per.mean()) and r["n"] == 3
    lo, hi = stats.t.interval(0.95, 2, loc=per.mean(), scale=stats.sem(per))
    assert r["ci"] == pytest.approx([lo, hi])
    assert r["p_vs_1"] == pytest.approx(stats.ttest_1samp(per, 1.0).pvalue) and r["p_vs_1"] < 0.01


def test_markdown_section_and_no_grid(report, tmp_path):
    md = (Path(report["sweep"]) / "report" / "report.md").read_text()
    assert "## Grid contrasts" in md and "Interaction in AUC" in md and "`wm/weight_distractor_on`" in md
    assert "compared at each point, see Grid contrasts" in md and "**absent**" not in md
    plain = write_sweep(tmp_path / "plain", grid=False)
    p = build.build_report(plain, plain / "report", reps=50)
    assert p["contrasts"]["final"] == {"gains": [], "interactions": []}
    assert "## Grid contrasts" in (plain / "report" / "report.md").read_text()  # the flag table still shows
    assert not any("env.distractors" in r["method"] for r in p["contrasts"]["flag_weights"])


def test_bootstrap_ci_undefined_below_two_seeds():
    assert all(math.isnan(x) for x in bootstrap_ci([np.array([1.0]), np.array([1.0, 2.0])], [1, -1], 100, 0))


def test_the_cli_does_not_call_a_grid_sweeps_baseline_missing(report, tmp_path, capsys):
    from recipes.report.cli import main

    assert main([report["sweep"], "--out", str(tmp_path / "cli"), "--reps", "50"]) == 0
    assert "not found" not in capsys.readouterr().err
