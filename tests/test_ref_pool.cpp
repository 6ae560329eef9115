// CPU reference of pooling (host/reference/pool2d.cpp): hand-computed max (values and argmax mask),
// average and L2 values, tie handling (first index wins), the L2 guard at a zero window, float
// against double, and central-difference gradient checks in double on tie-free inputs for
// non-overlapping, overlapping (k=3, stride 2), gapped (stride > k) and rectangular windows.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <string>
#include <vector>

#include "barecnn/ref_ops.h"
#include "barecnn/shape.h"
#include "test_util.h"

using namespace barecnn;
using barecnn::test::all_close;
using barecnn::test::cast_vec;
using barecnn::test::gradcheck;
using barecnn::test::pool_shape;
using barecnn::test::random_vec;
using barecnn::test::tie_free_vec;

namespace {

enum class Pool { Max, Avg, L2 };
const char* pool_name(Pool p) { return p == Pool::Max ? "max" : p == Pool::Avg ? "avg" : "l2"; }

template <typename T>
std::vector<T> pool_forward(Pool p, const std::vector<T>& inp, const Pool2dShape& s,
                            std::vector<int32_t>* mask_out = nullptr) {
  std::vector<T> out(s.out_numel());
  std::vector<int32_t> mask(s.out_numel());
  switch (p) {
    case Pool::Max:
      ref::maxpool2d_forward(out.data(), mask.data(), inp.data(), s);
      break;
    case Pool::Avg:
      ref::avgpool2d_forward(out.data(), inp.data(), s);
      break;
    case Pool::L2:
      ref::l2pool2d_forward(out.data(), inp.data(), s);
      break;
  }
  if (mask_out) *mask_out = mask;
  return out;
}

// dinp for the given dout, running the forward pass first for the mask / output it needs.
template <typename T>
std::vector<T> pool_backward(Pool p, const std::vector<T>& inp, const std::vector<T>& dout, const Pool2dShape& s) {
  std::vector<int32_t> mask;
  std::vector<T> out = pool_forward(p, inp, s, &mask);
  std::vector<T> dinp(s.in_numel(), T(NAN));  // must be overwritten everywhere
  switch (p) {
    case Pool::Max:
      ref::maxpool2d_backward(dinp.data(), dout.data(), mask.data(), s);
      break;
    case Pool::Avg:
      ref::avgpool2d_backward(dinp.data(), dout.data(), s);
      break;
    case Pool::L2:
      ref::l2pool2d_backward(dinp.data(), dout.data(), inp.data(), out.data(), s);
      break;
  }
  return dinp;
}

double dot(const std::vector<double>& r, const std::vector<double>& y) {
  double acc = 0;
  for (size_t i = 0; i < y.size(); i++) acc += r[i] * y[i];
  return acc;
}

// 5x5 plane holding a permutation of 0..24 (no ties)
const std::vector<double> kPerm25 = {2,  10, 4, 12, 9, 13, 24, 22, 18, 23, 6, 3, 17,
                                     15, 21, 5, 1,  7, 14, 0,  16, 20, 11, 8, 19};

}  // namespace

// ---- hand-computed cases ----

