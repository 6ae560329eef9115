#!/usr/bin/env bash
# The GPU check: run on a machine with a GPU (H100/H200, sm_90) from a build made elsewhere with
# profiling/pack_device.sh and carried over (build-device/, data-local/). In one go:
#   1. info, and the GPU tests (parity of every kernel with the CPU reference, the whole training
#      step against the CPU, determinism, resume);
#   2. compute-sanitizer memcheck, racecheck and initcheck on the parity tests;
#   3. a 3-epoch Fashion-MNIST training of the `paper` net, and a second run for determinism;
#   4. bench of the presets;
# then prints a short table. Logs go to $OUT (or ./gpu_check_out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
B=build-device
export LD_LIBRARY_PATH="$PWD/$B/rt-libs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
DATA=data-local/fashion-mnist
declare -a ROWS
row() { ROWS+=("$(printf '%-44s %s' "$1" "$2")"); }
step() { echo; echo "=== $*"; }
t0=$(date +%s)

step "info"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
"$B/barecnn" info | tee "$OUT/info.txt"
ldd "$B/barecnn" | grep "not found" && row "libraries" "MISSING (see info.txt)"

step "GPU tests"
for t in test_gpu_conv test_gpu_pool test_gpu_ops test_gpu_train; do
  if timeout 300 "$B/tests/$t" --gtest_brief=1 > "$OUT/$t.log" 2>&1; then
    row "$t" "PASS ($(grep -c '^\[       OK \]' "$OUT/$t.log" || true) ok, $(grep -c SKIPPED "$OUT/$t.log" || true) skipped lines)"
  else
    row "$t" "FAIL (see $t.log)"
    grep -A8 "Failure" "$OUT/$t.log" | head -40
  fi
done

step "compute-sanitizer (9 runs in parallel, 180 s cap each)"
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
declare -A PIDS
for tool in memcheck racecheck initcheck; do
  for t in test_gpu_conv test_gpu_pool test_gpu_ops; do
    timeout 180 "$CS" --tool "$tool" --error-exitcode 3 "$B/tests/$t" --gtest_brief=1 \
      > "$OUT/cs-$tool-$t.log" 2>&1 &
    PIDS["$tool $t"]=$!
  done
done
for key in "${!PIDS[@]}"; do
  set -- $key
  if wait "${PIDS[$key]}"; then
    row "compute-sanitizer $1 $2" "clean"
  else
    rc=$?
    row "compute-sanitizer $1 $2" "$( [ $rc = 124 ] && echo TIMEOUT || echo "ERRORS rc=$rc") (cs-$1-$2.log)"
    grep -m5 -E "ERROR SUMMARY|Invalid|Race|Uninitialized" "$OUT/cs-$1-$2.log"
  fi
done

step "training: paper net, 3 epochs, Fashion-MNIST"
"$B/barecnn" train --device cuda --data "$DATA" --arch paper --epochs 3 --out "$OUT/paper" > "$OUT/train-paper.log" 2>&1
acc=$(python3 -c "import json;print(json.load(open('$OUT/paper/summary.json'))['test_accuracy'])" 2>/dev/null || echo "n/a")
eps=$(python3 -c "import json;e=json.load(open('$OUT/paper/summary.json'))['epochs'];print(' '.join('%.2fs'%x['seconds'] for x in e))" 2>/dev/null || echo "n/a")
row "paper 3 epochs test accuracy (>= 0.90)" "$acc"
row "paper epoch seconds" "$eps"
tail -3 "$OUT/train-paper.log"

step "determinism: the same run again"
"$B/barecnn" train --device cuda --data "$DATA" --arch paper --epochs 1 --out "$OUT/det1" --quiet > "$OUT/det1.log" 2>&1
"$B/barecnn" train --device cuda --data "$DATA" --arch paper --epochs 1 --out "$OUT/det2" --quiet > "$OUT/det2.log" 2>&1
if cmp -s "$OUT/det1/model.safetensors" "$OUT/det2/model.safetensors"; then row "two runs, identical weights" "yes"; else row "two runs, identical weights" "NO"; fi

step "bench"
for spec in "paper 64" "paper 256" "paper 1024" "deep 64" "deep 256" "lenet5 64"; do
  set -- $spec
  "$B/barecnn" bench --device cuda --arch "$1" --batch "$2" --reps 50 > "$OUT/bench-$1-$2.txt" 2>&1
  row "bench $1 batch $2" "$(grep -o 'step: .*' "$OUT/bench-$1-$2.txt" | head -1)"
done
cat "$OUT/bench-paper-64.txt"

if python3 -c "import torch" 2>/dev/null && [ -f profiling/compare_pytorch.py ] && [ "${SKIP_TORCH:-0}" != 1 ]; then
  step "PyTorch (eager) paper net, batch 64, 1 epoch"
  timeout 150 python3 profiling/compare_pytorch.py --device cuda --mode eager --arch paper --batch 64 --epochs 1 \
    --data "$DATA" --json "$OUT/torch-paper-64.json" > "$OUT/torch-paper-64.log" 2>&1
  row "pytorch eager paper b64 epoch" "$(tail -1 "$OUT/torch-paper-64.log")"
fi

echo
echo "=== summary ($(( $(date +%s) - t0 )) s, $(head -1 "$OUT/gpu.txt"))"
printf '%s\n' "${ROWS[@]}" | tee "$OUT/summary.txt"
