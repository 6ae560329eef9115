// Streams, events, graphs, launches, errors and the device itself.
//
// Every stream runs its work when it is enqueued, on the calling thread (with the worker threads
// for a grid), so stream order holds and an event records the time its work finished. A stream
// being captured records launches, cuBLAS calls and async copies/memsets as graph nodes without
// running them; cudaGraphLaunch replays the nodes, each with the arguments frozen at capture.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "internal.h"

namespace barecnn_emu {

struct Node {
  std::string what;
  std::function<cudaError_t()> run;
};

struct Stream {
  unsigned flags = 0;
  bool capturing = false;
  bool invalidated = false;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  std::thread::id capturer;
  std::vector<Node> nodes;
};

struct Event {
  unsigned flags = 0;
  bool recorded = false;
  std::chrono::steady_clock::time_point at;
};

struct Graph {
  std::vector<Node> nodes;
};

struct GraphExec {
  std::vector<Node> nodes;
};

namespace {

struct Runtime {
  std::mutex mu;
  std::set<Stream*> streams;
  std::set<Event*> events;
  std::set<Graph*> graphs;
  std::set<GraphExec*> execs;
  std::map<const void*, int> max_dynamic_smem;  // kernel -> cudaFuncAttributeMaxDynamicSharedMemorySize
  cudaError_t sticky = cudaSuccess;
  std::map<int, std::string> detail;  // the latest detail per error code
  std::set<std::string> strings;      // what cudaGetErrorString returned (kept alive)
  int captures = 0;                   // streams capturing now
};

Runtime& rt() {
  static Runtime* r = new Runtime();
  return *r;
}

thread_local cudaError_t last_error = cudaSuccess;

const char* base_string(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInitializationError:
      return "initialization error";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer:
      return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection:
      return "invalid copy direction for memcpy";
    case cudaErrorInsufficientDriver:
      return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorInvalidDeviceFunction:
      return "invalid device function";
    case cudaErrorNoDevice:
      return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorNoKernelImageForDevice:
      return "no kernel image is available for execution on the device";
    case cudaErrorUnsupportedPtxVersion:
      return "the provided PTX was compiled with an unsupported toolchain.";
    case cudaErrorInvalidResourceHandle:
      return "invalid resource handle";
    case cudaErrorIllegalState:
      return "the operation cannot be performed in the present state";
    case cudaErrorNotReady:
      return "device not ready";
    case cudaErrorIllegalAddress:
      return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources:
      return "too many resources requested for launch";
    case cudaErrorAssert:
      return "device-side assert triggered";
    case cudaErrorIllegalInstruction:
      return "an illegal instruction was encountered";
    case cudaErrorMisalignedAddress:
      return "misaligned address";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure";
    case cudaErrorNotSupported:
      return "operation not supported";
    case cudaErrorStreamCaptureUnsupported:
      return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
      return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureUnmatched:
      return "capture was not initiated in this stream";
    case cudaErrorStreamCaptureUnjoined:
      return "capturing stream has unjoined work";
    case cudaErrorStreamCaptureImplicit:
      return "operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorUnknown:
      return "unknown error";
  }
  return "unrecognized error code";
}

// clang-format off
const char* error_name(cudaError_t e) {
  switch (e) {
#define NAME(x) \
  case x: return #x;
    NAME(cudaSuccess) NAME(cudaErrorInvalidValue) NAME(cudaErrorMemoryAllocation) NAME(cudaErrorInitializationError)
    NAME(cudaErrorInvalidConfiguration) NAME(cudaErrorInvalidDevicePointer) NAME(cudaErrorInvalidMemcpyDirection)
    NAME(cudaErrorInsufficientDriver) NAME(cudaErrorInvalidDeviceFunction) NAME(cudaErrorNoDevice)
    NAME(cudaErrorInvalidDevice) NAME(cudaErrorNoKernelImageForDevice) NAME(cudaErrorUnsupportedPtxVersion)
    NAME(cudaErrorInvalidResourceHandle) NAME(cudaErrorIllegalState) NAME(cudaErrorNotReady) NAME(cudaErrorIllegalAddress)
    NAME(cudaErrorLaunchOutOfResources) NAME(cudaErrorAssert) NAME(cudaErrorIllegalInstruction)
    NAME(cudaErrorMisalignedAddress) NAME(cudaErrorLaunchFailure) NAME(cudaErrorNotSupported)
    NAME(cudaErrorStreamCaptureUnsupported) NAME(cudaErrorStreamCaptureInvalidated)
    NAME(cudaErrorStreamCaptureUnmatched) NAME(cudaErrorStreamCaptureUnjoined) NAME(cudaErrorStreamCaptureImplicit)
    NAME(cudaErrorUnknown)
#undef NAME
  }
  return "cudaErrorUnrecognized";
}
// clang-format on

void set_detail(cudaError_t err, const std::string& detail) {
  Runtime& r = rt();
  std::lock_guard<std::mutex> lock(r.mu);
  r.detail[int(err)] = detail;
}

Stream* stream_of(cudaStream_t s) { return reinterpret_cast<Stream*>(s); }

// A capture on this thread that an unsafe call would break (ThreadLocal/Global mode).
Stream* capture_of_this_thread() {
  Runtime& r = rt();
  std::lock_guard<std::mutex> lock(r.mu);
  if (r.captures == 0) return nullptr;
  for (Stream* s : r.streams)
    if (s->capturing && (s->mode != cudaStreamCaptureModeRelaxed) &&
        (s->mode == cudaStreamCaptureModeGlobal || s->capturer == std::this_thread::get_id()))
      return s;
  return nullptr;
}

// Pointer arguments must be null or inside a live device block.
cudaError_t check_pointers(const LaunchRequest& req, const char* when) {
  for (const PointerArg& a : req.pointers) {
    if (a.ptr == nullptr || is_device_pointer(a.ptr)) continue;
    char addr[32];
    std::snprintf(addr, sizeof addr, "%p", a.ptr);
    return fault(cudaErrorIllegalAddress, std::string("kernel ") + req.name + when + ": argument " +
                                              std::to_string(a.index + 1) + " (" + addr + ") is " +
                                              describe_pointer(a.ptr));
  }
  return cudaSuccess;
}

cudaError_t check_config(LaunchRequest& req) {
  const std::string k = std::string("kernel ") + req.name + ": ";
  auto dims = [](uint3 v) {
    return "(" + std::to_string(v.x) + ", " + std::to_string(v.y) + ", " + std::to_string(v.z) + ")";
  };
  const uint3 g = req.grid, b = req.block;
  if (!g.x || !g.y || !g.z) return fail(cudaErrorInvalidConfiguration, k + "empty grid " + dims(g));
  if (!b.x || !b.y || !b.z) return fail(cudaErrorInvalidConfiguration, k + "empty block " + dims(b));
  if (b.x > kMaxBlockDim[0] || b.y > kMaxBlockDim[1] || b.z > kMaxBlockDim[2])
    return fail(cudaErrorInvalidConfiguration, k + "block " + dims(b) + " exceeds the limits (1024, 1024, 64)");
  if (uint64_t(b.x) * b.y * b.z > uint64_t(kMaxThreadsPerBlock))
    return fail(
        cudaErrorInvalidConfiguration,
        k + "block " + dims(b) + " has " + std::to_string(uint64_t(b.x) * b.y * b.z) + " threads (at most 1024)");
  if (g.x > kMaxGridDim[0] || g.y > kMaxGridDim[1] || g.z > kMaxGridDim[2])
    return fail(cudaErrorInvalidConfiguration, k + "grid " + dims(g) + " exceeds the limits (2^31 - 1, 65535, 65535)");
  size_t limit = kDefaultSmemPerBlock;
  req.smem_limit = kDefaultSmemPerBlock;  // static + dynamic, without an opt-in
  {
    Runtime& r = rt();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.max_dynamic_smem.find(req.func);
    if (it != r.max_dynamic_smem.end()) {
      limit = size_t(it->second);
      req.smem_limit = kMaxSmemPerBlockOptin;
    }
  }
  if (req.dynamic_smem > limit)
    return fail(cudaErrorInvalidValue,
                k + std::to_string(req.dynamic_smem) + " bytes of dynamic shared memory; " + std::to_string(limit) +
                    " allowed" +
                    (limit == kDefaultSmemPerBlock
                         ? " (more needs cudaFuncSetAttribute(MaxDynamicSharedMemorySize), up to 227 KiB)"
                         : ""));
  return cudaSuccess;
}

}  // namespace

