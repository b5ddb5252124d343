"""Finding and reading run directories: the one loader of ``config.json`` + ``metrics.jsonl`` behind both the
sweep report and ``python -m recipes.plot``, the sweep walk, method labels and grouping.

A run's files are read once, into a :class:`Run` that holds its evaluations and every numeric series of its
training log, so a statistic never goes back to the disk and the two commands cannot disagree on what a run holds.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from recipes.report.tasks import canonical_task

__all__ = ["BOOKKEEPING_FIELDS", "DIAGNOSTIC_METRICS", "FLAG_WEIGHT_METRICS", "WEIGHT_METRICS", "Groups", "ReportError",
           "Run", "Series", "discover", "flat_config", "group_runs", "is_weighted", "label_variants", "load_run",
           "method_label", "metric_key", "metric_name", "seed_key"]

# The mean weight where a boolean `log_<flag>` of the replay is set, over the batch mean (`wm/weight_<flag>`).
FLAG_WEIGHT_METRICS = ("wm/weight_distractor_on",)
# Training-log statistics of the sample weights (means over the updates since the previous log record).
WEIGHT_METRICS = ("wm/weight_std", "wm/weight_upper_corr", "wm/weight_reward_corr", "wm/weight_phase_corr",
                  "wm/weight_episode_start", "wm/weight_chunk_start", *FLAG_WEIGHT_METRICS)
# What a DreamerV2 user looks at when a task does not learn; a panel shows the first of its keys a run logs
# (`wm/state_loss` for proprioceptive runs, `wm/image_loss` for pixel runs).
DIAGNOSTIC_METRICS: tuple[tuple[str, ...], ...] = (
    ("wm/kl",), ("wm/state_loss", "wm/image_loss"), ("wm/reward_loss",), ("wm/post_ent",), ("agent/imag_return",),
    ("agent/actor_ent",))

# Config fields that say where, how fast, how long or how often a run went, not what it computed: runs that differ
# only in them are seeds of one method. `run.precision` is one of them because `precision_resolved` (what `auto`
# became) is the one that says what the run computed in.
BOOKKEEPING_FIELDS = frozenset({
    "seed", "history", "run.seed", "run.logdir", "run.steps", "run.device", "run.threads", "run.precision",
    "run.progress_every", "run.log_every", "run.video_every", "run.checkpoint_every", "run.max_nonfinite"})

SKIP_DIRS = frozenset({"replay", "tb"})  # big run sub-folders that never hold a run's config.json
_SEED_DIR = re.compile(r"(?:seed|s)?[-_=]?(\d+)", re.IGNORECASE)

Series = tuple[np.ndarray, np.ndarray]  # (frames int64, values float64), sorted by frame


class ReportError(ValueError):
    """Bad input (not a run directory, no sweep, no run, no evaluation): both commands print it as one
    ``error: ...`` line and exit with code 2."""


@dataclass(eq=False)  # identity: arrays have no single truth value
class Run:
    """One run directory, read once.

    ``steps``/``returns`` are the evaluation records sorted by step; ``series`` every finite numeric key of the
    training log as ``(frames, values)``. A frame or step logged twice (a resumed run) keeps its last record.
    ``method`` is the config's method until :func:`discover` replaces it with the sweep's label; ``rel`` is the path
    relative to the sweep (the path as given outside one), the key every score table uses.
    """

    path: str
    task: str
    method: str
    seed: object
    steps: np.ndarray
    returns: np.ndarray
    series: dict[str, Series] = field(default_factory=dict)
    target_frames: int | None = None
    config_method: str = ""
    rel: str = ""
    config: dict = field(default_factory=dict)

    @property
    def frames_reached(self) -> int:
        """The last evaluation step (only for a run with an evaluation)."""
        return int(self.steps[-1])

    @property
    def finished(self) -> bool | None:
        """Whether the run reached its config's ``run.steps``; None when the config does not say."""
        return None if self.target_frames is None else self.frames_reached >= self.target_frames


Groups = dict[tuple[str, str], list[Run]]  # (task, method) -> its runs, as :func:`group_runs` makes them


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------


def _read_config(path: Path) -> dict:
    """``path/config.json`` as a dict with ``task`` and ``method``, else a :class:`ReportError` naming ``path``."""
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: cannot parse config.json ({exc})") from exc
    if not isinstance(cfg, dict):
        raise ReportError(f"{path}: config.json is not a JSON object")
    for key in ("task", "method"):
        if key not in cfg:
            raise ReportError(f"{path}: config.json has no '{key}' key")
    return cfg


def _add_eval(rec: dict, evals: dict[int, float], where: str) -> None:
    """Record ``rec``'s evaluation return, if it is an evaluation record; warn when it is malformed."""
    if "eval_return" not in rec:
        return  # training log
    try:
        evals[int(rec["step"])] = float(rec["eval_return"])
    except (KeyError, TypeError, ValueError):
        warnings.warn(f"{where}: skipping malformed eval record", stacklevel=3)


