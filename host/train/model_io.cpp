// model.safetensors: the weights under torch.nn.Sequential's names, and the metadata eval and
// predict need.
#include "barecnn/model_io.h"

#include <nlohmann/json.hpp>

#include <cmath>

#include "barecnn/checkpoint.h"
#include "barecnn/error.h"
#include "barecnn/gradcheck.h"
#include "barecnn/version.h"

namespace barecnn {

using json = nlohmann::json;

namespace {

std::vector<int64_t> to_shape(const Dims& d) { return std::vector<int64_t>(d.begin(), d.end()); }

// Text that reads back to the same float (%.9g round-trips exactly).
std::string f9(float x) {
  char b[32];
  std::snprintf(b, sizeof b, "%.9g", x);
  return b;
}

const std::string& need_meta(const SafeTensors& st, const std::string& key, const std::string& path) {
  auto it = st.metadata.find(key);
  if (it == st.metadata.end())
    throw UsageError(fmt(path, ": the __metadata__ has no \"", key,
                         "\"; this file was not written by barecnn train "
                         "(expected keys: arch, input, classes, normalize_mean, normalize_std)"));
  return it->second;
}

std::string meta_or(const SafeTensors& st, const std::string& key, const std::string& fallback) {
  auto it = st.metadata.find(key);
  return it == st.metadata.end() ? fallback : it->second;
}

double meta_number(const SafeTensors& st, const std::string& key, const std::string& path) {
  const std::string& s = need_meta(st, key, path);
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || !std::isfinite(v))
    throw UsageError(fmt(path, ": __metadata__ \"", key, "\" should be a number, found \"", s, "\""));
  return v;
}

bool is_checkpoint(const SafeTensors& st) { return meta_or(st, "format", "") == kCheckpointFormat; }

}  // namespace

void put_model_meta(SafeTensors& st, const ModelMeta& m) {
  st.metadata["format"] = "barecnn";
  st.metadata["barecnn_version"] = barecnn_version_string();
  st.metadata["arch"] = m.arch;
  st.metadata["input"] = dims_str(m.input);
  st.metadata["classes"] = std::to_string(m.classes);
  st.metadata["normalize_mean"] = f9(m.mean);
  st.metadata["normalize_std"] = f9(m.std);
  st.metadata["normalize"] = "x = (pixel / 255 - normalize_mean) / normalize_std";
  st.metadata["class_names"] = json(m.class_names).dump();
  st.metadata["data"] = m.data.dir;
  st.metadata["data_train_fingerprint"] = m.data.train_fingerprint;
  st.metadata["data_test_fingerprint"] = m.data.test_fingerprint;
}

ModelMeta get_model_meta(const SafeTensors& st, const std::string& path) {
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
  // Files written before barecnn recorded its data have none of these (the folder: checkpoints did).
  m.data.dir = meta_or(st, "data", "");
  m.data.train_fingerprint = meta_or(st, "data_train_fingerprint", "");
  m.data.test_fingerprint = meta_or(st, "data_test_fingerprint", "");
  return m;
}

// Every tensor of the flat buffer: the parameters, then the buffers (batchnorm's running
// statistics; its num_batches_tracked, a count held in a float, is an int64 in torch's files).
static std::vector<ParamEntry> all_entries(const Net& net) {
  std::vector<ParamEntry> all = net.params();
  all.insert(all.end(), net.buffers().begin(), net.buffers().end());
  return all;
}

void put_params(SafeTensors& st, const Net& net, const std::vector<float>& params) {
  BARECNN_ASSERT(params.size() == net.state_size(), "put_params: ", params.size(), " values for a net of ",
                 net.state_size());
  for (auto& e : all_entries(net)) {
    if (e.file_dtype == "I64") {
      std::vector<int64_t> v(e.numel());
      for (size_t i = 0; i < v.size(); ++i) v[i] = int64_t(params[e.offset + i]);
      st.put_i64(e.name, to_shape(e.dims), v.data());
    } else {
      st.put_f32(e.name, to_shape(e.dims), params.data() + e.offset);
    }
  }
}

std::vector<float> get_params(const SafeTensors& st, const Net& net, const std::string& path) {
  std::vector<float> p(net.state_size());
  for (auto& e : all_entries(net)) {
    auto it = st.tensors.find(e.name);
    if (it == st.tensors.end())
      throw UsageError(fmt(path, ": tensor \"", e.name, "\" is missing; the net ", net.spec(), " needs it with shape ",
                           dims_str(e.dims)));
    const SafeTensor& t = it->second;
    if (t.dtype != e.file_dtype)
      throw UsageError(fmt(path, ": tensor \"", e.name, "\" has dtype ", t.dtype, ", expected ", e.file_dtype));
    if (t.shape != to_shape(e.dims)) {
      Dims d(t.shape.begin(), t.shape.end());
      throw UsageError(fmt(path, ": tensor \"", e.name, "\" has shape ", dims_str(d), " but layer ", e.layer, " of ",
                           net.spec(), " needs ", dims_str(e.dims)));
    }
    if (e.file_dtype == "I64") {
      const std::vector<int64_t> v = st.get_i64(e.name);
      for (size_t i = 0; i < v.size(); ++i) p[e.offset + i] = float(v[i]);
      continue;
    }
    std::vector<float> v = st.get_f32(e.name);
    std::copy(v.begin(), v.end(), p.begin() + e.offset);
  }
  return p;
}

void save_model(const std::string& path, const Net& net, const std::vector<float>& params, const ModelMeta& meta) {
  SafeTensors st;
  put_model_meta(st, meta);
  put_params(st, net, params);
  write_safetensors(path, st);
}

Model load_model(const std::string& path) {
  SafeTensors st = read_safetensors(path);
  Model m;
  m.meta = get_model_meta(st, path);
  m.from_checkpoint = is_checkpoint(st);
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
    for (auto& e : all_entries(*m.net)) known |= e.name == name;
    // A checkpoint's optimizer state and partial-epoch sums are not the model's.
    if (m.from_checkpoint)
      for (const char* state : kCheckpointStateTensors) known |= name == state;
    if (!known)
      throw UsageError(
          fmt(path, ": unexpected tensor \"", name, "\"; the net ", m.net->spec(), " has no such parameter"));
  }
  m.params = get_params(st, *m.net, path);
  return m;
}

}  // namespace barecnn
