// model.safetensors (weights named as torch.nn.Sequential names them, plus the metadata eval and
// predict need) and checkpoint.safetensors (the whole state of a run).
#include "barecnn/checkpoint.h"

#include <nlohmann/json.hpp>

#include <cmath>

#include "barecnn/error.h"
#include "barecnn/gradcheck.h"
#include "barecnn/safetensors.h"

namespace barecnn {

using json = nlohmann::json;

namespace {

std::vector<int64_t> to_shape(const Dims& d) { return std::vector<int64_t>(d.begin(), d.end()); }

// Text that reads back to the same float / double (%.9g / %.17g round-trip exactly).
std::string f9(float x) {
  char b[32];
  std::snprintf(b, sizeof b, "%.9g", x);
  return b;
}
std::string d17(double x) {
  char b[40];
  std::snprintf(b, sizeof b, "%.17g", x);
  return b;
}

void put_meta(SafeTensors& st, const ModelMeta& m) {
  st.metadata["format"] = "barecnn";
  st.metadata["arch"] = m.arch;
  st.metadata["input"] = dims_str(m.input);
  st.metadata["classes"] = std::to_string(m.classes);
  st.metadata["normalize_mean"] = f9(m.mean);
  st.metadata["normalize_std"] = f9(m.std);
  st.metadata["normalize"] = "x = (pixel / 255 - normalize_mean) / normalize_std";
  st.metadata["class_names"] = json(m.class_names).dump();
}

const std::string& need_meta(const SafeTensors& st, const std::string& key, const std::string& path) {
  auto it = st.metadata.find(key);
  if (it == st.metadata.end())
    throw UsageError(fmt(path, ": the __metadata__ has no \"", key,
                         "\"; this file was not written by barecnn train "
                         "(expected keys: arch, input, classes, normalize_mean, normalize_std)"));
  return it->second;
}

double meta_number(const SafeTensors& st, const std::string& key, const std::string& path) {
  const std::string& s = need_meta(st, key, path);
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || !std::isfinite(v))
    throw UsageError(fmt(path, ": __metadata__ \"", key, "\" should be a number, found \"", s, "\""));
  return v;
}

ModelMeta get_meta(const SafeTensors& st, const std::string& path) {
  ModelMeta m;
  m.arch = need_meta(st, "arch", path);
  m.input = parse_input_dims(need_meta(st, "input", path), path + ": __metadata__ \"input\"");
  m.classes = int(meta_number(st, "classes", path));
  m.mean = float(meta_number(st, "normalize_mean", path));
  m.std = float(meta_number(st, "normalize_std", path));
  if (!(m.std > 0)) throw UsageError(fmt(path, ": __metadata__ \"normalize_std\" must be > 0, found ", m.std));
  auto it = st.metadata.find("class_names");
  if (it != st.metadata.end()) {
    try {
      json j = json::parse(it->second);
      for (auto& n : j) m.class_names.push_back(n.get<std::string>());
    } catch (const std::exception&) {
      m.class_names.clear();
    }
  }
  if (int(m.class_names.size()) != m.classes) {
    m.class_names.clear();
    for (int k = 0; k < m.classes; ++k) m.class_names.push_back(std::to_string(k));
  }
  return m;
}

// The net's tensors into `st`, named "<layer>.weight"/"<layer>.bias".
void put_params(SafeTensors& st, const Net& net, const std::vector<float>& params, const std::string& prefix) {
  for (auto& e : net.params()) st.put_f32(prefix + e.name, to_shape(e.dims), params.data() + e.offset);
}

// Reads the net's tensors out of `st`, checking names, shapes and dtypes.
std::vector<float> get_params(const SafeTensors& st, const Net& net, const std::string& path,
                              const std::string& prefix) {
  std::vector<float> p(net.num_params());
  for (auto& e : net.params()) {
    auto it = st.tensors.find(prefix + e.name);
    if (it == st.tensors.end())
      throw UsageError(fmt(path, ": tensor \"", prefix + e.name, "\" is missing; the net ", net.spec(),
                           " needs it with shape ", dims_str(e.dims)));
    const SafeTensor& t = it->second;
    if (t.dtype != "F32")
      throw UsageError(fmt(path, ": tensor \"", prefix + e.name, "\" has dtype ", t.dtype, ", expected F32"));
    if (t.shape != to_shape(e.dims)) {
      Dims d(t.shape.begin(), t.shape.end());
      throw UsageError(fmt(path, ": tensor \"", prefix + e.name, "\" has shape ", dims_str(d), " but layer ", e.layer,
                           " of ", net.spec(), " needs ", dims_str(e.dims)));
    }
    std::vector<float> v = st.get_f32(prefix + e.name);
    std::copy(v.begin(), v.end(), p.begin() + e.offset);
  }
  return p;
}

}  // namespace

void save_model(const std::string& path, const Net& net, const std::vector<float>& params, const ModelMeta& meta) {
  SafeTensors st;
  put_meta(st, meta);
  put_params(st, net, params, "");
  write_safetensors(path, st);
}

Model load_model(const std::string& path) {
  SafeTensors st = read_safetensors(path);
  Model m;
  m.meta = get_meta(st, path);
  try {
    m.net = std::make_unique<Net>(m.meta.arch, m.meta.input);
  } catch (const UsageError& e) {
    throw UsageError(fmt(path, ": __metadata__ \"arch\" is not a valid net: ", e.what()));
  }
  if (m.net->num_outputs() != m.meta.classes)
    throw UsageError(fmt(path, ": the net has ", m.net->num_outputs(), " outputs but __metadata__ \"classes\" says ",
                         m.meta.classes));
  for (auto& [name, t] : st.tensors) {
    bool known = false;
    for (auto& e : m.net->params()) known |= e.name == name;
    if (!known)
      throw UsageError(
          fmt(path, ": unexpected tensor \"", name, "\"; the net ", m.net->spec(), " has no such parameter"));
  }
  m.params = get_params(st, *m.net, path, "");
  return m;
}

