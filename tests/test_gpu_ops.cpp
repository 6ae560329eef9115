// GPU-vs-CPU parity of the elementwise, row-wise and dense kernels, the losses, the optimizer and
// the data pipeline (kernels/activation.cu, dense.cu, loss.cu, optim.cu, data.cu).
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

using test::all_close;
using test::cast_vec;
using test::random_vec;
using test::tie_free_vec;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Host vector -> new device buffer. GpuContext's stream is a blocking stream, ordered after the
// legacy default stream that cudaMemcpy uses, so kernels on ctx.stream() see the copy; the
// synchronize only makes a failed upload show up here, at the upload, not in a later kernel.
template <typename T>
DeviceBuffer<T> upload(const std::vector<T>& v) {
  DeviceBuffer<T> d(v.size(), "test buffer");
  d.copy_from_host(v.data(), v.size());
  CUDA_CHECK(cudaDeviceSynchronize());
  return d;
}

// Device buffer -> host vector, after the work queued on ctx.stream() has finished.
template <typename T>
std::vector<T> download(const GpuContext& ctx, const DeviceBuffer<T>& d) {
  ctx.sync();
  return d.to_host();
}

std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }
std::vector<float> random_floats(size_t n, uint64_t seed, double lo = -1, double hi = 1) {
  return cast_vec<float>(random_vec(n, seed, lo, hi));
}
std::vector<int32_t> random_labels(int N, int K, uint64_t seed) {
  Rng r(seed);
  std::vector<int32_t> v(N);
  for (auto& c : v) c = int32_t(r.next_u64() % uint64_t(K));
  return v;
}

// ---- activations ---------------------------------------------------------------------------------

const Activation kActivations[] = {
    {Act::Identity, 0.f}, {Act::BinaryStep, 0.f}, {Act::Sigmoid, 0.f},   {Act::Tanh, 0.f},    {Act::Arctan, 0.f},
    {Act::Relu, 0.f},     {Act::LeakyRelu, 0.1f}, {Act::Elu, 0.7f},      {Act::Softplus, 0.f},
};

// Forward and backward of activation `a` over n values that start `offset` floats into their
// buffers (offset 1: pointers 4 bytes past a 16-byte boundary, so the scalar path runs even when
// n % 4 == 0). The buffers have a guard element before (when offset > 0) and after the range,
// which must stay untouched.
void check_activation(const GpuContext& ctx, Activation a, long long n, int offset, uint64_t seed) {
  SCOPED_TRACE(fmt("activation ", static_cast<int>(a.kind), " alpha ", a.alpha, " n=", n, " offset=", offset));
  const size_t len = size_t(n) + offset + 1;  // guard(s) + range
  const float kGuard = 12345.f;
  // x in [-4, 4], no value within ~1e-3 of 0 (the kink of relu / leaky_relu / binary_step / elu)
  std::vector<float> x(len, kGuard), dy(len, kGuard), y_in(len, kGuard);
  std::vector<float> xs = cast_vec<float>(tie_free_vec(size_t(n), seed, -4, 4));
  std::vector<float> dys = random_floats(size_t(n), seed + 1);
  for (long long i = 0; i < n; ++i) {
    x[offset + i] = xs[i];
    dy[offset + i] = dys[i];
  }

  // forward: ref in double on the same (float) inputs
  std::vector<double> ref_y(n);
  ref::activation_forward<double>(ref_y.data(), to_double(xs).data(), n, a);
  DeviceBuffer<float> d_x = upload(x), d_y = upload(std::vector<float>(len, kGuard));
  gpu::activation_forward(d_y.data() + offset, d_x.data() + offset, n, a, ctx.stream());
  std::vector<float> y = download(ctx, d_y);
  // Values are <= 4 in size; CUDA's expf/tanhf/atanf/log1pf are within 2 ulp, and sigmoid /
  // softplus chain at most three such steps (relative ~1e-6 at worst). elu's e^x - 1 cancels
  // near 0, leaving an absolute error of a few ulp of 1 (~5e-7): atol 2e-6, rtol 1e-5.
  EXPECT_TRUE(all_close(ref_y, std::vector<float>(y.begin() + offset, y.begin() + offset + n), 2e-6, 1e-5));
  for (int g = 0; g < offset; ++g) EXPECT_EQ(y[g], kGuard) << "forward wrote before its range";
  EXPECT_EQ(y[offset + n], kGuard) << "forward wrote past its range";

  // backward: both sides get the same x and y (y = the double reference rounded to float), so
  // the derivatives that use y (sigmoid, tanh, elu) see identical inputs.
  std::vector<float> ys(n);
  for (long long i = 0; i < n; ++i) {
    ys[i] = float(ref_y[i]);
    y_in[offset + i] = ys[i];
  }
  std::vector<double> ref_dx(n);
  ref::activation_backward<double>(ref_dx.data(), to_double(dys).data(), to_double(xs).data(), to_double(ys).data(),
                                   n, a);
  DeviceBuffer<float> d_dy = upload(dy), d_yin = upload(y_in), d_dx = upload(std::vector<float>(len, kGuard));
  gpu::activation_backward(d_dx.data() + offset, d_dy.data() + offset, d_x.data() + offset, d_yin.data() + offset,
                           n, a, ctx.stream());
  std::vector<float> dx = download(ctx, d_dx);
  // dout in [-1, 1] times a derivative <= 1 computed in float: 1 - y*y (tanh) and y*(1 - y)
  // (sigmoid) cancel near |y| = 1 to an absolute error of ~1 ulp of 1: atol 1e-6, rtol 1e-5.
  EXPECT_TRUE(all_close(ref_dx, std::vector<float>(dx.begin() + offset, dx.begin() + offset + n), 1e-6, 1e-5));
  for (int g = 0; g < offset; ++g) EXPECT_EQ(dx[g], kGuard) << "backward wrote before its range";
  EXPECT_EQ(dx[offset + n], kGuard) << "backward wrote past its range";
}