cudaError_t fail(cudaError_t err, const std::string& detail) {
  set_detail(err, detail);
  last_error = err;
  return err;
}

cudaError_t fault(cudaError_t err, const std::string& detail) {
  set_detail(err, detail);
  Runtime& r = rt();
  std::lock_guard<std::mutex> lock(r.mu);
  if (r.sticky == cudaSuccess) r.sticky = err;
  last_error = r.sticky;
  return r.sticky;
}

cudaError_t sticky() {
  Runtime& r = rt();
  std::lock_guard<std::mutex> lock(r.mu);
  if (r.sticky != cudaSuccess) last_error = r.sticky;
  return r.sticky;
}

bool valid_stream(cudaStream_t s) {
  if (s == nullptr) return true;
  Runtime& r = rt();
  std::lock_guard<std::mutex> lock(r.mu);
  return r.streams.count(stream_of(s)) != 0;
}

bool capturing(cudaStream_t s) {
  if (s == nullptr) return false;
  Runtime& r = rt();
  std::lock_guard<std::mutex> lock(r.mu);
  return r.streams.count(stream_of(s)) && stream_of(s)->capturing;
}

void record(cudaStream_t s, const char* what, std::function<cudaError_t()> node) {
  Runtime& r = rt();
  std::lock_guard<std::mutex> lock(r.mu);
  stream_of(s)->nodes.push_back(Node{what, std::move(node)});
}

