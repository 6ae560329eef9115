#!/usr/bin/env bash
# Nsight Systems timeline of `barecnn train` on the GPU, then the summaries that matter:
#   nvtx_sum            time per NVTX range: layers ("layer 0 conv(32,5,pad=2) forward"), ops
#                       ("conv2d_forward"), train_step, epoch, evaluate (CPU-side push/pop times)
#   nvtx_gpu_proj_sum   the same ranges projected onto the GPU: the kernel time each range caused
#   cuda_gpu_kern_sum   time per kernel
#   cuda_api_sum        time per CUDA API call (launch overhead, synchronizations, copies)
# Each goes to a text file next to the .nsys-rep; the top of each is printed.
#
#   profiling/nsys.sh                                   # paper net, batch 64, 1 epoch
#   profiling/nsys.sh --arch deep --batch 256 --epochs 1 --limit 12000
#   OUT=/tmp/n profiling/nsys.sh --binary build/barecnn --data /usr/share/datasets/fashion-mnist
#   profiling/nsys.sh --cuda-graph on -- --lr 0.02     # arguments after -- go to `barecnn train`
#
# Output: $OUT (default ./nsys_out): nsys-<arch>-b<batch>.nsys-rep, its .sqlite, the text
# reports nsys-<arch>-b<batch>-<report>.txt, the training log and the run folder.
# Nothing here changes the GPU's settings (no clock locking, no GPU metrics sampling).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

ARCH=paper BATCH=64 EPOCHS=1 LIMIT=0 GRAPH=auto TIMEOUT=300
BIN=build-pack/barecnn
DATA=data-local/fashion-mnist
EXTRA=()

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  cat <<EOF

options: --arch SPEC|PRESET (paper)  --batch N (64)  --epochs N (1)  --limit N (0: all images)
         --binary PATH (build-pack/barecnn)  --data DIR (data-local/fashion-mnist)
         --cuda-graph on|off|auto (auto: off when the binary has the flag)  --timeout SECONDS (300)
         -- ARGS...  more arguments for barecnn train
env:     OUT (output folder), NSYS (path of nsys)
EOF
}

need_value() { [ $# -ge 2 ] || { echo "nsys.sh: $1 needs a value (see --help)" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) need_value "$@"; ARCH=$2; shift 2 ;;
    --batch) need_value "$@"; BATCH=$2; shift 2 ;;
    --epochs) need_value "$@"; EPOCHS=$2; shift 2 ;;
    --limit) need_value "$@"; LIMIT=$2; shift 2 ;;
    --binary) need_value "$@"; BIN=$2; shift 2 ;;
    --data) need_value "$@"; DATA=$2; shift 2 ;;
    --cuda-graph) need_value "$@"; GRAPH=$2; shift 2 ;;
    --timeout) need_value "$@"; TIMEOUT=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "nsys.sh: unknown argument '$1' (see --help; arguments for barecnn train go after --)" >&2; exit 2 ;;
  esac
done
case "$GRAPH" in on|off|auto) ;; *) echo "nsys.sh: --cuda-graph must be on, off or auto, got '$GRAPH'" >&2; exit 2 ;; esac
for v in BATCH EPOCHS LIMIT TIMEOUT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "nsys.sh: --${v,,} must be a whole number, got '${!v}'" >&2; exit 2; }
done

# nsys: $NSYS, then PATH, then where the CUDA toolkit and the standalone installer put it.
find_nsys() {
  if [ -n "${NSYS:-}" ]; then [ -x "$NSYS" ] && echo "$NSYS"; return; fi
  command -v nsys 2>/dev/null && return
  local c found=()
  shopt -s nullglob
  found=(/opt/nvidia/nsight-systems*/bin/nsys /usr/local/cuda*/nsight-systems*/bin/nsys)
  shopt -u nullglob
  mapfile -t found < <(printf '%s\n' "${found[@]}" | sort -V -r)  # the newest version first
  for c in /usr/local/cuda/bin/nsys "${found[@]}"; do
    [ -x "$c" ] && { echo "$c"; return; }
  done
}

problems=()
NSYS_BIN=$(find_nsys)
[ -n "$NSYS_BIN" ] || problems+=("Nsight Systems (nsys) not found${NSYS:+ at NSYS=$NSYS}: looked in PATH, /usr/local/cuda/bin and /opt/nvidia/nsight-systems*/bin; install Nsight Systems (the CUDA toolkit's nsight-systems package) or set NSYS=/path/to/nsys")
[ -x "$BIN" ] || problems+=("$BIN: no barecnn executable there; build it with profiling/pack_device.sh (build-device/) or pass --binary PATH")
if [ ! -d "$DATA" ]; then
  if [ "$DATA" = data-local/fashion-mnist ] && [ -d /usr/share/datasets/fashion-mnist ]; then
    DATA=/usr/share/datasets/fashion-mnist
  else
    problems+=("$DATA: no such data folder; profiling/pack_device.sh copies Fashion-MNIST into data-local/, or pass --data DIR")
  fi
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$(nvidia-smi -L 2>&1) || problems+=("no usable GPU: nvidia-smi -L failed: ${gpus//$'\n'/ }")
elif ! ls /dev/nvidia[0-9]* >/dev/null 2>&1; then
  problems+=("no GPU: there is no nvidia-smi and no /dev/nvidia0 on this machine; run this on the GPU machine")
