// Memory: device blocks (host heap memory, tracked), pinned host memory, copies and memsets.
//
// A new device block is filled with 0xFF bytes: as float that is a NaN, so a kernel or copy that
// reads memory nobody wrote produces NaN (the initcheck equivalent). Each block is its own heap
// allocation of exactly the size asked for, so AddressSanitizer catches a read or write past its
// end. A kernel's pointer arguments must point into a live block (threads.cpp asks is_device_pointer).
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "internal.h"

namespace barecnn_emu {
namespace {

struct Heap {
  std::mutex mu;
  std::map<uintptr_t, size_t> device;              // begin -> bytes
  std::map<uintptr_t, size_t> pinned;              // begin -> bytes
  std::deque<std::pair<uintptr_t, size_t>> freed;  // recently freed device blocks, to name them
  size_t used = 0;
};

Heap& heap() {
  static Heap* h = new Heap();  // outlives static destructors that free buffers
  return *h;
}

// The block containing p (begin <= p < end), or end().
std::map<uintptr_t, size_t>::const_iterator find_in(const std::map<uintptr_t, size_t>& m, uintptr_t p) {
  auto it = m.upper_bound(p);
  if (it == m.begin()) return m.end();
  --it;
  if (p < it->first + it->second || (it->second == 0 && p == it->first)) return it;
  return m.end();
}

std::string bytes_str(size_t b) { return std::to_string(b) + " bytes"; }

std::string kind_name(cudaMemcpyKind k) {
  switch (k) {
    case cudaMemcpyHostToHost:
      return "cudaMemcpyHostToHost";
    case cudaMemcpyHostToDevice:
      return "cudaMemcpyHostToDevice";
    case cudaMemcpyDeviceToHost:
      return "cudaMemcpyDeviceToHost";
    case cudaMemcpyDeviceToDevice:
      return "cudaMemcpyDeviceToDevice";
    case cudaMemcpyDefault:
      return "cudaMemcpyDefault";
  }
  return "cudaMemcpyKind " + std::to_string(int(k));
}

// Checks a copy against its kind; the error (with what is wrong) or cudaSuccess.
cudaError_t check_copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, const char* call) {
  if (bytes == 0) return cudaSuccess;
  if (!dst || !src) return fail(cudaErrorInvalidValue, std::string(call) + ": a null pointer");
  std::string why_dst, why_src;
  const Where d = where(dst, bytes, &why_dst), s = where(src, bytes, &why_src);
  if (!why_dst.empty()) return fail(cudaErrorInvalidValue, std::string(call) + ": the destination " + why_dst);
  if (!why_src.empty()) return fail(cudaErrorInvalidValue, std::string(call) + ": the source " + why_src);
  bool want_dst_dev = false, want_src_dev = false;
  switch (kind) {
    case cudaMemcpyHostToHost:
      break;
    case cudaMemcpyHostToDevice:
      want_dst_dev = true;
      break;
    case cudaMemcpyDeviceToHost:
      want_src_dev = true;
      break;
    case cudaMemcpyDeviceToDevice:
      want_dst_dev = want_src_dev = true;
      break;
    case cudaMemcpyDefault:
      return cudaSuccess;
    default:
      return fail(cudaErrorInvalidMemcpyDirection, std::string(call) + ": " + kind_name(kind));
  }
  if ((d == Where::kDevice) != want_dst_dev)
    return fail(cudaErrorInvalidMemcpyDirection, std::string(call) + " with " + kind_name(kind) +
                                                     ": the destination is " +
                                                     (d == Where::kDevice ? "device memory" : describe_pointer(dst)));
  if ((s == Where::kDevice) != want_src_dev)
    return fail(cudaErrorInvalidMemcpyDirection, std::string(call) + " with " + kind_name(kind) + ": the source is " +
                                                     (s == Where::kDevice ? "device memory" : describe_pointer(src)));
  return cudaSuccess;
}

cudaError_t check_memset(void* p, size_t bytes, const char* call) {
  if (bytes == 0) return cudaSuccess;
  std::string why;
  if (where(p, bytes, &why) != Where::kDevice)
    return fail(
        cudaErrorInvalidValue,
        std::string(call) + ": " + (why.empty() ? "the pointer is " + describe_pointer(p) : "the range " + why));
  return cudaSuccess;
}

}  // namespace

Where where(const void* p, size_t bytes, std::string* why) {
  Heap& h = heap();
  std::lock_guard<std::mutex> lock(h.mu);
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = find_in(h.device, a);
  if (it != h.device.end()) {
    if (a + bytes > it->first + it->second) {
      if (why)
        *why = "runs " + bytes_str(a + bytes - (it->first + it->second)) + " past the end of its device buffer (" +
               bytes_str(it->second) + ")";
      return Where::kDevice;
    }
    return Where::kDevice;
  }
  if (find_in(h.pinned, a) != h.pinned.end()) return Where::kPinned;
  return Where::kHost;
}

bool is_device_pointer(const void* p) {
  Heap& h = heap();
  std::lock_guard<std::mutex> lock(h.mu);
  return find_in(h.device, reinterpret_cast<uintptr_t>(p)) != h.device.end();
}

std::string describe_pointer(const void* p) {
  Heap& h = heap();
  std::lock_guard<std::mutex> lock(h.mu);
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (find_in(h.device, a) != h.device.end()) return "device memory";
  if (find_in(h.pinned, a) != h.pinned.end()) return "pinned host memory (cudaMallocHost), not device memory";
  for (auto it = h.freed.rbegin(); it != h.freed.rend(); ++it)
    if (a >= it->first && a < it->first + std::max<size_t>(it->second, 1))
      return "inside a freed device buffer (" + bytes_str(it->second) + ", cudaFree'd)";
  return "a host pointer, not device memory";
}

}  // namespace barecnn_emu

