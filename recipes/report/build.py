"""Assembling the sweep report: find the runs, score them at each task's frame budget, compute the per-task
tables, the aggregates and the training-log tables, draw the figures, and write ``report.json`` (every number)
and ``report.md`` (rendered from that JSON, so the two cannot disagree).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from recipes.report import figures
from recipes.report.aggregates import aggregate_report
from recipes.report.contrasts import flag_weights, grid_contrasts
from recipes.report.markdown import render_markdown
from recipes.report.runs import (
    DIAGNOSTIC_METRICS,
    WEIGHT_METRICS,
    Groups,
    ReportError,
    Run,
    discover,
    group_runs,
    is_weighted,
    metric_key,
    metric_name,
)
from recipes.report.stats import (
    TAIL_FRACTION,
    auc_score,
    final_score,
    frame_budgets,
    metric_table,
    sample_std,
    scored,
    welch_over_evals,
    welch_rows,
)
from recipes.report.tasks import anchors_for, normalisation, normalise

__all__ = ["build_report", "json_safe", "per_task_table", "training_log_report"]


def json_safe(obj: object) -> object:
    """``obj`` with non-finite floats as None and numpy scalars as Python numbers: strict JSON, which
    ``json.dumps`` alone would not write (it writes ``NaN``)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    return obj


def _discover_or_fail(sweep: Path, out: Path) -> dict:
    """:func:`recipes.report.runs.discover`, raising :class:`ReportError` when there is nothing to report on."""
    if not sweep.exists():
        raise ReportError(f"{sweep}: no such directory")
    if not sweep.is_dir():
        raise ReportError(f"{sweep}: not a directory")
    found = discover(sweep, skip=out.resolve() if out.resolve().is_relative_to(sweep.resolve()) else None)
    if not found["runs"]:
        n_leaves = len(found["no_eval"]) + len(found["skipped"])
        if not n_leaves:
            raise ReportError(f"{sweep}: no run directory (config.json with task and method) found")
        raise ReportError(f"{sweep}: no run with an evaluation found ({n_leaves} run directories, none evaluated "
                          "or readable yet)")
    return found


def _rules(last_k: int, frames: int | None) -> dict[str, str]:
    return {
        "frame_budget": "per task, the largest frame count every scored run of the task reached "
                        "(min over runs of the last evaluation step)" if frames is None else
                        f"{frames} frames for every task (--frames): the runs short of it are not scored; the "
                        "curves and the training-log figures show every run",
        "final_score": f"mean of the last {last_k} evaluation return(s) at or below the task's frame budget",
        "auc": "area under the curve: mean of the evaluation returns at frames in (0, frame budget], step 0 "
               "(untrained policy) excluded; None if there is none",
        "normalisation": "DMC return/1000; Atari (return - random)/(human - random), DQN Zoo table",
        "aggregates": "rliable stratified bootstrap, percentile 95% CI; methods with runs on every "
                      "normalisable task; same runs per task (smallest count, lowest seeds)",
        "welch": "scipy.stats.ttest_ind(equal_var=False) of final scores (welch) and AUCs (welch_auc), method vs "
                 "baseline, per task",
        "tail_mean": f"per scored run, mean of the records at frames in [{1 - TAIL_FRACTION:g} x B, B], B its "
                     "task's frame budget (the frames its scores are at); then mean and std over runs",
        "anchors": "published returns (mean, std over seeds), x in environment frames (agent steps x action repeat)",
        "std": "sample std (ddof=1)",
    }


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _with(groups: Groups, keep: Callable[[Run], bool]) -> Groups:
    """``groups`` restricted to the runs ``keep`` accepts; groups left empty are dropped."""
    kept = {k: [r for r in rs if keep(r)] for k, rs in groups.items()}
    return {k: rs for k, rs in kept.items() if rs}


