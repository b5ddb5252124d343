"""Plot evaluation curves and run the TEMPO significance test over training runs.

Usage::

    python -m recipes.plot RUN_DIR [RUN_DIR ...] [--out FILE.png] [--baseline dreamerv2]

Each ``RUN_DIR`` is written by ``python -m recipes.tempo`` and holds

* ``config.json`` -- resolved config; we read ``task``, ``method`` and ``seed``;
* ``metrics.jsonl`` -- one JSON object per line with ``step``; evaluation records also carry
  ``eval_return``. Lines that do not parse (e.g. a truncated last line of a killed run) are
  skipped with a warning.

Aggregation choices
-------------------
* Runs are grouped by ``(task, method)``; seeds within a group are aggregated.
* **Step grid: intersection, no interpolation.** A group's curve is drawn on the evaluation steps
  present in *every* seed of the group, so each plotted point is a mean/std over real evaluations
  of all seeds (a seed that stopped early shortens the curve of its group rather than being
  extrapolated). If a seed evaluates the same step twice, the last record wins.
* The significance test (TEMPO paper, §3.1) runs at every step common to *both* the method's
  and the baseline's grids: a one-tailed Welch t-test (method > baseline,
  ``scipy.stats.ttest_ind(a, b, equal_var=False, alternative="greater")``) over the seeds, then
  the t statistics and p-values are averaged over those evaluations. With < 2 seeds on either
  side the test is undefined and the table reports NaN with a note.
* "final" mean ± std is taken at the last step of each group's own grid; std is the population
  std (``ddof=0``) everywhere, matching the shaded band of the plot.

Outputs: a PNG (default ``<parent of first RUN_DIR>/curves.png``) with one subplot per task and
one line per method (mean ± std shaded), and ``stats.json`` next to it with the table rows.
Exit codes: 0 success, 2 bad input (e.g. a path that is not a run directory).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

__all__ = [
    "RunDirError",
    "load_run",
    "group_runs",
    "common_grid",
    "welch_table",
    "plot_curves",
    "format_table",
    "main",
]


class RunDirError(ValueError):
    """A path given on the command line is not a valid run directory."""


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_run(path: str | Path) -> dict:
    """Load one run directory.

    Returns ``{"task", "method", "seed", "steps", "returns", "path"}`` where ``steps`` (int64)
    and ``returns`` (float64) are the evaluation records sorted by step (duplicate steps: last
    record wins). Raises :class:`RunDirError` if the directory lacks ``config.json`` or
    ``metrics.jsonl`` or the config is unusable.
    """
    path = Path(path)
    cfg_path, met_path = path / "config.json", path / "metrics.jsonl"
    if not path.is_dir():
        raise RunDirError(f"{path}: not a run directory (not a directory)")
    missing = [p.name for p in (cfg_path, met_path) if not p.is_file()]
    if missing:
        raise RunDirError(f"{path}: not a run directory (missing {', '.join(missing)})")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path}: cannot parse config.json ({exc})") from exc
    if not isinstance(cfg, dict):
        raise RunDirError(f"{path}: config.json is not a JSON object")
    for key in ("task", "method"):
        if key not in cfg:
            raise RunDirError(f"{path}: config.json has no '{key}' key")

    evals: dict[int, float] = {}
    with met_path.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f"{met_path}:{lineno}: skipping unparsable line (truncated write?)", stacklevel=2)
                continue
            if not isinstance(rec, dict) or "eval_return" not in rec:
                continue  # training log
            try:
                step, ret = int(rec["step"]), float(rec["eval_return"])
            except (KeyError, TypeError, ValueError):
                warnings.warn(f"{met_path}:{lineno}: skipping malformed eval record", stacklevel=2)
                continue
            evals[step] = ret
    steps = np.array(sorted(evals), dtype=np.int64)
    returns = np.array([evals[s] for s in steps], dtype=np.float64)
    return {
        "task": str(cfg["task"]),
        "method": str(cfg["method"]),
        "seed": cfg.get("seed"),
        "steps": steps,
        "returns": returns,
        "path": str(path),
    }


# --------------------------------------------------------------------------------------------
# Grouping / alignment
# --------------------------------------------------------------------------------------------


def group_runs(runs: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Group runs by ``(task, method)``; runs inside a group are sorted by seed."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["task"], run["method"])].append(run)
    return {key: sorted(v, key=lambda r: (str(r["seed"]), r.get("path", ""))) for key, v in sorted(groups.items())}


def common_grid(runs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Steps present in every run, and the ``(n_seeds, n_steps)`` matrix of returns there."""
    if not runs:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0))
    grid = runs[0]["steps"]
    for run in runs[1:]:
        grid = np.intersect1d(grid, run["steps"])
    if not len(grid):
        return np.zeros(0, dtype=np.int64), np.zeros((len(runs), 0))
    mat = np.stack([r["returns"][np.searchsorted(r["steps"], grid)] for r in runs])
    return np.asarray(grid, dtype=np.int64), mat


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def _final(runs: list[dict]) -> tuple[float, float, int | None]:
    grid, mat = common_grid(runs)
    if not len(grid):
        return math.nan, math.nan, None
    col = mat[:, -1]
    return float(col.mean()), float(col.std()), int(grid[-1])


