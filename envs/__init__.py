"""Environments (DMC, Atari, gymnasium) behind one dict-observation interface, plus the episode replay.

``MUJOCO_GL`` must be chosen before dm_control/mujoco are first imported; EGL renders headless on GPU and
CPU (Mesa) machines alike. ``setdefault`` keeps an explicit user choice (e.g. ``osmesa``).
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

from envs.base import Env, EpisodeEndedError, Obs  # noqa: E402
from envs.registry import (  # noqa: E402
    PAPER_ATARI_GAMES,
    PAPER_DMC_TASKS,
    SUITES,
    make_env,
    validate_task,
)
from envs.replay import Replay  # noqa: E402

__all__ = [
    "Env",
    "EpisodeEndedError",
    "Obs",
    "PAPER_ATARI_GAMES",
    "PAPER_DMC_TASKS",
    "Replay",
    "SUITES",
    "make_env",
    "validate_task",
]
