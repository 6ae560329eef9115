// libFuzzer target: the --arch parser, and the shape inference of the parsed spec on an input
// (resolve_arch: everything a Net checks when it is built; a Net's layers are then made from its
// result without further checks).
//
// Besides "no crash, only barecnn errors", it checks the two properties the rest of barecnn relies
// on: every resolved layer has positive sizes (they size every buffer), and the canonical spec of
// a net (written into model.safetensors and read back by eval/predict) resolves into the very same
// layers.
#include <cstdint>
#include <string>
#include <vector>

#include "barecnn/arch.h"
#include "fuzz_common.h"

namespace {

// A small image: enough for the presets, small enough that the fuzzer reaches geometry errors.
const barecnn::Dims kInput = {1, 12, 12};

void check_layers(const std::vector<barecnn::ArchLayer>& layers) {
  FUZZ_CHECK(!layers.empty(), "a net without layers");
  for (size_t i = 0; i < layers.size(); ++i) {
    const barecnn::ArchLayer& l = layers[i];
    const std::string label = "layer " + std::to_string(i) + " " + barecnn::layer_desc_str(l.desc);
    for (int d : l.out) FUZZ_CHECK(d > 0, label + " has output " + barecnn::dims_str(l.out));
    FUZZ_CHECK(i == 0 ? l.in == kInput : l.in == layers[i - 1].out, label + ": input != previous output");
  }
  FUZZ_CHECK(layers.back().out.size() == 1, "logits are not flat");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string spec(reinterpret_cast<const char*>(data), size);
  fuzz_expect_barecnn_errors_only("parse_arch", [&] {
    for (const barecnn::LayerDesc& d : barecnn::parse_arch(spec)) (void)barecnn::layer_desc_str(d);
  });
  fuzz_expect_barecnn_errors_only("resolve_arch", [&] {
    const std::vector<barecnn::ArchLayer> layers = barecnn::resolve_arch(spec, kInput);
    check_layers(layers);
    // The canonical spec must resolve to the same layers, or a saved model would load as another net.
    const std::string canon = barecnn::arch_spec(layers);
    try {
      const std::string again = barecnn::arch_spec(barecnn::resolve_arch(canon, kInput));
      FUZZ_CHECK(again == canon, "canonical spec \"" + canon + "\" reparses as \"" + again + "\"");
    } catch (const barecnn::Error& e) {
      FUZZ_CHECK(false, "canonical spec \"" + canon + "\" does not parse: " + e.what());
    }
  });
  return 0;
}
