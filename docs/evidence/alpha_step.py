"""RMS of the weighter's step (Δα per meta update) at the `dmc_state` preset, for a checkout's defaults.

    python docs/evidence/alpha_step.py [--recipe.overrides ...]            # this checkout, at initialisation
    PYTHONPATH=/tmp/before python docs/evidence/alpha_step.py             # an older checkout (git worktree)
    python docs/evidence/alpha_step.py --trained RUN_DIR                  # a trained TEMPO run's checkpoint

At initialisation: a replay of 2 random walker_stand episodes, then 5 TEMPO updates through the recipe's own
`Run`; per update the RMS of Δα over all weighter entries, and the fraction of entries whose Adam √v̂ is below
the meta optimizer's eps (Adam moves those by ≈ lr·|g|/eps instead of ≈ lr).

`--trained RUN_DIR`: the run's checkpoint and replay; the unit-scale α-gradient g of 8 batches
(`BilevelTrainer.hypergradient`), and per entry Adam's steady-state step for a steady gradient,
lr·|g|/(|g| + eps), with g at unit scale (the default) and at η scale (`approx_scale='lr'`).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from recipes.cli import resolve
from recipes.config import Config
from recipes.run import Run


def main(argv: list[str]) -> dict:
    torch.set_num_threads(1)
    updates = 5
    cfg = resolve(["--task", "walker_stand", "--logdir", tempfile.mkdtemp(), *argv]).cfg
    run = Run(cfg, Path(cfg.run.logdir))
    obs = run.env.reset()
    run.replay.add(obs, np.zeros(run.env.action_dim, np.float32))
    while len(run.replay) < 1002:
        obs = run.env.step(run.random_action())
        run.replay.add(obs, run.random_action())
        if obs["is_last"]:
            obs = run.env.reset()
            run.replay.add(obs, np.zeros(run.env.action_dim, np.float32))
    weighter, eps = run.trainer.weighter, run.trainer.cfg.weighter.eps
    rms, small = [], []
    for _ in range(updates):
        before = torch.cat([p.detach().reshape(-1).clone() for p in weighter.parameters()])
        run.train_once()
        step = torch.cat([p.detach().reshape(-1) for p in weighter.parameters()]) - before
        rms.append(float(step.pow(2).mean().sqrt()))
        state = [run.trainer.meta_opt.state[p] for p in weighter.parameters()]
        beta2 = run.trainer.meta_opt.param_groups[0]["betas"][1]
        v_hat = torch.cat([s["exp_avg_sq"].reshape(-1) / (1 - beta2 ** float(s["step"])) for s in state])
        small.append(float((v_hat.sqrt() < eps).float().mean()))  # Adam's √v̂ (≈ |g| at step 1) below eps
    return {"args": argv, "latent": "categorical" if cfg.world_model.discrete else "gaussian",
            "rms_alpha_step": rms, "mean_rms": float(np.mean(rms)),
            "fraction_sqrt_v_below_eps": small, "weighter_lr": cfg.tempo.bilevel.weighter.lr}


def trained(run_dir: Path, batches: int = 8) -> dict:
    torch.set_num_threads(1)
    saved = json.loads((run_dir / "config.json").read_text())
    cfg = Config.model_validate({k: v for k, v in saved.items() if k in Config.model_fields})
    copy = Path(tempfile.mkdtemp())  # restoring writes the checkpoint's pending episode: never into the run
    shutil.copytree(run_dir / "replay", copy / "replay")
    run = Run(cfg, copy)
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    state.setdefault("replay", {"last_file": None, "pending": None})  # checkpoints from before issue 12
    run.restore(state)
    trainer, wc = run.trainer, cfg.tempo.bilevel.weighter
    trainer.cfg = trainer.cfg.model_copy(update={"approx_scale": "unit"})
    gs = []
    for i in range(batches):
        torch.manual_seed(i)
        batch = run.to_torch(run.replay.sample(cfg.replay.batch, cfg.replay.length))
        gs.append(torch.cat([g.reshape(-1) for g in trainer.hypergradient(run.problem, batch).values()]))
    g = torch.stack(gs).pow(2).mean(0).sqrt()  # per-entry RMS over batches
    out = {"run": str(run_dir), "updates": run.updates, "frames": run.step, "eta": trainer.lr, "eps": wc.eps}
    for name, scale in (("unit", 1.0), ("lr", trainer.lr)):
        gg = scale * g
        step = wc.lr * gg / (gg + wc.eps)
        out[name] = {"fraction_below_eps": float((gg < wc.eps).float().mean()),
                     "rms_steady_step": float(step.pow(2).mean().sqrt())}
    out["rms_step_ratio_unit_over_lr"] = out["unit"]["rms_steady_step"] / out["lr"]["rms_steady_step"]
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--trained"]:
        print(json.dumps(trained(Path(sys.argv[2]))))
    else:
        print(json.dumps(main(sys.argv[1:])))
