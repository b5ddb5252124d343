"""Aggregates over tasks with rliable: which methods and tasks can be aggregated, the ``(runs, tasks)`` matrices of
normalised scores, IQM / mean / median and probability of improvement with stratified-bootstrap CIs, performance
profiles and the sample-efficiency curve.

Kept apart from :mod:`recipes.report.stats` because rliable's bootstrap draws from numpy's global RNG: every call
goes through :func:`_rliable_call`, which seeds and restores it, so the CIs are reproducible.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from rliable import library as rly
from rliable import metrics as rlm
from scipy import stats

from recipes.report.runs import Groups, Run
from recipes.report.tasks import normalisation, normalise

__all__ = ["aggregate_final", "aggregate_report", "iqm_per_frame", "performance_profiles", "sample_efficiency"]


@contextmanager
def _rliable_call(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG for one rliable call, then restore it; silence arch's deprecation warnings.

    rliable's ``StratifiedBootstrap.update_indices`` draws its resamples with ``np.random.choice`` (the global
    RNG) whatever ``random_state`` is given, so this is the only way to make the CIs reproducible. arch warns
    about arguments rliable 1.2.0 passes, which is not the user's concern.
    """
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        np.random.set_state(state)


def _interval(func: Callable[..., np.ndarray], data: dict, reps: int, seed: int) -> tuple[dict, dict]:
    """``rliable.library.get_interval_estimates`` (percentile 95% CIs), reproducibly."""
    with _rliable_call(seed):
        return rly.get_interval_estimates(data, func, reps=reps)


def _ci(point: float, ci: np.ndarray, runs: int) -> dict:
    """A point and its CI; the CI NaN (undefined) below two runs per task, as every statistic of this report: a
    bootstrap of one run per task has zero width, which would read as certainty."""
    lo, hi = (float(ci[0]), float(ci[1])) if runs >= 2 else (math.nan, math.nan)
    return {"point": float(point), "ci": [lo, hi]}


def aggregate_final(matrices: dict[str, np.ndarray], baseline: str, reps: int, seed: int) -> dict:
    """IQM, mean, median (stratified bootstrap CIs) and probability of improvement over ``baseline``."""
    metric_names = ("iqm", "mean", "median")

    def metrics(scores: np.ndarray) -> np.ndarray:
        return np.array([rlm.aggregate_iqm(scores), rlm.aggregate_mean(scores), rlm.aggregate_median(scores)])

    points, cis = _interval(metrics, matrices, reps, seed)
    out: dict = {"methods": {m: {name: _ci(points[m][i], cis[m][:, i], len(matrices[m]))
                                 for i, name in enumerate(metric_names)} for m in matrices},
                 "probability_of_improvement": {}}
    pairs = {m: [matrices[m], matrices[baseline]] for m in matrices if m != baseline} if baseline in matrices else {}
    if pairs:
        p_points, p_cis = _interval(rlm.probability_of_improvement, pairs, reps, seed)
        out["probability_of_improvement"] = {
            m: {"vs": baseline, **_ci(p_points[m], np.ravel(p_cis[m]), min(len(x) for x in pairs[m]))}
            for m in pairs}
    return out


def performance_profiles(matrices: dict[str, np.ndarray], reps: int, seed: int) -> dict:
    """Score distributions (fraction of runs with normalised score > tau) with bootstrap CIs (NaN below two runs
    per task, as :func:`_ci`)."""
    pooled = np.concatenate([m.ravel() for m in matrices.values()])
    taus = np.linspace(min(0.0, float(pooled.min())), max(1.0, float(pooled.max())), 101)
    with _rliable_call(seed):
        profiles, cis = rly.create_performance_profile(matrices, taus, reps=reps)
    cis = {m: ci if len(matrices[m]) >= 2 else np.full_like(ci, np.nan) for m, ci in cis.items()}
    return {"taus": taus, "profiles": profiles, "cis": cis}


def iqm_per_frame(scores: np.ndarray) -> np.ndarray:
    """IQM of each frame of a ``(runs, tasks, frames)`` array: ``rliable.metrics.aggregate_iqm(scores[..., j])``
    for every ``j``, in one call.

    ``aggregate_iqm`` is ``scipy.stats.trim_mean(., 0.25, axis=None)`` of the ``(runs, tasks)`` matrix and has no
    axis argument; calling it per frame per bootstrap replication (~1 ms a call) made the sample-efficiency curve
    the slowest part of the report.
    """
    return stats.trim_mean(scores.reshape(-1, scores.shape[-1]), 0.25, axis=0)


def _frame_blocks(per_task: list[list[Run]], evals: dict[str, dict[int, float]]) -> list[tuple[tuple, list[int]]]:
    """The common evaluation frames, grouped into runs of consecutive frames with the same runs per task:
    ``(runs chosen per task, their frames)``; at each frame the runs that have it, the same number per task."""
    grid = sorted(set.intersection(*({f for r in runs for f in evals[r.rel]} for runs in per_task)))
    blocks: list[tuple[tuple, list[int]]] = []
    for frame in grid:
        avail = [[r.rel for r in runs if frame in evals[r.rel]] for runs in per_task]
        n = min(len(a) for a in avail)
        if n == 0:
            continue
        key = tuple(tuple(a[:n]) for a in avail)
        if blocks and blocks[-1][0] == key:
            blocks[-1][1].append(frame)
        else:
            blocks.append((key, [frame]))
    return blocks


