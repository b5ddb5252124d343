"""The command line of `python -m recipes.tempo`: switches and `--section.field VALUE` overrides -> a validated
Config, and every check of the input that can run before anything is written (one line, exit code 2)."""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from bilevel.contractions import CONTRACTIONS
from bilevel.engines import ENGINES
from losses import registered
from recipes.config import (
    HYPERGRADIENTS,
    PRESETS,
    Config,
    build,
    deep_update,
    format_error,
    parse_dotted,
)
from recipes.configdoc import default_of, preset_value
from recipes.usage import Parser, UsageError
from worldmodels.tempo_problem import INPUT_FLAGS

SWITCH_FIELDS = {  # CLI switch -> dotted config field
    "task": "env.task", "weighting": "tempo.weighting", "upper_loss": "tempo.upper_loss",
    "hypergrad": "tempo.bilevel.strategy", "contraction": "tempo.bilevel.contraction",
    "engine": "tempo.bilevel.engine", "weighter_inputs": "tempo.weighter_inputs", "sign": "tempo.bilevel.sign",
    "device": "run.device", "seed": "run.seed", "steps": "run.steps", "logdir": "run.logdir",
}


# ---------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------
def default(dotted: str) -> str:
    """A field's default and what the presets set it to, for --help (one source: recipes.config, read as the
    generated reference docs/CONFIG.md reads it)."""
    node = default_of(dotted)
    changes = [f"{p} {v}" for p in PRESETS if (v := preset_value(p, dotted)) is not None and v != node]
    return f"default {node}" + (f"; {', '.join(changes)}" if changes else "")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m recipes.tempo", description=__doc__.split("\n\n")[0],
        epilog="Any config field can be set as --section.field VALUE, e.g. --world_model.lr 1e-4 "
               "--tempo.bilevel.weighter.units 200: every field, its default, unit and presets are in "
               "docs/CONFIG.md; --print-config shows what a command resolves to.")
    p.add_argument("--task", help="finger_spin | dmc:walker_walk | atari:pong | gym:Pendulum-v1 "
                                  f"({default('env.task')})")
    p.add_argument("--preset", choices=PRESETS,
                   help="default: atari for atari:*, dmc_pixels with CUDA, else dmc_state (dmc_small: the "
                        "reduced-scale CPU protocol)")
    p.add_argument("--weighting", help=f"meta (TEMPO) | naive | none (DreamerV2) ({default('tempo.weighting')})")
    p.add_argument("--upper-loss", dest="upper_loss",
                   help=" | ".join([*registered(), "module.path:ClassName"]) + f" ({default('tempo.upper_loss')})")
    p.add_argument("--hypergrad", help=" | ".join(HYPERGRADIENTS) + " (with --weighting meta; "
                                       f"{default('tempo.bilevel.strategy')})")
    p.add_argument("--contraction", help=" | ".join(CONTRACTIONS) + f" ({default('tempo.bilevel.contraction')})")
    p.add_argument("--engine", help=" | ".join(ENGINES) + f" ({default('tempo.bilevel.engine')})")
    p.add_argument("--weighter-inputs", dest="weighter_inputs",
                   help=" | ".join(INPUT_FLAGS) + f": D = h, S = latents, V = values, paper §3.5 "
                        f"({default('tempo.weighter_inputs')})")
    p.add_argument("--sign", help="correct | official: the deng-ai-lab code's α direction "
                                  f"({default('tempo.bilevel.sign')})")
    p.add_argument("--device", help="cpu | cuda (default: cuda if available)")
    p.add_argument("--seed", type=int, help=f"({default('run.seed')})")
    p.add_argument("--steps", type=int, help=f"environment frames, after action repeat ({default('run.steps')})")
    p.add_argument("--logdir", help="run directory, re-used to resume (default runs/<task>/<method>/<seed>)")
    p.add_argument("--until", type=int, metavar="FRAMES",
                   help="stop this sitting at FRAMES frames (checkpointed; re-run to go on): not a run setting, "
                        "the run still aims at --steps")
    p.add_argument("--stop-file", metavar="PATH",
                   help="end this sitting (checkpointed, exit 0) as soon as PATH exists, or do not start it (nothing "
                        "written) if PATH exists already: how a sweep stops its trials cleanly; not a run setting")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (repeatable), so the contractions, strategies, engines and upper "
                        "losses it registers can be named")
    p.add_argument("--print-config", action="store_true",
                   help="print the configuration this command resolves to (a resume's, if --logdir holds a run) "
                        "as JSON and exit, writing nothing")
    return p


