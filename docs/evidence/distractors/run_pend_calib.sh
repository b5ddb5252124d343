#!/usr/bin/env bash
# Issue 19 §4 calibration: DreamerV2 on gym Pendulum-v1 at dmc_small's sizes, clean and with intermittent
# distractors, 5000 frames; one run at a time, from the worktree at its fixed commit. Re-running resumes.
# Sitting 1 (seed 0): dims 16 at scale 1 already removed all learning (-1119 at 5000 frames vs -128 clean), so the
# grid moved to weaker distractors.
cd /work/campaign/code_pend
export PYTHONPATH=/work/campaign/code_pend MUJOCO_GL=egl OMP_NUM_THREADS=1
ROOT=/work/campaign/pend_calib/Pendulum-v1/dreamerv2
common="--task gym:Pendulum-v1 --preset dmc_small --weighting none --steps 5000 --run.eval_every 1000
        --run.precision 32 --run.threads 1 --run.video_every 0"
run() {  # seed dims scale
  point="env.distractors.mode=intermittent,env.distractors.dims=$2,env.distractors.scale=$3"
  nice -n 10 python -m recipes.tempo $common --seed $1 --logdir $ROOT/$1/$point \
    --env.distractors.mode intermittent --env.distractors.dims $2 --env.distractors.scale $3
}
run 0 3 1; run 0 3 0.3; run 0 8 0.3
nice -n 10 python -m recipes.tempo $common --seed 1 --logdir $ROOT/1
run 1 3 1; run 1 3 0.3; run 1 8 0.3
