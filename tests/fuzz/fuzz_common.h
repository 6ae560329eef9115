// Shared by the fuzz targets: what counts as a finding.
//
// A reader or parser may reject any input, but only with barecnn::Error (UsageError included):
// that is the one clear message the command line prints. Anything else is a finding: a crash, a
// sanitizer report, an allocation past -malloc_limit_mb (libFuzzer reports it as out-of-memory),
// an exception of another type (std::bad_alloc, std::length_error, nlohmann::json's, ...), or a
// result that breaks the invariants the caller relies on (check with FUZZ_CHECK).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "barecnn/error.h"

// Runs `body`; swallows barecnn::Error, turns every other exception into a crash with its message.
template <typename F>
void fuzz_expect_barecnn_errors_only(const char* what, F&& body) {
  try {
    body();
  } catch (const barecnn::Error&) {
    // Expected: the input was rejected with a message for the user.
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FINDING: %s threw a non-barecnn exception: %s\n", what, e.what());
    std::abort();
  } catch (...) {
    std::fprintf(stderr, "FINDING: %s threw a non-std exception\n", what);
    std::abort();
  }
}

// An invariant of an accepted input; a failure is a finding.
#define FUZZ_CHECK(cond, ...)                                                                         \
  do {                                                                                                \
    if (!(cond)) {                                                                                    \
      std::fprintf(stderr, "FINDING: invariant failed: %s at %s:%d: %s\n", #cond, __FILE__, __LINE__, \
                   std::string(__VA_ARGS__).c_str());                                                 \
      std::abort();                                                                                   \
    }                                                                                                 \
  } while (0)