def welch_table(groups: dict[tuple[str, str], list[dict]], baseline: str = "dreamerv2") -> list[dict]:
    """One row per (task, non-baseline method): averaged one-tailed Welch t-test vs ``baseline``.

    Row keys: task, method, baseline, n_seeds, n_seeds_baseline, n_evals, mean_t, mean_p,
    final_step, final_mean, final_std, baseline_final_step, baseline_final_mean,
    baseline_final_std, note. Undefined quantities are NaN (and ``note`` says why).
    """
    rows = []
    tasks = sorted({task for task, _ in groups})
    for task in tasks:
        base_runs = groups.get((task, baseline), [])
        b_grid, b_mat = common_grid(base_runs)
        bf_mean, bf_std, bf_step = _final(base_runs)
        for (t, method), runs in groups.items():
            if t != task or method == baseline:
                continue
            grid, mat = common_grid(runs)
            f_mean, f_std, f_step = _final(runs)
            row = {
                "task": task,
                "method": method,
                "baseline": baseline,
                "n_seeds": len(runs),
                "n_seeds_baseline": len(base_runs),
                "n_evals": 0,
                "mean_t": math.nan,
                "mean_p": math.nan,
                "final_step": f_step,
                "final_mean": f_mean,
                "final_std": f_std,
                "baseline_final_step": bf_step,
                "baseline_final_mean": bf_mean,
                "baseline_final_std": bf_std,
                "note": "",
            }
            if not base_runs:
                row["note"] = f"no baseline runs ('{baseline}') for this task"
            else:
                steps, ia, ib = np.intersect1d(grid, b_grid, return_indices=True)
                row["n_evals"] = int(len(steps))
                if not len(steps):
                    row["note"] = "no evaluation step common to method and baseline"
                elif len(runs) < 2 or len(base_runs) < 2:
                    row["note"] = "t-test undefined: < 2 seeds"
                else:
                    ts, ps = [], []
                    for i, j in zip(ia, ib, strict=True):
                        res = stats.ttest_ind(mat[:, i], b_mat[:, j], equal_var=False, alternative="greater")
                        ts.append(float(res.statistic))
                        ps.append(float(res.pvalue))
                    row["mean_t"] = float(np.mean(ts))
                    row["mean_p"] = float(np.mean(ps))
                    if not (math.isfinite(row["mean_t"]) and math.isfinite(row["mean_p"])):
                        row["note"] = "t-test undefined at some steps (zero variance?)"
            rows.append(row)
        if not any(m != baseline for t, m in groups if t == task):
            rows.append(
                {
                    "task": task,
                    "method": None,
                    "baseline": baseline,
                    "n_seeds": 0,
                    "n_seeds_baseline": len(base_runs),
                    "n_evals": 0,
                    "mean_t": math.nan,
                    "mean_p": math.nan,
                    "final_step": None,
                    "final_mean": math.nan,
                    "final_std": math.nan,
                    "baseline_final_step": bf_step,
                    "baseline_final_mean": bf_mean,
                    "baseline_final_std": bf_std,
                    "note": "only baseline runs for this task; nothing to compare",
                }
            )
    return rows


