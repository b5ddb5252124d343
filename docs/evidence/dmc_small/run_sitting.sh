#!/usr/bin/env bash
# A sitting of the dmc_small campaign (issue 19 §2-3), from the worktree at its fixed commit: 66d7c8a since
# 2026-12-04 21:40 UTC (git worktree add /work/campaign/code5 66d7c8a), when the campaign started again from nothing
# (the machine's /work/campaign was gone, runs and all). The earlier sittings ran f117c12 (bit-identical in debug
# runs to d27f14d and 8092242; docs/evidence/dmc_small/README.md); 66d7c8a is not bit-identical to them (in-place
# ELU), so none of their runs could have been mixed with this campaign's anyway.
cd /work/campaign/code5
export PYTHONPATH=/work/campaign/code5 MUJOCO_GL=egl OMP_NUM_THREADS=1
exec nice -n 10 python -m recipes.sweep /work/campaign/dmc_small \
  --tasks cartpole_swingup,walker_walk --methods dreamerv2,tempo-official --seeds 3 \
  --preset dmc_small --steps 100000 --cpus-per-trial 1 \
  --run.precision 32 --run.checkpoint_every 5000 "$@"
