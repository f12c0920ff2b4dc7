#!/usr/bin/env bash
# Every benchmark's GPU measurement in one run, sized for at most 8 minutes on one H100-class
# GPU (the per-step limits add up to 480 s). Not yet run on a GPU: no GPU was lent so far.
# Each step has its own time limit, so one slow step cannot eat the others' time; each
# step's full output goes to DEST/<step>.txt and a one-line exit status to DEST/summary.txt.
#
#   bash benchmarks/gpu_suite.sh [DEST]        # DEST default: $OUT, else ./bench-results
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu_suite.sh /tmp/x   # smoke run: checks every step's flags
set -uo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-../.venv/bin/python}"
DEVICE="${DEVICE:-cuda}"
DEST="$(mkdir -p "${1:-${OUT:-../bench-results}}" && cd "${1:-${OUT:-../bench-results}}" && pwd)"
: > "$DEST/summary.txt"

step() {  # step NAME LIMIT_SECONDS SCRIPT ARGS...
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$PY" "$@" > "$DEST/$name.txt" 2>&1
  local rc=$?
  echo "$name: exit $rc after $((SECONDS - start)) s (limit $limit s): $*" | tee -a "$DEST/summary.txt"
  tail -n 20 "$DEST/$name.txt"
}

if [ -n "${QUICK:-}" ]; then
  step generator 120 bench_generator.py --device "$DEVICE" --quick
  step invert 300 bench_invert.py --device "$DEVICE" --quick --encoder-depth 18 --precisions exact,bf16 --precision-images 2
  step speed 300 bench_speed.py --device "$DEVICE" --steps 3 --images 4 --shard 6 --batch 2 --reps 1 --parts objective,shard,continuous
  step views 300 bench_views.py --device "$DEVICE" --quick
  step domains 300 bench_domains.py --device "$DEVICE" --quick
  step render 120 bench_render.py --device "$DEVICE" --classifiers 1,2 --rounds 1 --images 2 --n-views 3
else
  step generator-1024 60 bench_generator.py --device "$DEVICE" --resolution 1024 --max-batch 32 --amp bf16
  step invert-1024 150 bench_invert.py --device "$DEVICE" --resolutions 1024 --steps 50 --batches 1,16 --baseline-images 1 --precisions exact,tf32,bf16 --precision-images 16
  step invert-256 80 bench_invert.py --device "$DEVICE" --resolutions 256 --steps 100 --batches 1,32 --baseline-images 1 --precisions exact,tf32,bf16 --precision-images 32
  step speed 60 bench_speed.py --device "$DEVICE" --steps 200 --images 32 --shard 96 --batch 16 --parts objective,shard,continuous
  step views 70 bench_views.py --device "$DEVICE"
  step domains 50 bench_domains.py --device "$DEVICE"
  step render 10 bench_render.py --device "$DEVICE" --classifiers 1,40 --rounds 2
fi
! grep -qv ": exit 0 " "$DEST/summary.txt"
