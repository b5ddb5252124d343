"""Chaotic distractor coordinates appended to state observations, switched on and off by a hidden gate.

This is a designed test of sample reweighting. Some time steps carry observation content that is useless to the
task, and a per-time-step weighting (TEMPO) should learn to down-weight them. The wrapper appends ``dims``
coordinates to ``obs['state']``. They come from independent Lorenz-63 systems and are multiplied by a hidden
0/1 gate.

* Why Lorenz-63: it is deterministic, bounded and chaotic (largest Lyapunov exponent ~0.9), and it has a
  stationary distribution on its attractor. A world model cannot predict it far ahead, so it costs
  reconstruction and KL terms. It is independent of the actions, the reward and the task's dynamics, so a
  task-aware model loses nothing by ignoring it. Standardising by the attractor's mean and std gives unit-scale
  coordinates, which ``scale`` then sets.
* Why a gate: per-time-step weights can single out distractor steps only if distractors switch on and off
  within episodes. ``'intermittent'`` draws the gate at reset and flips it with probability ``switch_prob``
  at every agent step, so spells last ``1 / switch_prob`` steps on average.
* ``'constant'`` (gate always on) is the control: the same nuisance, but nothing for a per-step weighting to
  tell apart. ``'none'`` is the identity; ``wrap_distractors`` then returns the env itself.

The systems keep running while the gate is off. Initial states and gate flips are seeded per episode from
``(seed, episode_index)``. The gate of the last observation is ``self.gate`` and ``obs['log_distractor_on']``,
never part of ``obs['state']``: a `log_` key, which the replay stores and batches carry for analyses (which steps
the weights favour) but no model reads.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from envs.base import Env, Obs

MODES = ("none", "constant", "intermittent")
SIGMA, RHO, BETA = 10.0, 28.0, 8.0 / 3.0  # the classic chaotic parameters
DT, SUBSTEPS, BURN_IN = 0.01, 5, 500  # RK4 step, RK4 steps per agent step (0.05 time units), steps to the attractor
FLAGS = ("reward", "is_first", "is_last", "is_terminal")


def lorenz(s: np.ndarray) -> np.ndarray:
    """The Lorenz-63 vector field for states of shape ``[..., 3]``."""
    x, y, z = s[..., 0], s[..., 1], s[..., 2]
    return np.stack([SIGMA * (y - x), x * (RHO - z) - y, x * y - BETA * z], axis=-1)


def rk4(s: np.ndarray, steps: int = 1, dt: float = DT) -> np.ndarray:
    """Integrate ``steps`` classic Runge-Kutta-4 steps of size ``dt``. A fixed step keeps runs bit-reproducible."""
    for _ in range(steps):
        k1 = lorenz(s)
        k2 = lorenz(s + 0.5 * dt * k1)
        k3 = lorenz(s + 0.5 * dt * k2)
        k4 = lorenz(s + dt * k3)
        s = s + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return s


def on_attractor(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` independent states on the attractor: random points around it, then ``BURN_IN`` RK4 steps (5 time
    units, several Lyapunov times, so the start leaves no trace)."""
    return rk4(rng.normal([0.0, 0.0, 25.0], 10.0, size=(n, 3)), BURN_IN)