TEST(ActivationGpu, VectorizedPathMatchesReference) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  // aligned buffers, n % 4 == 0: the float4 kernels
  for (const Activation& a : kActivations) check_activation(ctx, a, 1000, 0, 11);
}

TEST(ActivationGpu, ScalarPathMatchesReference) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  for (const Activation& a : kActivations) {
    check_activation(ctx, a, 1001, 0, 12);  // n not divisible by 4
    check_activation(ctx, a, 1000, 1, 13);  // pointers offset by one element (not 16-byte aligned)
    check_activation(ctx, a, 1, 0, 14);     // a single element
    check_activation(ctx, a, 7, 1, 15);     // both
  }
}

// ---- softmax -------------------------------------------------------------------------------------

void check_softmax(const GpuContext& ctx, int N, int K, double range, uint64_t seed) {
  SCOPED_TRACE(fmt("softmax N=", N, " K=", K, " logits in +-", range));
  const size_t n = size_t(N) * K;
  std::vector<float> z = random_floats(n, seed, -range, range);  // (N, K)
  std::vector<float> dy = random_floats(n, seed + 1);             // (N, K)

  std::vector<double> ref_y(n);
  ref::softmax_forward<double>(ref_y.data(), to_double(z).data(), N, K);
  DeviceBuffer<float> d_z = upload(z), d_y = upload(std::vector<float>(n, kNaN));
  gpu::softmax_forward(d_y.data(), d_z.data(), N, K, ctx.stream());
  // Outputs in [0, 1]: expf (2 ulp) of arguments <= 0, a float sum of K <= 1000 terms (at most
  // ~32 sequential adds per lane plus a 5-level tree: relative error ~40u ~ 2.4e-6), one
  // division: rtol 1e-5; atol 1e-7 for the tiny probabilities of the +-100 case.
  EXPECT_TRUE(all_close(ref_y, download(ctx, d_y), 1e-7, 1e-5));

  // backward on identical y (the reference's, rounded to float)
  std::vector<float> y = cast_vec<float>(ref_y);
  std::vector<double> ref_dz(n);
  ref::softmax_backward<double>(ref_dz.data(), to_double(dy).data(), to_double(y).data(), N, K);
  DeviceBuffer<float> d_dy = upload(dy), d_yf = upload(y), d_dz = upload(std::vector<float>(n, kNaN));
  gpu::softmax_backward(d_dz.data(), d_dy.data(), d_yf.data(), N, K, ctx.stream());
  // y_k (dout_k - dot): dot = sum dout_j y_j is a float dot product of size <= 1 (error ~K u),
  // and dout_k - dot cancels to an absolute error of ~1 ulp of 1; times y_k <= 1: atol 1e-6.
  EXPECT_TRUE(all_close(ref_dz, download(ctx, d_dz), 1e-6, 1e-5));
}