TEST(Pool2dRef, HandMax2x2Stride2) {
  Pool2dShape s = make_pool2d_shape(1, 1, 4, 4, 2, 2, 2, "pool");
  std::vector<double> x = {3, 9, 1, 4, 7, 2, 8, 6, 5, 0, 11, 15, 14, 12, 10, 13};
  std::vector<int32_t> mask;
  std::vector<double> out = pool_forward(Pool::Max, x, s, &mask);
  // windows {3,9,7,2} {1,4,8,6} / {5,0,14,12} {11,15,10,13}
  EXPECT_EQ(out, (std::vector<double>{9, 8, 14, 15}));
  // flat indices h*W + w: 9 at (0,1), 8 at (1,2), 14 at (3,0), 15 at (2,3)
  EXPECT_EQ(mask, (std::vector<int32_t>{1, 6, 12, 11}));

  std::vector<double> dout = {1, 2, 3, 4};
  std::vector<double> expect_dinp = {0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 4, 3, 0, 0, 0};
  EXPECT_EQ(pool_backward(Pool::Max, x, dout, s), expect_dinp);

  // average: 21/4, 19/4, 31/4, 49/4; every input gets a quarter of its window's gradient
  EXPECT_EQ(pool_forward(Pool::Avg, x, s), (std::vector<double>{5.25, 4.75, 7.75, 12.25}));
  std::vector<double> expect_avg = {0.25, 0.25, 0.5, 0.5, 0.25, 0.25, 0.5, 0.5,
                                    0.75, 0.75, 1.0, 1.0, 0.75, 0.75, 1.0, 1.0};
  EXPECT_EQ(pool_backward(Pool::Avg, x, dout, s), expect_avg);
}

// k=3, stride 2 on 5x5: row 2 and column 2 belong to two windows each, pixel (2,2) to all four.
TEST(Pool2dRef, HandMaxOverlapping) {
  Pool2dShape s = make_pool2d_shape(1, 1, 5, 5, 3, 3, 2, "pool");
  ASSERT_EQ(s.OH, 2);
  ASSERT_EQ(s.OW, 2);
  std::vector<int32_t> mask;
  // windows: rows 0..2 x cols 0..2 -> 24 at (1,1); rows 0..2 x cols 2..4 -> 23 at (1,4);
  //          rows 2..4 x cols 0..2 -> 20 at (4,1); rows 2..4 x cols 2..4 -> 21 at (2,4)
  EXPECT_EQ(pool_forward(Pool::Max, kPerm25, s, &mask), (std::vector<double>{24, 23, 20, 21}));
  EXPECT_EQ(mask, (std::vector<int32_t>{6, 9, 21, 14}));

  // make the shared centre pixel the largest: it wins all four windows and collects all four
  // gradients (1 + 2 + 3 + 4)
  std::vector<double> x = kPerm25;
  x[12] = 30;
  EXPECT_EQ(pool_forward(Pool::Max, x, s, &mask), (std::vector<double>{30, 30, 30, 30}));
  EXPECT_EQ(mask, (std::vector<int32_t>{12, 12, 12, 12}));
  std::vector<double> dinp = pool_backward(Pool::Max, x, {1, 2, 3, 4}, s);
  for (int i = 0; i < 25; i++) EXPECT_EQ(dinp[i], i == 12 ? 10.0 : 0.0) << i;

  // average with overlap: pixel (2,2) is in all four windows: (1+2+3+4)/9; pixel (0,0) in one
  std::vector<double> davg = pool_backward(Pool::Avg, x, {1, 2, 3, 4}, s);
  EXPECT_DOUBLE_EQ(davg[12], 10.0 / 9);
  EXPECT_DOUBLE_EQ(davg[0], 1.0 / 9);
  EXPECT_DOUBLE_EQ(davg[2], 3.0 / 9);   // (0,2): windows (0,0) and (0,1)
  EXPECT_DOUBLE_EQ(davg[10], 4.0 / 9);  // (2,0): windows (0,0) and (1,0)
  EXPECT_DOUBLE_EQ(davg[24], 4.0 / 9);
}

// k=2, stride 3 on 5x5: windows cover rows/cols {0,1} and {3,4}; row 2 and column 2 are skipped.
TEST(Pool2dRef, HandMaxStrideLargerThanWindow) {
  Pool2dShape s = make_pool2d_shape(1, 1, 5, 5, 2, 2, 3, "pool");
  ASSERT_EQ(s.OH, 2);
  std::vector<int32_t> mask;
  EXPECT_EQ(pool_forward(Pool::Max, kPerm25, s, &mask), (std::vector<double>{24, 23, 20, 19}));
  EXPECT_EQ(mask, (std::vector<int32_t>{6, 9, 21, 24}));
  std::vector<double> dinp = pool_backward(Pool::Avg, kPerm25, {4, 4, 4, 4}, s);
  for (int h = 0; h < 5; h++)
    for (int w = 0; w < 5; w++) EXPECT_EQ(dinp[h * 5 + w], (h == 2 || w == 2) ? 0.0 : 1.0) << h << "," << w;
}

