// CPU reference of convolution (host/reference/conv2d.cpp): hand-computed values, float against
// double, the stride-1 "full correlation with the flipped kernel" identity of docs/MATH.md, and
// central-difference gradient checks in double of input, weight and bias over several geometries.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "barecnn/ref_ops.h"
#include "barecnn/shape.h"
#include "test_util.h"

using namespace barecnn;
using barecnn::test::all_close;
using barecnn::test::cast_vec;
using barecnn::test::conv_shape;
using barecnn::test::gradcheck;
using barecnn::test::random_vec;

namespace {

// `bias` is in a non-deduced context so that a plain nullptr can be passed.
template <typename T>
struct identity {
  using type = T;
};
template <typename T>
std::vector<T> forward(const std::vector<T>& inp, const std::vector<T>& weight,
                       const std::vector<typename identity<T>::type>* bias, const Conv2dShape& s) {
  std::vector<T> out(s.out_numel());
  ref::conv2d_forward(out.data(), inp.data(), weight.data(), bias ? bias->data() : nullptr, s);
  return out;
}

// sum_i r_i * y_i: a scalar objective whose gradient w.r.t. y is r (fixed random, so no entry of
// dout is special and every path of the backward pass carries a different weight).
double dot(const std::vector<double>& r, const std::vector<double>& y) {
  double acc = 0;
  for (size_t i = 0; i < y.size(); i++) acc += r[i] * y[i];
  return acc;
}

}  // namespace

// ---- hand-computed cases ----

// 5x5 input x[h][w] = 5h + w + 1 (1..25), 3x3 kernel, stride 2, padding 1 -> 3x3 output
// ((5 - 3 + 2) / 2 + 1 = 3). Output (oh, ow) reads input rows 2*oh - 1 .. 2*oh + 1, so the first
// row/column of windows reads the top/left padding and the last one the bottom/right padding.
TEST(Conv2dRef, HandStride2Pad1) {
  Conv2dShape s = make_conv2d_shape(1, 1, 5, 5, 1, 3, 3, 2, 1, "conv");
  ASSERT_EQ(s.OH, 3);
  ASSERT_EQ(s.OW, 3);
  std::vector<double> x(25);
  for (int i = 0; i < 25; i++) x[i] = i + 1;
  // not symmetric under any flip, so a flipped or transposed kernel would give other numbers
  std::vector<double> w = {1, -1, 2, 0, 3, -2, 1, 1, -1};
  std::vector<double> b = {0.5};
  // out[0][0]: rows -1..1, cols -1..1; only x[0][0]=1, x[0][1]=2, x[1][0]=6, x[1][1]=7 are inside,
  //   under taps w[1][1]=3, w[1][2]=-2, w[2][1]=1, w[2][2]=-1: 3 - 4 + 6 - 7 + 0.5 = -1.5
  // out[1][1]: rows 1..3, cols 1..3 = {7,8,9 / 12,13,14 / 17,18,19}:
  //   (7 - 8 + 18) + (0 + 39 - 28) + (17 + 18 - 19) + 0.5 = 17 + 11 + 16 + 0.5 = 44.5
  // out[2][2]: rows 3..5, cols 3..5; inside: x[3][3]=19, x[3][4]=20, x[4][3]=24, x[4][4]=25
  //   under w[0][0]=1, w[0][1]=-1, w[1][0]=0, w[1][1]=3: 19 - 20 + 0 + 75 + 0.5 = 74.5
  // out[0][2]: rows -1..1, cols 3..5; inside x[0][3]=4, x[0][4]=5, x[1][3]=9, x[1][4]=10 under
  //   w[1][0]=0, w[1][1]=3, w[2][0]=1, w[2][1]=1: 0 + 15 + 9 + 10 + 0.5 = 34.5
  std::vector<double> expect = {-1.5, 7.5, 34.5, 16.5, 44.5, 83.5, 37.5, 58.5, 74.5};
  EXPECT_TRUE(all_close(expect, forward(x, w, &b, s), 0, 0));
  // float, no bias: every value is 0.5 lower (small integers, so exact in float too)
  std::vector<float> nob = forward(cast_vec<float>(x), cast_vec<float>(w), nullptr, s);
  for (size_t i = 0; i < expect.size(); i++) EXPECT_EQ(nob[i], float(expect[i] - 0.5)) << i;

  // backward with dout = {1,0,-1 / 2,1,0 / 0,-1,3}
  std::vector<double> dout = {1, 0, -1, 2, 1, 0, 0, -1, 3};
  // dinp[0][0] is read only by out[0][0] through tap (1,1): 1 * 3 = 3.
  // dinp[1][1] is read by out[0][0] through tap (2,2), out[0][1] through (2,0), out[1][0]
  //   through (0,2) and out[1][1] through (0,0): 1*(-1) + 0*1 + 2*2 + 1*1 = 4.
  // dinp[4][4] is read only by out[2][2] through tap (1,1): 3 * 3 = 9.
  std::vector<double> expect_dinp = {3,  -2, 0, 0,  -3, -1, 4,  -1, 1, -1, 6, -4, 3,
                                     -2, 0,  2, -2, 2,  0,  -3, 0,  0, -3, 2, 9};
  std::vector<double> dinp(25, std::nan(""));  // must be overwritten
  ref::conv2d_backward_input(dinp.data(), dout.data(), w.data(), s);
  EXPECT_TRUE(all_close(expect_dinp, dinp, 0, 0));

  // dweight[1][1] (the centre tap) = sum over outputs of dout * x[2oh][2ow]
  //   = 1*1 + 0*3 - 1*5 + 2*11 + 1*13 + 0*15 + 0*21 - 1*23 + 3*25 = 83.
  // dweight[0][0] = sum of dout * x[2oh-1][2ow-1] (padding for oh or ow = 0)
  //   = 1*7 + 0*9 - 1*17 + 3*19 = 47.  dbias = sum(dout) = 5.
  std::vector<double> expect_dw = {47, 62, 4, 58, 83, 16, 8, 46, 60};
  std::vector<double> dw(9, std::nan("")), db(1, std::nan(""));
  ref::conv2d_backward_weight(dw.data(), db.data(), dout.data(), x.data(), s);
  EXPECT_TRUE(all_close(expect_dw, dw, 0, 0));
  EXPECT_EQ(db[0], 5.0);
}

