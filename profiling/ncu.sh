#!/usr/bin/env bash
# Nsight Compute of barecnn's convolution kernels (or of any kernels picked by name), with
# `barecnn bench --device cuda` as the workload: a few training steps of one net at one batch.
#
#   profiling/ncu.sh                                    # paper, batch 256: conv kernels, light sections
#   profiling/ncu.sh --arch deep --batch 64 --count 12
#   profiling/ncu.sh --set full --count 3               # every section (much slower per kernel)
#   profiling/ncu.sh --kernel 'dense|bias'              # pick kernels by a name regex instead
#   profiling/ncu.sh --nvtx 'layer 0 conv(32,5,pad=2) forward/'   # kernels inside one layer's range
#
# Which kernels: by default those launched inside the conv launchers' NVTX ranges
# (conv2d_forward, conv2d_backward_input, conv2d_backward_weight: --nvtx-include
# 'regex:conv2d_.*/', the trailing slash marking push/pop ranges). The per-layer ranges
# ("layer 0 conv(32,5,pad=2) forward") exist only where `bench` runs the whole net (warm-up and
# the step loop), not in its layer-by-layer loop, hence the launcher ranges. If the NVTX filter
# profiles nothing, the run is repeated once with the kernel-name filter -k regex:conv2d.
# --count (ncu -c, default 6) bounds the work: ncu replays each kernel once per section pass, so
# a kernel costs about a second with the light sections and several with --set full.
#
# Sections: "light" (default) = SpeedOfLight, MemoryWorkloadAnalysis, ComputeWorkloadAnalysis,
# LaunchStats, Occupancy; "full" = ncu --set full; any other word is passed as --set WORD.
# The GPU's clocks are left alone (--clock-control none): ncu would otherwise lock them to base
# for the run, and the GPU machine's settings are not ours to change. Figures are then at the
# clocks the card runs at.
#
# Output: $OUT (default ./ncu_out): ncu-<arch>-b<batch>.ncu-rep (open in the Nsight Compute GUI),
# -details.csv (ncu --import --page details --csv), -details.txt, -summary.txt and the log.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

ARCH=paper BATCH=256 REPS=3 COUNT=6 SKIP=0 SET=light TIMEOUT=300
BIN=build-pack/barecnn
NVTX='regex:conv2d_.*/'
KERNEL=

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  cat <<EOF

options: --arch SPEC|PRESET (paper)  --batch N (256)  --reps N (3, bench's timed repetitions)
         --count N (6, kernels profiled)  --skip N (0, matching kernels skipped first)
         --set light|full|NAME (light)  --kernel REGEX (filter by kernel name, no NVTX)
         --nvtx EXPR (an ncu --nvtx-include expression; default '$NVTX')
         --binary PATH (build-pack/barecnn)  --timeout SECONDS (300)
env:     OUT (output folder), NCU (path of ncu)
EOF
}

need_value() { [ $# -ge 2 ] || { echo "ncu.sh: $1 needs a value (see --help)" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) need_value "$@"; ARCH=$2; shift 2 ;;
    --batch) need_value "$@"; BATCH=$2; shift 2 ;;
    --reps) need_value "$@"; REPS=$2; shift 2 ;;
    --count) need_value "$@"; COUNT=$2; shift 2 ;;
    --skip) need_value "$@"; SKIP=$2; shift 2 ;;
    --set) need_value "$@"; SET=$2; shift 2 ;;
    --kernel) need_value "$@"; KERNEL=$2; shift 2 ;;
    --nvtx) need_value "$@"; NVTX=$2; shift 2 ;;
    --binary) need_value "$@"; BIN=$2; shift 2 ;;
    --timeout) need_value "$@"; TIMEOUT=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "ncu.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for v in BATCH REPS COUNT SKIP TIMEOUT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "ncu.sh: --${v,,} must be a whole number, got '${!v}'" >&2; exit 2; }
done
[ "$COUNT" -ge 1 ] || { echo "ncu.sh: --count must be >= 1" >&2; exit 2; }

# ncu: $NCU, then PATH, then where the CUDA toolkit and the standalone installer put it.
find_ncu() {
  if [ -n "${NCU:-}" ]; then [ -x "$NCU" ] && echo "$NCU"; return; fi
  command -v ncu 2>/dev/null && return
  local c found=()
  shopt -s nullglob
  found=(/opt/nvidia/nsight-compute/*/ncu /usr/local/cuda*/nsight-compute*/ncu)
  shopt -u nullglob
  mapfile -t found < <(printf '%s\n' "${found[@]}" | sort -V -r)  # the newest version first
  for c in /usr/local/cuda/bin/ncu "${found[@]}"; do
    [ -x "$c" ] && { echo "$c"; return; }
  done
}

problems=()
NCU_BIN=$(find_ncu)
[ -n "$NCU_BIN" ] || problems+=("Nsight Compute (ncu) not found${NCU:+ at NCU=$NCU}: looked in PATH, /usr/local/cuda/bin and /opt/nvidia/nsight-compute/*/; install Nsight Compute (the CUDA toolkit's nsight-compute package) or set NCU=/path/to/ncu")
[ -x "$BIN" ] || problems+=("$BIN: no barecnn executable there; build it with profiling/pack_device.sh (build-device/) or pass --binary PATH")
if command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$(nvidia-smi -L 2>&1) || problems+=("no usable GPU: nvidia-smi -L failed: ${gpus//$'\n'/ }")
elif ! ls /dev/nvidia[0-9]* >/dev/null 2>&1; then
  problems+=("no GPU: there is no nvidia-smi and no /dev/nvidia0 on this machine; run this on the GPU machine")