TEST(Pool2dRef, HandL2) {
  Pool2dShape s = make_pool2d_shape(1, 1, 4, 4, 2, 2, 2, "pool");
  std::vector<double> x = {-1, 2, 2, 3, 2, -4, 6, 0, 1, 4, 0, 0, 8, 0, 0, 0};
  // sqrt(1+4+4+16) = 5, sqrt(4+9+36+0) = 7, sqrt(1+16+64+0) = 9, and an all-zero window: 0
  std::vector<double> out = pool_forward(Pool::L2, x, s);
  EXPECT_EQ(out, (std::vector<double>{5, 7, 9, 0}));

  // dinp = dout * x / out per window; the all-zero window gives 0 (the guard), not NaN
  std::vector<double> dinp = pool_backward(Pool::L2, x, {1, 2, 3, 4}, s);
  std::vector<double> expect = {-1.0 / 5, 2.0 / 5, 4.0 / 7, 6.0 / 7, 2.0 / 5, -4.0 / 5, 12.0 / 7, 0,
                                1.0 / 3,  4.0 / 3, 0,       0,       8.0 / 3, 0,        0,        0};
  EXPECT_TRUE(all_close(expect, dinp, 1e-15, 1e-15));

  // float: the guard holds too
  std::vector<float> dinp_f = pool_backward(Pool::L2, cast_vec<float>(x), {1.f, 2.f, 3.f, 4.f}, s);
  for (float g : dinp_f) EXPECT_TRUE(std::isfinite(g));
  EXPECT_EQ(dinp_f[10], 0.f);
}

// ---- ties: the first index in row-major order wins ----