// ---- the resume checkpoint -------------------------------------------------------------------------

std::string history_json(const std::vector<EpochMetrics>& h) {
  json a = json::array();
  for (auto& e : h)
    a.push_back({{"epoch", e.epoch},
                 {"train_loss", e.train_loss},
                 {"train_accuracy", e.train_accuracy},
                 {"test_loss", e.test_loss},
                 {"test_accuracy", e.test_accuracy},
                 {"seconds", e.seconds},
                 {"images_per_second", e.images_per_second}});
  return a.dump();
}

std::vector<EpochMetrics> parse_history_json(const std::string& s, const std::string& file) {
  std::vector<EpochMetrics> h;
  try {
    for (auto& e : json::parse(s)) {
      EpochMetrics m;
      m.epoch = e.at("epoch").get<int>();
      m.train_loss = e.at("train_loss").get<double>();
      m.train_accuracy = e.at("train_accuracy").get<double>();
      m.test_loss = e.at("test_loss").get<double>();
      m.test_accuracy = e.at("test_accuracy").get<double>();
      m.seconds = e.at("seconds").get<double>();
      m.images_per_second = e.at("images_per_second").get<double>();
      h.push_back(m);
    }
  } catch (const std::exception& ex) {
    throw UsageError(fmt(file, ": __metadata__ \"history\" is not valid: ", ex.what()));
  }
  return h;
}

void write_checkpoint(const std::string& path, const Checkpoint& c) {
  Net net(c.meta.arch, c.meta.input);
  SafeTensors st;
  put_meta(st, c.meta);
  st.metadata["format"] = "barecnn-checkpoint-1";
  auto& md = st.metadata;
  md["data"] = c.cfg.data_dir;
  md["limit"] = std::to_string(c.cfg.limit);
  md["batch"] = std::to_string(c.cfg.batch);
  md["seed"] = std::to_string(c.cfg.seed);
  md["loss"] = loss_name(c.cfg.loss);
  md["optimizer"] = c.cfg.optim.kind == Optim::Adam ? "adam" : "sgd";
  md["lr"] = f9(c.cfg.optim.lr);
  md["momentum"] = f9(c.cfg.optim.momentum);
  md["weight_decay"] = f9(c.cfg.optim.weight_decay);
  md["beta1"] = f9(c.cfg.optim.beta1);
  md["beta2"] = f9(c.cfg.optim.beta2);
  md["eps"] = f9(c.cfg.optim.eps);
  md["device"] = c.device;
  md["epochs_done"] = std::to_string(c.epochs_done);
  md["step_in_epoch"] = std::to_string(c.step_in_epoch);
  md["global_step"] = std::to_string(c.global_step);
  md["epoch_seconds"] = d17(c.epoch_seconds);
  md["history"] = history_json(c.history);
  put_params(st, net, c.params, "");
  const std::vector<int64_t> flat{int64_t(c.params.size())};
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
  if (fmt_it == st.metadata.end() || fmt_it->second != "barecnn-checkpoint-1")
    throw UsageError(
        fmt(path, ": not a barecnn checkpoint (__metadata__ \"format\" should be \"barecnn-checkpoint-1\")"));
  Checkpoint c;
  c.meta = get_meta(st, path);
  auto num = [&](const char* k) { return meta_number(st, k, path); };
  c.cfg.arch = c.meta.arch;
  c.cfg.data_dir = need_meta(st, "data", path);
  c.cfg.limit = (long long)num("limit");
  c.cfg.batch = int(num("batch"));
  c.cfg.seed = std::stoull(need_meta(st, "seed", path));
  c.cfg.loss = parse_loss(need_meta(st, "loss", path));
  c.cfg.optim.kind = need_meta(st, "optimizer", path) == "adam" ? Optim::Adam : Optim::SGD;
  c.cfg.optim.lr = float(num("lr"));
  c.cfg.optim.momentum = float(num("momentum"));
  c.cfg.optim.weight_decay = float(num("weight_decay"));
  c.cfg.optim.beta1 = float(num("beta1"));
  c.cfg.optim.beta2 = float(num("beta2"));
  c.cfg.optim.eps = float(num("eps"));
  c.device = need_meta(st, "device", path);
  c.epochs_done = int(num("epochs_done"));
  c.step_in_epoch = (long long)num("step_in_epoch");
  c.global_step = (long long)num("global_step");
  c.epoch_seconds = num("epoch_seconds");
  c.history = parse_history_json(need_meta(st, "history", path), path);
  Net net(c.meta.arch, c.meta.input);
  c.params = get_params(st, net, path, "");
  auto need = [&](const char* name) -> const SafeTensor& {
    auto it = st.tensors.find(name);
    if (it == st.tensors.end()) throw UsageError(fmt(path, ": tensor \"", name, "\" is missing"));
    return it->second;
  };
  need("optimizer.m");
  need("optimizer.v");
  need("epoch_metrics");
  c.m = st.get_f32("optimizer.m");
  c.v = st.get_f32("optimizer.v");
  if (c.m.size() != c.params.size() || c.v.size() != c.params.size())
    throw UsageError(
        fmt(path, ": optimizer state has ", c.m.size(), "/", c.v.size(), " values, expected ", c.params.size()));
  std::vector<double> sums = st.get_f64("epoch_metrics");
  if (sums.size() != 2) throw UsageError(fmt(path, ": tensor \"epoch_metrics\" should hold 2 values"));
  c.epoch_loss_sum = sums[0];
  c.epoch_correct = sums[1];
  return c;
}

}  // namespace barecnn
