"""A grid of `recipes.tempo` runs on Ray Tune: tasks x methods x seeds x config values, resumable.

    python -m recipes.sweep runs/sweeps/first --tasks reacher_easy,walker_stand --methods tempo,dreamerv2 \\
        --seeds 3 --preset dmc_state --steps 100000
    python -m recipes.sweep runs/sweeps/first                      # the same sweep again: resumes / skips
    python -m recipes.sweep runs/sweeps/lr --tasks walker_stand --methods tempo --seeds 2 \\
        --grid tempo.bilevel.weighter.lr=1e-4,3e-4 --run.eval_every 5000
    python -m recipes.sweep runs/sweeps/first --address HOST:6379   # on a running Ray cluster
    python -m recipes.sweep runs/sweeps/first --until 20000        # every trial to 20k frames, then stop

Every trial is the recipe's own training loop in its own run directory,
`SWEEP/<task>/<method>/<seed>[/<field=value,...>]`, reporting each metrics record to Tune. Re-running the same
command resumes unfinished trials from their checkpoints (the run directory guarantees of `recipes.rundir`) and
skips finished ones, whatever stopped the last attempt (Ctrl-C, a crash of the driver, a lost node). The sweep
spec is written to `SWEEP/sweep.yaml` (re-run with only the directory, or pass it to `--config`), the trial
states to `SWEEP/sweep_status.json`. Every trial's config is validated before Ray starts.

`--until FRAMES` is for machines that run fewer trials at once than the sweep has: every trial stops (paused,
checkpointed) at FRAMES, so the waiting trials get their turn and all methods and seeds advance together;
re-running with a larger `--until`, or none, goes on. It is a property of the sitting, not of the sweep, so it
is not written to `sweep.yaml`.

A comparison must not mix code versions: each sitting records the framework's commit (`recipes.provenance`) in
`sweep.yaml`'s `sittings`, and a sitting under other code than the last one is refused in one line unless
`--allow-code-change` is given (recorded in that sitting). Run a campaign from its own `git worktree` at a fixed
commit. Each trial runs with `ceil(cpus_per_trial)` torch threads (`run.threads`) unless the sweep sets it.

`--bank BANK` keeps each finished trial's logs (config, metrics, progress: not its checkpoints) in a folder meant
to be committed, and puts them back into a sweep directory that was lost: `recipes.bank`.

On a cluster the sweep directory must be on storage every node sees (e.g. NFS): a retried trial resumes from
its checkpoint on whichever node it lands.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shlex
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, NonNegativeInt, PositiveInt, ValidationError, field_validator

from bilevel.config import Strict
from recipes.bank import banked, deposit, withdraw
from recipes.cli import resolve
from recipes.config import PRESETS, format_error
from recipes.provenance import code_version
from recipes.rundir import RunDir, RunDirError, atomic_write_text, hold, holder
from recipes.tempo import settle
from recipes.usage import Parser, UsageError

# Method name -> the recipe switches that make it. One source: `tempo.weighting` decides the weighting.
METHODS: dict[str, list[str]] = {
    "dreamerv2": ["--weighting", "none"],
    "tempo": ["--weighting", "meta"],
    "naive": ["--weighting", "naive"],
    "tempo-official": ["--weighting", "meta", "--sign", "official"],
    "tempo-vagram": ["--weighting", "meta", "--upper-loss", "vagram"],
}
SPEC_FILE, STATUS_FILE, STOP_FILE = "sweep.yaml", "sweep_status.json", "stop"


class Spec(Strict):
    """What a sweep runs; written to `sweep.yaml` and loadable from it (validated: a wrong type is one line)."""

    tasks: list[str] = Field(min_length=1)
    methods: list[str] = Field(min_length=1)
    seeds: list[NonNegativeInt] = Field(min_length=1)
    preset: str | None = None
    steps: PositiveInt | None = None
    overrides: dict[str, Any] = {}  # dotted field -> value, shared by every trial
    grid: dict[str, list[Any]] = {}  # dotted field -> values
    imports: list[str] = []  # modules every trial imports first (recipes.tempo --import): plug-ins it names
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    # Reserved with Ray, so it never starts more trials than the memory holds (its OOM killer would end them):
    # a `dmc_state` trial peaks at about 1.7 GB.
    memory_per_trial_gb: float = Field(2.0, ge=0)
    max_failures: int = Field(2, ge=0)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in METHODS]
        if bad:
            raise ValueError(f"unknown method {bad[0]!r}; accepted: {list(METHODS)}")
        return v


@dataclass(frozen=True)
class Trial:
    task: str
    method: str
    seed: int
    point: tuple[tuple[str, Any], ...]  # the grid values of this trial
    logdir: str

    @property
    def name(self) -> str:
        return str(Path(self.task, self.method, str(self.seed), *([point_dir(self.point)] if self.point else [])))


def point_dir(point: tuple[tuple[str, Any], ...]) -> str:
    return ",".join(f"{k}={v}" for k, v in point)


def cli_value(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def trial_argv(spec: Spec, trial: Trial, until: int | None = None, stop_file: Path | None = None) -> list[str]:
    """The `python -m recipes.tempo` command line of one trial (stopping this sitting at `until` frames, or when
    `stop_file` appears)."""
    argv = ["--task", trial.task, "--seed", str(trial.seed), "--logdir", trial.logdir, *METHODS[trial.method]]
    if until is not None:
        argv += ["--until", str(until)]
    if stop_file is not None:
        argv += ["--stop-file", str(stop_file)]
    if spec.preset:
        argv += ["--preset", spec.preset]
    if spec.steps is not None:
        argv += ["--steps", str(spec.steps)]
    if spec.gpus_per_trial > 0:
        argv += ["--device", "cuda"]
    if "run.threads" not in spec.overrides and not any(k == "run.threads" for k, _ in trial.point):
        argv += ["--run.threads", str(math.ceil(spec.cpus_per_trial))]
    for k, v in [*spec.overrides.items(), *trial.point]:
        argv += [f"--{k}", cli_value(v)]
    for module in spec.imports:
        argv += ["--import", module]
    return argv


def trials(spec: Spec, root: Path) -> list[Trial]:
    points = [tuple(zip(spec.grid, values, strict=True)) for values in itertools.product(*spec.grid.values())]
    out = []
    # Seed-major: when not every trial fits at once, the first ones are whole seeds of the grid, so a partial
    # sweep compares the methods on the same seeds and tasks.
    for seed, task, method, point in itertools.product(spec.seeds, spec.tasks, spec.methods, points or [()]):
        logdir = root / task / method / str(seed)
        if point:
            logdir = logdir / point_dir(point)
        out.append(Trial(task, method, seed, point, str(logdir)))
    return out


def progress(trial: Trial) -> tuple[int, int | None, float | None]:
    """(frames of its newest checkpoint, frames asked, last eval return) of a trial's run directory, from the
    checkpoint's counters file; (0, None, None) before its first checkpoint."""
    rundir = RunDir(Path(trial.logdir))
    counters = rundir.progress()
    if counters is None:
        return 0, None, None
    try:
        saved = rundir.saved_config()
    except RunDirError:
        return 0, None, None
    return counters["step"], saved.get("run", {}).get("steps"), counters.get("last_eval")


