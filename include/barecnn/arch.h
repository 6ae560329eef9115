// The arch grammar (DESIGN.md): layers separated by spaces, e.g.
//   conv(32,5,pad=2) relu maxpool(2) dense(128) relu dense(10)
// and the presets `paper`, `lenet5`, `deep`, `fashion`; and the shape inference that turns a spec and an
// input shape into the checked list of layers a Net is built from. No CUDA: the fuzzer of the
// grammar links this alone (the barecnn_arch library).
#pragma once

#include <string>
#include <vector>

#include "barecnn/activation.h"
#include "barecnn/names.h"
#include "barecnn/shape.h"

namespace barecnn {

enum class LayerKind { Conv, MaxPool, AvgPool, L2Pool, Flatten, Dense, Activation, Softmax, BatchNorm, Dropout };

// One parsed layer, before shapes are known.
struct LayerDesc {
  LayerKind kind;
  std::string text;    // as written, for messages
  int out = 0;         // conv: output channels; dense: units
  int kh = 0, kw = 0;  // conv / pool window
  int stride = 1;      // conv default 1; pools default = window size (as PyTorch)
  int pad = 0;
  Activation act;  // for Activation
  float p = 0;     // dropout: the probability of dropping an element, in [0, 1)
};

// Expands a preset name or returns the spec unchanged.
std::string resolve_preset(const std::string& spec_or_preset);
// The preset names with their specs.
std::vector<std::pair<std::string, std::string>> presets();
// "paper, lenet5, deep, fashion": the names of presets(), for messages.
std::string preset_names();
// The training flags a preset was tuned with, as (flag, value) pairs of `barecnn train`, e.g.
// fashion's optimizer, rate schedule, augmentation and epochs; empty for a preset without one
// (and for anything else). `train --arch PRESET` takes each one its command line does not give.
std::vector<std::pair<std::string, std::string>> preset_recipe(const std::string& preset);
// Parses a spec; throws UsageError naming the position and the token ("unknown layer 'conv2d'
// at position 1; did you mean 'conv'?").
std::vector<LayerDesc> parse_arch(const std::string& spec);
// Canonical text of a layer ("conv(32,5,pad=2)"): what Layer::spec() prints, and what the
// canonical spec of a net (arch_spec, Net::spec) is made of.
std::string layer_desc_str(const LayerDesc& d);

// One layer of a net with its shapes: the parsed layer and one sample's input and output dims,
// (C, H, W) or (F).
struct ArchLayer {
  LayerDesc desc;
  Dims in, out;
};
// Shape inference: parses `spec` (an arch spec or a preset name) for one sample of `input` dims
// (C, H, W), inserts a flatten before the first dense layer that follows an image (it counts as a
// layer, as an explicit nn.Flatten would in PyTorch) and at the end when the logits would not be
// flat, checks each layer's geometry against its input and computes its output. Throws
// UsageError naming the layer ("layer 4 conv(32,7): input 5x5 is smaller than the 7x7 kernel").
std::vector<ArchLayer> resolve_arch(const std::string& spec, const Dims& input);
// The canonical spec of resolved layers: their layer_desc_str joined by spaces. It resolves to
// the same layers again.
std::string arch_spec(const std::vector<ArchLayer>& layers);

}  // namespace barecnn
