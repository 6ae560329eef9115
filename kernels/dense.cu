// CUDA launchers of the dense (fully connected) layer: out = inp W^T + b, W (OUT, IN) as
// torch.nn.Linear. The three matrix products go through cuBLAS via one row-major GEMM helper;
// the bias add and the bias gradient are two small kernels. CPU reference:
// host/reference/dense.cpp. Formulas: docs/MATH.md.
//
// Precision and determinism: the caller's handle runs in CUBLAS_DEFAULT_MATH (GpuContext), i.e.
// full FP32 without TF32 tensor cores, and with cuBLAS's default atomics mode (not allowed), so
// every GEMM gives bitwise the same result from run to run on the same GPU and toolkit. The bias
// gradient is a fixed-order tree reduction, no atomics.
#include <cublas_v2.h>

#include "barecnn/cublas_lib.h"
#include "barecnn/cuda_check.h"
#include "barecnn/gpu_ops.h"
#include "launch.cuh"

namespace barecnn {

namespace {

constexpr int kBiasBlock = 256;
constexpr int kDbiasBlock = 256;  // a power of two: the tree reduction halves it

// Row-major GEMM on a column-major BLAS:
//   C (M, Ncols) = op(A) (M, Kd) * op(B) (Kd, Ncols),  all three row-major,
//   op(X) = X^T when transX, lda/ldb/ldc = the row length of A/B/C as stored.
// A row-major matrix with leading dimension ld is, read column-major with the same ld, its own
// transpose. So cuBLAS, which only sees column-major, is asked for the transpose of C:
//   C^T (Ncols, M) = op(B)^T (Ncols, Kd) * op(A)^T (Kd, M),
// i.e. the same call with the operands swapped (B first, A second), m = Ncols, n = M, and each
// operand keeping its own transpose flag: the buffer of B already reads as B^T, and op(B)^T is
// B^T when transB is false (CUBLAS_OP_N) and B when transB is true (CUBLAS_OP_T). C needs no
// transpose: cuBLAS writes C^T column-major, which is C row-major.
void gemm_row_major(cublasHandle_t handle, bool transA, bool transB, int M, int Ncols, int Kd, const float* A, int lda,
                    const float* B, int ldb, float* C, int ldc) {
  const float alpha = 1.f, beta = 0.f;  // C is overwritten, never accumulated
  CUBLAS_CHECK(cublas::sgemm(handle, transB ? CUBLAS_OP_T : CUBLAS_OP_N, transA ? CUBLAS_OP_T : CUBLAS_OP_N, Ncols, M,
                             Kd, &alpha, B, ldb, A, lda, &beta, C, ldc));
}

// Block 256, grid-stride loop over the N*OUT elements of out (N, OUT), row-major: each thread
// adds bias[o] to out[n, o] for its indices (o = i % OUT).
__global__ void bias_add_kernel(float* out, const float* bias, long long total, int OUT) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) out[i] += bias[i % OUT];
}

// One block of 256 threads per output unit o (grid = OUT): dbias[o] = sum_n dout[n, o], dout
// (N, OUT) row-major. Thread t sums rows t, t + 256, ... in ascending order, then the block adds
// the 256 partial sums in a fixed shared-memory tree. The order depends only on N, so the result
// is bitwise reproducible (no atomics). Reads are strided by OUT (one column); the bias gradient
// is a tiny fraction of the layer's work, so this is not worth a transpose.
__global__ void dbias_kernel(float* dbias, const float* dout, int N, int OUT) {
  BARECNN_STATIC_SHARED(float, partial, kDbiasBlock);
  const int o = blockIdx.x;
  float sum = 0.f;
  for (int n = threadIdx.x; n < N; n += kDbiasBlock) sum += dout[(long long)n * OUT + o];
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int half = kDbiasBlock / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) dbias[o] = partial[0];
}

}  // namespace

