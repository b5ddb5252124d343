#!/usr/bin/env bash
# A sitting of the dmc_small campaign (issue 19 §2-3), from the worktree at its fixed commit, d27f14d since 2026-12-04:
# numerically identical to 8092242 (same_metrics.py bit for bit on debug runs of both methods, cartpole and walker),
# resumes its checkpoints, keeps freed memory (1.14-1.37x the updates) and checkpoints on Ctrl-C. The first sitting
# under it passed --allow-code-change (recorded in sweep.yaml).
cd /work/campaign/code2
export PYTHONPATH=/work/campaign/code2 MUJOCO_GL=egl OMP_NUM_THREADS=1
exec nice -n 10 python -m recipes.sweep /work/campaign/dmc_small \
  --tasks cartpole_swingup,walker_walk --methods dreamerv2,tempo-official --seeds 3 \
  --preset dmc_small --steps 100000 --cpus-per-trial 1 \
  --run.precision 32 --run.checkpoint_every 5000 "$@"
