// Errors: one exception type, fmt, and BARECNN_ASSERT. The CUDA and cuBLAS checks are in
// cuda_check.h.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace barecnn {

// Every failure barecnn reports is a barecnn::Error. Its message is meant for a user: it names the
// file/flag/layer, what was expected, what was found, and how to fix it.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what, int exit_code = 1) : std::runtime_error(what), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

// Bad user input (flags, specs, files the user named): exit code 2.
struct UsageError : Error {
  explicit UsageError(const std::string& what) : Error(what, 2) {}
};

// Formats anything streamable into a string: fmt("layer ", i, ": ", x).
template <typename... Args>
std::string fmt(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

}  // namespace barecnn

// Preconditions that indicate a bug in the caller (not user input).
#define BARECNN_ASSERT(cond, ...)                                                                                \
  do {                                                                                                           \
    if (!(cond))                                                                                                 \
      throw ::barecnn::Error(                                                                                    \
          ::barecnn::fmt("internal check failed: ", #cond, " at ", __FILE__, ":", __LINE__, ": ", __VA_ARGS__)); \
  } while (0)
