#include "barecnn/device_buffer.h"

#include <atomic>
#include <cstdio>
#include <mutex>

#include "barecnn/cuda_check.h"

namespace barecnn {

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
    throw Error(fmt("out of GPU memory allocating ", what, ": asked for ", bytes, " bytes (", bytes >> 20, " MiB), ",
                    free_b >> 20, " MiB free of ", total_b >> 20, " MiB; lower --batch or use a smaller net"));
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
