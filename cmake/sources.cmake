# The source files of every library, listed once for CMakeLists.txt and tests/fuzz/CMakeLists.txt.
# Absolute paths, so that both projects can use them. No GLOB: a new file is added here.
get_filename_component(BARECNN_ROOT "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)
set(_r ${BARECNN_ROOT})

# base: geometry, RNG, the names of activations and losses. No CUDA (error.h is header-only).
set(BARECNN_BASE_SOURCES
  ${_r}/host/core/geometry.cpp
  ${_r}/host/core/rng.cpp
  ${_r}/host/core/names.cpp)

# ref: the CPU reference of every op. No CUDA.
set(BARECNN_REF_SOURCES
  ${_r}/host/reference/conv2d.cpp
  ${_r}/host/reference/pool2d.cpp
  ${_r}/host/reference/activation.cpp
  ${_r}/host/reference/dense.cpp
  ${_r}/host/reference/loss.cpp
  ${_r}/host/reference/optim.cpp
  ${_r}/host/reference/data.cpp
  ${_r}/host/reference/norm.cpp)

# cpu: the fast float CPU versions of the heavy ops, and the CPU's peak probe. No CUDA.
set(BARECNN_CPU_SOURCES
  ${_r}/host/cpu/conv2d.cpp
  ${_r}/host/cpu/dense.cpp
  ${_r}/host/cpu/elementwise.cpp
  ${_r}/host/cpu/loss.cpp
  ${_r}/host/cpu/flush.cpp
  ${_r}/host/cpu/norm.cpp
  ${_r}/host/cpu/peak.cpp)

# cuda: cuBLAS (opened at its first call), the CUDA and cuBLAS checks, device memory, the GPU probe
# and context.
set(BARECNN_CUDA_SOURCES
  ${_r}/host/core/cublas_lib.cpp
  ${_r}/host/core/cuda_check.cpp
  ${_r}/host/core/device_buffer.cpp
  ${_r}/host/core/gpu.cpp
  ${_r}/kernels/probe.cu)

# kernels: the CUDA launchers.
set(BARECNN_KERNEL_SOURCES
  ${_r}/kernels/conv2d.cu
  ${_r}/kernels/pool2d.cu
  ${_r}/kernels/activation.cu
  ${_r}/kernels/dense.cu
  ${_r}/kernels/loss.cu
  ${_r}/kernels/optim.cu
  ${_r}/kernels/data.cu
  ${_r}/kernels/norm.cu
  ${_r}/kernels/peak.cu)

# io: IDX, safetensors, atomic files (the parsers the fuzzers test), the charts (cairo) and
# PNG/PGM images (libpng).
# No CUDA.
set(BARECNN_IO_SOURCES
  ${_r}/host/data/idx.cpp
  ${_r}/host/data/safetensors.cpp
  ${_r}/host/data/fileutil.cpp)
set(BARECNN_PLOT_SOURCES
  ${_r}/host/data/plots.cpp
  ${_r}/host/data/image.cpp)

# arch: the arch parser and the shape inference of a spec on an input. No CUDA.
set(BARECNN_ARCH_SOURCES
  ${_r}/host/nn/arch.cpp)

# nn: the dispatch, the layers and the net; then the gradient check and the training.
set(BARECNN_NET_SOURCES
  ${_r}/host/nn/exec.cpp
  ${_r}/host/nn/layers.cpp
  ${_r}/host/nn/net.cpp)
set(BARECNN_TRAIN_SOURCES
  ${_r}/host/nn/gradcheck.cpp
  ${_r}/host/train/step.cpp
  ${_r}/host/train/evaluator.cpp
  ${_r}/host/train/progress.cpp
  ${_r}/host/train/trainer.cpp
  ${_r}/host/train/run_setup.cpp
  ${_r}/host/train/run_spec.cpp
  ${_r}/host/train/model_io.cpp
  ${_r}/host/train/checkpoint.cpp
  ${_r}/host/train/report.cpp
  ${_r}/host/train/version.cpp)

# the command line: one file per command.
set(BARECNN_CLI_SOURCES
  ${_r}/host/cli/main.cpp
  ${_r}/host/cli/cmd_train.cpp
  ${_r}/host/cli/cmd_eval.cpp
  ${_r}/host/cli/cmd_predict.cpp
  ${_r}/host/cli/cmd_gradcheck.cpp
  ${_r}/host/cli/cmd_bench.cpp
  ${_r}/host/cli/cmd_info.cpp)

# Headers that include no CUDA header (checked by the test Build.ReferenceCompilesWithoutCuda).
set(BARECNN_CUDA_FREE_HEADERS
  activation.h arch.h cpu_ops.h error.h fileutil.h gradcheck_criterion.h idx.h loss.h names.h optim.h peak.h plots.h
  image.h norm.h ref_ops.h rng.h run_spec.h safetensors.h shape.h version.h)

unset(_r)