TEST(SoftmaxGpu, ForwardBackwardMatchReference) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  check_softmax(ctx, 1, 1, 3, 21);     // a single class: y = 1, dinp = 0
  check_softmax(ctx, 3, 10, 3, 22);
  check_softmax(ctx, 257, 10, 3, 23);  // more rows than one block's 4
  check_softmax(ctx, 5, 33, 3, 24);    // K just past one warp
  check_softmax(ctx, 2, 1000, 3, 25);  // many columns per lane
  check_softmax(ctx, 9, 37, 100, 26);  // e^100 overflows float: needs the max subtraction
}

// ---- dense ---------------------------------------------------------------------------------------

// Float accumulation over a reduction of length R of products of values in [-1, 1]: the partial
// sums stay ~sqrt(R)/3 in size for random signs, and the rounding error grows like
// u * sqrt(R) * sqrt(R)/3 ~ 2e-8 R (blocked GEMM sums are no worse). atol = 2e-6 R is ~100x that
// (~25x the largest expected over 30k elements), while an indexing or transpose bug changes
// elements by O(0.1 .. 1).
double dense_atol(int R) { return 2e-6 * R; }

void check_dense(const GpuContext& ctx, int N, int IN, int OUT, bool with_bias, uint64_t seed) {
  SCOPED_TRACE(fmt("dense N=", N, " IN=", IN, " OUT=", OUT, with_bias ? " bias" : " no bias"));
  std::vector<float> x = random_floats(size_t(N) * IN, seed);        // (N, IN)
  std::vector<float> w = random_floats(size_t(OUT) * IN, seed + 1);  // (OUT, IN)
  std::vector<float> b = random_floats(size_t(OUT), seed + 2);       // (OUT)
  std::vector<float> dy = random_floats(size_t(N) * OUT, seed + 3);  // (N, OUT)
  std::vector<double> xd = to_double(x), wd = to_double(w), bd = to_double(b), dyd = to_double(dy);
  DeviceBuffer<float> d_x = upload(x), d_w = upload(w), d_b = upload(b), d_dy = upload(dy);

  // forward
  std::vector<double> ref_y(size_t(N) * OUT);
  ref::dense_forward<double>(ref_y.data(), xd.data(), wd.data(), with_bias ? bd.data() : nullptr, N, IN, OUT);
  DeviceBuffer<float> d_y = upload(std::vector<float>(size_t(N) * OUT, kNaN));
  gpu::dense_forward(d_y.data(), d_x.data(), d_w.data(), with_bias ? d_b.data() : nullptr, N, IN, OUT, ctx.cublas(),
                     ctx.stream());
  EXPECT_TRUE(all_close(ref_y, download(ctx, d_y), dense_atol(IN + 1), 1e-5)) << "forward";

  // input gradient
  std::vector<double> ref_dx(size_t(N) * IN);
  ref::dense_backward_input<double>(ref_dx.data(), dyd.data(), wd.data(), N, IN, OUT);
  DeviceBuffer<float> d_dx = upload(std::vector<float>(size_t(N) * IN, kNaN));
  gpu::dense_backward_input(d_dx.data(), d_dy.data(), d_w.data(), N, IN, OUT, ctx.cublas(), ctx.stream());
  EXPECT_TRUE(all_close(ref_dx, download(ctx, d_dx), dense_atol(OUT), 1e-5)) << "backward_input";

  // weight and bias gradients
  std::vector<double> ref_dw(size_t(OUT) * IN), ref_db(OUT);
  ref::dense_backward_weight<double>(ref_dw.data(), with_bias ? ref_db.data() : nullptr, dyd.data(), xd.data(), N,
                                     IN, OUT);
  DeviceBuffer<float> d_dw = upload(std::vector<float>(size_t(OUT) * IN, kNaN));
  DeviceBuffer<float> d_db = upload(std::vector<float>(size_t(OUT), kNaN));
  gpu::dense_backward_weight(d_dw.data(), with_bias ? d_db.data() : nullptr, d_dy.data(), d_x.data(), N, IN, OUT,
                             ctx.cublas(), ctx.stream());
  EXPECT_TRUE(all_close(ref_dw, download(ctx, d_dw), dense_atol(N), 1e-5)) << "backward_weight dweight";
  std::vector<float> db = download(ctx, d_db);
  if (with_bias) {
    EXPECT_TRUE(all_close(ref_db, db, dense_atol(N), 1e-5)) << "backward_weight dbias";
  } else {
    for (float v : db) EXPECT_TRUE(std::isnan(v)) << "dbias was null, yet the bias buffer was written";
  }
}