cudaError_t capture_forbids(const char* call) {
  Stream* s = capture_of_this_thread();
  if (!s) return cudaSuccess;
  {
    Runtime& r = rt();
    std::lock_guard<std::mutex> lock(r.mu);
    s->invalidated = true;
  }
  return fail(
      cudaErrorStreamCaptureUnsupported,
      std::string(call) + " while a stream is being captured (it would break the capture; the capture is now invalid)");
}

void submit_launch(LaunchRequest req) {
  if (sticky() != cudaSuccess) return;
  if (!valid_stream(req.stream)) {
    fail(cudaErrorInvalidResourceHandle, std::string("kernel ") + req.name + ": the stream is not a live stream");
    return;
  }
  if (check_config(req) != cudaSuccess) return;
  if (req.stream == nullptr && capture_of_this_thread()) {
    Stream* s = capture_of_this_thread();
    {
      Runtime& r = rt();
      std::lock_guard<std::mutex> lock(r.mu);
      s->invalidated = true;
    }
    fail(cudaErrorStreamCaptureImplicit,
         std::string("kernel ") + req.name + " launched on the legacy default stream while a stream is captured");
    return;
  }
  if (check_pointers(req, "") != cudaSuccess) return;
  if (capturing(req.stream)) {
    auto frozen = std::make_shared<LaunchRequest>(std::move(req));
    const std::string what = std::string("kernel ") + frozen->name;
    record(frozen->stream, what.c_str(), [frozen]() -> cudaError_t {
      if (cudaError_t e = check_pointers(*frozen, " (graph replay)")) return e;
      return run_grid(*frozen);
    });
    return;
  }
  run_grid(req);
}

}  // namespace barecnn_emu

using namespace barecnn_emu;

// ---- errors ------------------------------------------------------------------------------------
cudaError_t cudaGetLastError() {
  cudaError_t e = last_error;
  Runtime& r = rt();
  std::lock_guard<std::mutex> lock(r.mu);
  last_error = r.sticky;  // a sticky error stays
  return e != cudaSuccess ? e : r.sticky;
}

