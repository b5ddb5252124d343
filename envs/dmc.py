"""DeepMind Control Suite environments (DreamerV2 setup: 64x64 pixels, action repeat 2, camera choice).

``dm_control`` is imported lazily so that ``MUJOCO_GL`` (set in ``envs/__init__``) is in place before MuJoCo
picks a rendering backend, and so that importing ``envs`` stays cheap for Atari-only runs.
"""

from __future__ import annotations

import functools

import numpy as np

from envs.base import Env

SCALAR_KEYS = ("drop", "keep")
# DreamerV2 names ball_in_cup tasks "cup_*" (e.g. cup_catch); accept both spellings.
DOMAIN_ALIASES = {"cup": "ball_in_cup"}


@functools.cache
def dmc_tasks() -> dict[str, tuple[str, str]]:
    """Map every accepted task name (``domain_task`` plus aliases) to the suite's ``(domain, task)``."""
    from dm_control import suite

    names: dict[str, tuple[str, str]] = {}
    for domain, task in suite.ALL_TASKS:
        names[f"{domain}_{task}"] = (domain, task)
    for alias, domain in DOMAIN_ALIASES.items():
        for dom, task in suite.ALL_TASKS:
            if dom == domain:
                names[f"{alias}_{task}"] = (dom, task)
    return names


class DMC(Env):
    """A dm_control suite task with pixel (``image``) or proprioceptive (``state``) observations.

    The suite's own time limit (1000 physics-control steps for the standard tasks, i.e. 500 agent steps at
    action repeat 2) ends episodes; those ends are truncations, so ``is_terminal`` is only set if the task
    reports a zero discount at the last step (no standard suite task does).
    """

    action_repeat_default = 2  # DreamerV2's; the one place it is written

    def __init__(
        self,
        name: str,
        obs: str = "pixels",
        seed: int = 0,
        size: tuple[int, int] = (64, 64),
        action_repeat: int | None = None,
        time_limit: int | None = None,
        camera: int | None = None,
        scalar_keys: str = "drop",
    ) -> None:
        super().__init__(time_limit)
        if obs not in ("pixels", "state"):
            raise ValueError(f"DMC obs must be 'pixels' or 'state', got {obs!r}")
        if scalar_keys not in SCALAR_KEYS:
            raise ValueError(f"scalar_keys must be one of {SCALAR_KEYS}, got {scalar_keys!r}")
        from dm_control import suite

        domain, task = dmc_tasks()[name]
        self._env = suite.load(domain, task, task_kwargs={"random": seed})
        self._obs_mode = obs
        self._size = tuple(size)
        self.action_repeat = action_repeat or self.action_repeat_default  # frames per agent step
        # DreamerV2: the default camera of quadruped looks at the floor far away; camera 2 tracks the body.
        self._camera = camera if camera is not None else (2 if domain == "quadruped" else 0)
        spec = self._env.action_spec()
        self._low, self._high = spec.minimum.astype(np.float64), spec.maximum.astype(np.float64)
        self.action_dim = int(spec.shape[0])
        self.discrete = False
        if obs == "pixels":
            self.obs_space = {"image": (*self._size, 3)}
        else:
            # DreamerV2/TEMPO's MLP encoder reads only 1-D keys, so scalar keys (walker's height, quadruped's
            # torso_upright) never reach the reference's model: dropped by default.
            spec_obs = self._env.observation_spec()
            self._keys = [k for k, v in spec_obs.items() if scalar_keys == "keep" or len(v.shape) == 1]
            self.obs_space = {"state": (sum(int(np.prod(spec_obs[k].shape)) for k in self._keys),)}

    def _payload(self, time_step) -> dict[str, np.ndarray]:
        if self._obs_mode == "pixels":
            image = self._env.physics.render(*self._size, camera_id=self._camera)
            return {"image": np.ascontiguousarray(image, dtype=np.uint8)}
        parts = [np.asarray(time_step.observation[k], dtype=np.float32).reshape(-1) for k in self._keys]
        return {"state": np.concatenate(parts)}

    def _reset(self) -> dict[str, np.ndarray]:
        return self._payload(self._env.reset())

    def _step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool]:
        # Rescale [-1, 1] to the actuator bounds (all suite tasks use [-1, 1] already, but stay generic).
        action = self._low + (action + 1.0) * 0.5 * (self._high - self._low)
        reward = 0.0
        for _ in range(self.action_repeat):
            time_step = self._env.step(action)
            reward += time_step.reward or 0.0
            if time_step.last():
                break
        terminated = bool(time_step.last() and time_step.discount == 0.0)
        truncated = bool(time_step.last() and not terminated)
        return self._payload(time_step), reward, terminated, truncated

    def render(self, size: tuple[int, int] | None = None, camera: int | None = None) -> np.ndarray:
        """RGB frame of the current state (also usable in state mode, e.g. for videos)."""
        height, width = size or self._size
        return self._env.physics.render(height, width, camera_id=self._camera if camera is None else camera)

    def close(self) -> None:
        try:
            self._env.close()
        except Exception:  # noqa: BLE001 - closing a half-torn-down GL context must not mask real errors.
            pass
