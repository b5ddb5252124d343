"""The actor's update under TensorFlow's and under the exact gradient of a truncated-normal sample, on the same batch.

The references sample the actor's truncated normal with TFP, whose gradient (TensorFlow's registered gradient of
`stateless_parameterized_truncated_normal`) is dx/dmean = 1 and dx/dstd = (x - mean) / std, as if the sample were
untruncated; ours was the exact one, which holds the bounds fixed (`agents.TruncNormal`, `agent.trunc_grad`). With
DreamerV2's dynamics backpropagation that gradient is the actor's whole signal, so this script measures how far the
two apart are on a run's own states, with everything else equal (the same checkpoint, batches and random numbers):

    python docs/evidence/finger_spin/trunc_grad.py RUN [--batches 8]

Per batch: the actor loss (the same under both: the same samples), the cosine between the two actor gradients, and
the mean gradient of the loss with respect to the actor's raw std output, per action dimension (positive: a descent
step shrinks the std). RUN is a run directory with a checkpoint; its replay is read from a copy.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from agents import schedules
from agents.actor_critic import frozen
from recipes.cli import resume_config
from recipes.run import Run
from recipes.rundir import RunDir


def compare(run: Run, batches: int) -> list[dict[str, float | list[float]]]:
    agent, wm, out = run.agent, run.wm, []
    ent_scale = schedules.value(agent.actor_ent, run.agent_step)
    params = list(agent.actor.parameters())
    for _ in range(batches):
        batch = run.to_torch(run.replay.sample())
        with torch.no_grad():
            post, _, _ = wm.observe(batch)
        start = {k: v.reshape(-1, *v.shape[2:]) for k, v in post.items()}  # [N, ...]
        noise = agent.draw_noise(wm, start)
        row: dict[str, float | list[float]] = {}
        grads = {}
        for g in ("exact", "tf"):
            agent.actor.trunc_grad = g
            raw: list[torch.Tensor] = []  # the actor net's outputs [N, 2A] at z_0 .. z_{H-1}
            hook = agent.actor.net.register_forward_hook(lambda _m, _i, o, raw=raw: raw.append(o))
            try:
                with frozen(wm):
                    loss, _, stats = agent.losses(wm, start, batch["is_terminal"], ent_scale, None, noise)
            finally:
                hook.remove()
            d = torch.autograd.grad(loss, params + raw[:-1])  # the last state's action is not scored
            grads[g] = torch.cat([x.flatten() for x in d[:len(params)]])
            a = agent.action_dim
            d_std = torch.stack([x[:, a:] for x in d[len(params):]]).sum(0).mean(0)  # [A]: over steps, mean over N
            row[f"loss_{g}"] = loss.item()
            row[f"dstd_{g}"] = [float(f"{v:.3g}") for v in d_std.tolist()]
        row["ent"] = stats["actor_ent"].item()  # the same samples under both
        row["cos"] = torch.nn.functional.cosine_similarity(grads["exact"], grads["tf"], dim=0).item()
        row["norm_ratio"] = (grads["tf"].norm() / grads["exact"].norm()).item()
        out.append(row)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--batches", type=int, default=8)
    args = p.parse_args()
    rundir = RunDir(args.run)
    cfg, _ = resume_config(rundir.saved_config(), {"run": {"precision": "32", "threads": 1}}, None)
    loaded = rundir.load_checkpoint()
    if loaded is None:
        raise SystemExit(f"error: {args.run} holds no checkpoint")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(args.run / "replay", Path(tmp) / "replay")
        run = Run(cfg, Path(tmp))
        run.restore(loaded[0])
        torch.manual_seed(0)
        for row in compare(run, args.batches):
            print(row)
    print(f"run {args.run}: {run.step} frames, {run.updates} updates")


if __name__ == "__main__":
    main()
