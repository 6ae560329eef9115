// What the emulator's parts share: errors, the device's limits, memory lookups, the grid runner.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <functional>
#include <string>

namespace barecnn_emu {

// ---- the device: what an sm_90 card allows, and our small stand-in's size --------------------
constexpr int kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlockDim[3] = {1024, 1024, 64};
constexpr unsigned long long kMaxGridDim[3] = {2147483647ULL, 65535ULL, 65535ULL};
constexpr size_t kDefaultSmemPerBlock = 48 * 1024;
constexpr size_t kMaxSmemPerBlockOptin = 227 * 1024;
constexpr int kSmCount = 2;
constexpr size_t kTotalMemory = size_t(2) << 30;

// ---- errors ------------------------------------------------------------------------------------
// A non-sticky error (a bad launch configuration, a bad argument): returned by the call that made
// it, and by the next cudaGetLastError. `detail` is appended by cudaGetErrorString.
cudaError_t fail(cudaError_t err, const std::string& detail);
// A fault inside a kernel (an illegal address, barrier divergence): sticky, as on a real device;
// every later call returns it until cudaDeviceReset.
cudaError_t fault(cudaError_t err, const std::string& detail);
// The sticky error, or cudaSuccess.
cudaError_t sticky();
// Whether `s` is being captured; `record` queues `node` (run at cudaGraphLaunch) when it is.
bool capturing(cudaStream_t s);
void record(cudaStream_t s, const char* what, std::function<cudaError_t()> node);
// A call that is not allowed while this thread captures (cudaMalloc, a synchronous copy): returns
// cudaErrorStreamCaptureUnsupported and invalidates the capture, or cudaSuccess.
cudaError_t capture_forbids(const char* call);
bool valid_stream(cudaStream_t s);

// ---- memory ------------------------------------------------------------------------------------
enum class Where { kHost, kDevice, kPinned };
// Where [p, p + bytes) lies; kDevice only when it lies wholly inside one live cudaMalloc block.
// `why` says what is wrong when part of it is device memory but the range is not inside a block.
Where where(const void* p, size_t bytes, std::string* why = nullptr);
// Names a pointer that is not inside a live device block: "a host pointer", "a freed device
// buffer (... bytes)", ...
std::string describe_pointer(const void* p);
bool is_device_pointer(const void* p);

// ---- the grid runner ---------------------------------------------------------------------------
struct Grid;
// Runs the grid now, on the worker threads; returns cudaSuccess or the fault it raised.
cudaError_t run_grid(const LaunchRequest& req);
const char* schedule_name();

}  // namespace barecnn_emu
