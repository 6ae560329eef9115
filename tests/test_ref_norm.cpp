// The CPU reference of batch normalization and dropout (host/reference/norm.cpp): the formulas
// against direct double computations, the backward against central differences in double, the
// running statistics as PyTorch keeps them, and the dropout mask's properties.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "barecnn/norm.h"
#include "barecnn/ref_ops.h"
#include "test_util.h"

namespace barecnn {
namespace {

using namespace test;

struct BnShape {
  int N, C, S;
};
// Odd shapes: an image-like one, a flat one (S = 1), a single sample with a plane.
const BnShape kShapes[] = {{3, 5, 7}, {6, 4, 1}, {1, 3, 9}, {2, 1, 2}};

TEST(RefBatchNorm, OffsetWalksEachChannelSampleMajor) {
  for (const BnShape& b : kShapes) {
    std::vector<int> seen(size_t(b.N) * b.C * b.S, 0);
    for (int c = 0; c < b.C; ++c) {
      long long e = 0;
      for (int n = 0; n < b.N; ++n)
        for (int s = 0; s < b.S; ++s, ++e) {
          const long long o = batchnorm_offset(e, c, b.C, b.S);
          ASSERT_EQ(o, (1LL * n * b.C + c) * b.S + s) << "e=" << e << " c=" << c;
          seen[size_t(o)]++;
        }
    }
    for (int v : seen) ASSERT_EQ(v, 1);  // every element belongs to exactly one (channel, e)
  }
}

// The training forward against the definition: per channel the biased mean and variance of its
// N*S values; y = gamma * (x - mean) / sqrt(var + eps) + beta; running statistics as PyTorch's.
TEST(RefBatchNorm, TrainingForwardIsTheDefinition) {
  for (const BnShape& b : kShapes) {
    SCOPED_TRACE(fmt("N=", b.N, " C=", b.C, " S=", b.S));
    const size_t n = size_t(b.N) * b.C * b.S;
    std::vector<double> x = random_vec(n, 1, -3, 5), gamma = random_vec(b.C, 2, 0.5, 2), beta = random_vec(b.C, 3);
    std::vector<double> y(n), mean(b.C), invstd(b.C), running(batchnorm_buffer_count(b.C));
    std::vector<double> rm0 = random_vec(b.C, 4), rv0 = random_vec(b.C, 5, 0.5, 2);
    for (int c = 0; c < b.C; ++c) running[c] = rm0[c], running[b.C + c] = rv0[c];
    running[2 * b.C] = 7;
    ref::batchnorm_forward_train(y.data(), mean.data(), invstd.data(), running.data(), x.data(), gamma.data(),
                                 beta.data(), b.N, b.C, b.S);
    const double M = double(b.N) * b.S;
    for (int c = 0; c < b.C; ++c) {
      double s = 0, q = 0;
      for (int i = 0; i < b.N; ++i)
        for (int j = 0; j < b.S; ++j) s += x[(size_t(i) * b.C + c) * b.S + j];
      const double mu = s / M;
      for (int i = 0; i < b.N; ++i)
        for (int j = 0; j < b.S; ++j) q += std::pow(x[(size_t(i) * b.C + c) * b.S + j] - mu, 2);
      const double var = q / M;
      EXPECT_NEAR(mean[c], mu, 1e-14);
      EXPECT_NEAR(invstd[c], 1 / std::sqrt(var + 1e-5), 1e-12);
      for (int i = 0; i < b.N; ++i)
        for (int j = 0; j < b.S; ++j) {
          const size_t o = (size_t(i) * b.C + c) * b.S + j;
          EXPECT_NEAR(y[o], gamma[c] * (x[o] - mu) / std::sqrt(var + 1e-5) + beta[c], 1e-12);
        }
      EXPECT_NEAR(running[c], 0.9 * rm0[c] + 0.1 * mu, 1e-14);
      EXPECT_NEAR(running[b.C + c], 0.9 * rv0[c] + 0.1 * var * M / (M - 1), 1e-14);  // unbiased
    }
    EXPECT_EQ(running[2 * b.C], 8);  // num_batches_tracked
    // Without a running buffer (a gradient check) nothing else is written.
    std::vector<double> y2(n);
    ref::batchnorm_forward_train(y2.data(), mean.data(), invstd.data(), static_cast<double*>(nullptr), x.data(),
                                 gamma.data(), beta.data(), b.N, b.C, b.S);
    EXPECT_EQ(y2, y);
  }
}

TEST(RefBatchNorm, FloatFollowsDouble) {
  const BnShape b{5, 6, 11};
  const size_t n = size_t(b.N) * b.C * b.S;
  std::vector<double> x = random_vec(n, 9, -2, 6), g = random_vec(b.C, 10), be = random_vec(b.C, 11),
                      dy = random_vec(n, 12);
  std::vector<float> xf = cast_vec<float>(x), gf = cast_vec<float>(g), bf = cast_vec<float>(be),
                     dyf = cast_vec<float>(dy);
  std::vector<double> xd(xf.begin(), xf.end()), gd(gf.begin(), gf.end()), bd(bf.begin(), bf.end()),
      dyd(dyf.begin(), dyf.end());
  std::vector<double> y(n), m(b.C), is(b.C), dx(n), dg(b.C), db(b.C);
  std::vector<float> yf(n), mf(b.C), isf(b.C), dxf(n), dgf(b.C), dbf(b.C);
  ref::batchnorm_forward_train(y.data(), m.data(), is.data(), static_cast<double*>(nullptr), xd.data(), gd.data(),
                               bd.data(), b.N, b.C, b.S);
  ref::batchnorm_forward_train(yf.data(), mf.data(), isf.data(), static_cast<float*>(nullptr), xf.data(), gf.data(),
                               bf.data(), b.N, b.C, b.S);
  EXPECT_TRUE(all_close(y, yf, 1e-5, 1e-5));
  ref::batchnorm_backward(dx.data(), dg.data(), db.data(), dyd.data(), xd.data(), gd.data(), m.data(), is.data(), b.N,
                          b.C, b.S);
  ref::batchnorm_backward(dxf.data(), dgf.data(), dbf.data(), dyf.data(), xf.data(), gf.data(), mf.data(), isf.data(),
                          b.N, b.C, b.S);
  EXPECT_TRUE(all_close(dx, dxf, 1e-5, 1e-4));
  EXPECT_TRUE(all_close(dg, dgf, 1e-5, 1e-5));
  EXPECT_TRUE(all_close(db, dbf, 1e-5, 1e-5));
}

TEST(RefBatchNorm, EvaluationUsesTheRunningStatistics) {
  const BnShape b{4, 3, 5};
  const size_t n = size_t(b.N) * b.C * b.S;
  std::vector<double> x = random_vec(n, 21, -3, 3), g = random_vec(b.C, 22), be = random_vec(b.C, 23);
  std::vector<double> running = random_vec(batchnorm_buffer_count(b.C), 24, 0.2, 2), y(n);
  ref::batchnorm_forward_eval(y.data(), x.data(), g.data(), be.data(), running.data(), b.N, b.C, b.S);
  for (size_t o = 0; o < n; ++o) {
    const int c = int((o / b.S) % b.C);
    EXPECT_NEAR(y[o], (x[o] - running[c]) / std::sqrt(running[b.C + c] + 1e-5) * g[c] + be[c], 1e-12);
  }
}

// The backward (the fused form, MATH.md) against central differences of L = sum(w * y) in
// double, with respect to x, gamma and beta; dx null skips the input gradient only.
TEST(RefBatchNorm, BackwardMatchesCentralDifferences) {
  for (const BnShape& b : kShapes) {
    SCOPED_TRACE(fmt("N=", b.N, " C=", b.C, " S=", b.S));
    const size_t n = size_t(b.N) * b.C * b.S;
    std::vector<double> x = random_vec(n, 31, -2, 3), g = random_vec(b.C, 32, 0.5, 1.5), be = random_vec(b.C, 33),
                        w = random_vec(n, 34);
    auto loss = [&](const std::vector<double>& xx, const std::vector<double>& gg, const std::vector<double>& bb) {
      std::vector<double> y(n), m(b.C), is(b.C);
      ref::batchnorm_forward_train(y.data(), m.data(), is.data(), static_cast<double*>(nullptr), xx.data(), gg.data(),
                                   bb.data(), b.N, b.C, b.S);
      double L = 0;
      for (size_t i = 0; i < n; ++i) L += w[i] * y[i];
      return L;
    };
    std::vector<double> y(n), m(b.C), is(b.C), dx(n), dg(b.C), db(b.C);
    ref::batchnorm_forward_train(y.data(), m.data(), is.data(), static_cast<double*>(nullptr), x.data(), g.data(),
                                 be.data(), b.N, b.C, b.S);
    ref::batchnorm_backward(dx.data(), dg.data(), db.data(), w.data(), x.data(), g.data(), m.data(), is.data(), b.N,
                            b.C, b.S);
    EXPECT_TRUE(gradcheck([&](const std::vector<double>& v) { return loss(v, g, be); }, x, dx, 1e-6, 1e-6, {}, true));
    EXPECT_TRUE(gradcheck([&](const std::vector<double>& v) { return loss(x, v, be); }, g, dg));
    EXPECT_TRUE(gradcheck([&](const std::vector<double>& v) { return loss(x, g, v); }, be, db));
    std::vector<double> dg2(b.C), db2(b.C);
    ref::batchnorm_backward(static_cast<double*>(nullptr), dg2.data(), db2.data(), w.data(), x.data(), g.data(),
                            m.data(), is.data(), b.N, b.C, b.S);
    EXPECT_EQ(dg2, dg);
    EXPECT_EQ(db2, db);
  }
}

TEST(RefBatchNorm, RefusesToTrainOnOneValuePerChannel) {
  std::vector<double> x(3), y(3), m(3), is(3), g(3, 1.0), b(3, 0.0);
  EXPECT_THROW(ref::batchnorm_forward_train(y.data(), m.data(), is.data(), static_cast<double*>(nullptr), x.data(),
                                            g.data(), b.data(), 1, 3, 1),
               Error);
}

// ---- dropout ----------------------------------------------------------------------------------

TEST(RefDropout, KeepsAboutOneMinusPAndScalesTheKeptExactly) {
  const long long n = 200000;
  std::vector<float> x = cast_vec<float>(random_vec(n, 41)), y(n), dy = cast_vec<float>(random_vec(n, 42)), dx(n);
  for (float p : {0.1f, 0.5f, 0.8f}) {
    SCOPED_TRACE(fmt("p=", p));
    ref::dropout_forward(y.data(), x.data(), n, p, 7, 3, 5);
    ref::dropout_backward(dx.data(), dy.data(), n, p, 7, 3, 5);
    const float scale = dropout_scale(p);
    long long kept = 0;
    for (long long i = 0; i < n; ++i) {
      const bool keep = dropout_keeps(7, 3, 5, i, dropout_threshold(p));
      kept += keep;
      ASSERT_EQ(y[i], keep ? x[i] * scale : 0.f) << i;
      ASSERT_EQ(dx[i], keep ? dy[i] * scale : 0.f) << i;  // the backward applies the same mask
    }
    // Binomial: the standard deviation of the kept fraction is sqrt(p(1-p)/n) < 0.0012; allow 5 of them.
    EXPECT_NEAR(double(kept) / n, 1.0 - p, 0.006);
  }
}

TEST(RefDropout, TheMaskDependsOnSeedStepAndLayerOnly) {
  const long long n = 4096;
  const uint32_t t = dropout_threshold(0.5f);
  auto mask = [&](uint64_t seed, long long step, int layer) {
    std::vector<bool> m(n);
    for (long long i = 0; i < n; ++i) m[i] = dropout_keeps(seed, step, layer, i, t);
    return m;
  };
  const std::vector<bool> a = mask(1, 10, 3);
  EXPECT_EQ(mask(1, 10, 3), a);  // a resumed run draws the same
  for (auto other : {mask(2, 10, 3), mask(1, 11, 3), mask(1, 10, 4)}) {
    long long same = 0;
    for (long long i = 0; i < n; ++i) same += other[i] == a[i];
    EXPECT_NEAR(double(same) / n, 0.5, 0.05);  // independent-looking, not equal or complementary
  }
}

TEST(RefDropout, ZeroRateIsTheIdentity) {
  std::vector<double> x = random_vec(1000, 51), y(1000);
  ref::dropout_forward(y.data(), x.data(), 1000, 0.f, 1, 1, 1);
  EXPECT_EQ(y, x);
}

}  // namespace
}  // namespace barecnn