// C=2 input channels, K=2 filters with bias, 2x2 kernels on 3x3 -> 2x2 outputs.
TEST(Conv2dRef, HandMultiChannelWithBias) {
  Conv2dShape s = make_conv2d_shape(1, 2, 3, 3, 2, 2, 2, 1, 0, "conv");
  std::vector<double> x = {1, 2, 3,                      // channel 0
                           4, 5, 6, 7,  8, 9, 1, 0, -1,  // channel 1
                           0, 2, 0, -1, 0, 1};
  std::vector<double> w = {1, 0, 0, 1,    // filter 0, channel 0: main diagonal
                           0, 1, 1, 0,    // filter 0, channel 1: anti-diagonal
                           1, 1, 1, 1,    // filter 1, channel 0: window sum
                           2, 0, 0, -1};  // filter 1, channel 1
  std::vector<double> b = {0.5, -1};
  // filter 0: x0[oh][ow] + x0[oh+1][ow+1] + x1[oh][ow+1] + x1[oh+1][ow] + 0.5
  //   (0,0): 1+5 + 0+0 + .5 = 6.5   (0,1): 2+6 + (-1)+2 + .5 = 9.5
  //   (1,0): 4+8 + 2+(-1) + .5 = 13.5   (1,1): 5+9 + 0+0 + .5 = 14.5
  // filter 1: window sum of x0 + 2*x1[oh][ow] - x1[oh+1][ow+1] - 1
  //   (0,0): 12 + 2 - 2 - 1 = 11   (0,1): 16 + 0 - 0 - 1 = 15
  //   (1,0): 24 + 0 - 0 - 1 = 23   (1,1): 28 + 4 - 1 - 1 = 30
  std::vector<double> expect = {6.5, 9.5, 13.5, 14.5, 11, 15, 23, 30};
  EXPECT_TRUE(all_close(expect, forward(x, w, &b, s), 0, 0));

  // dbias[k] = sum of dout over the batch and positions; dout = 1 for filter 0, 2 for filter 1
  std::vector<double> dout = {1, 1, 1, 1, 2, 2, 2, 2};
  std::vector<double> dw(s.weight_numel()), db(s.K);
  ref::conv2d_backward_weight(dw.data(), db.data(), dout.data(), x.data(), s);
  EXPECT_EQ(db[0], 4.0);
  EXPECT_EQ(db[1], 8.0);
  // dweight[k][c][i][j] = dout_k * (sum of the 2x2 block of x_c starting at (i, j))
  //   channel 0 blocks: (0,0) 12, (0,1) 16, (1,0) 24, (1,1) 28; channel 1: 3, 1, 1, 3
  std::vector<double> expect_dw = {12, 16, 24, 28, 3, 1, 1, 3, 24, 32, 48, 56, 6, 2, 2, 6};
  EXPECT_TRUE(all_close(expect_dw, dw, 0, 0));
  // a null dbias is allowed and leaves dweight unchanged
  std::vector<double> dw2(s.weight_numel());
  ref::conv2d_backward_weight(dw2.data(), static_cast<double*>(nullptr), dout.data(), x.data(), s);
  EXPECT_TRUE(all_close(dw, dw2, 0, 0));
}