def _add_series(rec: dict, series: dict[str, dict[int, float]]) -> None:
    """Record every finite number of ``rec`` at its step (bools and non-numbers are not statistics)."""
    try:
        step = int(rec["step"])
    except (KeyError, TypeError, ValueError):
        return
    for key, value in rec.items():
        if key != "step" and isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            series.setdefault(key, {})[step] = float(value)


def _sorted_arrays(by_step: dict[int, float]) -> Series:
    steps = sorted(by_step)
    return np.array(steps, dtype=np.int64), np.array([by_step[s] for s in steps], dtype=np.float64)


def _read_metrics(met_path: Path) -> tuple[dict[int, float], dict[str, dict[int, float]]]:
    """One pass over ``metrics.jsonl``: evaluations and series. Lines that do not parse (e.g. the truncated last
    line of a killed run) are skipped with a warning."""
    evals: dict[int, float] = {}
    series: dict[str, dict[int, float]] = {}
    with met_path.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f"{met_path}:{lineno}: skipping unparsable line (truncated write?)", stacklevel=3)
                continue
            if isinstance(rec, dict):
                _add_eval(rec, evals, f"{met_path}:{lineno}")
                _add_series(rec, series)
    return evals, series


def _run_section(cfg: dict) -> dict:
    """The config's `run` section ({} when a config lacks it)."""
    return cfg["run"] if isinstance(cfg.get("run"), dict) else {}


def _target_frames(cfg: dict) -> int | None:
    target = _run_section(cfg).get("steps")
    return int(target) if isinstance(target, int | float) else None


def _on_schedule(evals: dict[int, float], every: object) -> dict[int, float]:
    """Each evaluation at the frame its schedule had it due. Why: a run resumed by code before 2e4e862 evaluated an
    agent step late (e.g. at 3 001 frames for 3 000), which put it past a frame budget of 3 000 that the other runs
    reached on time, so the final score and AUC dropped it. An evaluation up to 1% of `run.eval_every` after a due
    point that has no evaluation of its own counts at that point; any other (a final one at `run.steps`) stays."""
    if not isinstance(every, int) or every <= 0:
        return evals
    out: dict[int, float] = {}
    for step in sorted(evals):
        due = step - step % every
        late = 0 < step - due <= every // 100 and due not in evals and due not in out
        out[due if late else step] = evals[step]
    return out


def _from_files(path: Path, cfg: dict, rel: str) -> Run:
    evals, series = _read_metrics(path / "metrics.jsonl")
    steps, returns = _sorted_arrays(_on_schedule(evals, _run_section(cfg).get("eval_every")))
    return Run(path=str(path), task=str(cfg["task"]), method=str(cfg["method"]), seed=cfg.get("seed"), steps=steps,
               returns=returns, series={k: _sorted_arrays(v) for k, v in series.items()},
               target_frames=_target_frames(cfg), config_method=str(cfg["method"]), rel=rel, config=cfg)


def load_run(path: str | Path) -> Run:
    """Load one run directory written by ``python -m recipes.tempo`` (the task as its config spells it).

    Raises :class:`ReportError` if the directory lacks ``config.json`` or ``metrics.jsonl`` or the config is
    unusable.
    """
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{path}: not a run directory (not a directory)")
    missing = [name for name in ("config.json", "metrics.jsonl") if not (path / name).is_file()]
    if missing:
        raise ReportError(f"{path}: not a run directory (missing {', '.join(missing)})")
    return _from_files(path, _read_config(path), str(path))


def group_runs(runs: list[Run]) -> Groups:
    """Group runs by ``(task, method)``, groups sorted; runs inside a group by seed (numerically), then path."""
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.task, run.method)].append(run)
    return {key: sorted(v, key=lambda r: (seed_key(r.seed), r.rel)) for key, v in sorted(groups.items())}


def flat_config(cfg: dict, prefix: str = "") -> dict[str, str]:
    """``{"agent": {"actor_ent": 1e-4}}`` -> ``{"agent.actor_ent": "0.0001"}``: dotted keys, JSON-spelled values (so
    lists compare and print as the command line spells them)."""
    out: dict[str, str] = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value)
    return out


def _preset_defaults(run: Run) -> dict[str, str] | None:
    """The flat config of the run's preset on its task, None when the config names no preset or it does not build
    (another code version's preset)."""
    # Imported here: recipes.config imports torch (1.5 s), which reading runs needs for nothing else.
    from recipes.config import build

    try:
        return flat_config(build(str(run.config["preset"]), {"env": {"task": run.task}}).model_dump())
    except (KeyError, ValueError):  # pydantic's ValidationError is a ValueError
        return None


