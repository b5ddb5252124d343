"""Every per-task statistic of the report and of ``python -m recipes.plot``: scores at a frame budget, the one
Welch t-test, curves and their bands, tail means of training-log series. (Aggregates over tasks, rliable's
bootstrap, are :mod:`recipes.report.aggregates`.)

Conventions, the same everywhere: std is the sample std (``ddof=1``), NaN with fewer than two values; a Welch test
gives t, the two-sided p and the one-sided p of "method > baseline", NaN when undefined.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.power import TTestIndPower

from recipes.report.runs import Groups, Run, Series, metric_key, metric_name
from recipes.report.tasks import normalisation

__all__ = ["TAIL_FRACTION", "Welch", "auc_score", "band_stats", "common_grid", "curve_stats",
           "detectable_difference", "final_score", "frame_budgets", "metric_table", "sample_std", "scored",
           "tail_mean", "tail_window", "welch", "welch_over_evals", "welch_rows"]

TAIL_FRACTION = 0.2  # tail means: the last 20% of the frames up to the task's frame budget


def sample_std(x: np.ndarray) -> float:
    """The sample std (``ddof=1``); NaN for fewer than two values, where it is undefined."""
    return float(np.std(x, ddof=1)) if len(x) > 1 else math.nan


@dataclass(frozen=True)
class Welch:
    """Welch's t-test of a vs b: t, two-sided p, one-sided p (a > b, the TEMPO paper's alternative)."""

    t: float
    p_two_sided: float
    p_greater: float


def welch(a: np.ndarray, b: np.ndarray) -> Welch:
    """``scipy.stats.ttest_ind(a, b, equal_var=False)``, two-sided and ``alternative="greater"``; all NaN with fewer
    than two values on a side, t NaN (or infinite) with zero variance on both."""
    if len(a) < 2 or len(b) < 2:
        return Welch(math.nan, math.nan, math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance: scipy returns NaN, the caller notes it
        two = stats.ttest_ind(a, b, equal_var=False)
        one = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
    return Welch(float(two.statistic), float(two.pvalue), float(one.pvalue))


def detectable_difference(a: np.ndarray, b: np.ndarray, power: float = 0.8, alpha: float = 0.05) -> float:
    """The difference of means that a two-sided two-sample t-test at ``alpha`` detects with probability ``power``,
    with ``len(a)`` and ``len(b)`` runs and the runs' pooled sample std (``statsmodels`` ``TTestIndPower``).

    Why: with 3 seeds a test detects only gaps of about three seed stds, so a large p is no evidence of "no
    difference"; this says how large a gap the runs could have shown. NaN below two runs on a side or with zero
    variance on both (as every other statistic). The equal-variance test's power stands in for Welch's.
    """
    n_a, n_b = len(a), len(b)
    if n_a < 2 or n_b < 2:
        return math.nan
    pooled = math.sqrt(((n_a - 1) * np.var(a, ddof=1) + (n_b - 1) * np.var(b, ddof=1)) / (n_a + n_b - 2))
    if pooled == 0:
        return math.nan
    d = TTestIndPower().solve_power(nobs1=n_a, ratio=n_b / n_a, alpha=alpha, power=power)
    return float(np.asarray(d).item() * pooled)


# --------------------------------------------------------------------------------------------
# Scores at a frame budget (the report)
# --------------------------------------------------------------------------------------------


def frame_budgets(runs: list[Run]) -> dict[str, int]:
    """Per task, the largest frame count every run of the task has reached (min of their last evaluations)."""
    budgets: dict[str, int] = {}
    for run in runs:
        budgets[run.task] = min(budgets.get(run.task, run.frames_reached), run.frames_reached)
    return budgets


def final_score(run: Run, budget: int, last_k: int = 1) -> float:
    """Mean of the run's last ``last_k`` evaluation returns at or below ``budget`` frames.

    There is always one: the budget is at least the run's own last evaluation or another run's, and every
    ``recipes.tempo`` run scores its untrained agent at step 0.
    """
    returns = run.returns[run.steps <= budget]
    return float(returns[-last_k:].mean())


def auc_score(run: Run, budget: int) -> float | None:
    """Area under the curve: the mean of the run's evaluation returns at frames in ``(0, budget]``.

    Every evaluation up to the budget counts equally, so a method that learns sooner scores higher even when the
    final scores end equal. Step 0 (the untrained policy) is left out; None if no evaluation is in the range.
    """
    returns = run.returns[(run.steps > 0) & (run.steps <= budget)]
    return float(returns.mean()) if len(returns) else None


def scored(runs: list[Run], scores: dict[str, float | None]) -> np.ndarray:
    """The runs' scores (keyed by ``rel``), runs without one (an AUC with no evaluation in range) left out."""
    return np.array([scores[r.rel] for r in runs if scores[r.rel] is not None], dtype=np.float64)


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else math.nan


