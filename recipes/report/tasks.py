"""What the report knows about each task: its canonical name, how its returns are normalised (DMC's maximum, the
Atari random/human table) and published returns to draw for scale.

These are reference numbers, not computations: they live apart from the runs and the statistics so that a new
suite or game is one table entry.
"""

from __future__ import annotations

import numpy as np

from envs.registry import split_task  # the one parser of "suite:name" task names

DMC_MAX_RETURN = 1000.0  # every DMC task pays at most 1 per step over 1000 steps

# Random and human scores per Atari game, (random, human): the standard Atari-57 table of no-op-start evaluations
# (random agent; professional human tester), as in DeepMind's DQN Zoo, `dqn_zoo/atari_data.py`, whose values are
# the ones behind the human-normalised scores of the Atari-100k literature (e.g. rliable, Agarwal et al. 2021,
# and the rliable authors' `google-research/reincarnating_rl/atari_scores.py` give the same random scores).
# All 57 games; the 26 of Atari 100k (alien ... up_n_down) and the TEMPO paper's six (bank_heist, crazy_climber,
# freeway, hero, kangaroo, pong) are among them. Keys are the snake_case names of `atari:<game>` tasks.
ATARI_RANDOM_HUMAN: dict[str, tuple[float, float]] = {
    "alien": (227.8, 7127.7),
    "amidar": (5.8, 1719.5),
    "assault": (222.4, 742.0),
    "asterix": (210.0, 8503.3),
    "asteroids": (719.1, 47388.7),
    "atlantis": (12850.0, 29028.1),
    "bank_heist": (14.2, 753.1),
    "battle_zone": (2360.0, 37187.5),
    "beam_rider": (363.9, 16926.5),
    "berzerk": (123.7, 2630.4),
    "bowling": (23.1, 160.7),
    "boxing": (0.1, 12.1),
    "breakout": (1.7, 30.5),
    "centipede": (2090.9, 12017.0),
    "chopper_command": (811.0, 7387.8),
    "crazy_climber": (10780.5, 35829.4),
    "defender": (2874.5, 18688.9),
    "demon_attack": (152.1, 1971.0),
    "double_dunk": (-18.6, -16.4),
    "enduro": (0.0, 860.5),
    "fishing_derby": (-91.7, -38.7),
    "freeway": (0.0, 29.6),
    "frostbite": (65.2, 4334.7),
    "gopher": (257.6, 2412.5),
    "gravitar": (173.0, 3351.4),
    "hero": (1027.0, 30826.4),
    "ice_hockey": (-11.2, 0.9),
    "jamesbond": (29.0, 302.8),
    "kangaroo": (52.0, 3035.0),
    "krull": (1598.0, 2665.5),
    "kung_fu_master": (258.5, 22736.3),
    "montezuma_revenge": (0.0, 4753.3),
    "ms_pacman": (307.3, 6951.6),
    "name_this_game": (2292.3, 8049.0),
    "phoenix": (761.4, 7242.6),
    "pitfall": (-229.4, 6463.7),
    "pong": (-20.7, 14.6),
    "private_eye": (24.9, 69571.3),
    "qbert": (163.9, 13455.0),
    "riverraid": (1338.5, 17118.0),
    "road_runner": (11.5, 7845.0),
    "robotank": (2.2, 11.9),
    "seaquest": (68.4, 42054.7),
    "skiing": (-17098.1, -4336.9),
    "solaris": (1236.3, 12326.7),
    "space_invaders": (148.0, 1668.7),
    "star_gunner": (664.0, 10250.0),
    "surround": (-10.0, 6.5),
    "tennis": (-23.8, -8.3),
    "time_pilot": (3568.0, 5229.2),
    "tutankham": (11.4, 167.6),
    "up_n_down": (533.4, 11693.2),
    "venture": (0.0, 1187.5),
    "video_pinball": (16256.9, 17667.9),
    "wizard_of_wor": (563.5, 4756.5),
    "yars_revenge": (3092.9, 54576.9),
    "zaxxon": (32.5, 9173.3),
}

