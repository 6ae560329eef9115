// The CPU reference of the data path: batch gather + normalization, the epoch permutation, and a
// statistical sanity check of the host random generator.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "barecnn/error.h"
#include "barecnn/ref_ops.h"
#include "barecnn/rng.h"
#include "test_util.h"

namespace barecnn {
namespace {

using test::all_close;

TEST(DataRef, GatherNormalizeHandValues) {
  // 4 images of P = 3 pixels, labels 7, 1, 4, 9; the batch takes rows 2, 0, 2 (repeats allowed)
  const std::vector<uint8_t> images = {0, 255, 51, 10, 20, 30, 255, 0, 102, 1, 2, 3};  // (4, 3)
  const std::vector<uint8_t> labels = {7, 1, 4, 9};
  const std::vector<int32_t> idx = {2, 0, 2};
  const float mean = 0.5f, std = 0.25f;
  // (x / 255 - 0.5) / 0.25: 255 -> 2, 0 -> -2, 102 -> (0.4 - 0.5) / 0.25 = -0.4, 51 -> (0.2 - 0.5) / 0.25 = -1.2
  const std::vector<double> expect = {2, -2, -0.4, -2, 2, -1.2, 2, -2, -0.4};  // (3, 3)
  std::vector<double> out(9, -99);
  std::vector<int32_t> out_labels(3, -1);
  ref::gather_normalize(out.data(), out_labels.data(), images.data(), labels.data(), idx.data(), 3, 3, mean, std);
  EXPECT_TRUE(all_close(expect, out, 1e-15, 1e-15));
  EXPECT_EQ(out_labels, (std::vector<int32_t>{4, 7, 4}));
  std::vector<float> outf(9, -99);
  ref::gather_normalize(outf.data(), out_labels.data(), images.data(), labels.data(), idx.data(), 3, 3, mean, std);
  EXPECT_TRUE(all_close(expect, outf, 1e-6, 1e-6));
  // labels are optional (predict has none)
  std::vector<double> out2(9);
  ref::gather_normalize<double>(out2.data(), nullptr, images.data(), nullptr, idx.data(), 3, 3, mean, std);
  EXPECT_EQ(out2, out);
}

TEST(DataRef, GatherNormalizeFashionMnistStats) {
  // the mean/std a real run uses: every pixel maps through (x/255 - mean)/std independently
  const int P = 784, B = 2;
  std::vector<uint8_t> images(3 * P);
  for (size_t i = 0; i < images.size(); ++i) images[i] = uint8_t((i * 37 + 11) % 256);
  std::vector<uint8_t> labels = {3, 5, 8};
  std::vector<int32_t> idx = {1, 2};
  const float mean = 0.2860f, std = 0.3530f;
  std::vector<float> out(B * P);
  std::vector<int32_t> out_labels(B);
  ref::gather_normalize(out.data(), out_labels.data(), images.data(), labels.data(), idx.data(), B, P, mean, std);
  std::vector<double> expect(B * P);
  for (int b = 0; b < B; ++b)
    for (int p = 0; p < P; ++p) expect[b * P + p] = (images[idx[b] * P + p] / 255.0 - double(mean)) / double(std);
  EXPECT_TRUE(all_close(expect, out, 1e-6, 1e-6));
  EXPECT_EQ(out_labels, (std::vector<int32_t>{5, 8}));
}

bool is_permutation_of_iota(const std::vector<int32_t>& p) {
  std::vector<int32_t> s = p;
  std::sort(s.begin(), s.end());
  for (size_t i = 0; i < s.size(); ++i)
    if (s[i] != int32_t(i)) return false;
  return true;
}

TEST(DataRef, EpochPermutation) {
  for (int n : {1, 2, 7, 1000, 60001}) {
    SCOPED_TRACE(n);
    std::vector<int32_t> p = ref::epoch_permutation(n, 42, 0);
    ASSERT_EQ(p.size(), size_t(n));
    EXPECT_TRUE(is_permutation_of_iota(p));
    // same (seed, epoch) -> the same order
    EXPECT_EQ(p, ref::epoch_permutation(n, 42, 0));
  }
  const int n = 1000;
  std::vector<int32_t> base = ref::epoch_permutation(n, 42, 0);
  std::vector<int32_t> iota(n);
  std::iota(iota.begin(), iota.end(), 0);
  EXPECT_NE(base, iota) << "the permutation does not shuffle";
  // different epochs and different seeds give different orders; count the fixed points against
  // the base order (about 1 expected for independent random permutations)
  for (auto [seed, epoch] : {std::pair<uint64_t, long long>{42, 1}, {42, 2}, {43, 0}, {0, 0}, {42, 1000000}}) {
    SCOPED_TRACE(testing::Message() << "seed " << seed << " epoch " << epoch);
    std::vector<int32_t> q = ref::epoch_permutation(n, seed, epoch);
    EXPECT_TRUE(is_permutation_of_iota(q));
    int same = 0;
    for (int i = 0; i < n; ++i) same += q[i] == base[i];
    EXPECT_LT(same, 20);
  }
  // roughly uniform: position of sample 0 over many epochs is spread over the whole range
  double mean_pos = 0;
  const int epochs = 2000;
  for (int e = 0; e < epochs; ++e) {
    std::vector<int32_t> q = ref::epoch_permutation(100, 7, e);
    mean_pos += std::find(q.begin(), q.end(), 0) - q.begin();
  }
  mean_pos /= epochs;
  EXPECT_NEAR(mean_pos, 49.5, 3.0);  // std of the mean is 29/sqrt(2000) = 0.65
}

// A statistical sanity check: it fails when the generator is broken (constant, biased, or a bad
// Box-Muller), with bounds many standard errors wide so a working generator never trips them.
TEST(DataRef, RngUniformAndNormalMoments) {
  const int n = 100000;
  Rng r(12345);
  double sum = 0, sum2 = 0, lo = 1, hi = 0;
  int below_tenth = 0;
  for (int i = 0; i < n; ++i) {
    double u = r.uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    lo = std::min(lo, u);
    hi = std::max(hi, u);
    sum += u;
    sum2 += u * u;
    below_tenth += u < 0.1;
  }
  double mean = sum / n, var = sum2 / n - mean * mean;
  EXPECT_NEAR(mean, 0.5, 0.01);           // standard error 0.0009
  EXPECT_NEAR(var, 1.0 / 12, 0.003);      // standard error 0.0003
  EXPECT_NEAR(below_tenth, n / 10, 600);  // standard error 95
  EXPECT_LT(lo, 1e-3);
  EXPECT_GT(hi, 1 - 1e-3);
  for (int i = 0; i < 1000; ++i) {
    double u = r.uniform(-3, 5);
    ASSERT_GE(u, -3.0);
    ASSERT_LT(u, 5.0);
  }

  Rng g(777);
  sum = sum2 = 0;
  double sum4 = 0;
  int beyond2 = 0;
  for (int i = 0; i < n; ++i) {
    double x = g.normal();
    ASSERT_TRUE(std::isfinite(x));
    sum += x;
    sum2 += x * x;
    sum4 += x * x * x * x;
    beyond2 += std::fabs(x) > 2;
  }
  mean = sum / n;
  var = sum2 / n - mean * mean;
  EXPECT_NEAR(mean, 0.0, 0.02);           // standard error 0.003
  EXPECT_NEAR(var, 1.0, 0.03);            // standard error 0.0045
  EXPECT_NEAR(sum4 / n, 3.0, 0.2);        // kurtosis of a normal; standard error 0.03
  EXPECT_NEAR(beyond2, 0.0455 * n, 500);  // P(|x| > 2) = 4.55%; standard error 66

  // the same seed gives the same stream; state() / set_state() resume it
  Rng a(99), b(99);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(a.next_u64(), b.next_u64());
  uint64_t st = a.state();
  double x1 = a.uniform();
  a.set_state(st);
  EXPECT_EQ(a.uniform(), x1);
  EXPECT_NE(Rng(1).next_u64(), Rng(2).next_u64());
}

}  // namespace
}  // namespace barecnn
