"""Atari 2600 via gymnasium + ale-py, with the DreamerV2 preprocessing.

DreamerV2 settings: 64x64 grayscale, action repeat 4 with max-pooling of the last two frames, sticky actions
(repeat_action_probability 0.25), up to 30 no-ops at reset, no life-loss terminals, 27000 agent steps
(108000 frames) per episode. All but the time limit come from gymnasium's ``AtariPreprocessing`` applied to
an ALE env created with ``frameskip=1`` (the wrapper does the skipping and max-pooling itself).
"""

from __future__ import annotations

import functools

import numpy as np

from envs.base import Env

DEFAULT_TIME_LIMIT = 27000  # agent steps = 108000 frames at action repeat 4


def _register() -> None:
    import ale_py
    import gymnasium

    gymnasium.register_envs(ale_py)


@functools.cache
def atari_games() -> dict[str, str]:
    """Map snake_case game names (ale-py ROM ids, ``crazy_climber``) to ALE ids (``ALE/CrazyClimber-v5``).

    Matching is done through the gymnasium registry rather than by re-casing the name, so oddly cased games
    (e.g. ``tic_tac_toe_3d``) map correctly and only games with both a ROM and an env id are listed.
    """
    import gymnasium
    from ale_py import roms

    _register()
    by_key = {}
    for env_id in gymnasium.registry:
        if env_id.startswith("ALE/") and env_id.endswith("-v5"):
            by_key[env_id[4:-3].lower()] = env_id
    games = {}
    for rom in roms.get_all_rom_ids():
        env_id = by_key.get(rom.replace("_", ""))
        if env_id is not None:
            games[rom] = env_id
    return games


class Atari(Env):
    """An ALE game with ``{'image': (H, W, 1)}`` uint8 grayscale observations and one-hot discrete actions."""

    action_repeat_default = 4  # DreamerV2's; the one place it is written

    def __init__(
        self,
        game: str,
        seed: int = 0,
        size: tuple[int, int] = (64, 64),
        action_repeat: int | None = None,
        time_limit: int | None = DEFAULT_TIME_LIMIT,
        sticky: float = 0.25,
        noop_max: int = 30,
        grayscale: bool = True,
        full_action_space: bool = False,
    ) -> None:
        super().__init__(time_limit)
        import gymnasium
        from gymnasium.wrappers import AtariPreprocessing

        env_id = atari_games()[game]
        self.action_repeat = action_repeat or self.action_repeat_default  # frames per agent step
        # frameskip=1: AtariPreprocessing repeats the action and max-pools the last two frames itself.
        # The ALE frame cap (which also counts the reset no-ops) is set just above our agent-step limit so
        # that the agent-step limit is the binding one; 0 disables it when time_limit is None.
        max_frames = (time_limit * self.action_repeat + noop_max + 1) if time_limit else 0
        env = gymnasium.make(
            env_id,
            frameskip=1,
            repeat_action_probability=sticky,
            full_action_space=full_action_space,
            max_num_frames_per_episode=max_frames,
        )
        self._env = AtariPreprocessing(
            env,
            noop_max=noop_max,
            frame_skip=self.action_repeat,
            screen_size=(int(size[1]), int(size[0])),  # cv2 convention: (width, height)
            terminal_on_life_loss=False,
            grayscale_obs=grayscale,
            grayscale_newaxis=True,
            scale_obs=False,
        )
        self._seed: int | None = seed  # gymnasium seeds on the first reset only
        self.obs_space = {"image": (int(size[0]), int(size[1]), 1 if grayscale else 3)}
        self.action_dim = int(self._env.action_space.n)
        self.discrete = True

    def _reset(self) -> dict[str, np.ndarray]:
        image, _ = self._env.reset(seed=self._seed)
        self._seed = None
        return {"image": np.asarray(image, dtype=np.uint8)}

    def _step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool]:
        image, reward, terminated, truncated, _ = self._env.step(action)
        return {"image": np.asarray(image, dtype=np.uint8)}, float(reward), bool(terminated), bool(truncated)

    def close(self) -> None:
        self._env.close()
