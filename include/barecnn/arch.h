// The arch grammar (DESIGN.md): layers separated by spaces, e.g.
//   conv(32,5,pad=2) relu maxpool(2) dense(128) relu dense(10)
// and the presets `paper`, `lenet5`, `deep`.
#pragma once

#include <string>
#include <vector>

#include "barecnn/activation.h"
#include "barecnn/names.h"

namespace barecnn {

enum class LayerKind { Conv, MaxPool, AvgPool, L2Pool, Flatten, Dense, Activation, Softmax };

// One parsed layer, before shapes are known.
struct LayerDesc {
  LayerKind kind;
  std::string text;    // as written, for messages
  int out = 0;         // conv: output channels; dense: units
  int kh = 0, kw = 0;  // conv / pool window
  int stride = 1;      // conv default 1; pools default = window size (as PyTorch)
  int pad = 0;
  Activation act;  // for Activation
};

// Expands a preset name or returns the spec unchanged.
std::string resolve_preset(const std::string& spec_or_preset);
// The preset names with their specs.
std::vector<std::pair<std::string, std::string>> presets();
// Parses a spec; throws UsageError naming the position and the token ("unknown layer 'conv2d'
// at position 1; did you mean 'conv'?").
std::vector<LayerDesc> parse_arch(const std::string& spec);
// Canonical text of a layer ("conv(32,5,pad=2)").
std::string layer_desc_str(const LayerDesc& d);

}  // namespace barecnn
