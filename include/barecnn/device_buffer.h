// DeviceBuffer<T>: move-only owner of device memory, with explicit copies to and from the host.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "barecnn/cuda_check.h"
#include "barecnn/error.h"

namespace barecnn {

// Allocates with cudaMalloc; on failure throws an Error that says how many bytes were asked for
// and how many are free/total on the device.
void* device_malloc(size_t bytes, const char* what);
void device_free(void* p) noexcept;

// Device memory allocated through device_malloc (so through every DeviceBuffer and Tensor): the
// bytes held now and the most held at once since the start or the last reset. barecnn's
// equivalent of torch.cuda.memory_allocated() / torch.cuda.max_memory_allocated(). Not counted:
// the CUDA context, what cuBLAS and Thrust allocate on their own (the 4 MiB workspace GpuContext
// gives cuBLAS is a DeviceBuffer, so it is counted), and anything else behind the library's back.
struct DeviceMemoryStats {
  size_t current = 0;
  size_t peak = 0;
};
DeviceMemoryStats device_memory_stats();
// Starts a new high-water mark at the bytes held now (torch.cuda.reset_peak_memory_stats()).
void reset_device_memory_peak();

// The bookkeeping behind the stats, a class of its own so that it is tested without a GPU on
// made-up pointers. cudaFree is not told the size, so each live pointer's size is kept in a map;
// one mutex guards the map and both counters (an allocation costs far more than the lock).
class DeviceMemoryCounter {
 public:
  void on_alloc(const void* p, size_t bytes);
  // A pointer it never saw (or null, or one already freed) changes nothing.
  void on_free(const void* p);
  DeviceMemoryStats stats() const;
  void reset_peak();

 private:
  mutable std::mutex mu_;
  std::unordered_map<const void*, size_t> sizes_;
  size_t current_ = 0, peak_ = 0;
};

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n, const char* what = "buffer") { resize(n, what); }
  ~DeviceBuffer() { device_free(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      device_free(ptr_);
      ptr_ = std::exchange(o.ptr_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }

  // Reallocates only when the size changes; contents are not kept.
  void resize(size_t n, const char* what = "buffer") {
    if (n == n_) return;
    device_free(ptr_);
    ptr_ = nullptr;
    n_ = 0;
    if (n) ptr_ = static_cast<T*>(device_malloc(n * sizeof(T), what));
    n_ = n;
  }
  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }
  bool empty() const { return n_ == 0; }

  void copy_from_host(const T* src, size_t n) {
    BARECNN_ASSERT(n <= n_, "copy of ", n, " elements into a buffer of ", n_);
    if (n) CUDA_CHECK(cudaMemcpy(ptr_, src, n * sizeof(T), cudaMemcpyHostToDevice));
  }
  void copy_from_host(const std::vector<T>& v) {
    resize(v.size());
    copy_from_host(v.data(), v.size());
  }
  void copy_to_host(T* dst, size_t n) const {
    BARECNN_ASSERT(n <= n_, "copy of ", n, " elements out of a buffer of ", n_);
    if (n) CUDA_CHECK(cudaMemcpy(dst, ptr_, n * sizeof(T), cudaMemcpyDeviceToHost));
  }
  std::vector<T> to_host() const {
    std::vector<T> v(n_);
    copy_to_host(v.data(), n_);
    return v;
  }
  void memset_zero(cudaStream_t stream = 0) {
    if (n_) CUDA_CHECK(cudaMemsetAsync(ptr_, 0, n_ * sizeof(T), stream));
  }

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

}  // namespace barecnn
