// The GPU, once: is there one that works, and what is it. Plus the per-run context (stream and
// cuBLAS handle) that every launch uses.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <functional>
#include <string>

#include "barecnn/device_buffer.h"
#include "barecnn/cuda_check.h"

namespace barecnn {

struct GpuStatus {
  bool ok = false;     // a device works: a kernel built into this binary ran on it
  std::string reason;  // when !ok: why, in a sentence ("no NVIDIA driver: ...")
  int device = 0;
  std::string name;  // "NVIDIA H100 80GB HBM3"
  int cc_major = 0, cc_minor = 0;
  int driver_version = 0, runtime_version = 0;
  size_t total_mem = 0;
  int sm_count = 0;
  int device_count = 0;
  bool emulated = false;  // the CUDA emulator (tests/emu): the GPU code runs on the CPU
};

// Probes once (cached): device count, properties, and a tiny kernel launch, so a GPU this build
// has no code for is reported here ("built for sm_90; this GPU is sm_86: rebuild with ...").
const GpuStatus& gpu_status();
bool gpu_available();
// The architectures compiled into this binary ("90", "86;90", ...).
const char* compiled_cuda_archs();
std::string version_str(int cuda_version);  // 13000 -> "13.0"

// Stream + cuBLAS handle (+ its workspace); owned, not copyable, created on the current device.
class GpuContext {
 public:
  GpuContext();
  ~GpuContext();
  GpuContext(const GpuContext&) = delete;
  GpuContext& operator=(const GpuContext&) = delete;
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  void sync() const;

 private:
  static constexpr size_t kCublasWorkspaceBytes = size_t(4) << 20;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  DeviceBuffer<uint8_t> cublas_workspace_;  // freed after the handle (the destructor body runs first)
};

// Page-locked host memory (cudaMallocHost), for copies from the device that do not block the
// stream; move-only. Empty until resize().
template <typename T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer() { release(); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  PinnedBuffer(PinnedBuffer&& o) noexcept : ptr_(o.ptr_), n_(o.n_) { o.ptr_ = nullptr, o.n_ = 0; }
  void resize(size_t n) {
    release();
    void* p = nullptr;
    CUDA_CHECK(cudaMallocHost(&p, n * sizeof(T)));
    ptr_ = static_cast<T*>(p), n_ = n;
  }
  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  size_t size() const { return n_; }

 private:
  void release() noexcept {
    if (ptr_) CUDA_CHECK_NOTHROW(cudaFreeHost(ptr_));
    ptr_ = nullptr, n_ = 0;
  }
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

// A CUDA event, owned; empty until create().
class CudaEvent {
 public:
  CudaEvent() = default;
  ~CudaEvent();
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  // timing: the event can measure elapsed time (cudaEventElapsedTime); else it only orders work.
  void create(bool timing);
  void record(cudaStream_t stream);
  // cudaEventQuery without leaving "not ready" behind as the thread's last error.
  bool done() const;
  void synchronize() const;
  // Milliseconds from `start` to this event (both recorded, both with timing).
  float ms_since(const CudaEvent& start) const;
  cudaEvent_t get() const { return ev_; }

 private:
  cudaEvent_t ev_ = nullptr;
};

// A CUDA Graph of what one call of `enqueue` puts on a stream: captured once, then replayed with
// one launch. The captured kernels keep the arguments they were launched with, so whatever must
// change between replays has to live in device memory (see gpu::StepCounters in gpu_ops.h), and the
// buffers they use must not move while the graph lives.
class CapturedGraph {
 public:
  CapturedGraph() = default;
  ~CapturedGraph();
  CapturedGraph(const CapturedGraph&) = delete;
  CapturedGraph& operator=(const CapturedGraph&) = delete;
  bool ready() const { return exec_ != nullptr; }
  // Captures `enqueue` (nothing runs); on an error inside it the capture is ended and the stream
  // is usable again before the error propagates.
  void capture(cudaStream_t stream, const std::function<void()>& enqueue);
  void launch(cudaStream_t stream) const;

 private:
  cudaGraphExec_t exec_ = nullptr;
};

}  // namespace barecnn
