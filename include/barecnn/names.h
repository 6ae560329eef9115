// The "did you mean" helper of the parsers. The names themselves are declared next to their enums
// (activation_name in activation.h, the loss names in loss.h); all are defined in
// host/core/names.cpp, in barecnn_base, so that the CUDA launchers can use them in messages too.
#pragma once

#include <string>
#include <vector>

namespace barecnn {

// The choice nearest to `word` by edit distance (a swap of neighbouring letters is one edit), for
// "did you mean"; "" unless it is close: one edit in a word of up to 4 letters, two in a longer one.
std::string nearest(const std::string& word, const std::vector<std::string>& choices);
// The shortest decimal text that reads back (strtof) to exactly `v`: "0.01", not "0.00999999978".
std::string shortest_float(float v);
// ASCII lower case: names (layers, presets, losses, optimizers) are accepted in any case.
std::string lower(const std::string& s);

}  // namespace barecnn
