"""Any installed gymnasium environment behind the uniform interface.

Vector (``Box``) observations become ``{'state': float32[D]}``; image observations (uint8 HxWxC) or
``obs='pixels'`` on a renderable env become ``{'image': uint8[H, W, C]}`` resized with ``cv2.INTER_AREA``.
``Box`` actions are rescaled from [-1, 1] to the env bounds so the agent always sees normalised actions;
``Discrete`` actions are one-hot vectors (``action_dim = n``).
"""

from __future__ import annotations

import numpy as np

from envs.base import Env


def _is_image_space(space) -> bool:
    return len(space.shape) == 3 and space.dtype == np.uint8 and space.shape[-1] in (1, 3)


class Gym(Env):
    action_repeat_default = 1  # DreamerV2's; the one place it is written

    def __init__(
        self,
        env_id: str,
        obs: str = "auto",
        seed: int = 0,
        size: tuple[int, int] = (64, 64),
        action_repeat: int | None = None,
        time_limit: int | None = None,
        **make_kwargs,
    ) -> None:
        super().__init__(time_limit)
        import gymnasium
        from gymnasium import spaces

        render = obs == "pixels"
        env = gymnasium.make(env_id, render_mode="rgb_array" if render else None, **make_kwargs)
        space = env.observation_space
        if not isinstance(space, spaces.Box):
            env.close()
            raise ValueError(f"{env_id}: only Box observation spaces are supported, got {space}")
        image_obs = _is_image_space(space)
        if obs == "auto":
            obs = "pixels" if image_obs else "state"
        if obs == "state" and image_obs:
            env.close()
            raise ValueError(f"{env_id} has image observations; use obs='pixels' or 'auto'")
        self._mode = "state" if obs == "state" else ("image" if image_obs else "render")
        self._env = env
        self._size = (int(size[0]), int(size[1]))
        self.action_repeat = action_repeat or self.action_repeat_default  # frames per agent step
        self._seed: int | None = seed

        if self._mode == "state":
            self.obs_space = {"state": (int(np.prod(space.shape)),)}
        else:
            channels = space.shape[-1] if self._mode == "image" else 3
            self.obs_space = {"image": (*self._size, int(channels))}

        act = env.action_space
        if isinstance(act, spaces.Discrete):
            self.discrete, self.action_dim, self._start = True, int(act.n), int(act.start)
        elif isinstance(act, spaces.Box) and len(act.shape) == 1:
            if not (np.all(np.isfinite(act.low)) and np.all(np.isfinite(act.high))):
                env.close()
                raise ValueError(f"{env_id}: Box action space must be bounded to rescale from [-1, 1]")
            self.discrete, self.action_dim = False, int(act.shape[0])
            self._low, self._high = act.low.astype(np.float64), act.high.astype(np.float64)
        else:
            env.close()
            raise ValueError(f"{env_id}: unsupported action space {act}")
        env.action_space.seed(seed)

    def _payload(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        if self._mode == "state":
            return {"state": np.asarray(raw, dtype=np.float32).reshape(-1)}
        import cv2

        image = raw if self._mode == "image" else self._env.render()
        image = np.asarray(image, dtype=np.uint8)
        if image.shape[:2] != self._size:
            image = cv2.resize(image, self._size[::-1], interpolation=cv2.INTER_AREA)
            if image.ndim == 2:
                image = image[..., None]
        return {"image": image}

    def _reset(self) -> dict[str, np.ndarray]:
        raw, _ = self._env.reset(seed=self._seed)
        self._seed = None
        return self._payload(raw)

    def _step(self, action: int | np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool]:
        if self.discrete:
            action = int(action) + self._start
        else:
            scaled = self._low + (action + 1.0) * 0.5 * (self._high - self._low)
            action = scaled.astype(self._env.action_space.dtype)
        reward, terminated, truncated = 0.0, False, False
        for _ in range(self.action_repeat):
            raw, r, terminated, truncated, _ = self._env.step(action)
            reward += float(r)
            if terminated or truncated:
                break
        return self._payload(raw), reward, bool(terminated), bool(truncated)

    def close(self) -> None:
        self._env.close()
