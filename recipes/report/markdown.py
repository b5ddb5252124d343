"""``report.md``, rendered from the ``report.json`` payload alone (so the two cannot disagree): one section per
part of the payload, each a short function returning its lines.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["fmt", "render_markdown"]


def fmt(x: float | None, spec: str = ".3f", missing: str = "n/a") -> str:
    """``x`` formatted with ``spec``; ``missing`` for None or a non-finite float (an undefined statistic)."""
    return missing if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _ci(d: dict | None) -> str:
    return "n/a" if not d else f"{fmt(d['point'])} [{fmt(d['ci'][0])}, {fmt(d['ci'][1])}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]


def _md_runs(p: dict) -> list[str]:
    md = ["## Runs", "", f"{len(p['runs'])} scored run(s)."]
    if p["short_of_frames"]:
        md += ["", f"Short of `--frames` {p['frames']:,}, not scored (their evaluations are below, the curves show "
                   f"them): {len(p['short_of_frames'])}"]
        md += [f"- `{r['path']}`: {r['frames_reached']:,} frames" for r in p["short_of_frames"]]
    if p["unfinished"]:
        md += ["", f"Unfinished (frames reached < `run.steps`), used up to the frame budget: {len(p['unfinished'])}"]
        md += [f"- `{r['path']}`: {r['frames_reached']:,} / {r['target_frames']:,} frames"
               for r in p["runs"] if r["finished"] is False]
    if p["no_evaluation"]:
        md += ["", f"No evaluation yet (excluded): {len(p['no_evaluation'])}"] + [f"- `{x}`" for x in
                                                                                 p["no_evaluation"]]
    if p["skipped"]:
        md += ["", "Unreadable (excluded):"] + [f"- `{s['path']}`: {s['reason']}" for s in p["skipped"]]
    if p["warnings"]:
        md += ["", f"Loader warnings: {len(p['warnings'])} (e.g. `{p['warnings'][0]}`)"]
    md += ["", "Every evaluation of every run (frames: mean return), the ones past a task's frame budget too:", ""]
    rows = [[f"`{r['path']}`", f"{r['frames_reached']:,}" + ("" if r["finished"] is not False else
                                                             f" / {r['target_frames']:,}"),
             ", ".join(f"{_frames(f)}: {_return(x)}" for f, x in r["evaluations"])]
            for r in sorted(p["runs"] + p["short_of_frames"],
                            key=lambda r: (r["task"], r["method"], str(r["seed"]).zfill(9)))]
    return md + _table(["run", "last evaluation (frames)", "evaluations"], rows)


def _frames(f: int) -> str:
    """10000 -> '10k', 2500 -> '2.5k': the evaluation frames of a row, short."""
    return f"{f / 1000:g}k" if f >= 1000 else str(f)


def _return(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}"


def _md_per_task(p: dict) -> list[str]:
    md = ["## Per task", "", "Final return at the task's frame budget, mean ± std over seeds.", ""]
    rows = []
    for task, t in p["tasks"].items():
        for method, m in t["methods"].items():
            norm = m["normalised"]
            rows.append([task, method, str(m["n"]), f"{fmt(m['final_mean'], '.1f')} ± {fmt(m['final_std'], '.1f')}",
                         "n/a" if norm is None else fmt(float(np.mean(norm))), f"{t['frame_budget']:,}",
                         str(len(m["unfinished"]))])
    md += _table(["task", "method", "n seeds", "final return", "normalised mean", "frames used", "unfinished"],
                 rows)
    limited = {task: t["budget_limited_by"] for task, t in p["tasks"].items() if t["budget_limited_by"]}
    if limited:
        md += ["", "Budgets lowered by: " + "; ".join(f"{task}: " + ", ".join(f"`{x}`" for x in v)
                                                     for task, v in limited.items())]
    return md


def _md_aggregate_table(part: dict, base: str) -> list[str]:
    """IQM / mean / median and probability of improvement of one score (``part``: final or ``auc``)."""
    rows = [[m, _ci(a["iqm"]), _ci(a["mean"]), _ci(a["median"]),
             _ci(part["probability_of_improvement"].get(m)) if m != base else "(baseline)"]
            for m, a in part["methods"].items()]
    return _table(["method", "IQM [95% CI]", "mean [95% CI]", "median [95% CI]",
                   f"P(improvement over {base}) [95% CI]"], rows)


def _md_aggregates(p: dict) -> list[str]:
    agg, base = p["aggregate"], p["baseline"]
    md = ["## Aggregates over tasks (rliable)", ""]
    if not agg["methods"]:
        md += ["Nothing to aggregate (no method with runs on every normalisable task)."]
    else:
        md += [f"Tasks: {', '.join(agg['tasks'])}; normalised scores ({p['rules']['normalisation']}); "
               f"95% stratified-bootstrap CIs (n/a with one run per task). Runs per task: "
               + ", ".join(f"{m} {n}" for m, n in agg["runs_per_task"].items()) + ".", ""]
        md += _md_aggregate_table(agg, base)
    notes = [f"- `{m}` not aggregated: {why}" for m, why in agg["excluded_methods"].items()]
    notes += [f"- task `{t}` not aggregated: {why}" for t, why in agg["excluded_tasks"].items()]
    notes += [f"- `{m}`: left out of the aggregates to keep the same runs per task: "
              + ", ".join(f"`{x}`" for x in rels) for m, rels in agg["dropped_runs"].items()]
    return md + ([""] + notes if notes else [])


def _md_welch(rows: list[dict], base: str) -> list[str]:
    if not rows:
        return ["No comparison (baseline absent, or no other method on its tasks)."]
    return _table(["task", "method", "n", f"n {base}", "mean", f"mean {base}", "t", "p (two-sided)",
                   "p (one-sided)", "detectable (80% power)", "note"],
                  [[w["task"], w["method"], str(w["n"]), str(w["n_baseline"]), fmt(w["mean"], ".1f"),
                    fmt(w["baseline_mean"], ".1f"), fmt(w["t"]), fmt(w["p_two_sided"], ".4f"),
                    fmt(w["p_greater"], ".4f"), fmt(w["detectable"], ".1f"), w["note"]] for w in rows])


def _md_auc(p: dict) -> list[str]:
    auc, base = p["aggregate"]["auc"], p["baseline"]
    md = ["## Area under the curve (sample efficiency)", "",
          "A run's AUC is the mean of its evaluation returns at frames in (0, frame budget]: every evaluation up to "
          "the budget counts equally, the step-0 evaluation (the untrained policy) does not. Mean ± std over "
          "seeds; `evals`: evaluations averaged per run.", ""]
    rows = []
    for task, t in p["tasks"].items():
        for method, m in t["methods"].items():
            norm = m["auc_normalised"]
            rows.append([task, method, str(sum(a is not None for a in m["auc"])),
                         f"{fmt(m['auc_mean'], '.1f')} ± {fmt(m['auc_std'], '.1f')}",
                         "n/a" if not norm else fmt(float(np.mean(norm))),
                         ", ".join(str(k) for k in sorted(set(m["auc_evals"])))])
    md += _table(["task", "method", "n seeds", "AUC return", "normalised mean", "evals"], rows)
    md += ["", "Aggregates (rliable, same runs and tasks as the final scores):", ""]
    md += _md_aggregate_table(auc, base) if auc["methods"] else ["Nothing to aggregate."]
    md += [f"- `{m}` not aggregated: {why}" for m, why in auc["excluded_methods"].items()]
    md += ["", f"Welch t-test of the AUCs, method vs `{base}` (p one-sided: method > baseline):", ""]
    return md + _md_welch(p["welch_auc"], base)


def _md_anchors(p: dict) -> list[str]:
    md = ["## Published returns for scale", ""]
    if not p["anchors"]:
        return md + ["None for these tasks."]
    md += ["Drawn on the per-task curves (`curves.png`) at their frame counts, ±1 std over their seeds. x is in "
           "environment frames (agent steps × action repeat 2) in both sources: their loggers multiply the agent "
           "step by the action repeat (`recipes/report/tasks.py`, comment above `ANCHORS`). DreamerV3's returns are of "
           "training episodes, DreamerV2's of evaluation episodes, on pixels; DreamerV2's file gives a point "
           "every 3e4 frames, so 9e4 stands in for 1e5.", ""]
    rows = [[task, a["label"], f"{a['frames']:,}", f"{fmt(a['mean'], '.1f')} ± {fmt(a['std'], '.1f')}", a["source"]]
            for task, anchors in p["anchors"].items() for a in anchors]
    return md + _table(["task", "reference", "frames", "return", "source"], rows)


def _md_metric_table(part: dict) -> list[str]:
    """Tail means per task and method: ``mean ± std`` over the runs, ``(n=k)`` where fewer runs log it."""
    rows = []
    for task, methods in part["tasks"].items():
        for method, g in methods.items():
            cells = []
            for name in part["metrics"]:
                c = g["metrics"].get(name)
                cells.append("n/a" if c is None else f"{fmt(c['mean'])} ± {fmt(c['std'])}"
                             + (f" (n={c['n']})" if c["n"] < g["n"] else ""))
            lo, hi = g["window"]
            rows.append([task, method, str(g["n"]), f"{math.ceil(lo):,}–{hi:,}", *cells])
    return _table(["task", "method", "n seeds", "window (frames)", *(f"`{m}`" for m in part["metrics"])], rows)


def _md_contrasts(p: dict) -> list[str]:
    """The grid sweep's contrasts (`recipes.report.contrasts`); nothing for a sweep without a grid."""
    c = p["contrasts"]
    if not (c["final"]["gains"] or c["flag_weights"]):
        return []
    ci = lambda v: f"[{fmt(v[0], '.1f')}, {fmt(v[1], '.1f')}]"  # noqa: E731
    md = ["## Grid contrasts", "",
          "Each method against the baseline **at the same grid point** (gain = mean score minus the baseline's mean "
          "score), and the gains at two grid points against each other (interaction = gain at a minus gain at b). "
          "95% CIs: percentile bootstrap resampling each group's seeds independently; Welch for the gains.", ""]
    for score, name in (("auc", "AUC"), ("final", "final return")):
        gains, inter = c[score]["gains"], c[score]["interactions"]
        if gains:
            md += [f"Gain in {name}:", ""]
            md += _table(["task", "grid point", "method", "n / n base", "gain", "95% CI", "Welch p"],
                         [[g["task"], f"`{g['point']}`", g["method"], f"{g['n']} / {g['n_baseline']}",
                           fmt(g["gain"], ".1f"), ci(g["ci"]), fmt(g["p_two_sided"])] for g in gains]) + [""]
        if inter:
            md += [f"Interaction in {name} (gain at a − gain at b):", ""]
            md += _table(["task", "method", "a", "b", "difference", "95% CI"],
                         [[r["task"], r["method"], f"`{r['point_a']}`", f"`{r['point_b']}`",
                           fmt(r["difference"], ".1f"), ci(r["ci"])] for r in inter]) + [""]
    if c["flag_weights"]:
        md += [f"Mean weight where a flag is set, over the batch mean (1 = no preference): mean over the last "
               f"{p['tail_fraction']:.0%} of the frames up to the task's frame budget, then over seeds, with a 95% "
               "t-interval and a one-sample t-test against 1.", ""]
        md += _table(["task", "method", "metric", "n", "mean", "95% CI", "p (≠ 1)"],
                     [[r["task"], r["method"], f"`{r['metric']}`", str(r["n"]), fmt(r["mean"]),
                       f"[{fmt(r['ci'][0])}, {fmt(r['ci'][1])}]", fmt(r["p_vs_1"])] for r in c["flag_weights"]])
    return md


