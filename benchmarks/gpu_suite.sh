#!/usr/bin/env bash
# Every benchmark's GPU measurement in one run, sized for at most 8 minutes on one H100-class
# GPU (the per-step limits add up to 460 s). Not yet run on a GPU: no GPU was lent so far.
# Each step has its own time limit, so one slow step cannot eat the others' time; each
# step's full output goes to DEST/<step>.txt and a one-line exit status to DEST/summary.txt.
#
#   bash benchmarks/gpu_suite.sh [DEST]        # DEST default: $OUT, else ./bench-results
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu_suite.sh /tmp/x   # smoke run: checks every step's flags
#   ONLY=per-image-loop,compiled-generator bash benchmarks/gpu_suite.sh   # just those steps
set -uo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-../.venv/bin/python}"
DEVICE="${DEVICE:-cuda}"
DEST="$(mkdir -p "${1:-${OUT:-../bench-results}}" && cd "${1:-${OUT:-../bench-results}}" && pwd)"
: > "$DEST/summary.txt"

step() {  # step NAME LIMIT_SECONDS SCRIPT ARGS...
  local name=$1 limit=$2
  if [ -n "${ONLY:-}" ] && [[ ",$ONLY," != *",$name,"* ]]; then return; fi
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
  step per-image-loop 300 bench_per_image_loop.py --device "$DEVICE" --images 2 --steps 3 --batch 2 --gen-resolutions 32 --gen-batch 2 --rounds 1 --calls 1
else
  step generator-1024 40 bench_generator.py --device "$DEVICE" --resolution 1024 --max-batch 32 --amp bf16
  step invert-1024 100 bench_invert.py --device "$DEVICE" --resolutions 1024 --steps 50 --batches 1,16 --baseline-images 1 --precisions exact,tf32,bf16 --precision-images 16
  step invert-256 60 bench_invert.py --device "$DEVICE" --resolutions 256 --steps 100 --batches 1,32 --baseline-images 1 --precisions exact,tf32,bf16 --precision-images 32
  step speed 50 bench_speed.py --device "$DEVICE" --steps 200 --images 32 --shard 96 --batch 16 --parts objective,shard,continuous
  step views 55 bench_views.py --device "$DEVICE"
  step domains 35 bench_domains.py --device "$DEVICE"
  step render 10 bench_render.py --device "$DEVICE" --classifiers 1,40 --rounds 2
  # the authors' per-image loop vs batch 4 (same objective), then reference / fused /
  # channels_last / compiled synthesis forward + backward (first call = compile time)
  step per-image-loop 50 bench_per_image_loop.py --device "$DEVICE" --parts loop --resolution 256 --images 4 --steps 30 --batch 4
  step compiled-generator 60 bench_per_image_loop.py --device "$DEVICE" --parts generator --gen-resolutions 256 --gen-batch 8 --channel-base 32768 --channel-max 512 --compile
fi
! grep -qv ": exit 0 " "$DEST/summary.txt"
