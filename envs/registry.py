"""Task-name parsing, validation and the ``make_env`` factory.

Task names are ``suite:name`` with suites ``dmc`` (default when no prefix is given), ``atari`` and ``gym``:
``finger_spin`` / ``dmc:cup_catch``, ``atari:crazy_climber``, ``gym:Pendulum-v1``. Validation runs before
anything is constructed so a typo in a sweep config fails in milliseconds with suggestions, not after
minutes of setup (or, worse, after the run has already allocated a replay directory).
"""

from __future__ import annotations

import difflib
import importlib.util

from envs.base import Env

SUITES = ("dmc", "atari", "gym")
OBS_MODES = ("auto", "pixels", "state")
SUITES_HELP = (
    "Known suites: 'dmc:<domain>_<task>' (default when no prefix, e.g. 'finger_spin', 'cup_catch'), "
    "'atari:<snake_case game>' (e.g. 'atari:pong'), 'gym:<gymnasium id>' (e.g. 'gym:Pendulum-v1')."
)

# The tasks used in the DreamerV2 / TEMPO experiments.
PAPER_DMC_TASKS = (
    "acrobot_swingup",
    "cartpole_swingup",
    "cheetah_run",
    "cup_catch",
    "finger_spin",
    "hopper_stand",
    "pendulum_swingup",
    "quadruped_walk",
    "walker_walk",
)
PAPER_ATARI_GAMES = ("bank_heist", "crazy_climber", "freeway", "hero", "kangaroo", "pong")


def split_task(task: str) -> tuple[str, str]:
    if not isinstance(task, str) or not task.strip():
        raise ValueError(f"Task must be a non-empty string, got {task!r}. {SUITES_HELP}")
    task = task.strip()
    if ":" in task:
        suite, name = task.split(":", 1)
        return suite.strip().lower(), name.strip()
    return "dmc", task


def _unknown(task: str, name: str, candidates: dict[str, str]) -> ValueError:
    """Build the error for an unknown name; ``candidates`` maps comparable keys to display names."""
    keys = difflib.get_close_matches(name.lower(), list(candidates), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(candidates[k] for k in keys)}?" if keys else ""
    return ValueError(f"Unknown task {task!r}.{hint} {SUITES_HELP}")


def validate_task(task: str) -> tuple[str, str]:
    """Check that ``task`` names an existing environment without constructing it.

    Returns ``(suite, name)``. Raises ``ValueError`` listing close matches and the known suites otherwise.
    """
    suite, name = split_task(task)
    if suite not in SUITES:
        keys = difflib.get_close_matches(suite, SUITES, n=3, cutoff=0.5)
        hint = f" Did you mean suite: {', '.join(keys)}?" if keys else ""
        raise ValueError(f"Unknown suite {suite!r} in task {task!r}.{hint} {SUITES_HELP}")

    if suite == "dmc":
        from envs.dmc import dmc_tasks

        if name in dmc_tasks():
            return suite, name
        candidates = {n.lower(): n for n in dmc_tasks()}
        if ":" not in task:  # a bare name may also be an Atari game typed without its prefix
            from envs.atari import atari_games

            candidates.update({g: f"atari:{g}" for g in atari_games() if g not in candidates})
        raise _unknown(task, name, candidates)

    if suite == "atari":
        from envs.atari import atari_games

        if name in atari_games():
            return suite, name
        raise _unknown(task, name, {g: f"atari:{g}" for g in atari_games()})

    import gymnasium

    if importlib.util.find_spec("ale_py") is not None:  # ALE ids are gym ids too, where ale-py is installed
        from envs.atari import _register

        _register()
    if name in gymnasium.registry:
        return suite, name
    raise _unknown(task, name, {k.lower(): f"gym:{k}" for k in gymnasium.registry})


def make_env(
    task: str,
    obs: str = "auto",
    seed: int = 0,
    size: tuple[int, int] = (64, 64),
    action_repeat: int | None = None,
    time_limit: int | None = None,
    scalar_keys: str = "drop",
    distractors: dict | None = None,
    **kw,
) -> Env:
    """Create an environment with the uniform dict-observation interface (see ``envs.base.Env``).

    Args:
        task: ``suite:name`` (see module docstring).
        obs: ``'pixels'``, ``'state'`` or ``'auto'`` (DMC and Atari: pixels; gym: state for vector obs).
        seed: Seeds the task's randomness (DMC task RNG, gymnasium/ALE reset seed).
        size: Image size ``(height, width)``.
        action_repeat: Defaults to DreamerV2's values: DMC 2, Atari 4, gym 1.
        time_limit: Episode limit in *agent* steps (after action repeat). ``None`` keeps the suite default:
            DMC's own 1000 control steps (= 500 agent steps at repeat 2), Atari 27000, gym registry limit.
        scalar_keys: DMC states: ``'drop'`` the scalar observation keys as DreamerV2's encoder does (the
            default), or ``'keep'`` them. Other suites have none.
        distractors: ``envs.distractors.wrap_distractors`` options (``mode``, ``dims``, ``scale``,
            ``switch_prob``), seeded from ``seed``; None or mode ``'none'`` adds nothing. State observations only.
        **kw: Suite-specific options (DMC ``camera``; Atari ``sticky``, ``noop_max``, ``grayscale``,
            ``full_action_space``; gym: forwarded to ``gymnasium.make``).
    """
    from envs.distractors import wrap_distractors

    env = _make(task, obs, seed, size, action_repeat, time_limit, scalar_keys, **kw)
    return wrap_distractors(env, seed=seed, **(distractors or {}))


def _make(task: str, obs: str, seed: int, size: tuple[int, int], action_repeat: int | None, time_limit: int | None,
          scalar_keys: str, **kw) -> Env:
    if obs not in OBS_MODES:
        raise ValueError(f"obs must be one of {OBS_MODES}, got {obs!r}")
    suite, name = validate_task(task)
    if suite == "dmc":
        from envs.dmc import DMC

        mode = "pixels" if obs == "auto" else obs
        return DMC(name, mode, seed, size, action_repeat, time_limit, scalar_keys=scalar_keys, **kw)
    if suite == "atari":
        from envs.atari import DEFAULT_TIME_LIMIT, Atari

        if obs == "state":
            raise ValueError("Atari only supports pixel observations (obs='pixels' or 'auto')")
        limit = DEFAULT_TIME_LIMIT if time_limit is None else time_limit
        return Atari(name, seed, size, action_repeat, limit, **kw)
    from envs.gym_env import Gym

    return Gym(name, obs, seed, size, action_repeat, time_limit, **kw)
