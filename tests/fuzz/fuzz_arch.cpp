// libFuzzer target: the --arch parser, and building a net from the parsed spec.
//
// Besides "no crash, only barecnn errors", it checks the two properties the rest of barecnn relies
// on: every layer of a built net has positive sizes (they size every buffer), and the canonical
// spec a net reports (written into model.safetensors and read back by eval/predict) parses into
// the very same net.
#include <cstdint>
#include <string>

#include "barecnn/arch.h"
#include "barecnn/net.h"
#include "fuzz_common.h"

namespace {

// A small image: enough for the presets, small enough that the fuzzer reaches geometry errors.
const barecnn::Dims kInput = {1, 12, 12};

void check_net(const barecnn::Net& net) {
  FUZZ_CHECK(net.num_layers() > 0, "a net without layers");
  size_t params = 0;
  for (int i = 0; i < net.num_layers(); ++i) {
    const barecnn::Layer& l = net.layer(i);
    for (int d : l.out_dims()) FUZZ_CHECK(d > 0, l.label() + " has output " + barecnn::dims_str(l.out_dims()));
    FUZZ_CHECK(i == 0 || l.in_dims() == net.layer(i - 1).out_dims(), l.label() + ": input != previous output");
    params += l.num_params();
  }
  FUZZ_CHECK(params == net.num_params(), "parameter count");
  FUZZ_CHECK(net.layer(net.num_layers() - 1).out_dims().size() == 1, "logits are not flat");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string spec(reinterpret_cast<const char*>(data), size);
  fuzz_expect_barecnn_errors_only("parse_arch", [&] {
    for (const barecnn::LayerDesc& d : barecnn::parse_arch(spec)) (void)barecnn::layer_desc_str(d);
  });
  fuzz_expect_barecnn_errors_only("Net", [&] {
    barecnn::Net net(spec, kInput);
    check_net(net);
    (void)net.summary();
    // The canonical spec must build the same net, or a saved model would load as another net.
    std::string canon = net.spec();
    try {
      barecnn::Net again(canon, kInput);
      FUZZ_CHECK(again.spec() == canon, "canonical spec \"" + canon + "\" reparses as \"" + again.spec() + "\"");
    } catch (const barecnn::Error& e) {
      FUZZ_CHECK(false, "canonical spec \"" + canon + "\" does not parse: " + e.what());
    }
  });
  return 0;
}
