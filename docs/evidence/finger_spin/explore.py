"""How finger_spin's sparse reward is found: open-loop probe policies on the real task, and what a run's agent did.

finger_spin pays 1 per physics step while the spinner turns faster than 15 rad/s one way. A run only learns it
once its replay holds such steps, so the question before spending campaign runs on it is how likely a policy is to
produce them. Two views:

    python docs/evidence/finger_spin/explore.py probe [--episodes 20]    # open-loop policies, same env as a run
    python docs/evidence/finger_spin/explore.py replay RUN [--every 5000] # a run's own episodes, in collection order

`probe` rolls out fixed policies (white noise as in the random prefill, the same noise held for k agent steps,
a sine, constant pushes) through `envs.make_env` (action repeat 2, DMC's 1000-frame episodes) and prints the
rewarded frames per 1 000. `replay` reads a run's `replay/*.npz` and prints, per window of frames, the reward
per 1 000 frames (finger_spin's rewarded frames) and two facts about its actions: the lag-1 autocorrelation (0 for
white noise) and the share saturated at |a| > 0.9.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from collections.abc import Callable

import numpy as np

from envs import make_env
from envs.dmc import DMC

Policy = Callable[[np.random.Generator, int], np.ndarray]


def probe_policies() -> dict[str, Policy]:
    """Open-loop policies over the 2-d action: what temporal structure does for finding the reward."""

    def held(k: int) -> Policy:
        last: dict[str, np.ndarray] = {}

        def act(rng: np.random.Generator, t: int) -> np.ndarray:
            if t % k == 0:  # t restarts at 0 each episode
                last["a"] = rng.uniform(-1, 1, 2)
            return last["a"]

        return act

    policies: dict[str, Policy] = {
        "uniform (random prefill)": lambda rng, t: rng.uniform(-1, 1, 2),
        "uniform held 5 steps": held(5),
        "uniform held 25 steps": held(25),
    }
    for period in (10, 20, 40):
        policies[f"sine, period {period} steps"] = lambda rng, t, p=period: np.full(2, np.sin(2 * np.pi * t / p))
    for a in ((1.0, 1.0), (-1.0, -1.0), (1.0, -1.0), (-1.0, 1.0)):
        policies[f"constant {a}"] = lambda rng, t, a=a: np.array(a)
    return policies


def rollout(policy: Policy, episodes: int, seed: int) -> tuple[int, int]:
    """(rewarded frames, frames) over `episodes` episodes of finger_spin from states."""
    env = make_env("finger_spin", obs="state", seed=seed)
    rng = np.random.default_rng(seed)
    rewarded = frames = 0
    for _ in range(episodes):
        obs, t = env.reset(), 0
        while not obs["is_last"]:
            obs = env.step(policy(rng, t).astype(np.float32))
            rewarded += int(round(float(obs["reward"])))  # an agent step sums its action repeat's 0/1 rewards
            frames += env.action_repeat
            t += 1
    env.close()
    return rewarded, frames


def replay_windows(run: str, every: int) -> list[dict[str, float]]:
    """Per `every` frames of a run's replay, in collection order: reward per 1 000 frames, action facts."""
    files = sorted(glob.glob(os.path.join(run, "replay", "*.npz")))  # names start with their save time
    if not files:
        raise SystemExit(f"{run}: no replay/*.npz (a run directory of recipes.tempo is expected)")
    with open(os.path.join(run, "config.json")) as f:
        repeat = json.load(f)["env"]["action_repeat"] or DMC.action_repeat_default  # None: the suite's default
    rewards, actions = [], []
    for f in files:
        with np.load(f) as z:  # index 0 is the reset's: no action taken, no reward
            rewards.append(z["reward"][1:])
            actions.append(z["action"][1:])
    ends = repeat * np.cumsum([len(r) for r in rewards])  # frames collected when each episode ended
    window = (ends - 1) // every  # the last window may be partial
    rows = []
    for w in np.unique(window):
        idx = np.flatnonzero(window == w)
        r, a = np.concatenate([rewards[i] for i in idx]), np.concatenate([actions[i] for i in idx])
        lag1 = float(np.mean([np.corrcoef(a[:-1, d], a[1:, d])[0, 1] for d in range(a.shape[1])]))
        rows.append({"frames": int(ends[idx[-1]]), "rewarded_per_1k": 1000 * float(r.sum()) / (repeat * len(r)),
                     "action_lag1": lag1, "saturated": float(np.mean(np.abs(a) > 0.9))})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("probe")
    pr.add_argument("--episodes", type=int, default=20)
    pr.add_argument("--seed", type=int, default=0)
    rp = sub.add_parser("replay")
    rp.add_argument("run")
    rp.add_argument("--every", type=int, default=5000)
    a = p.parse_args()
    if a.cmd == "probe":
        if a.episodes < 1:
            p.error(f"--episodes {a.episodes}: must be at least 1")
        print(f"| policy | rewarded frames per 1 000 ({a.episodes} episodes, seed {a.seed}) |\n| --- | ---: |")
        for name, policy in probe_policies().items():
            rewarded, frames = rollout(policy, a.episodes, a.seed)
            print(f"| {name} | {1000 * rewarded / frames:.2f} |")
    else:
        if a.every < 1000:
            p.error(f"--every {a.every}: must be at least 1000 frames (two episodes)")
        print("| frames | reward per 1 000 frames | action lag-1 autocorrelation | share |a| > 0.9 |")
        print("| ---: | ---: | ---: | ---: |")
        for r in replay_windows(a.run, a.every):
            print(f"| {r['frames']} | {r['rewarded_per_1k']:.2f} | {r['action_lag1']:.2f} | {r['saturated']:.2f} |")


if __name__ == "__main__":
    main()
