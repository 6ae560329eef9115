// GPU-vs-CPU parity of the activation and softmax kernels (kernels/activation.cu).
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

// ---- activations ---------------------------------------------------------------------------------

const Activation kActivations[] = {
    {Act::Identity, 0.f}, {Act::BinaryStep, 0.f}, {Act::Sigmoid, 0.f}, {Act::Tanh, 0.f},     {Act::Arctan, 0.f},
    {Act::Relu, 0.f},     {Act::LeakyRelu, 0.1f}, {Act::Elu, 0.7f},    {Act::Softplus, 0.f},
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
  ref::activation_backward<double>(ref_dx.data(), to_double(dys).data(), to_double(xs).data(), to_double(ys).data(), n,
                                   a);
  DeviceBuffer<float> d_dy = upload(dy), d_yin = upload(y_in), d_dx = upload(std::vector<float>(len, kGuard));
  gpu::activation_backward(d_dx.data() + offset, d_dy.data() + offset, d_x.data() + offset, d_yin.data() + offset, n, a,
                           ctx.stream());
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
  std::vector<float> dy = random_floats(n, seed + 1);            // (N, K)

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
  check_softmax(ctx, 1, 1, 3, 21);  // a single class: y = 1, dinp = 0
  check_softmax(ctx, 3, 10, 3, 22);
  check_softmax(ctx, 257, 10, 3, 23);  // more rows than one block's 4
  check_softmax(ctx, 5, 33, 3, 24);    // K just past one warp
  check_softmax(ctx, 2, 1000, 3, 25);  // many columns per lane
  check_softmax(ctx, 9, 37, 100, 26);  // e^100 overflows float: needs the max subtraction
}

}  // namespace
}  // namespace barecnn
