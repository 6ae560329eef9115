// GPU-vs-CPU parity of the data pipeline: gather + normalize, the epoch permutation (kernels/data.cu).
//
// Every test feeds the kernel float inputs and the DOUBLE-precision CPU reference the very same
// values (each float converted exactly to double), so any difference is float rounding in the
// kernel, bounded by the tolerance stated (and justified) next to each comparison; u = 2^-24
// ~ 6e-8 is the float unit roundoff. GPU outputs are pre-filled with NaN (or a sentinel), so an
// element a kernel fails to write fails the comparison. cuBLAS runs in full FP32 (GpuContext sets
// CUBLAS_DEFAULT_MATH: no TF32), so the dense tolerances are those of float accumulation.
//
// All tests skip where no GPU works (BARECNN_REQUIRE_GPU).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "barecnn/cuda_check.h"
#include "barecnn/device_buffer.h"
#include "barecnn/gpu.h"
#include "barecnn/gpu_ops.h"
#include "barecnn/ref_ops.h"
#include "barecnn/rng.h"
#include "test_gpu.h"
#include "test_util.h"

namespace barecnn {
namespace {

using namespace test;  // all_close, upload, download, random_floats, ... (test_util.h, test_gpu.h)

// ---- data ----------------------------------------------------------------------------------------

TEST(DataGpu, GatherNormalizeIsExact) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  const int num = 50, P = 785, B = 37;  // P odd, B*P not a multiple of the block size
  Rng r(5000);
  std::vector<uint8_t> images(size_t(num) * P);  // (num, P)
  for (auto& px : images) px = uint8_t(r.next_u64() & 0xff);
  images[0] = 0;
  images[1] = 255;                   // both ends of the pixel range
  std::vector<uint8_t> labels(num);  // (num)
  for (auto& c : labels) c = uint8_t(r.next_u64() % 10);
  std::vector<int32_t> idx(B);  // (B), with repeats, and row 0 and the last row
  for (auto& i : idx) i = int32_t(r.next_u64() % num);
  idx[0] = 0;
  idx[1] = num - 1;
  idx[2] = num - 1;
  const float mean = 0.2860f, std = 0.3530f;

  std::vector<float> ref_out(size_t(B) * P);
  std::vector<int32_t> ref_labels(B);
  ref::gather_normalize<float>(ref_out.data(), ref_labels.data(), images.data(), labels.data(), idx.data(), B, P, mean,
                               std);
  DeviceBuffer<uint8_t> d_images = upload(images), d_labels = upload(labels);
  DeviceBuffer<int32_t> d_idx = upload(idx), d_out_labels = upload(std::vector<int32_t>(B, -1));
  DeviceBuffer<float> d_out = upload(std::vector<float>(size_t(B) * P, kNaN));
  gpu::gather_normalize(d_out.data(), d_out_labels.data(), d_images.data(), d_labels.data(), d_idx.data(), B, P, mean,
                        std, ctx.stream());
  // The same three IEEE float operations in the same order on both sides (uint8 -> float is
  // exact; nvcc's division is IEEE-rounded unless fast-math): bitwise equal.
  std::vector<float> out = download(ctx, d_out);
  EXPECT_EQ(0, std::memcmp(ref_out.data(), out.data(), out.size() * sizeof(float)))
      << "gather_normalize differs from the float reference";
  EXPECT_EQ(ref_labels, download(ctx, d_out_labels));

  // labels not wanted
  DeviceBuffer<float> d_out2 = upload(std::vector<float>(size_t(B) * P, kNaN));
  gpu::gather_normalize(d_out2.data(), nullptr, d_images.data(), nullptr, d_idx.data(), B, P, mean, std, ctx.stream());
  std::vector<float> out2 = download(ctx, d_out2);
  EXPECT_EQ(0, std::memcmp(ref_out.data(), out2.data(), out2.size() * sizeof(float)));
}

// The training loop's variant reads the batch number from the device counters: batch b of the
// permutation is rows perm[b*B .. b*B+B).
TEST(DataGpu, GatherOfTheCountersBatchMatchesExplicitIndices) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  const int num = 40, H = 29, W = 1, P = H * W, B = 7;
  Rng r(5100);
  std::vector<uint8_t> images(size_t(num) * P), labels(num);
  for (auto& px : images) px = uint8_t(r.next_u64() & 0xff);
  for (auto& c : labels) c = uint8_t(r.next_u64() % 10);
  std::vector<int32_t> perm = ref::epoch_permutation(num, 3, 1);  // (num)
  DeviceBuffer<uint8_t> d_images = upload(images), d_labels = upload(labels);
  DeviceBuffer<int32_t> d_perm = upload(perm), d_lab(B);
  DeviceBuffer<float> d_out(size_t(B) * P);
  DeviceBuffer<gpu::StepCounters> d_c(1);
  gpu::StepCounters c0;
  c0.next_batch = 3;
  d_c.copy_from_host(&c0, 1);
  OptimConfig cfg;
  for (int batch = 3; batch <= 4; ++batch) {  // 5*7 = 35 <= 40: both batches in range
    SCOPED_TRACE(fmt("batch ", batch));
    gpu::begin_step(d_c.data(), cfg, 1, ctx.stream());
    gpu::gather_normalize_batch(d_out.data(), d_lab.data(), d_images.data(), d_labels.data(), d_perm.data(), d_c.data(),
                                B, H, W, Augment{}, 0.25f, 0.5f, ctx.stream());
    std::vector<float> want(size_t(B) * P);
    std::vector<int32_t> want_lab(B);
    ref::gather_normalize<float>(want.data(), want_lab.data(), images.data(), labels.data(), perm.data() + batch * B, B,
                                 P, 0.25f, 0.5f);
    std::vector<float> got = download(ctx, d_out);
    EXPECT_EQ(0, std::memcmp(want.data(), got.data(), got.size() * sizeof(float)));
    EXPECT_EQ(want_lab, download(ctx, d_lab));
  }
}

