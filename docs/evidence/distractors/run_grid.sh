#!/usr/bin/env bash
# Issue 19 §4: the designed test of TEMPO's mechanism. gym Pendulum-v1 at dmc_small's sizes, 5 000 frames,
# {none, intermittent, constant} distractors x {dreamerv2, tempo-official, tempo} x 5 seeds, from the worktree at its
# fixed commit (66d7c8a since 2026-12-04 21:40 UTC, the DMC campaign's worktree: git worktree add
# /work/campaign/code5 66d7c8a; before, f117c12, whose runs were lost with the machine's /work/campaign); single-thread trials
# at nice 10, MAXC at once (default 1: it shares 2 cores with the DMC campaign). Re-running resumes (the sweep
# refuses other code).
# DIMS and SCALE: the calibrated distractor size (docs/evidence/distractors/README.md).
cd /work/campaign/code5
# MALLOC_ARENA_MAX=1 since 2026-12-05 07:10 UTC (what recipes.sweep sets itself since 2c3fb9a): Ray runs a trial
# in a second thread, whose own malloc arena unmapped and re-faulted its heaps every update (11k page faults per
# dmc_small update against 71 in a main thread; benchmarks/README.md); one arena is the main heap's. It changes
# no number (a TEMPO run in a thread at 66d7c8a, 20 updates: 167 metric values bit-identical with and without).
export PYTHONPATH=/work/campaign/code5 MUJOCO_GL=egl OMP_NUM_THREADS=1 MALLOC_ARENA_MAX=1
exec nice -n 10 python -m recipes.sweep /work/campaign/distractor_grid \
  --tasks gym:Pendulum-v1 --methods dreamerv2,tempo-official,tempo --seeds 5 \
  --preset dmc_small --steps 5000 --grid env.distractors.mode=none,intermittent,constant \
  --env.distractors.dims "${DIMS:?set DIMS}" --env.distractors.scale "${SCALE:?set SCALE}" \
  --cpus-per-trial 1 --run.eval_every 1000 --run.eval_episodes 10 --run.precision 32 --run.video_every 0 \
  --run.checkpoint_every 1000 --max-concurrent "${MAXC:-1}" "$@"