def welch_rows(groups: Groups, scores: dict[str, float | None], baseline: str) -> list[dict]:
    """Per task and non-baseline method, Welch's t-test of a score (final or AUC) vs the baseline (paper protocol),
    and the difference these runs could detect (:func:`detectable_difference`).

    Runs with no score (None) are left out, so ``n`` counts the runs tested."""
    rows = []
    for (task, method), runs in groups.items():
        if method == baseline or (task, baseline) not in groups:
            continue
        a, b = scored(runs, scores), scored(groups[(task, baseline)], scores)
        test = welch(a, b)
        note = ("undefined: < 2 seeds on a side" if len(a) < 2 or len(b) < 2
                else "" if math.isfinite(test.t) else "undefined: zero variance on both sides")
        rows.append({"task": task, "method": method, "baseline": baseline, "n": len(a), "n_baseline": len(b),
                     "mean": _mean(a), "baseline_mean": _mean(b), "t": test.t, "p_two_sided": test.p_two_sided,
                     "p_greater": test.p_greater, "detectable": detectable_difference(a, b), "note": note})
    return rows


# --------------------------------------------------------------------------------------------
# Over evaluation steps (the plot command; the report's ``welch_over_evals``)
# --------------------------------------------------------------------------------------------


def common_grid(runs: list[Run]) -> tuple[np.ndarray, np.ndarray]:
    """Steps present in every run, and the ``(n_seeds, n_steps)`` matrix of returns there."""
    if not runs:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0))
    grid = runs[0].steps
    for run in runs[1:]:
        grid = np.intersect1d(grid, run.steps)
    if not len(grid):
        return np.zeros(0, dtype=np.int64), np.zeros((len(runs), 0))
    mat = np.stack([r.returns[np.searchsorted(r.steps, grid)] for r in runs])
    return np.asarray(grid, dtype=np.int64), mat


def _last_common(runs: list[Run]) -> tuple[int | None, float, float]:
    """Step, mean and std over the runs of the last step of their common grid."""
    grid, mat = common_grid(runs)
    if not len(grid):
        return None, math.nan, math.nan
    return int(grid[-1]), float(mat[:, -1].mean()), sample_std(mat[:, -1])


def _averaged_welch(runs: list[Run], base_runs: list[Run], baseline: str) -> dict:
    """One-sided Welch test (method > baseline) at every step common to both grids, t and p averaged."""
    out = {"n_evals": 0, "mean_t": math.nan, "mean_p": math.nan, "note": ""}
    if not base_runs:
        return out | {"note": f"no baseline runs ('{baseline}') for this task"}
    (grid, mat), (b_grid, b_mat) = common_grid(runs), common_grid(base_runs)
    steps, ia, ib = np.intersect1d(grid, b_grid, return_indices=True)
    out["n_evals"] = int(len(steps))
    if not len(steps):
        return out | {"note": "no evaluation step common to method and baseline"}
    if len(runs) < 2 or len(base_runs) < 2:
        return out | {"note": "t-test undefined: < 2 seeds"}
    tests = [welch(mat[:, i], b_mat[:, j]) for i, j in zip(ia, ib, strict=True)]
    out.update(mean_t=float(np.mean([w.t for w in tests])), mean_p=float(np.mean([w.p_greater for w in tests])))
    if not (math.isfinite(out["mean_t"]) and math.isfinite(out["mean_p"])):
        out["note"] = "t-test undefined at some steps (zero variance?)"
    return out


def _over_evals_row(task: str, method: str | None, runs: list[Run], base_runs: list[Run], baseline: str) -> dict:
    test = _averaged_welch(runs, base_runs, baseline)
    step, mean, std = _last_common(runs)
    b_step, b_mean, b_std = _last_common(base_runs)
    return {"task": task, "method": method, "baseline": baseline, "n_seeds": len(runs),
            "n_seeds_baseline": len(base_runs), "n_evals": test["n_evals"], "mean_t": test["mean_t"],
            "mean_p": test["mean_p"], "final_step": step, "final_mean": mean, "final_std": std,
            "baseline_final_step": b_step, "baseline_final_mean": b_mean, "baseline_final_std": b_std,
            "note": test["note"]}


def welch_over_evals(groups: Groups, baseline: str = "dreamerv2") -> list[dict]:
    """One row per (task, non-baseline method): the averaged one-tailed Welch t-test vs ``baseline``, and the mean
    ± std at the last step of each side's own common grid; a task with only baseline runs gets one row saying so.

    Row keys: task, method, baseline, n_seeds, n_seeds_baseline, n_evals, mean_t, mean_p, final_step, final_mean,
    final_std, baseline_final_step, baseline_final_mean, baseline_final_std, note. Undefined quantities are NaN
    (and ``note`` says why).
    """
    rows = []
    for task in sorted({task for task, _ in groups}):
        base_runs = groups.get((task, baseline), [])
        methods = [m for t, m in groups if t == task and m != baseline]
        rows += [_over_evals_row(task, m, groups[(task, m)], base_runs, baseline) for m in methods]
        if not methods:
            rows.append(_over_evals_row(task, None, [], base_runs, baseline)
                        | {"note": "only baseline runs for this task; nothing to compare"})
    return rows


