// The CPU reference of the activation table and softmax: hand values, derivatives against central
// differences in double, float against double, and overflow safety at huge inputs.
#include <cmath>
#include <string>
#include <vector>

#include "barecnn/ref_ops.h"
#include "test_util.h"

namespace barecnn {
namespace {

using test::all_close;
using test::gradcheck;

// Every activation, with the alpha the arch grammar would give it.
const std::vector<Activation> kAllActs = {
    {Act::Identity, 0.f}, {Act::BinaryStep, 0.f}, {Act::Sigmoid, 0.f}, {Act::Tanh, 0.f},     {Act::Arctan, 0.f},
    {Act::Relu, 0.f},     {Act::LeakyRelu, 0.1f}, {Act::Elu, 0.7f},    {Act::Softplus, 0.f},
};

template <typename T>
std::vector<T> forward(const std::vector<T>& x, Activation a) {
  std::vector<T> y(x.size());
  ref::activation_forward(y.data(), x.data(), (long long)x.size(), a);
  return y;
}
template <typename T>
std::vector<T> backward(const std::vector<T>& x, const std::vector<T>& dy, Activation a) {
  std::vector<T> y = forward(x, a), dx(x.size());
  ref::activation_backward(dx.data(), dy.data(), x.data(), y.data(), (long long)x.size(), a);
  return dx;
}

struct HandCase {
  Activation a;
  double x, y, dydx;
};

TEST(ActivationRef, HandValues) {
  const double e = std::exp(1.0);
  const std::vector<HandCase> cases = {
      {{Act::Identity}, 2.5, 2.5, 1},
      {{Act::Identity}, -1.25, -1.25, 1},
      {{Act::BinaryStep}, -0.5, 0, 0},
      {{Act::BinaryStep}, 0.0, 1, 0},  // step(0) = 1 (x >= 0)
      {{Act::BinaryStep}, 0.5, 1, 0},
      {{Act::Sigmoid}, 0.0, 0.5, 0.25},
      {{Act::Sigmoid}, 2.0, 1 / (1 + std::exp(-2.0)), std::exp(-2.0) / std::pow(1 + std::exp(-2.0), 2)},
      {{Act::Sigmoid}, -1.0, 0.2689414213699951, 0.19661193324148185},
      {{Act::Tanh}, 0.0, 0, 1},
      {{Act::Tanh}, 0.5, 0.46211715726000974, 0.7864477329659274},
      {{Act::Arctan}, 1.0, M_PI / 4, 0.5},
      {{Act::Arctan}, -2.0, -1.1071487177940904, 0.2},
      {{Act::Relu}, -2.0, 0, 0},
      {{Act::Relu}, 3.0, 3, 1},
      {{Act::LeakyRelu, 0.1f}, -2.0, -0.2, 0.1},
      {{Act::LeakyRelu, 0.1f}, 3.0, 3, 1},
      {{Act::Elu, 1.f}, -1.0, 1 / e - 1, 1 / e},
      {{Act::Elu, 0.5f}, -1.0, 0.5 * (1 / e - 1), 0.5 / e},
      {{Act::Elu, 0.5f}, 2.0, 2, 1},
      {{Act::Softplus}, 0.0, std::log(2.0), 0.5},
      {{Act::Softplus}, 1.0, std::log(1 + e), e / (1 + e)},
      {{Act::Softplus}, -3.0, std::log1p(std::exp(-3.0)), 1 / (1 + std::exp(3.0))},
  };
  for (const HandCase& c : cases) {
    SCOPED_TRACE(activation_name(c.a) + " at x = " + std::to_string(c.x));
    // alpha is a float; the expected values use the alpha as written, so allow float rounding
    std::vector<double> x = {c.x}, dy = {3.0};
    EXPECT_NEAR(forward(x, c.a)[0], c.y, 1e-7 * (1 + std::fabs(c.y)));
    EXPECT_NEAR(backward(x, dy, c.a)[0], 3.0 * c.dydx, 3e-7 * (1 + std::fabs(c.dydx)));
    std::vector<float> xf = {float(c.x)}, dyf = {3.f};
    EXPECT_NEAR(forward(xf, c.a)[0], c.y, 1e-6 * (1 + std::fabs(c.y)));
    EXPECT_NEAR(backward(xf, dyf, c.a)[0], 3.0 * c.dydx, 3e-6 * (1 + std::fabs(c.dydx)));
  }
}

TEST(ActivationRef, Names) {
  EXPECT_EQ(activation_name({Act::Identity}), "identity");
  EXPECT_EQ(activation_name({Act::BinaryStep}), "binary_step");
  EXPECT_EQ(activation_name({Act::Sigmoid}), "sigmoid");
  EXPECT_EQ(activation_name({Act::Tanh}), "tanh");
  EXPECT_EQ(activation_name({Act::Arctan}), "arctan");
  EXPECT_EQ(activation_name({Act::Relu}), "relu");
  EXPECT_EQ(activation_name({Act::LeakyRelu, 0.01f}), "leaky_relu(0.01)");
  EXPECT_EQ(activation_name({Act::LeakyRelu, 0.2f}), "leaky_relu(0.2)");
  EXPECT_EQ(activation_name({Act::LeakyRelu, 1e-3f}), "leaky_relu(0.001)");
  EXPECT_EQ(activation_name({Act::Elu, 1.f}), "elu(1)");
  EXPECT_EQ(activation_name({Act::Elu, 1.5f}), "elu(1.5)");
  EXPECT_EQ(activation_name({Act::Softplus}), "softplus");
  // the printed alpha reads back as the same float
  const float odd = 0.123456789f;
  std::string s = activation_name({Act::LeakyRelu, odd});
  EXPECT_EQ(std::stof(s.substr(11, s.size() - 12)), odd) << s;
}

// d/dx of sum_i w_i f(x_i) against activation_backward with dout = w, at points away from the
// kinks at 0 (tie_free_vec keeps every |x| away from 0).
TEST(ActivationRef, DerivativeMatchesCentralDifference) {
  const size_t n = 41;
  std::vector<double> x = test::tie_free_vec(n, 11, -3, 3);
  std::vector<double> w = test::random_vec(n, 12, 0.5, 1.5);
  for (double xi : x) ASSERT_GT(std::fabs(xi), 1e-3);
  for (const Activation& a : kAllActs) {
    SCOPED_TRACE(activation_name(a));
    auto f = [&](const std::vector<double>& xx) {
      std::vector<double> y = forward(xx, a);
      double s = 0;
      for (size_t i = 0; i < n; ++i) s += w[i] * y[i];
      return s;
    };
    std::vector<double> dx = backward(x, w, a);
    // binary step: both the analytic and the numeric derivative are zero away from 0
    bool zero_ok = a.kind == Act::BinaryStep;
    EXPECT_TRUE(gradcheck(f, x, dx, 1e-6, 1e-6, {}, zero_ok));
    if (zero_ok) {
      for (double d : dx) EXPECT_EQ(d, 0.0);
    }
  }
}

TEST(ActivationRef, FloatMatchesDouble) {
  const size_t n = 203;  // odd size
  std::vector<double> x = test::tie_free_vec(n, 21, -6, 6);
  std::vector<double> dy = test::random_vec(n, 22, -1, 1);
  std::vector<float> xf = test::cast_vec<float>(x), dyf = test::cast_vec<float>(dy);
  for (const Activation& a : kAllActs) {
    SCOPED_TRACE(activation_name(a));
    // compare against double evaluated at the float-rounded inputs: only the arithmetic differs
    std::vector<double> xr(xf.begin(), xf.end()), dyr(dyf.begin(), dyf.end());
    EXPECT_TRUE(all_close(forward(xr, a), forward(xf, a), 1e-6, 1e-5));
    EXPECT_TRUE(all_close(backward(xr, dyr, a), backward(xf, dyf, a), 1e-6, 1e-5));
  }
}

TEST(ActivationRef, HugeInputsStayFinite) {
  const std::vector<double> big = {-1000, -100, 100, 1000};
  for (const Activation& a : kAllActs) {
    SCOPED_TRACE(activation_name(a));
    std::vector<double> dy(big.size(), 1.0);
    for (double v : forward(big, a)) EXPECT_TRUE(std::isfinite(v));
    for (double v : backward(big, dy, a)) EXPECT_TRUE(std::isfinite(v));
    std::vector<float> bigf = test::cast_vec<float>(big), dyf(big.size(), 1.f);
    for (float v : forward(bigf, a)) EXPECT_TRUE(std::isfinite(v));
    for (float v : backward(bigf, dyf, a)) EXPECT_TRUE(std::isfinite(v));
  }
  // and the values are the limits
  std::vector<float> bigf = test::cast_vec<float>(big);
  EXPECT_TRUE(all_close(std::vector<double>{0, 0, 1, 1}, forward(bigf, {Act::Sigmoid}), 1e-30, 1e-7));
  EXPECT_TRUE(all_close(std::vector<double>{0, 0, 100, 1000}, forward(bigf, {Act::Softplus}), 1e-30, 1e-7));
  EXPECT_TRUE(all_close(std::vector<double>{-0.7, -0.7, 100, 1000}, forward(bigf, {Act::Elu, 0.7f}), 0, 1e-7));
  std::vector<float> ones(4, 1.f);
  EXPECT_TRUE(all_close(std::vector<double>{0, 0, 1, 1}, backward(bigf, ones, {Act::Softplus}), 1e-30, 1e-7));
}

// ---- softmax ----

template <typename T>
std::vector<T> softmax(const std::vector<T>& z, int N, int K) {
  std::vector<T> y(z.size());
  ref::softmax_forward(y.data(), z.data(), N, K);
  return y;
}

TEST(SoftmaxRef, HandValues) {
  // softmax(0, ln 3) = (1/4, 3/4); softmax of a constant row is uniform
  std::vector<double> z = {0.0, std::log(3.0), 2.0, 2.0, 2.0};
  std::vector<double> y0 = softmax(std::vector<double>(z.begin(), z.begin() + 2), 1, 2);
  EXPECT_NEAR(y0[0], 0.25, 1e-15);
  EXPECT_NEAR(y0[1], 0.75, 1e-15);
  std::vector<double> y1 = softmax(std::vector<double>(z.begin() + 2, z.end()), 1, 3);
  for (double v : y1) EXPECT_NEAR(v, 1.0 / 3.0, 1e-15);
  // (1, 2, 3): e^k / (e + e^2 + e^3)
  std::vector<float> y2 = softmax(std::vector<float>{1, 2, 3}, 1, 3);
  const double s = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  EXPECT_TRUE(all_close(std::vector<double>{std::exp(1.0) / s, std::exp(2.0) / s, std::exp(3.0) / s}, y2, 1e-7, 1e-6));
}

TEST(SoftmaxRef, RowsSumToOneAndShiftInvariance) {
  const int N = 5, K = 7;
  std::vector<double> z = test::random_vec(N * K, 31, -4, 4);
  std::vector<double> y = softmax(z, N, K);
  for (int i = 0; i < N; ++i) {
    double s = 0;
    for (int k = 0; k < K; ++k) {
      EXPECT_GT(y[i * K + k], 0.0);
      s += y[i * K + k];
    }
    EXPECT_NEAR(s, 1.0, 1e-14) << "row " << i;
  }
  // adding a different constant to each row changes nothing
  std::vector<double> zs = z;
  for (int i = 0; i < N; ++i)
    for (int k = 0; k < K; ++k) zs[i * K + k] += 10.0 * i - 17.0;
  EXPECT_TRUE(all_close(y, softmax(zs, N, K), 1e-14, 1e-12));
  // rows are independent: row 2 alone gives the same result
  std::vector<double> row(z.begin() + 2 * K, z.begin() + 3 * K);
  EXPECT_TRUE(all_close(std::vector<double>(y.begin() + 2 * K, y.begin() + 3 * K), softmax(row, 1, K), 0, 1e-15));
}

TEST(SoftmaxRef, BackwardMatchesCentralDifference) {
  const int N = 3, K = 5;
  std::vector<double> z = test::random_vec(N * K, 41, -2, 2);
  std::vector<double> dy = test::random_vec(N * K, 42, -1, 1);  // random upstream gradient
  auto f = [&](const std::vector<double>& zz) {
    std::vector<double> y = softmax(zz, N, K);
    double s = 0;
    for (size_t i = 0; i < y.size(); ++i) s += dy[i] * y[i];
    return s;
  };
  std::vector<double> y = softmax(z, N, K), dz(N * K);
  ref::softmax_backward(dz.data(), dy.data(), y.data(), N, K);
  EXPECT_TRUE(gradcheck(f, z, dz));
  // float agrees with double
  std::vector<float> yf = test::cast_vec<float>(y), dyf = test::cast_vec<float>(dy), dzf(N * K);
  ref::softmax_backward(dzf.data(), dyf.data(), yf.data(), N, K);
  EXPECT_TRUE(all_close(dz, dzf, 1e-7, 1e-5));
  EXPECT_TRUE(all_close(y, softmax(test::cast_vec<float>(z), N, K), 1e-7, 1e-5));
}

TEST(SoftmaxRef, HugeLogitsStayFinite) {
  // rows: (-1000, 1000, 0), (-1000, -1000, -1000), (-100, 100, 100); the max is not first, so
  // a row max taken from the first element would still overflow e^z
  std::vector<double> z = {-1000, 1000, 0, -1000, -1000, -1000, -100, 100, 100};
  const std::vector<double> expect = {0, 1, 0, 1.0 / 3, 1.0 / 3, 1.0 / 3, 0, 0.5, 0.5};
  EXPECT_TRUE(all_close(expect, softmax(z, 3, 3), 1e-30, 1e-15));
  EXPECT_TRUE(all_close(expect, softmax(test::cast_vec<float>(z), 3, 3), 1e-30, 1e-6));
}

}  // namespace
}  // namespace barecnn