def _md_training_logs(p: dict) -> list[str]:
    tail = (f"the last {p['tail_fraction']:.0%} of the frames up to the task's frame budget (`window`; the scored "
            "runs only, every run is in the figures)")
    md = ["## What the weighter learned", ""]
    if not p["weights"]["tasks"]:
        md += ["No weighted run among the scored runs (no `wm/weight_*` statistic in the window, or uniform weights "
               "only)" + ("." if "weights" in p["files"] else ": no `weights.png`.")]
    else:
        md += ["Weighted runs only. Correlations of the sample weights with the per-sample upper loss, the reward "
               "and the step's index in its episode; mean weight at episode starts and chunk starts over the batch "
               f"mean (1 = no preference). Mean over {tail}, then mean ± std over seeds. Curves: `weights.png`.",
               ""]
        md += _md_metric_table(p["weights"])
    md += ["", "## World model and agent diagnostics", ""]
    if not p["diagnostics"]["tasks"]:
        return md + ["No run logs these statistics (older runs): no `diagnostics.png`."]
    md += [f"Unweighted world-model losses and entropies, imagined return and actor entropy; mean over {tail}, "
           "then mean ± std over seeds. Curves: `diagnostics.png`.", ""]
    return md + _md_metric_table(p["diagnostics"])