# ---------------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sitting:
    """One invocation of the sweep command: what it runs and where it stops."""

    root: Path
    spec: Spec
    address: str | None
    until: int | None
    allow_code_change: bool
    history: list[dict[str, Any]]  # the earlier sittings, as recorded in sweep.yaml
    mode: str = "run"  # or "status" (--status) or "commands" (--commands): print, run nothing
    max_concurrent: int | None = None  # --max-concurrent: at most this many trials at once (None: as resources fit)
    bank: Path | None = None  # --bank: where finished trials' logs are kept (recipes.bank)


def parse(argv: list[str]) -> Sitting:
    p = Parser(prog="python -m recipes.sweep", description=__doc__.split("\n\n")[0],
                                epilog="Other --section.field VALUE pairs are shared by every trial.")
    p.add_argument("dir", help="sweep directory (holds sweep.yaml, the trials' run directories)")
    p.add_argument("--config", help="a sweep.yaml to start from (default: DIR/sweep.yaml if it exists)")
    p.add_argument("--tasks", help="comma-separated tasks, e.g. reacher_easy,walker_stand")
    p.add_argument("--methods", help="comma-separated: " + ", ".join(METHODS))
    p.add_argument("--seeds", help="a count (3 = seeds 0,1,2) or a comma-separated list")
    p.add_argument("--preset", choices=PRESETS)
    p.add_argument("--steps", type=int, help="environment frames per trial")
    p.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2",
                   help="a config field and its values (repeatable: the grid is their product)")
    p.add_argument("--cpus-per-trial", type=float,
                   help="CPUs Ray reserves per trial, and its torch threads (ceil); default 1: on a 2-core CPU two "
                        "one-thread trials make 1.4x the updates of one two-thread trial (benchmarks/results)")
    p.add_argument("--gpus-per-trial", type=float, help="fractions share a GPU, e.g. 0.25")
    p.add_argument("--memory-per-trial-gb", type=float, help="memory reserved per trial (default 2)")
    p.add_argument("--max-failures", type=int, help="retries of a failing trial (default 2)")
    p.add_argument("--address", help="join a running Ray cluster (HOST:PORT or 'auto'); default: a local Ray")
    p.add_argument("--until", type=int, metavar="FRAMES",
                   help="stop every trial at FRAMES frames this sitting (paused; re-run to go on)")
    p.add_argument("--max-concurrent", type=int, metavar="N",
                   help="run at most N trials at once this sitting (default: as many as the CPUs/GPUs fit), e.g. "
                        "to leave cores for other work or for a second sweep")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="a module every trial imports first, e.g. one registering an upper loss (repeatable)")
    p.add_argument("--bank", metavar="BANK",
                   help="keep each finished trial's logs in BANK (a folder to commit) and restore them into DIR when "
                        "DIR lacks them, e.g. after its machine was lost (recipes.bank)")
    p.add_argument("--allow-code-change", action="store_true",
                   help="resume although the code differs from the last sitting's commit (recorded in sweep.yaml)")
    show = p.add_mutually_exclusive_group()
    show.add_argument("--status", dest="mode", action="store_const", const="status", default="run",
                      help="print each trial's state, frames and last evaluation return, and exit: reads only (no "
                           "Ray, no lock, nothing written), so it can watch a sitting that is running")
    show.add_argument("--commands", dest="mode", action="store_const", const="commands",
                      help="print the `python -m recipes.tempo` arguments of every trial still to run, one line "
                           "each, and exit (checked like a sitting's, nothing written): to run them elsewhere, e.g. "
                           "as docs/evidence/gpu/session.sh's JOBS")
    args, rest = p.parse_known_args(argv)

    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UsageError(f"--max-concurrent {args.max_concurrent}: must be at least 1 (or left out: as many trials "
                         "as the resources fit)")
    root = Path(args.dir).expanduser()
    bank = Path(args.bank).expanduser() if args.bank else None
    if bank is not None:
        check_bank(bank, root)
    if args.mode == "status" and not (root / SPEC_FILE).is_file():
        raise UsageError(f"--status: {root} holds no sweep ({SPEC_FILE} is missing)")
    source = Path(args.config) if args.config else home(root, bank) / SPEC_FILE
    if args.config and not source.is_file():
        raise UsageError(f"--config {args.config}: no such file")
    data: dict[str, Any] = {}
    if source.is_file():
        try:
            data = yaml.safe_load(source.read_text()) or {}
        except yaml.YAMLError as e:
            raise UsageError(f"{source}: not valid YAML ({str(e).splitlines()[0]})") from e
        if not isinstance(data, dict):
            raise UsageError(f"{source}: expected a mapping of sweep fields, got {type(data).__name__}")
    data.pop("sittings", None)  # a sweep's own history, never another sweep's (--config)
    unknown = set(data) - set(Spec.model_fields)
    if unknown:
        raise UsageError(f"{source}: unknown field(s) {sorted(unknown)}; accepted: {list(Spec.model_fields)}")
    if args.tasks:
        data["tasks"] = args.tasks.split(",")
    if args.methods:
        data["methods"] = args.methods.split(",")
    if args.seeds:
        data["seeds"] = (list(range(int(args.seeds))) if args.seeds.isdigit()
                         else [int(s) for s in args.seeds.split(",")])
    for key in ("preset", "steps", "cpus_per_trial", "gpus_per_trial", "memory_per_trial_gb", "max_failures"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if args.imports:
        data["imports"] = args.imports
    grid = dict(data.get("grid") or {})
    for item in args.grid:
        k, sep, values = item.partition("=")
        if not sep or not k or not values:
            raise UsageError(f"--grid {item!r}: expected FIELD=V1,V2,...")
        grid[k.removeprefix("--")] = [parse_value(v) for v in values.split(",")]
    data["grid"] = grid
    overrides = dict(data.get("overrides") or {})
    i = 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("--") or "." not in tok or i + 1 >= len(rest):
            raise UsageError(f"unrecognised argument {tok!r}; shared config fields are set as --section.field VALUE")
        overrides[tok[2:]] = parse_value(rest[i + 1])
        i += 2
    data["overrides"] = overrides
    for key in ("tasks", "methods", "seeds"):
        if not data.get(key):
            raise UsageError(f"no {key} given (--{key}, or a sweep.yaml that has them)")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as e:
        raise UsageError(format_error(e)) from e
    # --until is checked with each trial's command line
    return Sitting(root, spec, args.address, args.until, args.allow_code_change, sittings(home(root, bank)),
                   args.mode, args.max_concurrent, bank)


def check_bank(bank: Path, root: Path) -> None:
    """A bank is a folder, not the sweep directory, and one this process can make or write (one line if not)."""
    if bank.resolve() == root.resolve():
        raise UsageError(f"--bank {bank}: must be another folder than the sweep directory {root}")
    if bank.exists() and not bank.is_dir():
        raise UsageError(f"--bank {bank}: not a folder")
    nearest = next(p for p in [bank, *bank.resolve().parents] if p.exists())
    if not nearest.is_dir() or not os.access(nearest, os.W_OK):
        raise UsageError(f"--bank {bank}: {nearest} is not a writable folder")


def home(root: Path, bank: Path | None) -> Path:
    """Where the sweep's own sweep.yaml is: ROOT's, or, where ROOT has none (a lost directory), the bank's copy."""
    if bank is not None and not (root / SPEC_FILE).is_file() and (bank / SPEC_FILE).is_file():
        return bank
    return root


def sittings(root: Path) -> list[dict[str, Any]]:
    """The sittings recorded in ROOT/sweep.yaml (none for a new sweep)."""
    path = root / SPEC_FILE
    if not path.is_file():
        return []
    history = (yaml.safe_load(path.read_text()) or {}).get("sittings") or []
    if not isinstance(history, list):
        raise UsageError(f"{path}: 'sittings' must be a list, got {type(history).__name__}")
    return history


def check_code(history: list[dict[str, Any]], version: str, allow: bool, root: Path) -> None:
    """Refuse (one line) a sitting under other code than the last one's, unless allowed."""
    before = next((h.get("commit") for h in reversed(history) if isinstance(h, dict)), None)
    if before is not None and before != version and not allow:
        raise UsageError(f"sweep {root} ran its last sitting at code {before}, this checkout is {version}: a "
                         "comparison must not mix code; run it from a worktree at that commit (git worktree add DIR "
                         f"{before.split('+')[0]}) or pass --allow-code-change")


def parse_value(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def validate(spec: Spec, root: Path, until: int | None = None) -> list[Trial]:
    """Every trial's command line (`until` included) through the recipe's own checks, before Ray starts (one
    line per bad value)."""
    out = trials(spec, root)
    for t in out:
        try:
            # the recipe's own checks, a resume's included (the trial's run directory may hold a run)
            settle(resolve(trial_argv(spec, t, until)), RunDir(Path(t.logdir)), load=False)
        except (UsageError, RunDirError) as e:
            raise UsageError(f"trial {t.name}: {e}") from e
    return out


# ---------------------------------------------------------------------------------------------------
# Ray Tune
# ---------------------------------------------------------------------------------------------------
def check_reachable(address: str, timeout: float = 10.0) -> None:
    """A HOST:PORT that accepts no connection fails now, in one line (ray.init would retry for minutes)."""
    if address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConnectionError(f"expected HOST:PORT or 'auto', got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"nothing answers at {address} ({e.strerror or e})") from e


def run_trial(config: dict[str, Any]) -> None:
    """The Tune trainable: the recipe's `main` on the trial's command line, each metrics record reported."""
    import ray
    from ray import tune

    from recipes import tempo

    name, argv = config["name"], config["argv"]
    node = ray.get_runtime_context().get_node_id()
    last: dict[str, float] = {}

    def report(rec: dict[str, Any]) -> None:
        if "eval_return" in rec:
            last["eval_return"] = rec["eval_return"]
        tune.report({"frames": rec["step"], "fps": rec.get("fps", 0.0), **last, "node": node})

    code = tempo.main(argv, on_log=report)
    if code != 0:
        raise RuntimeError(f"trial {name}: recipes.tempo exited with code {code}")


class LiveTable:
    """A table of every trial's state, frames, fps and last eval return, printed every `every` seconds and
    when a trial ends: plain lines, so it reads the same in a terminal, a CI log or `nohup`."""

    def __init__(self, names: list[str], every: float = 30.0) -> None:
        self.rows = {n: {"state": "pending", "frames": 0, "fps": None, "eval_return": None, "node": None}
                     for n in names}
        self.every, self.last_print = every, 0.0

    def update(self, name: str, **values: Any) -> None:
        self.rows[name].update(values)

    def result(self, name: str, result: dict[str, Any]) -> None:
        """A trial's metrics report: its frames and fps, and its eval return only if the report has one. A resumed
        trial's first reports come before its first evaluation in this sitting, and the table keeps the last
        return it knows (from the checkpoint) rather than blanking it."""
        self.update(name, state="running", frames=int(result["frames"]), fps=result["fps"], node=result.get("node"))
        if result.get("eval_return") is not None:
            self.update(name, eval_return=result["eval_return"])

    def print(self, force: bool = False) -> None:
        if not force and time.time() - self.last_print < self.every:
            return
        self.last_print = time.time()
        width = max(len(n) for n in self.rows)
        lines = [f"{'trial':<{width}}  {'state':<10} {'frames':>9} {'fps':>7} {'eval':>8}"]
        for n, r in self.rows.items():
            fps = f"{r['fps']:.1f}" if r["fps"] is not None else "-"
            ev = f"{r['eval_return']:.1f}" if r["eval_return"] is not None else "-"
            lines.append(f"{n:<{width}}  {r['state']:<10} {r['frames']:>9} {fps:>7} {ev:>8}")
        print("\n".join(lines), flush=True)


# Tune's trial status -> the live table's state ('ended': finished or paused at --until, as the status file says)
TUNE_STATES = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "pending", "TERMINATED": "ended",
               "ERROR": "failed"}


def tune_callback(table: LiveTable, on_complete: Callable[[str], None] | None = None) -> Any:
    from ray import tune

    class Reporter(tune.Callback):
        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            for trial in trials:  # Tune's own view of each trial's state (a retried trial waits as PENDING)
                table.update(trial.config["trial"]["name"], state=TUNE_STATES.get(trial.status, trial.status.lower()))
            table.print()  # every `every` seconds, also while no trial reports (slow log intervals)

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            table.update(trial.config["trial"]["name"], state="running")
            table.print()

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            table.result(trial.config["trial"]["name"], result)
            table.print()

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            table.update(trial.config["trial"]["name"], state="ended")  # finished or paused: the status file says
            table.print(force=True)
            if on_complete is not None:
                on_complete(trial.config["trial"]["name"])

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            table.update(trial.config["trial"]["name"], state="failed")
            table.print(force=True)

    return Reporter()


def trial_state(frames: int, steps: int | None, until: int | None) -> str | None:
    """'finished' (all its frames), 'paused' (at this sitting's --until) or None (still to run), from its
    run directory's newest checkpoint."""
    if steps is not None and frames >= steps:
        return "finished"
    if until is not None and frames >= until:
        return "paused"
    return None


def write_status(root: Path, spec: Spec, all_trials: list[Trial], table: LiveTable,
                 until: int | None = None) -> dict[str, Any]:
    status = {}
    for t in all_trials:
        frames, steps, last_eval = progress(t)
        row = dict(table.rows[t.name])
        row.update(frames=frames, steps=steps, eval_return=last_eval, logdir=t.logdir)
        state = trial_state(frames, steps, until)
        if state is not None:
            row["state"] = state
        status[t.name] = row
    out = {"spec": spec.model_dump(), "trials": status}
    atomic_write_text(root / STATUS_FILE, json.dumps(out, indent=1))
    return out


def trial_env() -> dict[str, str]:
    """Environment variables of the trials' worker processes.

    `MALLOC_ARENA_MAX=1` (unless set already): Ray runs a trial in a second thread of its worker, and glibc gives
    that thread a malloc arena of its own, whose heaps it unmaps when they empty, so an update faulted its
    activations' pages in again every time; `recipes.cpu.keep_freed_memory` keeps only the main heap's freed
    memory. One arena makes the trial's thread allocate from the main heap. It must be set when the worker
    starts: the thread has its arena before any of the recipe's code runs. Measured in benchmarks/README.md.
    """
    return {"MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "1")}


def connect(address: str | None) -> None:
    """Start a local Ray or join the cluster at `address`; failing to is a one-line UsageError."""
    import ray

    runtime_env = {"env_vars": trial_env()}
    try:
        if address:
            check_reachable(address)
            ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
        else:
            ray.init(include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UsageError(f"cannot reach Ray at {address!r}: {str(e).strip().splitlines()[0]}") from e


def fit(root: Path, spec: Spec, todo: list[Trial], table: LiveTable, until: int | None,
        max_concurrent: int | None = None, on_complete: Callable[[str], None] | None = None) -> None:
    """Run the trials on Ray Tune (connected by `connect`), then shut Ray down; `on_complete(name)` as each
    trial's attempt ends."""
    import ray
    from ray import tune

    resources = {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial,
                 "memory": int(spec.memory_per_trial_gb * 2**30)}
    stop = (root / STOP_FILE).resolve()  # Ctrl-C creates it: every trial checkpoints and ends its sitting
    stop.unlink(missing_ok=True)
    params = {"trial": tune.grid_search([
        {"name": t.name, "argv": trial_argv(spec, t, until, stop)} for t in todo])}
    tuner = tune.Tuner(
        tune.with_resources(lambda cfg: run_trial(cfg["trial"]), resources),
        param_space=params,
        tune_config=tune.TuneConfig(reuse_actors=True,  # a worker keeps torch & co. imported between trials
                                    max_concurrent_trials=max_concurrent,
                                    trial_name_creator=lambda tr: tr.config["trial"]["name"].replace("/", "-"),
                                    trial_dirname_creator=lambda tr: f"trial_{tr.trial_id}"),
        run_config=tune.RunConfig(name=f"tune-{time.strftime('%Y%m%dT%H%M%S')}",
                                  storage_path=str((root / ".tune").resolve()), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                                  callbacks=[tune_callback(table, on_complete)]),
    )
    previous = signal.getsignal(signal.SIGINT)

    def request_stop(signum: int, frame: Any) -> None:
        stop.touch()
        print("stopping: every running trial saves a checkpoint and ends (Ctrl-C again to abort at once)",
              file=sys.stderr, flush=True)
        signal.signal(signal.SIGINT, previous)

    # Tune's own handler would end the trials' workers before they checkpoint
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, request_stop)
    try:
        tuner.fit()
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)
        stop.unlink(missing_ok=True)
        ray.shutdown()


def show_status(sitting: Sitting) -> int:
    """`--status`: every trial's state from its run directory, as the sitting's table prints it ('running': a
    process holds the directory now; 'stopped': checkpointed, not finished, not held; 'pending': never
    checkpointed), and the last sitting's start and code. Reads only."""
    root, all_trials = sitting.root, trials(sitting.spec, sitting.root)
    table = LiveTable([t.name for t in all_trials])
    left = 0  # frames the unfinished trials still need
    for t in all_trials:
        frames, steps, last_eval = progress(t)
        state = trial_state(frames, steps, None) or (
            "running" if holder(Path(t.logdir)) is not None else "stopped" if frames else "pending")
        table.update(t.name, state=state, frames=frames, eval_return=last_eval)
        if state == "running":  # its newest record is ahead of its newest checkpoint
            rec = RunDir(Path(t.logdir)).last_logged("fps")
            if rec is not None:
                table.update(t.name, frames=max(frames, int(rec["step"])), fps=float(rec["fps"]))
        if state != "finished":
            left += max((steps or sitting.spec.steps or 0) - table.rows[t.name]["frames"], 0)
    counts = Counter(r["state"] for r in table.rows.values())
    last = sitting.history[-1] if sitting.history and isinstance(sitting.history[-1], dict) else {}
    pid = holder(root)
    rates = [r["fps"] for r in table.rows.values() if r["state"] == "running" and r["fps"]]
    pace = (f"; {left} frames to go: about {left / (sum(rates) / len(rates)) / 3600:.1f} trial-hours at the running "
            f"trials' mean rate ({sum(rates) / len(rates):.2f} fps)" if rates and left else "")
    print(f"sweep {root}: {len(all_trials)} trials, " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
          + f"; last sitting started {last.get('started', '-')} at code {last.get('commit', '-')}, "
          + (f"running now (process {pid})" if pid is not None else "not running now") + pace, flush=True)
    table.print(force=True)
    return 0


def sweep(sitting: Sitting) -> int:
    if sitting.mode == "status":
        return show_status(sitting)
    root, spec, until = sitting.root, sitting.spec, sitting.until
    all_trials = validate(spec, root, until)
    if sitting.mode == "commands":  # in the sitting's order: seed-major, so a partial run covers whole seeds
        for t in all_trials:
            if trial_state(*progress(t)[:2], until) is None and not (sitting.bank and banked(sitting.bank, t.name)):
                print(shlex.join(trial_argv(spec, t, until)))
        return 0
    version = code_version()
    check_code(sitting.history, version, sitting.allow_code_change, root)  # bad input: nothing written yet
    if sitting.address:
        try:
            check_reachable(sitting.address)
        except ConnectionError as e:
            raise UsageError(f"cannot reach Ray at {sitting.address!r}: {e}") from e
    with hold(root, "sweep"):  # one sweep process per directory (its trials each hold their own run directory)
        history = sittings(home(root, sitting.bank))  # again, as the one writer
        check_code(history, version, sitting.allow_code_change, root)
        return sit(sitting, all_trials, version, history)


def sit(sitting: Sitting, all_trials: list[Trial], version: str, history: list[dict[str, Any]]) -> int:
    """One sitting: record it, run what is left on Ray Tune, write the status; the exit code."""
    root, spec, until = sitting.root, sitting.spec, sitting.until
    restored = bank_runs(sitting, all_trials, restore=True) if sitting.bank else []
    table = LiveTable([t.name for t in all_trials])
    todo = []
    for t in all_trials:
        frames, steps, last_eval = progress(t)
        state = trial_state(frames, steps, until)
        table.update(t.name, state=state or "pending", frames=frames, eval_return=last_eval)  # resumed: from here
        if state is None:
            todo.append(t)
    if todo:
        connect(sitting.address)  # before the sitting is recorded: an unreachable cluster is bad input
    record = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "commit": version, "until": until,
              "max_concurrent": sitting.max_concurrent, "allow_code_change": sitting.allow_code_change}
    if sitting.bank:
        record.update(bank=str(sitting.bank), restored=restored)
    atomic_write_text(root / SPEC_FILE, yaml.safe_dump({**spec.model_dump(), "sittings": [*history, record]},
                                                      sort_keys=False))
    if sitting.bank:  # the record in the bank at once: a sitting lost with its machine is in the history
        deposit(root, sitting.bank, [], SPEC_FILE)
    print(f"sweep {root}: {len(all_trials)} trials, {len(all_trials) - len(todo)} finished, {len(todo)} to run",
          flush=True)
    by_name = {t.name: t for t in all_trials}
    # a finished run is banked at once: the session may end, and its machine go, before the sitting does
    on_complete = (lambda name: bank_runs(sitting, [by_name[name]])) if sitting.bank else None
    try:
        if todo:
            fit(root, spec, todo, table, until, sitting.max_concurrent, on_complete)
    finally:  # Ctrl-C twice or a crash too: what finished is banked
        if sitting.bank:
            bank_runs(sitting, all_trials)
    status = write_status(root, spec, all_trials, table, until)
    table.rows = {n: {**table.rows[n], **status["trials"][n]} for n in table.rows}
    table.print(force=True)
    failed = [n for n, r in status["trials"].items() if r["state"] not in ("finished", "paused")]
    if failed:
        print(f"{len(failed)} trial(s) did not finish: {', '.join(failed)}; re-run the same command to resume them "
              f"(each trial's log: its run directory and {root / '.tune'})", file=sys.stderr)
        return 1
    paused = [n for n, r in status["trials"].items() if r["state"] == "paused"]
    if paused:
        print(f"{len(paused)} trial(s) paused at --until {until} frames, {len(all_trials) - len(paused)} finished; "
              f"re-run with a larger --until (or none) to go on. Report so far: python -m recipes.report {root}")
        return 0
    print(f"all {len(all_trials)} trials finished; report: python -m recipes.report {root}")
    return 0


def bank_runs(sitting: Sitting, all_trials: list[Trial], restore: bool = False) -> list[str]:
    """`--bank`: bank every finished trial and sweep.yaml; with `restore`, then put the banked runs the sweep
    directory lacks back into it. Returns the names restored."""
    bank, root = sitting.bank, sitting.root
    assert bank is not None
    done = [t.name for t in all_trials if trial_state(*progress(t)[:2], None) == "finished"]
    new, conflicts = deposit(root, bank, done, SPEC_FILE)
    for name in conflicts:
        print(f"warning: bank {bank} holds another run at {name}; the bank's is left as it is", file=sys.stderr)
    restored = withdraw(bank, root, [t.name for t in all_trials]) if restore else []
    if new or restored:
        print(f"bank {bank}: {len(new)} run(s) banked" + (f", {len(restored)} restored: {', '.join(restored)}"
                                                          if restored else ""), flush=True)
    return restored


def printed(sitting: Sitting) -> int:
    """`--status` / `--commands`, whose reader may leave early (`... --status | head`): a closed pipe ends the
    command quietly with the exit status of a process ended by SIGPIPE (141), not with a traceback."""
    try:
        return sweep(sitting)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # or the flush at exit fails once more
        return 141


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        sitting = parse(argv)
        return sweep(sitting) if sitting.mode == "run" else printed(sitting)
    except (UsageError, RunDirError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials are kept; re-run the same command to resume the others",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
