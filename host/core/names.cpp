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
std::string shortest_float(float v) {
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

// Edit distance counting an insertion, a deletion, a substitution or a swap of two neighbouring
// letters as one edit (optimal string alignment), so "trian" is one edit from "train".
static size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i)
    for (size_t j = 1; j <= b.size(); ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1])});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

std::string nearest(const std::string& word, const std::vector<std::string>& choices) {
  std::string best;
  size_t best_d = SIZE_MAX;
  for (auto& c : choices) {
    size_t d = edit_distance(word, c);
    if (d < best_d) best_d = d, best = c;
  }
  // Only what was plausibly meant: one edit in a short word, two in a longer one.
  return best_d <= (word.size() <= 4 ? 1u : 2u) ? best : "";
}

std::string lower(const std::string& s) {
  std::string r = s;
  for (char& c : r) c = char(std::tolower(static_cast<unsigned char>(c)));
  return r;
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
  const std::string name = lower(s);
  for (int i = 0; i < kNumLosses; ++i)
    if (name == kLossNames[i]) return static_cast<Loss>(i);
  std::string valid;
  std::vector<std::string> names;
  for (int i = 0; i < kNumLosses; ++i) {
    valid += std::string(i ? ", " : "") + kLossNames[i];
    names.push_back(kLossNames[i]);
  }
  // What other frameworks call the softmax cross-entropy.
  std::string near = nearest(name, names);
  for (const char* other : {"nll", "nllloss", "ce", "crossentropy", "crossentropyloss", "categorical_crossentropy",
                            "softmax_cross_entropy", "log_loss"})
    if (name == other) near = "cross_entropy";
  throw UsageError(fmt("--loss: unknown loss '", s, "'; valid losses are ", valid,
                       near.empty() ? "" : " (did you mean '" + near + "'?)"));
}

}  // namespace barecnn
