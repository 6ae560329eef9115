// Errors: one exception type, and checked-call macros for CUDA and cuBLAS.
#pragma once

#include <cuda_runtime.h>
#include <cublas_v2.h>

#include <sstream>
#include <stdexcept>
#include <string>

namespace barecnn {

// Every failure barecnn reports is a barecnn::Error. Its message is meant for a user: it names the
// file/flag/layer, what was expected, what was found, and how to fix it.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what, int exit_code = 1)
      : std::runtime_error(what), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

// Bad user input (flags, specs, files the user named): exit code 2.
struct UsageError : Error {
  explicit UsageError(const std::string& what) : Error(what, 2) {}
};

// Builds "CUDA error cudaErrorX (text) in `expr` at file:line" plus a hint for the common cases.
std::string cuda_error_message(cudaError_t err, const char* expr, const char* file, int line);
std::string cublas_error_message(cublasStatus_t st, const char* expr, const char* file, int line);
[[noreturn]] void throw_cuda_error(cudaError_t err, const char* expr, const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t st, const char* expr, const char* file, int line);
// For destructors: print, never throw.
void print_cuda_error(cudaError_t err, const char* expr, const char* file, int line);

// Formats anything streamable into a string: fmt("layer ", i, ": ", x).
template <typename... Args>
std::string fmt(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

}  // namespace barecnn

#define CUDA_CHECK(expr)                                                       \
  do {                                                                         \
    cudaError_t barecnn_err_ = (expr);                                         \
    if (barecnn_err_ != cudaSuccess)                                           \
      ::barecnn::throw_cuda_error(barecnn_err_, #expr, __FILE__, __LINE__);    \
  } while (0)

#define CUDA_CHECK_NOTHROW(expr)                                               \
  do {                                                                         \
    cudaError_t barecnn_err_ = (expr);                                         \
    if (barecnn_err_ != cudaSuccess)                                           \
      ::barecnn::print_cuda_error(barecnn_err_, #expr, __FILE__, __LINE__);    \
  } while (0)

#define CUBLAS_CHECK(expr)                                                     \
  do {                                                                         \
    cublasStatus_t barecnn_st_ = (expr);                                       \
    if (barecnn_st_ != CUBLAS_STATUS_SUCCESS)                                  \
      ::barecnn::throw_cublas_error(barecnn_st_, #expr, __FILE__, __LINE__);   \
  } while (0)

// After a kernel launch: names the op and its shape in the error.
#define CUDA_CHECK_LAUNCH(opname, shape_str)                                             \
  do {                                                                                   \
    cudaError_t barecnn_err_ = cudaGetLastError();                                       \
    if (barecnn_err_ != cudaSuccess)                                                     \
      throw ::barecnn::Error(::barecnn::cuda_error_message(barecnn_err_, opname, __FILE__, \
                                                           __LINE__) +                   \
                             " [shape " + (shape_str) + "]");                            \
  } while (0)

// Preconditions that indicate a bug in the caller (not user input).
#define BARECNN_ASSERT(cond, ...)                                                          \
  do {                                                                                     \
    if (!(cond))                                                                           \
      throw ::barecnn::Error(::barecnn::fmt("internal check failed: ", #cond, " at ",       \
                                            __FILE__, ":", __LINE__, ": ", __VA_ARGS__));  \
  } while (0)
