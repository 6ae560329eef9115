// CPU reference of the dense layer (host/reference/dense.cpp): a hand-computed case of forward and
// both backward passes, float against double, and central-difference gradient checks in double of
// input, weight and bias.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <vector>

#include "barecnn/ref_ops.h"
#include "test_util.h"

using namespace barecnn;
using barecnn::test::all_close;
using barecnn::test::cast_vec;
using barecnn::test::gradcheck;
using barecnn::test::random_vec;

namespace {

template <typename T>
struct identity {
  using type = T;
};

// `bias` is in a non-deduced context so that a plain nullptr can be passed.
template <typename T>
std::vector<T> forward(const std::vector<T>& inp, const std::vector<T>& weight,
                       const std::vector<typename identity<T>::type>* bias, int N, int IN, int OUT) {
  std::vector<T> out(size_t(N) * OUT);
  ref::dense_forward(out.data(), inp.data(), weight.data(), bias ? bias->data() : nullptr, N, IN, OUT);
  return out;
}

double dot(const std::vector<double>& r, const std::vector<double>& y) {
  double acc = 0;
  for (size_t i = 0; i < y.size(); i++) acc += r[i] * y[i];
  return acc;
}

}  // namespace

TEST(DenseRef, Hand) {
  const int N = 2, IN = 3, OUT = 2;
  std::vector<double> x = {1,  2, 3,  // (N, IN)
                           -1, 0, 2};
  std::vector<double> w = {1, 0, -1,  // (OUT, IN), as torch.nn.Linear
                           2, 1, 0};
  std::vector<double> b = {0.5, -1};
  // out[n][o] = b[o] + sum_i x[n][i] w[o][i]
  //   row 0: 0.5 + (1 - 3) = -1.5,   -1 + (2 + 2) = 3
  //   row 1: 0.5 + (-1 - 2) = -2.5,  -1 + (-2 + 0) = -3
  EXPECT_EQ(forward(x, w, &b, N, IN, OUT), (std::vector<double>{-1.5, 3, -2.5, -3}));
  EXPECT_EQ(forward(x, w, nullptr, N, IN, OUT), (std::vector<double>{-2, 4, -3, -2}));

  std::vector<double> dout = {1, 2, 3, -1};
  // dinp = dout W: row 0 = 1*[1,0,-1] + 2*[2,1,0] = [5,2,-1]; row 1 = 3*[1,0,-1] - [2,1,0] = [1,-1,-3]
  std::vector<double> dinp(N * IN, NAN);
  ref::dense_backward_input(dinp.data(), dout.data(), w.data(), N, IN, OUT);
  EXPECT_EQ(dinp, (std::vector<double>{5, 2, -1, 1, -1, -3}));
  // dW = dout^T x: row 0 = 1*[1,2,3] + 3*[-1,0,2] = [-2,2,9]; row 1 = 2*[1,2,3] - [-1,0,2] = [3,4,4]
  // db = column sums of dout = [4, 1]
  std::vector<double> dw(OUT * IN, NAN), db(OUT, NAN);
  ref::dense_backward_weight(dw.data(), db.data(), dout.data(), x.data(), N, IN, OUT);
  EXPECT_EQ(dw, (std::vector<double>{-2, 2, 9, 3, 4, 4}));
  EXPECT_EQ(db, (std::vector<double>{4, 1}));

  // a null dbias is allowed; called again, the gradients are overwritten, not accumulated
  ref::dense_backward_weight(dw.data(), static_cast<double*>(nullptr), dout.data(), x.data(), N, IN, OUT);
  EXPECT_EQ(dw, (std::vector<double>{-2, 2, 9, 3, 4, 4}));
  ref::dense_backward_input(dinp.data(), dout.data(), w.data(), N, IN, OUT);
  EXPECT_EQ(dinp, (std::vector<double>{5, 2, -1, 1, -1, -3}));
}

struct DenseCase {
  int N, IN, OUT;
};
static const DenseCase kCases[] = {{1, 1, 1}, {3, 7, 5}, {4, 13, 10}, {2, 30, 3}};

