#!/usr/bin/env bash
# Every benchmark's GPU measurement in one run, sized for about 9 minutes on one H100-class
# GPU. Each step has its own time limit, so one slow step cannot eat the others' time; each
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
  step invert 300 bench_invert.py --device "$DEVICE" --quick
  step views 300 bench_views.py --device "$DEVICE" --quick
  step domains 300 bench_domains.py --device "$DEVICE" --quick
else
  step generator-256 60 bench_generator.py --device "$DEVICE" --resolution 256
  step generator-1024 90 bench_generator.py --device "$DEVICE" --resolution 1024 --max-batch 32 --amp bf16
  step invert 200 bench_invert.py --device "$DEVICE" --steps 100 --batches 1,4,16
  step views 90 bench_views.py --device "$DEVICE"
  step domains 100 bench_domains.py --device "$DEVICE"
fi
! grep -qv ": exit 0 " "$DEST/summary.txt"
