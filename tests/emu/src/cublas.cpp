// cuBLAS: the handle and cublasSgemm, column-major as cuBLAS defines it, computed by OpenBLAS.
//
// The operands must lie wholly inside live device blocks (a real GEMM kernel would fault on
// anything else); alpha and beta are read on the host at the call, as in cuBLAS's host pointer
// mode, so a captured GEMM replays with the values it was captured with. With beta == 0, C is not
// read (cuBLAS's rule), so a C that still holds the NaN pattern of fresh device memory is fine.
#include <cblas.h>
#include <cublas_v2.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "internal.h"

extern "C" void openblas_set_num_threads(int);

namespace barecnn_emu {
struct Cublas {
  cudaStream_t stream = nullptr;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

namespace {

// The extent of a column-major rows x cols operand with leading dimension ld, in floats.
size_t extent(int rows, int cols, int ld) {
  if (rows == 0 || cols == 0) return 0;
  return size_t(cols - 1) * size_t(ld) + size_t(rows);
}

cublasStatus_t check_operand(const char* name, const float* p, int rows, int cols, int ld) {
  const size_t n = extent(rows, cols, ld);
  if (n == 0) return CUBLAS_STATUS_SUCCESS;
  std::string why;
  if (!p || where(p, n * sizeof(float), &why) != Where::kDevice || !why.empty()) {
    fault(cudaErrorIllegalAddress, std::string("cublasSgemm: operand ") + name + " (" + std::to_string(rows) + " x " +
                                       std::to_string(cols) + ", ld " + std::to_string(ld) + ") " +
                                       (why.empty() ? "is " + describe_pointer(p) : why));
    return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t sgemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha, const float* A,
                     int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  const int ar = ta == CUBLAS_OP_N ? m : k, ac = ta == CUBLAS_OP_N ? k : m;
  const int br = tb == CUBLAS_OP_N ? k : n, bc = tb == CUBLAS_OP_N ? n : k;
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  if (k > 0) {
    if (cublasStatus_t st = check_operand("A", A, ar, ac, lda)) return st;
    if (cublasStatus_t st = check_operand("B", B, br, bc, ldb)) return st;
  }
  if (cublasStatus_t st = check_operand("C", C, m, n, ldc)) return st;
  if (beta == 0.0f)
    for (int j = 0; j < n; ++j) std::memset(C + size_t(j) * size_t(ldc), 0, size_t(m) * sizeof(float));
  if (k == 0) {
    if (beta != 0.0f)
      for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) C[size_t(j) * size_t(ldc) + size_t(i)] *= beta;
    return CUBLAS_STATUS_SUCCESS;
  }
  cblas_sgemm(CblasColMajor, ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
              tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
  return CUBLAS_STATUS_SUCCESS;
}

bool live(cublasHandle_t h) { return h != nullptr; }

}  // namespace
}  // namespace barecnn_emu

using namespace barecnn_emu;

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
  // One OpenBLAS thread: the emulator's workers are the parallelism, and ThreadSanitizer cannot
  // see inside OpenBLAS's own thread pool.
  openblas_set_num_threads(1);
  *handle = new Cublas();
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  if (!live(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (!live(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  // As in cuBLAS: setting the stream drops a user workspace.
  handle->workspace = nullptr;
  handle->workspace_bytes = 0;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream(cublasHandle_t handle, cudaStream_t* stream) {
  if (!live(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  *stream = handle->stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (!live(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void* workspace, size_t bytes) {
  if (!live(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (bytes > 0 && (!workspace || where(workspace, bytes) != Where::kDevice)) return CUBLAS_STATUS_INVALID_VALUE;
  handle->workspace = workspace;
  handle->workspace_bytes = bytes;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                           int k, const float* alpha, const float* A, int lda, const float* B, int ldb,
                           const float* beta, float* C, int ldc) {
  if (!live(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (sticky() != cudaSuccess) return CUBLAS_STATUS_EXECUTION_FAILED;
  if ((transa != CUBLAS_OP_N && transa != CUBLAS_OP_T) || (transb != CUBLAS_OP_N && transb != CUBLAS_OP_T))
    return CUBLAS_STATUS_INVALID_VALUE;  // barecnn uses N and T only (C is T for real matrices)
  if (m < 0 || n < 0 || k < 0 || !alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
  if (lda < std::max(1, transa == CUBLAS_OP_N ? m : k) || ldb < std::max(1, transb == CUBLAS_OP_N ? k : n) ||
      ldc < std::max(1, m))
    return CUBLAS_STATUS_INVALID_VALUE;
  const float a = *alpha, b = *beta;
  if (capturing(handle->stream)) {
    record(handle->stream, "cublasSgemm", [=]() -> cudaError_t {
      if (sgemm(transa, transb, m, n, k, a, A, lda, B, ldb, b, C, ldc) != CUBLAS_STATUS_SUCCESS) return sticky();
      return cudaSuccess;
    });
    return CUBLAS_STATUS_SUCCESS;
  }
  return sgemm(transa, transb, m, n, k, a, A, lda, B, ldb, b, C, ldc);
}
