// checkpoint.safetensors: the model file's tensors and metadata (model_io.h), the optimizer state,
// the position in the run, and the run's settings under the keys of spec_settings().
#include "barecnn/checkpoint.h"

#include <cmath>
#include <cstdio>

#include "barecnn/error.h"

namespace barecnn {

namespace {

// Text that reads back to the same double (%.17g round-trips exactly).
std::string d17(double x) {
  char b[40];
  std::snprintf(b, sizeof b, "%.17g", x);
  return b;
}

}  // namespace

void write_checkpoint(const std::string& path, const Checkpoint& c) {
  Net net(c.meta.arch, c.meta.input);
  SafeTensors st;
  put_model_meta(st, c.meta);
  auto& md = st.metadata;
  md["format"] = kCheckpointFormat;
  for (const SpecSetting& s : spec_settings(c.spec))
    if (s.key != "arch") md[s.key] = s.value;  // (the arch: the model's, canonical)
  md["device"] = c.device;
  md["epochs_asked"] = std::to_string(c.epochs_asked);
  md["epochs_done"] = std::to_string(c.epochs_done);
  md["step_in_epoch"] = std::to_string(c.step_in_epoch);
  md["global_step"] = std::to_string(c.global_step);
  md["epoch_seconds"] = d17(c.epoch_seconds);
  md["history"] = epochs_json(c.history);
  put_params(st, net, c.params);
  const std::vector<int64_t> flat{int64_t(net.num_params())};
  st.put_f32("optimizer.m", flat, c.m.data());
  st.put_f32("optimizer.v", flat, c.v.data());
  // The partial epoch's sums, exact in double.
  double sums[2] = {c.epoch_loss_sum, c.epoch_correct};
  st.put_f64("epoch_metrics", {2}, sums);
  write_safetensors(path, st);
}

Checkpoint read_checkpoint(const std::string& path) {
  SafeTensors st = read_safetensors(path);
  auto fmt_it = st.metadata.find("format");
  if (fmt_it == st.metadata.end() || fmt_it->second != kCheckpointFormat)
    throw UsageError(
        fmt(path, ": not a barecnn checkpoint (__metadata__ \"format\" should be \"", kCheckpointFormat, "\")"));
  const auto& md = st.metadata;
  auto text = [&](const char* k) -> const std::string& {
    auto it = md.find(k);
    if (it == md.end()) throw UsageError(fmt(path, ": __metadata__ has no \"", k, "\"; not a whole checkpoint"));
    return it->second;
  };
  auto integer = [&](const char* k) {
    const std::string& s = text(k);
    char* end = nullptr;
    long long v = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || v < 0)
      throw UsageError(fmt(path, ": __metadata__ \"", k, "\" should be an integer >= 0, found \"", s, "\""));
    return v;
  };
  Checkpoint c;
  c.meta = get_model_meta(st, path);
  c.spec = spec_from_settings(md, path);
  c.device = text("device");
  c.epochs_done = int(integer("epochs_done"));
  // (checkpoints written before barecnn recorded it: the epochs done)
  c.epochs_asked = md.count("epochs_asked") ? int(integer("epochs_asked")) : c.epochs_done;
  c.step_in_epoch = integer("step_in_epoch");
  c.global_step = integer("global_step");
  const std::string& secs = text("epoch_seconds");
  c.epoch_seconds = std::strtod(secs.c_str(), nullptr);
  c.history = parse_epochs_json(text("history"), path + ": __metadata__ \"history\"");
  Net net(c.meta.arch, c.meta.input);
  c.params = get_params(st, net, path);
  for (const char* name : kCheckpointStateTensors)
    if (!st.tensors.count(name)) throw UsageError(fmt(path, ": tensor \"", name, "\" is missing"));
  c.m = st.get_f32("optimizer.m");
  c.v = st.get_f32("optimizer.v");
  if (c.m.size() != net.num_params() || c.v.size() != net.num_params())
    throw UsageError(
        fmt(path, ": optimizer state has ", c.m.size(), "/", c.v.size(), " values, expected ", net.num_params()));
  std::vector<double> sums = st.get_f64("epoch_metrics");
  if (sums.size() != 2) throw UsageError(fmt(path, ": tensor \"epoch_metrics\" should hold 2 values"));
  c.epoch_loss_sum = sums[0];
  c.epoch_correct = sums[1];
  return c;
}

}  // namespace barecnn
