"""Uniform environment interface shared by all suites (DMC, Atari, gymnasium).

Every environment speaks the same dict-observation protocol as danijar's DreamerV2 so that the replay
buffer and the world model never need suite-specific code:

* ``obs['image']`` (uint8, HWC) or ``obs['state']`` (float32, flat vector),
* ``obs['reward']`` float32 scalar, 0 at reset,
* ``obs['is_first']``, ``obs['is_last']``, ``obs['is_terminal']`` bools. ``is_terminal`` is only set on a
  true termination (the value bootstrap must be cut), never on a time limit (``is_last`` alone).

Suites implement ``_reset`` and ``_step``; the base class owns the bookkeeping that is easy to get subtly
wrong per suite: action conversion, the agent-step time limit and the "step after episode end" guard.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

Obs = dict[str, Any]


class EpisodeEndedError(RuntimeError):
    """Raised when ``step`` is called after ``is_last`` (or before the first ``reset``)."""


class Env(abc.ABC):
    """Base class for all environments.

    Attributes:
        obs_space: Shapes of the observation payload, e.g. ``{'image': (64, 64, 3)}`` or ``{'state': (D,)}``.
        action_dim: Size of the action vector (number of discrete actions for one-hot actions).
        discrete: Whether actions are one-hot over ``action_dim`` choices (else continuous in [-1, 1]).
    """

    obs_space: dict[str, tuple[int, ...]]
    action_dim: int
    discrete: bool

    def __init__(self, time_limit: int | None = None) -> None:
        # Time limit counted in *agent* steps (after action repeat); None keeps the suite's own limit.
        self._time_limit = time_limit
        self._agent_steps = 0
        self._done = True  # Forces a reset before the first step.

    # ------------------------------------------------------------------ suite hooks
    @abc.abstractmethod
    def _reset(self) -> dict[str, np.ndarray]:
        """Reset the underlying env and return the payload (``{'image': ...}`` or ``{'state': ...}``)."""

    @abc.abstractmethod
    def _step(self, action: int | np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool]:
        """Apply an already converted action; return ``(payload, reward, terminated, truncated)``."""

    def close(self) -> None:  # noqa: B027 - optional hook, most suites override it
        """Release simulator / renderer resources."""

    # ------------------------------------------------------------------ public API
    def reset(self) -> Obs:
        self._agent_steps = 0
        self._done = False
        return self._make_obs(self._reset(), 0.0, is_first=True, is_last=False, is_terminal=False)

    def step(self, action: np.ndarray | int) -> Obs:
        if self._done:
            raise EpisodeEndedError(
                "step() called on a finished episode (the last obs had is_last=True) or before the first "
                "reset(); call reset() to start a new episode."
            )
        payload, reward, terminated, truncated = self._step(self._convert_action(action))
        self._agent_steps += 1
        if self._time_limit and self._agent_steps >= self._time_limit:  # None or 0: no agent-step limit
            truncated = True
        self._done = bool(terminated or truncated)
        return self._make_obs(payload, reward, is_first=False, is_last=self._done, is_terminal=terminated)

    # ------------------------------------------------------------------ helpers
    def _convert_action(self, action: np.ndarray | int) -> int | np.ndarray:
        """One-hot/int -> int index for discrete envs; shape-check and clip to [-1, 1] for continuous."""
        if self.discrete:
            if np.isscalar(action) or np.ndim(action) == 0:
                index = int(action)
            else:
                action = np.asarray(action)
                if action.shape != (self.action_dim,):
                    expected = (self.action_dim,)
                    raise ValueError(f"Expected one-hot action of shape {expected}, got {action.shape}")
                index = int(np.argmax(action))
            if not 0 <= index < self.action_dim:
                raise ValueError(f"Discrete action {index} out of range [0, {self.action_dim})")
            return index
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self.action_dim,):
            raise ValueError(f"Expected action of shape ({self.action_dim},), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"Action contains non-finite values: {action}")
        return np.clip(action, -1.0, 1.0)

    @staticmethod
    def _make_obs(
        payload: dict[str, np.ndarray], reward: float, *, is_first: bool, is_last: bool, is_terminal: bool
    ) -> Obs:
        obs: Obs = dict(payload)
        obs["reward"] = np.float32(reward)
        obs["is_first"] = bool(is_first)
        obs["is_last"] = bool(is_last)
        obs["is_terminal"] = bool(is_terminal)
        return obs

    def random_action(self, rng: np.random.Generator) -> np.ndarray:
        """A uniformly random action in the env's own action format (one-hot or [-1, 1] vector)."""
        if self.discrete:
            return np.eye(self.action_dim, dtype=np.float32)[rng.integers(self.action_dim)]
        return rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)

    def __enter__(self) -> Env:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(obs_space={self.obs_space}, action_dim={self.action_dim}, discrete={self.discrete})"
