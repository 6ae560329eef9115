// The version of this build and the commit it was built from, for the records a run leaves.
#pragma once

#include <string>

namespace barecnn {

// "0.1.0"
const char* barecnn_version();
// The git commit of the source tree at build time, 12 hex digits, with "-dirty" when the tree had
// uncommitted changes; "unknown" when built outside a git checkout.
const char* barecnn_commit();
// "0.1.0 (commit 0123456789ab)"
std::string barecnn_version_string();

}  // namespace barecnn
