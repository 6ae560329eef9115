// GPU-vs-CPU parity of batch normalization and dropout (kernels/norm.cu).
//
// Batch normalization: the kernels get float inputs, the DOUBLE reference the same values; the
// kernels sum in float over a channel's M = N*S values, so the sums (the statistics, dgamma,
// dbeta) are held to atol = 4 * M * 1e-6 (the float roundoff u ~ 6e-8 times the M terms, of
// magnitude <= ~5 here, with a margin), the normalized outputs to 2e-5 absolute (after the sums:
// |x - mean| * invstd is O(3)). Outputs are pre-filled with NaN so an unwritten element fails.
// Dropout: the mask is integer math on the same draws on both devices and the kept values are
// one float multiply, so the GPU's output is the CPU float reference's bit for bit.
//
// All tests skip where no GPU works (BARECNN_REQUIRE_GPU).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "barecnn/gpu.h"
#include "barecnn/gpu_ops.h"
#include "barecnn/norm.h"
#include "barecnn/ref_ops.h"
#include "test_gpu.h"
#include "test_util.h"

namespace barecnn {
namespace {

using namespace test;

struct BnShape {
  int N, C, S;
};
// A flat one (S = 1, BatchNorm1d), odd image-like ones, one with more values per channel than a
// block has threads (each thread sums several), a single sample.
const BnShape kShapes[] = {{7, 13, 1}, {3, 5, 7}, {16, 3, 49}, {1, 2, 300}};

void check_batchnorm(const GpuContext& ctx, const BnShape& b, uint64_t seed) {
  SCOPED_TRACE(fmt("N=", b.N, " C=", b.C, " S=", b.S));
  const size_t n = size_t(b.N) * b.C * b.S;
  const double M = double(b.N) * b.S;
  const std::vector<float> x = random_floats(n, seed, -3, 5), g = random_floats(b.C, seed + 1, 0.5, 2),
                           be = random_floats(b.C, seed + 2), dy = random_floats(n, seed + 3);
  std::vector<float> running = random_floats(batchnorm_buffer_count(b.C), seed + 4, 0.5, 1.5);
  running[2 * b.C] = 41;
  // the reference, in double on the same values
  std::vector<double> y(n), mean(b.C), invstd(b.C), rr = to_double(running), dx(n), dg(b.C), db(b.C), ye(n);
  ref::batchnorm_forward_train(y.data(), mean.data(), invstd.data(), rr.data(), to_double(x).data(),
                               to_double(g).data(), to_double(be).data(), b.N, b.C, b.S);
  ref::batchnorm_backward(dx.data(), dg.data(), db.data(), to_double(dy).data(), to_double(x).data(),
                          to_double(g).data(), mean.data(), invstd.data(), b.N, b.C, b.S);
  // the kernels
  auto d_x = upload(x), d_g = upload(g), d_b = upload(be), d_dy = upload(dy), d_run = upload(running);
  auto d_y = upload(std::vector<float>(n, kNaN)), d_stats = upload(std::vector<float>(2 * b.C, kNaN));
  auto d_dx = upload(std::vector<float>(n, kNaN)), d_dgb = upload(std::vector<float>(2 * b.C, kNaN));
  gpu::batchnorm_forward_train(d_y.data(), d_stats.data(), d_stats.data() + b.C, d_run.data(), d_x.data(), d_g.data(),
                               d_b.data(), b.N, b.C, b.S, ctx.stream());
  gpu::batchnorm_backward(d_dx.data(), d_dgb.data(), d_dgb.data() + b.C, d_dy.data(), d_x.data(), d_g.data(),
                          d_stats.data(), d_stats.data() + b.C, b.N, b.C, b.S, ctx.stream());
  const double sums = 4 * M * 1e-6;
  const std::vector<float> stats = download(ctx, d_stats), gy = download(ctx, d_y), grun = download(ctx, d_run),
                           gdx = download(ctx, d_dx), gdgb = download(ctx, d_dgb);
  EXPECT_TRUE(all_close(mean, std::vector<float>(stats.begin(), stats.begin() + b.C), sums, 1e-5)) << "mean";
  EXPECT_TRUE(all_close(invstd, std::vector<float>(stats.begin() + b.C, stats.end()), 1e-5, 1e-4)) << "invstd";
  EXPECT_TRUE(all_close(y, gy, 2e-5 + sums, 1e-5)) << "y";
  EXPECT_TRUE(all_close(std::vector<double>(rr.begin(), rr.end() - 1), std::vector<float>(grun.begin(), grun.end() - 1),
                        1e-5 + sums, 1e-5))
      << "running statistics";
  EXPECT_EQ(grun.back(), 42.f) << "num_batches_tracked";
  EXPECT_TRUE(all_close(dg, std::vector<float>(gdgb.begin(), gdgb.begin() + b.C), sums, 1e-5)) << "dgamma";
  EXPECT_TRUE(all_close(db, std::vector<float>(gdgb.begin() + b.C, gdgb.end()), sums, 1e-5)) << "dbeta";
  EXPECT_TRUE(all_close(dx, gdx, 2e-5 + sums, 1e-4)) << "dx";
  // evaluation, with the running statistics the training forward left
  ref::batchnorm_forward_eval(ye.data(), to_double(x).data(), to_double(g).data(), to_double(be).data(),
                              to_double(grun).data(), b.N, b.C, b.S);
  auto d_ye = upload(std::vector<float>(n, kNaN));
  gpu::batchnorm_forward_eval(d_ye.data(), d_x.data(), d_g.data(), d_b.data(), d_run.data(), b.N, b.C, b.S,
                              ctx.stream());
  EXPECT_TRUE(all_close(ye, download(ctx, d_ye), 2e-5, 1e-5)) << "evaluation";
  // no running buffer: the statistics still come, nothing else is touched
  gpu::batchnorm_forward_train(d_y.data(), d_stats.data(), d_stats.data() + b.C, nullptr, d_x.data(), d_g.data(),
                               d_b.data(), b.N, b.C, b.S, ctx.stream());
  EXPECT_EQ(download(ctx, d_y), gy);
  EXPECT_EQ(download(ctx, d_run), grun);
}

TEST(BatchNormGpu, MatchesTheDoubleReference) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  uint64_t seed = 100;
  for (const BnShape& b : kShapes) check_batchnorm(ctx, b, seed += 10);
}

TEST(BatchNormGpu, RefusesToTrainOnOneValuePerChannel) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  auto d = upload(std::vector<float>(8, 1.f));
  EXPECT_THROW(gpu::batchnorm_forward_train(d.data(), d.data(), d.data(), nullptr, d.data(), d.data(), d.data(), 1, 4,
                                            1, ctx.stream()),
               Error);
}