fi
if [ ${#problems[@]} -gt 0 ]; then
  printf 'ncu.sh: %s\n' "${problems[@]}" >&2
  exit 2
fi

case "$SET" in
  light) SECTION_ARGS=(--section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis
                       --section LaunchStats --section Occupancy) ;;
  *) SECTION_ARGS=(--set "$SET") ;;
esac

OUT=${OUT:-$PWD/ncu_out}
mkdir -p "$OUT" || exit 2
# The carried executables' libraries, for them only (not for the profiler: see device_env.sh).
B=$(dirname "$BIN") source profiling/device_env.sh
name="ncu-$(printf '%s' "$ARCH" | tr -c 'A-Za-z0-9_.-' '_')-b$BATCH"
rep="$OUT/$name.ncu-rep"
log="$OUT/$name.log"
WORKLOAD=("${RT[@]}" "$BIN" bench --device cuda --arch "$ARCH" --batch "$BATCH" --reps "$REPS")

profile() {  # profile FILTER-ARGS...: one ncu run; its output in $log
  echo "ncu $* ${SECTION_ARGS[*]} -c $COUNT -s $SKIP ${WORKLOAD[*]}"
  timeout "$TIMEOUT" "$NCU_BIN" "$@" "${SECTION_ARGS[@]}" --launch-count "$COUNT" --launch-skip "$SKIP" \
    --clock-control none --force-overwrite --export "$OUT/$name" "${WORKLOAD[@]}" > "$log" 2>&1
}

echo "ncu: $NCU_BIN ($("$NCU_BIN" --version 2>/dev/null | tail -1))"
if [ -n "$KERNEL" ]; then
  profile --kernel-name "regex:$KERNEL"; rc=$?
else
  profile --nvtx --nvtx-include "$NVTX"; rc=$?
  if [ $rc = 0 ] && grep -q "No kernels were profiled" "$log"; then
    echo "ncu.sh: the NVTX filter '$NVTX' matched no kernel; again with -k regex:conv2d"
    profile --kernel-name regex:conv2d; rc=$?
  fi
fi
grep -E "^==(PROF|WARNING|ERROR)==" "$log" | head -20
if grep -q ERR_NVGPUCTRPERM "$log"; then
  echo "ncu.sh: the GPU's performance counters are reserved to administrators on this machine (ERR_NVGPUCTRPERM):" \
       "run as root or ask for NVreg_RestrictProfilingToAdminUsers=0; Nsight Systems (profiling/nsys.sh) still works" >&2
  exit 1
fi
if [ $rc != 0 ] || [ ! -f "$rep" ]; then
  [ $rc = 124 ] && echo "ncu.sh: stopped after --timeout $TIMEOUT s (lower --count, or use the light sections)" >&2
  echo "ncu.sh: ncu exited with $rc; log: $log" >&2
  tail -5 "$log" >&2
  [ -f "$rep" ] || exit 1
fi

"$NCU_BIN" --import "$rep" --page details --csv > "$OUT/$name-details.csv" 2> /dev/null
"$NCU_BIN" --import "$rep" --page details > "$OUT/$name-details.txt" 2> /dev/null
"$NCU_BIN" --import "$rep" --print-summary per-kernel > "$OUT/$name-summary.txt" 2> /dev/null

# One line per profiled kernel from the CSV: duration, SM and memory throughput (% of peak),
# DRAM throughput, achieved occupancy. Metric names as in ncu's details page.
python3 - "$OUT/$name-details.csv" <<'EOF' || head -n 40 "$OUT/$name-summary.txt"
import csv
import sys
rows = list(csv.DictReader(open(sys.argv[1])))
if not rows:
    sys.exit(1)
want = [("Duration", "time"), ("Compute (SM) Throughput", "SM %"), ("Memory Throughput", "mem %"),
        ("DRAM Throughput", "DRAM %"), ("Achieved Occupancy", "occup. %"), ("Registers Per Thread", "regs")]
kernels = {}
for r in rows:
    name = r["Kernel Name"].removeprefix("void ").split("(")[0]  # no return type, no parameter list
    k = kernels.setdefault(r["ID"], {"name": name, "grid": r.get("Grid Size", ""),
                                     "block": r.get("Block Size", "")})
    k.setdefault(r["Metric Name"], f'{r["Metric Value"]} {r["Metric Unit"]}'.strip())
print(f'{"id":>3}  {"kernel":<44} {"grid":>14} {"block":>12} ' + " ".join(f"{h:>12}" for _, h in want))
for i, k in sorted(kernels.items(), key=lambda kv: int(kv[0])):
    vals = " ".join(f'{k.get(m, "-"):>12}' for m, _ in want)
    print(f'{i:>3}  {k["name"][:44]:<44} {k["grid"]:>14} {k["block"]:>12} {vals}')
EOF
echo
echo "report: $rep; details: $OUT/$name-details.csv, $OUT/$name-details.txt; summary: $OUT/$name-summary.txt"
exit $rc
