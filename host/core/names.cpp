// The names of activations and losses (what --arch and --loss read and the messages print), and
// the "did you mean" hint.
#include "barecnn/names.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "barecnn/activation.h"
#include "barecnn/error.h"
#include "barecnn/loss.h"

namespace barecnn {

// ---- activations ---------------------------------------------------------------------------------

// Shortest decimal form that reads back as the same float ("0.01", not "0.0099999998").
static std::string shortest_float(float v) {
  char buf[32];
  for (int prec = 1; prec <= 9; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, double(v));
    if (std::strtof(buf, nullptr) == v) break;  // 9 significant digits always round-trip
  }
  return buf;
}

// The name the --arch grammar reads back: a parsed spec prints as the spec.
std::string activation_name(const Activation& a) {
  switch (a.kind) {
    case Act::Identity:
      return "identity";
    case Act::BinaryStep:
      return "binary_step";
    case Act::Sigmoid:
      return "sigmoid";
    case Act::Tanh:
      return "tanh";
    case Act::Arctan:
      return "arctan";
    case Act::Relu:
      return "relu";
    case Act::LeakyRelu:
      return "leaky_relu(" + shortest_float(a.alpha) + ")";
    case Act::Elu:
      return "elu(" + shortest_float(a.alpha) + ")";
    case Act::Softplus:
      return "softplus";
  }
  return fmt("activation(", static_cast<int>(a.kind), ")");
}

// ---- "did you mean" ------------------------------------------------------------------------------

// Levenshtein distance.
static size_t levenshtein(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string nearest(const std::string& word, const std::vector<std::string>& choices) {
  std::string best;
  size_t best_d = SIZE_MAX;
  for (auto& c : choices) {
    size_t d = levenshtein(word, c);
    if (d < best_d) best_d = d, best = c;
  }
  // Only suggest something plausibly meant: at most half the word changed.
  return best_d <= std::max<size_t>(2, word.size() / 2) ? best : "";
}

// ---- losses --------------------------------------------------------------------------------------

static const char* const kLossNames[] = {"cross_entropy", "bce", "mse", "msle", "l2", "l1", "mae", "mape"};
static constexpr int kNumLosses = static_cast<int>(sizeof(kLossNames) / sizeof(kLossNames[0]));

const char* const* loss_names(int* count) {
  if (count) *count = kNumLosses;
  return kLossNames;
}

std::string loss_name(Loss l) {
  int i = static_cast<int>(l);
  BARECNN_ASSERT(i >= 0 && i < kNumLosses, "loss_name: unknown Loss value ", i);
  return kLossNames[i];
}

Loss parse_loss(const std::string& s) {
  for (int i = 0; i < kNumLosses; ++i)
    if (s == kLossNames[i]) return static_cast<Loss>(i);
  // Unlike nearest(), always names the closest loss (the first of equals).
  int best = 0;
  for (int i = 1; i < kNumLosses; ++i)
    if (levenshtein(s, kLossNames[i]) < levenshtein(s, kLossNames[best])) best = i;
  std::string valid;
  for (int i = 0; i < kNumLosses; ++i) valid += std::string(i ? ", " : "") + kLossNames[i];
  throw UsageError(
      fmt("--loss: unknown loss '", s, "'; valid losses are ", valid, " (did you mean '", kLossNames[best], "'?)"));
}

}  // namespace barecnn
