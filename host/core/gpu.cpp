#include "barecnn/gpu.h"

#include "barecnn/cublas_lib.h"
#include "barecnn/cuda_check.h"
#include "barecnn/error.h"

namespace barecnn {

cudaError_t launch_probe(int* dout);  // kernels/probe.cu

const char* compiled_cuda_archs() { return BARECNN_CUDA_ARCHS; }

std::string version_str(int v) { return fmt(v / 1000, ".", (v % 1000) / 10); }

static GpuStatus probe() {
  GpuStatus s;
  cudaRuntimeGetVersion(&s.runtime_version);
  cudaDriverGetVersion(&s.driver_version);
  cudaError_t err = cudaGetDeviceCount(&s.device_count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    if (err == cudaErrorInsufficientDriver && s.driver_version == 0)
      s.reason = "no NVIDIA driver is loaded, cudaGetDeviceCount returned cudaErrorInsufficientDriver";
    else if (err == cudaErrorInsufficientDriver)
      s.reason = fmt("the NVIDIA driver supports CUDA ", version_str(s.driver_version), " but this build needs CUDA ",
                     version_str(s.runtime_version), "; update the driver");
    else if (err == cudaErrorNoDevice)
      s.reason = "the driver is loaded but sees no GPU, cudaGetDeviceCount returned cudaErrorNoDevice";
    else
      s.reason = fmt("cudaGetDeviceCount failed: ", cudaGetErrorName(err), ", ", cudaGetErrorString(err));
    s.device_count = 0;
    return s;
  }
  if (s.device_count == 0) {
    s.reason = "the driver sees no GPU";
    return s;
  }
  cudaDeviceProp p{};
  if ((err = cudaGetDeviceProperties(&p, 0)) != cudaSuccess) {
    s.reason = fmt("cudaGetDeviceProperties failed: ", cudaGetErrorString(err));
    return s;
  }
  s.name = p.name;
  s.cc_major = p.major;
  s.cc_minor = p.minor;
  s.total_mem = p.totalGlobalMem;
  s.sm_count = p.multiProcessorCount;
  int* d = nullptr;
  if ((err = cudaMalloc(&d, sizeof(int))) != cudaSuccess) {
    cudaGetLastError();
    s.reason = fmt("cannot allocate on ", s.name, ": ", cudaGetErrorString(err));
    return s;
  }
  err = launch_probe(d);
  int v = 0;
  if (err == cudaSuccess) err = cudaMemcpy(&v, d, sizeof(int), cudaMemcpyDeviceToHost);
  cudaFree(d);
  if (err == cudaErrorNoKernelImageForDevice || err == cudaErrorInvalidDeviceFunction) {
    cudaGetLastError();
    s.reason = fmt("built for sm_", BARECNN_CUDA_ARCHS, "; this GPU (", s.name, ") is sm_", p.major, p.minor,
                   ": rebuild with -DCMAKE_CUDA_ARCHITECTURES=", p.major, p.minor);
    return s;
  }
  if (err != cudaSuccess || v != 42) {
    cudaGetLastError();
    s.reason = fmt("a test kernel failed on ", s.name, ": ", cudaGetErrorString(err));
    return s;
  }
  s.ok = true;
#ifdef BARECNN_EMU
  s.emulated = true;
#endif
  return s;
}

const GpuStatus& gpu_status() {
  static const GpuStatus s = probe();
  return s;
}

bool gpu_available() { return gpu_status().ok; }

GpuContext::GpuContext() {
  // A blocking stream: it orders itself with the legacy default stream, on which DeviceBuffer's
  // plain cudaMemcpy calls run. A pageable host-to-device cudaMemcpy may return before its DMA
  // lands, and a device-to-host one must see our kernels' results; with a non-blocking stream
  // both would race with the kernels.
  CUDA_CHECK(cudaStreamCreate(&stream_));
  try {
    CUBLAS_CHECK(cublas::create(&cublas_));
    CUBLAS_CHECK(cublas::set_stream(cublas_, stream_));
    // Full FP32: no TF32 tensor-core shortcuts, so results match the reference.
    CUBLAS_CHECK(cublas::set_math_mode(cublas_, CUBLAS_DEFAULT_MATH));
    // Our own cuBLAS workspace (set after the stream: cublasSetStream resets it), so the eager
    // and the CUDA-Graph-captured steps see the same workspace and pick the same GEMM algorithms,
    // and a capture allocates nothing. 4 MiB is cuBLAS's recommendation below Hopper; it asks 32
    // for Hopper's large GEMMs, but our dense layers are small and the bytes count against the
    // run's peak memory.
    cublas_workspace_.resize(kCublasWorkspaceBytes, "cuBLAS workspace");
    CUBLAS_CHECK(cublas::set_workspace(cublas_, cublas_workspace_.data(), cublas_workspace_.bytes()));
  } catch (...) {
    if (cublas_) cublas::destroy(cublas_);
    cudaStreamDestroy(stream_);
    throw;
  }
}

GpuContext::~GpuContext() {
  if (cublas_) cublas::destroy(cublas_);
  if (stream_) CUDA_CHECK_NOTHROW(cudaStreamDestroy(stream_));
}

void GpuContext::sync() const { CUDA_CHECK(cudaStreamSynchronize(stream_)); }

CapturedGraph::~CapturedGraph() {
  if (exec_) CUDA_CHECK_NOTHROW(cudaGraphExecDestroy(exec_));
}

void CapturedGraph::capture(cudaStream_t stream, const std::function<void()>& enqueue) {
  BARECNN_ASSERT(exec_ == nullptr, "CapturedGraph: captured twice");
  cudaGraph_t graph = nullptr;
  // ThreadLocal: only this thread's unsafe calls (a cudaMalloc, a synchronizing copy) break it.
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  try {
    enqueue();
  } catch (...) {
    if (cudaStreamEndCapture(stream, &graph) == cudaSuccess && graph) cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    throw;
  }
  CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  cudaError_t e = cudaGraphInstantiate(&exec_, graph, 0);
  cudaGraphDestroy(graph);
  if (e != cudaSuccess) exec_ = nullptr;
  CUDA_CHECK(e);
}

void CapturedGraph::launch(cudaStream_t stream) const {
  BARECNN_ASSERT(exec_ != nullptr, "CapturedGraph: launched before capture");
  CUDA_CHECK(cudaGraphLaunch(exec_, stream));
}

CudaEvent::~CudaEvent() {
  if (ev_) CUDA_CHECK_NOTHROW(cudaEventDestroy(ev_));
}

void CudaEvent::create(bool timing) {
  BARECNN_ASSERT(ev_ == nullptr, "CudaEvent: created twice");
  CUDA_CHECK(cudaEventCreateWithFlags(&ev_, timing ? cudaEventDefault : cudaEventDisableTiming));
}

void CudaEvent::record(cudaStream_t stream) { CUDA_CHECK(cudaEventRecord(ev_, stream)); }

bool CudaEvent::done() const {
  cudaError_t q = cudaEventQuery(ev_);
  if (q == cudaErrorNotReady) {
    (void)cudaGetLastError();  // "not ready" is also recorded as the last error: clear it, or the
                               // next launch check would report it as its own failure
    return false;
  }
  CUDA_CHECK(q);
  return true;
}

void CudaEvent::synchronize() const { CUDA_CHECK(cudaEventSynchronize(ev_)); }

float CudaEvent::ms_since(const CudaEvent& start) const {
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start.ev_, ev_));
  return ms;
}

}  // namespace barecnn
