// GPU-vs-CPU parity of the losses and the metric accumulation (kernels/loss.cu).
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

// ---- losses --------------------------------------------------------------------------------------

// One loss over logits (N, K) in [lo, hi] with random labels, through the fused kernel with every
// output, then again with dlogits and correct null.
void check_loss(const GpuContext& ctx, Loss kind, int N, int K, double lo, double hi, double loss_atol, uint64_t seed) {
  SCOPED_TRACE(fmt("loss ", loss_name(kind), " N=", N, " K=", K, " logits in [", lo, ", ", hi, "]"));
  const size_t n = size_t(N) * K;
  std::vector<float> z = random_floats(n, seed, lo, hi);        // (N, K)
  std::vector<int32_t> labels = random_labels(N, K, seed + 1);  // (N)
  // 1/N, as the trainer uses for the batch mean; the same float goes to both sides
  const float grad_scale = 1.f / float(N);

  std::vector<double> ref_loss(N), ref_dz(n);
  std::vector<int32_t> ref_correct(N, -1);
  ref::loss_forward_backward<double>(ref_loss.data(), ref_dz.data(), ref_correct.data(), to_double(z).data(),
                                     labels.data(), N, K, kind, double(grad_scale));

  DeviceBuffer<float> d_z = upload(z);
  DeviceBuffer<int32_t> d_labels = upload(labels);
  DeviceBuffer<float> d_loss = upload(std::vector<float>(N, kNaN)), d_dz = upload(std::vector<float>(n, kNaN));
  DeviceBuffer<int32_t> d_correct = upload(std::vector<int32_t>(N, -1));
  gpu::loss_forward_backward(d_loss.data(), d_dz.data(), d_correct.data(), d_z.data(), d_labels.data(), N, K, kind,
                             grad_scale, ctx.stream());
  // Loss values: the sums are of nonnegative terms (BCE, the squared and absolute losses), whose
  // float sum over <= 4 terms per lane plus a 5-level tree has relative error < ~10u, and the
  // float functions add ~2 ulp each: rtol 1e-5. Cross-entropy m + log(sum) - z_c is not such a
  // sum: it can cancel to ~0, with an absolute error of a few ulp of |m| + log K: loss_atol.
  EXPECT_TRUE(all_close(ref_loss, download(ctx, d_loss), loss_atol, 1e-5)) << "loss";
  // Gradients: elementwise; softmax - y and sigmoid - y cancel to an absolute error of ~1 ulp of
  // 1, scaled by grad_scale: atol 1e-6 * grad_scale. The rest (MSLE's 1/(1+z), MAPE's 1/eps
  // scale) are products and quotients of exactly rounded values: rtol 1e-5.
  EXPECT_TRUE(all_close(ref_dz, download(ctx, d_dz), 1e-6 * grad_scale, 1e-5)) << "dlogits";
  // The argmax sees the very same float logits on both sides: exact.
  EXPECT_EQ(ref_correct, download(ctx, d_correct)) << "correct";

  // dlogits and correct not wanted: the loss is still right (same tolerance as above).
  DeviceBuffer<float> d_loss2 = upload(std::vector<float>(N, kNaN));
  gpu::loss_forward_backward(d_loss2.data(), nullptr, nullptr, d_z.data(), d_labels.data(), N, K, kind, grad_scale,
                             ctx.stream());
  EXPECT_TRUE(all_close(ref_loss, download(ctx, d_loss2), loss_atol, 1e-5)) << "loss without dlogits/correct";
}

TEST(LossGpu, EveryLossMatchesReference) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  int count = 0;
  loss_names(&count);
  ASSERT_EQ(count, 8);
  for (int l = 0; l < count; ++l) {
    const Loss kind = static_cast<Loss>(l);
    const uint64_t seed = 1000 + 100 * l;
    // Logits in [-3, 3]; MSLE's in [-0.9, 3], above its clamp: the clamp value -1 + 1e-7 rounds
    // to -1 + 1.19e-7 in float, which moves log1p of it by 0.17, so clamped entries of a float
    // computation cannot match the double reference (MsleClampMatchesFloatReference covers them).
    const double lo = kind == Loss::MSLE ? -0.9 : -3;
    check_loss(ctx, kind, 1, 1, lo, 3, 1e-5, seed + 1);  // one sample, one class
    check_loss(ctx, kind, 1, 10, lo, 3, 1e-5, seed + 2);
    check_loss(ctx, kind, 257, 10, lo, 3, 1e-5, seed + 3);  // rows not a multiple of the block's 4
    check_loss(ctx, kind, 33, 37, lo, 3, 1e-5, seed + 4);   // K past one warp
    check_loss(ctx, kind, 5, 100, lo, 3, 1e-5, seed + 5);   // several classes per lane
  }
}

