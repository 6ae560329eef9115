// Parity of the CUDA convolution kernels (kernels/conv2d.cu) with the double-precision CPU
// reference (host/reference/conv2d.cpp), for the three implementation levels (ConvImpl::Simple,
// ::Tiled and ::Fast, whose implicit-GEMM kernels take the shapes with a reduction of 16+ taps),
// on shapes that do not divide the tiles (8x8 / 16x16 pixels, 8 / 16 channels; the GEMM's 32 /
// 64 output channels, 64 / 128 columns and 16 taps a step),
// batch 1 and 257, channel counts 1 / 3 / 16 / 33, stride 1 / 2 / 3, padding 0 / 1 / 2, kernels
// 1 / 3 / 5 / 7 / 3x5, kernels as large as the input, and shapes that force the fast path to fall
// back. The weight gradient is also checked for bitwise determinism, and the fused ReLU
// (fuse_relu / relu_out) for bitwise equality with the unfused chain (see "fused ReLU" below).
//
// Tolerances. The reference runs in double on the very float values the GPU gets, so the only
// difference is float rounding of the accumulation. Each output sums T products of values in
// [-1, 1] (T = C*kh*kw for the forward pass, K*kh*kw for the input gradient, N*OH*OW for the
// weight and bias gradients). Recursive float summation of T terms of rms ~1/3 with random signs
// has an error of standard deviation ~ u*T/(3*sqrt(6)) ~ 8e-9*T (u = 2^-24; partial sums grow as
// sqrt(t)); the fast kernels sum in shorter runs and err less. atol = 5e-7*T is ~60 standard
// deviations of that, while a missing, doubled or misplaced tap moves a result by ~|x*w| ~ 0.25,
// far more than atol for every T used here (the largest, N*OH*OW = 257*28*28 in the fused-ReLU
// checks, gives atol 0.1, while a dbias entry sums ~1e5 such terms).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <sstream>
#include <vector>

#include "barecnn/activation.h"
#include "barecnn/cuda_check.h"
#include "barecnn/device_buffer.h"
#include "barecnn/error.h"
#include "barecnn/gpu.h"
#include "barecnn/gpu_ops.h"
#include "barecnn/ref_ops.h"
#include "barecnn/shape.h"
#include "test_gpu.h"
#include "test_util.h"

