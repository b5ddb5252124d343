"""A designed experiment's questions in numbers: contrasts between the grid points of a sweep run with ``--grid``.

A grid sweep labels its runs ``<method>/<field>=<value>[,...]`` (:func:`recipes.report.runs.method_label`), so the
per-task tables compare every label with the one baseline label and miss the design. Here each method is compared
with the baseline *at the same grid point* (its **gain**), and the gains at two points with each other (the
**interaction**: e.g. is TEMPO's gain over DreamerV2 larger with intermittent distractors than with constant
ones?). Both come with a percentile bootstrap 95% CI that resamples the seeds of every group independently (the
groups are independent runs), and the gain with Welch's test. A boolean flag the runs log as ``wm/weight_<flag>``
(the mean weight where the flag is set over the batch mean, e.g. ``wm/weight_distractor_on``) gets its tail mean
per group with a t-interval and a one-sample t-test against 1 (no preference).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import stats

from recipes.report.runs import FLAG_WEIGHT_METRICS, Groups, Run
from recipes.report.stats import sample_std, scored, tail_mean, tail_window, welch

__all__ = ["bootstrap_ci", "flag_weights", "grid_contrasts", "split_label"]

def split_label(label: str) -> tuple[str, str | None]:
    """``'tempo/env.distractors.mode=none'`` -> ``('tempo', 'env.distractors.mode=none')``; a label without a
    grid point (no ``=`` after its first ``/``) -> ``(label, None)``."""
    method, sep, point = label.partition("/")
    return (method, point) if sep and "=" in point else (label, None)


def bootstrap_ci(samples: list[np.ndarray], signs: list[float], reps: int, seed: int) -> tuple[float, float]:
    """Percentile 95% CI of ``Σ_i signs[i] · mean(samples[i])``, every sample resampled with replacement on its own
    (independent groups of seeds); NaN when a sample has fewer than two values."""
    if any(len(s) < 2 for s in samples):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    stat = np.zeros(reps)
    for s, sign in zip(samples, signs, strict=True):
        stat += sign * s[rng.integers(0, len(s), size=(reps, len(s)))].mean(1)
    lo, hi = np.percentile(stat, [2.5, 97.5])
    return float(lo), float(hi)


def _grid(groups: Groups) -> dict[str, dict[str, dict[str, list[Run]]]]:
    """task -> point -> method -> runs, for the labels with a grid point."""
    out: dict = {}
    for (task, label), runs in groups.items():
        method, point = split_label(label)
        if point is not None:
            out.setdefault(task, {}).setdefault(point, {})[method] = runs
    return out


def grid_contrasts(groups: Groups, scores: dict[str, float | None], baseline: str, reps: int = 2000,
                   seed: int = 0) -> dict:
    """Per task: every method's gain over ``baseline`` at each grid point (mean difference of ``scores``, keyed by
    run ``rel``; bootstrap CI; Welch t and two-sided p), and for every pair of points the difference of the gains
    (point a minus point b; bootstrap CI). Empty lists for a sweep without a grid or without baseline runs."""
    gains, interactions = [], []
    for task, points in sorted(_grid(groups).items()):
        samples = {(p, m): scored(runs, scores) for p, ms in points.items() for m, runs in ms.items()}
        methods = sorted({m for _, m in samples} - {baseline})
        for point, method in itertools.product(sorted(points), methods):
            a, b = samples.get((point, method)), samples.get((point, baseline))
            if a is None or b is None or not len(a) or not len(b):
                continue
            test = welch(a, b)
            gains.append({"task": task, "point": point, "method": method, "baseline": baseline, "n": len(a),
                          "n_baseline": len(b), "gain": float(a.mean() - b.mean()),
                          "ci": bootstrap_ci([a, b], [1.0, -1.0], reps, seed), "t": test.t,
                          "p_two_sided": test.p_two_sided})
        for method, (pa, pb) in itertools.product(methods, itertools.combinations(sorted(points), 2)):
            parts = [samples.get(k) for k in ((pa, method), (pa, baseline), (pb, method), (pb, baseline))]
            if any(s is None or not len(s) for s in parts):
                continue
            point = float(parts[0].mean() - parts[1].mean() - parts[2].mean() + parts[3].mean())
            interactions.append({"task": task, "method": method, "baseline": baseline, "point_a": pa, "point_b": pb,
                                 "n": [len(s) for s in parts], "difference": point,
                                 "ci": bootstrap_ci(parts, [1.0, -1.0, -1.0, 1.0], reps, seed)})
    return {"gains": gains, "interactions": interactions}


def flag_weights(groups: Groups, budgets: dict[str, int],
                 metrics: tuple[str, ...] = FLAG_WEIGHT_METRICS) -> list[dict]:
    """Per task, label and flag metric logged: the runs' tail means over the task's window at its frame budget
    (:func:`tail_window`), their mean, 95% t-interval, and a one-sample t-test against 1 (the weights do not single
    out flagged steps)."""
    rows = []
    for (task, label), runs in sorted(groups.items()):
        window = tail_window(budgets[task])
        for key in metrics:
            tails = [tail_mean(*r.series[key], window) for r in runs if key in r.series]
            per = np.array([t for t in tails if t is not None])
            if not len(per):
                continue
            n, mean = len(per), float(per.mean())
            half = float(stats.t.ppf(0.975, n - 1) * per.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
            p = float(stats.ttest_1samp(per, 1.0).pvalue) if n > 1 and per.std() > 0 else math.nan
            rows.append({"task": task, "method": label, "metric": key, "n": n, "mean": mean, "std": sample_std(per),
                         "ci": (mean - half, mean + half), "p_vs_1": p})
    return rows
