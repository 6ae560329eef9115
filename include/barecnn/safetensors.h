// A small reader and writer of the safetensors format: 8-byte little-endian header length, a JSON
// header {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
// then the raw little-endian tensor bytes.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace barecnn {

struct SafeTensor {
  std::string dtype = "F32";  // F32, F64, I32, I64, U8 are understood
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;  // numel * dtype size
  size_t numel() const;
};

struct SafeTensors {
  std::map<std::string, std::string> metadata;
  std::map<std::string, SafeTensor> tensors;

  void put_f32(const std::string& name, const std::vector<int64_t>& shape, const float* data);
  void put_f64(const std::string& name, const std::vector<int64_t>& shape, const double* data);
  void put_i64(const std::string& name, const std::vector<int64_t>& shape, const int64_t* data);
  // The tensor's values as float/double; throws naming the tensor if the dtype differs.
  std::vector<float> get_f32(const std::string& name) const;
  std::vector<double> get_f64(const std::string& name) const;
  std::vector<int64_t> get_i64(const std::string& name) const;
};

size_t dtype_size(const std::string& dtype);  // 0 when unknown

// Writes atomically (temp file, flush, fsync, rename). Tensors are laid out in name order.
void write_safetensors(const std::string& path, const SafeTensors& st);
// Reads and validates the whole file; throws UsageError naming the file for: a header length
// beyond the file, malformed JSON, offsets past the end, overlapping or non-contiguous offsets,
// an unknown dtype, a byte length that does not match the shape, non-string metadata.
SafeTensors read_safetensors(const std::string& path);
// The same checks on the bytes of a file already in memory (the fuzzer uses it); `name` stands
// for the file in messages.
SafeTensors parse_safetensors(const std::string& bytes, const std::string& name);

}  // namespace barecnn
