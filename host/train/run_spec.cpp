// The RunSpec table: one place that lists a run's settings with their keys, flags and text.
#include "barecnn/run_spec.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "barecnn/error.h"
#include "barecnn/names.h"

namespace barecnn {

std::vector<SpecSetting> spec_settings(const RunSpec& s) {
  using K = SpecSetting;
  const bool adam = s.optim.kind == Optim::Adam;
  return {
      {"arch", "--arch", s.arch, K::Text},
      {"batch", "--batch", std::to_string(s.batch), K::Integer},
      {"optimizer", "--optimizer", adam ? "adam" : "sgd", K::Text},
      {"lr", "--lr", shortest_float(s.optim.lr), K::Number},
      {"momentum", "--momentum", shortest_float(s.optim.momentum), K::Number},
      {"weight_decay", "--weight-decay", shortest_float(s.optim.weight_decay), K::Number},
      {"beta1", "", shortest_float(s.optim.beta1), K::Number},
      {"beta2", "", shortest_float(s.optim.beta2), K::Number},
      {"eps", "", shortest_float(s.optim.eps), K::Number},
      {"loss", "--loss", loss_name(s.loss), K::Text},
      {"seed", "--seed", std::to_string(s.seed), K::Integer},
      {"limit", "--limit", std::to_string(s.limit), K::Integer},
  };
}

RunSpec spec_from_settings(const std::map<std::string, std::string>& values, const std::string& file) {
  auto text = [&](const char* key) -> const std::string& {
    auto it = values.find(key);
    if (it == values.end()) throw UsageError(fmt(file, ": the run's setting \"", key, "\" is missing"));
    return it->second;
  };
  auto bad = [&](const char* key, const char* what) {
    return UsageError(fmt(file, ": the run's setting \"", key, "\" should be ", what, ", found \"", text(key), "\""));
  };
  auto integer = [&](const char* key, long long lo) {
    const std::string& t = text(key);
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(t.c_str(), &end, 10);
    if (t.empty() || *end != '\0' || errno == ERANGE || v < lo) throw bad(key, fmt("an integer >= ", lo).c_str());
    return v;
  };
  auto number = [&](const char* key) {
    const std::string& t = text(key);
    char* end = nullptr;
    float v = std::strtof(t.c_str(), &end);
    if (t.empty() || *end != '\0' || !std::isfinite(v)) throw bad(key, "a finite number");
    return v;
  };
  RunSpec s;
  s.arch = text("arch");
  s.batch = int(integer("batch", 1));
  const std::string& opt = text("optimizer");
  if (opt != "sgd" && opt != "adam") throw bad("optimizer", "sgd or adam");
  s.optim.kind = opt == "adam" ? Optim::Adam : Optim::SGD;
  s.optim.lr = number("lr");
  s.optim.momentum = number("momentum");
  s.optim.weight_decay = number("weight_decay");
  s.optim.beta1 = number("beta1");
  s.optim.beta2 = number("beta2");
  s.optim.eps = number("eps");
  try {
    s.loss = parse_loss(text("loss"));
  } catch (const UsageError&) {
    throw bad("loss", "a loss name");
  }
  const std::string& seed = text("seed");
  char* end = nullptr;
  errno = 0;
  s.seed = std::strtoull(seed.c_str(), &end, 10);
  if (seed.empty() || seed[0] == '-' || *end != '\0' || errno == ERANGE) throw bad("seed", "an integer >= 0");
  s.limit = integer("limit", 0);
  return s;
}

}  // namespace barecnn