namespace gpu {

// out (N, OUT) = inp (N, IN) W^T + bias; weight (OUT, IN); bias (OUT) or null
void dense_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int IN, int OUT,
                   cublasHandle_t handle, cudaStream_t stream) {
  NvtxRange range("dense_forward");
  BARECNN_ASSERT(N >= 0 && IN >= 1 && OUT >= 1, "dense_forward: N=", N, " IN=", IN, " OUT=", OUT);
  BARECNN_ASSERT(handle != nullptr, "dense_forward: no cuBLAS handle");
  if (N == 0) return;
  BARECNN_ASSERT(out != nullptr && inp != nullptr && weight != nullptr, "dense_forward: null pointer");
  // out (N, OUT) = inp (N, IN) * weight^T (IN, OUT)
  gemm_row_major(handle, false, true, N, OUT, IN, inp, IN, weight, IN, out, OUT);
  if (bias) {
    const long long total = (long long)N * OUT;
    BARECNN_LAUNCH(bias_add_kernel, grid_for(total, kBiasBlock), kBiasBlock, 0, stream, out, bias, total, OUT);
    CUDA_CHECK_LAUNCH("dense_forward (bias)", fmt("N=", N, " IN=", IN, " OUT=", OUT));
  }
}

// dinp (N, IN) = dout (N, OUT) W; weight (OUT, IN). dinp null: not needed, nothing to do.
void dense_backward_input(float* dinp, const float* dout, const float* weight, int N, int IN, int OUT,
                          cublasHandle_t handle, cudaStream_t stream) {
  NvtxRange range("dense_backward_input");
  if (dinp == nullptr) return;
  BARECNN_ASSERT(N >= 0 && IN >= 1 && OUT >= 1, "dense_backward_input: N=", N, " IN=", IN, " OUT=", OUT);
  BARECNN_ASSERT(handle != nullptr, "dense_backward_input: no cuBLAS handle");
  if (N == 0) return;
  BARECNN_ASSERT(dout != nullptr && weight != nullptr, "dense_backward_input: null pointer");
  // dinp (N, IN) = dout (N, OUT) * weight (OUT, IN)
  gemm_row_major(handle, false, false, N, IN, OUT, dout, OUT, weight, IN, dinp, IN);
}

// dweight (OUT, IN) = dout^T (OUT, N) inp (N, IN); dbias (OUT) = column sums of dout (N, OUT), or
// null. Both overwritten.
void dense_backward_weight(float* dweight, float* dbias, const float* dout, const float* inp, int N, int IN, int OUT,
                           cublasHandle_t handle, cudaStream_t stream) {
  NvtxRange range("dense_backward_weight");
  BARECNN_ASSERT(N >= 0 && IN >= 1 && OUT >= 1, "dense_backward_weight: N=", N, " IN=", IN, " OUT=", OUT);
  BARECNN_ASSERT(handle != nullptr, "dense_backward_weight: no cuBLAS handle");
  BARECNN_ASSERT(dweight != nullptr, "dense_backward_weight: dweight is null");
  if (N == 0) {
    // An empty batch has zero gradient (the reference's empty sums); a GEMM with k = 0 is not
    // guaranteed to write C.
    CUDA_CHECK(cudaMemsetAsync(dweight, 0, sizeof(float) * (size_t)OUT * IN, stream));
    if (dbias) CUDA_CHECK(cudaMemsetAsync(dbias, 0, sizeof(float) * (size_t)OUT, stream));
    return;
  }
  BARECNN_ASSERT(dout != nullptr && inp != nullptr, "dense_backward_weight: null pointer");
  // dweight (OUT, IN) = dout^T (OUT, N) * inp (N, IN); dout is stored (N, OUT), hence transA
  gemm_row_major(handle, true, false, OUT, IN, N, dout, OUT, inp, IN, dweight, IN);
  if (dbias) {
    BARECNN_LAUNCH(dbias_kernel, OUT, kDbiasBlock, 0, stream, dbias, dout, N, OUT);
    CUDA_CHECK_LAUNCH("dense_backward_weight (dbias)", fmt("N=", N, " IN=", IN, " OUT=", OUT));
  }
}

}  // namespace gpu
}  // namespace barecnn