@functools.cache
def attractor_stats() -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate (mean, std) on the attractor, computed once per process (~0.6 s) with a fixed seed: 256
    systems sampled every agent step for 1000 agent steps (12,800 time units), plus their mirror images, since the
    attractor is symmetric under (x, y, z) -> (-x, -y, z) (so the x and y means are 0 up to rounding). The result
    is mean (0, 0, 23.60), std (7.93, 9.00, 8.57)."""
    s, samples = on_attractor(np.random.default_rng(0), 256), []
    for _ in range(1000):
        s = rk4(s, SUBSTEPS)
        samples.append(s)
    x = np.concatenate(samples)
    x = np.concatenate([x, x * [-1.0, -1.0, 1.0]])
    return x.mean(0), x.std(0)


def check_distractors(mode: str, dims: int, scale: float, switch_prob: float, seed: int = 0) -> None:
    """Raise a one-line ValueError naming the first bad value and what is accepted."""

    def integer(v: Any, types: tuple = (int, np.integer)) -> bool:
        return isinstance(v, types) and not isinstance(v, bool)

    def number(v: Any) -> bool:
        return integer(v, (int, float, np.integer, np.floating))

    checks = (
        ("mode", mode, isinstance(mode, str) and mode in MODES, ", ".join(MODES)),
        ("dims", dims, integer(dims) and dims >= 1, "an integer >= 1"),
        ("scale", scale, number(scale) and 0 < scale < math.inf, "a finite number > 0"),
        ("switch_prob", switch_prob, number(switch_prob) and 0 < switch_prob <= 1, "a probability in (0, 1]"),
        ("seed", seed, integer(seed) and seed >= 0, "an integer >= 0"),
    )
    for name, value, ok, accepted in checks:
        if not ok:
            raise ValueError(f"distractors {name} {value!r}: accepted: {accepted}")


class Distractors(Env):
    """Wraps a state-observation env and appends ``dims`` gated Lorenz coordinates (see the module docstring).

    Reward, ``is_terminal`` and truncation are the inner env's, and so are its time limit and action handling.
    """

    def __init__(self, env: Env, mode: str = "intermittent", dims: int = 3, scale: float = 1.0,
                 switch_prob: float = 0.1, seed: int = 0) -> None:
        super().__init__(time_limit=None)  # the inner env ends episodes
        check_distractors(mode, dims, scale, switch_prob, seed)
        if set(env.obs_space) != {"state"}:
            raise ValueError(f"distractors obs_space keys {sorted(env.obs_space)}: accepted: ['state'] (obs='state')")
        self.env, self.mode, self.dims, self.scale, self.switch_prob = env, mode, dims, scale, switch_prob
        self.seed = seed
        self.action_dim, self.discrete = env.action_dim, env.discrete
        for name in ("action_repeat", "render"):  # what the inner env has of these (gym state envs: no render)
            if hasattr(env, name):
                setattr(self, name, getattr(env, name))
        self.obs_space = {"state": (env.obs_space["state"][0] + (0 if mode == "none" else dims),)}
        self.gate = False  # the gate of the last observation
        self._episode = 0
        self._rng = np.random.default_rng([seed, 0])
        self._lorenz = np.zeros((math.ceil(dims / 3), 3))

    def _payload(self, obs: Obs) -> dict[str, Any]:
        payload = {k: v for k, v in obs.items() if k not in FLAGS}
        if self.mode == "none":
            return payload
        if self.gate:
            mean, std = attractor_stats()
            extra = ((self._lorenz - mean) / std).reshape(-1)[: self.dims] * self.scale
        else:
            extra = np.zeros(self.dims)
        payload["state"] = np.concatenate([obs["state"], extra.astype(np.float32)])
        payload["log_distractor_on"] = self.gate
        return payload

    def _reset(self) -> dict[str, Any]:
        self._rng = np.random.default_rng([self.seed, self._episode])
        self._episode += 1
        if self.mode != "none":
            self._lorenz = on_attractor(self._rng, len(self._lorenz))
            self.gate = self.mode == "constant" or bool(self._rng.integers(2))
        return self._payload(self.env.reset())

    def _step(self, action: int | np.ndarray) -> tuple[dict[str, Any], float, bool, bool]:
        obs = self.env.step(action)
        if self.mode != "none":
            self._lorenz = rk4(self._lorenz, SUBSTEPS)
            if self.mode == "intermittent" and self._rng.random() < self.switch_prob:
                self.gate = not self.gate
        terminated = bool(obs["is_terminal"])
        return self._payload(obs), float(obs["reward"]), terminated, bool(obs["is_last"]) and not terminated

    def close(self) -> None:
        self.env.close()


def wrap_distractors(env: Env, mode: str = "none", dims: int = 3, scale: float = 1.0, switch_prob: float = 0.1,
                     seed: int = 0) -> Env:
    """``Distractors(env, ...)``, or ``env`` itself for ``mode='none'`` (all values are checked either way)."""
    check_distractors(mode, dims, scale, switch_prob, seed)
    return env if mode == "none" else Distractors(env, mode, dims, scale, switch_prob, seed)
