"""Every figure of the report and of ``python -m recipes.plot``, drawn with matplotlib's Agg backend (files only,
no display needed on a cluster node). Figures draw numbers computed elsewhere; the only statistics here are the
bands, from :mod:`recipes.report.stats`.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rliable import plot_utils  # noqa: E402

from recipes.report.runs import WEIGHT_METRICS, Groups, Run, metric_key, metric_name  # noqa: E402
from recipes.report.stats import band_stats, common_grid, curve_stats  # noqa: E402

__all__ = ["aggregate_figures", "method_colors", "plot_aggregates", "plot_curves", "plot_metric_grid",
           "plot_profiles", "plot_sample_efficiency", "plot_task_curves"]

# Reference lines on the weight panels: no correlation, and the batch's mean weight (ratios to it).
_METRIC_REFERENCE = {"wm/weight_upper_corr": 0.0, "wm/weight_reward_corr": 0.0, "wm/weight_phase_corr": 0.0,
                     "wm/weight_episode_start": 1.0, "wm/weight_chunk_start": 1.0}
_METRIC_BOUNDS = {k: (-1.0, 1.0) for k in WEIGHT_METRICS if k.endswith("_corr")}  # clip t-bands to what can be
_ANCHOR_STYLE = (("s", "black"), ("D", "dimgrey"), ("^", "saddlebrown"), ("v", "purple"))


def method_colors(methods: list[str]) -> dict[str, tuple]:
    """One tab10 colour per method, in the given order (callers put the baseline where its colour should stay)."""
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def _task_axes(n_tasks: int) -> tuple[plt.Figure, np.ndarray]:
    """One subplot per task, three per row."""
    ncols = min(max(n_tasks, 1), 3)
    nrows = math.ceil(max(n_tasks, 1) / ncols)
    return plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.8 * nrows), squeeze=False)


def _save(fig: plt.Figure, out_path: Path, dpi: int, title: str | None = None, fontsize: int = 11,
          used_axes: int | None = None) -> None:
    """Hide the axes past ``used_axes``, title, tighten, write and close."""
    if used_axes is not None:
        for ax in list(fig.axes)[used_axes:]:
            ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=fontsize)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=dpi)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Evaluation curves
# --------------------------------------------------------------------------------------------


def _draw_anchors(ax: plt.Axes, anchors: list[dict]) -> None:
    """Published returns as markers with ±1 std error bars at their frame counts, one legend entry per source."""
    for i, label in enumerate(dict.fromkeys(a["label"] for a in anchors)):
        marker, color = _ANCHOR_STYLE[i % len(_ANCHOR_STYLE)]
        pts = [a for a in anchors if a["label"] == label]
        yerr = [a["std"] if a["std"] is not None else 0.0 for a in pts]
        ax.errorbar([a["frames"] for a in pts], [a["mean"] for a in pts], yerr=yerr, fmt=marker, color=color,
                    mfc="none", ms=6, capsize=3, lw=1, label=f"{label} (published, ±1 std)")


def _draw_ci_curve(ax: plt.Axes, runs: list[Run], task: str, color: tuple, style: str, offset: int) -> None:
    """Mean and 95% CI of the return per evaluation step; points evaluated by fewer runs than the method has are
    hollow and say how many (``offset`` keeps methods' labels apart where their means are close)."""
    c = curve_stats(runs, task)
    ax.plot(c["frames"], c["mean"], style, color=color, lw=2, marker="o" if len(c["frames"]) < 2 else "",
            label=f"{runs[0].method} (n={len(runs)})")  # 1 point: seen
    ax.fill_between(c["frames"], c["lo"], c["hi"], color=color, alpha=0.2, lw=0)
    partial = c["n"] < len(runs)
    ax.plot(c["frames"][partial], c["mean"][partial], "o", mfc="white", color=color, ms=5)
    for f, m, k in zip(c["frames"][partial], c["mean"][partial], c["n"][partial], strict=True):
        ax.annotate(f"n={k}", (f, m), textcoords="offset points", xytext=(4, 4 - 10 * offset), fontsize=7,
                    color=color)


def plot_task_curves(groups: Groups, budgets: dict[str, int], colors: dict, baseline: str, out_path: Path,
                     anchors: dict[str, list[dict]] | None = None) -> None:
    """The report's curves: one subplot per task, mean and 95% CI (Student t over seeds) of the return at each
    evaluation step; the task's frame budget dashed; ``anchors`` (published returns) drawn on their tasks."""
    anchors = anchors or {}
    tasks = sorted({t for t, _ in groups})
    fig, axes = _task_axes(len(tasks))
    for ax, task in zip(axes.flat, tasks, strict=False):
        for i, method in enumerate(colors):
            if groups.get((task, method)):
                _draw_ci_curve(ax, groups[(task, method)], task, colors[method],
                               "--" if method == baseline else "-", i)
        ax.axvline(budgets[task], color="grey", ls=":", lw=1, label=f"frame budget {budgets[task]:,}")
        _draw_anchors(ax, anchors.get(task, []))
        ax.set_title(task)
        ax.set_xlabel("environment frames")
        ax.set_ylabel("evaluation return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    _save(fig, out_path, 110, "Evaluation return: mean and 95% CI over seeds", used_axes=len(tasks))


def _draw_std_curve(ax: plt.Axes, runs: list[Run], color: tuple, style: str) -> None:
    """Mean ± std (``ddof=1``) over seeds on the steps every seed evaluated; no band for one seed."""
    grid, mat = common_grid(runs)
    if not len(grid):
        return
    mean = mat.mean(axis=0)
    ax.plot(grid, mean, style, color=color, label=f"{runs[0].method} (n={len(runs)})", lw=2,
            marker="o" if len(grid) < 30 else None, ms=3)
    if len(runs) > 1:
        std = mat.std(axis=0, ddof=1)
        ax.fill_between(grid, mean - std, mean + std, color=color, alpha=0.2, lw=0)


def plot_curves(groups: Groups, out_path: str | Path, baseline: str | None = None) -> Path:
    """The plot command's curves: one subplot per task, one line per method, mean ± std (shaded) over seeds on
    the common grid (:func:`recipes.report.stats.common_grid`)."""
    out_path = Path(out_path)
    tasks = sorted({task for task, _ in groups})
    colors = method_colors(sorted({m for _, m in groups}, key=lambda m: (m == baseline, m)))
    fig, axes = _task_axes(len(tasks))
    for ax, task in zip(axes.flat, tasks, strict=False):
        for method, color in colors.items():
            if groups.get((task, method)):
                _draw_std_curve(ax, groups[(task, method)], color, "--" if method == baseline else "-")
        ax.set_title(task)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("evaluation return")
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    _save(fig, out_path, 120, "Evaluation return (mean ± std over seeds)", used_axes=len(tasks))
    return out_path


# --------------------------------------------------------------------------------------------
# Aggregates (rliable)
# --------------------------------------------------------------------------------------------


def plot_aggregates(agg: dict, colors: dict, out_path: Path,
                    xlabel: str = "normalised score (95% stratified-bootstrap CI)") -> None:
    """rliable's interval-estimate plot of IQM / mean / median (of the final scores, or of the AUCs)."""
    methods = list(agg["methods"])
    names = ["iqm", "mean", "median"]
    points = {m: np.array([agg["methods"][m][k]["point"] for k in names]) for m in methods}
    cis = {m: np.array([agg["methods"][m][k]["ci"] for k in names]).T for m in methods}
    height = 0.5 * len(methods)  # inches: rliable sizes the figure by rows; place the x label below the ticks
    fig, _ = plot_utils.plot_interval_estimates(points, cis, metric_names=["IQM", "Mean", "Median"],
                                                algorithms=methods, colors=colors, xlabel=xlabel,
                                                row_height=0.5, xlabel_y_coordinate=-0.45 / height)
    fig.savefig(out_path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_profiles(prof: dict, colors: dict, out_path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_utils.plot_performance_profiles(prof["profiles"], prof["taus"], performance_profile_cis=prof["cis"],
                                         colors=colors, ax=ax, xlabel=r"normalised score $\tau$",
                                         ylabel=r"fraction of runs with score $> \tau$", labelsize="large",
                                         ticklabelsize="medium")
    ax.set_title("Performance profiles (final scores, all tasks; 95% CI)", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    _save(fig, out_path, 110)


def plot_sample_efficiency(curves: dict, colors: dict, out_path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, c in curves.items():
        if not c["frames"]:
            continue
        plot_utils.plot_sample_efficiency_curve(
            np.array(c["frames"]), {method: np.array(c["iqm"])},
            {method: np.array([c["ci_low"], c["ci_high"]])}, algorithms=[method], colors=colors, ax=ax,
            xlabel="environment frames", ylabel="IQM normalised return", labelsize="large", ticklabelsize="medium",
            marker="o" if len(c["frames"]) < 30 else "",
        )
    ax.set_title("IQM over tasks and runs (95% CI); each frame: the runs evaluated there", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    _save(fig, out_path, 110)


def aggregate_figures(aggregate: dict, prof: dict, colors: dict, out: Path) -> dict[str, str]:
    """The rliable figures; returns their file names."""
    files = {"aggregates": "aggregates.png", "performance_profile": "performance_profile.png",
             "sample_efficiency": "sample_efficiency.png"}
    plot_aggregates(aggregate, colors, out / files["aggregates"])
    if aggregate["auc"]["methods"]:
        files["aggregates_auc"] = "aggregates_auc.png"
        plot_aggregates(aggregate["auc"], colors, out / files["aggregates_auc"],
                        xlabel="normalised AUC: mean return over evaluations in (0, budget] (95% CI)")
    plot_profiles(prof, colors, out / files["performance_profile"])
    plot_sample_efficiency(aggregate["sample_efficiency"], colors, out / files["sample_efficiency"])
    return files


# --------------------------------------------------------------------------------------------
# Training-log series (weights, diagnostics)
# --------------------------------------------------------------------------------------------


def _metric_panel(ax: plt.Axes, groups: Groups, task: str, alternatives: tuple[str, ...], colors: dict,
                  baseline: str) -> set[str]:
    """One metric of one task, every method: mean and 95% t-band over its runs; returns the keys drawn."""
    used: set[str] = set()
    for method in colors:
        series = []
        for r in groups.get((task, method), []):
            key = metric_key(r, alternatives)
            if key is not None:
                series.append(r.series[key])
                used.add(key)
        if not series:
            continue
        c = band_stats(series, _METRIC_BOUNDS.get(alternatives[0]))
        ax.plot(c["frames"], c["mean"], "--" if method == baseline else "-", color=colors[method], lw=1.5,
                marker="o" if len(c["frames"]) < 2 else "", label=f"{method} (n={len(series)})")
        ax.fill_between(c["frames"], c["lo"], c["hi"], color=colors[method], alpha=0.2, lw=0)
    if alternatives[0] in _METRIC_REFERENCE:
        ax.axhline(_METRIC_REFERENCE[alternatives[0]], color="grey", ls=":", lw=1)
    return used


def plot_metric_grid(groups: Groups, metrics: tuple[tuple[str, ...], ...], colors: dict, baseline: str,
                     out_path: Path, title: str) -> None:
    """One row per task, one column per metric (the first of its alternative keys each run logs): training-log
    values against frames, mean and 95% Student-t band over seeds, one colour per method."""
    tasks = sorted({t for t, _ in groups})
    fig, axes = plt.subplots(len(tasks), len(metrics), figsize=(3.4 * len(metrics), 2.8 * len(tasks)),
                             squeeze=False)
    for row, task in zip(axes, tasks, strict=True):
        for col, (ax, alternatives) in enumerate(zip(row, metrics, strict=True)):
            used = _metric_panel(ax, groups, task, alternatives, colors, baseline)
            ax.set_title(f"{task}: {' / '.join(sorted(used)) or metric_name(alternatives)}", fontsize=8)
            ax.set_xlabel("environment frames", fontsize=7)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if col == 0 and used:
                ax.legend(fontsize=6, loc="best")
    _save(fig, out_path, 100, title, fontsize=10)