TEST(DenseGpu, ForwardBackwardMatchReference) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  uint64_t seed = 100;
  for (int N : {1, 257})
    for (int IN : {1, 33, 785})
      for (int OUT : {1, 10, 129}) check_dense(ctx, N, IN, OUT, true, seed += 10);
}

TEST(DenseGpu, WithoutBiasMatchesReference) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  check_dense(ctx, 257, 33, 10, false, 500);
  check_dense(ctx, 1, 785, 129, false, 510);
}

TEST(DenseGpu, NullInputGradientIsSkipped) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  // dinp null means "not needed" (first layer): no launch, no error.
  DeviceBuffer<float> d_dy = upload(random_floats(3 * 4, 600)), d_w = upload(random_floats(4 * 5, 601));
  EXPECT_NO_THROW(gpu::dense_backward_input(nullptr, d_dy.data(), d_w.data(), 3, 5, 4, ctx.cublas(), ctx.stream()));
  EXPECT_NO_THROW(ctx.sync());
}

TEST(DenseGpu, EmptyBatchGivesZeroGradients) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  const int IN = 33, OUT = 10;
  DeviceBuffer<float> d_dw = upload(std::vector<float>(OUT * IN, kNaN)), d_db = upload(std::vector<float>(OUT, kNaN));
  DeviceBuffer<float> d_dy(1), d_x(1);  // never read for N = 0
  gpu::dense_backward_weight(d_dw.data(), d_db.data(), d_dy.data(), d_x.data(), 0, IN, OUT, ctx.cublas(),
                             ctx.stream());
  EXPECT_EQ(download(ctx, d_dw), std::vector<float>(OUT * IN, 0.f));
  EXPECT_EQ(download(ctx, d_db), std::vector<float>(OUT, 0.f));
}

TEST(DenseGpu, BackwardWeightIsBitwiseDeterministic) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  const int N = 257, IN = 785, OUT = 129;
  DeviceBuffer<float> d_x = upload(random_floats(size_t(N) * IN, 700));
  DeviceBuffer<float> d_dy = upload(random_floats(size_t(N) * OUT, 701));
  // Different fill values: if a run left any element unwritten, the two results would differ.
  DeviceBuffer<float> d_dw1 = upload(std::vector<float>(size_t(OUT) * IN, kNaN));
  DeviceBuffer<float> d_dw2 = upload(std::vector<float>(size_t(OUT) * IN, 7.f));
  DeviceBuffer<float> d_db1 = upload(std::vector<float>(OUT, kNaN)), d_db2 = upload(std::vector<float>(OUT, 7.f));
  gpu::dense_backward_weight(d_dw1.data(), d_db1.data(), d_dy.data(), d_x.data(), N, IN, OUT, ctx.cublas(),
                             ctx.stream());
  gpu::dense_backward_weight(d_dw2.data(), d_db2.data(), d_dy.data(), d_x.data(), N, IN, OUT, ctx.cublas(),
                             ctx.stream());
  std::vector<float> dw1 = download(ctx, d_dw1), dw2 = download(ctx, d_dw2);
  std::vector<float> db1 = download(ctx, d_db1), db2 = download(ctx, d_db2);
  EXPECT_EQ(0, std::memcmp(dw1.data(), dw2.data(), dw1.size() * sizeof(float))) << "dweight differs between runs";
  EXPECT_EQ(0, std::memcmp(db1.data(), db2.data(), db1.size() * sizeof(float))) << "dbias differs between runs";
  for (float v : dw1) ASSERT_TRUE(std::isfinite(v));
  for (float v : db1) ASSERT_TRUE(std::isfinite(v));
}

