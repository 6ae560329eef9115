// DeviceBuffer<T>: move-only owner of device memory, with explicit copies to and from the host.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>
#include <vector>

#include "barecnn/error.h"

namespace barecnn {

// Allocates with cudaMalloc; on failure throws an Error that says how many bytes were asked for
// and how many are free/total on the device.
void* device_malloc(size_t bytes, const char* what);
void device_free(void* p) noexcept;

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
  void copy_from_host(const std::vector<T>& v) { resize(v.size()); copy_from_host(v.data(), v.size()); }
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
