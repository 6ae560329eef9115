// The version and commit of this build (barecnn_commit.h is written at build time by
// cmake/commit.cmake).
#include "barecnn/version.h"

#include "barecnn_commit.h"

namespace barecnn {

const char* barecnn_version() { return BARECNN_VERSION; }
const char* barecnn_commit() { return BARECNN_COMMIT; }
std::string barecnn_version_string() { return std::string(barecnn_version()) + " (commit " + barecnn_commit() + ")"; }

}  // namespace barecnn