TEST(LossGpu, LargeLogitsStayFiniteAndMatch) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  // e^100 overflows float: cross-entropy needs its log-sum-exp, BCE its softplus / two-sided
  // sigmoid. |m| ~ 100 has an ulp of 7.6e-6, so the cancelling cross-entropy gets atol 5e-5.
  check_loss(ctx, Loss::SoftmaxCrossEntropy, 64, 10, -100, 100, 5e-5, 2001);
  check_loss(ctx, Loss::BinaryCrossEntropy, 64, 10, -100, 100, 5e-5, 2002);
}

TEST(LossGpu, MsleClampMatchesFloatReference) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  // Logits in [-3, 3]: about a third are below -1 and clamped. Compared with the FLOAT reference,
  // which rounds the clamp value as the kernel does.
  const int N = 257, K = 10;
  const size_t n = size_t(N) * K;
  std::vector<float> z = random_floats(n, 2100, -3, 3);
  std::vector<int32_t> labels = random_labels(N, K, 2101);
  const float grad_scale = 1.f / float(N);
  std::vector<float> ref_loss(N), ref_dz(n);
  ref::loss_forward_backward<float>(ref_loss.data(), ref_dz.data(), nullptr, z.data(), labels.data(), N, K, Loss::MSLE,
                                    grad_scale);
  size_t clamped = 0;
  for (size_t i = 0; i < n; ++i) clamped += z[i] < -1.f;
  ASSERT_GT(clamped, n / 5);
  DeviceBuffer<float> d_z = upload(z);
  DeviceBuffer<int32_t> d_labels = upload(labels);
  DeviceBuffer<float> d_loss = upload(std::vector<float>(N, kNaN)), d_dz = upload(std::vector<float>(n, kNaN));
  gpu::loss_forward_backward(d_loss.data(), d_dz.data(), nullptr, d_z.data(), d_labels.data(), N, K, Loss::MSLE,
                             grad_scale, ctx.stream());
  std::vector<float> dz = download(ctx, d_dz);
  // Both sides in float with the same operations, except the order of the K-term sum and
  // log1pf vs std::log1p (each within ~1 ulp): loss rtol 1e-5; gradients elementwise: rtol 1e-5,
  // and exactly 0 where clamped.
  EXPECT_TRUE(all_close(ref_loss, download(ctx, d_loss), 1e-6, 1e-5)) << "loss";
  EXPECT_TRUE(all_close(ref_dz, dz, 1e-9, 1e-5)) << "dlogits";
  for (size_t i = 0; i < n; ++i)
    if (z[i] < -1.f) {
      EXPECT_EQ(dz[i], 0.f) << "clamped entry " << i << " has a gradient";
    }
}

