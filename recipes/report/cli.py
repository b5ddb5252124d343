"""``python -m recipes.report SWEEP_DIR``: arguments, one ``error:`` line and exit code 2 for bad input, warnings
and a one-line summary on the terminal; everything else is :func:`recipes.report.build.build_report`."""

from __future__ import annotations

import sys
from pathlib import Path

from recipes.report.build import build_report
from recipes.report.runs import ReportError
from recipes.usage import Parser, UsageError

__all__ = ["main"]


def _parser() -> Parser:
    parser = Parser(
        prog="python -m recipes.report",
        description="Report on a sweep SWEEP_DIR/<task>/<method>/<seed>[/<grid point>]: per-task curves, rliable "
        "aggregates (IQM, probability of improvement, performance profiles, sample efficiency) and the "
        "per-task Welch t-tests, at a frame budget every run has reached.",
    )
    parser.add_argument("sweep", metavar="SWEEP_DIR")
    parser.add_argument("--baseline", default="dreamerv2", help="baseline method label (default: dreamerv2)")
    parser.add_argument("--out", default=None, help="output folder (default: SWEEP_DIR/report)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap replications (default: 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.add_argument("--last", type=int, default=1, metavar="K",
                        help="final score = mean of the last K evaluations within the frame budget (default: 1)")
    parser.add_argument("--frames", type=int, default=None, metavar="N",
                        help="score every task at N frames, leaving out the runs short of it (default: each task "
                        "at the frames all its runs reached)")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.reps < 1 or args.last < 1 or (args.frames is not None and args.frames < 1):
        print(f"error: --reps, --last and --frames must be >= 1, got {args.reps}, {args.last}, {args.frames}",
              file=sys.stderr)
        return 2
    sweep = Path(args.sweep)
    out = Path(args.out) if args.out else sweep / "report"
    try:
        payload = build_report(sweep, out, args.baseline, args.reps, args.seed, args.last, args.frames)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for w in payload["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    if not payload["baseline_present"] and not payload["contrasts"]["final"]["gains"]:
        print(f"warning: baseline '{args.baseline}' not found; no probability of improvement or t-test",
              file=sys.stderr)
    short = f", {len(payload['short_of_frames'])} short of --frames" if payload["frames"] else ""
    print(f"{len(payload['runs'])} runs ({len(payload['unfinished'])} unfinished){short}, "
          f"{len(payload['no_evaluation'])} without evaluation; wrote {out / 'report.md'}")
    return 0
