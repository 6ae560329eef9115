#!/usr/bin/env bash
# Prepares, on this (GPU-less) machine, what gpu_check.sh and perf_check.sh need on the GPU machine:
#   build-device/   a Release build for sm_90 (the `device` preset) of the targets the checks run
#   build-pack/     what travels: those executables, plus rt-libs/ with the shared libraries a bare
#                   GPU machine may lack (cairo and friends; never libc, the CUDA driver, cuBLAS or
#                   cuDNN, which the GPU machine has: cuDNN through PyTorch, see find_cudnn.sh)
#   data-local/fashion-mnist/   the four IDX files (~30 MB)
# build-pack/ and data-local/ are git-ignored; build-pack/ travels packed (see the end). The object
# files of build-device/ stay here: the whole carried tree must stay under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=(barecnn test_gpu_conv test_gpu_pool test_gpu_activation test_gpu_dense test_gpu_loss test_gpu_optim
         test_gpu_data test_gpu_train test_step test_bench test_device_buffer)
cmake --preset device >/dev/null
help=$(cmake --build --preset device --target help)  # (not piped into grep -q: no SIGPIPE under pipefail)
[[ "$help" == *$'\n'barecnn_conv_lab:* ]] && targets+=(barecnn_conv_lab)
cmake --build --preset device --target "${targets[@]}"

rm -rf build-pack
mkdir -p build-pack/rt-libs data-local/fashion-mnist
cp -u /usr/share/datasets/fashion-mnist/*.gz data-local/fashion-mnist/
for t in "${targets[@]}"; do
  f=$(find build-device -maxdepth 3 -type f -name "$t" -perm -u+x | head -1)
  [ -n "$f" ] || { echo "pack_device: $t was not built" >&2; exit 1; }
  cp "$f" build-pack/
done
git rev-parse HEAD > build-pack/COMMIT
[ -n "$(git status --porcelain --untracked-files=no)" ] && echo "dirty" >> build-pack/COMMIT
skip='^(linux-vdso|libc\.so|libm\.so|libpthread|libdl\.so|librt\.so|ld-linux|libcuda\.so|libcublas|libcudart|libcudnn)'
for exe in build-pack/*; do
  [ -x "$exe" ] && [ -f "$exe" ] || continue
  ldd "$exe" | awk '/=> \//{print $1" "$3}' | while read -r name path; do
    [[ "$name" =~ $skip ]] && continue
    cp -u "$path" build-pack/rt-libs/
  done
done
# The executables embed every kernel's SASS and PTX (~35 MB together, too much beside the data):
# they travel compressed, as build-device/build-pack.tgz (~13 MB), which the GPU machine unpacks
# first: `tar xzf build-device/build-pack.tgz` (carry: build-device/build-pack.tgz data-local).
tar czf build-device/build-pack.tgz build-pack
du -sh build-pack build-device/build-pack.tgz data-local | cat
total=$(du -sk build-device/build-pack.tgz data-local | awk '{s+=$1} END {print s}')
echo "carry: build-device/build-pack.tgz data-local (${total} KiB; must stay under 64 MiB with the tree)"
echo "on the GPU machine, first: tar xzf build-device/build-pack.tgz"
[ "$total" -lt 60000 ] || { echo "pack_device: too large to carry" >&2; exit 1; }