TEST(LossGpu, ArgmaxTiesPickTheFirstIndex) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  // Integer logits in [-2, 2] over K = 37 classes: every row has ties for the maximum, within
  // one lane (classes k and k + 32) and across lanes. The reference takes the first index.
  const int N = 64, K = 37;
  std::vector<float> z = random_floats(size_t(N) * K, 2300, -2.5, 2.5);
  for (auto& v : z) v = std::round(v);
  std::vector<int32_t> labels = random_labels(N, K, 2301);
  for (int i = 0; i < N; i += 2) {  // half the rows: the label is the first maximum
    const float* row = z.data() + size_t(i) * K;
    labels[i] = int32_t(std::max_element(row, row + K) - row);
  }
  std::vector<double> ref_loss(N);
  std::vector<int32_t> ref_correct(N, -1);
  ref::loss_forward_backward<double>(ref_loss.data(), nullptr, ref_correct.data(), to_double(z).data(), labels.data(),
                                     N, K, Loss::SoftmaxCrossEntropy, 1.0);
  DeviceBuffer<float> d_z = upload(z), d_loss = upload(std::vector<float>(N, kNaN));
  DeviceBuffer<int32_t> d_labels = upload(labels), d_correct = upload(std::vector<int32_t>(N, -1));
  gpu::loss_forward_backward(d_loss.data(), nullptr, d_correct.data(), d_z.data(), d_labels.data(), N, K,
                             Loss::SoftmaxCrossEntropy, 1.f, ctx.stream());
  EXPECT_EQ(ref_correct, download(ctx, d_correct));
  int hits = 0;
  for (int c : ref_correct) hits += c;
  EXPECT_GE(hits, N / 2);  // the rows whose label is the first maximum
  // cross-entropy with m = 2 and log K ~ 3.6: same tolerance as EveryLossMatchesReference
  EXPECT_TRUE(all_close(ref_loss, download(ctx, d_loss), 1e-5, 1e-5));
}

TEST(LossGpu, LabelOutsideClassesGivesNaN) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  // The reference throws for such a label; a kernel cannot, so it marks the row with NaN (and
  // does not read out of bounds), leaving the other rows intact.
  const int N = 3, K = 10;
  std::vector<float> z = random_floats(size_t(N) * K, 2200, -3, 3);
  std::vector<int32_t> labels = {4, K, -1};
  DeviceBuffer<float> d_z = upload(z);
  DeviceBuffer<int32_t> d_labels = upload(labels);
  DeviceBuffer<float> d_loss = upload(std::vector<float>(N, 0.f)), d_dz = upload(std::vector<float>(N * K, 0.f));
  DeviceBuffer<int32_t> d_correct = upload(std::vector<int32_t>(N, -1));
  gpu::loss_forward_backward(d_loss.data(), d_dz.data(), d_correct.data(), d_z.data(), d_labels.data(), N, K,
                             Loss::SoftmaxCrossEntropy, 1.f, ctx.stream());
  std::vector<float> loss = download(ctx, d_loss), dz = download(ctx, d_dz);
  std::vector<int32_t> correct = download(ctx, d_correct);
  EXPECT_TRUE(std::isfinite(loss[0]));
  EXPECT_TRUE(std::isnan(loss[1]));
  EXPECT_TRUE(std::isnan(loss[2]));
  for (int k = 0; k < K; ++k) {
    EXPECT_TRUE(std::isfinite(dz[k]));
    EXPECT_TRUE(std::isnan(dz[K + k]));
    EXPECT_TRUE(std::isnan(dz[2 * K + k]));
  }
  EXPECT_EQ(correct[1], 0);
  EXPECT_EQ(correct[2], 0);
}

TEST(LossGpu, AccumulateMetricsSumsOnDevice) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  for (int N : {1, 257, 1000}) {
    SCOPED_TRACE(fmt("N=", N));
    std::vector<float> loss = random_floats(size_t(N), 3000 + N, 0, 5);
    std::vector<int32_t> correct = random_labels(N, 2, 3100 + N);  // 0 or 1
    double sum_loss = 0, sum_correct = 0;
    for (int i = 0; i < N; ++i) {
      sum_loss += double(loss[i]);
      sum_correct += correct[i];
    }
    DeviceBuffer<float> d_loss = upload(loss);
    DeviceBuffer<int32_t> d_correct = upload(correct);
    DeviceBuffer<double> d_acc = upload(std::vector<double>{1.5, 3.0});
    gpu::accumulate_metrics(d_acc.data(), d_loss.data(), d_correct.data(), N, ctx.stream());
    gpu::accumulate_metrics(d_acc.data(), d_loss.data(), d_correct.data(), N, ctx.stream());
    std::vector<double> acc = download(ctx, d_acc);
    ASSERT_EQ(acc.size(), 2u);
    // Double sums of <= 1000 values <= 5 in another order: error ~N u_double * 5000 ~ 1e-9.
    EXPECT_NEAR(acc[0], 1.5 + 2 * sum_loss, 1e-8);
    EXPECT_EQ(acc[1], 3.0 + 2 * sum_correct);  // integers: exact
  }
}

}  // namespace
}  // namespace barecnn