# --------------------------------------------------------------------------------------------
# Curves and bands
# --------------------------------------------------------------------------------------------


def band_stats(series: list[Series],
               bounds: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
    """Per frame of any of ``series`` (one ``(frames, values)`` pair per run): the number of runs with a value there
    (``n``), their mean and the 95% CI (Student t over those runs; NaN where n < 2), the interval clipped to
    ``bounds`` when given: with two or three seeds a t-interval reaches far outside what the quantity can be, and
    drawn unclipped it flattens every curve on the plot."""
    frames = np.unique(np.concatenate([f for f, _ in series]))
    n, mean, lo, hi = [], [], [], []
    for frame in frames:
        vals = np.array([v[f == frame][0] for f, v in series if frame in f])
        m = vals.mean()
        half = (stats.t.ppf(0.975, len(vals) - 1) * vals.std(ddof=1) / math.sqrt(len(vals))
                if len(vals) > 1 else math.nan)
        n.append(len(vals))
        mean.append(m)
        lo.append(m - half)
        hi.append(m + half)
    lo_arr, hi_arr = np.array(lo), np.array(hi)
    if bounds is not None:
        lo_arr, hi_arr = np.clip(lo_arr, *bounds), np.clip(hi_arr, *bounds)
    return {"frames": frames, "n": np.array(n), "mean": np.array(mean), "lo": lo_arr, "hi": hi_arr}


def curve_stats(runs: list[Run], task: str) -> dict[str, np.ndarray]:
    """:func:`band_stats` of the runs' evaluation returns; for a suite with bounded returns (DMC: 0..1000) the
    interval is clipped to the bounds."""
    norm = normalisation(task)
    bounds = (0.0, norm["max"]) if norm is not None and norm["suite"] == "dmc" else None
    return band_stats([(r.steps, r.returns) for r in runs], bounds)


# --------------------------------------------------------------------------------------------
# Tail means of training-log series
# --------------------------------------------------------------------------------------------


def tail_window(budget: int, fraction: float = TAIL_FRACTION) -> tuple[float, int]:
    """The frames a tail mean covers: ``[(1 - fraction) budget, budget]``, ``budget`` the task's frame budget, so
    every run of a task is summarised at the same stage of training, the one its scores are taken at (a run's own
    last frames would put a run at 3e4 frames beside one at 1e5)."""
    return (1.0 - fraction) * budget, budget


def tail_mean(frames: np.ndarray, values: np.ndarray, window: tuple[float, int]) -> float | None:
    """Mean of the values logged at frames in ``window`` (:func:`tail_window`), None when none is. The tolerance
    keeps a record exactly at the window's start inside."""
    lo, hi = window
    inside = (frames >= lo * (1.0 - 1e-12)) & (frames <= hi)
    return float(values[inside].mean()) if inside.any() else None


def _metric_cell(runs: list[Run], alternatives: tuple[str, ...], window: tuple[float, int],
                 frames: dict[str, int]) -> dict | None:
    """One metric of one group: per run its :func:`tail_mean` over ``window``, then mean, std and number over the
    runs; records in ``frames`` the last frame in the window each run logged it at. None when no run logs it
    there."""
    per_run, keys = {}, set()
    for r in runs:
        key = metric_key(r, alternatives)
        if key is None:
            continue
        steps, values = r.series[key]
        mean = tail_mean(steps, values, window)
        if mean is None:
            continue
        per_run[r.rel] = mean
        frames[r.rel] = max(frames.get(r.rel, 0), int(steps[steps <= window[1]][-1]))
        keys.add(key)
    if not per_run:
        return None
    vals = np.array(list(per_run.values()))
    return {"mean": float(vals.mean()), "std": sample_std(vals), "n": len(vals), "keys": sorted(keys),
            "runs": per_run}


def metric_table(groups: Groups, metrics: tuple[tuple[str, ...], ...], budgets: dict[str, int]) -> dict:
    """Per task and method, per metric (:func:`recipes.report.runs.metric_name`): the :func:`_metric_cell` over the
    task's :func:`tail_window` at its frame budget (``budgets``), the window, and the last frame in it each run
    logged at (``frames``). Runs logging none of ``metrics`` there are left out; a group with none is absent."""
    out: dict = {}
    for (task, method), runs in groups.items():
        frames: dict[str, int] = {}
        window = tail_window(budgets[task])
        cells = {metric_name(a): c for a in metrics if (c := _metric_cell(runs, a, window, frames)) is not None}
        if cells:
            out.setdefault(task, {})[method] = {"n": len(frames), "window": list(window), "frames": frames,
                                                "metrics": cells}
    return out