fi
if [ ${#problems[@]} -gt 0 ]; then
  printf 'nsys.sh: %s\n' "${problems[@]}" >&2
  exit 2
fi

OUT=${OUT:-$PWD/nsys_out}
mkdir -p "$OUT" || exit 2
# The carried executables' libraries, for them only (not for the profiler: see device_env.sh).
B=$(dirname "$BIN") source profiling/device_env.sh

# With CUDA Graphs, a training step is captured once and then replayed: the per-layer and per-op
# NVTX ranges are pushed only while the graph is captured, so the timeline of an epoch would show
# graph launches with no layer ranges over them. For a per-layer picture the default is therefore
# to train without graphs, where the binary has the flag at all (older builds have no graphs).
# --cuda-graph on profiles the production path instead (kernels traced one by one inside graphs).
GRAPH_ARGS=() TRACE_ARGS=()
has_graph_flag=0
with_rt "$BIN" train --help 2>/dev/null | grep -q -- '--cuda-graph' && has_graph_flag=1
if [ "$GRAPH" = auto ]; then
  [ $has_graph_flag = 1 ] && GRAPH=off || GRAPH=none
fi
if [ "$GRAPH" != none ]; then
  [ $has_graph_flag = 1 ] || { echo "nsys.sh: --cuda-graph $GRAPH: '$BIN train --help' has no --cuda-graph flag" >&2; exit 2; }
  GRAPH_ARGS=(--cuda-graph "$GRAPH")
  [ "$GRAPH" = on ] && TRACE_ARGS=(--cuda-graph-trace=node)
fi

name="nsys-$(printf '%s' "$ARCH" | tr -c 'A-Za-z0-9_.-' '_')-b$BATCH"
rep="$OUT/$name.nsys-rep"
echo "nsys: $NSYS_BIN ($("$NSYS_BIN" --version 2>/dev/null | head -1))"
echo "profiling: $BIN train --arch '$ARCH' --batch $BATCH --epochs $EPOCHS --limit $LIMIT ${GRAPH_ARGS[*]} ${EXTRA[*]}"
timeout "$TIMEOUT" "$NSYS_BIN" profile --trace=cuda,nvtx --sample=none --cpuctxsw=none "${TRACE_ARGS[@]}" \
  --force-overwrite=true --output="$OUT/$name" \
  "${RT[@]}" "$BIN" train --device cuda --data "$DATA" --arch "$ARCH" --batch "$BATCH" --epochs "$EPOCHS" \
  --limit "$LIMIT" --quiet --overwrite --out "$OUT/$name-run" "${GRAPH_ARGS[@]}" "${EXTRA[@]}" \
  > "$OUT/$name.log" 2>&1
rc=$?
tail -5 "$OUT/$name.log"
if [ $rc -ne 0 ]; then
  [ $rc = 124 ] && echo "nsys.sh: stopped after --timeout $TIMEOUT s" >&2
  echo "nsys.sh: nsys profile exited with $rc (log: $OUT/$name.log)" >&2
  [ -f "$rep" ] || exit 1
  echo "nsys.sh: a report was written anyway; summarizing it" >&2
fi

# Report names of nsys 2023 and later, with the older names as a fallback.
status=0 first=1
for pair in nvtx_sum:nvtxsum nvtx_gpu_proj_sum: cuda_gpu_kern_sum:gpukernsum cuda_api_sum:cudaapisum; do
  new=${pair%%:*} old=${pair#*:}
  txt="$OUT/$name-$new.txt"
  export_arg=()
  [ $first = 1 ] && export_arg=(--force-export=true)  # build the .sqlite once, the others reuse it
  first=0
  if ! "$NSYS_BIN" stats --report "$new" --format column "${export_arg[@]}" "$rep" > "$txt" 2> "$txt.err"; then
    if [ -z "$old" ] || ! "$NSYS_BIN" stats --report "$old" --format column "$rep" > "$txt" 2>> "$txt.err"; then
      echo "nsys.sh: nsys stats --report $new failed: $(head -3 "$txt.err")" >&2
      rm -f "$txt"
      [ "$new" = nvtx_gpu_proj_sum ] || status=1
      continue
    fi
  fi
  rm -f "$txt.err"
  echo
  echo "=== $new ($txt)"
  head -n 30 "$txt"
done
echo
echo "report: $rep (open it in the Nsight Systems GUI for the timeline)"
exit $status