namespace barecnn {
namespace {

using test::all_close;
using test::conv_shape;

constexpr double kRtol = 1e-5;
double sum_atol(long long terms) { return 5e-7 * double(terms); }

constexpr gpu::ConvImpl kImpls[] = {gpu::ConvImpl::Simple, gpu::ConvImpl::Tiled, gpu::ConvImpl::Fast};
const char* impl_name(gpu::ConvImpl impl) {
  return impl == gpu::ConvImpl::Simple ? "simple" : impl == gpu::ConvImpl::Tiled ? "tiled" : "fast";
}

// Random values in [-1, 1) as float, and the same values in double for the reference.
struct Values {
  std::vector<float> f;
  std::vector<double> d;
};
Values random_values(long long n, uint64_t seed) {
  Values v;
  v.f = test::cast_vec<float>(test::random_vec(size_t(n), seed));
  v.d.assign(v.f.begin(), v.f.end());
  return v;
}

// A device buffer holding `host`, or NaN everywhere (outputs: an element a kernel forgets to
// write then fails the comparison instead of passing as a lucky zero).
DeviceBuffer<float> to_device(const std::vector<float>& host) {
  DeviceBuffer<float> b(host.size());
  b.copy_from_host(host.data(), host.size());
  return b;
}
DeviceBuffer<float> nan_buffer(long long n) { return to_device(std::vector<float>(size_t(n), NAN)); }

struct ConvInputs {
  Values inp, weight, bias, dout;
};
ConvInputs make_inputs(const Conv2dShape& s, uint64_t seed) {
  return {random_values(s.in_numel(), seed), random_values(s.weight_numel(), seed + 1), random_values(s.K, seed + 2),
          random_values(s.out_numel(), seed + 3)};
}

struct ConvOutputs {
  std::vector<float> out, dinp, dweight, dbias;  // (N,K,OH,OW) (N,C,H,W) (K,C,kh,kw) (K)
};

// All three ops on the GPU with the given implementation, on a stream of their own.
ConvOutputs run_gpu(const Conv2dShape& s, const ConvInputs& x, gpu::ConvImpl impl, bool with_bias) {
  GpuContext ctx;
  DeviceBuffer<float> inp = to_device(x.inp.f), weight = to_device(x.weight.f), bias = to_device(x.bias.f),
                      dout = to_device(x.dout.f);
  DeviceBuffer<float> out = nan_buffer(s.out_numel()), dinp = nan_buffer(s.in_numel()),
                      dweight = nan_buffer(s.weight_numel()), dbias = nan_buffer(s.K);
  DeviceBuffer<float> workspace(gpu::conv2d_backward_weight_workspace(s), "conv workspace");
  // ctx's stream is blocking (ordered after the legacy default stream the uploads use); the
  // synchronize makes a failed upload show up here rather than in a kernel.
  CUDA_CHECK(cudaDeviceSynchronize());
  gpu::conv2d_forward(out.data(), inp.data(), weight.data(), with_bias ? bias.data() : nullptr, s, impl, ctx.stream());
  gpu::conv2d_backward_input(dinp.data(), dout.data(), weight.data(), s, impl, ctx.stream());
  gpu::conv2d_backward_weight(dweight.data(), with_bias ? dbias.data() : nullptr, dout.data(), inp.data(), s,
                              workspace.data(), impl, ctx.stream());
  ctx.sync();
  return {out.to_host(), dinp.to_host(), dweight.to_host(), with_bias ? dbias.to_host() : std::vector<float>()};
}

// Every implementation against the reference, for one shape.
void check_conv(const Conv2dShape& s, uint64_t seed, bool with_bias = true) {
  SCOPED_TRACE(s.str());
  const ConvInputs x = make_inputs(s, seed);
  std::vector<double> out(s.out_numel()), dinp(s.in_numel()), dweight(s.weight_numel()), dbias(s.K);
  ref::conv2d_forward<double>(out.data(), x.inp.d.data(), x.weight.d.data(), with_bias ? x.bias.d.data() : nullptr, s);
  ref::conv2d_backward_input<double>(dinp.data(), x.dout.d.data(), x.weight.d.data(), s);
  ref::conv2d_backward_weight<double>(dweight.data(), with_bias ? dbias.data() : nullptr, x.dout.d.data(),
                                      x.inp.d.data(), s);
  const long long fwd_terms = 1LL * s.C * s.kh * s.kw + 1;  // + the bias
  const long long dinp_terms = 1LL * s.K * s.kh * s.kw;
  const long long dw_terms = 1LL * s.N * s.OH * s.OW;
  for (gpu::ConvImpl impl : kImpls) {
    SCOPED_TRACE(impl_name(impl));
    const ConvOutputs g = run_gpu(s, x, impl, with_bias);
    EXPECT_TRUE(all_close(out, g.out, sum_atol(fwd_terms), kRtol)) << "conv2d_forward";
    EXPECT_TRUE(all_close(dinp, g.dinp, sum_atol(dinp_terms), kRtol)) << "conv2d_backward_input";
    EXPECT_TRUE(all_close(dweight, g.dweight, sum_atol(dw_terms), kRtol)) << "conv2d_backward_weight: dweight";
    if (with_bias) {
      EXPECT_TRUE(all_close(dbias, g.dbias, sum_atol(dw_terms), kRtol)) << "conv2d_backward_weight: dbias";
    }
  }
}

// ---- the C == 1 fast path (grayscale first layer) ------------------------------------------------

TEST(Conv2dGpu, PaperFirstLayerOneChannel) {
  BARECNN_REQUIRE_GPU();
  check_conv(conv_shape(7, 1, 28, 28, 32, 5, 5, 1, 2), 101);  // 28 = 16 + 12: a partial tile
}

TEST(Conv2dGpu, OneChannelSmallMapStride2) {
  BARECNN_REQUIRE_GPU();
  check_conv(conv_shape(1, 1, 13, 9, 5, 3, 3, 2, 1), 102);  // 7x5 output: 8x8 tiles, K < 16
}

TEST(Conv2dGpu, OneChannelKernel7Stride3Batch257) {
  BARECNN_REQUIRE_GPU();
  check_conv(conv_shape(257, 1, 20, 17, 17, 7, 7, 3, 2), 103);  // K = 17: two groups of 16, one partial
}

// ---- the general tiled path ----------------------------------------------------------------------

TEST(Conv2dGpu, ThreeChannelsOddMapBatch1) {
  BARECNN_REQUIRE_GPU();
  check_conv(conv_shape(1, 3, 37, 29, 5, 3, 3, 1, 1), 201);  // 16x16 tiles, 3 partial tiles per axis
}

TEST(Conv2dGpu, Batch257Stride2) {
  BARECNN_REQUIRE_GPU();
  check_conv(conv_shape(257, 3, 13, 11, 16, 3, 3, 2, 1), 202);
}

TEST(Conv2dGpu, SixteenChannelsKernel5Stride3Pad2) {
  BARECNN_REQUIRE_GPU();
  check_conv(conv_shape(3, 16, 17, 19, 33, 5, 5, 3, 2), 203);  // K = 33: 3 groups of 16, one of 1 channel
}

TEST(Conv2dGpu, ThirtyThreeChannelsKernel7NoPadding) {
  BARECNN_REQUIRE_GPU();
  check_conv(conv_shape(2, 33, 9, 10, 7, 7, 7, 1, 0), 204);
}

TEST(Conv2dGpu, Kernel1Stride2) {
  BARECNN_REQUIRE_GPU();
  check_conv(conv_shape(2, 33, 12, 12, 4, 1, 1, 2, 0), 205);
}

TEST(Conv2dGpu, Kernel1Stride3PaddingWiderThanKernel) {
  BARECNN_REQUIRE_GPU();
  // The border outputs read nothing but padding: out = bias there, and no gradient flows.
  check_conv(conv_shape(3, 3, 10, 11, 2, 1, 1, 3, 2), 206);
}

TEST(Conv2dGpu, RectangularKernel3x5) {
  BARECNN_REQUIRE_GPU();
  check_conv(conv_shape(4, 3, 15, 16, 6, 3, 5, 1, 2), 207);  // 17x16 output, 15x16 input
}

TEST(Conv2dGpu, DifferentStrideAndPaddingPerAxis) {
  BARECNN_REQUIRE_GPU();
  check_conv(conv_shape(3, 2, 11, 14, 3, 3, 4, 2, 3, 1, 2), 208);
}

TEST(Conv2dGpu, LargeMapSeveralChannelGroups) {
  BARECNN_REQUIRE_GPU();
  // 16x16 tiles on both passes; K = 20 and C = 16 span several channel groups of 8.
  check_conv(conv_shape(2, 16, 40, 35, 20, 3, 3, 1, 1), 209);
}

TEST(Conv2dGpu, LargeMapStride2) {
  BARECNN_REQUIRE_GPU();
  check_conv(conv_shape(2, 3, 33, 34, 8, 3, 3, 2, 0), 210);  // 16x16 output, 33x34 input: 16x16 tiles
}

TEST(Conv2dGpu, LargeMapKernel7Stride3) {
  BARECNN_REQUIRE_GPU();
  check_conv(conv_shape(1, 4, 50, 47, 3, 7, 7, 3, 2), 211);  // 16x15 output: 8x8 forward tiles
}

TEST(Conv2dGpu, KernelEqualsInput) {
  BARECNN_REQUIRE_GPU();
  check_conv(conv_shape(5, 3, 7, 7, 9, 7, 7, 1, 0), 212);      // 1x1 output
  check_conv(conv_shape(5, 3, 7, 7, 9, 7, 7, 1, 1), 213);      // 3x3 output
  check_conv(conv_shape(2, 1, 20, 20, 4, 20, 20, 1, 0), 214);  // C == 1 path, 1x1 output
}

TEST(Conv2dGpu, WithoutBias) {
  BARECNN_REQUIRE_GPU();
  check_conv(conv_shape(3, 16, 17, 19, 10, 3, 3, 1, 1), 215, /*with_bias=*/false);
  check_conv(conv_shape(3, 1, 17, 19, 10, 3, 3, 1, 1), 216, /*with_bias=*/false);
}

// ---- shapes outside the fast kernels' limits: the dispatcher must fall back, still correct ------

TEST(Conv2dGpu, FallsBackWhenTilesExceedSharedMemory) {
  BARECNN_REQUIRE_GPU();
  // A 60x60 filter: the forward and input-gradient tiles need more than 48 KB of shared memory;
  // the weight gradient still runs its fast kernel, one kernel row per pass (60 passes).
  check_conv(conv_shape(2, 1, 60, 60, 3, 60, 60, 1, 0), 301);
  check_conv(conv_shape(2, 2, 60, 60, 3, 60, 60, 1, 1), 302);
}

TEST(Conv2dGpu, FallsBackForVeryWideKernelRows) {
  BARECNN_REQUIRE_GPU();
  // kw = 70 > 64 taps per pass: the tiled level's weight gradient falls back to the simple kernel
  // (ConvImpl::Fast runs the GEMM one, whose table holds one tile of 64 taps at a time).
  const Conv2dShape s = conv_shape(2, 2, 3, 72, 2, 1, 70, 1, 0);
  EXPECT_TRUE(gpu::conv2d_uses_gemm(s, gpu::ConvOp::BackwardWeight));
  check_conv(s, 303);
}

// ---- the implicit-GEMM level (ConvImpl::Fast where the reduction has 16+ taps) --------------------

TEST(Conv2dGpu, ImplicitGemmTakesTheDeepNetShapesAndNotTheOthers) {
  BARECNN_REQUIRE_GPU();
  using gpu::ConvOp;
  const Conv2dShape deep2 = conv_shape(64, 32, 28, 28, 32, 3, 3, 1, 1),
                    deep4 = conv_shape(64, 64, 14, 14, 64, 3, 3, 1, 1);
  for (ConvOp op : {ConvOp::Forward, ConvOp::BackwardInput, ConvOp::BackwardWeight}) {
    EXPECT_TRUE(gpu::conv2d_uses_gemm(deep2, op));
    EXPECT_TRUE(gpu::conv2d_uses_gemm(deep4, op));
  }
  // One input channel: the forward pass stays on the C = 1 kernel; 3x3 over one channel is 9 taps.
  const Conv2dShape paper1 = conv_shape(64, 1, 28, 28, 32, 5, 5, 1, 2),
                    deep1 = conv_shape(64, 1, 28, 28, 32, 3, 3, 1, 1);
  EXPECT_FALSE(gpu::conv2d_uses_gemm(paper1, ConvOp::Forward));
  EXPECT_TRUE(gpu::conv2d_uses_gemm(paper1, ConvOp::BackwardWeight));  // 25 taps
  EXPECT_FALSE(gpu::conv2d_uses_gemm(deep1, ConvOp::BackwardWeight));
  // The input gradient as a GEMM needs stride 1; the table at most 2048 taps.
  EXPECT_FALSE(gpu::conv2d_uses_gemm(conv_shape(2, 16, 13, 13, 16, 3, 3, 2, 1), ConvOp::BackwardInput));
  EXPECT_FALSE(gpu::conv2d_uses_gemm(conv_shape(1, 300, 9, 9, 4, 3, 3, 1, 1), ConvOp::Forward));  // 2700 taps
}

TEST(Conv2dGpu, ImplicitGemmDeepNetShapes) {
  BARECNN_REQUIRE_GPU();
  const int n = test::kThreadSanitizer ? 1 : 3;
  check_conv(conv_shape(n, 32, 28, 28, 32, 3, 3, 1, 1), 601);  // 32 x 128 tiles; 28*28*n columns
  check_conv(conv_shape(n, 32, 14, 14, 64, 3, 3, 1, 1), 602);  // 64 x 64 tiles
  check_conv(conv_shape(n, 64, 14, 14, 64, 3, 3, 1, 1), 603);
}

TEST(Conv2dGpu, ImplicitGemmPartialTilesEverywhere) {
  BARECNN_REQUIRE_GPU();
  // K = 33 and C = 65 (a second, nearly empty row tile on the forward pass and the input gradient),
  // 45 / 297 taps (not a multiple of 16 or 64), odd maps (columns not a multiple of 64 or 128).
  check_conv(conv_shape(2, 5, 11, 9, 33, 3, 3, 1, 1), 611);
  check_conv(conv_shape(3, 33, 7, 9, 65, 3, 3, 1, 0), 612);
  check_conv(conv_shape(2, 65, 5, 6, 7, 3, 3, 1, 2), 613, /*with_bias=*/false);
}

TEST(Conv2dGpu, ImplicitGemmStridesPaddingsAndKernels) {
  BARECNN_REQUIRE_GPU();
  check_conv(conv_shape(3, 4, 15, 16, 6, 3, 5, 1, 2), 621);        // 3x5 kernel: 60 taps
  check_conv(conv_shape(2, 3, 11, 14, 5, 3, 4, 2, 1, 1, 2), 622);  // stride 2 x 1: the input gradient tiled
  check_conv(conv_shape(2, 16, 6, 7, 20, 1, 1, 1, 2), 623);        // 1x1, padding 2 > kh - 1: padding -2
  check_conv(conv_shape(2, 16, 12, 13, 20, 5, 5, 2, 2), 624);      // stride 2
  check_conv(conv_shape(2, 2, 20, 20, 3, 20, 20, 1, 3), 625);      // 800 taps, 7x7 output
}

// ---- fused ReLU (conv2d_forward's fuse_relu, the backward ops' relu_out) -------------------------
//
// The fused kernels promise the very floats of the chain they replace, so they are checked twice:
//   (1) bitwise against that chain on the GPU: conv2d_forward then activation_forward(Relu) for the
//       forward pass; activation_backward(Relu) then the unfused conv backward for dinp, dweight and
//       dbias. Same sums in the same order, the same ReLU expressions (activation.h): not one ulp
//       may differ;
//   (2) against the double reference with a double ReLU in between, with the tolerances above (so
//       a mistake that both GPU chains share is still caught).
// The inputs are symmetric around 0, so about half of the pre-activations are negative; each check
// asserts that share, so the ReLU masks a large part of the gradient. A mask missing anywhere (the
// bias partials of the two-stage weight gradient included) then leaves ~N*OH*OW/2 unmasked terms
// in dbias, which fails both (1) and (2) by orders of magnitude more than the tolerance.

// Every element of a and b has the same bits (memcmp), with the first differences on failure.
::testing::AssertionResult bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "size " << a.size() << " != " << b.size();
  size_t bad = 0;
  std::ostringstream first;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) {
      if (bad < 5) first << "\n  [" << i << "] " << std::hexfloat << a[i] << " vs " << b[i] << std::defaultfloat;
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << a.size() << " elements differ bitwise:" << first.str();
}

struct ReluChains {
  // fused: y = conv2d_forward(fuse_relu); the backward ops with relu_out = y
  std::vector<float> out, dinp, dweight, dbias;
  // unfused: pre = conv2d_forward; y = activation_forward(pre); g = activation_backward(dout, pre, y);
  // the unfused backward ops on g
  std::vector<float> pre, u_out, u_dinp, u_dweight, u_dbias;
};

// Both chains on the GPU with the given implementation, on one stream.
ReluChains run_relu_chains(const Conv2dShape& s, const ConvInputs& x, gpu::ConvImpl impl, bool with_bias) {
  GpuContext ctx;
  cudaStream_t st = ctx.stream();
  const Activation relu{Act::Relu, 0.f};
  DeviceBuffer<float> inp = to_device(x.inp.f), weight = to_device(x.weight.f), bias = to_device(x.bias.f),
                      dout = to_device(x.dout.f);
  DeviceBuffer<float> workspace(gpu::conv2d_backward_weight_workspace(s), "conv workspace");
  const float* b = with_bias ? bias.data() : nullptr;
  // fused
  DeviceBuffer<float> out = nan_buffer(s.out_numel()), dinp = nan_buffer(s.in_numel()),
                      dweight = nan_buffer(s.weight_numel()), dbias = nan_buffer(s.K);
  // unfused
  DeviceBuffer<float> pre = nan_buffer(s.out_numel()), u_out = nan_buffer(s.out_numel()), g = nan_buffer(s.out_numel()),
                      u_dinp = nan_buffer(s.in_numel()), u_dweight = nan_buffer(s.weight_numel()),
                      u_dbias = nan_buffer(s.K);
  CUDA_CHECK(cudaDeviceSynchronize());  // the pageable uploads land before the stream starts

  gpu::conv2d_forward(out.data(), inp.data(), weight.data(), b, s, impl, st, /*fuse_relu=*/true);
  gpu::conv2d_backward_input(dinp.data(), dout.data(), weight.data(), s, impl, st, /*relu_out=*/out.data());
  gpu::conv2d_backward_weight(dweight.data(), with_bias ? dbias.data() : nullptr, dout.data(), inp.data(), s,
                              workspace.data(), impl, st, /*relu_out=*/out.data());

  gpu::conv2d_forward(pre.data(), inp.data(), weight.data(), b, s, impl, st);
  gpu::activation_forward(u_out.data(), pre.data(), s.out_numel(), relu, st);
  gpu::activation_backward(g.data(), dout.data(), pre.data(), u_out.data(), s.out_numel(), relu, st);
  gpu::conv2d_backward_input(u_dinp.data(), g.data(), weight.data(), s, impl, st);
  gpu::conv2d_backward_weight(u_dweight.data(), with_bias ? u_dbias.data() : nullptr, g.data(), inp.data(), s,
                              workspace.data(), impl, st);
  ctx.sync();

  ReluChains r;
  r.out = out.to_host();
  r.dinp = dinp.to_host();
  r.dweight = dweight.to_host();
  r.pre = pre.to_host();
  r.u_out = u_out.to_host();
  r.u_dinp = u_dinp.to_host();
  r.u_dweight = u_dweight.to_host();
  if (with_bias) {
    r.dbias = dbias.to_host();
    r.u_dbias = u_dbias.to_host();
  }
  return r;
}

// The fused chain, for both implementations, bitwise against the unfused chain and within
// tolerance of the double reference.
void check_conv_relu(const Conv2dShape& s, uint64_t seed, bool with_bias = true) {
  SCOPED_TRACE(s.str());
  const ConvInputs x = make_inputs(s, seed);
  const long long fwd_terms = 1LL * s.C * s.kh * s.kw + 1;
  const long long dinp_terms = 1LL * s.K * s.kh * s.kw;
  const long long dw_terms = 1LL * s.N * s.OH * s.OW;

  // Double reference of the forward pass: pre-activation x, y = relu(x).
  std::vector<double> pre(s.out_numel()), out(s.out_numel());
  ref::conv2d_forward<double>(pre.data(), x.inp.d.data(), x.weight.d.data(), with_bias ? x.bias.d.data() : nullptr, s);
  long long negative = 0;
  for (size_t i = 0; i < pre.size(); ++i) {
    out[i] = pre[i] > 0 ? pre[i] : 0.0;
    negative += pre[i] < 0;
  }
  // The test data must exercise the mask: a healthy share of the outputs on each side of 0.
  const double neg_share = double(negative) / double(pre.size());
  ASSERT_GT(neg_share, 0.25) << "test data: too few negative pre-activations";
  ASSERT_LT(neg_share, 0.75) << "test data: too few positive pre-activations";

  for (gpu::ConvImpl impl : kImpls) {
    SCOPED_TRACE(impl_name(impl));
    const ReluChains r = run_relu_chains(s, x, impl, with_bias);

    // (1) bitwise equal to the unfused chain
    EXPECT_TRUE(bitwise_equal(r.out, r.u_out)) << "conv2d_forward(fuse_relu) vs conv2d_forward + activation_forward";
    EXPECT_TRUE(bitwise_equal(r.dinp, r.u_dinp)) << "conv2d_backward_input(relu_out) vs activation_backward + "
                                                    "conv2d_backward_input";
    EXPECT_TRUE(bitwise_equal(r.dweight, r.u_dweight)) << "conv2d_backward_weight(relu_out): dweight";
    EXPECT_TRUE(bitwise_equal(r.dbias, r.u_dbias)) << "conv2d_backward_weight(relu_out): dbias";

    // (2) the double reference with a double ReLU in between. Its derivative is taken at the
    // double pre-activation, except within the forward tolerance of 0: there float rounding may put
    // the GPU's pre-activation on the other side of the kink (no input is "away from the kink" for
    // every output of a batch of 257), and the reference follows the side the GPU took (y > 0), as
    // the GPU's own chain does. Such outputs are rare, and the forward check bounds y there anyway.
    EXPECT_TRUE(all_close(out, r.out, sum_atol(fwd_terms), kRtol)) << "conv2d_forward(fuse_relu)";
    EXPECT_TRUE(all_close(pre, r.pre, sum_atol(fwd_terms), kRtol)) << "conv2d_forward (the unfused chain)";
    std::vector<double> g(s.out_numel());
    for (size_t i = 0; i < g.size(); ++i) {
      const bool active = std::fabs(pre[i]) > sum_atol(fwd_terms) ? pre[i] > 0 : r.out[i] > 0.f;
      g[i] = active ? x.dout.d[i] : 0.0;
    }
    std::vector<double> dinp(s.in_numel()), dweight(s.weight_numel()), dbias(s.K);
    ref::conv2d_backward_input<double>(dinp.data(), g.data(), x.weight.d.data(), s);
    ref::conv2d_backward_weight<double>(dweight.data(), with_bias ? dbias.data() : nullptr, g.data(), x.inp.d.data(),
                                        s);
    EXPECT_TRUE(all_close(dinp, r.dinp, sum_atol(dinp_terms), kRtol)) << "conv2d_backward_input(relu_out)";
    EXPECT_TRUE(all_close(dweight, r.dweight, sum_atol(dw_terms), kRtol))
        << "conv2d_backward_weight(relu_out): dweight";
    if (with_bias) {
      EXPECT_TRUE(all_close(dbias, r.dbias, sum_atol(dw_terms), kRtol)) << "conv2d_backward_weight(relu_out): dbias";
    }
  }
}

TEST(Conv2dReluGpu, PaperFirstLayerBatch3) {
  BARECNN_REQUIRE_GPU();
  check_conv_relu(conv_shape(3, 1, 28, 28, 32, 5, 5, 1, 2), 501);  // C = 1 fast path, 16x16 tiles
}

TEST(Conv2dReluGpu, PaperFirstLayerBatch257) {
  BARECNN_REQUIRE_GPU();
  // Many chunks in the two-stage weight gradient (64); 257*28*28 terms per dbias entry. Under
  // TSan batch 33: still 51 chunks, the last one short.
  check_conv_relu(conv_shape(test::kThreadSanitizer ? 33 : 257, 1, 28, 28, 32, 5, 5, 1, 2), 502);
}

TEST(Conv2dReluGpu, ThreeChannelsStride2OddMap) {
  BARECNN_REQUIRE_GPU();
  check_conv_relu(conv_shape(4, 3, 33, 35, 5, 3, 3, 2, 1), 503);  // 17x18 output: 16x16 tiles, partial
  check_conv_relu(conv_shape(2, 3, 13, 11, 5, 3, 3, 2, 1), 504);  // 7x6 output: 8x8 tiles
}

TEST(Conv2dReluGpu, SixteenChannelsKernel5NoPadding) {
  BARECNN_REQUIRE_GPU();
  check_conv_relu(conv_shape(2, 16, 14, 13, 8, 5, 5, 1, 0), 505);  // 10x9 output, K = 8 < 16 per group
  check_conv_relu(conv_shape(2, 16, 14, 13, 8, 5, 5, 1, 0), 506, /*with_bias=*/false);
}

TEST(Conv2dReluGpu, ImplicitGemmShapes) {
  BARECNN_REQUIRE_GPU();
  check_conv_relu(conv_shape(2, 32, 14, 14, 40, 3, 3, 1, 1), 509);  // 64 x 64 tiles, K = 40
  check_conv_relu(conv_shape(3, 16, 9, 11, 32, 3, 3, 1, 1), 510, /*with_bias=*/false);
}

TEST(Conv2dReluGpu, FastPathFallsBack) {
  BARECNN_REQUIRE_GPU();
  // 65x65 filters: the forward and input-gradient tiles exceed 48 KB of shared memory and
  // kw = 65 > 64 taps per pass, so under ConvImpl::Tiled all three ops run the simple kernels
  // (Fast: 8450 taps, too many for the GEMM's table on the forward pass and the input gradient;
  // the GEMM weight gradient runs).
  const Conv2dShape s = conv_shape(2, 2, 71, 69, 3, 65, 65, 1, 1);
  EXPECT_FALSE(gpu::conv2d_uses_gemm(s, gpu::ConvOp::Forward));
  check_conv_relu(s, 507);
  // C = 1 with 500 filters: the C = 1 kernel would stage all of them (52 KB of shared memory with
  // the input tile), so the forward pass falls back to the general tiled kernel.
  check_conv_relu(conv_shape(2, 1, 18, 18, 500, 5, 5, 1, 2), 508);
}

// ---- determinism and preconditions ---------------------------------------------------------------

TEST(Conv2dGpu, WeightGradientIsBitwiseDeterministic) {
  BARECNN_REQUIRE_GPU();
  // Batch 257: the tiled and GEMM weight gradients cut the (n, oh, ow) sum into many chunks.
  const Conv2dShape s = conv_shape(257, 3, 13, 11, 16, 3, 3, 1, 1);
  ASSERT_TRUE(gpu::conv2d_uses_gemm(s, gpu::ConvOp::BackwardWeight));
  const ConvInputs x = make_inputs(s, 401);
  for (gpu::ConvImpl impl : kImpls) {
    SCOPED_TRACE(impl_name(impl));
    const ConvOutputs a = run_gpu(s, x, impl, true), b = run_gpu(s, x, impl, true);
    ASSERT_EQ(a.dweight.size(), b.dweight.size());
    ASSERT_EQ(a.dbias.size(), b.dbias.size());
    EXPECT_EQ(std::memcmp(a.dweight.data(), b.dweight.data(), a.dweight.size() * sizeof(float)), 0) << "dweight";
    EXPECT_EQ(std::memcmp(a.dbias.data(), b.dbias.data(), a.dbias.size() * sizeof(float)), 0) << "dbias";
    EXPECT_EQ(std::memcmp(a.out.data(), b.out.data(), a.out.size() * sizeof(float)), 0) << "out";
    EXPECT_EQ(std::memcmp(a.dinp.data(), b.dinp.data(), a.dinp.size() * sizeof(float)), 0) << "dinp";
  }
}

TEST(Conv2dGpu, FastWeightGradientNeedsItsWorkspace) {
  BARECNN_REQUIRE_GPU();
  const Conv2dShape s = conv_shape(2, 3, 9, 9, 4, 3, 3, 1, 1);
  ASSERT_GT(gpu::conv2d_backward_weight_workspace(s), 0u);
  DeviceBuffer<float> inp(s.in_numel()), dout(s.out_numel()), dweight(s.weight_numel());
  EXPECT_THROW(
      gpu::conv2d_backward_weight(dweight.data(), nullptr, dout.data(), inp.data(), s, nullptr, gpu::ConvImpl::Fast, 0),
      Error);
}

TEST(Conv2dGpu, RejectsAnOutputSizeThatDoesNotFollowTheGeometry) {
  BARECNN_REQUIRE_GPU();
  Conv2dShape s = conv_shape(1, 1, 8, 8, 1, 3, 3, 1, 0);
  s.OW += 1;
  DeviceBuffer<float> inp(s.in_numel()), weight(s.weight_numel()), out(64);
  for (gpu::ConvImpl impl : kImpls)
    EXPECT_THROW(gpu::conv2d_forward(out.data(), inp.data(), weight.data(), nullptr, s, impl, 0), Error)
        << impl_name(impl);
}

}  // namespace
}  // namespace barecnn
