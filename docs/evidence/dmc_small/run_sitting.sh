#!/usr/bin/env bash
# A sitting of the dmc_small campaign (issue 19 §2-3), from the worktree at its fixed commit: 66d7c8a since
# 2026-12-04 21:40 UTC (git worktree add /work/campaign/code5 66d7c8a), when the campaign started again from nothing
# (the machine's /work/campaign was gone, runs and all). The earlier sittings ran f117c12 (bit-identical in debug
# runs to d27f14d and 8092242; docs/evidence/dmc_small/README.md); 66d7c8a is not bit-identical to them (in-place
# ELU), so none of their runs could have been mixed with this campaign's anyway.
cd /work/campaign/code5
# MALLOC_ARENA_MAX=1 since 2026-12-05 07:10 UTC (what recipes.sweep sets itself since 2c3fb9a): Ray runs a trial
# in a second thread, whose own malloc arena unmapped and re-faulted its heaps every update (11k page faults per
# dmc_small update against 71 in a main thread; benchmarks/README.md); one arena is the main heap's. It changes
# no number (a TEMPO run in a thread at 66d7c8a, 20 updates: 167 metric values bit-identical with and without).
export PYTHONPATH=/work/campaign/code5 MUJOCO_GL=egl OMP_NUM_THREADS=1 MALLOC_ARENA_MAX=1
# --seeds 5 from the first sitting after 2026-12-05 10:50 UTC (seeds 0-2 were the first 12 runs): the sweep runs
# seed-major, so seeds 3-4 start only when every trial of seeds 0-2 has started, the order of work.
exec nice -n 10 python -m recipes.sweep /work/campaign/dmc_small \
  --tasks cartpole_swingup,walker_walk --methods dreamerv2,tempo-official --seeds 5 \
  --preset dmc_small --steps 100000 --cpus-per-trial 1 \
  --run.precision 32 --run.checkpoint_every 5000 "$@"
