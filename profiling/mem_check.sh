#!/usr/bin/env bash
# Peak device memory of `barecnn train` (summary.json's peak_device_bytes: this run's buffers plus
# cuBLAS's workspace) for paper and deep at batch 64, 256 and 1024, one epoch each, fused (the
# default) and --cuda-graph on, as perf_check.sh's runs. For the GPU machine, from the carried
# build-pack/ and data-local/ (profiling/pack_device.sh). One line per run: net, batch, peak MiB,
# s/epoch, test accuracy. PyTorch's peaks for the same settings are in RESULTS.md (perf_check.sh).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
B=${B:-build-pack}
DATA=${DATA:-data-local/fashion-mnist}
source profiling/device_env.sh
W=$(mktemp -d /tmp/mem_check.XXXXXX)
printf '%-6s %6s %9s %9s %9s\n' net batch "peak MiB" "s/epoch" "test acc"
for spec in "paper 64" "paper 256" "paper 1024" "deep 64" "deep 256" "deep 1024"; do
  set -- $spec
  timeout 60 "${RT[@]}" "$B/barecnn" train --device cuda --data "$DATA" --arch "$1" --batch "$2" --epochs 1 \
    --cuda-graph on --quiet --overwrite --out "$W/$1-$2" > "$W/$1-$2.log" 2>&1 ||
    { echo "$1 b$2 failed:"; tail -3 "$W/$1-$2.log"; continue; }
  python3 - "$W/$1-$2/summary.json" "$1" "$2" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print("%-6s %6s %9.0f %9.3f %9.4f" % (sys.argv[2], sys.argv[3], s["peak_device_bytes"] / 2**20,
      s["epochs"][-1]["seconds"], s["test_accuracy"]))
PY
done
