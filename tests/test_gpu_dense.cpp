// GPU-vs-CPU parity of the dense layers through cuBLAS (kernels/dense.cu).
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
  ref::dense_backward_weight<double>(ref_dw.data(), with_bias ? ref_db.data() : nullptr, dyd.data(), xd.data(), N, IN,
                                     OUT);
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
  gpu::dense_backward_weight(d_dw.data(), d_db.data(), d_dy.data(), d_x.data(), 0, IN, OUT, ctx.cublas(), ctx.stream());
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

}  // namespace
}  // namespace barecnn