def sample_efficiency(per_method: dict[str, list[list[Run]]], tasks: list[str], reps: int, seed: int) -> dict:
    """IQM (with CI) of the normalised evaluation return at each frame of the common evaluation grid.

    At each frame each task contributes the runs that have that evaluation, the same number on every task.
    Consecutive frames with the same runs form one ``(runs, tasks, frames)`` block and one bootstrap: runs are
    resampled once per replication for all the block's frames, as in rliable's own sample-efficiency examples.
    """
    out: dict = {}
    for method, per_task in per_method.items():
        evals = {r.rel: dict(zip(r.steps.tolist(), r.returns.tolist(), strict=True))
                 for runs in per_task for r in runs}
        curve: dict = {"frames": [], "iqm": [], "ci_low": [], "ci_high": [], "runs_per_task": []}
        for key, frames in _frame_blocks(per_task, evals):
            scores = np.stack(
                [np.array([normalise(task, [evals[rel][f] for f in frames]) for rel in rels])
                 for task, rels in zip(tasks, key, strict=True)],
                axis=1,
            )  # (runs, tasks, frames)
            points, cis = _interval(iqm_per_frame, {method: scores}, reps, seed)
            curve["frames"] += frames
            curve["iqm"] += points[method].tolist()
            ci = cis[method] if len(key[0]) >= 2 else np.full_like(cis[method], np.nan)  # as _ci
            curve["ci_low"] += ci[0].tolist()
            curve["ci_high"] += ci[1].tolist()
            curve["runs_per_task"] += [len(key[0])] * len(frames)
        out[method] = curve
    return out


# --------------------------------------------------------------------------------------------
# Which runs aggregate
# --------------------------------------------------------------------------------------------


def _rectangular(per_task: list[list[Run]]) -> tuple[list[list[Run]], list[Run]]:
    """Same number of runs on every task (rliable's matrix): the smallest count, lowest seeds first."""
    n = min(len(runs) for runs in per_task)
    kept = [runs[:n] for runs in per_task]
    dropped = [r for runs in per_task for r in runs[n:]]
    return kept, dropped


def _matrices(per_method: dict[str, list[list[Run]]], tasks: list[str],
              scores: dict[str, float | None]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(runs, tasks)`` normalised score matrices; a method with a run lacking the score (an AUC with no
    evaluation in range) is excluded, with why: rliable's matrices cannot have holes."""
    matrices, excluded = {}, {}
    for method, per_task_runs in per_method.items():
        missing = [r.rel for rs in per_task_runs for r in rs if scores[r.rel] is None]
        if missing:
            excluded[method] = f"no evaluation in (0, frame budget] for {', '.join(missing)}"
            continue
        matrices[method] = np.stack([normalise(t, np.array([scores[r.rel] for r in rs]))
                                     for t, rs in zip(tasks, per_task_runs, strict=True)], axis=1)
    return matrices, excluded


def _aggregated_runs(groups: Groups, methods: list[str],
                     agg_tasks: list[str]) -> tuple[dict[str, list[list[Run]]], dict[str, str], dict[str, list[str]]]:
    """Per method with runs on every task of ``agg_tasks``, its runs per task (same number on each); the methods
    left out, and why; the runs dropped to keep the same number per task."""
    excluded, per_method, dropped = {}, {}, {}
    for method in methods:
        missing = [t for t in agg_tasks if (t, method) not in groups]
        if missing:
            excluded[method] = f"no scored run on {', '.join(missing)}"
        elif agg_tasks:
            per_method[method], drop = _rectangular([groups[(t, method)] for t in agg_tasks])
            if drop:
                dropped[method] = [r.rel for r in drop]
    return per_method, excluded, dropped


def _profile_payload(prof: dict, methods: dict) -> dict:
    return {"taus": prof["taus"].tolist(),
            **{m: {"profile": prof["profiles"][m].tolist(), "ci_low": prof["cis"][m][0].tolist(),
                   "ci_high": prof["cis"][m][1].tolist()} for m in methods}}


def aggregate_report(groups: Groups, methods: list[str], finals: dict[str, float], aucs: dict[str, float | None],
                     baseline: str, reps: int, seed: int) -> tuple[dict, dict, dict | None]:
    """The rliable part: which tasks and methods aggregate, the matrices, IQM / mean / median / probability of
    improvement of the final scores and (``auc``) of the AUCs, performance profiles and the sample-efficiency curve.
    Returns (aggregate payload, final-score matrices, performance profiles or None)."""
    tasks = sorted({t for t, _ in groups})
    agg_tasks = [t for t in tasks if normalisation(t) is not None]
    per_method, excluded_methods, dropped = _aggregated_runs(groups, methods, agg_tasks)
    matrices, _ = _matrices(per_method, agg_tasks, finals)
    auc_matrices, auc_excluded = _matrices(per_method, agg_tasks, aucs)
    aggregate: dict = {
        "tasks": agg_tasks, "excluded_methods": excluded_methods,
        "excluded_tasks": {t: "no normalisation reference (not DMC, or an Atari game missing from the table)"
                           for t in tasks if t not in agg_tasks},
        "runs_per_task": {m: int(x.shape[0]) for m, x in matrices.items()}, "dropped_runs": dropped,
        "matrices": {m: x.tolist() for m, x in matrices.items()}, "methods": {}, "probability_of_improvement": {},
        "performance_profile": None, "sample_efficiency": {},
        "auc": {"matrices": {m: x.tolist() for m, x in auc_matrices.items()}, "excluded_methods": auc_excluded,
                "methods": {}, "probability_of_improvement": {}},
    }
    if not matrices:
        return aggregate, matrices, None
    aggregate.update(aggregate_final(matrices, baseline, reps, seed))
    if auc_matrices:
        aggregate["auc"].update(aggregate_final(auc_matrices, baseline, reps, seed))
    prof = performance_profiles(matrices, reps, seed)
    aggregate["performance_profile"] = _profile_payload(prof, matrices)
    aggregate["sample_efficiency"] = sample_efficiency(per_method, agg_tasks, reps, seed)
    return aggregate, matrices, prof
