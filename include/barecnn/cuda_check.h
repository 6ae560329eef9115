// Checked calls for CUDA and cuBLAS: each failure throws a barecnn::Error that names the call,
// the file and line, and a hint for the common cases.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "barecnn/error.h"

namespace barecnn {

// Builds "CUDA error cudaErrorX (text) in `expr` at file:line" plus a hint for the common cases.
std::string cuda_error_message(cudaError_t err, const char* expr, const char* file, int line);
std::string cublas_error_message(cublasStatus_t st, const char* expr, const char* file, int line);
[[noreturn]] void throw_cuda_error(cudaError_t err, const char* expr, const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t st, const char* expr, const char* file, int line);
// For destructors: print, never throw.
void print_cuda_error(cudaError_t err, const char* expr, const char* file, int line);

}  // namespace barecnn

#define CUDA_CHECK(expr)                                                                                   \
  do {                                                                                                     \
    cudaError_t barecnn_err_ = (expr);                                                                     \
    if (barecnn_err_ != cudaSuccess) ::barecnn::throw_cuda_error(barecnn_err_, #expr, __FILE__, __LINE__); \
  } while (0)

#define CUDA_CHECK_NOTHROW(expr)                                                                           \
  do {                                                                                                     \
    cudaError_t barecnn_err_ = (expr);                                                                     \
    if (barecnn_err_ != cudaSuccess) ::barecnn::print_cuda_error(barecnn_err_, #expr, __FILE__, __LINE__); \
  } while (0)

#define CUBLAS_CHECK(expr)                                                                                           \
  do {                                                                                                               \
    cublasStatus_t barecnn_st_ = (expr);                                                                             \
    if (barecnn_st_ != CUBLAS_STATUS_SUCCESS) ::barecnn::throw_cublas_error(barecnn_st_, #expr, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: names the op and its shape in the error.
#define CUDA_CHECK_LAUNCH(opname, shape_str)                                                                        \
  do {                                                                                                              \
    cudaError_t barecnn_err_ = cudaGetLastError();                                                                  \
    if (barecnn_err_ != cudaSuccess)                                                                                \
      throw ::barecnn::Error(::barecnn::cuda_error_message(barecnn_err_, opname, __FILE__, __LINE__) + " [shape " + \
                             (shape_str) + "]");                                                                    \
  } while (0)
