#!/usr/bin/env bash
# Prints the folder that holds a usable cuDNN 9 (libcudnn.so.9 and the sub-libraries it loads at
# run time), for LD_LIBRARY_PATH; prints nothing and exits 1 when there is none. Only the
# profiling lab barecnn_conv_lab needs cuDNN; barecnn itself never does.
#
#   export LD_LIBRARY_PATH="$(profiling/find_cudnn.sh):${LD_LIBRARY_PATH:-}"
#   profiling/find_cudnn.sh --all    # the cuDNN folder, then the folders of the other pip-packaged
#                                    # NVIDIA libraries beside it (cuBLAS, NVRTC), joined with ':'
#
# Looks, in order: the loader cache (ldconfig -p), /usr/local/cuda/lib64 and /usr/local/cuda/lib,
# then the copy that PyTorch brings: the pip package nvidia-cudnn-cu* (site-packages/nvidia/...,
# found by python3 without importing torch, which is slow) and torch/lib.
#
# libcudnn.so.9 is a small shim that dlopen()s libcudnn_graph/_ops/_cnn and the engine libraries
# from the loader's search path, so a folder counts only when the libraries the convolution API
# needs are all in it.
set -uo pipefail

all=0
case "${1:-}" in
  --all) all=1 ;;
  "") ;;
  *) echo "usage: $0 [--all]" >&2; exit 2 ;;
esac

usable() {
  local d=$1 f
  [ -n "$d" ] && [ -d "$d" ] || return 1
  for f in libcudnn.so.9 libcudnn_graph.so.9 libcudnn_ops.so.9 libcudnn_cnn.so.9; do
    [ -e "$d/$f" ] || return 1
  done
}

candidates() {
  # 1. the loader cache
  if command -v ldconfig >/dev/null 2>&1; then
    ldconfig -p 2>/dev/null | awk '$1 == "libcudnn.so.9" { print $NF }' | while read -r p; do dirname "$p"; done
  fi
  # 2. the CUDA toolkit's own folders
  echo /usr/local/cuda/lib64
  echo /usr/local/cuda/lib
  # 3. PyTorch's: the pip wheels put cuDNN under site-packages/nvidia/<pkg>/lib (nvidia/cudnn/lib
  #    for nvidia-cudnn-cu12; the layout of newer wheels may differ, so search the whole nvidia
  #    namespace a few levels deep), or torch bundles it in torch/lib.
  if command -v python3 >/dev/null 2>&1; then
    python3 - <<'EOF' 2>/dev/null
import importlib.util, os
seen = []
try:
    spec = importlib.util.find_spec("nvidia.cudnn")
    if spec is not None:
        for p in spec.submodule_search_locations or []:
            print(os.path.join(p, "lib"))
except Exception:
    pass
try:
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations if spec else None) or []:
        for dirpath, dirnames, filenames in os.walk(root):
            if dirpath[len(root):].count(os.sep) >= 3:
                dirnames[:] = []
            if "libcudnn.so.9" in filenames:
                print(dirpath)
except Exception:
    pass
try:
    spec = importlib.util.find_spec("torch")
    for p in (spec.submodule_search_locations if spec else None) or []:
        print(os.path.join(p, "lib"))
except Exception:
    pass
EOF
  fi
}

found=""
while read -r d; do
  if usable "$d"; then
    found=$(cd "$d" && pwd -P)
    break
  fi
done < <(candidates)

[ -n "$found" ] || exit 1
if [ "$all" = 0 ]; then
  echo "$found"
  exit 0
fi
# --all: cuDNN's engines may also dlopen cuBLAS(Lt) and NVRTC; pip installs those as sibling
# packages (nvidia/cublas/lib, nvidia/cuda_nvrtc/lib, ...), which PyTorch preloads but a plain
# program does not find.
paths=$found
parent=$(dirname "$(dirname "$found")")
for d in "$parent"/*/lib; do
  [ -d "$d" ] || continue
  d=$(cd "$d" && pwd -P)
  [ "$d" = "$found" ] && continue
  if compgen -G "$d/libcublas*.so*" >/dev/null || compgen -G "$d/libnvrtc*.so*" >/dev/null; then
    paths="$paths:$d"
  fi
done
echo "$paths"
