// Parity of the CUDA pooling kernels (kernels/pool2d.cu) with the double-precision CPU reference
// (host/reference/pool2d.cpp): max pooling (values and argmax mask), average and L2-norm pooling,
// forward and backward, on overlapping windows (stride < k), windows with gaps between them
// (stride > k), sizes that leave the last rows/columns uncovered, rectangular windows, windows as
// large as the input, batch 1 and 257, and 1 / 3 / 16 / 33 channels.
//
// Max pooling runs on tie-free inputs (test_util.h tie_free_vec), so the argmax is unique and the
// mask must match the reference exactly; a separate test checks that ties pick the first index in
// row-major order, as the reference does.
//
// Tolerances. The reference runs in double on the very float values the GPU gets. The max-pool
// forward pass only copies values: exact. Every other result sums at most T = kh*kw terms of
// magnitude <= 1 (a window's inputs, or the dout of the windows that contain a pixel: at most
// ceil(kh/sh)*ceil(kw/sw) <= kh*kw of them; for L2, dout * x / out with |x| <= out). Float
// summation of T such terms errs by at most ~T*u*sum|terms| <= T^2 * 6e-8; atol = 5e-7*T with
// T <= 49 covers it with margin, while one missing or extra term moves a result by ~0.5.
// rtol = 1e-5 covers the rounding of sqrt and of the division in L2 pooling.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

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
using test::pool_shape;

constexpr double kRtol = 1e-5;
double sum_atol(long long terms) { return 5e-7 * double(terms); }

template <typename T>
DeviceBuffer<T> to_device(const std::vector<T>& host) {
  DeviceBuffer<T> b(host.size());
  b.copy_from_host(host.data(), host.size());
  return b;
}
// Outputs start as NaN (or -1 for masks): an element a kernel forgets to write fails the comparison.
DeviceBuffer<float> nan_buffer(long long n) { return to_device(std::vector<float>(size_t(n), NAN)); }

std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// Every pooling op on the GPU and in the reference for one shape.
void check_pool(const Pool2dShape& s, uint64_t seed) {
  SCOPED_TRACE(s.str());
  const long long in_n = s.in_numel(), out_n = s.out_numel();
  const long long window = 1LL * s.kh * s.kw;
  const std::vector<float> inp = test::cast_vec<float>(test::tie_free_vec(size_t(in_n), seed));
  const std::vector<float> dout = test::cast_vec<float>(test::random_vec(size_t(out_n), seed + 1));
  // L2 pooling input: the first (n, c) plane all zero, so its windows have out == 0 and take the
  // zero subgradient (the reference's guard) instead of 0/0.
  std::vector<float> inp_l2 = inp;
  std::fill(inp_l2.begin(), inp_l2.begin() + 1LL * s.H * s.W, 0.f);
  const std::vector<double> inp_d = to_double(inp), dout_d = to_double(dout), inp_l2_d = to_double(inp_l2);

  GpuContext ctx;
  const cudaStream_t st = ctx.stream();
  DeviceBuffer<float> d_inp = to_device(inp), d_dout = to_device(dout), d_inp_l2 = to_device(inp_l2);
  DeviceBuffer<int32_t> d_mask = to_device(std::vector<int32_t>(size_t(out_n), -1));
  DeviceBuffer<float> d_max = nan_buffer(out_n), d_dmax = nan_buffer(in_n), d_avg = nan_buffer(out_n),
                      d_davg = nan_buffer(in_n), d_l2 = nan_buffer(out_n), d_dl2 = nan_buffer(in_n);
  // ctx's stream is blocking (ordered after the legacy default stream the uploads use); the
  // synchronize makes a failed upload show up here rather than in a kernel.
  CUDA_CHECK(cudaDeviceSynchronize());

  gpu::maxpool2d_forward(d_max.data(), d_mask.data(), d_inp.data(), s, st);
  gpu::maxpool2d_backward(d_dmax.data(), d_dout.data(), d_mask.data(), s, st);
  gpu::avgpool2d_forward(d_avg.data(), d_inp.data(), s, st);
  gpu::avgpool2d_backward(d_davg.data(), d_dout.data(), s, st);
  gpu::l2pool2d_forward(d_l2.data(), d_inp_l2.data(), s, st);
  gpu::l2pool2d_backward(d_dl2.data(), d_dout.data(), d_inp_l2.data(), d_l2.data(), s, st);
  ctx.sync();

  // max
  std::vector<double> out(out_n), dinp(in_n);
  std::vector<int32_t> mask(out_n);
  ref::maxpool2d_forward<double>(out.data(), mask.data(), inp_d.data(), s);
  EXPECT_TRUE(all_close(out, d_max.to_host(), 0.0, 0.0)) << "maxpool2d_forward: values";
  EXPECT_EQ(mask, d_mask.to_host()) << "maxpool2d_forward: argmax mask";
  ref::maxpool2d_backward<double>(dinp.data(), dout_d.data(), mask.data(), s);
  EXPECT_TRUE(all_close(dinp, d_dmax.to_host(), sum_atol(window), kRtol)) << "maxpool2d_backward";

  // average
  ref::avgpool2d_forward<double>(out.data(), inp_d.data(), s);
  EXPECT_TRUE(all_close(out, d_avg.to_host(), sum_atol(window), kRtol)) << "avgpool2d_forward";
  ref::avgpool2d_backward<double>(dinp.data(), dout_d.data(), s);
  EXPECT_TRUE(all_close(dinp, d_davg.to_host(), sum_atol(window), kRtol)) << "avgpool2d_backward";

  // L2
  ref::l2pool2d_forward<double>(out.data(), inp_l2_d.data(), s);
  EXPECT_TRUE(all_close(out, d_l2.to_host(), sum_atol(window), kRtol)) << "l2pool2d_forward";
  ref::l2pool2d_backward<double>(dinp.data(), dout_d.data(), inp_l2_d.data(), out.data(), s);
  const std::vector<float> dl2 = d_dl2.to_host();
  EXPECT_TRUE(all_close(dinp, dl2, sum_atol(window), kRtol)) << "l2pool2d_backward";
  for (long long e = 0; e < 1LL * s.H * s.W; ++e)
    ASSERT_EQ(dl2[e], 0.f) << "l2pool2d_backward: all-zero windows must give a zero gradient at " << e;
}