def training_log_report(groups: Groups, every_group: Groups, budgets: dict[str, int], colors: dict, baseline: str,
                        out: Path) -> tuple[dict, dict]:
    """The weight statistics of the weighted runs and the world-model diagnostics: tables of the scored runs
    (``groups``) at their tasks' frame budgets, so that a run still on its way is not averaged with finished ones,
    and ``weights.png`` / ``diagnostics.png`` of every run (``every_group``) when there is something to draw.
    Returns (payload part, files)."""
    weight_metrics = tuple((k,) for k in WEIGHT_METRICS)
    logs_diag = lambda r: any(metric_key(r, a) for a in DIAGNOSTIC_METRICS)  # noqa: E731
    files = {}
    if weighted := _with(every_group, is_weighted):
        files["weights"] = "weights.png"
        figures.plot_metric_grid(weighted, weight_metrics, colors, baseline, out / files["weights"],
                                 "What the weighter learned: mean and 95% CI over seeds (weighted runs)")
    if diagnosed := _with(every_group, logs_diag):
        files["diagnostics"] = "diagnostics.png"
        figures.plot_metric_grid(diagnosed, DIAGNOSTIC_METRICS, colors, baseline, out / files["diagnostics"],
                                 "World model and agent (unweighted): mean and 95% CI over seeds")
    part = {"tail_fraction": TAIL_FRACTION,
            "weights": {"metrics": list(WEIGHT_METRICS),
                        "tasks": metric_table(_with(groups, is_weighted), weight_metrics, budgets)},
            "diagnostics": {"metrics": [metric_name(a) for a in DIAGNOSTIC_METRICS],
                            "tasks": metric_table(_with(groups, logs_diag), DIAGNOSTIC_METRICS, budgets)}}
    return part, files


def _score_entry(task: str, runs: list[Run], scores: dict[str, float | None], name: str, norm_key: str) -> dict:
    """One score of one (task, method): per run (None: no score), mean and std over the scored runs, and the
    scored runs' normalised scores (``norm_key``; None for a task with no normalisation)."""
    values = scored(runs, scores)
    norm = normalise(task, values)
    return {name: [scores[r.rel] for r in runs], f"{name}_mean": float(values.mean()) if len(values) else math.nan,
            f"{name}_std": sample_std(values), norm_key: None if norm is None else norm.tolist()}


def _method_entry(task: str, runs: list[Run], budget: int, finals: dict[str, float],
                  aucs: dict[str, float | None]) -> dict:
    return {"n": len(runs), "seeds": [r.seed for r in runs], "runs": [r.rel for r in runs],
            **_score_entry(task, runs, finals, "final", "normalised"),
            **_score_entry(task, runs, aucs, "auc", "auc_normalised"),
            "auc_evals": [int(((r.steps > 0) & (r.steps <= budget)).sum()) for r in runs],
            "unfinished": [r.rel for r in runs if r.finished is False]}


def per_task_table(groups: Groups, budgets: dict[str, int], finals: dict[str, float],
                   aucs: dict[str, float | None]) -> dict:
    """Per task: normalisation, frame budget (and the runs that set it below the others), and per method the
    final scores and AUCs of its runs."""
    per_task: dict = {}
    for task in sorted({t for t, _ in groups}):
        in_task = [r for (t, _), rs in groups.items() if t == task for r in rs]
        top = max(r.frames_reached for r in in_task)
        per_task[task] = {"normalisation": normalisation(task), "frame_budget": budgets[task],
                          "budget_limited_by": [r.rel for r in in_task if r.frames_reached == budgets[task]]
                          if budgets[task] < top else [],
                          "methods": {method: _method_entry(task, rs, budgets[task], finals, aucs)
                                      for (t, method), rs in groups.items() if t == task}}
    return per_task


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def _run_entry(r: Run, finals: dict[str, float], aucs: dict[str, float | None]) -> dict:
    return {"path": r.rel, "task": r.task, "method": r.method, "config_method": r.config_method, "seed": r.seed,
            "frames_reached": r.frames_reached, "target_frames": r.target_frames, "finished": r.finished,
            "n_evals": len(r.steps), "final": finals[r.rel], "auc": aucs[r.rel], "weighted": is_weighted(r),
            "evaluations": [[int(f), float(x)] for f, x in zip(r.steps, r.returns, strict=True)]}