def import_modules(names: list[str]) -> None:
    """`--import` modules, before any name is validated; a failing import is a one-line UsageError."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - whatever the module raises: one line naming it
            raise UsageError(f"--import {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                             ) from None


def default_logdir(cfg: Config) -> str:
    """runs/<task>/<method>/<seed>: TEMPO and DreamerV2 on one task land side by side, as a sweep lays them out."""
    return str(Path("runs", cfg.env.task.replace(":", "_").replace("/", "_"), cfg.method, str(cfg.run.seed)))


def parse_cli(argv: list[str]) -> tuple[argparse.Namespace, dict[str, Any]]:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    import_modules(args.imports)
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("--") or "." not in tok:
            raise UsageError(f"unrecognised argument {tok!r}; see --help (fields are set as --section.field VALUE)")
        if "=" in tok:
            key, val = tok[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(rest):
                raise UsageError(f"{tok} needs a value")
            key, val = tok[2:], rest[i + 1]
            i += 2
        pairs.append((key.replace("-", "_"), val))
    switches: dict[str, Any] = {}  # typed by argparse, so never re-parsed as JSON
    for name, value in vars(args).items():
        if name in SWITCH_FIELDS and value is not None:
            section, field = SWITCH_FIELDS[name].split(".", 1)
            node = switches.setdefault(section, {})
            *path, leaf = field.split(".")
            for p in path:
                node = node.setdefault(p, {})
            node[leaf] = value
    return args, deep_update(switches, parse_dotted(pairs))  # --section.field wins over a switch


def cuda_available() -> bool:
    return torch.cuda.is_available()


def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend (inductor) would build its kernels with: $CXX, else the
    first of g++ / clang++ / c++ on the PATH; None if there is none."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++", "c++"]
    return next((path for path in map(shutil.which, names) if path), None)


def choose_preset(task: str, device: str | None) -> tuple[str, str | None]:
    """(preset, notice) from the task and the device: pixel DMC is for GPUs."""
    if task.startswith("atari:"):
        return "atari", None
    if task.startswith("gym:"):
        return "dmc_state", None
    if (device or ("cuda" if cuda_available() else "cpu")) == "cuda":
        return "dmc_pixels", None
    return "dmc_state", ("notice: no CUDA device, using preset dmc_state (proprioceptive states); pixel "
                         "world-model updates are about two orders of magnitude slower on CPU. Pass "
                         "--preset dmc_pixels to force pixels.")


@dataclass
class Resolved:
    cfg: Config  # what a fresh run would use
    notice: str | None
    explicit: dict[str, Any]  # what the command line set (switches and --section.field), before any default
    preset: str | None  # --preset, if given
    until: int | None = None  # --until: where this sitting stops (not part of the run's config)
    print_config: bool = False  # --print-config: show the resolved configuration, write nothing
    stop_file: Path | None = None  # --stop-file: end the sitting when it exists


def resolve(argv: list[str]) -> Resolved:
    """Validated config from the command line (nothing is created here)."""
    args, overrides = parse_cli(argv)
    explicit = copy.deepcopy(overrides)
    task = overrides.get("env", {}).get("task", "finger_spin")
    device = overrides.get("run", {}).get("device")
    logdir = overrides.get("run", {}).get("logdir")
    if logdir is not None and not str(logdir).strip():
        raise UsageError("--logdir is empty; give a directory (e.g. --logdir runs/finger_spin)")
    notice = None
    preset = args.preset
    if preset is None:
        preset, notice = choose_preset(task, device)
    elif preset == "atari" and not task.startswith("atari:"):
        raise UsageError(f"preset 'atari' is for atari:<game> tasks, not {task!r}; drop --preset or use a "
                         "dmc preset")
    elif preset in ("dmc_pixels", "dmc_state") and task.startswith("atari:"):
        raise UsageError(f"preset {preset!r} is for DeepMind Control tasks, not {task!r}; use --preset atari")
    if device is None:
        overrides.setdefault("run", {})["device"] = "cuda" if cuda_available() else "cpu"
    overrides.setdefault("env", {})["task"] = task
    try:
        cfg = build(preset, overrides)
        if logdir is None:
            cfg.run.logdir = default_logdir(cfg)
    except ValidationError as e:
        raise UsageError(format_error(e)) from None
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.until is not None and args.until <= 0:
        raise UsageError(f"--until {args.until}: expected a positive number of frames")
    stop_file = Path(args.stop_file).expanduser() if args.stop_file else None
    return Resolved(cfg, notice, explicit, args.preset, args.until, args.print_config, stop_file)


# Settings a resumed run may change (recorded in config.json's history); anything else must stay as it was.
SAFE_ON_RESUME = ("run.steps", "run.eval_every", "run.eval_episodes", "run.log_every", "run.checkpoint_every",
                  "run.progress_every", "run.video_every", "run.max_nonfinite", "run.device", "run.compile",
                  "run.threads", "run.precision", "run.world_model_precision",  # only while they resolve as before
                  # (check_precision)
                  "world_model.lr", "agent.actor_lr", "agent.critic_lr", "tempo.bilevel.weighter.lr")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out

# What a run saved before a field existed trained with, where that is not the field's default: it resumes so.
BEFORE_THE_FIELD: dict[tuple[str, str], Any] = {
    ("run", "world_model_precision"): None,  # the world model trained at run.precision
    ("agent", "trunc_grad"): "exact",  # the actor learned with the exact action-sample gradient
}


def resume_config(saved: dict[str, Any], explicit: dict[str, Any], preset: str | None) -> tuple[Config, dict]:
    """The saved run's config with the command line's explicit settings on top, and what they change; a
    change outside SAFE_ON_RESUME is a one-line UsageError listing what differs."""
    fields = {k: v for k, v in saved.items() if k in Config.model_fields}
    for (section, name), before in BEFORE_THE_FIELD.items():
        values = fields.get(section)
        if isinstance(values, dict) and name not in values:
            fields[section] = {**values, name: before}
    try:
        old = Config.model_validate(fields)
        new = Config.model_validate(deep_update(old.model_dump(), explicit))
    except ValidationError as e:
        raise UsageError(format_error(e)) from None
    a, b = flatten(old.model_dump(mode="json")), flatten(new.model_dump(mode="json"))
    changed = {k: (a[k], b[k]) for k in a if a[k] != b[k] and k != "run.logdir"}
    if preset is not None and preset != old.preset:
        changed["preset"] = (old.preset, preset)
    unsafe = {k: v for k, v in changed.items() if k not in SAFE_ON_RESUME}
    if unsafe:
        diff = ", ".join(f"{k} {o!r} -> {n!r}" for k, (o, n) in list(unsafe.items())[:6])
        raise UsageError(f"--logdir {old.run.logdir!r} holds a run made with other settings ({diff}); resume it "
                         f"with its own settings (only {', '.join(SAFE_ON_RESUME)} may change) or use another "
                         "--logdir")
    return new, changed


def check_precision(saved: dict[str, Any], cfg: Config) -> None:
    """A resume must not change the precision the run trains at: `auto` is bf16 on CPUs with native bf16 and
    float32 elsewhere, so the same command resumed on another machine could switch it mid-run (one line). Runs
    made before run.world_model_precision existed trained their world model at `precision_resolved`
    (`resume_config` gives them its old meaning, None: as run.precision)."""
    from bilevel.precision import resolve as resolve_precision

    modes = cfg.run.precisions
    parts = [("precision", "precision_resolved", modes["agent"]),
             ("world_model_precision", "world_model_precision_resolved", modes["world_model"])]
    for name, key, mode in parts:
        before = saved.get(key, saved.get("precision_resolved"))
        now = resolve_precision(mode, cfg.run.device)
        if before is not None and before != now:
            what = "at precision" if name == "precision" else "its world model at precision"
            raise UsageError(f"--logdir {cfg.run.logdir!r} trained {what} {before!r}; here run.{name} "
                             f"{getattr(cfg.run, name)!r} resolves to {now!r}, which would change it mid-run: "
                             "resume on a machine "
                             f"where it resolves to {before!r} (--run.{name} {before} forces it) or use another "
                             "--logdir")


def episode_steps(cfg: Config) -> int | None:
    """Agent steps in a full episode of the task (its time limit), None where the suite does not say."""
    from envs.atari import DEFAULT_TIME_LIMIT

    task, e = cfg.env.task, cfg.env
    if e.time_limit is not None:
        return e.time_limit
    if task.startswith("atari:"):
        return DEFAULT_TIME_LIMIT
    if task.startswith("gym:"):
        return None
    from envs.dmc import DMC

    return 1000 // (e.action_repeat or DMC.action_repeat_default)  # DMC: 1000 frames


def preflight(cfg: Config) -> None:
    """Everything that can be wrong with the input, checked before the run directory exists."""
    from envs import validate_task
    from losses import get_upper_loss

    try:
        validate_task(cfg.env.task)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if cfg.env.task.startswith("atari:") and cfg.env.obs == "state":
        raise UsageError(f"task {cfg.env.task!r} has no state observations; use --env.obs pixels")
    pixels = cfg.env.obs == "pixels" or cfg.env.task.startswith("atari:")
    if cfg.env.distractors.mode != "none" and pixels:
        raise UsageError(f"--env.distractors.mode {cfg.env.distractors.mode!r} appends dims to state observations; "
                         f"task {cfg.env.task!r} has pixels here: use --env.obs state or --env.distractors.mode none")
    if cfg.env.obs == "pixels" and tuple(cfg.env.size) != (64, 64):
        raise UsageError(f"--env.size {list(cfg.env.size)}: the conv world model takes 64x64 images; accepted: "
                         "[64, 64]")
    limit = episode_steps(cfg)
    if limit is not None and cfg.replay.length > limit + 1:
        raise UsageError(f"--replay.length {cfg.replay.length} is longer than an episode ({limit + 1} stored steps "
                         f"for a {limit}-agent-step time limit): no chunk could ever be sampled; accepted: <= "
                         f"{limit + 1}")
    if cfg.run.device == "cuda" and not cuda_available():
        raise UsageError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    from bilevel.precision import resolve as resolve_precision
    from bilevel.trainer import check_float16
    from recipes.run import bilevel_config

    wm_mode = cfg.run.precisions["world_model"]
    if resolve_precision(wm_mode, cfg.run.device) == "16":
        try:
            check_float16(bilevel_config(cfg))
        except ValueError as e:
            which = "run.precision" if cfg.run.world_model_precision in (None, "auto") else "run.world_model_precision"
            raise UsageError(f"--{which} {wm_mode}: {e}") from None
    if cfg.run.compile and cfg.run.device == "cpu" and cxx_compiler() is None:
        raise UsageError("--run.compile true needs a C++ compiler on CPU (torch.compile builds its kernels with "
                         "$CXX, g++, clang++ or c++) and none is on the PATH; install one or use --run.compile false")
    try:
        get_upper_loss(cfg.tempo.upper_loss)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--upper-loss {cfg.tempo.upper_loss!r}: {e}") from None
    logdir = Path(cfg.run.logdir).expanduser()
    if logdir.exists() and not logdir.is_dir():
        raise UsageError(f"--logdir {str(logdir)!r} exists and is not a directory")
    parent = logdir
    while not parent.exists():
        parent = parent.parent
    try:  # really try: permission bits lie for root and read-only mounts
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as e:
        raise UsageError(f"--logdir {str(logdir)!r} is not writable ({str(parent)!r}: {e.strerror})") from None

