#!/usr/bin/env bash
# Sourced by gpu_check.sh, perf_check.sh, nsys.sh and ncu.sh on the GPU machine: finds the shared
# libraries the carried executables ($B, default build-pack/) need, and defines `with_rt CMD...`,
# which runs CMD with them. Only our executables get this path, never python3: the carried
# rt-libs/ come from the build machine (Debian 12) and would shadow the GPU machine's newer
# libstdc++ for PyTorch.
#   - a carried library (build-pack/rt-libs/) is used only where the machine has none of that name
#     (ldconfig), so the machine's own, usually newer, libraries win;
#   - the CUDA libraries (cudart, cuBLAS; cuDNN for the conv lab) are not carried (cuBLAS alone is
#     hundreds of MB): they are looked for in the CUDA toolkit's folders and in the pip packages
#     of the machine's PyTorch (nvidia-cublas, nvidia-cudnn-cu13, ...). cuBLAS, which barecnn
#     opens at its first call rather than links, by the soname written in the executable.
# "${RT[@]}" is the same as a prefix for commands that exec their argument (timeout, profilers).
# `device_env_report` prints what was chosen, and whether anything is still missing.

B=${B:-build-pack}
_rt_use=$(mktemp -d /tmp/barecnn-rt.XXXXXX)
for _lib in "$B"/rt-libs/*; do
  [ -e "$_lib" ] || continue
  _name=$(basename "$_lib")
  ldconfig -p 2>/dev/null | grep -q "^[[:space:]]*$_name " || ln -sf "$PWD/$_lib" "$_rt_use/$_name"
done
BARECNN_LD=$_rt_use

# Folders that may hold the CUDA libraries, best first.
_cuda_dirs() {
  local d
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-*/lib64; do
    [ -d "$d" ] && echo "$d"
  done
  python3 - <<'EOF' 2>/dev/null
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
try:
    import nvidia
    roots += list(nvidia.__path__)
except Exception:
    pass
seen = set()
for r in roots:
    for d in glob.glob(os.path.join(r, "nvidia", "**", "lib"), recursive=True) + glob.glob(os.path.join(r, "**", "lib"), recursive=False):
        if os.path.isdir(d) and d not in seen:
            seen.add(d)
            print(d)
try:
    import torch
    print(os.path.join(os.path.dirname(torch.__file__), "lib"))
except Exception:
    pass
EOF
}

# Adds, for every library an executable cannot find, the first folder that holds it.
_resolve_missing() {
  local exe=$1 lib d
  for lib in $(LD_LIBRARY_PATH="$BARECNN_LD" ldd "$exe" 2>/dev/null | awk '/not found/{print $1}'); do
    for d in $(_cuda_dirs); do
      if [ -e "$d/$lib" ]; then
        BARECNN_LD="$BARECNN_LD:$d"
        break
      fi
    done
  done
}
for _exe in "$B"/barecnn "$B"/test_gpu_data "$B"/barecnn_conv_lab; do
  [ -x "$_exe" ] && _resolve_missing "$_exe"
done
# cuBLAS is opened at its first call (host/core/cublas_lib.cpp), so ldd does not list it: the
# soname the executable asks for is found the same way, unless the loader's cache has it.
BARECNN_CUBLAS=$(grep -aom1 'libcublas\.so\.[0-9]*' "$B"/barecnn 2>/dev/null || true)
_resolve_dlopened() {
  local lib=$1 d
  [ -n "$lib" ] || return 0
  ldconfig -p 2>/dev/null | grep -q "^[[:space:]]*$lib " && return 0
  for d in ${BARECNN_LD//:/ } $(_cuda_dirs); do
    if [ -e "$d/$lib" ]; then
      case ":$BARECNN_LD:" in *":$d:"*) ;; *) BARECNN_LD="$BARECNN_LD:$d" ;; esac
      return 0
    fi
  done
  return 1
}
_resolve_dlopened "$BARECNN_CUBLAS" || true
export BARECNN_LD

with_rt() { LD_LIBRARY_PATH="$BARECNN_LD${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$@"; }
# The same as a command prefix, for `timeout`, `nsys`, `ncu` and the like: "${RT[@]}" CMD...
# shellcheck disable=SC2034  # used by the scripts that source this file
RT=(env "LD_LIBRARY_PATH=$BARECNN_LD${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")

device_env_report() {
  echo "carried libraries used (the machine lacks them): $(ls "$_rt_use" | tr '\n' ' ')"
  echo "library path for barecnn's executables: $BARECNN_LD"
  local exe missing=0
  if [ -n "$BARECNN_CUBLAS" ] && ! _resolve_dlopened "$BARECNN_CUBLAS"; then
    echo "MISSING $BARECNN_CUBLAS (opened by barecnn at its first cuBLAS call): not in ldconfig nor the CUDA folders"
    missing=1
  fi
  for exe in "$B"/*; do
    [ -f "$exe" ] && [ -x "$exe" ] || continue
    if with_rt ldd "$exe" | grep "not found"; then
      echo "MISSING for $exe (above)"
      missing=1
    fi
  done
  return $missing
}