TEST(DenseRef, FloatMatchesDouble) {
  for (const DenseCase& c : kCases) {
    SCOPED_TRACE(::testing::Message() << "N=" << c.N << " IN=" << c.IN << " OUT=" << c.OUT);
    std::vector<float> xf = cast_vec<float>(random_vec(size_t(c.N) * c.IN, 1));
    std::vector<float> wf = cast_vec<float>(random_vec(size_t(c.OUT) * c.IN, 2));
    std::vector<float> bf = cast_vec<float>(random_vec(c.OUT, 3));
    std::vector<float> df = cast_vec<float>(random_vec(size_t(c.N) * c.OUT, 4));
    std::vector<double> xd(xf.begin(), xf.end()), wd(wf.begin(), wf.end()), bd(bf.begin(), bf.end()),
        dd(df.begin(), df.end());
    EXPECT_TRUE(all_close(forward(xd, wd, &bd, c.N, c.IN, c.OUT), forward(xf, wf, &bf, c.N, c.IN, c.OUT), 1e-5, 1e-5));

    std::vector<double> dinp_d(xd.size()), dw_d(wd.size()), db_d(c.OUT);
    std::vector<float> dinp_f(xf.size()), dw_f(wf.size()), db_f(c.OUT);
    ref::dense_backward_input(dinp_d.data(), dd.data(), wd.data(), c.N, c.IN, c.OUT);
    ref::dense_backward_input(dinp_f.data(), df.data(), wf.data(), c.N, c.IN, c.OUT);
    ref::dense_backward_weight(dw_d.data(), db_d.data(), dd.data(), xd.data(), c.N, c.IN, c.OUT);
    ref::dense_backward_weight(dw_f.data(), db_f.data(), df.data(), xf.data(), c.N, c.IN, c.OUT);
    EXPECT_TRUE(all_close(dinp_d, dinp_f, 1e-5, 1e-5));
    EXPECT_TRUE(all_close(dw_d, dw_f, 1e-5, 1e-5));
    EXPECT_TRUE(all_close(db_d, db_f, 1e-5, 1e-5));
  }
}

// Central differences in double of L = sum r_i y_i (fixed random r). L is linear in each of
// inp, weight, bias, so the differences are exact up to rounding; h = 1e-6, tol = 1e-6.
TEST(DenseRef, GradcheckInputWeightBias) {
  for (const DenseCase& c : kCases) {
    SCOPED_TRACE(::testing::Message() << "N=" << c.N << " IN=" << c.IN << " OUT=" << c.OUT);
    auto x = random_vec(size_t(c.N) * c.IN, 11);
    auto w = random_vec(size_t(c.OUT) * c.IN, 12);
    auto b = random_vec(c.OUT, 13);
    auto r = random_vec(size_t(c.N) * c.OUT, 14);
    std::vector<double> dinp(x.size()), dw(w.size()), db(c.OUT);
    ref::dense_backward_input(dinp.data(), r.data(), w.data(), c.N, c.IN, c.OUT);
    ref::dense_backward_weight(dw.data(), db.data(), r.data(), x.data(), c.N, c.IN, c.OUT);
    EXPECT_TRUE(
        gradcheck([&](const std::vector<double>& v) { return dot(r, forward(v, w, &b, c.N, c.IN, c.OUT)); }, x, dinp))
        << "input";
    EXPECT_TRUE(
        gradcheck([&](const std::vector<double>& v) { return dot(r, forward(x, v, &b, c.N, c.IN, c.OUT)); }, w, dw))
        << "weight";
    EXPECT_TRUE(
        gradcheck([&](const std::vector<double>& v) { return dot(r, forward(x, w, &v, c.N, c.IN, c.OUT)); }, b, db))
        << "bias";
  }
}

// Bitwise the same with 1 and 2 OpenMP threads, on a size large enough to run in parallel.
TEST(DenseRef, SameResultForAnyThreadCount) {
  const int N = 9, IN = 257, OUT = 65;
  std::vector<float> x = cast_vec<float>(random_vec(size_t(N) * IN, 21));
  std::vector<float> w = cast_vec<float>(random_vec(size_t(OUT) * IN, 22));
  std::vector<float> b = cast_vec<float>(random_vec(OUT, 23));
  std::vector<float> dout = cast_vec<float>(random_vec(size_t(N) * OUT, 24));
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    std::vector<float> y = forward(x, w, &b, N, IN, OUT), dinp(x.size()), dw(w.size()), db(OUT);
    ref::dense_backward_input(dinp.data(), dout.data(), w.data(), N, IN, OUT);
    ref::dense_backward_weight(dw.data(), db.data(), dout.data(), x.data(), N, IN, OUT);
    return std::vector<std::vector<float>>{y, dinp, dw, db};
  };
  int saved = omp_get_max_threads();
  auto one = run(1), two = run(2);
  omp_set_num_threads(saved);
  for (size_t i = 0; i < one.size(); i++) EXPECT_TRUE(all_close(one[i], two[i], 0, 0)) << "tensor " << i;
}