def _at_frames(runs: list[Run], frames: int | None) -> tuple[list[Run], list[Run]]:
    """(the runs scored, the runs short of ``frames``); every run when ``frames`` is None."""
    if frames is None:
        return runs, []
    scored_runs = [r for r in runs if r.frames_reached >= frames]
    if not scored_runs:
        raise ReportError(f"--frames {frames}: no run has an evaluation at or past it (the furthest is at "
                          f"{max(r.frames_reached for r in runs):,} frames)")
    return scored_runs, [r for r in runs if r.frames_reached < frames]


def build_report(sweep: Path, out: Path, baseline: str = "dreamerv2", reps: int = 2000, seed: int = 0,
                 last_k: int = 1, frames: int | None = None) -> dict:
    """Compute everything, write the figures, ``report.json`` and ``report.md``; return the JSON payload.

    ``frames``: score every task at this frame count, leaving out the runs short of it (a campaign's endpoint,
    e.g. 1e5, while other runs are still on their way); None: each task at the frames all its runs reached."""
    found = _discover_or_fail(sweep, out)
    every_run = found["runs"]
    runs, short = _at_frames(every_run, frames)
    out.mkdir(parents=True, exist_ok=True)

    groups, every_group = group_runs(runs), group_runs(every_run)
    all_tasks = sorted({t for t, _ in every_group})

    def baseline_first(labels: set[str]) -> list[str]:  # the same order, so the same colours, scored or not
        return sorted(labels, key=lambda m: (m != baseline, m))

    colors = figures.method_colors(baseline_first({m for _, m in every_group}))
    methods = baseline_first({m for _, m in groups})
    budgets = frame_budgets(runs) if frames is None else {t: frames for t in all_tasks}
    finals = {r.rel: final_score(r, budgets[r.task], last_k) for r in runs}
    aucs = {r.rel: auc_score(r, budgets[r.task]) for r in runs}
    anchors = anchors_for(all_tasks)

    aggregate, matrices, prof = aggregate_report(groups, methods, finals, aucs, baseline, reps, seed)
    files = {"curves": "curves.png"}
    figures.plot_task_curves(every_group, budgets, colors, baseline, out / files["curves"], anchors)
    if matrices:
        files.update(figures.aggregate_figures(aggregate, prof, colors, out))
    logs, log_files = training_log_report(groups, every_group, budgets, colors, baseline, out)
    files.update(log_files)

    baseline_present = any(m == baseline for _, m in groups)
    payload = {
        "sweep": str(sweep), "generated": time.strftime("%Y-%m-%dT%H:%M:%S"), "baseline": baseline,
        "baseline_present": baseline_present, "last_k": last_k, "reps": reps, "seed": seed, "frames": frames,
        "rules": _rules(last_k, frames), "runs": [_run_entry(r, finals, aucs) for r in runs],
        "short_of_frames": [_run_entry(r, {r.rel: None}, {r.rel: None}) for r in short],
        "unfinished": [r.rel for r in runs if r.finished is False],
        "no_evaluation": found["no_eval"], "skipped": found["skipped"], "warnings": found["warnings"],
        "tasks": per_task_table(groups, budgets, finals, aucs), "aggregate": aggregate,
        "welch": welch_rows(groups, finals, baseline), "welch_auc": welch_rows(groups, aucs, baseline),
        "welch_over_evals": welch_over_evals(groups, baseline) if baseline_present else [],
        "contrasts": {"final": grid_contrasts(groups, finals, baseline, reps, seed),
                      "auc": grid_contrasts(groups, aucs, baseline, reps, seed),
                      "flag_weights": flag_weights(groups, budgets)},
        "anchors": anchors, **logs,
        "files": files | {"markdown": "report.md", "json": "report.json"},
    }
    payload = json_safe(payload)
    (out / "report.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "report.md").write_text(render_markdown(payload))
    return payload
