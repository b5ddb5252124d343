"""Report on a sweep: per-task curves, rliable aggregates over tasks, and the paper's Welch t-tests.

Usage::

    python -m recipes.report SWEEP_DIR [--baseline dreamerv2] [--out DIR] [--reps 2000] [--seed 0] [--last 1]

Input layout
------------
A sweep writes ``SWEEP_DIR/<task>/<method>/<seed>[/<grid point>]/``; every leaf is a ``python -m recipes.tempo``
run directory (``config.json`` + ``metrics.jsonl``, read with :func:`recipes.plot.load_run`). Leaves are found by
looking for ``config.json`` files (``replay/``, ``tb/``, hidden folders such as Ray Tune's ``.tune/`` and the
output folder are not searched), so the depth does not have to be exact.

* **task** is the config's ``task``, canonicalised so ``dmc:walker_stand`` and ``walker_stand`` are one task.
* **method label** is the leaf's path between ``<task>`` and the run, less the seed folder: ``tempo`` for
  ``walker_stand/tempo/0``, and ``tempo/tempo.bilevel.meta_lr=0.0001`` for ``recipes.sweep``'s grid-point leaf
  ``walker_stand/tempo/0/tempo.bilevel.meta_lr=0.0001`` (or ``walker_stand/tempo/<point>/0``). A grid point
  is a different method, so it keeps its own curve and its own row; the seed folder is the component that
  spells the config's seed (``3``, ``s3``, ``seed_3``), the last one when none does.
* A ``config.json`` without ``task``/``method`` keys (e.g. a sweep's own spec) is not a run and is ignored.

Rules (chosen so a sweep that is still running is compared fairly)
-----------------------------------------------------------------
* A leaf with no evaluation yet (or unreadable) is listed and excluded; a run whose last evaluation is below its
  config's ``run.steps`` is *unfinished* and listed, but used.
* **Frame budget per task**: the largest frame count that *every* scored run of the task (all methods) has
  reached, i.e. the minimum over those runs of their last evaluation step. A run's **final score** is the mean of
  its last ``K`` (``--last``) evaluation returns at or below that budget. One slow run lowers its task's budget
  for everyone, rather than comparing a method at 1M frames with another at 300k.
* **Normalisation**: DMC ``return / 1000`` (the maximum episode return); Atari human-normalised
  ``(return - random) / (human - random)`` with :data:`ATARI_RANDOM_HUMAN`. Other suites (``gym:``) and unknown
  games are reported per task but left out of the aggregates.
* **Aggregates** (rliable, stratified bootstrap, percentile 95% CIs, ``--reps`` replications): IQM, mean and
  median of the normalised final scores; probability of improvement of each method over ``--baseline``;
  performance profiles; and a sample-efficiency curve (IQM against frames). Comparing aggregates over different
  task sets would be meaningless, so a method enters them only if it has scored runs on *every* normalisable
  task (others, e.g. a grid point run on one task, are listed as excluded). rliable needs a
  ``(runs, tasks)`` matrix, so each method uses the same number of runs on every task: the smallest count over
  tasks, lowest seeds first (dropped runs are listed). The bootstrap resamples runs within each task
  independently, so rows need not correspond to one seed.
* **Sample-efficiency curve**: on the evaluation steps present for every aggregated task; at each frame, the
  runs that have that evaluation (same runs-per-task rule), so unfinished runs drop out of the later points.
* **Paper protocol** beside it: per task, Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``) of the
  final scores, method vs baseline: t, two-sided p and one-sided p (method > baseline, as in the TEMPO paper),
  n per side. The variant of :mod:`recipes.plot` (one-tailed, averaged over all common evaluation steps) is in
  ``report.json`` too.
* Per-task curves: mean and 95% CI (Student t, over seeds) of the return at each evaluation step, from the runs
  that have that evaluation; the task's frame budget is a dashed vertical line.
* std is the sample std (``ddof=1``).

Outputs (``--out``, default ``SWEEP_DIR/report``): ``report.md``, ``report.json`` (every number),
``curves.png``, ``aggregates.png``, ``performance_profile.png``, ``sample_efficiency.png`` (the last three only
when something can be aggregated). Exit codes: 0 success, 2 bad input (missing/empty ``SWEEP_DIR``, no run, no
evaluation anywhere), reported as one ``error: ...`` line on stderr.

rliable 1.2.0 needs ``arch`` < 8 (8 dropped the ``random_state`` argument rliable passes) and ``arch`` 7.2 needs
``pandas`` < 3.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rliable import library as rly  # noqa: E402
from rliable import metrics as rlm  # noqa: E402
from rliable import plot_utils  # noqa: E402
from scipy import stats  # noqa: E402

from envs.registry import split_task  # noqa: E402  (the one parser of "suite:name" task names)
from recipes.plot import RunDirError, group_runs, json_safe, load_run, welch_table  # noqa: E402

__all__ = [
    "ATARI_RANDOM_HUMAN",
    "DMC_MAX_RETURN",
    "ReportError",
    "canonical_task",
    "normalisation",
    "normalise",
    "method_label",
    "discover",
    "frame_budgets",
    "final_score",
    "welch_rows",
    "curve_stats",
    "aggregate_final",
    "performance_profiles",
    "iqm_per_frame",
    "sample_efficiency",
    "build_report",
    "render_markdown",
    "main",
]

DMC_MAX_RETURN = 1000.0  # every DMC task pays at most 1 per step over 1000 steps

# Random and human scores per Atari game, (random, human): the standard Atari-57 table of no-op-start evaluations
# (random agent; professional human tester), as in DeepMind's DQN Zoo, `dqn_zoo/atari_data.py`, whose values are
# the ones behind the human-normalised scores of the Atari-100k literature (e.g. rliable, Agarwal et al. 2021,
# and the rliable authors' `google-research/reincarnating_rl/atari_scores.py` give the same random scores).
# All 57 games; the 26 of Atari 100k (alien ... up_n_down) and the TEMPO paper's six (bank_heist, crazy_climber,
# freeway, hero, kangaroo, pong) are among them. Keys are the snake_case names of `atari:<game>` tasks.
ATARI_RANDOM_HUMAN: dict[str, tuple[float, float]] = {
    "alien": (227.8, 7127.7),
    "amidar": (5.8, 1719.5),
    "assault": (222.4, 742.0),
    "asterix": (210.0, 8503.3),
    "asteroids": (719.1, 47388.7),
    "atlantis": (12850.0, 29028.1),
    "bank_heist": (14.2, 753.1),
    "battle_zone": (2360.0, 37187.5),
    "beam_rider": (363.9, 16926.5),
    "berzerk": (123.7, 2630.4),
    "bowling": (23.1, 160.7),
    "boxing": (0.1, 12.1),
    "breakout": (1.7, 30.5),
    "centipede": (2090.9, 12017.0),
    "chopper_command": (811.0, 7387.8),
    "crazy_climber": (10780.5, 35829.4),
    "defender": (2874.5, 18688.9),
    "demon_attack": (152.1, 1971.0),
    "double_dunk": (-18.6, -16.4),
    "enduro": (0.0, 860.5),
    "fishing_derby": (-91.7, -38.7),
    "freeway": (0.0, 29.6),
    "frostbite": (65.2, 4334.7),
    "gopher": (257.6, 2412.5),
    "gravitar": (173.0, 3351.4),
    "hero": (1027.0, 30826.4),
    "ice_hockey": (-11.2, 0.9),
    "jamesbond": (29.0, 302.8),
    "kangaroo": (52.0, 3035.0),
    "krull": (1598.0, 2665.5),
    "kung_fu_master": (258.5, 22736.3),
    "montezuma_revenge": (0.0, 4753.3),
    "ms_pacman": (307.3, 6951.6),
    "name_this_game": (2292.3, 8049.0),
    "phoenix": (761.4, 7242.6),
    "pitfall": (-229.4, 6463.7),
    "pong": (-20.7, 14.6),
    "private_eye": (24.9, 69571.3),
    "qbert": (163.9, 13455.0),
    "riverraid": (1338.5, 17118.0),
    "road_runner": (11.5, 7845.0),
    "robotank": (2.2, 11.9),
    "seaquest": (68.4, 42054.7),
    "skiing": (-17098.1, -4336.9),
    "solaris": (1236.3, 12326.7),
    "space_invaders": (148.0, 1668.7),
    "star_gunner": (664.0, 10250.0),
    "surround": (-10.0, 6.5),
    "tennis": (-23.8, -8.3),
    "time_pilot": (3568.0, 5229.2),
    "tutankham": (11.4, 167.6),
    "up_n_down": (533.4, 11693.2),
    "venture": (0.0, 1187.5),
    "video_pinball": (16256.9, 17667.9),
    "wizard_of_wor": (563.5, 4756.5),
    "yars_revenge": (3092.9, 54576.9),
    "zaxxon": (32.5, 9173.3),
}

SKIP_DIRS = frozenset({"replay", "tb"})  # big run sub-folders that never hold a run's config.json
_SEED_DIR = re.compile(r"(?:seed|s)?[-_=]?(\d+)", re.IGNORECASE)


class ReportError(ValueError):
    """Bad input (no sweep, no run, no evaluation): one ``error:`` line and exit code 2."""


# --------------------------------------------------------------------------------------------
# Task names and normalisation
# --------------------------------------------------------------------------------------------


def canonical_task(task: str) -> str:
    """``dmc:walker_stand`` -> ``walker_stand`` (DMC is the default suite); other suites keep their prefix."""
    suite, name = split_task(task)
    return name if suite == "dmc" else f"{suite}:{name}"


def normalisation(task: str) -> dict | None:
    """How ``task``'s returns are normalised (``{"suite", "kind", "random", "max"}``), None if it cannot be."""
    suite, name = split_task(task)
    if suite == "dmc":
        return {"suite": "dmc", "kind": "return / 1000", "random": 0.0, "max": DMC_MAX_RETURN}
    if suite == "atari" and name.lower() in ATARI_RANDOM_HUMAN:
        random, human = ATARI_RANDOM_HUMAN[name.lower()]
        return {"suite": "atari", "kind": "(return - random) / (human - random)", "random": random, "max": human}
    return None


