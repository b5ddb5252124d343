#!/usr/bin/env bash
# A sitting of the dmc_small campaign (issue 19 §2-3), from the worktree at its fixed commit, f117c12 since
# 2026-12-04 12:30 (git worktree add /work/campaign/code3 f117c12): every metric of debug runs bit-identical to
# d27f14d (docs/evidence/same_metrics.py: cartpole_swingup tempo, tempo --sign official, walker_walk), which it
# replaced with --allow-code-change (recorded in sweep.yaml): it adds per-phase timing metrics, and a trial that Tune
# hands out after a Ctrl-C starts nothing (d27f14d ran each pending trial's step-0 evaluation).
cd /work/campaign/code3
export PYTHONPATH=/work/campaign/code3 MUJOCO_GL=egl OMP_NUM_THREADS=1
exec nice -n 10 python -m recipes.sweep /work/campaign/dmc_small \
  --tasks cartpole_swingup,walker_walk --methods dreamerv2,tempo-official --seeds 3 \
  --preset dmc_small --steps 100000 --cpus-per-trial 1 \
  --run.precision 32 --run.checkpoint_every 5000 "$@"