using namespace barecnn_emu;

cudaError_t cudaMalloc(void** p, size_t bytes) {
  if (!p) return fail(cudaErrorInvalidValue, "cudaMalloc: null result pointer");
  *p = nullptr;
  if (cudaError_t e = sticky()) return e;
  if (cudaError_t e = capture_forbids("cudaMalloc")) return e;
  if (bytes == 0) return cudaSuccess;
  Heap& h = heap();
  {
    std::lock_guard<std::mutex> lock(h.mu);
    if (bytes > kTotalMemory - h.used)
      return fail(cudaErrorMemoryAllocation,
                  "cudaMalloc of " + std::to_string(bytes) + " bytes: " + std::to_string(kTotalMemory - h.used) +
                      " of the emulated " + std::to_string(kTotalMemory >> 20) + " MiB are free");
  }
  void* m = nullptr;
  if (posix_memalign(&m, 256, bytes) != 0 || !m)
    return fail(cudaErrorMemoryAllocation, "cudaMalloc of " + std::to_string(bytes) + " bytes: out of host memory");
  std::memset(m, 0xFF, bytes);  // NaN: device memory starts undefined
  std::lock_guard<std::mutex> lock(h.mu);
  h.device[reinterpret_cast<uintptr_t>(m)] = bytes;
  h.used += bytes;
  *p = m;
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  if (cudaError_t e = capture_forbids("cudaFree")) return e;
  Heap& h = heap();
  {
    std::lock_guard<std::mutex> lock(h.mu);
    auto it = h.device.find(reinterpret_cast<uintptr_t>(p));
    if (it == h.device.end()) {
      // not the start of a live block
    } else {
      h.used -= it->second;
      h.freed.emplace_back(it->first, it->second);
      if (h.freed.size() > 4096) h.freed.pop_front();
      h.device.erase(it);
      std::free(p);
      return cudaSuccess;
    }
  }
  return fail(cudaErrorInvalidValue, "cudaFree: the pointer is " + describe_pointer(p) +
                                         (is_device_pointer(p) ? " but not the start of a cudaMalloc block" : ""));
}

cudaError_t cudaMallocHost(void** p, size_t bytes) {
  if (!p) return fail(cudaErrorInvalidValue, "cudaMallocHost: null result pointer");
  *p = nullptr;
  if (cudaError_t e = capture_forbids("cudaMallocHost")) return e;
  void* m = nullptr;
  if (posix_memalign(&m, 256, bytes ? bytes : 1) != 0 || !m)
    return fail(cudaErrorMemoryAllocation, "cudaMallocHost of " + std::to_string(bytes) + " bytes");
  Heap& h = heap();
  std::lock_guard<std::mutex> lock(h.mu);
  h.pinned[reinterpret_cast<uintptr_t>(m)] = bytes;
  *p = m;
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* p) {
  if (!p) return cudaSuccess;
  Heap& h = heap();
  {
    std::lock_guard<std::mutex> lock(h.mu);
    auto it = h.pinned.find(reinterpret_cast<uintptr_t>(p));
    if (it != h.pinned.end()) {
      h.pinned.erase(it);
      std::free(p);
      return cudaSuccess;
    }
  }
  return fail(cudaErrorInvalidValue,
              "cudaFreeHost: the pointer is " + describe_pointer(p) + ", not the start of a cudaMallocHost block");
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  if (cudaError_t e = sticky()) return e;
  Heap& h = heap();
  std::lock_guard<std::mutex> lock(h.mu);
  if (free_bytes) *free_bytes = kTotalMemory - h.used;
  if (total_bytes) *total_bytes = kTotalMemory;
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (cudaError_t e = sticky()) return e;
  if (cudaError_t e = capture_forbids("cudaMemcpy")) return e;
  if (cudaError_t e = check_copy(dst, src, bytes, kind, "cudaMemcpy")) return e;
  if (bytes) std::memcpy(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
  if (cudaError_t e = sticky()) return e;
  if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle, "cudaMemcpyAsync: not a live stream");
  if (cudaError_t e = check_copy(dst, src, bytes, kind, "cudaMemcpyAsync")) return e;
  if (capturing(stream)) {
    record(stream, "cudaMemcpyAsync", [dst, src, bytes, kind]() -> cudaError_t {
      if (cudaError_t e = check_copy(dst, src, bytes, kind, "cudaMemcpyAsync (graph replay)")) return e;
      if (bytes) std::memcpy(dst, src, bytes);
      return cudaSuccess;
    });
    return cudaSuccess;
  }
  if (bytes) std::memcpy(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  if (cudaError_t e = sticky()) return e;
  if (cudaError_t e = capture_forbids("cudaMemset")) return e;
  if (cudaError_t e = check_memset(p, bytes, "cudaMemset")) return e;
  if (bytes) std::memset(p, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream) {
  if (cudaError_t e = sticky()) return e;
  if (!valid_stream(stream)) return fail(cudaErrorInvalidResourceHandle, "cudaMemsetAsync: not a live stream");
  if (cudaError_t e = check_memset(p, bytes, "cudaMemsetAsync")) return e;
  if (capturing(stream)) {
    record(stream, "cudaMemsetAsync", [p, value, bytes]() -> cudaError_t {
      if (cudaError_t e = check_memset(p, bytes, "cudaMemsetAsync (graph replay)")) return e;
      if (bytes) std::memset(p, value, bytes);
      return cudaSuccess;
    });
    return cudaSuccess;
  }
  if (bytes) std::memset(p, value, bytes);
  return cudaSuccess;
}
