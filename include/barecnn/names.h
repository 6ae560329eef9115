// The "did you mean" helper of the parsers. The names themselves are declared next to their enums
// (activation_name in activation.h, the loss names in loss.h); all are defined in
// host/core/names.cpp, in barecnn_base, so that the CUDA launchers can use them in messages too.
#pragma once

#include <string>
#include <vector>

namespace barecnn {

// Levenshtein nearest of `word` among `choices` (for "did you mean"); "" when none is close.
std::string nearest(const std::string& word, const std::vector<std::string>& choices);

}  // namespace barecnn
