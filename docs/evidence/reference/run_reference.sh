#!/usr/bin/env bash
# The reference DreamerV2 (danijar/dreamerv2, commit 07d906e) on a CPU, at `dmc_small`'s sizes, for comparisons of
# its behaviour with ours (issue 19 §2: "the reference's behaviour on the same batch"). It needs its own
# environment: TF 2.15.1 is the last with Keras 2, and the code reads numpy < 1.24 aliases and ruamel.yaml < 0.18.
#
#   bash docs/evidence/reference/run_reference.sh setup REPO      # once: venv in $VENV, a patched copy in $WORK
#   bash docs/evidence/reference/run_reference.sh run TASK LOGDIR [flags...]   # e.g. finger_spin /tmp/ref/f0
#   bash docs/evidence/reference/run_reference.sh setup-tempo REPO  # deng-ai-lab/TEMPO for same_batch_tempo.py
#
# REPO is a checkout of danijar/dreamerv2 (git clone https://github.com/danijar/dreamerv2). Two lines of the copy
# change, nothing that trains: the assert that stops a run without a GPU, and an import that TF 2.15 moved
# (`tensorflow.keras.mixed_precision.experimental`). The reference never reads its `seed` flag: its runs are
# independent draws, not seeded.
set -euo pipefail
VENV=${VENV:-/tmp/refenv}
WORK=${WORK:-/tmp/ref}
WORK_TEMPO=${WORK_TEMPO:-/tmp/tempo_ref}
case "${1:-}" in
  setup)
    repo=${2:?usage: setup REPO}
    python3.11 -m venv "$VENV"
    "$VENV/bin/pip" install -q "tensorflow-cpu==2.15.1" "tensorflow-probability==0.23.0" "numpy==1.23.5" \
      "ruamel.yaml<0.18" "gym==0.26.2" "dm_control==1.0.14" cloudpickle
    "$VENV/bin/pip" install -q --force-reinstall --no-deps "mujoco==2.3.7"  # dm_control 1.0.14's MuJoCo
    rm -rf "$WORK" && mkdir -p "$WORK"
    cp -r "$repo/dreamerv2" "$WORK/"
    sed -i "s/  assert tf.config.experimental.list_physical_devices('GPU'), message/  pass  # CPU run/" \
      "$WORK/dreamerv2/train.py"
    sed -i 's/from tensorflow.keras.mixed_precision import experimental as prec/from tensorflow.keras import mixed_precision as prec/' \
      "$WORK/dreamerv2/common/nets.py"
    ;;
  setup-tempo)
    # deng-ai-lab/TEMPO (a copy of its checkout) in $WORK_TEMPO for same_batch_tempo.py, in the same environment
    # (setup first); the one line TF 2.15 needs changed is the same import as DreamerV2's.
    repo=${2:?usage: setup-tempo REPO}
    rm -rf "$WORK_TEMPO" && mkdir -p "$WORK_TEMPO"
    cp -r "$repo"/agent.py "$repo"/expl.py "$repo"/configs.yaml "$repo"/common "$WORK_TEMPO/"
    sed -i 's/from tensorflow.keras.mixed_precision import experimental as prec/from tensorflow.keras import mixed_precision as prec/' \
      "$WORK_TEMPO/common/nets.py"
    ;;
  run)
    task=${2:?usage: run TASK LOGDIR [flags]} logdir=${3:?usage: run TASK LOGDIR [flags]}
    shift 3
    cd "$WORK/dreamerv2"
    # dmc_small: dmc_proprio with 32-d Gaussian latents and 200x2 MLPs; float32 (the campaign's precision);
    # one thread; metrics every 1 000 frames (500 agent steps), as ours log.
    MUJOCO_GL=egl TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 OMP_NUM_THREADS=1 TF_CPP_MIN_LOG_LEVEL=3 \
      exec "$VENV/bin/python" train.py --logdir "$logdir" --configs dmc_proprio --task "dmc_$task" --precision 32 \
      --rssm.discrete 0 --encoder.mlp_layers 200,200 --decoder.mlp_layers 200,200 --reward_head.layers 2 \
      --reward_head.units 200 --actor.layers 2 --actor.units 200 --critic.layers 2 --critic.units 200 \
      --log_every 500 "$@"
    ;;
  *) echo "usage: $0 setup REPO | setup-tempo REPO | run TASK LOGDIR [flags...]" >&2; exit 2 ;;
esac