// The augmenting gather (augment.h) against ref::gather_normalize_augment, bit for bit: the same
// shared index helper and draws, the same float operations. Several settings, image sizes that do
// not divide the block size, two consecutive steps of the counters (each its own draws), a seed
// of 64 bits; then the counters' seed and step changed on the device alone change the batch.
TEST(AugmentGpu, GatherMatchesTheReferenceBitwise) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  for (auto [H, W] : {std::pair{11, 10}, std::pair{7, 13}, std::pair{28, 28}})
    for (Augment aug : {Augment{2, false}, Augment{0, true}, Augment{3, true}, Augment{}}) {
      SCOPED_TRACE(fmt(H, "x", W, " pad ", aug.pad, aug.flip ? " flip" : ""));
      const int num = 60, P = H * W, B = 19;  // batches 1 and 2: rows perm[19 .. 57)
      Rng r(5200 + H);
      std::vector<uint8_t> images(size_t(num) * P), labels(num);
      for (auto& px : images) px = uint8_t(r.next_u64() & 0xff);
      for (auto& c : labels) c = uint8_t(r.next_u64() % 10);
      std::vector<int32_t> perm = ref::epoch_permutation(num, 3, 1);  // (num)
      DeviceBuffer<uint8_t> d_images = upload(images), d_labels = upload(labels);
      DeviceBuffer<int32_t> d_perm = upload(perm), d_lab = upload(std::vector<int32_t>(B, -1));
      DeviceBuffer<float> d_out = upload(std::vector<float>(size_t(B) * P, kNaN));
      DeviceBuffer<gpu::StepCounters> d_c(1);
      gpu::StepCounters c;
      c.next_batch = 1;
      c.global_step = 41;
      c.seed = 0xFEDCBA9876543210ULL;
      d_c.copy_from_host(&c, 1);
      OptimConfig cfg;
      for (int batch = 1; batch <= 2; ++batch) {
        SCOPED_TRACE(fmt("batch ", batch));
        gpu::begin_step(d_c.data(), cfg, 1, ctx.stream());
        gpu::gather_normalize_batch(d_out.data(), d_lab.data(), d_images.data(), d_labels.data(), d_perm.data(),
                                    d_c.data(), B, H, W, aug, 0.2860f, 0.3530f, ctx.stream());
        std::vector<float> want(size_t(B) * P);
        std::vector<int32_t> want_lab(B);
        ref::gather_normalize_augment<float>(want.data(), want_lab.data(), images.data(), labels.data(),
                                             perm.data() + batch * B, B, H, W, 0.2860f, 0.3530f, aug, c.seed,
                                             41 + batch);
        std::vector<float> got = download(ctx, d_out);
        EXPECT_EQ(0, std::memcmp(want.data(), got.data(), got.size() * sizeof(float)));
        EXPECT_EQ(want_lab, download(ctx, d_lab));
        if (!aug.on()) {  // off: the plain gather
          std::vector<float> plain(size_t(B) * P);
          ref::gather_normalize<float>(plain.data(), nullptr, images.data(), nullptr, perm.data() + batch * B, B, P,
                                       0.2860f, 0.3530f);
          EXPECT_EQ(0, std::memcmp(plain.data(), got.data(), got.size() * sizeof(float)));
        }
      }
      if (!aug.on()) continue;
      // Only the counters' seed changes (on the device, as a new run's begin_epoch would): other draws.
      const std::vector<float> before = download(ctx, d_out);
      gpu::StepCounters c2 = download(ctx, d_c)[0];
      c2.seed ^= 1;
      c2.next_batch = 2;  // the same batch again
      c2.global_step = 41 + 1;
      d_c.copy_from_host(&c2, 1);
      gpu::begin_step(d_c.data(), cfg, 1, ctx.stream());
      gpu::gather_normalize_batch(d_out.data(), d_lab.data(), d_images.data(), d_labels.data(), d_perm.data(),
                                  d_c.data(), B, H, W, aug, 0.2860f, 0.3530f, ctx.stream());
      EXPECT_NE(before, download(ctx, d_out));
    }
}

TEST(DataGpu, EpochPermutationMatchesReference) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  for (int n : {1, 1000, 60000}) {
    for (long long epoch : {0LL, 3LL}) {
      SCOPED_TRACE(fmt("n=", n, " epoch=", epoch));
      const uint64_t seed = 42;
      std::vector<int32_t> ref_idx = ref::epoch_permutation(n, seed, epoch);
      DeviceBuffer<int32_t> d_idx = upload(std::vector<int32_t>(n, -1));
      gpu::epoch_permutation(d_idx.data(), n, seed, epoch, ctx.stream());
      std::vector<int32_t> idx = download(ctx, d_idx);
      EXPECT_EQ(ref_idx, idx);
      if (n > 1) {  // and it is a real shuffle, not the identity
        std::vector<int32_t> iota(n);
        std::iota(iota.begin(), iota.end(), 0);
        EXPECT_NE(idx, iota);
      }
    }
  }
}

}  // namespace
}  // namespace barecnn
