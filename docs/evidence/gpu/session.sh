#!/usr/bin/env bash
# One GPU session (issue 19 §5), run ON the device machine from the repository root:
#   device run: carry [".whl", ".gl"], command "bash docs/evidence/gpu/session.sh docs/evidence/gpu/JOBS", timeout_s 600
# 1. the device tests (tests/test_device.py --device cuda); 2. if BENCH (seconds) is set, the precision benchmark
# (DreamerV2 and TEMPO, one process, float32/bf16, compile off/on, BENCH_SIZE) into $OUT/bench.json; 3. every line
# of JOBS (arguments of recipes.tempo, one run each, its --logdir relative to the runs folder) in parallel, stopped
# with SIGINT (a checkpoint, then exit) when BUDGET seconds are spent; 4. the runs' config.json and metrics.jsonl
# packed into $OUT/runs.tgz for `recipes.report`. Tested on the CPU by tests/test_gpu_session.py (DEVICE=cpu). A sweep's trials as JOBS lines:
# `python -m recipes.sweep DIR ... --commands` with a relative DIR (each line's --logdir is then relative too).
# A second call on the still-warm machine resumes the stopped runs: give both the same RUNS (a folder there), and
# TESTS=0 to skip the device tests. FROM=N starts at the N-th job line (1-based, comments and blanks not counted),
# COUNT=K runs K lines from there (a finished run's slot then stays free for the others, not a run too late to matter).
# CPU_BENCH (seconds): the device machine's own CPU (a Xeon with avx512_bf16/AMX: a bf16 CPU, issue 20) runs the
# precision benchmark on 2 cores, 2 threads, float32 and bf16, for each size in CPU_BENCH_SIZES, into
# $OUT/cpu_bench_<size>.json, after the GPU benchmark and before the jobs (which take every core).
set -uo pipefail
JOBS=${1:?usage: session.sh JOBS_FILE}
DEVICE=${DEVICE:-cuda} BUDGET=${BUDGET:-400} PARALLEL=${PARALLEL:-14} OUT=${OUT:-/tmp/gpu_out}
BENCH=${BENCH:-} BENCH_SIZE=${BENCH_SIZE:-dmc_small} BENCH_COMPILE=${BENCH_COMPILE:-off,on}
TESTS=${TESTS:-1} FROM=${FROM:-1} COUNT=${COUNT:-1000000} RUNS=${RUNS:-$(mktemp -d)}
CPU_BENCH=${CPU_BENCH:-} CPU_BENCH_SIZES=${CPU_BENCH_SIZES:-dmc_small dmc_state}
mkdir -p "$OUT" "$RUNS"
if [ -d .whl ] && [ "$DEVICE" != cpu ]; then  # the device image's missing packages (wheels.sh)
  python3 -m pip install -q --no-index --no-deps --ignore-requires-python --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl \
    || exit 3
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
# the image has no EGL loader: carried debs (.gl, see the device README) give dm_control its headless renderer
if [ -d .gl ] && [ "$DEVICE" != cpu ]; then  # never into a CPU machine's /
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
  vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  [ -f "$vendor" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$vendor
fi
export MUJOCO_GL=${MUJOCO_GL:-egl} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
{ python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; nvidia-smi -L; } \
  2>&1 | tee "$OUT/machine.txt"
[ "$TESTS" = 0 ] || timeout 150 python3 -m pytest tests/test_device.py --device "$DEVICE" -o addopts= -q \
  -p no:cacheprovider 2>&1 | tee "$OUT/tests.log"
if [ -n "$BENCH" ]; then  # one process alone: its step times against the jobs' (contended) ones
  timeout -k 10 "$BENCH" python3 -m pytest benchmarks/test_train_step.py -k precisions -o addopts= -q \
    -p no:cacheprovider --benchmark-enable --bench-device "$DEVICE" --bench-size "$BENCH_SIZE" --bench-rounds 5 \
    --bench-precision 32,bf16 --bench-compile "$BENCH_COMPILE" --benchmark-json "$OUT/bench.json" \
    2>&1 | tee "$OUT/bench.log"
fi
if [ -n "$CPU_BENCH" ]; then  # two cores of the device machine's CPU, as the 2-core CPU machines of issue 20
  pin=$(command -v taskset >/dev/null && echo "taskset -c 0,1")
  cpu_start=$(date +%s)
  for size in $CPU_BENCH_SIZES; do
    left=$(( CPU_BENCH - ($(date +%s) - cpu_start) ))
    [ "$left" -gt 10 ] || break
    timeout -k 10 "$left" $pin python3 -m pytest benchmarks/test_train_step.py -k precisions -o addopts= -q \
      -p no:cacheprovider --benchmark-enable --bench-device cpu --bench-threads 2 --bench-size "$size" \
      --bench-rounds 3 --bench-precision 32,bf16 --bench-compile off --benchmark-json "$OUT/cpu_bench_$size.json" \
      2>&1 | tee -a "$OUT/cpu_bench.log"
  done
fi
start=$(date +%s)
grep -v '^\s*\(#\|$\)' "$JOBS" | tail -n "+$FROM" | head -n "$COUNT" > "$RUNS/jobs"
# each job: recipes.tempo with its own logdir under $RUNS, on $DEVICE, SIGINT at the budget's end (it checkpoints)
xargs -P "$PARALLEL" -L 1 -a "$RUNS/jobs" bash -c '
  logdir=$(printf "%s\n" "$@" | grep -A1 -x -- --logdir | tail -1)
  left=$(( '"$BUDGET"' - ($(date +%s) - '"$start"') ))
  [ "$left" -gt 10 ] || exit 0
  mkdir -p "'"$RUNS"'/$logdir"
  timeout -s INT -k 60 "$left" python3 -m recipes.tempo "$@" --device '"$DEVICE"' \
    --logdir "'"$RUNS"'/$logdir" >> "'"$RUNS"'/$logdir.log" 2>&1  # >>: a resumed run keeps its log
  echo "$logdir exit $? $(tail -c 300 "'"$RUNS"'/$logdir.log" | tail -1)"
' _ | tee "$OUT/jobs.log"
(cd "$RUNS" && find . \( -name config.json -o -name metrics.jsonl -o -name '*.log' \) -print0 \
  | tar czf "$OUT/runs.tgz" --null -T -)
echo "runs.tgz: $(tar tzf "$OUT/runs.tgz" | wc -l) files, $(( $(date +%s) - start )) s"
