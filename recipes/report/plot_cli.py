"""``python -m recipes.plot``: evaluation curves and the TEMPO significance test over run directories given one by
one (no sweep layout needed).

Usage::

    python -m recipes.plot RUN_DIR [RUN_DIR ...] [--out FILE.png] [--baseline dreamerv2]

Each ``RUN_DIR`` is written by ``python -m recipes.tempo`` and holds ``config.json`` (we read ``task``, ``method``
and ``seed``; the task as spelled there) and ``metrics.jsonl`` (evaluation records carry ``eval_return``), read by
:func:`recipes.report.runs.load_run`. Lines that do not parse (e.g. a truncated last line of a killed run) are
skipped with a warning.

Aggregation choices
-------------------
* Runs are grouped by ``(task, method)``; seeds within a group are aggregated. Runs of one method whose configs
  differ in more than where and how fast they ran are variants, not seeds: each is its own group, labelled with the
  fields that differ, e.g. ``dreamerv2 (agent.actor_ent=0.002)``; the variant on its preset's defaults keeps the bare
  name (:func:`recipes.report.runs.label_variants`).
* **Step grid: intersection, no interpolation.** A group's curve is drawn on the evaluation steps present in
  *every* seed of the group (:func:`recipes.report.stats.common_grid`), so each plotted point is a mean/std over
  real evaluations of all seeds (a seed that stopped early shortens the curve of its group rather than being
  extrapolated). If a seed evaluates the same step twice, the last record wins.
* The significance test (TEMPO paper, §3.1) runs at every step common to *both* the method's and the baseline's
  grids: the one-sided p of :func:`recipes.report.stats.welch` (method > baseline,
  ``scipy.stats.ttest_ind(a, b, equal_var=False, alternative="greater")``) over the seeds, then the t statistics
  and p-values are averaged over those evaluations
  (:func:`recipes.report.stats.welch_over_evals`). With < 2 seeds on either side the test is undefined and the
  table reports NaN with a note.
* "final" mean ± std is taken at the last step of each group's own grid; std is the sample std (``ddof=1``, NaN
  for one seed) everywhere, as in the sweep report, and so is the shaded band of the plot.

Outputs: a PNG (default ``<parent of first RUN_DIR>/curves.png``) with one subplot per task and one line per method
(mean ± std shaded), and ``stats.json`` next to it with the table rows. Exit codes: 0 success, 2 bad input (e.g. a
path that is not a run directory), reported as one ``error: ...`` line on stderr.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

from recipes.report.build import json_safe
from recipes.report.figures import plot_curves
from recipes.report.markdown import fmt
from recipes.report.runs import ReportError, Run, group_runs, label_variants, load_run
from recipes.report.stats import welch_over_evals
from recipes.usage import Parser, UsageError

__all__ = ["format_table", "main"]

PROTOCOL = ("one-tailed Welch t-test (method > baseline) at every common evaluation step, t and p averaged over "
            "evaluations")


def _cells(r: dict) -> list[str]:
    return [r["task"], str(r["method"]) if r["method"] is not None else "-",
            f"{r['baseline']}" + ("" if r["n_seeds_baseline"] else " (none)"), str(r["n_evals"]),
            fmt(r["mean_t"], missing="nan"), fmt(r["mean_p"], ".4f", "nan"),
            f"{fmt(r['final_mean'], '.1f', 'nan')} ± {fmt(r['final_std'], '.1f', 'nan')} (n={r['n_seeds']})",
            f"{fmt(r['baseline_final_mean'], '.1f', 'nan')} ± {fmt(r['baseline_final_std'], '.1f', 'nan')}"
            f" (n={r['n_seeds_baseline']})", r["note"]]


def format_table(rows: list[dict]) -> str:
    """Human-readable fixed-width table of :func:`recipes.report.stats.welch_over_evals` rows."""
    header = ["task", "method", "baseline", "n_evals", "mean t", "mean p", "final (method)", "final (base)", "note"]
    body = [_cells(r) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip() for b in body]
    return "\n".join(lines)


def _load_all(paths: list[str]) -> list[Run]:
    """Every run, the loader's warnings as plain ``warning:`` lines; :class:`ReportError` on the first bad path."""
    runs = []
    for p in paths:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runs.append(load_run(p))
        for w in caught:  # CLI: plain one-line warnings on stderr
            print(f"warning: {w.message}", file=sys.stderr)
    for run in runs:
        if not len(run.steps):
            print(f"warning: {run.path}: no evaluation records (eval_return)", file=sys.stderr)
    return runs


def _parser() -> Parser:
    parser = Parser(
        prog="python -m recipes.plot",
        description="Plot evaluation curves (mean ± std over seeds) and run the one-tailed Welch t-test "
        "of each method against a baseline, averaged over evaluations.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (config.json + metrics.jsonl)")
    parser.add_argument("--out", default=None, help="output PNG (default: <parent of first RUN_DIR>/curves.png)")
    parser.add_argument("--baseline", default="dreamerv2", help="baseline method label (default: dreamerv2)")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        groups = group_runs(label_variants(_load_all(args.runs)))
    except (ReportError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.runs[0]).resolve().parent / "curves.png"
    if out.suffix.lower() != ".png":
        print(f"error: --out must be a .png file, got {out}", file=sys.stderr)
        return 2
    plot_curves(groups, out, baseline=args.baseline)

    rows = welch_over_evals(groups, args.baseline)
    print(format_table(rows))
    for t in sorted({t for t, _ in groups} - {t for t, m in groups if m == args.baseline}):
        print(f"note: no baseline runs ('{args.baseline}') for task {t}")
    stats_path = out.with_name("stats.json")
    payload = {"baseline": args.baseline, "protocol": PROTOCOL,
               "groups": {f"{t}/{m}": [r.path for r in v] for (t, m), v in groups.items()}, "rows": rows}
    stats_path.write_text(json.dumps(json_safe(payload), indent=2) + "\n")
    print(f"wrote {out}")
    print(f"wrote {stats_path}")
    return 0