// ---- geometries for the randomized checks ----

struct ConvCase {
  const char* name;
  Conv2dShape s;
};

static std::vector<ConvCase> conv_cases() {
  return {
      {"multichannel C3 K4 3x3 pad1", make_conv2d_shape(1, 3, 5, 6, 4, 3, 3, 1, 1, "c")},
      {"rectangular kernel 2x3", make_conv2d_shape(1, 2, 5, 7, 3, 2, 3, 1, 0, "c")},
      {"stride 2 pad 1", make_conv2d_shape(1, 2, 7, 6, 3, 3, 3, 2, 1, "c")},
      {"stride 3 > kernel 2", make_conv2d_shape(1, 2, 8, 7, 2, 2, 2, 3, 0, "c")},
      {"kernel equal to input", make_conv2d_shape(1, 2, 4, 5, 3, 4, 5, 1, 0, "c")},
      {"batch 2", make_conv2d_shape(2, 2, 5, 5, 3, 3, 3, 1, 1, "c")},
      {"even kernel 4x4 stride 2 pad 1", make_conv2d_shape(2, 1, 6, 7, 2, 4, 4, 2, 1, "c")},
      {"per-axis stride 2x1 pad 0x2", conv_shape(1, 2, 7, 5, 2, 3, 3, 2, 1, 0, 2)},
  };
}

// ---- float against double ----

TEST(Conv2dRef, FloatMatchesDouble) {
  for (const ConvCase& cc : conv_cases()) {
    SCOPED_TRACE(cc.name);
    const Conv2dShape& s = cc.s;
    auto x = random_vec(s.in_numel(), 1);
    auto w = random_vec(s.weight_numel(), 2);
    auto b = random_vec(s.K, 3);
    auto dout = random_vec(s.out_numel(), 4);
    auto xf = cast_vec<float>(x), wf = cast_vec<float>(w), bf = cast_vec<float>(b), doutf = cast_vec<float>(dout);
    // compare against the double result of the same float-rounded inputs, so the tolerance only
    // covers float accumulation
    std::vector<double> xd(xf.begin(), xf.end()), wd(wf.begin(), wf.end()), bd(bf.begin(), bf.end());
    std::vector<double> doutd(doutf.begin(), doutf.end());

    EXPECT_TRUE(all_close(forward(xd, wd, &bd, s), forward(xf, wf, &bf, s), 1e-5, 1e-5));

    std::vector<double> dinp_d(s.in_numel());
    std::vector<float> dinp_f(s.in_numel());
    ref::conv2d_backward_input(dinp_d.data(), doutd.data(), wd.data(), s);
    ref::conv2d_backward_input(dinp_f.data(), doutf.data(), wf.data(), s);
    EXPECT_TRUE(all_close(dinp_d, dinp_f, 1e-5, 1e-5));

    std::vector<double> dw_d(s.weight_numel()), db_d(s.K);
    std::vector<float> dw_f(s.weight_numel()), db_f(s.K);
    ref::conv2d_backward_weight(dw_d.data(), db_d.data(), doutd.data(), xd.data(), s);
    ref::conv2d_backward_weight(dw_f.data(), db_f.data(), doutf.data(), xf.data(), s);
    EXPECT_TRUE(all_close(dw_d, dw_f, 1e-5, 1e-5));
    EXPECT_TRUE(all_close(db_d, db_f, 1e-5, 1e-5));
  }
}