// ---- losses --------------------------------------------------------------------------------------

// One loss over logits (N, K) in [lo, hi] with random labels, through the fused kernel with every
// output, then again with dlogits and correct null.
void check_loss(const GpuContext& ctx, Loss kind, int N, int K, double lo, double hi, double loss_atol,
                uint64_t seed) {
  SCOPED_TRACE(fmt("loss ", loss_name(kind), " N=", N, " K=", K, " logits in [", lo, ", ", hi, "]"));
  const size_t n = size_t(N) * K;
  std::vector<float> z = random_floats(n, seed, lo, hi);         // (N, K)
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
    check_loss(ctx, kind, 1, 1, lo, 3, 1e-5, seed + 1);     // one sample, one class
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

// ---- optimizer -----------------------------------------------------------------------------------

// Three steps of `cfg` over n parameters with a new gradient each step, the GPU in float and the
// reference in double from the same start; state compared after every step.
void check_optimizer(const GpuContext& ctx, const OptimConfig& cfg, bool use_m, bool use_v, uint64_t seed) {
  const size_t n = 1001;
  std::vector<float> p = random_floats(n, seed);  // (n)
  std::vector<double> ref_p = to_double(p), ref_m(n, 0.0), ref_v(n, 0.0);
  DeviceBuffer<float> d_p = upload(p), d_g(n);
  DeviceBuffer<float> d_m = upload(std::vector<float>(n, 0.f)), d_v = upload(std::vector<float>(n, 0.f));
  for (long long step = 1; step <= 3; ++step) {
    SCOPED_TRACE(fmt("step ", step));
    std::vector<float> g = random_floats(n, seed + 10 * step);
    d_g.copy_from_host(g.data(), n);
    CUDA_CHECK(cudaDeviceSynchronize());  // see upload()
    ref::optimizer_step<double>(ref_p.data(), to_double(g).data(), use_m ? ref_m.data() : nullptr,
                                use_v ? ref_v.data() : nullptr, n, cfg, step);
    gpu::optimizer_step(d_p.data(), d_g.data(), use_m ? d_m.data() : nullptr, use_v ? d_v.data() : nullptr, n, cfg,
                        step, ctx.stream());
    // Parameters ~1, each step rounds param, m, v once or twice in float (~1e-7 absolute each),
    // and the update's quotient m/(sqrt v + eps) is well conditioned (g is never near 0 to
    // within rounding for these random draws): 3 steps stay below ~1e-6. A missing term is far
    // larger (weight decay: lr*wd*param ~ 5e-4 per step). atol 2e-6, rtol 1e-5.
    EXPECT_TRUE(all_close(ref_p, download(ctx, d_p), 2e-6, 1e-5)) << "param";
    if (use_m) {
      EXPECT_TRUE(all_close(ref_m, download(ctx, d_m), 2e-6, 1e-5)) << "m";
    }
    if (use_v) {
      EXPECT_TRUE(all_close(ref_v, download(ctx, d_v), 1e-9, 1e-5)) << "v";
    }
  }
}

TEST(OptimGpu, PlainSgdMatchesReference) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  OptimConfig cfg;
  cfg.kind = Optim::SGD;
  cfg.lr = 0.1f;
  check_optimizer(ctx, cfg, false, false, 4000);  // no momentum: m and v may be null
}

TEST(OptimGpu, SgdMomentumWeightDecayMatchesReference) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  OptimConfig cfg;
  cfg.kind = Optim::SGD;
  cfg.lr = 0.1f;
  cfg.momentum = 0.9f;
  cfg.weight_decay = 1e-2f;
  check_optimizer(ctx, cfg, true, false, 4100);
}

TEST(OptimGpu, AdamMatchesReference) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  OptimConfig cfg;
  cfg.kind = Optim::Adam;
  cfg.lr = 1e-2f;
  check_optimizer(ctx, cfg, true, true, 4200);
  cfg.weight_decay = 1e-2f;
  check_optimizer(ctx, cfg, true, true, 4300);
}

