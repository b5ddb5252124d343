"""Two runs' world models on each other's data: is one of them a better model, or did it just see other states?

    python docs/evidence/dmc_small/cross_eval.py RUN_A RUN_B [--batches 20] [--horizon 15] [--seed 0]

A world-model loss logged during training mixes the model with the data its own agent collected: on walker_walk the
`tempo-official` run logs a KL a third below DreamerV2's all along, while its agent walks less (simpler states). This
script separates the two. Each run's checkpoint is loaded (its final weights) and scored, without gradients, on the
same batches drawn from each run's replay (16 x 50 chunks, a fixed seed, every model sees the same chunks):

- the training loss's terms, unweighted: `kl` (posterior to prior, nats per step), `state` and `reward` (negative
  log-likelihoods per step, as `wm/state_loss`, `wm/reward_loss` log them);
- open-loop prediction, what the actor learns through: from the posterior at a chunk's step 4 the prior is rolled
  forward with the replay's actions for `horizon` steps, and the decoded state and predicted reward are compared
  with the real ones (mean squared error per step and per dimension, at a few horizons; beside them the variance of
  the real states and rewards over those steps, the error of a model that predicts only their mean).

Prints one row per (model, data) and writes nothing. RUN_A / RUN_B are run directories with a checkpoint and replay;
the replays are read from copies, so a run in flight is never touched.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from recipes.cli import resume_config
from recipes.run import Run
from recipes.rundir import RunDir

CONTEXT = 5  # posterior steps before the open-loop rollout starts (DreamerV2's video_pred uses 5)


def fresh(config_of: Path, replay_of: Path, tmp: Path) -> Run:
    """A new run with `config_of`'s config (one thread, float32) on a copy of `replay_of`'s replay."""
    cfg, _ = resume_config(RunDir(config_of).saved_config(), {"run": {"precision": "32", "threads": 1}}, None)
    shutil.copytree(replay_of / "replay", tmp / "replay")
    return Run(cfg, tmp)


def load(path: Path, tmp: Path) -> Run:
    """The run at `path` as its checkpoint left it, on a copy of its replay."""
    loaded = RunDir(path).load_checkpoint()
    if loaded is None:
        raise SystemExit(f"error: {path} holds no checkpoint")
    run = fresh(path, path, tmp)
    run.restore(loaded[0])
    return run


@torch.no_grad()
def score(run: Run, batch: dict[str, torch.Tensor], horizon: int) -> dict[str, torch.Tensor]:
    wm = run.wm
    post, prior, _ = wm.observe(batch)  # [T, B, ...]
    terms = wm.elbo_terms(batch, post, prior)
    out = {"kl": terms["kl"].mean(), "state": terms[wm.obs_key].mean(), "reward": terms["reward"].mean()}
    state = {k: v[CONTEXT - 1] for k, v in post.items()}  # [B, ...]
    obs = wm.preprocess(batch[wm.obs_key], torch.float32)  # [T, B, D]
    ahead = slice(CONTEXT, CONTEXT + horizon)  # the steps predicted open loop: their spread, to read the errors by
    out["obs_var"] = obs[ahead].flatten(0, 1).var(0).mean()
    out["rew_var"] = batch["reward"][ahead].var()
    for k in range(1, horizon + 1):
        t = CONTEXT - 1 + k
        state = wm.rssm.img_step(state, batch["action"][t])  # action[t] led into obs[t]
        feat = wm.feat(state)
        out[f"obs_mse_{k}"] = ((wm.decoder(feat) - obs[t]) ** 2).mean()
        out[f"rew_mse_{k}"] = ((wm.reward(feat) - batch["reward"][t]) ** 2).mean()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs=2)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--horizon", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [load(path, Path(tmp) / str(i)) for i, path in enumerate(args.runs)]
        names = [f"{r.cfg.method}/{r.cfg.run.seed}@{r.step}" for r in runs]
        shown = (1, 5, args.horizon)
        print("model | data | state var | reward var | kl | state nll | reward nll | " + " | ".join(
            f"obs mse {k} | rew mse {k}" for k in shown))
        for data_run, data_name in zip(runs, names, strict=True):
            data_run.replay.set_rng_state(np.random.default_rng(args.seed).bit_generator.state)  # fixed chunks
            batches = [data_run.to_torch(data_run.replay.sample()) for _ in range(args.batches)]
            for run, name in zip(runs, names, strict=True):
                torch.manual_seed(args.seed)
                rows = [score(run, b, args.horizon) for b in batches]
                mean = {k: float(torch.stack([r[k] for r in rows]).mean()) for k in rows[0]}
                print(f"{name} | {data_name} | {mean['obs_var']:.3f} | {mean['rew_var']:.4f} | {mean['kl']:.2f} | "
                      f"{mean['state']:.3f} | {mean['reward']:.4f} | "
                      + " | ".join(f"{mean[f'obs_mse_{k}']:.4f} | {mean[f'rew_mse_{k}']:.4f}" for k in shown))


if __name__ == "__main__":
    main()
