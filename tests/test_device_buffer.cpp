// DeviceBuffer's bookkeeping of device memory (DeviceMemoryCounter, device_buffer.h): on made-up
// pointers, so it runs without a GPU; and on a GPU the exact byte counts of real buffers.
#include <gtest/gtest.h>

#include <cstdint>
#include <thread>
#include <vector>

#include "barecnn/device_buffer.h"
#include "barecnn/tensor.h"
#include "test_gpu.h"

using namespace barecnn;

namespace {

// A made-up device address; the counter only uses it as a key.
const void* fake_ptr(uintptr_t v) { return reinterpret_cast<const void*>(v); }

}  // namespace

// ---- the device-memory bookkeeping --------------------------------------------------------------

TEST(DeviceMemoryCounter, TracksCurrentAndHighWaterMark) {
  DeviceMemoryCounter c;
  EXPECT_EQ(c.stats().current, 0u);
  EXPECT_EQ(c.stats().peak, 0u);
  c.on_alloc(fake_ptr(0x1000), 100);
  c.on_alloc(fake_ptr(0x2000), 50);
  EXPECT_EQ(c.stats().current, 150u);
  EXPECT_EQ(c.stats().peak, 150u);
  c.on_free(fake_ptr(0x1000));  // the size comes from the books, not from the caller
  EXPECT_EQ(c.stats().current, 50u);
  EXPECT_EQ(c.stats().peak, 150u);
  c.on_alloc(fake_ptr(0x3000), 70);  // 120 < 150: the mark stays
  EXPECT_EQ(c.stats().current, 120u);
  EXPECT_EQ(c.stats().peak, 150u);
  c.reset_peak();  // a new mark at what is held now
  EXPECT_EQ(c.stats().peak, 120u);
  c.on_alloc(fake_ptr(0x1000), 9);  // an address may come back after its free
  EXPECT_EQ(c.stats().current, 129u);
  EXPECT_EQ(c.stats().peak, 129u);
  c.on_free(fake_ptr(0x2000));
  c.on_free(fake_ptr(0x3000));
  c.on_free(fake_ptr(0x1000));
  EXPECT_EQ(c.stats().current, 0u);
  EXPECT_EQ(c.stats().peak, 129u);
}

TEST(DeviceMemoryCounter, UnknownNullAndDoubleFreesChangeNothing) {
  DeviceMemoryCounter c;
  c.on_alloc(fake_ptr(0x40), 64);
  c.on_free(nullptr);
  c.on_free(fake_ptr(0x80));
  EXPECT_EQ(c.stats().current, 64u);
  c.on_free(fake_ptr(0x40));
  c.on_free(fake_ptr(0x40));  // must not go below zero (size_t would wrap)
  EXPECT_EQ(c.stats().current, 0u);
  EXPECT_EQ(c.stats().peak, 64u);
}

TEST(DeviceMemoryCounter, SameAddressTwiceWithoutFreeKeepsTheBooksRight) {
  DeviceMemoryCounter c;
  c.on_alloc(fake_ptr(0x10), 30);
  c.on_alloc(fake_ptr(0x10), 20);  // cannot happen with a working cudaMalloc; counted once
  EXPECT_EQ(c.stats().current, 20u);
  EXPECT_EQ(c.stats().peak, 30u);
  c.on_free(fake_ptr(0x10));
  EXPECT_EQ(c.stats().current, 0u);
}

TEST(DeviceMemoryCounter, ThreadsAllocatingAtOnceLoseNoBytes) {
  DeviceMemoryCounter c;
  const int threads = 8, per_thread = 2000;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&c, t] {
      for (int i = 0; i < per_thread; ++i) {
        const void* p = fake_ptr(uintptr_t(t + 1) << 32 | uintptr_t(i + 1));
        c.on_alloc(p, size_t(i % 7 + 1));
        if (i % 2) c.on_free(p);  // every odd one is freed again
      }
    });
  for (auto& th : pool) th.join();
  // Still held: the even i, sizes (i % 7 + 1).
  size_t held = 0;
  for (int i = 0; i < per_thread; i += 2) held += size_t(i % 7 + 1);
  EXPECT_EQ(c.stats().current, held * threads);
  EXPECT_GE(c.stats().peak, held * threads);
}

// ---- a tensor's first n elements (the evaluator's last, smaller batch) --------------------------

namespace {
// Fills a tensor with 1..numel, copies out its first 4 elements, then none, then one too many.
void check_prefix_copy(Device d) {
  Tensor t({2, 3}, d);
  t.copy_from_host({1, 2, 3, 4, 5, 6});
  EXPECT_EQ(t.to_host(4), std::vector<float>({1, 2, 3, 4}));
  EXPECT_TRUE(t.to_host(0).empty());
  EXPECT_EQ(t.to_host(6), t.to_host());
  EXPECT_ANY_THROW(t.to_host(7));
}
}  // namespace

TEST(Tensor, ToHostOfAPrefixCopiesThoseElementsOnly) { check_prefix_copy(Device::CPU); }

TEST(TensorGpu, ToHostOfAPrefixCopiesThoseElementsOnly) {
  BARECNN_REQUIRE_GPU();
  check_prefix_copy(Device::CUDA);
}

// ---- on a GPU ----------------------------------------------------------------------------------

TEST(DeviceMemoryGpu, CountsEveryBufferExactly) {
  BARECNN_REQUIRE_GPU();
  const size_t base = device_memory_stats().current;
  reset_device_memory_peak();
  EXPECT_EQ(device_memory_stats().peak, base);
  {
    DeviceBuffer<float> a(1000);  // 4000 bytes
    DeviceBuffer<double> b(301);  // 2408 bytes
    EXPECT_EQ(device_memory_stats().current, base + 6408);
    EXPECT_EQ(device_memory_stats().peak, base + 6408);
    a.resize(10);  // frees 4000, takes 40
    EXPECT_EQ(device_memory_stats().current, base + 2448);
    EXPECT_EQ(device_memory_stats().peak, base + 6408);
    a.resize(10);                              // same size: no new allocation
    DeviceBuffer<double> moved(std::move(b));  // ownership moves, bytes do not
    EXPECT_EQ(device_memory_stats().current, base + 2448);
    Tensor t({3, 5, 7}, Device::CUDA);  // 420 bytes through the same path
    EXPECT_EQ(device_memory_stats().current, base + 2868);
    reset_device_memory_peak();
    EXPECT_EQ(device_memory_stats().peak, base + 2868);
  }
  EXPECT_EQ(device_memory_stats().current, base);
  EXPECT_EQ(device_memory_stats().peak, base + 2868);
}
