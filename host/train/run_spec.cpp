// The RunSpec table: one place that lists a run's settings with their keys, flags and text.
#include "barecnn/run_spec.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "barecnn/error.h"
#include "barecnn/names.h"

namespace barecnn {

namespace {

const char* kScheduleForms = "constant, step:E1,E2,...:GAMMA (e.g. step:30,60:0.1) or cosine[:E]";

// A whole decimal integer >= 1 (no sign, no spaces), or -1.
long long whole(const std::string& t) {
  if (t.empty() || t.size() > 9 || t.find_first_not_of("0123456789") != std::string::npos) return -1;
  const long long v = std::stoll(t);
  return v >= 1 ? v : -1;
}

}  // namespace

void parse_lr_schedule(const std::string& text, LrSchedule* out) {
  auto fail = [&](const std::string& what) {
    return UsageError(fmt("--lr-schedule: expected ", kScheduleForms, "; ", what, " in '", text, "'"));
  };
  LrSchedule s;
  s.warmup_epochs = out->warmup_epochs;
  const size_t c1 = text.find(':');
  const std::string name = lower(text.substr(0, c1));
  if (name == "constant") {
    if (c1 != std::string::npos) throw fail("constant takes no arguments, found '" + text.substr(c1) + "'");
    s.kind = LrScheduleKind::Constant;
  } else if (name == "cosine") {
    s.kind = LrScheduleKind::Cosine;
    if (c1 != std::string::npos) {
      const std::string e = text.substr(c1 + 1);
      s.epochs = int(whole(e));
      if (s.epochs < 1) throw fail("cosine:E takes a whole number of epochs >= 1, found '" + e + "'");
    }
  } else if (name == "step") {
    s.kind = LrScheduleKind::Step;
    const size_t c2 = c1 == std::string::npos ? std::string::npos : text.find(':', c1 + 1);
    if (c2 == std::string::npos) throw fail("step needs its milestones and GAMMA, as step:E1,E2,...:GAMMA");
    const std::string list = text.substr(c1 + 1, c2 - c1 - 1), g = text.substr(c2 + 1);
    if (list.empty()) throw fail("no milestone epochs before ':" + g + "'");
    size_t start = 0;
    while (true) {
      const size_t comma = list.find(',', start);
      const std::string m = list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      const long long e = whole(m);
      if (e < 1) throw fail("a milestone should be a whole number of epochs >= 1, found '" + m + "'");
      if (s.num_milestones > 0 && e <= s.milestones[s.num_milestones - 1])
        throw fail(fmt("the milestones should increase, found ", e, " after ", s.milestones[s.num_milestones - 1]));
      if (s.num_milestones == LrSchedule::kMaxMilestones)
        throw fail(fmt("at most ", LrSchedule::kMaxMilestones, " milestones"));
      s.milestones[s.num_milestones++] = int(e);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    char* end = nullptr;
    const float gamma = std::strtof(g.c_str(), &end);
    if (g.empty() || *end != '\0' || !std::isfinite(gamma) || !(gamma > 0))
      throw fail("GAMMA should be a number > 0, found '" + g + "'");
    s.gamma = gamma;
  } else {
    throw fail("unknown schedule '" + text.substr(0, c1) + "'");
  }
  *out = s;
}

std::string lr_schedule_str(const LrSchedule& s) {
  switch (s.kind) {
    case LrScheduleKind::Constant:
      return "constant";
    case LrScheduleKind::Cosine:
      return s.epochs > 0 ? fmt("cosine:", s.epochs) : "cosine";
    case LrScheduleKind::Step: {
      std::string t = "step:";
      for (int j = 0; j < s.num_milestones; ++j) t += (j ? "," : "") + std::to_string(s.milestones[j]);
      return t + ":" + shortest_float(s.gamma);
    }
  }
  return "?";
}

void parse_augment(const std::string& text, Augment* out) {
  auto fail = [&](const std::string& what) {
    return UsageError(
        fmt("--augment: expected none, or crop:P (P a whole number of pixels >= 1), flip, or both "
            "as crop:P,flip; ",
            what, " in '", text, "'"));
  };
  if (text.empty()) throw fail("found nothing");
  if (lower(text) == "none") {
    *out = Augment{};
    return;
  }
  Augment a;
  bool crop = false;
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    const std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    const size_t colon = item.find(':');
    const std::string name = lower(item.substr(0, colon));
    if (item.empty()) throw fail("an empty item");
    if (name == "flip") {
      if (colon != std::string::npos) throw fail("flip takes no arguments, found '" + item + "'");
      if (a.flip) throw fail("flip twice");
      a.flip = true;
    } else if (name == "crop") {
      if (crop) throw fail("crop twice");
      if (colon == std::string::npos) throw fail("crop needs its padding, as crop:P (e.g. crop:4)");
      const std::string p = item.substr(colon + 1);
      const long long v = whole(p);
      if (v < 1) throw fail("the padding P of crop:P should be a whole number of pixels >= 1, found '" + p + "'");
      a.pad = int(v);
      crop = true;
    } else if (name == "none") {
      throw fail("none goes alone");
    } else {
      throw fail("unknown augmentation '" + item + "'");
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  *out = a;
}

std::string augment_str(const Augment& a) {
  if (!a.on()) return "none";
  std::string t = a.pad > 0 ? fmt("crop:", a.pad) : "";
  if (a.flip) t += t.empty() ? "flip" : ",flip";
  return t;
}

void check_augment_fits(const Augment& a, int rows, int cols) {
  const int most = std::min(rows, cols) / 2;
  if (a.pad > most)
    throw UsageError(fmt("--augment ", augment_str(a), ": the padding P of crop:P should be from 1 to ", most,
                         " (at most half of the ", rows, "x", cols, " images), found ", a.pad));
}

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
      {"lr_schedule", "--lr-schedule", lr_schedule_str(s.optim.schedule), K::Text},
      {"warmup_epochs", "--warmup-epochs", std::to_string(s.optim.schedule.warmup_epochs), K::Integer},
      {"loss", "--loss", loss_name(s.loss), K::Text},
      {"seed", "--seed", std::to_string(s.seed), K::Integer},
      {"limit", "--limit", std::to_string(s.limit), K::Integer},
      {"augment", "--augment", augment_str(s.augment), K::Text},
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
  // (checkpoints from before schedules have neither key: the constant rate, no warmup)
  if (values.count("lr_schedule")) {
    try {
      parse_lr_schedule(text("lr_schedule"), &s.optim.schedule);
    } catch (const UsageError&) {
      throw bad("lr_schedule", "constant, step:E1,E2,...:GAMMA or cosine:E");
    }
  }
  if (values.count("warmup_epochs")) s.optim.schedule.warmup_epochs = int(integer("warmup_epochs", 0));
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
  // (checkpoints from before augmentation have no key: none)
  if (values.count("augment")) {
    try {
      parse_augment(text("augment"), &s.augment);
    } catch (const UsageError&) {
      throw bad("augment", "none, crop:P, flip or crop:P,flip");
    }
  }
  return s;
}

}  // namespace barecnn