def label_variants(runs: list[Run]) -> list[Run]:
    """Runs of one ``(task, method)`` whose configs differ in more than :data:`BOOKKEEPING_FIELDS` are not seeds of one
    thing: each variant gets the label ``method (field=value, ...)`` over the fields that vary, so a plot never
    averages e.g. a higher entropy bonus into the method's curve. Why the exception: the variant whose varying fields
    all equal its preset's defaults keeps the bare method name, so ``--baseline dreamerv2`` still names the
    reference setting. Only fields every run of the group has are compared (code that added a field is not a
    variant)."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, run in enumerate(runs):
        groups[(run.task, run.method)].append(i)
    out = list(runs)
    for (_, method), idx in groups.items():
        flats = [flat_config(runs[i].config) for i in idx]
        shared = set.intersection(*(set(f) for f in flats)) - BOOKKEEPING_FIELDS
        varying = sorted(k for k in shared if len({f[k] for f in flats}) > 1)
        if not varying:
            continue
        for i, flat in zip(idx, flats, strict=True):
            defaults = _preset_defaults(runs[i])
            if defaults is not None and all(defaults.get(k) == flat[k] for k in varying):
                continue
            out[i] = replace(runs[i], method=f"{method} ({', '.join(f'{k}={flat[k]}' for k in varying)})")
    return out


# --------------------------------------------------------------------------------------------
# A sweep
# --------------------------------------------------------------------------------------------


def seed_key(seed: object) -> tuple:
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
        return config_method if m and seed_key(int(m.group(1))) == seed_key(seed) else middle[0]
    for i in range(1, len(middle)):
        m = _SEED_DIR.fullmatch(middle[i])
        if m and (seed is None or seed_key(int(m.group(1))) == seed_key(seed)):
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


def _sweep_leaf(sweep: Path, cfg_path: Path, found: dict) -> Run | None:
    """The run at ``cfg_path``'s folder, task canonicalised and method labelled; None (and why, in ``found``) when
    it is not a run, has nothing logged or evaluated yet, or cannot be read."""
    leaf = cfg_path.parent
    rel = leaf.relative_to(sweep)
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        found["skipped"].append({"path": str(rel), "reason": f"cannot parse config.json ({exc})"})
        return None
    if not isinstance(cfg, dict) or "task" not in cfg or "method" not in cfg:
        return None  # not a run (e.g. a sweep's own spec)
    if not (leaf / "metrics.jsonl").is_file():
        found["no_eval"].append(str(rel))  # started, nothing logged yet
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = _from_files(leaf, cfg, str(rel))
    found["warnings"] += [str(w.message) for w in caught]
    try:
        task = canonical_task(run.task)
    except ValueError as exc:
        found["skipped"].append({"path": str(rel), "reason": str(exc)})
        return None
    if not len(run.steps):
        found["no_eval"].append(str(rel))
        return None
    return replace(run, task=task, method=method_label(rel.parts, run.seed, run.config_method))


def discover(sweep: Path, skip: Path | None = None) -> dict:
    """Find and load every run under ``sweep``.

    Returns ``{"runs", "no_eval", "skipped", "warnings"}``: ``runs`` are the evaluated :class:`Run` s with ``task``
    canonicalised and ``method`` the leaf's label (:func:`method_label`), sorted by task, method, seed; ``no_eval``
    lists leaves with no evaluation; ``skipped`` unreadable leaves with the reason; ``warnings`` the loader's (e.g.
    unparsable lines).
    """
    found: dict = {"runs": [], "no_eval": [], "skipped": [], "warnings": []}
    for cfg_path in _walk_configs(sweep, skip):
        run = _sweep_leaf(sweep, cfg_path, found)
        if run is not None:
            found["runs"].append(run)
    found["runs"].sort(key=lambda r: (r.task, r.method, seed_key(r.seed), r.rel))
    found["no_eval"].sort()
    return found


# --------------------------------------------------------------------------------------------
# What a run logged
# --------------------------------------------------------------------------------------------


def is_weighted(run: Run) -> bool:
    """Whether the run's sample weights were ever non-uniform: it logs a weight statistic other than
    ``wm/weight_std`` (only logged for non-uniform weights) or a non-zero ``wm/weight_std`` (DreamerV2 logs 0)."""
    if any(k in run.series for k in WEIGHT_METRICS if k != "wm/weight_std"):
        return True
    return "wm/weight_std" in run.series and bool((run.series["wm/weight_std"][1] > 0).any())


def metric_name(alternatives: tuple[str, ...]) -> str:
    """A panel's or column's name: its key, or its alternative keys (``wm/state_loss or wm/image_loss``)."""
    return " or ".join(alternatives)


def metric_key(run: Run, alternatives: tuple[str, ...]) -> str | None:
    """The first of ``alternatives`` the run logs, None if none."""
    return next((k for k in alternatives if k in run.series), None)
