// The CPU reference of the loss table: hand-computed K = 2 examples, gradient checks of dlogits in
// double for every loss, stability at huge logits, the correct-count (ties included) and the
// --loss parser.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "barecnn/error.h"
#include "barecnn/ref_ops.h"
#include "test_util.h"

namespace barecnn {
namespace {

using test::all_close;
using test::gradcheck;

const std::vector<Loss> kAllLosses = {Loss::SoftmaxCrossEntropy,
                                      Loss::BinaryCrossEntropy,
                                      Loss::MSE,
                                      Loss::MSLE,
                                      Loss::L2,
                                      Loss::L1,
                                      Loss::MAE,
                                      Loss::MAPE};

template <typename T>
struct Result {
  std::vector<T> loss, dlogits;
  std::vector<int32_t> correct;
};

template <typename T>
Result<T> run(const std::vector<T>& logits, const std::vector<int32_t>& labels, int K, Loss kind, T grad_scale = T(1)) {
  const int N = static_cast<int>(labels.size());
  Result<T> r{std::vector<T>(N), std::vector<T>(size_t(N) * K), std::vector<int32_t>(N, -1)};
  ref::loss_forward_backward(r.loss.data(), r.dlogits.data(), r.correct.data(), logits.data(), labels.data(), N, K,
                             kind, grad_scale);
  return r;
}

double sigmoid(double x) { return 1 / (1 + std::exp(-x)); }

struct HandCase {
  Loss kind;
  std::vector<double> z;  // (1, 2)
  int label;
  double loss;
  std::vector<double> dz;  // (1, 2)
};

// Each loss on one sample with K = 2; the expected values are worked out by hand from the formula
// in loss.h (y is the one-hot label).
TEST(LossRef, HandValuesK2) {
  const double e2 = std::exp(2.0);
  const double mape_eps = 1e-7;  // the documented guard of MAPE's denominator at y = 0
  const std::vector<HandCase> cases = {
      // z = (1, 3), y = (1, 0): log(e + e^3) - 1 = log(1 + e^2); dz = softmax(z) - y
      {Loss::SoftmaxCrossEntropy, {1, 3}, 0, std::log1p(e2), {1 / (1 + e2) - 1, e2 / (1 + e2)}},
      // z = (1, 3), y = (0, 1): log(e + e^3) - 3 = log(1 + e^-2)
      {Loss::SoftmaxCrossEntropy, {1, 3}, 1, std::log1p(1 / e2), {1 / (1 + e2), e2 / (1 + e2) - 1}},
      // z = (0.5, -1), y = (1, 0): -log s(0.5) - log(1 - s(-1)); dz = s(z) - y
      {Loss::BinaryCrossEntropy,
       {0.5, -1},
       0,
       -std::log(sigmoid(0.5)) - std::log(1 - sigmoid(-1.0)),
       {sigmoid(0.5) - 1, sigmoid(-1.0)}},
      // z = (0.25, 2), y = (0, 1): (0.25^2 + 1^2) / 2; dz = 2 (z - y) / 2
      {Loss::MSE, {0.25, 2}, 1, 0.53125, {0.25, 1}},
      // z = (1, 0.5), y = (1, 0): ((log 2 - log 2)^2 + (log 1.5 - log 1)^2) / 2;
      // dz_1 = (2/2) (log 1.5) / 1.5
      {Loss::MSLE, {1, 0.5}, 0, std::pow(std::log(1.5), 2) / 2, {0, std::log(1.5) / 1.5}},
      // z = (-2, 0), y = (0, 1): z_0 is clamped to -1 + 2^-23 (log(1 + z_0) = -23 log 2) and its
      // gradient is 0; ((23 log 2)^2 + (log 2)^2) / 2, dz_1 = (0 - log 2) / 1
      {Loss::MSLE, {-2, 0}, 1, (23 * 23 + 1) * std::pow(std::log(2.0), 2) / 2, {0, -std::log(2.0)}},
      // z = (1, -1): exactly at the pole, clamped as well
      {Loss::MSLE, {1, -1}, 0, (23 * 23) * std::pow(std::log(2.0), 2) / 2, {0, 0}},
      // z = (0.25, 2), y = (0, 1): 0.25^2 + 1^2; dz = 2 (z - y)
      {Loss::L2, {0.25, 2}, 1, 1.0625, {0.5, 2}},
      // z = (0.25, 2), y = (0, 1): 0.25 + 1; dz = sign(z - y)
      {Loss::L1, {0.25, 2}, 1, 1.25, {1, 1}},
      {Loss::L1, {-0.5, 0.25}, 1, 1.25, {-1, -1}},
      // z = (0.25, 2), y = (0, 1): (0.25 + 1) / 2; dz = sign(z - y) / 2
      {Loss::MAE, {0.25, 2}, 1, 0.625, {0.5, 0.5}},
      // z = (0.5, 0.75), y = (0, 1): (100/2) (0.5 / eps + 0.25 / 1);
      // dz = (100/2) (sign(0.5) / eps, sign(-0.25) / 1)
      {Loss::MAPE, {0.5, 0.75}, 1, 50 * (0.5 / mape_eps + 0.25), {50 / mape_eps, -50}},
      // exact hits have zero subgradient: z = (0, 1) = y
      {Loss::MAPE, {0, 1}, 1, 0, {0, 0}},
      {Loss::L1, {1, 0}, 0, 0, {0, 0}},
  };
  for (const HandCase& c : cases) {
    SCOPED_TRACE(loss_name(c.kind) + " label " + std::to_string(c.label));
    Result<double> r = run(c.z, {c.label}, 2, c.kind);
    EXPECT_NEAR(r.loss[0], c.loss, 1e-12 * (1 + std::fabs(c.loss)));
    EXPECT_TRUE(all_close(c.dz, r.dlogits, 1e-12, 1e-12));
    Result<float> rf = run(test::cast_vec<float>(c.z), {c.label}, 2, c.kind);
    EXPECT_NEAR(rf.loss[0], c.loss, 1e-6 * (1 + std::fabs(c.loss)));
    EXPECT_TRUE(all_close(c.dz, rf.dlogits, 1e-6, 1e-6));
  }
}

// Logits (N, K) away from every kink: |z - y| > 0.05 (L1, MAE, MAPE) and z > -0.95 (MSLE's clamp).
std::vector<double> smooth_logits(int N, int K, const std::vector<int32_t>& labels, uint64_t seed) {
  std::vector<double> z = test::tie_free_vec(size_t(N) * K, seed, -0.9, 2.5);
  for (int i = 0; i < N; ++i)
    for (int k = 0; k < K; ++k) {
      double& v = z[size_t(i) * K + k];
      double y = k == labels[i] ? 1.0 : 0.0;
      if (std::fabs(v - y) < 0.05) v += 0.1;
    }
  return z;
}

// d (1/N) sum_i loss_i / d logits against dlogits with grad_scale = 1/N.
TEST(LossRef, GradientMatchesCentralDifference) {
  const int N = 3, K = 5;
  const std::vector<int32_t> labels = {2, 0, 4};
  const std::vector<double> z = smooth_logits(N, K, labels, 51);
  for (Loss kind : kAllLosses) {
    SCOPED_TRACE(loss_name(kind));
    auto f = [&](const std::vector<double>& zz) {
      Result<double> r = run(zz, labels, K, kind);
      double s = 0;
      for (double l : r.loss) s += l;
      return s / N;
    };
    Result<double> r = run(z, labels, K, kind, 1.0 / N);
    // L1, MAE and MAPE are piecewise linear, so a step that stays inside the 0.05 margin from the
    // kinks is exact; a large one is needed for MAPE, whose ~1e8 loss (1/eps terms) would
    // otherwise swamp the difference quotient of its O(1) entries in rounding error.
    const bool linear = kind == Loss::L1 || kind == Loss::MAE || kind == Loss::MAPE;
    EXPECT_TRUE(gradcheck(f, z, r.dlogits, linear ? 0.02 : 1e-6, 1e-6));
    // grad_scale scales dlogits only, not the loss
    Result<double> r1 = run(z, labels, K, kind, 1.0);
    EXPECT_TRUE(all_close(r1.loss, r.loss, 0, 0));
    for (double& d : r1.dlogits) d /= N;
    EXPECT_TRUE(all_close(r1.dlogits, r.dlogits, 1e-15, 1e-13));
  }
}

TEST(LossRef, FloatMatchesDouble) {
  const int N = 7, K = 10;
  std::vector<int32_t> labels = {3, 0, 9, 5, 5, 1, 8};
  const std::vector<double> z = smooth_logits(N, K, labels, 61);
  for (Loss kind : kAllLosses) {
    SCOPED_TRACE(loss_name(kind));
    Result<double> r = run(z, labels, K, kind, 1.0 / N);
    Result<float> rf = run(test::cast_vec<float>(z), labels, K, kind, 1.f / N);
    EXPECT_TRUE(all_close(r.loss, rf.loss, 1e-6, 1e-5));
    EXPECT_TRUE(all_close(r.dlogits, rf.dlogits, 1e-6, 1e-5));
    EXPECT_EQ(r.correct, rf.correct);
  }
}

// Huge logits: a naive softmax (e^1000) or BCE (log sigmoid(-1000) = log 0) would give inf/NaN.
TEST(LossRef, CrossEntropyAndBceStableAtHugeLogits) {
  const std::vector<double> z = {1000, -1000, 1000, -1000, 1000, 999};  // (3, 2)
  const std::vector<int32_t> labels = {0, 1, 1};
  // CE: sample 0 is right with certainty (0); sample 1 pays 2000; sample 2: log(e^1000 + e^999) -
  // 999 = 1 + log(1 + e^-1)
  const std::vector<double> ce = {0, 2000, 1 + std::log1p(std::exp(-1.0))};
  const double s = sigmoid(1.0);  // softmax(1000, 999) = (s(1), 1 - s(1))
  const std::vector<double> dce = {0, 0, 1, -1, s, -s};
  // BCE: sum over both outputs; sample 0 is right (0), sample 1 is wrong twice (1000 + 1000);
  // sample 2: softplus(1000) + softplus(999) - 999 = 1000 + log1p(e^-999)
  const std::vector<double> bce = {0, 2000, 1000};
  const std::vector<double> dbce = {0, 0, 1, -1, 1, 0};
  Result<double> r = run(z, labels, 2, Loss::SoftmaxCrossEntropy);
  EXPECT_TRUE(all_close(ce, r.loss, 1e-12, 1e-12));
  EXPECT_TRUE(all_close(dce, r.dlogits, 1e-12, 1e-12));
  Result<float> rf = run(test::cast_vec<float>(z), labels, 2, Loss::SoftmaxCrossEntropy);
  EXPECT_TRUE(all_close(ce, rf.loss, 1e-4, 1e-6));  // 1000 - 999 in float is exact; log is not
  EXPECT_TRUE(all_close(dce, rf.dlogits, 1e-6, 1e-6));
  r = run(z, labels, 2, Loss::BinaryCrossEntropy);
  EXPECT_TRUE(all_close(bce, r.loss, 1e-12, 1e-12));
  EXPECT_TRUE(all_close(dbce, r.dlogits, 1e-12, 1e-12));
  rf = run(test::cast_vec<float>(z), labels, 2, Loss::BinaryCrossEntropy);
  EXPECT_TRUE(all_close(bce, rf.loss, 1e-4, 1e-6));
  EXPECT_TRUE(all_close(dbce, rf.dlogits, 1e-6, 1e-6));
  // every other loss is finite there too (no division or log that can blow up)
  for (Loss kind : kAllLosses) {
    SCOPED_TRACE(loss_name(kind));
    Result<float> q = run(test::cast_vec<float>(z), labels, 2, kind);
    for (float v : q.loss) EXPECT_TRUE(std::isfinite(v));
    for (float v : q.dlogits) EXPECT_TRUE(std::isfinite(v));
  }
}

TEST(LossRef, CorrectCountFirstIndexWinsTies) {
  // (4, 3): argmax 1 (label 1: right); tie between 0 and 1 -> 0 (label 0: right; label 1: wrong);
  // argmax 2 (label 0: wrong)
  const std::vector<double> z = {0.1, 0.7, 0.2, 0.5, 0.5, 0.1, 0.5, 0.5, 0.1, 0.3, 0.2, 0.9};
  const std::vector<int32_t> labels = {1, 0, 1, 0};
  const std::vector<int32_t> expect = {1, 1, 0, 0};
  for (Loss kind : kAllLosses) {
    SCOPED_TRACE(loss_name(kind));
    EXPECT_EQ(run(z, labels, 3, kind).correct, expect);
  }
  // dlogits and correct are optional
  std::vector<double> loss(4), full_loss = run(z, labels, 3, Loss::SoftmaxCrossEntropy).loss;
  ref::loss_forward_backward<double>(loss.data(), nullptr, nullptr, z.data(), labels.data(), 4, 3,
                                     Loss::SoftmaxCrossEntropy, 1.0);
  EXPECT_EQ(loss, full_loss);
}

TEST(LossRef, LabelOutsideRangeIsACallerBug) {
  std::vector<double> z = {0.1, 0.2}, loss(1);
  for (int32_t bad : {-1, 2}) {
    std::vector<int32_t> labels = {bad};
    EXPECT_THROW(ref::loss_forward_backward<double>(loss.data(), nullptr, nullptr, z.data(), labels.data(), 1, 2,
                                                    Loss::MSE, 1.0),
                 Error);
  }
}

TEST(LossRef, NamesRoundTrip) {
  int count = 0;
  const char* const* names = loss_names(&count);
  ASSERT_EQ(count, 8);
  const std::vector<std::string> expect = {"cross_entropy", "bce", "mse", "msle", "l2", "l1", "mae", "mape"};
  for (int i = 0; i < count; ++i) {
    EXPECT_EQ(names[i], expect[i]);
    EXPECT_EQ(loss_name(kAllLosses[i]), expect[i]);
    EXPECT_EQ(parse_loss(expect[i]), kAllLosses[i]);
  }
}

TEST(LossRef, ParseErrorNamesFlagValueAndNearest) {
  struct Case {
    std::string bad, nearest;
  };
  for (const Case& c : {Case{"mes", "mse"}, Case{"crossentropy", "cross_entropy"}, Case{"maee", "mae"},
                        Case{"mapee", "mape"}, Case{"nll", "cross_entropy"}, Case{"MSLEE", "msle"}}) {
    try {
      parse_loss(c.bad);
      ADD_FAILURE() << "parse_loss(\"" << c.bad << "\") did not throw";
    } catch (const UsageError& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find("--loss"), std::string::npos) << msg;
      EXPECT_NE(msg.find("'" + c.bad + "'"), std::string::npos) << msg;
      EXPECT_NE(msg.find("did you mean '" + c.nearest + "'"), std::string::npos) << msg;
      for (const char* name : {"cross_entropy", "bce", "mse", "msle", "l2", "l1", "mae", "mape"})
        EXPECT_NE(msg.find(name), std::string::npos) << msg;
      EXPECT_EQ(e.exit_code(), 2);
    }
  }
  EXPECT_THROW(parse_loss(""), UsageError);
  // Nothing close: no suggestion rather than a far one ("nlx" is two edits from "l1" and "l2").
  std::string msg = test::usage_error_message([] { parse_loss("nlx"); });
  EXPECT_EQ(msg.find("did you mean"), std::string::npos) << msg;
  // Any case.
  EXPECT_EQ(parse_loss("L1"), Loss::L1);
  EXPECT_EQ(parse_loss("Cross_Entropy"), Loss::SoftmaxCrossEntropy);
}

}  // namespace
}  // namespace barecnn