def _fmt(x: float, spec: str = ".3f") -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def format_table(rows: list[dict]) -> str:
    """Human-readable fixed-width table of :func:`welch_table` rows."""
    header = ["task", "method", "baseline", "n_evals", "mean t", "mean p", "final (method)", "final (base)", "note"]
    body = []
    for r in rows:
        body.append(
            [
                r["task"],
                str(r["method"]) if r["method"] is not None else "-",
                f"{r['baseline']}" + ("" if r["n_seeds_baseline"] else " (none)"),
                str(r["n_evals"]),
                _fmt(r["mean_t"]),
                _fmt(r["mean_p"], ".4f"),
                f"{_fmt(r['final_mean'], '.1f')} ± {_fmt(r['final_std'], '.1f')} (n={r['n_seeds']})",
                f"{_fmt(r['baseline_final_mean'], '.1f')} ± {_fmt(r['baseline_final_std'], '.1f')}"
                f" (n={r['n_seeds_baseline']})",
                r["note"],
            ]
        )
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip() for b in body]
    return "\n".join(lines)


def json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    return obj


# --------------------------------------------------------------------------------------------
# Plotting
# --------------------------------------------------------------------------------------------


def plot_curves(groups: dict[tuple[str, str], list[dict]], out_path: str | Path, baseline: str | None = None) -> Path:
    """One subplot per task, one line per method: mean ± std (shaded) over seeds on the common grid."""
    out_path = Path(out_path)
    tasks = sorted({task for task, _ in groups})
    methods = sorted({m for _, m in groups}, key=lambda m: (m == baseline, m))
    cmap = plt.get_cmap("tab10")
    colors = {m: cmap(i % 10) for i, m in enumerate(methods)}

    n = max(len(tasks), 1)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.8 * nrows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for method in methods:
            runs = groups.get((task, method))
            if not runs:
                continue
            grid, mat = common_grid(runs)
            if not len(grid):
                continue
            mean, std = mat.mean(axis=0), mat.std(axis=0)
            label = f"{method} (n={len(runs)})"
            style = "--" if method == baseline else "-"
            ax.plot(
                grid, mean, style, color=colors[method], label=label, lw=2, marker="o" if len(grid) < 30 else None, ms=3
            )
            if len(runs) > 1:
                ax.fill_between(grid, mean - std, mean + std, color=colors[method], alpha=0.2, lw=0)
        ax.set_title(task)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("evaluation return")
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    for ax in list(axes.flat)[len(tasks) :]:
        ax.set_visible(False)
    fig.suptitle("Evaluation return (mean ± std over seeds)", fontsize=11)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.plot",
        description="Plot evaluation curves (mean ± std over seeds) and run the one-tailed Welch t-test "
        "of each method against a baseline, averaged over evaluations.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (config.json + metrics.jsonl)")
    parser.add_argument("--out", default=None, help="output PNG (default: <parent of first RUN_DIR>/curves.png)")
    parser.add_argument("--baseline", default="dreamerv2", help="baseline method label (default: dreamerv2)")
    args = parser.parse_args(argv)

    runs = []
    for p in args.runs:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                runs.append(load_run(p))
            except RunDirError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        for w in caught:  # CLI: plain one-line warnings on stderr
            print(f"warning: {w.message}", file=sys.stderr)
    for run in runs:
        if not len(run["steps"]):
            print(f"warning: {run['path']}: no evaluation records (eval_return)", file=sys.stderr)

    groups = group_runs(runs)
    out = Path(args.out) if args.out else Path(args.runs[0]).resolve().parent / "curves.png"
    if out.suffix.lower() != ".png":
        print(f"error: --out must be a .png file, got {out}", file=sys.stderr)
        return 2
    plot_curves(groups, out, baseline=args.baseline)

    rows = welch_table(groups, args.baseline)
    tasks_without_base = sorted({t for t, _ in groups} - {t for t, m in groups if m == args.baseline})
    print(format_table(rows))
    for t in tasks_without_base:
        print(f"note: no baseline runs ('{args.baseline}') for task {t}")
    stats_path = out.with_name("stats.json")
    payload = {
        "baseline": args.baseline,
        "protocol": "one-tailed Welch t-test (method > baseline) at every common evaluation step, "
        "t and p averaged over evaluations",
        "groups": {f"{t}/{m}": [r["path"] for r in v] for (t, m), v in groups.items()},
        "rows": rows,
    }
    stats_path.write_text(json.dumps(json_safe(payload), indent=2) + "\n")
    print(f"wrote {out}")
    print(f"wrote {stats_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