# Published returns for scale on the per-task curves: task -> [(label, frames, mean, std over seeds or None, source)].
# Means and sample stds (ddof=1) over the 5 seeds of each file, computed here from the files themselves.
#
# Units: both files count ENVIRONMENT FRAMES (agent steps x action repeat), so the points are drawn at these x:
# * DreamerV3, `scores/dmc_proprio-dreamerv3.json.gz`, added in danijar/dreamerv3 commit 2411f7d (2024-04-15; the
#   file is unchanged since). At that commit `dreamerv3/main.py` lines 121-133 (`make_logger`) build the logger with
#   `multiplier = config.env.get(<suite>, {}).get('repeat', 1)` (line 124), `dreamerv3/configs.yaml` line 84 sets
#   `env.dmc.repeat: 2`, and `embodied/core/logger.py` line 32 logs `step = int(self.step) * self.multiplier`,
#   while `embodied/run/train.py` line 69 increments `step` once per agent step. Also consistent: the file's x runs
#   to 4.9e5 while that commit's `dmc_proprio` config runs `run.steps: 3e5` agent steps (configs.yaml line 237),
#   i.e. 6e5 frames. (HEAD, e3f0224, keeps the multiplier, main.py lines 155 and 179, with `repeat: 1`.) Its y is
#   the return of *training* episodes (`episode/score`, train.py lines 37 and 58-61; main.py line 128 writes it to
#   `scores.jsonl`), given every 1e4 frames.
# * Official DreamerV2, `scores/dmc-vision-dreamerv2.json` (danijar/dreamerv2 commit 07d906e, pixels): its
#   `dreamerv2/train.py` line 68 builds `common.Logger(step, outputs, multiplier=config.action_repeat)` and
#   `dreamerv2/common/logger.py` line 20 logs `int(self._step) * self._multiplier`; `step` counts agent steps
#   (train.py line 134), `dmc_vision` has `action_repeat: 2` (configs.yaml line 123). Its y is the evaluation return
#   (`eval_return`, train.py line 103), given every 3e4 frames: the point nearest 1e5 frames is at 9e4 (the next is
#   at 1.2e5), and it is drawn there.
_DV3_PROPRIO = "danijar/dreamerv3 scores/dmc_proprio-dreamerv3.json.gz (proprio, training episodes, 5 seeds)"
_DV2_PIXELS = "danijar/dreamerv2 scores/dmc-vision-dreamerv2.json (pixels, evaluation episodes, 5 seeds)"
_V3, _V2 = "DreamerV3 (proprio)", "DreamerV2 official (pixels)"
ANCHORS: dict[str, list[tuple[str, int, float, float | None, str]]] = {
    "cartpole_swingup": [(_V3, 20_000, 189.0, 29.7, _DV3_PROPRIO), (_V3, 100_000, 527.7, 40.7, _DV3_PROPRIO),
                         (_V2, 90_000, 386.8, 145.0, _DV2_PIXELS)],
    "finger_spin": [(_V3, 20_000, 36.2, 36.0, _DV3_PROPRIO), (_V3, 100_000, 765.8, 82.2, _DV3_PROPRIO),
                    (_V2, 90_000, 322.9, 158.0, _DV2_PIXELS)],
    "reacher_easy": [(_V3, 20_000, 36.2, 44.7, _DV3_PROPRIO), (_V3, 100_000, 693.4, 385.6, _DV3_PROPRIO),
                     (_V2, 90_000, 211.0, 38.0, _DV2_PIXELS)],
    "walker_stand": [(_V3, 20_000, 196.5, 27.9, _DV3_PROPRIO), (_V3, 100_000, 767.3, 164.1, _DV3_PROPRIO),
                     (_V2, 90_000, 669.7, 151.4, _DV2_PIXELS)],
    "walker_walk": [(_V3, 20_000, 88.5, 31.6, _DV3_PROPRIO), (_V3, 100_000, 475.2, 175.3, _DV3_PROPRIO),
                    (_V2, 90_000, 408.2, 65.0, _DV2_PIXELS)],
}


def canonical_task(task: str) -> str:
    """``dmc:walker_stand`` -> ``walker_stand`` (DMC is the default suite); other suites keep their prefix."""
    suite, name = split_task(task)
    return name if suite == "dmc" else f"{suite}:{name}"


def normalisation(task: str) -> dict | None:
    """How ``task``'s returns are normalised (``{"suite", "kind", "random", "max"}``), None if it cannot be."""
    suite, name = split_task(task)
    if suite == "dmc":
        return {"suite": "dmc", "kind": "return / 1000", "random": 0.0, "max": DMC_MAX_RETURN}
    if suite == "atari" and name.lower() in ATARI_RANDOM_HUMAN:
        random, human = ATARI_RANDOM_HUMAN[name.lower()]
        return {"suite": "atari", "kind": "(return - random) / (human - random)", "random": random, "max": human}
    return None


def normalise(task: str, returns: np.ndarray | float) -> np.ndarray | float | None:
    """Normalised score(s): DMC ``return / 1000``, Atari human-normalised; None for tasks with no reference."""
    norm = normalisation(task)
    if norm is None:
        return None
    return (np.asarray(returns, dtype=np.float64) - norm["random"]) / (norm["max"] - norm["random"])


def anchors_for(tasks: list[str]) -> dict[str, list[dict]]:
    """:data:`ANCHORS` of the sweep's tasks, as JSON-ready dicts; tasks without published returns are absent."""
    keys = ("label", "frames", "mean", "std", "source")
    return {t: [dict(zip(keys, a, strict=True)) for a in ANCHORS[t]] for t in tasks if t in ANCHORS}
