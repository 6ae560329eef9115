// libFuzzer target: the safetensors reader (header length, JSON header, offsets, dtypes, shapes).
#include <cstdint>
#include <string>

#include "barecnn/safetensors.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  fuzz_expect_barecnn_errors_only("parse_safetensors", [&] {
    barecnn::SafeTensors st = barecnn::parse_safetensors(bytes, "fuzz-input.safetensors");
    // What model loading relies on: every tensor has a known dtype and exactly the bytes its
    // shape needs, and no more data than the file holds.
    size_t total = 0;
    for (const auto& [name, t] : st.tensors) {
      size_t elem = barecnn::dtype_size(t.dtype);
      FUZZ_CHECK(elem != 0, "tensor " + name + " has unknown dtype " + t.dtype);
      FUZZ_CHECK(t.bytes.size() == t.numel() * elem, "tensor " + name + ": byte length != shape");
      total += t.bytes.size();
      // The typed getters are what load_model calls.
      if (t.dtype == "F32") FUZZ_CHECK(st.get_f32(name).size() == t.numel(), name);
      if (t.dtype == "F64") FUZZ_CHECK(st.get_f64(name).size() == t.numel(), name);
    }
    FUZZ_CHECK(total <= size, "tensors hold more bytes than the file");
  });
  return 0;
}