// A null bias is the same as a zero bias; backward overwrites its outputs (no accumulation).
TEST(Conv2dRef, NullBiasAndOverwrite) {
  Conv2dShape s = make_conv2d_shape(2, 3, 6, 5, 4, 3, 2, 2, 1, "c");
  auto x = random_vec(s.in_numel(), 11);
  auto w = random_vec(s.weight_numel(), 12);
  std::vector<double> zero(s.K, 0.0);
  EXPECT_TRUE(all_close(forward(x, w, &zero, s), forward(x, w, nullptr, s), 0, 0));

  auto dout = random_vec(s.out_numel(), 13);
  std::vector<double> dinp1(s.in_numel()), dinp2(s.in_numel(), 123.0);
  ref::conv2d_backward_input(dinp1.data(), dout.data(), w.data(), s);
  ref::conv2d_backward_input(dinp2.data(), dout.data(), w.data(), s);
  EXPECT_TRUE(all_close(dinp1, dinp2, 0, 0));
  std::vector<double> dw1(s.weight_numel()), db1(s.K), dw2(s.weight_numel(), -7.0), db2(s.K, -7.0);
  ref::conv2d_backward_weight(dw1.data(), db1.data(), dout.data(), x.data(), s);
  ref::conv2d_backward_weight(dw2.data(), db2.data(), dout.data(), x.data(), s);
  EXPECT_TRUE(all_close(dw1, dw2, 0, 0));
  EXPECT_TRUE(all_close(db1, db2, 0, 0));
}

// docs/MATH.md: for stride 1, dL/dX is the "full" correlation of dL/dY (padded by k - 1 - Z_p)
// with the kernel flipped in both axes and its in/out channels swapped. Check the gather form
// against that statement, computed with conv2d_forward itself.
TEST(Conv2dRef, BackwardInputIsFullCorrelationWithFlippedKernel) {
  const Conv2dShape shapes[] = {
      make_conv2d_shape(2, 3, 5, 6, 4, 3, 3, 1, 1, "c"),
      make_conv2d_shape(1, 2, 5, 7, 3, 2, 3, 1, 0, "c"),
      make_conv2d_shape(1, 2, 4, 5, 3, 4, 5, 1, 0, "c"),
      make_conv2d_shape(1, 1, 6, 6, 2, 5, 5, 1, 2, "c"),
  };
  for (const Conv2dShape& s : shapes) {
    SCOPED_TRACE(s.str());
    auto w = random_vec(s.weight_numel(), 21);
    auto dout = random_vec(s.out_numel(), 22);
    std::vector<double> dinp(s.in_numel());
    ref::conv2d_backward_input(dinp.data(), dout.data(), w.data(), s);

    // flipped, transposed kernel: wf[c][k][i][j] = w[k][c][kh-1-i][kw-1-j]  (C, K, kh, kw)
    std::vector<double> wf(s.weight_numel());
    for (int k = 0; k < s.K; k++)
      for (int c = 0; c < s.C; c++)
        for (int i = 0; i < s.kh; i++)
          for (int j = 0; j < s.kw; j++)
            wf[nchw(c, k, i, j, s.K, s.kh, s.kw)] = w[nchw(k, c, s.kh - 1 - i, s.kw - 1 - j, s.C, s.kh, s.kw)];
    Conv2dShape t = conv_shape(s.N, s.K, s.OH, s.OW, s.C, s.kh, s.kw, 1, 1, s.kh - 1 - s.ph, s.kw - 1 - s.pw);
    ASSERT_EQ(t.OH, s.H);
    ASSERT_EQ(t.OW, s.W);
    std::vector<double> full = forward(dout, wf, nullptr, t);
    EXPECT_TRUE(all_close(full, dinp, 1e-12, 1e-12));
  }
}

