#!/usr/bin/env bash
# A sitting of the dmc_small campaign (issue 19 §2-3), from the worktree at its fixed commit (git worktree add
# /work/campaign/code6 2be7919). The campaign started again from nothing for the third time on 2026-12-05 at 16:25
# UTC, at 7e8db0d: the machine's /work/campaign was gone at the session's start, runs and all (the lost runs'
# evaluations are in lost_66d7c8a/). It runs the current code, 60 commits past 66d7c8a, so that the evidence is about
# the code a user installs. At 16:57 UTC (seed 0 at 13 000-15 290 frames) it moved to e530dcc, and at
# 17:03 UTC to 2be7919, with --allow-code-change, recorded in sweep.yaml, for --bank (2be7919: each run banked as
# it finishes): 7e8db0d..2be7919 changes the sweep's driver
# (recipes/sweep.py, recipes/bank.py), docs and tests, nothing a trial runs. Not compiled: at one thread and
# float32, run.compile made DreamerV2's dmc_small update 1.09-1.12x faster and TEMPO's 0.99-1.08x
# (benchmarks/results/dmc_small_1thread_32_compile.json), too little for a compile per resume in every Ray worker.
cd /work/campaign/code6
# MALLOC_ARENA_MAX=1: Ray runs a trial in a second thread, whose own malloc arena unmapped and re-faulted its heaps
# every update (benchmarks/README.md); recipes.sweep sets it too. It changes no number.
export PYTHONPATH=/work/campaign/code6 MUJOCO_GL=egl OMP_NUM_THREADS=1 MALLOC_ARENA_MAX=1
# --bank: each finished run's logs (config, metrics, progress) go to docs/evidence/dmc_small/runs in the main
# checkout, committed at the end of each session, and come back from there if /work/campaign is lost again.
# --seeds 5: the sweep runs seed-major, so seeds 3-4 start only when every trial of seeds 0-2 has started, the
# issue's order of work. float32 pinned: some of these machines have no native bf16.
exec nice -n 10 python -m recipes.sweep /work/campaign/dmc_small \
  --tasks cartpole_swingup,walker_walk --methods dreamerv2,tempo-official --seeds 5 \
  --preset dmc_small --steps 100000 --cpus-per-trial 1 \
  --run.precision 32 --run.checkpoint_every 5000 --bank /work/main/docs/evidence/dmc_small/runs "$@"
