#include "barecnn/error.h"

#include <atomic>
#include <cstdio>
#include <mutex>

#include "barecnn/device_buffer.h"

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
  std::string msg = fmt("CUDA error ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ") in `",
                        expr, "` at ", file, ":", line);
  std::string hint = cuda_hint(err);
  if (!hint.empty()) msg += ": " + hint;
  return msg;
}

static const char* cublas_status_name(cublasStatus_t st) {
  switch (st) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_UNKNOWN";
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

// ---- device memory accounting ----------------------------------------------------------------

void DeviceMemoryCounter::on_alloc(const void* p, size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, fresh] = sizes_.emplace(p, bytes);
  if (!fresh) {  // the same address twice without a free between: keep the books right anyway
    current_ -= it->second;
    it->second = bytes;
  }
  current_ += bytes;
  if (current_ > peak_) peak_ = current_;
}

void DeviceMemoryCounter::on_free(const void* p) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sizes_.find(p);
  if (it == sizes_.end()) return;
  current_ -= it->second;
  sizes_.erase(it);
}

DeviceMemoryStats DeviceMemoryCounter::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return {current_, peak_};
}

void DeviceMemoryCounter::reset_peak() {
  std::lock_guard<std::mutex> lock(mu_);
  peak_ = current_;
}

// The process-wide counter. Deliberately never destroyed: a DeviceBuffer with static storage may
// be freed after every other static object is gone.
static DeviceMemoryCounter& device_memory_counter() {
  static DeviceMemoryCounter* c = new DeviceMemoryCounter;
  return *c;
}

DeviceMemoryStats device_memory_stats() { return device_memory_counter().stats(); }
void reset_device_memory_peak() { device_memory_counter().reset_peak(); }

void* device_malloc(size_t bytes, const char* what) {
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaSuccess) {
    try {
      device_memory_counter().on_alloc(p, bytes);
    } catch (...) {  // the map could not grow (host memory): do not leak the device block
      cudaFree(p);
      throw;
    }
    return p;
  }
  cudaGetLastError();  // clear the sticky-free error state of a failed allocation
  if (err == cudaErrorMemoryAllocation) {
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    throw Error(fmt("out of GPU memory allocating ", what, ": asked for ", bytes, " bytes (",
                    bytes >> 20, " MiB), ", free_b >> 20, " MiB free of ", total_b >> 20,
                    " MiB; lower --batch or use a smaller net"));
  }
  throw_cuda_error(err, "cudaMalloc", __FILE__, __LINE__);
}

void device_free(void* p) noexcept {
  if (!p) return;
  // Off the books before cudaFree: once freed, another thread's cudaMalloc may get the same
  // address and book it, which a later erase would then wipe.
  device_memory_counter().on_free(p);
  cudaError_t err = cudaFree(p);
  if (err == cudaSuccess) return;
  // After a sticky error (a kernel fault) every free fails the same way while the stack unwinds;
  // the error itself has been reported, so say it once.
  static std::atomic<bool> said{false};
  if (!said.exchange(true)) print_cuda_error(err, "cudaFree", __FILE__, __LINE__);
}

}  // namespace barecnn
