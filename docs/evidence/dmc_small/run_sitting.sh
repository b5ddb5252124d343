#!/usr/bin/env bash
# A sitting of the dmc_small campaign (issue 19 §2-3), from the worktree at its fixed commit.
cd /work/campaign/code
export PYTHONPATH=/work/campaign/code MUJOCO_GL=egl OMP_NUM_THREADS=1
exec nice -n 10 python -m recipes.sweep /work/campaign/dmc_small \
  --tasks cartpole_swingup,walker_walk --methods dreamerv2,tempo-official --seeds 3 \
  --preset dmc_small --steps 100000 --cpus-per-trial 1 \
  --run.precision 32 --run.checkpoint_every 5000 "$@"