def _baseline_note(p: dict) -> str:
    """A grid sweep's labels carry their grid point, so the bare baseline label is absent there, yet each method
    is compared with the baseline at its own grid point."""
    if p["baseline_present"]:
        return ""
    if p["contrasts"]["final"]["gains"]:
        return " (its runs carry grid points: compared at each point, see Grid contrasts)"
    return " (**absent**: no comparison)"


def render_markdown(p: dict) -> str:
    """``report.md`` from the JSON payload (so the two cannot disagree)."""
    base = p["baseline"]
    evals = "evaluation return" if p["last_k"] == 1 else f"mean of the last {p['last_k']} evaluation returns"
    md = [f"# Sweep report: `{p['sweep']}`", "",
          f"Generated {p['generated']}. Baseline `{base}`"
          + _baseline_note(p)
          + f". A run's final score is its {evals} at its task's **frame budget**: "
          + ("the largest frame count that every run of the task has reached, so a still-running sweep is compared "
             "fairly. " if p["frames"] is None else
             f"{p['frames']:,} frames for every task (`--frames`): the runs short of it are not scored. ")
          + "Its area under the "
          "curve (AUC) is the mean of its evaluation returns after step 0 up to that budget. An evaluation up to 1% of "
          "`run.eval_every` late (a run resumed by code before 2e4e862) counts at the frame it was due. "
          f"Bootstrap: {p['reps']} replications, seed {p['seed']}.", ""]
    md += _md_runs(p) + [""] + _md_per_task(p) + [""] + _md_aggregates(p)
    md += ["", "## Welch t-test per task (paper protocol)", "",
           f"Final scores, method vs `{base}`: `scipy.stats.ttest_ind(equal_var=False)`; p two-sided and "
           "one-sided (method > baseline). Detectable: the difference of means a two-sided t-test at 5% would "
           "detect with 80% power at these runs' pooled std (a large p is no evidence of no difference).", ""]
    md += _md_welch(p["welch"], base)
    contrasts = _md_contrasts(p)
    md += [""] + _md_auc(p) + ([""] + contrasts if contrasts else []) + [""] + _md_anchors(p) + [""]
    md += _md_training_logs(p)
    md += ["", "## Figures", ""] + [f"- [{k}]({v})" for k, v in p["files"].items() if v.endswith(".png")]
    return "\n".join(md) + "\n"