cudaError_t cudaPeekAtLastError() {
  cudaError_t e = last_error;
  return e != cudaSuccess ? e : sticky();
}

const char* cudaGetErrorName(cudaError_t err) { return error_name(err); }

const char* cudaGetErrorString(cudaError_t err) {
  Runtime& r = rt();
  std::lock_guard<std::mutex> lock(r.mu);
  auto it = r.detail.find(int(err));
  if (it == r.detail.end() || err == cudaSuccess) return base_string(err);
  std::string s = std::string(base_string(err)) + " [barecnn CUDA emulator: " + it->second + "]";
  return r.strings.insert(s).first->c_str();
}

// ---- the device --------------------------------------------------------------------------------
cudaError_t cudaRuntimeGetVersion(int* v) {
  if (v) *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  if (v) *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int* n) {
  if (n) *n = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* dev) {
  if (dev) *dev = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int dev) {
  if (dev != 0)
    return fail(cudaErrorInvalidDevice, "cudaSetDevice(" + std::to_string(dev) + "): the emulator has device 0 only");
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int dev) {
  if (dev != 0) return fail(cudaErrorInvalidDevice, "cudaGetDeviceProperties: device " + std::to_string(dev));
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "%s", BARECNN_EMU_DEVICE_NAME);
  p->totalGlobalMem = kTotalMemory;
  p->sharedMemPerBlock = kDefaultSmemPerBlock;
  p->regsPerBlock = 65536;
  p->warpSize = 32;
  p->maxThreadsPerBlock = kMaxThreadsPerBlock;
  for (int i = 0; i < 3; ++i) {
    p->maxThreadsDim[i] = int(kMaxBlockDim[i]);
    p->maxGridSize[i] = int(kMaxGridDim[i]);
  }
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = kSmCount;
  p->sharedMemPerBlockOptin = kMaxSmemPerBlockOptin;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int dev) {
  if (dev != 0) return fail(cudaErrorInvalidDevice, "cudaDeviceGetAttribute: device " + std::to_string(dev));
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock:
      *v = kMaxThreadsPerBlock;
      break;
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *v = int(kDefaultSmemPerBlock);
      break;
    case cudaDevAttrWarpSize:
      *v = 32;
      break;
    case cudaDevAttrClockRate:
      *v = 1000000;
      break;  // kHz: a nominal 1 GHz
    case cudaDevAttrMultiProcessorCount:
      *v = kSmCount;
      break;
    case cudaDevAttrMemoryClockRate:
      *v = 1000000;
      break;  // kHz
    case cudaDevAttrGlobalMemoryBusWidth:
      *v = 64;
      break;  // bits
    case cudaDevAttrComputeCapabilityMajor:
      *v = 9;
      break;
    case cudaDevAttrComputeCapabilityMinor:
      *v = 0;
      break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *v = int(kMaxSmemPerBlockOptin);
      break;
    default:
      return fail(cudaErrorInvalidValue, "cudaDeviceGetAttribute: attribute " + std::to_string(int(attr)));
  }
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
  if (cudaError_t e = capture_forbids("cudaDeviceSynchronize")) return e;
  return sticky();
}

cudaError_t cudaDeviceReset() {
  Runtime& r = rt();
  std::lock_guard<std::mutex> lock(r.mu);
  r.sticky = cudaSuccess;
  last_error = cudaSuccess;
  return cudaSuccess;
}

cudaError_t barecnn_emu_func_set_attribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize)
    return fail(cudaErrorInvalidValue, "cudaFuncSetAttribute: attribute " + std::to_string(int(attr)));
  if (value < 0 || size_t(value) > kMaxSmemPerBlockOptin)
    return fail(cudaErrorInvalidValue, "cudaFuncSetAttribute: " + std::to_string(value) +
                                           " bytes of dynamic shared memory (at most 227 KiB on sm_90)");
  Runtime& r = rt();
  std::lock_guard<std::mutex> lock(r.mu);
  r.max_dynamic_smem[func] = value;
  return cudaSuccess;
}