TEST(Pool2dGpu, PaperMaxPool2x2) {
  BARECNN_REQUIRE_GPU();
  check_pool(pool_shape(3, 16, 28, 28, 2, 2, 2), 11);
}

TEST(Pool2dGpu, OverlappingWindowsBatch257) {
  BARECNN_REQUIRE_GPU();
  check_pool(pool_shape(257, 3, 15, 17, 3, 3, 2), 12);  // stride < k: pixels in up to 4 windows
}

TEST(Pool2dGpu, Stride1Batch1OneChannel) {
  BARECNN_REQUIRE_GPU();
  check_pool(pool_shape(1, 1, 9, 10, 3, 3, 1), 13);  // pixels in up to 9 windows
}

TEST(Pool2dGpu, RectangularWindow3x5Stride3) {
  BARECNN_REQUIRE_GPU();
  check_pool(pool_shape(2, 3, 16, 19, 3, 5, 3), 14);  // last row of the input uncovered
}

TEST(Pool2dGpu, GapsBetweenWindows) {
  BARECNN_REQUIRE_GPU();
  check_pool(pool_shape(2, 33, 11, 13, 2, 2, 3), 15);  // stride > k: every third row/col uncovered
}

TEST(Pool2dGpu, WindowEqualsInput) {
  BARECNN_REQUIRE_GPU();
  check_pool(pool_shape(4, 3, 7, 7, 7, 7, 1), 16);  // 1x1 output
  check_pool(pool_shape(4, 3, 7, 9, 7, 9, 2), 17);  // 1x1 output, rectangular
}

TEST(Pool2dGpu, DifferentStridePerAxis) {
  BARECNN_REQUIRE_GPU();
  check_pool(pool_shape(3, 16, 9, 11, 2, 3, 1, 2), 18);
  check_pool(pool_shape(3, 3, 14, 10, 5, 1, 3, 1), 19);
}

TEST(Pool2dGpu, MaxPoolTiesPickTheFirstIndex) {
  BARECNN_REQUIRE_GPU();
  // A constant 4x4 plane, 2x2 windows, stride 2: every window is a tie; the first element of
  // each window (row-major) wins: flat indices 0, 2, 8, 10.
  {
    const Pool2dShape s = pool_shape(1, 1, 4, 4, 2, 2, 2);
    DeviceBuffer<float> inp = to_device(std::vector<float>(16, 0.5f)), out = nan_buffer(4);
    DeviceBuffer<int32_t> mask = to_device(std::vector<int32_t>(4, -1));
    gpu::maxpool2d_forward(out.data(), mask.data(), inp.data(), s, 0);
    EXPECT_EQ(mask.to_host(), (std::vector<int32_t>{0, 2, 8, 10}));
    EXPECT_EQ(out.to_host(), (std::vector<float>{0.5f, 0.5f, 0.5f, 0.5f}));
  }
  // Many ties (values from {0, 1, 2}) on overlapping windows: the same mask as the reference.
  const Pool2dShape s = pool_shape(2, 3, 11, 12, 3, 3, 2);
  std::vector<double> v = test::random_vec(size_t(s.in_numel()), 21, 0, 3);
  for (double& x : v) x = std::floor(x);
  std::vector<double> out(s.out_numel());
  std::vector<int32_t> mask(s.out_numel());
  ref::maxpool2d_forward<double>(out.data(), mask.data(), v.data(), s);
  DeviceBuffer<float> d_inp = to_device(test::cast_vec<float>(v)), d_out = nan_buffer(s.out_numel());
  DeviceBuffer<int32_t> d_mask = to_device(std::vector<int32_t>(size_t(s.out_numel()), -1));
  gpu::maxpool2d_forward(d_out.data(), d_mask.data(), d_inp.data(), s, 0);
  EXPECT_EQ(mask, d_mask.to_host());
  EXPECT_TRUE(all_close(out, d_out.to_host(), 0.0, 0.0));
}

TEST(Pool2dGpu, RejectsAnOutputSizeThatDoesNotFollowTheGeometry) {
  BARECNN_REQUIRE_GPU();
  Pool2dShape s = pool_shape(1, 1, 8, 8, 2, 2, 2);
  s.OH += 1;
  DeviceBuffer<float> inp(64), out(64);
  EXPECT_THROW(gpu::avgpool2d_forward(out.data(), inp.data(), s, 0), Error);
}

}  // namespace
}  // namespace barecnn