// The training loop's variant: t and the bias corrections come from the device counters that
// begin_step advances. Same kernel, so the same parameters bit for bit as the host-step variant,
// step after step (the bias corrections are rounded to float once on either side).
TEST(OptimGpu, DeviceStepCountersGiveTheHostStepResults) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  for (Optim kind : {Optim::Adam, Optim::SGD}) {
    SCOPED_TRACE(kind == Optim::Adam ? "adam" : "sgd");
    OptimConfig cfg;
    cfg.kind = kind;
    cfg.lr = 1e-2f;
    cfg.momentum = kind == Optim::SGD ? 0.9f : 0.f;
    cfg.weight_decay = 1e-3f;
    const size_t n = 777;
    std::vector<float> p = random_floats(n, 4400);
    DeviceBuffer<float> a_p = upload(p), b_p = upload(p), d_g(n);
    DeviceBuffer<float> a_m = upload(std::vector<float>(n, 0.f)), a_v = upload(std::vector<float>(n, 0.f));
    DeviceBuffer<float> b_m = upload(std::vector<float>(n, 0.f)), b_v = upload(std::vector<float>(n, 0.f));
    gpu::StepCounters c0;
    c0.global_step = 5;  // as after a resume at step 5
    c0.next_batch = 2;
    DeviceBuffer<gpu::StepCounters> d_c(1);
    d_c.copy_from_host(&c0, 1);
    for (long long step = 6; step <= 9; ++step) {
      SCOPED_TRACE(fmt("step ", step));
      d_g.copy_from_host(random_floats(n, 4500 + step).data(), n);
      CUDA_CHECK(cudaDeviceSynchronize());
      gpu::optimizer_step(a_p.data(), d_g.data(), a_m.data(), a_v.data(), n, cfg, step, ctx.stream());
      gpu::begin_step(d_c.data(), cfg, ctx.stream());
      gpu::optimizer_step(b_p.data(), d_g.data(), b_m.data(), b_v.data(), n, cfg, d_c.data(), ctx.stream());
      std::vector<float> pa = download(ctx, a_p), pb = download(ctx, b_p);
      EXPECT_EQ(0, std::memcmp(pa.data(), pb.data(), n * sizeof(float)));
      gpu::StepCounters c;
      ctx.sync();
      d_c.copy_to_host(&c, 1);
      EXPECT_EQ(c.global_step, step);
      EXPECT_EQ(c.batch, step - 4);  // 2, 3, ... : the batch of this step
      EXPECT_EQ(c.next_batch, step - 3);
      EXPECT_EQ(c.bc1, float(1.0 - std::pow(double(cfg.beta1), double(step))));
      EXPECT_EQ(c.bc2, float(1.0 - std::pow(double(cfg.beta2), double(step))));
    }
  }
}

// ---- data ----------------------------------------------------------------------------------------

TEST(DataGpu, GatherNormalizeIsExact) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  const int num = 50, P = 785, B = 37;  // P odd, B*P not a multiple of the block size
  Rng r(5000);
  std::vector<uint8_t> images(size_t(num) * P);  // (num, P)
  for (auto& px : images) px = uint8_t(r.next_u64() & 0xff);
  images[0] = 0;
  images[1] = 255;  // both ends of the pixel range
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
  const int num = 40, P = 29, B = 7;
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
    gpu::begin_step(d_c.data(), cfg, ctx.stream());
    gpu::gather_normalize_batch(d_out.data(), d_lab.data(), d_images.data(), d_labels.data(), d_perm.data(),
                                d_c.data(), B, P, 0.25f, 0.5f, ctx.stream());
    std::vector<float> want(size_t(B) * P);
    std::vector<int32_t> want_lab(B);
    ref::gather_normalize<float>(want.data(), want_lab.data(), images.data(), labels.data(),
                                 perm.data() + batch * B, B, P, 0.25f, 0.5f);
    std::vector<float> got = download(ctx, d_out);
    EXPECT_EQ(0, std::memcmp(want.data(), got.data(), got.size() * sizeof(float)));
    EXPECT_EQ(want_lab, download(ctx, d_lab));
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