def normalise(task: str, returns: np.ndarray | float) -> np.ndarray | float | None:
    """Normalised score(s): DMC ``return / 1000``, Atari human-normalised; None for tasks with no reference."""
    norm = normalisation(task)
    if norm is None:
        return None
    return (np.asarray(returns, dtype=np.float64) - norm["random"]) / (norm["max"] - norm["random"])


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


def _seed_key(seed: object) -> tuple:
    """Numeric seeds sort numerically (2 < 10), anything else after them as text."""
    try:
        return (0, int(seed), "")  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return (1, 0, str(seed))


def method_label(parts: tuple[str, ...], seed: object, config_method: str) -> str:
    """Method label of a leaf at ``SWEEP_DIR/<parts...>``: the path below ``<task>`` less the seed folder.

    The seed folder is the component (after the method's) that spells the seed, else the last component, so
    ``<task>/<method>/<seed>/<grid>`` and ``<task>/<method>/<grid>/<seed>`` both give ``<method>/<grid>``.
    """
    middle = list(parts[1:])
    if not middle:
        return config_method
    if len(middle) == 1:
        m = _SEED_DIR.fullmatch(middle[0])
        return config_method if m and _seed_key(int(m.group(1))) == _seed_key(seed) else middle[0]
    for i in range(1, len(middle)):
        m = _SEED_DIR.fullmatch(middle[i])
        if m and (seed is None or _seed_key(int(m.group(1))) == _seed_key(seed)):
            del middle[i]
            break
    else:
        del middle[-1]
    return "/".join(middle)