TEST(Pool2dRef, MaxTiesFirstIndexWins) {
  // a constant plane: every window picks its top-left pixel
  Pool2dShape s = make_pool2d_shape(1, 1, 3, 3, 2, 2, 1, "pool");
  std::vector<double> flat(9, 1.0);
  std::vector<int32_t> mask;
  pool_forward(Pool::Max, flat, s, &mask);
  EXPECT_EQ(mask, (std::vector<int32_t>{0, 1, 3, 4}));
  EXPECT_EQ(pool_backward(Pool::Max, flat, {1, 1, 1, 1}, s), (std::vector<double>{1, 1, 0, 1, 1, 0, 0, 0, 0}));

  // ties at the maximum only, not at the top-left: [[1,5],[5,2]] -> the 5 at (0,1);
  // [[4,4],[4,4]] -> (0,0) of that window; the first window's later 5 gets no gradient
  Pool2dShape t = make_pool2d_shape(1, 1, 2, 4, 2, 2, 2, "pool");
  std::vector<double> x = {1, 5, 4, 4, 5, 2, 4, 4};
  std::vector<double> out = pool_forward(Pool::Max, x, t, &mask);
  EXPECT_EQ(out, (std::vector<double>{5, 4}));
  EXPECT_EQ(mask, (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(pool_backward(Pool::Max, x, {7, 9}, t), (std::vector<double>{0, 7, 9, 0, 0, 0, 0, 0}));

  // same in float, with negative values and -0.0 == +0.0 (a tie: the first one wins)
  std::vector<float> xf = {-3.f, -0.f, 0.f, -1.f};
  Pool2dShape u = make_pool2d_shape(1, 1, 2, 2, 2, 2, 2, "pool");
  pool_forward(Pool::Max, xf, u, &mask);
  EXPECT_EQ(mask[0], 1);
}

// mask indices are relative to their (n, c) plane, not to the whole tensor
TEST(Pool2dRef, MaxMaskIsPerPlane) {
  Pool2dShape s = make_pool2d_shape(2, 3, 4, 5, 2, 2, 2, "pool");
  auto x = tie_free_vec(s.in_numel(), 7);
  std::vector<int32_t> mask;
  std::vector<double> out = pool_forward(Pool::Max, x, s, &mask);
  for (int n = 0; n < s.N; n++)
    for (int c = 0; c < s.C; c++)
      for (int oh = 0; oh < s.OH; oh++)
        for (int ow = 0; ow < s.OW; ow++) {
          long long o = nchw(n, c, oh, ow, s.C, s.OH, s.OW);
          int32_t m = mask[o];
          int h = m / s.W, w = m % s.W;
          EXPECT_TRUE(h >= oh * 2 && h < oh * 2 + 2 && w >= ow * 2 && w < ow * 2 + 2) << "mask " << m;
          EXPECT_EQ(out[o], x[nchw(n, c, h, w, s.C, s.H, s.W)]);
        }
}

// ---- geometries for the randomized checks ----

struct PoolCase {
  const char* name;
  Pool2dShape s;
};

static std::vector<PoolCase> pool_cases() {
  return {
      {"2x2 stride 2, odd sizes (last row/col unused)", make_pool2d_shape(2, 2, 7, 5, 2, 2, 2, "p")},
      {"overlapping 3x3 stride 2", make_pool2d_shape(1, 2, 7, 8, 3, 3, 2, "p")},
      {"stride 3 > window 2", make_pool2d_shape(2, 1, 8, 7, 2, 2, 3, "p")},
      {"rectangular 2x3 stride 1", make_pool2d_shape(1, 3, 5, 6, 2, 3, 1, "p")},
      {"window equal to input", make_pool2d_shape(2, 2, 4, 3, 4, 3, 1, "p")},
      {"per-axis stride 1x2, window 3x2", pool_shape(1, 2, 6, 7, 3, 2, 1, 2)},
  };
}

// ---- float against double ----

TEST(Pool2dRef, FloatMatchesDouble) {
  for (const PoolCase& pc : pool_cases()) {
    for (Pool p : {Pool::Max, Pool::Avg, Pool::L2}) {
      SCOPED_TRACE(std::string(pc.name) + " " + pool_name(p));
      const Pool2dShape& s = pc.s;
      std::vector<float> xf = cast_vec<float>(tie_free_vec(s.in_numel(), 51));
      std::vector<float> df = cast_vec<float>(random_vec(s.out_numel(), 52));
      std::vector<double> xd(xf.begin(), xf.end()), dd(df.begin(), df.end());
      std::vector<int32_t> mf, md;
      EXPECT_TRUE(all_close(pool_forward(p, xd, s, &md), pool_forward(p, xf, s, &mf), 1e-5, 1e-5));
      if (p == Pool::Max) {
        EXPECT_EQ(md, mf);
      }
      EXPECT_TRUE(all_close(pool_backward(p, xd, dd, s), pool_backward(p, xf, df, s), 1e-5, 1e-5));
    }
  }
}

// The gather form of maxpool2d_backward equals the obvious scatter "dinp[mask[o]] += dout[o]".
TEST(Pool2dRef, MaxBackwardEqualsScatter) {
  for (const PoolCase& pc : pool_cases()) {
    SCOPED_TRACE(pc.name);
    const Pool2dShape& s = pc.s;
    auto x = tie_free_vec(s.in_numel(), 61);
    auto dout = random_vec(s.out_numel(), 62);
    std::vector<int32_t> mask;
    pool_forward(Pool::Max, x, s, &mask);
    std::vector<double> scatter(s.in_numel(), 0.0);
    for (int n = 0; n < s.N; n++)
      for (int c = 0; c < s.C; c++)
        for (int o = 0; o < s.OH * s.OW; o++) {
          long long oi = nchw(n, c, 0, 0, s.C, s.OH, s.OW) + o;
          scatter[nchw(n, c, 0, 0, s.C, s.H, s.W) + mask[oi]] += dout[oi];
        }
    EXPECT_TRUE(all_close(scatter, pool_backward(Pool::Max, x, dout, s), 1e-15, 1e-15));
  }
}

// ---- central-difference gradient checks in double ----
// Objective L = sum_i r_i y_i with fixed random r. Inputs are tie-free (gaps ~1/numel >> h), so
// the argmax of every window is stable under +-h and max pooling is locally linear; average
// pooling is linear; L2 pooling is smooth away from 0 and tie_free_vec keeps every value at least
// a fraction of a step away from 0, so every window norm is > 0 and its curvature is small:
// the truncation error h^2/6 * f''' is far below 1e-6.

TEST(Pool2dRef, Gradcheck) {
  for (const PoolCase& pc : pool_cases()) {
    for (Pool p : {Pool::Max, Pool::Avg, Pool::L2}) {
      SCOPED_TRACE(std::string(pc.name) + " " + pool_name(p));
      const Pool2dShape& s = pc.s;
      auto x = tie_free_vec(s.in_numel(), 71);
      auto r = random_vec(s.out_numel(), 72);
      std::vector<double> dinp = pool_backward(p, x, r, s);
      EXPECT_TRUE(gradcheck([&](const std::vector<double>& xv) { return dot(r, pool_forward(p, xv, s)); }, x, dinp));
    }
  }
}

// Inputs that no window covers get exactly zero gradient; covered ones get a nonzero gradient from
// avg and L2 pooling.
TEST(Pool2dRef, UncoveredInputsGetZeroGradient) {
  Pool2dShape s = make_pool2d_shape(1, 1, 8, 7, 2, 2, 3, "p");  // rows 0,1,3,4,6,7; cols 0,1,3,4
  auto x = tie_free_vec(s.in_numel(), 81, 0.5, 1.5);
  std::vector<double> dout(s.out_numel(), 1.0);
  for (Pool p : {Pool::Avg, Pool::L2}) {
    std::vector<double> dinp = pool_backward(p, x, dout, s);
    for (int h = 0; h < s.H; h++)
      for (int w = 0; w < s.W; w++) {
        bool covered = h % 3 != 2 && w % 3 != 2 && w < 5;
        if (covered)
          EXPECT_GT(dinp[h * s.W + w], 0) << pool_name(p) << " " << h << "," << w;
        else
          EXPECT_EQ(dinp[h * s.W + w], 0) << pool_name(p) << " " << h << "," << w;
      }
  }
}

// Results do not depend on the number of OpenMP threads (each element summed by one thread in a
// fixed order): bitwise equal with 1 and 2 threads, on a size large enough to run in parallel.
TEST(Pool2dRef, SameResultForAnyThreadCount) {
  Pool2dShape s = make_pool2d_shape(8, 8, 33, 31, 3, 3, 2, "p");
  std::vector<float> x = cast_vec<float>(tie_free_vec(s.in_numel(), 91));
  std::vector<float> dout = cast_vec<float>(random_vec(s.out_numel(), 92));
  int saved = omp_get_max_threads();
  for (Pool p : {Pool::Max, Pool::Avg, Pool::L2}) {
    omp_set_num_threads(1);
    std::vector<float> y1 = pool_forward(p, x, s), d1 = pool_backward(p, x, dout, s);
    omp_set_num_threads(2);
    std::vector<float> y2 = pool_forward(p, x, s), d2 = pool_backward(p, x, dout, s);
    EXPECT_TRUE(all_close(y1, y2, 0, 0)) << pool_name(p);
    EXPECT_TRUE(all_close(d1, d2, 0, 0)) << pool_name(p);
  }
  omp_set_num_threads(saved);
}
