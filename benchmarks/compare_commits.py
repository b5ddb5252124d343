"""Time the whole train step of two checkouts of this repository against each other, interleaved.

    git worktree add /tmp/before <commit>
    python -m benchmarks.compare_commits /tmp/before . --size dmc_state --config none --rounds 3 \\
        --json benchmarks/results/compare_dmc_state.json

Each round runs one fresh process per checkout (A, then B), each building the benchmark `Bench` of its own
code (`benchmarks.common.build`, the sizes given here so older checkouts without a size still build it) and
timing `--steps` train steps after one warm-up step; the result is the median of the per-round ratios B/A
(paired rounds: load drifts on a shared machine hit both arms). The CPU model and flags are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from benchmarks.common import machine

# The sizes by value, so that a checkout whose benchmarks/common.py predates a size can still build it; newer sizes
# (`NAMED`) go by name to both checkouts, which must both know them.
SIZE_ARGS = {
    "dmc_state": dict(name="dmc_state", obs_key="state", obs_shape=(24,), action_dim=6, discrete_actions=False,
                      T=50, B=16, world_model=dict(deter=200, stoch=32, discrete=32, hidden=200, units=400,
                                                   layers=4),
                      agent=dict(horizon=15, units=400, layers=4)),
    "dmc": dict(name="dmc", obs_key="image", obs_shape=(64, 64, 3), action_dim=6, discrete_actions=False, T=50, B=16,
                world_model=dict(deter=200, stoch=32, discrete=0, hidden=200, depth=48, units=400, layers=4),
                agent=dict(horizon=15, units=400, layers=4)),
    "atari": dict(name="atari", obs_key="image", obs_shape=(64, 64, 1), action_dim=6, discrete_actions=True, T=50,
                  B=16, world_model=dict(deter=600, stoch=32, discrete=32, hidden=600, depth=48, units=400,
                                         layers=4, discount_head=True, kl_free=0.0, kl_scale=0.1,
                                         reward_scale=1.0, discount_scale=5.0),
                  agent=dict(horizon=15, units=400, layers=4, gamma=0.999, actor_lr=4e-5, critic_lr=1e-4,
                             actor_ent=1e-3, actor_grad="reinforce", use_discount_head=True),
                  lower_lr=2e-4),
}
NAMED = ("dmc_small",)

CHILD = """
import inspect, json, statistics, sys, time, torch
from benchmarks.common import Size, build
from worldmodels import WorldModel
torch.set_num_threads({threads})
torch.set_flush_denormal(True)
args = {size!r}
if isinstance(args, dict):
    wm = args["world_model"]
    if "mlp_units" in inspect.signature(WorldModel.__init__).parameters:  # a checkout before config-named kwargs
        wm["mlp_units"], wm["mlp_layers"] = wm.pop("units"), wm.pop("layers")
        scales = {{k[:-6]: wm.pop(k) for k in ("reward_scale", "discount_scale") if k in wm}}
        if scales:
            wm["loss_scales"] = scales
size = Size(**args) if isinstance(args, dict) else args
bench = build(size, {config!r}, **({{"precision": {precision!r}}} if {precision!r} != "32" else {{}}))
bench.train_step()
ts = []
for _ in range({steps}):
    t = time.perf_counter(); bench.train_step(); ts.append(time.perf_counter() - t)
mode = getattr(getattr(bench, "precision", None), "mode", "32")  # as the checkout resolved it
print(json.dumps({{"median_s": statistics.median(ts), "times_s": ts, "precision": mode}}))
"""


def run_in(tree: str, size: str, config: str, steps: int, threads: int, precision: str = "32") -> dict:
    code = CHILD.format(size=SIZE_ARGS.get(size, size), config=config, steps=steps, threads=threads,
                        precision=precision)
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    res = subprocess.run([sys.executable, "-c", code], cwd=os.path.abspath(tree), env=env, capture_output=True,
                         text=True, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"{tree}: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _dirty(tree: str) -> bool:
    return bool(subprocess.run(["git", "-C", tree, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare_commits", description=__doc__.split("\n\n")[0])
    p.add_argument("tree_a")
    p.add_argument("tree_b")
    p.add_argument("--size", default="dmc_state", choices=[*SIZE_ARGS, *NAMED])
    p.add_argument("--config", default="none", help="benchmark config (none = DreamerV2, approx-terms_fd = TEMPO)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="32", choices=["32", "bf16", "16", "auto"],
                   help="run.precision of both arms (a checkout from before run.precision knows only 32)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    ta, tb = [], []
    for _ in range(a.rounds):
        ta.append(run_in(a.tree_a, a.size, a.config, a.steps, a.threads, a.precision)["median_s"])
        tb.append(run_in(a.tree_b, a.size, a.config, a.steps, a.threads, a.precision)["median_s"])
    commit = lambda t: subprocess.run(["git", "-C", t, "rev-parse", "--short", "HEAD"], capture_output=True,  # noqa: E731
                                      text=True).stdout.strip() or t
    out = {"a": commit(a.tree_a), "b": commit(a.tree_b) + (" + uncommitted" if _dirty(a.tree_b) else ""),
           "size": a.size, "config": a.config, "precision": a.precision, "rounds": a.rounds,
           "steps_per_round": a.steps, "threads": a.threads, "times_a_s": ta, "times_b_s": tb,
           "speedup_b_over_a": statistics.median(x / y for x, y in zip(ta, tb, strict=True)),
           "machine": machine("cpu")}
    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