def _walk_configs(sweep: Path, skip: Path | None) -> Iterator[Path]:
    """Every ``config.json`` under ``sweep``, not descending into ``skip`` (resolved), :data:`SKIP_DIRS` or
    hidden folders (``recipes.sweep`` keeps Ray Tune's own files in ``SWEEP/.tune``)."""
    for root, dirs, files in os.walk(sweep):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")
                         and (skip is None or (here / d).resolve() != skip))
        if "config.json" in files:
            yield here / "config.json"


def discover(sweep: Path, skip: Path | None = None) -> dict:
    """Find and load every run under ``sweep``.

    Returns ``{"runs", "no_eval", "skipped", "warnings"}``: ``runs`` are :func:`recipes.plot.load_run` dicts
    with ``method`` replaced by the label (see :func:`method_label`) and ``task`` canonicalised, plus
    ``config_method``, ``rel`` (path relative to the sweep), ``target_frames`` (config ``run.steps``),
    ``frames_reached`` (last evaluation step) and ``finished``; ``no_eval`` lists leaves with no evaluation;
    ``skipped`` unreadable leaves with the reason; ``warnings`` the loader's (e.g. unparsable lines).
    """
    runs, no_eval, skipped, notes = [], [], [], []
    for cfg_path in _walk_configs(sweep, skip):
        leaf = cfg_path.parent
        rel = leaf.relative_to(sweep)
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            skipped.append({"path": str(rel), "reason": f"cannot parse config.json ({exc})"})
            continue
        if not isinstance(cfg, dict) or "task" not in cfg or "method" not in cfg:
            continue  # not a run (e.g. a sweep's own spec)
        if not (leaf / "metrics.jsonl").is_file():
            no_eval.append(str(rel))  # started, nothing logged yet
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                run = load_run(leaf)
            except RunDirError as exc:
                skipped.append({"path": str(rel), "reason": str(exc)})
                continue
        notes += [str(w.message) for w in caught]
        try:
            run["task"] = canonical_task(run["task"])
        except ValueError as exc:
            skipped.append({"path": str(rel), "reason": str(exc)})
            continue
        if not len(run["steps"]):
            no_eval.append(str(rel))
            continue
        target = cfg["run"].get("steps") if isinstance(cfg.get("run"), dict) else None
        run.update(
            config_method=run["method"],
            method=method_label(rel.parts, run["seed"], run["method"]),
            rel=str(rel),
            target_frames=int(target) if isinstance(target, int | float) else None,
            frames_reached=int(run["steps"][-1]),
        )
        run["finished"] = None if run["target_frames"] is None else run["frames_reached"] >= run["target_frames"]
        runs.append(run)
    runs.sort(key=lambda r: (r["task"], r["method"], _seed_key(r["seed"]), r["rel"]))
    return {"runs": runs, "no_eval": sorted(no_eval), "skipped": skipped, "warnings": notes}


