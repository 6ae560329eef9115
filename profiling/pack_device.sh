#!/usr/bin/env bash
# Prepares, on this (GPU-less) machine, what profiling/gpu_check.sh needs on the GPU machine:
#   build-device/   a Release build for sm_90 (the `device` preset), plus build-device/rt-libs/
#                   with the shared libraries the GPU machine may lack (cairo and friends; never
#                   libc, the CUDA driver or cuBLAS, which the GPU machine's CUDA 13 has)
#   data-local/fashion-mnist/   the four IDX files (~30 MB)
# Both folders are git-ignored; pass them to the device tool as `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake --preset device >/dev/null
cmake --build --preset device
mkdir -p build-device/rt-libs data-local/fashion-mnist
cp -u /usr/share/datasets/fashion-mnist/*.gz data-local/fashion-mnist/
skip='^(linux-vdso|libc\.so|libm\.so|libpthread|libdl\.so|librt\.so|ld-linux|libcuda\.so|libcublas|libcudart)'
for exe in build-device/barecnn build-device/tests/test_gpu_* ; do
  ldd "$exe" | awk '/=> \//{print $1" "$3}' | while read -r name path; do
    [[ "$name" =~ $skip ]] && continue
    cp -u "$path" build-device/rt-libs/
  done
done
du -sh build-device data-local | cat
echo "carry: build-device data-local (must stay under 64 MiB together)"
