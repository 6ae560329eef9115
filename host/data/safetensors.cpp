// safetensors: 8-byte little-endian header length N, N bytes of JSON header, then the tensor bytes.
//
// The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} with
// offsets relative to the first byte after the header; "__metadata__" maps strings to strings.
// The format requires the tensors to tile the data buffer exactly: the reader rejects gaps and
// overlaps as the reference implementation does, and checks every size before it trusts it.
#include "barecnn/safetensors.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "barecnn/error.h"
#include "barecnn/fileutil.h"

// Tensor bytes are copied straight between memory and the file, which is little-endian.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "barecnn's safetensors I/O assumes a little-endian host");

using json = nlohmann::json;

namespace barecnn {

namespace {

// The reference implementation refuses headers above 100 MB; so do we (a model header is a few KB).
constexpr uint64_t kMaxHeaderBytes = 100000000;

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

// numel * element size, or false when it does not fit in 64 bits.
bool byte_length(const std::vector<int64_t>& shape, size_t elem, uint64_t* out) {
  unsigned __int128 n = elem;
  for (int64_t d : shape) {
    if (d < 0) return false;
    n *= uint64_t(d);
    if (n > (unsigned __int128)UINT64_MAX) return false;
  }
  *out = uint64_t(n);
  return true;
}

const SafeTensor& find_tensor(const SafeTensors& st, const std::string& name) {
  auto it = st.tensors.find(name);
  if (it == st.tensors.end()) {
    std::string names;
    for (const auto& kv : st.tensors) names += (names.empty() ? "" : ", ") + kv.first;
    throw UsageError(
        fmt("tensor \"", name, "\" is missing (the file holds: ", names.empty() ? "no tensors" : names, ")"));
  }
  return it->second;
}

template <typename T>
std::vector<T> get_as(const SafeTensors& st, const std::string& name, const char* dtype) {
  const SafeTensor& t = find_tensor(st, name);
  if (t.dtype != dtype) throw Error(fmt("tensor \"", name, "\" has dtype ", t.dtype, ", expected ", dtype));
  BARECNN_ASSERT(t.bytes.size() == t.numel() * sizeof(T), "tensor ", name, " holds ", t.bytes.size(),
                 " bytes for shape ", shape_str(t.shape));
  std::vector<T> v(t.numel());
  if (!v.empty()) std::memcpy(v.data(), t.bytes.data(), t.bytes.size());
  return v;
}

void put_raw(SafeTensors& st, const std::string& name, const std::vector<int64_t>& shape, const void* data,
             const char* dtype, size_t elem) {
  uint64_t n = 0;
  BARECNN_ASSERT(byte_length(shape, elem, &n), "tensor ", name, ": bad shape ", shape_str(shape));
  SafeTensor t;
  t.dtype = dtype;
  t.shape = shape;
  t.bytes.resize(size_t(n));
  if (n) std::memcpy(t.bytes.data(), data, size_t(n));
  st.tensors[name] = std::move(t);
}

const char* json_type(const json& j) { return j.type_name(); }

}  // namespace

size_t SafeTensor::numel() const {
  size_t n = 1;
  for (int64_t d : shape) n *= size_t(d < 0 ? 0 : d);
  return n;
}

size_t dtype_size(const std::string& dtype) {
  if (dtype == "F32" || dtype == "I32") return 4;
  if (dtype == "F64" || dtype == "I64") return 8;
  if (dtype == "U8") return 1;
  return 0;
}

void SafeTensors::put_f32(const std::string& name, const std::vector<int64_t>& shape, const float* data) {
  put_raw(*this, name, shape, data, "F32", 4);
}
void SafeTensors::put_f64(const std::string& name, const std::vector<int64_t>& shape, const double* data) {
  put_raw(*this, name, shape, data, "F64", 8);
}
void SafeTensors::put_i64(const std::string& name, const std::vector<int64_t>& shape, const int64_t* data) {
  put_raw(*this, name, shape, data, "I64", 8);
}
std::vector<float> SafeTensors::get_f32(const std::string& name) const { return get_as<float>(*this, name, "F32"); }
std::vector<double> SafeTensors::get_f64(const std::string& name) const { return get_as<double>(*this, name, "F64"); }
std::vector<int64_t> SafeTensors::get_i64(const std::string& name) const { return get_as<int64_t>(*this, name, "I64"); }

void write_safetensors(const std::string& path, const SafeTensors& st) {
  json header = json::object();
  if (!st.metadata.empty()) {
    json meta = json::object();
    for (const auto& kv : st.metadata) meta[kv.first] = kv.second;
    header["__metadata__"] = meta;
  }
  // std::map iterates in name order: that is the layout order.
  uint64_t offset = 0;
  for (const auto& [name, t] : st.tensors) {
    BARECNN_ASSERT(name != "__metadata__", "a tensor cannot be named __metadata__");
    size_t elem = dtype_size(t.dtype);
    uint64_t n = 0;
    BARECNN_ASSERT(elem != 0, "tensor ", name, ": unknown dtype ", t.dtype);
    BARECNN_ASSERT(byte_length(t.shape, elem, &n) && n == t.bytes.size(), "tensor ", name, ": ", t.bytes.size(),
                   " bytes for ", t.dtype, " shape ", shape_str(t.shape));
    header[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {
    throw Error(fmt("cannot write ", path, ": a tensor name or metadata string is not valid UTF-8 (", e.what(), ")"));
  }
  // Pad with spaces to a multiple of 8 so the data starts aligned, as the reference writer does.
  text.append((8 - text.size() % 8) % 8, ' ');

  std::vector<uint8_t> out(8 + text.size() + offset);
  uint64_t len = text.size();
  for (int i = 0; i < 8; ++i) out[i] = uint8_t(len >> (8 * i));
  std::memcpy(out.data() + 8, text.data(), text.size());
  uint8_t* data = out.data() + 8 + text.size();
  for (const auto& kv : st.tensors) {
    if (!kv.second.bytes.empty()) std::memcpy(data, kv.second.bytes.data(), kv.second.bytes.size());
    data += kv.second.bytes.size();
  }
  atomic_write_file(path, out.data(), out.size());
}

SafeTensors read_safetensors(const std::string& path) {
  // The whole file: its size is real (unlike any size written inside it).
  return parse_safetensors(read_file(path, "safetensors file"), path);
}

SafeTensors parse_safetensors(const std::string& file, const std::string& path) {
  auto fail = [&path](const std::string& msg) { return UsageError(fmt(path, ": ", msg)); };

  if (file.size() < 8)
    throw fail(fmt("not a safetensors file: it holds ", file.size(), " bytes, fewer than the 8-byte header length"));
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= uint64_t(uint8_t(file[i])) << (8 * i);
  uint64_t after = file.size() - 8;
  if (header_len > after)
    throw fail(fmt("header length ", header_len, " is beyond the file, which holds only ", after,
                   " bytes after the 8-byte length; the file is truncated or not safetensors"));
  if (header_len > kMaxHeaderBytes)
    throw fail(fmt("header length ", header_len, " exceeds the ", kMaxHeaderBytes, "-byte limit"));

  json header;
  try {
    header = json::parse(file.begin() + 8, file.begin() + 8 + std::ptrdiff_t(header_len));
  } catch (const json::exception& e) {
    // Not only parse_error: a number too large for a double is out_of_range (406).
    throw fail(fmt("malformed JSON header: ", e.what()));
  }
  if (!header.is_object()) throw fail(fmt("the header is a JSON ", json_type(header), ", expected an object"));

  const uint64_t data_len = after - header_len;
  const uint8_t* data = reinterpret_cast<const uint8_t*>(file.data()) + 8 + header_len;

  SafeTensors st;
  struct Span {
    uint64_t begin, end;
    std::string name;
  };
  std::vector<Span> spans;
  for (const auto& item : header.items()) {
    // Named variables, not a structured binding: C++17 does not let the lambdas below capture one.
    const std::string& name = item.key();
    const json& entry = item.value();
    if (name == "__metadata__") {
      if (!entry.is_object())
        throw fail(fmt("__metadata__ is a JSON ", json_type(entry), ", expected an object of strings"));
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string())
          throw fail(fmt("__metadata__ key \"", k, "\" has a ", json_type(v),
                         " value; safetensors metadata values must be strings"));
        st.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& msg) { return fail(fmt("tensor \"", name, "\": ", msg)); };
    if (!entry.is_object()) throw bad(fmt("entry is a JSON ", json_type(entry), ", expected an object"));
    for (const char* key : {"dtype", "shape", "data_offsets"})
      if (!entry.contains(key)) throw bad(fmt("missing \"", key, "\""));

    const json& jd = entry["dtype"];
    if (!jd.is_string()) throw bad(fmt("\"dtype\" is a ", json_type(jd), ", expected a string"));
    SafeTensor t;
    t.dtype = jd.get<std::string>();
    size_t elem = dtype_size(t.dtype);
    if (elem == 0) throw bad(fmt("unknown dtype \"", t.dtype, "\" (barecnn reads F32, F64, I32, I64, U8)"));

    const json& js = entry["shape"];
    if (!js.is_array()) throw bad(fmt("\"shape\" is a ", json_type(js), ", expected an array of integers"));
    for (const json& d : js) {
      if (!d.is_number_integer())
        throw bad(fmt("\"shape\" holds a ", json_type(d), ", expected non-negative integers"));
      if (d.is_number_unsigned() ? d.get<uint64_t>() > uint64_t(INT64_MAX) : d.get<int64_t>() < 0)
        throw bad(fmt("\"shape\" ", js.dump(), " has a negative or too large dimension"));
      t.shape.push_back(d.get<int64_t>());
    }

    const json& jo = entry["data_offsets"];
    if (!jo.is_array() || jo.size() != 2) throw bad(fmt("\"data_offsets\" is ", jo.dump(), ", expected [begin, end]"));
    for (const json& o : jo)
      if (!o.is_number_unsigned())
        throw bad(fmt("\"data_offsets\" ", jo.dump(), " must hold two non-negative integers"));
    uint64_t begin = jo[0].get<uint64_t>(), end = jo[1].get<uint64_t>();
    if (begin > end) throw bad(fmt("data_offsets [", begin, ", ", end, "] has begin > end"));
    if (end > data_len)
      throw bad(
          fmt("data_offsets [", begin, ", ", end, "] go past the end of the data, which holds ", data_len, " bytes"));

    uint64_t need = 0;
    if (!byte_length(t.shape, elem, &need)) throw bad(fmt("shape ", shape_str(t.shape), " is too large"));
    if (need != end - begin)
      throw bad(fmt(t.dtype, " shape ", shape_str(t.shape), " needs ", need, " bytes but data_offsets [", begin, ", ",
                    end, "] span ", end - begin));
    t.bytes.assign(data + begin, data + end);
    st.tensors[name] = std::move(t);
    spans.push_back({begin, end, name});
  }

  // The tensors must tile [0, data_len) exactly. Sorting by (begin, end) puts an empty tensor
  // before a non-empty one that starts at the same offset, so both are contiguous.
  std::sort(spans.begin(), spans.end(),
            [](const Span& a, const Span& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  uint64_t pos = 0;
  const Span* prev = nullptr;
  for (const Span& s : spans) {
    if (s.begin < pos)
      throw fail(fmt("tensors \"", prev->name, "\" [", prev->begin, ", ", prev->end, ") and \"", s.name, "\" [",
                     s.begin, ", ", s.end, ") overlap"));
    if (s.begin > pos)
      throw fail(
          fmt("gap in the data: bytes [", pos, ", ", s.begin, ") before tensor \"", s.name, "\" belong to no tensor"));
    pos = s.end;
    prev = &s;
  }
  if (pos != data_len)
    throw fail(fmt("gap in the data: bytes [", pos, ", ", data_len,
                   ") after the last tensor belong "
                   "to no tensor; the file holds ",
                   data_len, " data bytes but the tensors cover ", pos));
  return st;
}

}  // namespace barecnn
