#!/usr/bin/env bash
# The performance check (issue 5), for a GPU machine (H100/H200) after gpu_check.sh passed, from the
# carried build-pack/ and data-local/ (profiling/pack_device.sh). Side by side, in one run on one
# card:
#   1. barecnn bench of the presets (per layer, measured peaks, whole step eager and as a graph);
#   2. the convolution lab against cuDNN (FP32 and TF32), when cuDNN can be found (PyTorch's);
#   3. barecnn train of paper (batch 64 over 3 seeds; 256; 1024) and deep (64, 256, 1024), with
#      --cuda-graph on, and PyTorch eager / torch.compile(mode="reduce-overhead") on the same
#      settings;
#   4. perf_table.py --check: one table and the issue's targets, met or not.
# No step starts once BUDGET seconds (default 280) have passed and none runs past it, so give the
# device call a timeout of BUDGET + 60. After every step the logs and result JSON are packed again
# into $OUT/perf.tgz (weights and plots stay out) and the table into $OUT/perf_table.md, so a run
# killed at its limit still leaves what it had. Steps run most important first.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-$PWD/perf_check_out}
B=${B:-build-pack}
DATA=${DATA:-data-local/fashion-mnist}
BUDGET=${BUDGET:-280}
EPOCHS=${EPOCHS:-3}
mkdir -p "$OUT"
W=$(mktemp -d /tmp/perf_check.XXXXXX)
mkdir -p "$W/runs" "$W/bench"
source profiling/device_env.sh  # "${RT[@]}": the carried executables' libraries, for them only
t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 )); }
left() { echo $(( BUDGET - $(elapsed) )); }
step() { [ -n "${W:-}" ] && [ -d "$W/runs" ] && save; echo; echo "=== $* ($(elapsed) s)"; }
# run SECONDS CMD...: runs CMD with a timeout that never passes the budget; skips when none is left.
run() {
  local want=$1; shift
  local l; l=$(left)
  if [ "$l" -lt 15 ]; then echo "skipped (budget): $*"; return 1; fi
  [ "$want" -gt "$l" ] && want=$l
  timeout "$want" "$@"
}
# Our executables get their libraries through "${RT[@]}"; python3 runs with the machine's own.
rt_run() { local want=$1; shift; run "$want" "${RT[@]}" "$@"; }
save() {  # the table and the packed logs so far, into $OUT
  python3 profiling/perf_table.py --check "$W/runs" > "$OUT/perf_table.md" 2>&1
  tar czf "$OUT/perf.tgz" --exclude='*.safetensors' --exclude='*.png' -C "$W" . 2>/dev/null
}
finish() {
  step "table"
  save
  cat "$OUT/perf_table.md"
  echo "perf_check: $(elapsed) s, $(head -1 "$B/COMMIT" 2>/dev/null)"
}
trap finish EXIT

nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$W/gpu.txt"

conv_lab() {
  step "convolution lab against cuDNN"
  # device_env.sh put the machine's cuDNN (PyTorch's pip package) on the lab's path if it found one.
  if [ -x "$B/barecnn_conv_lab" ]; then
    # Line-buffered: the rows printed so far survive a timeout (the JSON is written at the end).
    rt_run 100 stdbuf -oL "$B/barecnn_conv_lab" --batch 64,1024 --reps 10 --json "$W/conv_lab.json" \
      > "$W/conv_lab.txt" 2>&1
    echo "rc=$?"; cat "$W/conv_lab.txt"
  else
    echo "no conv lab: $B/barecnn_conv_lab was not built (cuDNN missing where pack_device.sh ran)"
  fi
}

bench() {
  step "bench (per layer; the training step kernel by kernel and as a CUDA Graph)"
  for spec in "paper 64" "paper 256" "paper 1024" "deep 64" "deep 256" "deep 1024" "lenet5 64"; do
    set -- $spec
    rt_run 25 "$B/barecnn" bench --device cuda --arch "$1" --batch "$2" --reps 30 \
      --json "$W/bench/bench-$1-$2.json" > "$W/bench/bench-$1-$2.txt" 2>&1
    echo "$1 b$2: $(grep -E 'training step|peak device' "$W/bench/bench-$1-$2.txt" | tr -s ' ' | paste -sd';')"
  done
  cat "$W/bench/bench-paper-64.txt"
}

# barecnn NAME ARCH BATCH SEED [GRAPH: on (default) | off] [FUSE: on (default, as train's --fuse auto) | off]
barecnn() {
  local name=$1 arch=$2 batch=$3 seed=$4 graph=${5:-on} fuse=${6:-on}
  rt_run 90 "$B/barecnn" train --device cuda --data "$DATA" --arch "$arch" --batch "$batch" --epochs "$EPOCHS" \
    --seed "$seed" --cuda-graph "$graph" --fuse "$fuse" --quiet --overwrite --out "$W/runs/$name" > "$W/runs/$name.log" 2>&1
  echo "barecnn $name: $(tail -2 "$W/runs/$name.log" | head -1)"
}
# torch NAME MODE ARCH BATCH SEEDS
torch() {
  run 150 python3 profiling/compare_pytorch.py --device cuda --mode "$2" --arch "$3" --batch "$4" --epochs "$EPOCHS" \
    --seeds "$5" --data "$DATA" --json "$W/runs/torch-$1.json" > "$W/runs/torch-$1.log" 2>&1
  echo "torch $1: $(tail -1 "$W/runs/torch-$1.log")"
}

step "paper, batch 64: barecnn (3 seeds) against PyTorch eager (3 seeds) and torch.compile"
for s in 1 2 3; do barecnn "paper-b64-s$s" paper 64 "$s"; done
torch paper-b64-eager eager paper 64 1,2,3
bench
step "paper, batch 64: torch.compile(mode=reduce-overhead)"
torch paper-b64-compile compile paper 64 1
conv_lab

step "paper, batch 256 and 1024; deep, batch 64, 256, 1024"
for b in 256 1024; do
  barecnn "paper-b$b" paper "$b" 1
  torch "paper-b$b-eager" eager paper "$b" 1
done
for b in 64 256 1024; do
  barecnn "deep-b$b" deep "$b" 1
  torch "deep-b$b-eager" eager deep "$b" 1
done
step "the gains of the graph and of the fusion: paper, batch 64 and 1024; deep, batch 256"
barecnn paper-b64-nograph paper 64 1 off
barecnn paper-b64-unfused paper 64 1 on off
barecnn paper-b1024-unfused paper 1024 1 on off
barecnn deep-b256-unfused deep 256 1 on off
for spec in "paper 64" "deep 256"; do
  set -- $spec
  rt_run 25 "$B/barecnn" bench --device cuda --arch "$1" --batch "$2" --reps 30 --fuse off \
    --json "$W/bench/bench-$1-$2-unfused.json" > "$W/bench/bench-$1-$2-unfused.txt" 2>&1
  echo "$1 b$2 unfused: $(grep -E 'training step' "$W/bench/bench-$1-$2-unfused.txt" | tr -s ' ' | paste -sd';')"
done
