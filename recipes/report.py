"""Report on a sweep: per-task curves, rliable aggregates over tasks and the paper's Welch t-tests of the final
score and the area under the curve, what the weighter learned, and the world model's diagnostics.

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
* **Area under the curve** (``auc``), the second score: the mean of a run's evaluation returns at frames in
  ``(0, budget]``, every evaluation up to the task's frame budget with equal weight. The TEMPO paper's claim is
  sample efficiency, which a final score alone misses (two methods can end equal after one got there first). The
  step-0 evaluation is excluded: it scores the untrained policy, the same for every method up to initialisation
  noise, and would only dilute the difference. A run with no evaluation in ``(0, budget]`` (a budget of 0, or a
  coarser evaluation grid than the run that set the budget) has no AUC: it is left out of the AUC rows and, with
  its method, out of the AUC aggregates, and listed. The AUC is aggregated, tested and tabulated exactly like
  the final score (normalised the same way: the normalisation is affine, so the normalised AUC is the mean
  normalised return).
* **Normalisation**: DMC ``return / 1000`` (the maximum episode return); Atari human-normalised
  ``(return - random) / (human - random)`` with :data:`ATARI_RANDOM_HUMAN`. Other suites (``gym:``) and unknown
  games are reported per task but left out of the aggregates.
* **Aggregates** (rliable, stratified bootstrap, percentile 95% CIs, ``--reps`` replications): IQM, mean and
  median of the normalised final scores and, with the same runs, of the normalised AUCs (``aggregate.auc``);
  probability of improvement of each method over ``--baseline`` (of both scores);
  performance profiles; and a sample-efficiency curve (IQM against frames). Comparing aggregates over different
  task sets would be meaningless, so a method enters them only if it has scored runs on *every* normalisable
  task (others, e.g. a grid point run on one task, are listed as excluded). rliable needs a
  ``(runs, tasks)`` matrix, so each method uses the same number of runs on every task: the smallest count over
  tasks, lowest seeds first (dropped runs are listed). The bootstrap resamples runs within each task
  independently, so rows need not correspond to one seed.
* **Sample-efficiency curve**: on the evaluation steps present for every aggregated task; at each frame, the
  runs that have that evaluation (same runs-per-task rule), so unfinished runs drop out of the later points.
* **Paper protocol** beside it: per task, Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``) of the
  final scores (``welch``) and of the AUCs (``welch_auc``), method vs baseline: t, two-sided p and one-sided p
  (method > baseline, as in the TEMPO paper), n per side. The variant of :mod:`recipes.plot` (one-tailed,
  averaged over all common evaluation steps) is in ``report.json`` too.
* Per-task curves: mean and 95% CI (Student t, over seeds) of the return at each evaluation step, from the runs
  that have that evaluation; the task's frame budget is a dashed vertical line. Published returns of DreamerV3
  and the official DreamerV2 (:data:`ANCHORS`) are drawn for scale on the tasks that have them, as markers with
  ±1 std (over their seeds) error bars at their frame counts.
* **What the weighter learned** (``weights.png`` and a table): the training log's ``wm/weight_*`` statistics
  (:data:`WEIGHT_METRICS`; each log record holds the mean over the updates since the previous one) against
  frames, mean and 95% Student-t band over seeds, one row per task, one colour per method. Only *weighted* runs
  enter: runs that log a weight statistic other than ``wm/weight_std``, or a non-zero ``wm/weight_std``
  (DreamerV2 logs ``wm/weight_std = 0`` and none of the others; older runs log none of them). The table gives, per task
  and method, each statistic's **tail mean**: per run, the mean of its records at frames ``>= 0.8 F`` where ``F``
  is the last frame the run logged the statistic at (the last 20% of the frames it reached; each run its own, so
  a slow seed of a running sweep still counts), then mean ± std over the runs, with their number.
* **World-model diagnostics** (``diagnostics.png`` and a table, every method): the unweighted ``wm/kl``,
  decoder loss (``wm/state_loss``, or ``wm/image_loss`` for pixel runs), ``wm/reward_loss``, ``wm/post_ent``,
  ``agent/imag_return``, ``agent/actor_ent`` (:data:`DIAGNOSTIC_METRICS`) against frames; the same tail means.
* std is the sample std (``ddof=1``).

Outputs (``--out``, default ``SWEEP_DIR/report``): ``report.md``, ``report.json`` (every number),
``curves.png``, ``aggregates.png``, ``aggregates_auc.png``, ``performance_profile.png``,
``sample_efficiency.png`` (these four only when something can be aggregated), ``weights.png`` (only with a
weighted run), ``diagnostics.png`` (only when some run logs a diagnostic). Exit codes: 0 success, 2 bad input
(missing/empty ``SWEEP_DIR``, no run, no evaluation anywhere), reported as one ``error: ...`` line on stderr.

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
    "ANCHORS",
    "ATARI_RANDOM_HUMAN",
    "DIAGNOSTIC_METRICS",
    "DMC_MAX_RETURN",
    "WEIGHT_METRICS",
    "ReportError",
    "canonical_task",
    "normalisation",
    "normalise",
    "method_label",
    "load_series",
    "discover",
    "frame_budgets",
    "final_score",
    "auc_score",
    "welch_rows",
    "band_stats",
    "curve_stats",
    "anchors_for",
    "is_weighted",
    "tail_mean",
    "metric_table",
    "plot_metric_grid",
    "training_log_report",
    "per_task_table",
    "aggregate_report",
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

# Published returns for scale on the per-task curves: task -> [(label, frames, mean, std over seeds or None, source)].
# Means and sample stds (ddof=1) over the 5 seeds of each file, computed here from the files themselves.
#
# Units: both files count ENVIRONMENT FRAMES (agent steps x action repeat), so the points are drawn at these x:
# * DreamerV3, `scores/dmc_proprio-dreamerv3.json.gz`, added in danijar/dreamerv3 commit 2411f7d (2024-04-15; the
#   file is unchanged since). At that commit `dreamerv3/main.py` lines 121-133 (`make_logger`) build the logger with
#   `multiplier = config.env.get(<suite>, {}).get('repeat', 1)` (line 124), `dreamerv3/configs.yaml` line 84 sets
#   `env.dmc.repeat: 2`, and `embodied/core/logger.py` line 32 logs `step = int(self.step) * self.multiplier`,
#   while `embodied/run/train.py` line 69 increments `step` once per agent step. Also consistent: the file's x runs
#   to 4.9e5 while that commit's `dmc_proprio` config runs `run.steps: 3e5` agent steps (configs.yaml line 237),
#   i.e. 6e5 frames. (HEAD, e3f0224, keeps the multiplier, main.py lines 155 and 179, with `repeat: 1`.) Its y is
#   the return of *training* episodes (`episode/score`, train.py lines 37 and 58-61; main.py line 128 writes it to
#   `scores.jsonl`), given every 1e4 frames.
# * Official DreamerV2, `scores/dmc-vision-dreamerv2.json` (danijar/dreamerv2 commit 07d906e, pixels): its
#   `dreamerv2/train.py` line 68 builds `common.Logger(step, outputs, multiplier=config.action_repeat)` and
#   `dreamerv2/common/logger.py` line 20 logs `int(self._step) * self._multiplier`; `step` counts agent steps
#   (train.py line 134), `dmc_vision` has `action_repeat: 2` (configs.yaml line 123). Its y is the evaluation return
#   (`eval_return`, train.py line 103), given every 3e4 frames: the point nearest 1e5 frames is at 9e4 (the next is
#   at 1.2e5), and it is drawn there.
_DV3_PROPRIO = "danijar/dreamerv3 scores/dmc_proprio-dreamerv3.json.gz (proprio, training episodes, 5 seeds)"
_DV2_PIXELS = "danijar/dreamerv2 scores/dmc-vision-dreamerv2.json (pixels, evaluation episodes, 5 seeds)"
_V3, _V2 = "DreamerV3 (proprio)", "DreamerV2 official (pixels)"
ANCHORS: dict[str, list[tuple[str, int, float, float | None, str]]] = {
    "cartpole_swingup": [(_V3, 20_000, 189.0, 29.7, _DV3_PROPRIO), (_V3, 100_000, 527.7, 40.7, _DV3_PROPRIO),
                         (_V2, 90_000, 386.8, 145.0, _DV2_PIXELS)],
    "finger_spin": [(_V3, 20_000, 36.2, 36.0, _DV3_PROPRIO), (_V3, 100_000, 765.8, 82.2, _DV3_PROPRIO),
                    (_V2, 90_000, 322.9, 158.0, _DV2_PIXELS)],
    "reacher_easy": [(_V3, 20_000, 36.2, 44.7, _DV3_PROPRIO), (_V3, 100_000, 693.4, 385.6, _DV3_PROPRIO),
                     (_V2, 90_000, 211.0, 38.0, _DV2_PIXELS)],
    "walker_stand": [(_V3, 20_000, 196.5, 27.9, _DV3_PROPRIO), (_V3, 100_000, 767.3, 164.1, _DV3_PROPRIO),
                     (_V2, 90_000, 669.7, 151.4, _DV2_PIXELS)],
    "walker_walk": [(_V3, 20_000, 88.5, 31.6, _DV3_PROPRIO), (_V3, 100_000, 475.2, 175.3, _DV3_PROPRIO),
                    (_V2, 90_000, 408.2, 65.0, _DV2_PIXELS)],
}

# Training-log statistics of the sample weights (means over the updates since the previous log record).
WEIGHT_METRICS = ("wm/weight_std", "wm/weight_upper_corr", "wm/weight_reward_corr", "wm/weight_phase_corr",
                  "wm/weight_episode_start", "wm/weight_chunk_start")
# What a DreamerV2 user looks at when a task does not learn; a panel shows the first of its keys a run logs
# (`wm/state_loss` for proprioceptive runs, `wm/image_loss` for pixel runs).
DIAGNOSTIC_METRICS: tuple[tuple[str, ...], ...] = (
    ("wm/kl",), ("wm/state_loss", "wm/image_loss"), ("wm/reward_loss",), ("wm/post_ent",), ("agent/imag_return",),
    ("agent/actor_ent",))
# Reference lines on the weight panels: no correlation, and the batch's mean weight (ratios to it).
_METRIC_REFERENCE = {"wm/weight_upper_corr": 0.0, "wm/weight_reward_corr": 0.0, "wm/weight_phase_corr": 0.0,
                     "wm/weight_episode_start": 1.0, "wm/weight_chunk_start": 1.0}
_METRIC_BOUNDS = {k: (-1.0, 1.0) for k in WEIGHT_METRICS if k.endswith("_corr")}  # clip t-bands to what can be
TAIL_FRACTION = 0.2  # tail means: the last 20% of the frames each run reached

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


def load_series(leaf: Path, keys: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The training log's ``keys`` of one run: ``{key: (frames, values)}``, sorted by frame, finite numbers only.

    :func:`recipes.plot.load_run` keeps only the evaluation records; the weight and world-model statistics are on
    every log record. A frame logged twice (a resumed run) keeps its last record, as ``load_run`` does. Lines that
    do not parse are skipped silently: ``load_run`` has already warned about them.
    """
    found: dict[str, dict[int, float]] = {k: {} for k in keys}
    with (leaf / "metrics.jsonl").open() as fh:
        for line in fh:
            try:
                rec = json.loads(line)
                step = int(rec["step"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
            for key in keys:
                value = rec.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    found[key][step] = float(value)
    return {k: (np.array(sorted(v), dtype=np.int64), np.array([v[f] for f in sorted(v)], dtype=np.float64))
            for k, v in found.items() if v}


SERIES_KEYS = WEIGHT_METRICS + tuple(k for alternatives in DIAGNOSTIC_METRICS for k in alternatives)


def discover(sweep: Path, skip: Path | None = None) -> dict:
    """Find and load every run under ``sweep``.

    Returns ``{"runs", "no_eval", "skipped", "warnings"}``: ``runs`` are :func:`recipes.plot.load_run` dicts
    with ``method`` replaced by the label (see :func:`method_label`) and ``task`` canonicalised, plus
    ``config_method``, ``rel`` (path relative to the sweep), ``target_frames`` (config ``run.steps``),
    ``frames_reached`` (last evaluation step), ``finished`` and ``series`` (:func:`load_series` of
    :data:`SERIES_KEYS`); ``no_eval`` lists leaves with no evaluation;
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
            series=load_series(leaf, SERIES_KEYS),
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


def auc_score(run: dict, budget: int) -> float | None:
    """Area under the curve: the mean of the run's evaluation returns at frames in ``(0, budget]``.

    Every evaluation up to the budget counts equally, so a method that learns sooner scores higher even when the
    final scores end equal. Step 0 (the untrained policy) is left out; None if no evaluation is in the range.
    """
    returns = run["returns"][(run["steps"] > 0) & (run["steps"] <= budget)]
    return float(returns.mean()) if len(returns) else None


def _std(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if len(x) > 1 else math.nan


def _sorted_group(runs: list[dict]) -> list[dict]:
    return sorted(runs, key=lambda r: (_seed_key(r["seed"]), r["rel"]))


def _scored(runs: list[dict], scores: dict[str, float | None]) -> np.ndarray:
    """The runs' scores, runs without one (an AUC with no evaluation in range) left out."""
    return np.array([scores[r["rel"]] for r in runs if scores[r["rel"]] is not None], dtype=np.float64)


def welch_rows(groups: dict[tuple[str, str], list[dict]], scores: dict[str, float | None],
               baseline: str) -> list[dict]:
    """Per task and non-baseline method, Welch's t-test of a score (final or AUC) vs the baseline (paper protocol).

    Runs with no score (None) are left out, so ``n`` counts the runs tested."""
    rows = []
    for (task, method), runs in groups.items():
        if method == baseline or (task, baseline) not in groups:
            continue
        a, b = _scored(runs, scores), _scored(groups[(task, baseline)], scores)
        row = {"task": task, "method": method, "baseline": baseline, "n": len(a), "n_baseline": len(b),
               "mean": float(a.mean()) if len(a) else math.nan,
               "baseline_mean": float(b.mean()) if len(b) else math.nan, "t": math.nan,
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


def band_stats(series: list[tuple[np.ndarray, np.ndarray]],
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


def curve_stats(runs: list[dict], task: str) -> dict[str, np.ndarray]:
    """:func:`band_stats` of the runs' evaluation returns; for a suite with bounded returns (DMC: 0..1000) the
    interval is clipped to the bounds."""
    norm = normalisation(task)
    bounds = (0.0, norm["max"]) if norm is not None and norm["suite"] == "dmc" else None
    return band_stats([(r["steps"], r["returns"]) for r in runs], bounds)


def anchors_for(tasks: list[str]) -> dict[str, list[dict]]:
    """:data:`ANCHORS` of the sweep's tasks, as JSON-ready dicts; tasks without published returns are absent."""
    keys = ("label", "frames", "mean", "std", "source")
    return {t: [dict(zip(keys, a, strict=True)) for a in ANCHORS[t]] for t in tasks if t in ANCHORS}


_ANCHOR_STYLE = (("s", "black"), ("D", "dimgrey"), ("^", "saddlebrown"), ("v", "purple"))


def _draw_anchors(ax: plt.Axes, anchors: list[dict]) -> None:
    """Published returns as markers with ±1 std error bars at their frame counts, one legend entry per source."""
    for i, label in enumerate(dict.fromkeys(a["label"] for a in anchors)):
        marker, color = _ANCHOR_STYLE[i % len(_ANCHOR_STYLE)]
        pts = [a for a in anchors if a["label"] == label]
        yerr = [a["std"] if a["std"] is not None else 0.0 for a in pts]
        ax.errorbar([a["frames"] for a in pts], [a["mean"] for a in pts], yerr=yerr, fmt=marker, color=color,
                    mfc="none", ms=6, capsize=3, lw=1, label=f"{label} (published, ±1 std)")


def plot_task_curves(groups: dict[tuple[str, str], list[dict]], budgets: dict[str, int], colors: dict,
                     baseline: str, out_path: Path, anchors: dict[str, list[dict]] | None = None) -> None:
    """One subplot per task: mean and 95% CI (Student t over seeds) of the return at each evaluation step
    (`curve_stats`). Points evaluated by fewer runs than the method has (a sweep still running) are hollow and
    say how many. ``anchors`` (:func:`anchors_for`) are drawn on their tasks for scale."""
    anchors = anchors or {}
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
                    marker="o" if len(c["frames"]) < 2 else "", label=f"{method} (n={len(runs)})")  # 1 point: seen
            ax.fill_between(c["frames"], c["lo"], c["hi"], color=colors[method], alpha=0.2, lw=0)
            partial = c["n"] < len(runs)
            ax.plot(c["frames"][partial], c["mean"][partial], "o", mfc="white", color=colors[method], ms=5)
            for f, m, k in zip(c["frames"][partial], c["mean"][partial], c["n"][partial], strict=True):
                ax.annotate(f"n={k}", (f, m), textcoords="offset points", xytext=(4, 4 - 10 * i), fontsize=7,
                            color=colors[method])  # methods' labels apart where their means are close
        ax.axvline(budgets[task], color="grey", ls=":", lw=1, label=f"frame budget {budgets[task]:,}")
        _draw_anchors(ax, anchors.get(task, []))
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


def plot_aggregates(agg: dict, colors: dict, out_path: Path,
                    xlabel: str = "normalised score (95% stratified-bootstrap CI)") -> None:
    """rliable's interval-estimate plot of IQM / mean / median (of the final scores, or of the AUCs)."""
    methods = list(agg["methods"])
    names = ["iqm", "mean", "median"]
    points = {m: np.array([agg["methods"][m][k]["point"] for k in names]) for m in methods}
    cis = {m: np.array([agg["methods"][m][k]["ci"] for k in names]).T for m in methods}
    height = 0.5 * len(methods)  # inches: rliable sizes the figure by rows; place the x label below the ticks
    fig, _ = plot_utils.plot_interval_estimates(points, cis, metric_names=["IQM", "Mean", "Median"],
                                                algorithms=methods, colors=colors,
                                                xlabel=xlabel,
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
# Training-log statistics: what the weighter learned, world-model diagnostics
# --------------------------------------------------------------------------------------------


def is_weighted(run: dict) -> bool:
    """Whether the run's sample weights were ever non-uniform: it logs a weight statistic other than
    ``wm/weight_std`` (only logged for non-uniform weights) or a non-zero ``wm/weight_std`` (DreamerV2 logs 0)."""
    series = run.get("series", {})
    if any(k in series for k in WEIGHT_METRICS if k != "wm/weight_std"):
        return True
    return "wm/weight_std" in series and bool((series["wm/weight_std"][1] > 0).any())


def metric_name(alternatives: tuple[str, ...]) -> str:
    """A panel's or column's name: its key, or its alternative keys (``wm/state_loss or wm/image_loss``)."""
    return " or ".join(alternatives)


def metric_key(run: dict, alternatives: tuple[str, ...]) -> str | None:
    """The first of ``alternatives`` the run logs, None if none."""
    return next((k for k in alternatives if k in run.get("series", {})), None)


def tail_mean(frames: np.ndarray, values: np.ndarray, fraction: float = TAIL_FRACTION) -> float:
    """Mean of the values logged in the last ``fraction`` of the frames reached: at frames >= (1 - fraction) F,
    F the last frame logged (sorted ``frames``). The tolerance keeps a record exactly at 0.8 F inside."""
    start = (1.0 - fraction) * frames[-1] * (1.0 - 1e-12)
    return float(values[frames >= start].mean())


def metric_table(groups: dict[tuple[str, str], list[dict]], metrics: tuple[tuple[str, ...], ...]) -> dict:
    """Per task and method, per metric (:func:`metric_name`): the runs' :func:`tail_mean` (``runs``), their mean,
    std and number, the keys read and the frames each run reached (``frames``: the last frame it logged a metric).
    Runs logging none of ``metrics`` are left out; a group with none of them is absent."""
    out: dict = {}
    for (task, method), runs in groups.items():
        cells, frames = {}, {}
        for alternatives in metrics:
            per_run, keys = {}, set()
            for r in runs:
                key = metric_key(r, alternatives)
                if key is None:
                    continue
                steps, values = r["series"][key]
                per_run[r["rel"]] = tail_mean(steps, values)
                frames[r["rel"]] = max(frames.get(r["rel"], 0), int(steps[-1]))
                keys.add(key)
            if per_run:
                vals = np.array(list(per_run.values()))
                cells[metric_name(alternatives)] = {"mean": float(vals.mean()), "std": _std(vals), "n": len(vals),
                                                    "keys": sorted(keys), "runs": per_run}
        if cells:
            out.setdefault(task, {})[method] = {"n": len(frames), "frames": frames, "metrics": cells}
    return out


def _metric_panel(ax: plt.Axes, groups: dict[tuple[str, str], list[dict]], task: str,
                  alternatives: tuple[str, ...], colors: dict, baseline: str) -> set[str]:
    """One metric of one task, every method: mean and 95% t-band over its runs (:func:`band_stats`)."""
    used: set[str] = set()
    for method in colors:
        series = []
        for r in groups.get((task, method), []):
            key = metric_key(r, alternatives)
            if key is not None:
                series.append(r["series"][key])
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


def plot_metric_grid(groups: dict[tuple[str, str], list[dict]], metrics: tuple[tuple[str, ...], ...],
                     colors: dict, baseline: str, out_path: Path, title: str) -> None:
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
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def _with(groups: dict[tuple[str, str], list[dict]], keep: Callable[[dict], bool]) -> dict:
    """``groups`` restricted to the runs ``keep`` accepts; groups left empty are dropped."""
    kept = {k: [r for r in rs if keep(r)] for k, rs in groups.items()}
    return {k: rs for k, rs in kept.items() if rs}


def training_log_report(groups: dict[tuple[str, str], list[dict]], colors: dict, baseline: str,
                        out: Path) -> tuple[dict, dict]:
    """The weight statistics of the weighted runs and the world-model diagnostics of every run: tables, and
    ``weights.png`` / ``diagnostics.png`` when there is something to draw. Returns (payload part, files)."""
    weighted = _with(groups, is_weighted)
    logs_diag = _with(groups, lambda r: any(metric_key(r, a) for a in DIAGNOSTIC_METRICS))
    weight_metrics = tuple((k,) for k in WEIGHT_METRICS)
    files = {}
    if weighted:
        files["weights"] = "weights.png"
        plot_metric_grid(weighted, weight_metrics, colors, baseline, out / files["weights"],
                         "What the weighter learned: mean and 95% CI over seeds (weighted runs)")
    if logs_diag:
        files["diagnostics"] = "diagnostics.png"
        plot_metric_grid(logs_diag, DIAGNOSTIC_METRICS, colors, baseline, out / files["diagnostics"],
                         "World model and agent (unweighted): mean and 95% CI over seeds")
    part = {"tail_fraction": TAIL_FRACTION,
            "weights": {"metrics": list(WEIGHT_METRICS), "tasks": metric_table(weighted, weight_metrics)},
            "diagnostics": {"metrics": [metric_name(a) for a in DIAGNOSTIC_METRICS],
                            "tasks": metric_table(logs_diag, DIAGNOSTIC_METRICS)}}
    return part, files


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def _score_entry(task: str, runs: list[dict], scores: dict[str, float | None], name: str, norm_key: str) -> dict:
    """One score of one (task, method): per run (None: no score), mean and std over the scored runs, and the
    scored runs' normalised scores (``norm_key``; None for a task with no normalisation)."""
    scored = _scored(runs, scores)
    norm = normalise(task, scored)
    return {name: [scores[r["rel"]] for r in runs], f"{name}_mean": float(scored.mean()) if len(scored) else math.nan,
            f"{name}_std": _std(scored), norm_key: None if norm is None else norm.tolist()}


def per_task_table(groups: dict[tuple[str, str], list[dict]], budgets: dict[str, int],
                   finals: dict[str, float], aucs: dict[str, float | None]) -> dict:
    """Per task: normalisation, frame budget (and the runs that set it below the others), and per method the
    final scores and AUCs of its runs."""
    per_task: dict = {}
    for task in sorted({t for t, _ in groups}):
        in_task = [r for (t, _), rs in groups.items() if t == task for r in rs]
        top = max(r["frames_reached"] for r in in_task)
        per_task[task] = {"normalisation": normalisation(task), "frame_budget": budgets[task],
                          "budget_limited_by": [r["rel"] for r in in_task if r["frames_reached"] == budgets[task]]
                          if budgets[task] < top else [], "methods": {}}
        for (t, method), rs in groups.items():
            if t != task:
                continue
            per_task[task]["methods"][method] = {
                "n": len(rs), "seeds": [r["seed"] for r in rs], "runs": [r["rel"] for r in rs],
                **_score_entry(task, rs, finals, "final", "normalised"),
                **_score_entry(task, rs, aucs, "auc", "auc_normalised"),
                "auc_evals": [int(((r["steps"] > 0) & (r["steps"] <= budgets[task])).sum()) for r in rs],
                "unfinished": [r["rel"] for r in rs if r["finished"] is False],
            }
    return per_task


def _matrices(per_method: dict[str, list[list[dict]]], tasks: list[str],
              scores: dict[str, float | None]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(runs, tasks)`` normalised score matrices; a method with a run lacking the score (an AUC with no
    evaluation in range) is excluded, with why: rliable's matrices cannot have holes."""
    matrices, excluded = {}, {}
    for method, per_task_runs in per_method.items():
        missing = [r["rel"] for rs in per_task_runs for r in rs if scores[r["rel"]] is None]
        if missing:
            excluded[method] = f"no evaluation in (0, frame budget] for {', '.join(missing)}"
            continue
        matrices[method] = np.stack([normalise(t, np.array([scores[r["rel"]] for r in rs]))
                                     for t, rs in zip(tasks, per_task_runs, strict=True)], axis=1)
    return matrices, excluded


def aggregate_report(groups: dict[tuple[str, str], list[dict]], methods: list[str], finals: dict[str, float],
                     aucs: dict[str, float | None], baseline: str, reps: int, seed: int) -> tuple[dict, dict, dict]:
    """The rliable part: which tasks and methods aggregate, the matrices, IQM / mean / median / probability of
    improvement of the final scores and (``auc``) of the AUCs, performance profiles and the sample-efficiency curve.
    Returns (aggregate payload, final-score matrices, performance profiles or None)."""
    tasks = sorted({t for t, _ in groups})
    agg_tasks = [t for t in tasks if normalisation(t) is not None]
    excluded_methods, per_method, dropped = {}, {}, {}
    for method in methods:
        missing = [t for t in agg_tasks if (t, method) not in groups]
        if missing:
            excluded_methods[method] = f"no scored run on {', '.join(missing)}"
        elif agg_tasks:
            per_method[method], drop = _rectangular([groups[(t, method)] for t in agg_tasks])
            if drop:
                dropped[method] = [r["rel"] for r in drop]
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
    aggregate["performance_profile"] = {
        "taus": prof["taus"].tolist(),
        **{m: {"profile": prof["profiles"][m].tolist(), "ci_low": prof["cis"][m][0].tolist(),
               "ci_high": prof["cis"][m][1].tolist()} for m in matrices},
    }
    aggregate["sample_efficiency"] = sample_efficiency(per_method, agg_tasks, reps, seed)
    return aggregate, matrices, prof


def _aggregate_figures(aggregate: dict, prof: dict, colors: dict, out: Path) -> dict:
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


def _discover_or_fail(sweep: Path, out: Path) -> dict:
    """:func:`discover`, raising :class:`ReportError` when there is nothing to report on."""
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


def _rules(last_k: int) -> dict[str, str]:
    return {
        "frame_budget": "per task, the largest frame count every scored run of the task reached "
                        "(min over runs of the last evaluation step)",
        "final_score": f"mean of the last {last_k} evaluation return(s) at or below the task's frame budget",
        "auc": "area under the curve: mean of the evaluation returns at frames in (0, frame budget], step 0 "
               "(untrained policy) excluded; None if there is none",
        "normalisation": "DMC return/1000; Atari (return - random)/(human - random), DQN Zoo table",
        "aggregates": "rliable stratified bootstrap, percentile 95% CI; methods with runs on every "
                      "normalisable task; same runs per task (smallest count, lowest seeds)",
        "welch": "scipy.stats.ttest_ind(equal_var=False) of final scores (welch) and AUCs (welch_auc), method vs "
                 "baseline, per task",
        "tail_mean": f"per run, mean of the records at frames >= {1 - TAIL_FRACTION:g} x the last frame it logged "
                     "the metric at; then mean and std over runs",
        "anchors": "published returns (mean, std over seeds), x in environment frames (agent steps x action repeat)",
        "std": "sample std (ddof=1)",
    }


def build_report(sweep: Path, out: Path, baseline: str = "dreamerv2", reps: int = 2000, seed: int = 0,
                 last_k: int = 1) -> dict:
    """Compute everything, write the figures, ``report.json`` and ``report.md``; return the JSON payload."""
    found = _discover_or_fail(sweep, out)
    runs = found["runs"]
    out.mkdir(parents=True, exist_ok=True)

    groups = {k: _sorted_group(v) for k, v in group_runs(runs).items()}
    tasks = sorted({t for t, _ in groups})
    methods = sorted({m for _, m in groups}, key=lambda m: (m != baseline, m))  # baseline first: same colours
    colors = _colors(methods)
    budgets = frame_budgets(runs)
    finals = {r["rel"]: final_score(r, budgets[r["task"]], last_k) for r in runs}
    aucs = {r["rel"]: auc_score(r, budgets[r["task"]]) for r in runs}
    anchors = anchors_for(tasks)

    aggregate, matrices, prof = aggregate_report(groups, methods, finals, aucs, baseline, reps, seed)
    files = {"curves": "curves.png"}
    plot_task_curves(groups, budgets, colors, baseline, out / files["curves"], anchors)
    if matrices:
        files.update(_aggregate_figures(aggregate, prof, colors, out))
    logs, log_files = training_log_report(groups, colors, baseline, out)
    files.update(log_files)

    baseline_present = any(m == baseline for _, m in groups)
    payload = {
        "sweep": str(sweep), "generated": time.strftime("%Y-%m-%dT%H:%M:%S"), "baseline": baseline,
        "baseline_present": baseline_present, "last_k": last_k, "reps": reps, "seed": seed, "rules": _rules(last_k),
        "runs": [{"path": r["rel"], "task": r["task"], "method": r["method"], "config_method": r["config_method"],
                  "seed": r["seed"], "frames_reached": r["frames_reached"], "target_frames": r["target_frames"],
                  "finished": r["finished"], "n_evals": len(r["steps"]), "final": finals[r["rel"]],
                  "auc": aucs[r["rel"]], "weighted": is_weighted(r)} for r in runs],
        "unfinished": [r["rel"] for r in runs if r["finished"] is False],
        "no_evaluation": found["no_eval"], "skipped": found["skipped"], "warnings": found["warnings"],
        "tasks": per_task_table(groups, budgets, finals, aucs), "aggregate": aggregate,
        "welch": welch_rows(groups, finals, baseline), "welch_auc": welch_rows(groups, aucs, baseline),
        "welch_over_evals": welch_table(groups, baseline) if baseline_present else [],
        "anchors": anchors, **logs,
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


def _md_runs(p: dict) -> list[str]:
    md = ["## Runs", "", f"{len(p['runs'])} scored run(s)."]
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
    return md


def _md_per_task(p: dict) -> list[str]:
    md = ["## Per task", "", "Final return at the task's frame budget, mean ± std over seeds.", ""]
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
               f"95% stratified-bootstrap CIs. Runs per task: "
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
                   "p (one-sided)", "note"],
                  [[w["task"], w["method"], str(w["n"]), str(w["n_baseline"]), _f(w["mean"], ".1f"),
                    _f(w["baseline_mean"], ".1f"), _f(w["t"]), _f(w["p_two_sided"], ".4f"),
                    _f(w["p_greater"], ".4f"), w["note"]] for w in rows])


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
                         f"{_f(m['auc_mean'], '.1f')} ± {_f(m['auc_std'], '.1f')}",
                         "n/a" if not norm else _f(float(np.mean(norm))),
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
           "step by the action repeat (`recipes/report.py`, comment above `ANCHORS`). DreamerV3's returns are of "
           "training episodes, DreamerV2's of evaluation episodes, on pixels; DreamerV2's file gives a point "
           "every 3e4 frames, so 9e4 stands in for 1e5.", ""]
    rows = [[task, a["label"], f"{a['frames']:,}", f"{_f(a['mean'], '.1f')} ± {_f(a['std'], '.1f')}", a["source"]]
            for task, anchors in p["anchors"].items() for a in anchors]
    return md + _table(["task", "reference", "frames", "return", "source"], rows)


def _md_metric_table(part: dict) -> list[str]:
    """Tail means per task and method: ``mean ± std`` over the runs, ``(n=k)`` where fewer runs log it."""
    rows = []
    for task, methods in part["tasks"].items():
        for method, g in methods.items():
            frames = list(g["frames"].values())
            cells = []
            for name in part["metrics"]:
                c = g["metrics"].get(name)
                cells.append("n/a" if c is None else f"{_f(c['mean'])} ± {_f(c['std'])}"
                             + (f" (n={c['n']})" if c["n"] < g["n"] else ""))
            rows.append([task, method, str(g["n"]), f"{min(frames):,}–{max(frames):,}", *cells])
    return _table(["task", "method", "n seeds", "frames reached", *(f"`{m}`" for m in part["metrics"])], rows)


def _md_training_logs(p: dict) -> list[str]:
    tail = f"the last {p['tail_fraction']:.0%} of the frames each run reached"
    md = ["## What the weighter learned", ""]
    if not p["weights"]["tasks"]:
        md += ["No weighted run (no `wm/weight_*` statistic, or uniform weights only): no `weights.png`."]
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


def render_markdown(p: dict) -> str:
    """``report.md`` from the JSON payload (so the two cannot disagree)."""
    base = p["baseline"]
    evals = "evaluation return" if p["last_k"] == 1 else f"mean of the last {p['last_k']} evaluation returns"
    md = [f"# Sweep report: `{p['sweep']}`", "",
          f"Generated {p['generated']}. Baseline `{base}`"
          + ("" if p["baseline_present"] else " (**absent**: no comparison)")
          + f". A run's final score is its {evals} at its task's **frame budget**: the largest frame count that "
          "every run of the task has reached, so a still-running sweep is compared fairly. Its area under the "
          "curve (AUC) is the mean of its evaluation returns after step 0 up to that budget. "
          f"Bootstrap: {p['reps']} replications, seed {p['seed']}.", ""]
    md += _md_runs(p) + [""] + _md_per_task(p) + [""] + _md_aggregates(p)
    md += ["", "## Welch t-test per task (paper protocol)", "",
           f"Final scores, method vs `{base}`: `scipy.stats.ttest_ind(equal_var=False)`; p two-sided and "
           "one-sided (method > baseline).", ""] + _md_welch(p["welch"], base)
    md += [""] + _md_auc(p) + [""] + _md_anchors(p) + [""] + _md_training_logs(p)
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
