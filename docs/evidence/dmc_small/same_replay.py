"""Two methods' world-model training on one fixed replay: does TEMPO's weighting change the model, data held equal?

    python docs/evidence/dmc_small/same_replay.py RUN_A RUN_B [--updates 2000] [--every 250] [--out FILE]

In a campaign each method's world model learns from the data its own agent collects, so a difference in the models
(`cross_eval.py`) cannot be told from a difference in the data. Here the data are held fixed: both arms train a
fresh world model (the same initial weights: the same seed, checked) on the same batches, drawn from RUN_A's final
replay, with the config of RUN_A and RUN_B respectively (e.g. `dreamerv2` and `tempo-official`: the weighting and
the hypergradient's sign differ). The value function that TEMPO's weighter and upper loss read is RUN_A's final
critic, fixed, for both (DreamerV2's world model does not read it). No actor-critic is trained. Every `--every`
updates both models are scored, on the same noise, on fixed chunks of each run's replay by `cross_eval.score` (the
training loss's terms and the open-loop errors). Prints a row per evaluation and writes them to `--out` as JSON.
Given RUN_A twice, the two arms differ only in the random numbers they draw (the posterior and prior samples): the
noise floor that a difference between two methods must clear.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from recipes.run import Run
from recipes.rundir import RunDir

sys.path.insert(0, str(Path(__file__).parent))
from cross_eval import fresh, score  # noqa: E402

HORIZON = 15
SHOWN = ("kl", "state", "obs_mse_1", "obs_mse_5", "obs_mse_15", "rew_mse_1", "rew_mse_15")


def fixed_batches(run: Run, n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    run.replay.set_rng_state(np.random.default_rng(seed).bit_generator.state)
    return [run.to_torch(run.replay.sample()) for _ in range(n)]


def evaluate(run: Run, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    # the same prior samples for both arms; it also restarts training's random numbers after each evaluation (the
    # arms draw in turn, so they still differ from each other: what the control needs), as the JSONs were made
    torch.manual_seed(0)
    rows = [score(run, b, HORIZON) for b in batches]
    return {k: float(torch.stack([r[k] for r in rows]).mean()) for k in SHOWN}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs=2, help="RUN_A (its replay and critic) and RUN_B: the two arms' configs")
    p.add_argument("--updates", type=int, default=2000)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--eval-batches", type=int, default=10)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    a, b = args.runs
    loaded = RunDir(a).load_checkpoint()
    if loaded is None:
        raise SystemExit(f"error: {a} holds no checkpoint")
    critic = loaded[0]["agent"]
    with tempfile.TemporaryDirectory() as tmp:
        arms = [fresh(path, a, Path(tmp) / str(i)) for i, path in enumerate(args.runs)]
        first = [p.detach().clone() for p in arms[0].wm.parameters()]
        if not all(torch.equal(x, y) for x, y in zip(first, arms[1].wm.parameters(), strict=True)):
            raise SystemExit("error: the two arms' world models start from different weights")
        for run in arms:
            run.agent.restore(critic)
        other = fresh(b, b, Path(tmp) / "data_b")  # only for RUN_B's replay
        data = {"A": fixed_batches(arms[0], args.eval_batches, 1), "B": fixed_batches(other, args.eval_batches, 1)}
        arms[0].replay.set_rng_state(np.random.default_rng(0).bit_generator.state)
        names = [r.cfg.method for r in arms]
        if names[0] == names[1]:
            names[1] += " (again)"
        print(f"arms {names}; data {a} (A) and {b} (B); " + " | ".join(SHOWN))
        log, weights = [], []
        for update in range(args.updates + 1):
            if update % args.every == 0:
                row = {"updates": update, **{f"{n}@{d}": evaluate(r, data[d]) for r, n in zip(arms, names, strict=True)
                                            for d in data}}
                if weights:
                    row["weight_reward_corr"] = float(np.mean(weights))
                    weights = []
                log.append(row)
                for key, val in row.items():
                    if isinstance(val, dict):
                        print(f"{update:5d} {key:24s} " + " ".join(f"{val[k]:8.4f}" for k in SHOWN), flush=True)
                if "weight_reward_corr" in row:
                    print(f"{update:5d} weight_reward_corr {row['weight_reward_corr']:+.3f}", flush=True)
            if update == args.updates:
                break
            batch = arms[0].to_torch(arms[0].replay.sample())  # the same batch for both arms
            for run in arms:
                with run.wm_precision.autocast():
                    metrics = run.trainer.step(run.problem, batch).metrics
                if "weight_reward_corr" in metrics:
                    weights.append(metrics["weight_reward_corr"])
        if args.out:
            args.out.write_text(json.dumps({"runs": [str(a), str(b)], "arms": names, "log": log}, indent=1) + "\n")


if __name__ == "__main__":
    main()