// ---- central-difference gradient checks in double ----
// The objective L = sum_i r_i y_i is linear in each of inp, weight, bias, so central differences
// are exact up to rounding (~1e-16 * |L| / h); h = 1e-6 and tol = 1e-6 (Caffe criterion) apply.

TEST(Conv2dRef, GradcheckInputWeightBias) {
  for (const ConvCase& cc : conv_cases()) {
    SCOPED_TRACE(cc.name);
    const Conv2dShape& s = cc.s;
    auto x = random_vec(s.in_numel(), 31);
    auto w = random_vec(s.weight_numel(), 32);
    auto b = random_vec(s.K, 33);
    auto r = random_vec(s.out_numel(), 34);  // dL/dy

    std::vector<double> dinp(s.in_numel()), dw(s.weight_numel()), db(s.K);
    ref::conv2d_backward_input(dinp.data(), r.data(), w.data(), s);
    ref::conv2d_backward_weight(dw.data(), db.data(), r.data(), x.data(), s);

    EXPECT_TRUE(gradcheck([&](const std::vector<double>& xv) { return dot(r, forward(xv, w, &b, s)); }, x, dinp))
        << "input";
    EXPECT_TRUE(gradcheck([&](const std::vector<double>& wv) { return dot(r, forward(x, wv, &b, s)); }, w, dw))
        << "weight";
    EXPECT_TRUE(gradcheck([&](const std::vector<double>& bv) { return dot(r, forward(x, w, &bv, s)); }, b, db))
        << "bias";
  }
}

// With stride 3 and a 2x2 kernel, rows 2, 5 and columns 2, 5, 6 of an 8x7 input are never read
// (the third column window would start at 6 and does not fit): their
// gradient must be exactly 0, and every other input gets a nonzero gradient.
TEST(Conv2dRef, UnreadInputsGetZeroGradient) {
  Conv2dShape s = make_conv2d_shape(1, 1, 8, 7, 2, 2, 2, 3, 0, "c");
  ASSERT_EQ(s.OH, 3);
  ASSERT_EQ(s.OW, 2);
  auto w = random_vec(s.weight_numel(), 41, 0.5, 1.0);  // positive: no accidental cancellation
  std::vector<double> dout(s.out_numel(), 1.0);
  std::vector<double> dinp(s.in_numel());
  ref::conv2d_backward_input(dinp.data(), dout.data(), w.data(), s);
  for (int h = 0; h < s.H; h++)
    for (int x = 0; x < s.W; x++) {
      bool read = (h % 3 != 2 && h < 8) && (x % 3 != 2 && x < 5);  // OW = 2 windows: columns 0..1, 3..4
      double g = dinp[nchw(0, 0, h, x, 1, s.H, s.W)];
      if (read)
        EXPECT_GT(g, 0) << h << "," << x;
      else
        EXPECT_EQ(g, 0) << h << "," << x;
    }
}

// Results do not depend on the number of OpenMP threads (each element summed by one thread in a
// fixed order): bitwise equal with 1 and 2 threads, on a size large enough to run in parallel.
TEST(Conv2dRef, SameResultForAnyThreadCount) {
  Conv2dShape s = make_conv2d_shape(5, 3, 17, 15, 7, 3, 3, 1, 1, "c");
  std::vector<float> x = cast_vec<float>(random_vec(s.in_numel(), 101));
  std::vector<float> w = cast_vec<float>(random_vec(s.weight_numel(), 102));
  std::vector<float> b = cast_vec<float>(random_vec(s.K, 103));
  std::vector<float> dout = cast_vec<float>(random_vec(s.out_numel(), 104));
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    std::vector<float> y = forward(x, w, &b, s), dinp(s.in_numel()), dw(s.weight_numel()), db(s.K);
    ref::conv2d_backward_input(dinp.data(), dout.data(), w.data(), s);
    ref::conv2d_backward_weight(dw.data(), db.data(), dout.data(), x.data(), s);
    return std::vector<std::vector<float>>{y, dinp, dw, db};
  };
  int saved = omp_get_max_threads();
  auto one = run(1), two = run(2);
  omp_set_num_threads(saved);
  for (size_t i = 0; i < one.size(); i++) EXPECT_TRUE(all_close(one[i], two[i], 0, 0)) << "tensor " << i;
}