cudaError_t barecnn_emu_occupancy(int* blocks, const void*, int block_size, size_t smem) {
  if (block_size <= 0 || block_size > kMaxThreadsPerBlock)
    return fail(cudaErrorInvalidValue,
                "cudaOccupancyMaxActiveBlocksPerMultiprocessor: block size " + std::to_string(block_size));
  int by_threads = 2048 / block_size;
  int by_smem = smem ? int((228 * 1024) / smem) : 32;
  *blocks = std::max(0, std::min({by_threads, by_smem, 32}));
  return cudaSuccess;
}

// ---- streams and events: handles the runtime keeps track of ------------------------------------
namespace {
template <typename T>
cudaError_t create_handle(std::set<T*> Runtime::*live, T** out, unsigned flags) {
  T* h = new T();
  h->flags = flags;
  Runtime& r = rt();
  std::lock_guard<std::mutex> lock(r.mu);
  (r.*live).insert(h);
  *out = h;
  return cudaSuccess;
}

template <typename T>
cudaError_t destroy_handle(std::set<T*> Runtime::*live, T* h, const char* call,
                           cudaError_t not_live = cudaErrorInvalidResourceHandle) {
  Runtime& r = rt();
  std::unique_lock<std::mutex> lock(r.mu);
  auto it = (r.*live).find(h);
  if (it == (r.*live).end()) {
    lock.unlock();
    return fail(not_live, std::string(call) + ": not a live handle");
  }
  if constexpr (std::is_same<T, Stream>::value) {
    if (h->capturing) --r.captures;
  }
  (r.*live).erase(it);
  delete h;
  return cudaSuccess;
}
}  // namespace

cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags) {
  if (cudaError_t e = sticky()) return e;
  return create_handle(&Runtime::streams, s, flags);
}

cudaError_t cudaStreamDestroy(cudaStream_t s) {
  return destroy_handle(&Runtime::streams, stream_of(s), "cudaStreamDestroy");
}

cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (!valid_stream(s)) return fail(cudaErrorInvalidResourceHandle, "cudaStreamSynchronize: not a live stream");
  if (capturing(s) || capture_of_this_thread()) {
    if (cudaError_t e = capture_forbids("cudaStreamSynchronize")) return e;
  }
  return sticky();
}

cudaError_t cudaStreamQuery(cudaStream_t s) {
  if (!valid_stream(s)) return fail(cudaErrorInvalidResourceHandle, "cudaStreamQuery: not a live stream");
  return sticky();
}

// ---- events ------------------------------------------------------------------------------------
cudaError_t cudaEventCreate(cudaEvent_t* e) { return cudaEventCreateWithFlags(e, cudaEventDefault); }

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags) {
  return create_handle(&Runtime::events, e, flags);
}

cudaError_t cudaEventDestroy(cudaEvent_t e) { return destroy_handle(&Runtime::events, e, "cudaEventDestroy"); }

static bool live_event(cudaEvent_t e) {
  Runtime& r = rt();
  std::lock_guard<std::mutex> lock(r.mu);
  return r.events.count(e) != 0;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  if (cudaError_t err = sticky()) return err;
  if (!live_event(e)) return fail(cudaErrorInvalidResourceHandle, "cudaEventRecord: not a live event");
  if (!valid_stream(s)) return fail(cudaErrorInvalidResourceHandle, "cudaEventRecord: not a live stream");
  if (capturing(s)) {
    record(s, "cudaEventRecord", [e]() -> cudaError_t {
      e->recorded = true;
      e->at = std::chrono::steady_clock::now();
      return cudaSuccess;
    });
    return cudaSuccess;
  }
  e->recorded = true;
  e->at = std::chrono::steady_clock::now();
  return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t e) {
  if (!live_event(e)) return fail(cudaErrorInvalidResourceHandle, "cudaEventQuery: not a live event");
  return sticky();
}

cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  if (!live_event(e)) return fail(cudaErrorInvalidResourceHandle, "cudaEventSynchronize: not a live event");
  if (cudaError_t err = capture_forbids("cudaEventSynchronize")) return err;
  return sticky();
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t stop) {
  if (cudaError_t err = sticky()) return err;
  if (!live_event(start) || !live_event(stop))
    return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: not a live event");
  if ((start->flags | stop->flags) & cudaEventDisableTiming)
    return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: an event created with cudaEventDisableTiming");
  if (!start->recorded || !stop->recorded)
    return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: an event that was never recorded");
  *ms = std::chrono::duration<float, std::milli>(stop->at - start->at).count();
  return cudaSuccess;
}

// ---- capture and graphs ------------------------------------------------------------------------
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
  if (cudaError_t e = sticky()) return e;
  if (s == nullptr)
    return fail(cudaErrorStreamCaptureUnsupported, "cudaStreamBeginCapture on the legacy default stream");
  if (!valid_stream(s)) return fail(cudaErrorInvalidResourceHandle, "cudaStreamBeginCapture: not a live stream");
  Runtime& r = rt();
  std::unique_lock<std::mutex> lock(r.mu);
  Stream* st = stream_of(s);
  if (st->capturing) {
    lock.unlock();
    return fail(cudaErrorIllegalState, "cudaStreamBeginCapture: the stream is already being captured");
  }
  st->capturing = true;
  st->invalidated = false;
  st->mode = mode;
  st->capturer = std::this_thread::get_id();
  st->nodes.clear();
  ++r.captures;
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph) {
  if (graph) *graph = nullptr;
  if (!valid_stream(s) || s == nullptr)
    return fail(cudaErrorInvalidResourceHandle, "cudaStreamEndCapture: not a live stream");
  Runtime& r = rt();
  std::unique_lock<std::mutex> lock(r.mu);
  Stream* st = stream_of(s);
  if (!st->capturing) {
    lock.unlock();
    return fail(cudaErrorStreamCaptureUnmatched, "cudaStreamEndCapture on a stream that is not being captured");
  }
  if (st->capturer != std::this_thread::get_id() && st->mode != cudaStreamCaptureModeRelaxed) {
    lock.unlock();
    return fail(cudaErrorStreamCaptureUnmatched, "cudaStreamEndCapture from another thread than the one that began it");
  }
  st->capturing = false;
  --r.captures;
  std::vector<Node> nodes = std::move(st->nodes);
  st->nodes.clear();
  if (st->invalidated) {
    lock.unlock();
    return fail(cudaErrorStreamCaptureInvalidated, "cudaStreamEndCapture: an unsupported call broke the capture");
  }
  Graph* g = new Graph();
  g->nodes = std::move(nodes);
  r.graphs.insert(g);
  *graph = g;
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  Runtime& r = rt();
  std::lock_guard<std::mutex> lock(r.mu);
  if (!r.graphs.count(graph)) {
    last_error = cudaErrorInvalidValue;
    return cudaErrorInvalidValue;
  }
  GraphExec* x = new GraphExec();
  x->nodes = graph->nodes;  // the nodes share their frozen arguments with the graph
  r.execs.insert(x);
  *exec = x;
  return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
  if (cudaError_t e = sticky()) return e;
  {
    Runtime& r = rt();
    std::lock_guard<std::mutex> lock(r.mu);
    if (!r.execs.count(exec)) {
      last_error = cudaErrorInvalidResourceHandle;
      r.detail[int(cudaErrorInvalidResourceHandle)] = "cudaGraphLaunch: not a live graph exec";
      return cudaErrorInvalidResourceHandle;
    }
  }
  if (!valid_stream(s)) return fail(cudaErrorInvalidResourceHandle, "cudaGraphLaunch: not a live stream");
  auto replay = [exec]() -> cudaError_t {
    for (const Node& n : exec->nodes)
      if (cudaError_t e = n.run()) return e;
    return cudaSuccess;
  };
  if (capturing(s)) {
    record(s, "graph", replay);
    return cudaSuccess;
  }
  return replay();
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  return destroy_handle(&Runtime::graphs, graph, "cudaGraphDestroy", cudaErrorInvalidValue);
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  return destroy_handle(&Runtime::execs, exec, "cudaGraphExecDestroy", cudaErrorInvalidValue);
}
