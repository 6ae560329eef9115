#include "barecnn/cuda_check.h"

#include <cstdio>

namespace barecnn {

static std::string cuda_hint(cudaError_t err) {
  switch (err) {
    case cudaErrorInsufficientDriver:
    case cudaErrorNoDevice:
      return "no usable NVIDIA driver/GPU on this machine; use --device cpu, or install the driver";
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorInvalidDeviceFunction:
      return fmt("this binary has no code for this GPU (built for sm_", BARECNN_CUDA_ARCHS,
                 "); rebuild with -DCMAKE_CUDA_ARCHITECTURES=<your GPU's compute capability, e.g. 86>");
    case cudaErrorMemoryAllocation:
      return "out of GPU memory; lower --batch or use a smaller net";
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorMisalignedAddress:
    case cudaErrorAssert:
    case cudaErrorIllegalInstruction:
      return "a kernel faulted; CUDA reports it at the next call, which may belong to another op. Rerun "
             "with CUDA_LAUNCH_BLOCKING=1, or under compute-sanitizer, to name the kernel";
    case cudaErrorUnsupportedPtxVersion:
      return "the driver is older than the CUDA toolkit this was built with; update the driver";
    default:
      return "";
  }
}

std::string cuda_error_message(cudaError_t err, const char* expr, const char* file, int line) {
  std::string msg = fmt("CUDA error ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ") in `", expr, "` at ",
                        file, ":", line);
  std::string hint = cuda_hint(err);
  if (!hint.empty()) msg += ": " + hint;
  return msg;
}

static const char* cublas_status_name(cublasStatus_t st) {
  switch (st) {
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    default:
      return "CUBLAS_STATUS_UNKNOWN";
  }
}

std::string cublas_error_message(cublasStatus_t st, const char* expr, const char* file, int line) {
  std::string msg = fmt("cuBLAS error ", cublas_status_name(st), " in `", expr, "` at ", file, ":", line);
  if (st == CUBLAS_STATUS_NOT_INITIALIZED) msg += ": no usable GPU/driver; use --device cpu";
  if (st == CUBLAS_STATUS_ALLOC_FAILED) msg += ": out of GPU memory; lower --batch";
  return msg;
}

void throw_cuda_error(cudaError_t err, const char* expr, const char* file, int line) {
  throw Error(cuda_error_message(err, expr, file, line));
}
void throw_cublas_error(cublasStatus_t st, const char* expr, const char* file, int line) {
  throw Error(cublas_error_message(st, expr, file, line));
}
void print_cuda_error(cudaError_t err, const char* expr, const char* file, int line) {
  std::fprintf(stderr, "barecnn: %s\n", cuda_error_message(err, expr, file, line).c_str());
}

}  // namespace barecnn