TEST(DropoutGpu, TheMaskIsTheCpusBitForBit) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  for (long long n : {1LL, 1000LL, 70001LL})
    for (float p : {0.f, 0.25f, 0.5f, 0.9f}) {
      SCOPED_TRACE(fmt("n=", n, " p=", p));
      const std::vector<float> x = random_floats(size_t(n), uint64_t(n) + 5), dy = random_floats(size_t(n), 9);
      gpu::StepCounters c;
      c.seed = 1234567;
      c.global_step = 77;
      const int layer = 6;
      std::vector<float> y(n), dx(n);
      ref::dropout_forward(y.data(), x.data(), n, p, c.seed, c.global_step, layer);
      ref::dropout_backward(dx.data(), dy.data(), n, p, c.seed, c.global_step, layer);
      auto d_c = upload(std::vector<gpu::StepCounters>{c});
      auto d_x = upload(x), d_dy = upload(dy), d_y = upload(std::vector<float>(n, kNaN)),
           d_dx = upload(std::vector<float>(n, kNaN));
      gpu::dropout_forward(d_y.data(), d_x.data(), n, p, d_c.data(), layer, ctx.stream());
      gpu::dropout_backward(d_dx.data(), d_dy.data(), n, p, d_c.data(), layer, ctx.stream());
      const std::vector<float> gy = download(ctx, d_y), gdx = download(ctx, d_dx);
      EXPECT_EQ(0, std::memcmp(gy.data(), y.data(), n * sizeof(float))) << "forward";
      EXPECT_EQ(0, std::memcmp(gdx.data(), dx.data(), n * sizeof(float))) << "backward";
    }
}

}  // namespace
}  // namespace barecnn
