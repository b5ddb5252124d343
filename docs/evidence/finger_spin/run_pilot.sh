#!/usr/bin/env bash
# Issue 19 §2: finger_spin pilots (DreamerV2) to see whether the agent finds the spin reward, from a worktree at
# 44f342d (git worktree add /work/campaign/pilot_head 44f342d). The fastest measured setting on a CPU with native
# bf16 (bf16 actor-critic, compiled; float32 world model), two threads: diagnostics, not campaign runs.
# NAME names the variant (its run directory); extra arguments are its overrides, e.g.
#   NAME=dreamerv2_ent2e-3 bash run_finger_pilot.sh --agent.actor_ent 2e-3
# Re-running resumes (SIGINT stops it with a checkpoint).
cd /work/campaign/pilot_head
export PYTHONPATH=/work/campaign/pilot_head MUJOCO_GL=egl MALLOC_ARENA_MAX=1
exec nice -n 10 python -m recipes.tempo --task finger_spin --preset dmc_small --weighting none --seed "${SEED:-0}" \
  --steps 100000 --run.precision bf16 --run.compile true --run.threads "${THREADS:-2}" --run.checkpoint_every 5000 \
  --logdir /work/campaign/finger_pilot/"${NAME:-dreamerv2}"/"${SEED:-0}" "$@"
