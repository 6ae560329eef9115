// Tensor: NCHW storage on the CPU or on the GPU, with its shape.
//
// barecnn's tensors are float32 (`Tensor`). The same template in double (`TensorD`, CPU only)
// carries the gradient checks, and in int32 the max-pool argmax masks and the labels.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <new>
#include <string>
#include <vector>

#include "barecnn/device_buffer.h"
#include "barecnn/error.h"
#include "barecnn/shape.h"

namespace barecnn {

enum class Device { CPU, CUDA };
inline const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

// Host storage aligned to 64 bytes (a cache line; host/cpu/'s widest loads): malloc's 16 put half
// of the 32-byte loads of a dense layer's GEMM across two cache lines, each then costing two (a
// 6272 -> 128 forward on one thread of a Zen 5: 640 us aligned, 815 us 16 bytes off).
template <typename T>
struct HostAllocator {
  using value_type = T;
  HostAllocator() = default;
  template <class U>
  HostAllocator(const HostAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <class U>
  bool operator==(const HostAllocator<U>&) const {
    return true;
  }
  template <class U>
  bool operator!=(const HostAllocator<U>&) const {
    return false;
  }
};

template <typename T>
class BasicTensor {
 public:
  BasicTensor() = default;
  BasicTensor(Dims dims, Device dev) { reset(std::move(dims), dev); }

  // Reshapes and (re)allocates when the element count or device changes; contents undefined.
  void reset(Dims dims, Device dev) {
    dims_ = std::move(dims);
    dev_ = dev;
    size_t n = dims_numel(dims_);
    if (dev_ == Device::CPU) {
      dbuf_ = DeviceBuffer<T>();
      host_.resize(n);
    } else {
      host_.clear();
      host_.shrink_to_fit();
      dbuf_.resize(n, "tensor");
    }
  }

  Device device() const { return dev_; }
  const Dims& dims() const { return dims_; }
  int dim(int i) const { return dims_.at(i); }
  int ndim() const { return int(dims_.size()); }
  size_t numel() const { return dims_numel(dims_); }
  T* data() { return dev_ == Device::CPU ? host_.data() : dbuf_.data(); }
  const T* data() const { return dev_ == Device::CPU ? host_.data() : dbuf_.data(); }

  // Copies of the contents as a host vector, and back.
  std::vector<T> to_host() const {
    if (dev_ == Device::CPU) return std::vector<T>(host_.begin(), host_.end());
    return dbuf_.to_host();
  }
  // The first n elements only (a batch smaller than the buffer: the rest may never have been
  // written, and compute-sanitizer's initcheck reports a copy of unwritten device memory).
  std::vector<T> to_host(size_t n) const {
    BARECNN_ASSERT(n <= numel(), "copy of ", n, " elements out of tensor ", dims_str(dims_));
    if (dev_ == Device::CPU) return std::vector<T>(host_.begin(), host_.begin() + std::ptrdiff_t(n));
    std::vector<T> v(n);
    dbuf_.copy_to_host(v.data(), n);
    return v;
  }
  void copy_from_host(const std::vector<T>& v) {
    BARECNN_ASSERT(v.size() == numel(), "copy of ", v.size(), " into tensor ", dims_str(dims_));
    if (dev_ == Device::CPU)
      host_.assign(v.begin(), v.end());
    else
      dbuf_.copy_from_host(v.data(), v.size());
  }
  void zero(cudaStream_t stream = 0) {
    if (dev_ == Device::CPU)
      std::fill(host_.begin(), host_.end(), T(0));
    else
      dbuf_.memset_zero(stream);
  }

 private:
  Dims dims_;
  Device dev_ = Device::CPU;
  std::vector<T, HostAllocator<T>> host_;
  DeviceBuffer<T> dbuf_;
};

using Tensor = BasicTensor<float>;
using TensorD = BasicTensor<double>;
using TensorI = BasicTensor<int32_t>;

}  // namespace barecnn