# --------------------------------------------------------------------------------------------
# Final scores
# --------------------------------------------------------------------------------------------


def frame_budgets(runs: list[dict]) -> dict[str, int]:
    """Per task, the largest frame count every run of the task has reached (min of their last evaluations)."""
    budgets: dict[str, int] = {}
    for run in runs:
        budgets[run["task"]] = min(budgets.get(run["task"], run["frames_reached"]), run["frames_reached"])
    return budgets


def final_score(run: dict, budget: int, last_k: int = 1) -> float:
    """Mean of the run's last ``last_k`` evaluation returns at or below ``budget`` frames.

    There is always one: the budget is at least the run's own last evaluation or another run's, and every
    ``recipes.tempo`` run scores its untrained agent at step 0.
    """
    returns = run["returns"][run["steps"] <= budget]
    return float(returns[-last_k:].mean())


def _std(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if len(x) > 1 else math.nan


def _sorted_group(runs: list[dict]) -> list[dict]:
    return sorted(runs, key=lambda r: (_seed_key(r["seed"]), r["rel"]))


def welch_rows(groups: dict[tuple[str, str], list[dict]], finals: dict[str, float], baseline: str) -> list[dict]:
    """Per task and non-baseline method, Welch's t-test of final scores vs the baseline (paper protocol)."""
    rows = []
    for (task, method), runs in groups.items():
        if method == baseline or (task, baseline) not in groups:
            continue
        a = np.array([finals[r["rel"]] for r in runs])
        b = np.array([finals[r["rel"]] for r in groups[(task, baseline)]])
        row = {"task": task, "method": method, "baseline": baseline, "n": len(a), "n_baseline": len(b),
               "mean": float(a.mean()), "baseline_mean": float(b.mean()), "t": math.nan,
               "p_two_sided": math.nan, "p_greater": math.nan, "note": ""}
        if len(a) < 2 or len(b) < 2:
            row["note"] = "undefined: < 2 seeds on a side"
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # zero variance: scipy returns NaN, noted below
                two = stats.ttest_ind(a, b, equal_var=False)
                one = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
            row.update(t=float(two.statistic), p_two_sided=float(two.pvalue), p_greater=float(one.pvalue))
            if not math.isfinite(row["t"]):
                row["note"] = "undefined: zero variance on both sides"
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# Aggregates (rliable)
# --------------------------------------------------------------------------------------------


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


def _rectangular(per_task: list[list[dict]]) -> tuple[list[list[dict]], list[dict]]:
    """Same number of runs on every task (rliable's matrix): the smallest count, lowest seeds first."""
    n = min(len(runs) for runs in per_task)
    kept = [runs[:n] for runs in per_task]
    dropped = [r for runs in per_task for r in runs[n:]]
    return kept, dropped


def aggregate_final(matrices: dict[str, np.ndarray], baseline: str, reps: int, seed: int) -> dict:
    """IQM, mean, median (stratified bootstrap CIs) and probability of improvement over ``baseline``."""
    metric_names = ("iqm", "mean", "median")

    def metrics(scores: np.ndarray) -> np.ndarray:
        return np.array([rlm.aggregate_iqm(scores), rlm.aggregate_mean(scores), rlm.aggregate_median(scores)])

    points, cis = _interval(metrics, matrices, reps, seed)
    out: dict = {"methods": {}, "probability_of_improvement": {}}
    for method in matrices:
        out["methods"][method] = {
            name: {"point": float(points[method][i]), "ci": [float(cis[method][0, i]), float(cis[method][1, i])]}
            for i, name in enumerate(metric_names)
        }
    if baseline in matrices:
        pairs = {m: [matrices[m], matrices[baseline]] for m in matrices if m != baseline}
        if pairs:
            p_points, p_cis = _interval(rlm.probability_of_improvement, pairs, reps, seed)
            for m in pairs:
                out["probability_of_improvement"][m] = {
                    "vs": baseline,
                    "point": float(p_points[m]),
                    "ci": [float(np.ravel(p_cis[m])[0]), float(np.ravel(p_cis[m])[1])],
                }
    return out


def performance_profiles(matrices: dict[str, np.ndarray], reps: int, seed: int) -> dict:
    """Score distributions (fraction of runs with normalised score > tau) with bootstrap CIs."""
    pooled = np.concatenate([m.ravel() for m in matrices.values()])
    taus = np.linspace(min(0.0, float(pooled.min())), max(1.0, float(pooled.max())), 101)
    with _rliable_call(seed):
        profiles, cis = rly.create_performance_profile(matrices, taus, reps=reps)
    return {"taus": taus, "profiles": profiles, "cis": cis}


def iqm_per_frame(scores: np.ndarray) -> np.ndarray:
    """IQM of each frame of a ``(runs, tasks, frames)`` array: ``rliable.metrics.aggregate_iqm(scores[..., j])``
    for every ``j``, in one call.

    ``aggregate_iqm`` is ``scipy.stats.trim_mean(., 0.25, axis=None)`` of the ``(runs, tasks)`` matrix and has no
    axis argument; calling it per frame per bootstrap replication (~1 ms a call) made the sample-efficiency curve
    the slowest part of the report.
    """
    return stats.trim_mean(scores.reshape(-1, scores.shape[-1]), 0.25, axis=0)


def sample_efficiency(per_method: dict[str, list[list[dict]]], tasks: list[str], reps: int, seed: int) -> dict:
    """IQM (with CI) of the normalised evaluation return at each frame of the common evaluation grid.

    At each frame each task contributes the runs that have that evaluation, the same number on every task.
    Consecutive frames with the same runs form one ``(runs, tasks, frames)`` block and one bootstrap: runs are
    resampled once per replication for all the block's frames, as in rliable's own sample-efficiency examples.
    """
    out: dict = {}
    for method, per_task in per_method.items():
        evals = {r["rel"]: dict(zip(r["steps"].tolist(), r["returns"].tolist(), strict=True))
                 for runs in per_task for r in runs}
        grid = sorted(set.intersection(*({f for r in runs for f in evals[r["rel"]]} for runs in per_task)))
        blocks: list[tuple[tuple, list[int]]] = []  # (runs chosen per task, their frames)
        for frame in grid:
            avail = [[r["rel"] for r in runs if frame in evals[r["rel"]]] for runs in per_task]
            n = min(len(a) for a in avail)
            if n == 0:
                continue
            key = tuple(tuple(a[:n]) for a in avail)
            if blocks and blocks[-1][0] == key:
                blocks[-1][1].append(frame)
            else:
                blocks.append((key, [frame]))
        curve: dict = {"frames": [], "iqm": [], "ci_low": [], "ci_high": [], "runs_per_task": []}
        for key, frames in blocks:
            scores = np.stack(
                [np.array([normalise(task, [evals[rel][f] for f in frames]) for rel in rels])
                 for task, rels in zip(tasks, key, strict=True)],
                axis=1,
            )  # (runs, tasks, frames)
            points, cis = _interval(iqm_per_frame, {method: scores}, reps, seed)
            curve["frames"] += frames
            curve["iqm"] += points[method].tolist()
            curve["ci_low"] += cis[method][0].tolist()
            curve["ci_high"] += cis[method][1].tolist()
            curve["runs_per_task"] += [len(key[0])] * len(frames)
        out[method] = curve
    return out


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _colors(methods: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def curve_stats(runs: list[dict], task: str) -> dict[str, np.ndarray]:
    """Per evaluation frame of any of ``runs``: the number of runs evaluated there (``n``), their mean return and
    the 95% CI (Student t over those runs; NaN where n < 2). For a suite with bounded returns (DMC: 0..1000) the
    interval is clipped to the bounds: with two or three seeds a t-interval reaches far outside what a return
    can be, and drawn unclipped it flattens every curve on the plot."""
    frames = np.unique(np.concatenate([r["steps"] for r in runs]))
    n, mean, lo, hi = [], [], [], []
    for f in frames:
        vals = np.array([r["returns"][r["steps"] == f][0] for r in runs if f in r["steps"]])
        m = vals.mean()
        half = (stats.t.ppf(0.975, len(vals) - 1) * vals.std(ddof=1) / math.sqrt(len(vals))
                if len(vals) > 1 else math.nan)
        n.append(len(vals))
        mean.append(m)
        lo.append(m - half)
        hi.append(m + half)
    lo_arr, hi_arr = np.array(lo), np.array(hi)
    norm = normalisation(task)
    if norm is not None and norm["suite"] == "dmc":
        lo_arr, hi_arr = np.clip(lo_arr, 0.0, norm["max"]), np.clip(hi_arr, 0.0, norm["max"])
    return {"frames": frames, "n": np.array(n), "mean": np.array(mean), "lo": lo_arr, "hi": hi_arr}


def plot_task_curves(groups: dict[tuple[str, str], list[dict]], budgets: dict[str, int], colors: dict,
                     baseline: str, out_path: Path) -> None:
    """One subplot per task: mean and 95% CI (Student t over seeds) of the return at each evaluation step
    (`curve_stats`). Points evaluated by fewer runs than the method has (a sweep still running) are hollow and
    say how many."""
    tasks = sorted({t for t, _ in groups})
    ncols = min(len(tasks), 3)
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.8 * nrows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for i, method in enumerate(colors):
            runs = groups.get((task, method))
            if not runs:
                continue
            c = curve_stats(runs, task)
            ax.plot(c["frames"], c["mean"], "--" if method == baseline else "-", color=colors[method], lw=2,
                    label=f"{method} (n={len(runs)})")
            ax.fill_between(c["frames"], c["lo"], c["hi"], color=colors[method], alpha=0.2, lw=0)
            partial = c["n"] < len(runs)
            ax.plot(c["frames"][partial], c["mean"][partial], "o", mfc="white", color=colors[method], ms=5)
            for f, m, k in zip(c["frames"][partial], c["mean"][partial], c["n"][partial], strict=True):
                ax.annotate(f"n={k}", (f, m), textcoords="offset points", xytext=(4, 4 - 10 * i), fontsize=7,
                            color=colors[method])  # methods' labels apart where their means are close
        ax.axvline(budgets[task], color="grey", ls=":", lw=1, label=f"frame budget {budgets[task]:,}")
        ax.set_title(task)
        ax.set_xlabel("environment frames")
        ax.set_ylabel("evaluation return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    fig.suptitle("Evaluation return: mean and 95% CI over seeds", fontsize=11)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def plot_aggregates(agg: dict, colors: dict, out_path: Path) -> None:
    """rliable's interval-estimate plot of IQM / mean / median."""
    methods = list(agg["methods"])
    names = ["iqm", "mean", "median"]
    points = {m: np.array([agg["methods"][m][k]["point"] for k in names]) for m in methods}
    cis = {m: np.array([agg["methods"][m][k]["ci"] for k in names]).T for m in methods}
    height = 0.5 * len(methods)  # inches: rliable sizes the figure by rows; place the x label below the ticks
    fig, _ = plot_utils.plot_interval_estimates(points, cis, metric_names=["IQM", "Mean", "Median"],
                                                algorithms=methods, colors=colors,
                                                xlabel="normalised score (95% stratified-bootstrap CI)",
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
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


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
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def build_report(sweep: Path, out: Path, baseline: str = "dreamerv2", reps: int = 2000, seed: int = 0,
                 last_k: int = 1) -> dict:
    """Compute everything, write the figures, ``report.json`` and ``report.md``; return the JSON payload."""
    if not sweep.exists():
        raise ReportError(f"{sweep}: no such directory")
    if not sweep.is_dir():
        raise ReportError(f"{sweep}: not a directory")
    found = discover(sweep, skip=out.resolve() if out.resolve().is_relative_to(sweep.resolve()) else None)
    runs = found["runs"]
    if not runs:
        n_leaves = len(found["no_eval"]) + len(found["skipped"])
        if not n_leaves:
            raise ReportError(f"{sweep}: no run directory (config.json with task and method) found")
        raise ReportError(f"{sweep}: no run with an evaluation found ({n_leaves} run directories, none evaluated "
                          "or readable yet)")
    out.mkdir(parents=True, exist_ok=True)

    groups = {k: _sorted_group(v) for k, v in group_runs(runs).items()}
    tasks = sorted({t for t, _ in groups})
    methods = sorted({m for _, m in groups}, key=lambda m: (m != baseline, m))  # baseline first: same colours
    colors = _colors(methods)
    budgets = frame_budgets(runs)
    finals = {r["rel"]: final_score(r, budgets[r["task"]], last_k) for r in runs}

    # Per task.
    per_task: dict = {}
    for task in tasks:
        reached = [r["frames_reached"] for (t, _), rs in groups.items() if t == task for r in rs]
        limited_by = [r["rel"] for (t, _), rs in groups.items() if t == task for r in rs
                      if r["frames_reached"] == budgets[task]] if budgets[task] < max(reached) else []
        per_task[task] = {"normalisation": normalisation(task), "frame_budget": budgets[task],
                          "budget_limited_by": limited_by, "methods": {}}
        for (t, method), rs in groups.items():
            if t != task:
                continue
            scores = np.array([finals[r["rel"]] for r in rs])
            norm = normalise(task, scores)
            per_task[task]["methods"][method] = {
                "n": len(rs), "seeds": [r["seed"] for r in rs], "runs": [r["rel"] for r in rs],
                "final": scores.tolist(), "final_mean": float(scores.mean()), "final_std": _std(scores),
                "normalised": None if norm is None else norm.tolist(),
                "unfinished": [r["rel"] for r in rs if r["finished"] is False],
            }

    # Aggregates over the normalisable tasks, for the methods that cover them all.
    agg_tasks = [t for t in tasks if normalisation(t) is not None]
    excluded_tasks = {t: "no normalisation reference (not DMC, or an Atari game missing from the table)"
                      for t in tasks if t not in agg_tasks}
    excluded_methods, per_method, dropped = {}, {}, {}
    for method in methods:
        missing = [t for t in agg_tasks if (t, method) not in groups]
        if missing:
            excluded_methods[method] = f"no scored run on {', '.join(missing)}"
            continue
        if agg_tasks:
            kept, drop = _rectangular([groups[(t, method)] for t in agg_tasks])
            per_method[method] = kept
            if drop:
                dropped[method] = [r["rel"] for r in drop]
    matrices = {m: np.stack([normalise(t, np.array([finals[r["rel"]] for r in rs]))
                             for t, rs in zip(agg_tasks, per_task_runs, strict=True)], axis=1)
                for m, per_task_runs in per_method.items()}
    aggregate: dict = {"tasks": agg_tasks, "excluded_tasks": excluded_tasks, "excluded_methods": excluded_methods,
                       "runs_per_task": {m: int(x.shape[0]) for m, x in matrices.items()}, "dropped_runs": dropped,
                       "matrices": {m: x.tolist() for m, x in matrices.items()}, "methods": {},
                       "probability_of_improvement": {}, "performance_profile": None, "sample_efficiency": {}}
    files = {"curves": "curves.png"}
    plot_task_curves(groups, budgets, colors, baseline, out / files["curves"])
    if matrices:
        aggregate.update(aggregate_final(matrices, baseline, reps, seed))
        prof = performance_profiles(matrices, reps, seed)
        aggregate["performance_profile"] = {
            "taus": prof["taus"].tolist(),
            **{m: {"profile": prof["profiles"][m].tolist(), "ci_low": prof["cis"][m][0].tolist(),
                   "ci_high": prof["cis"][m][1].tolist()} for m in matrices},
        }
        aggregate["sample_efficiency"] = sample_efficiency(per_method, agg_tasks, reps, seed)
        files.update(aggregates="aggregates.png", performance_profile="performance_profile.png",
                     sample_efficiency="sample_efficiency.png")
        plot_aggregates(aggregate, colors, out / files["aggregates"])
        plot_profiles(prof, colors, out / files["performance_profile"])
        plot_sample_efficiency(aggregate["sample_efficiency"], colors, out / files["sample_efficiency"])

    payload = {
        "sweep": str(sweep), "generated": time.strftime("%Y-%m-%dT%H:%M:%S"), "baseline": baseline,
        "baseline_present": any(m == baseline for _, m in groups), "last_k": last_k, "reps": reps, "seed": seed,
        "rules": {
            "frame_budget": "per task, the largest frame count every scored run of the task reached "
                            "(min over runs of the last evaluation step)",
            "final_score": f"mean of the last {last_k} evaluation return(s) at or below the task's frame budget",
            "normalisation": "DMC return/1000; Atari (return - random)/(human - random), DQN Zoo table",
            "aggregates": "rliable stratified bootstrap, percentile 95% CI; methods with runs on every "
                          "normalisable task; same runs per task (smallest count, lowest seeds)",
            "welch": "scipy.stats.ttest_ind(equal_var=False) of final scores, method vs baseline, per task",
            "std": "sample std (ddof=1)",
        },
        "runs": [{"path": r["rel"], "task": r["task"], "method": r["method"], "config_method": r["config_method"],
                  "seed": r["seed"], "frames_reached": r["frames_reached"], "target_frames": r["target_frames"],
                  "finished": r["finished"], "n_evals": len(r["steps"]), "final": finals[r["rel"]]} for r in runs],
        "unfinished": [r["rel"] for r in runs if r["finished"] is False],
        "no_evaluation": found["no_eval"], "skipped": found["skipped"], "warnings": found["warnings"],
        "tasks": per_task, "aggregate": aggregate,
        "welch": welch_rows(groups, finals, baseline),
        "welch_over_evals": welch_table(groups, baseline) if any(m == baseline for _, m in groups) else [],
        "files": files | {"markdown": "report.md", "json": "report.json"},
    }
    payload = json_safe(payload)
    (out / "report.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "report.md").write_text(render_markdown(payload))
    return payload


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _f(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _ci(d: dict | None) -> str:
    return "n/a" if not d else f"{_f(d['point'])} [{_f(d['ci'][0])}, {_f(d['ci'][1])}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]


def render_markdown(p: dict) -> str:
    """``report.md`` from the JSON payload (so the two cannot disagree)."""
    agg, base = p["aggregate"], p["baseline"]
    evals = "evaluation return" if p["last_k"] == 1 else f"mean of the last {p['last_k']} evaluation returns"
    md = [f"# Sweep report: `{p['sweep']}`", "",
          f"Generated {p['generated']}. Baseline `{base}`"
          + ("" if p["baseline_present"] else " (**absent**: no comparison)")
          + f". A run's final score is its {evals} at its task's **frame budget**: the largest frame count that "
          "every run of the task has reached, so a still-running sweep is compared fairly. "
          f"Bootstrap: {p['reps']} replications, seed {p['seed']}.", ""]

    md += ["## Runs", "", f"{len(p['runs'])} scored run(s)."]
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

    md += ["", "## Per task", "", "Final return at the task's frame budget, mean ± std over seeds.", ""]
    rows = []
    for task, t in p["tasks"].items():
        for method, m in t["methods"].items():
            norm = m["normalised"]
            rows.append([task, method, str(m["n"]), f"{_f(m['final_mean'], '.1f')} ± {_f(m['final_std'], '.1f')}",
                         "n/a" if norm is None else _f(float(np.mean(norm))), f"{t['frame_budget']:,}",
                         str(len(m["unfinished"]))])
    md += _table(["task", "method", "n seeds", "final return", "normalised mean", "frames used", "unfinished"],
                 rows)
    limited = {task: t["budget_limited_by"] for task, t in p["tasks"].items() if t["budget_limited_by"]}
    if limited:
        md += ["", "Budgets lowered by: " + "; ".join(f"{task}: " + ", ".join(f"`{x}`" for x in v)
                                                     for task, v in limited.items())]

    md += ["", "## Aggregates over tasks (rliable)", ""]
    if not agg["methods"]:
        md += ["Nothing to aggregate (no method with runs on every normalisable task)."]
    else:
        md += [f"Tasks: {', '.join(agg['tasks'])}; normalised scores ({p['rules']['normalisation']}); "
               f"95% stratified-bootstrap CIs. Runs per task: "
               + ", ".join(f"{m} {n}" for m, n in agg["runs_per_task"].items()) + ".", ""]
        rows = [[m, _ci(a["iqm"]), _ci(a["mean"]), _ci(a["median"]),
                 _ci(agg["probability_of_improvement"].get(m)) if m != base else "(baseline)"]
                for m, a in agg["methods"].items()]
        md += _table(["method", "IQM [95% CI]", "mean [95% CI]", "median [95% CI]",
                      f"P(improvement over {base}) [95% CI]"], rows)
    notes = [f"- `{m}` not aggregated: {why}" for m, why in agg["excluded_methods"].items()]
    notes += [f"- task `{t}` not aggregated: {why}" for t, why in agg["excluded_tasks"].items()]
    notes += [f"- `{m}`: left out of the aggregates to keep the same runs per task: "
              + ", ".join(f"`{x}`" for x in rels) for m, rels in agg["dropped_runs"].items()]
    md += [""] + notes if notes else []

    md += ["", "## Welch t-test per task (paper protocol)", "",
           f"Final scores, method vs `{base}`: `scipy.stats.ttest_ind(equal_var=False)`; p two-sided and "
           "one-sided (method > baseline).", ""]
    if p["welch"]:
        md += _table(["task", "method", "n", f"n {base}", "mean", f"mean {base}", "t", "p (two-sided)",
                      "p (one-sided)", "note"],
                     [[w["task"], w["method"], str(w["n"]), str(w["n_baseline"]), _f(w["mean"], ".1f"),
                       _f(w["baseline_mean"], ".1f"), _f(w["t"]), _f(w["p_two_sided"], ".4f"),
                       _f(w["p_greater"], ".4f"), w["note"]] for w in p["welch"]])
    else:
        md += ["No comparison (baseline absent, or no other method on its tasks)."]

    md += ["", "## Figures", ""] + [f"- [{k}]({v})" for k, v in p["files"].items() if v.endswith(".png")]
    return "\n".join(md) + "\n"


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
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
    args = parser.parse_args(argv)
    if args.reps < 1 or args.last < 1:
        print("error: --reps and --last must be >= 1", file=sys.stderr)
        return 2
    sweep = Path(args.sweep)
    out = Path(args.out) if args.out else sweep / "report"
    try:
        payload = build_report(sweep, out, args.baseline, args.reps, args.seed, args.last)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for w in payload["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    if not payload["baseline_present"]:
        print(f"warning: baseline '{args.baseline}' not found; no probability of improvement or t-test",
              file=sys.stderr)
    print(f"{len(payload['runs'])} runs ({len(payload['unfinished'])} unfinished), "
          f"{len(payload['no_evaluation'])} without evaluation; wrote {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
