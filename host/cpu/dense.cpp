// Fast float CPU dense layer: the three products of host/reference/dense.cpp as GEMMs on the
// SGEMM of sgemm.h, split across OpenMP threads by blocks of the output.
//
//   forward          out (N, OUT)  = inp (N, IN) W^T + b      sgemm_nt (both read along IN)
//   backward_input   dinp (N, IN)  = dout (N, OUT) W           sgemm_nn
//   backward_weight  dW (OUT, IN)  = dout^T inp                sgemm_nn (A = dout read transposed)
//                    db (OUT)      = sum over n of dout
//
// Determinism: the output blocks below depend on the shape only, and every element of a block is
// one fixed chain of operations (sgemm.h), so any number of threads gives the same bits.
// This file also holds the ISA switch shared with conv2d.cpp.
#include "barecnn/cpu_ops.h"
#include "barecnn/error.h"
#include "sgemm.h"

namespace barecnn::cpu {

using namespace detail;

// Output blocks handed to threads. Forward: 64 x 64 outputs, so a block's 64 rows of inp and 64
// rows of W (one K block of sgemm_nt, >= 512 floats each) fit L2 together. Backward: 64 rows x
// 256 columns.
static constexpr int kRowBlock = 64, kColBlockFwd = 64, kColBlockBwd = 256;

static int ceil_div(int a, int b) { return (a + b - 1) / b; }

// f(item) for every item in [0, items): handed to the OpenMP team when the op has enough work and
// more than one item, else run on the calling thread without entering a parallel region (a
// serialized region with a dynamic schedule cost ~2 us a call: half of `paper`'s dense(10)
// forward; a team woken for a single item, `deep`'s dense(10), ~4 us). The same items either way.
template <class F>
static void for_items(int items, bool parallel, F f) {
  if (parallel && items > 1) {
#pragma omp parallel for schedule(dynamic)
    for (int item = 0; item < items; item++) f(item);
  } else {
    for (int item = 0; item < items; item++) f(item);
  }
}

void dense_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int IN, int OUT) {
  // out (N, OUT); inp (N, IN); weight (OUT, IN); bias (OUT) or null
  BARECNN_ASSERT(N >= 0 && IN >= 1 && OUT >= 1, "cpu::dense_forward: N=", N, " IN=", IN, " OUT=", OUT);
  const int rb = ceil_div(N, kRowBlock), cb = ceil_div(OUT, kColBlockFwd);
  for_items(rb * cb, 1LL * N * IN * OUT >= kMinParallelWork, [&](int item) {
    int n0 = item / cb * kRowBlock, o0 = item % cb * kColBlockFwd;
    int nn = std::min(kRowBlock, N - n0), no = std::min(kColBlockFwd, OUT - o0);
    float* o = out + (long long)n0 * OUT + o0;  // (nn, no) inside (N, OUT)
    // The sum starts from the bias, as in the reference.
    for (int n = 0; n < nn; n++)
      for (int j = 0; j < no; j++) o[(long long)n * OUT + j] = bias ? bias[o0 + j] : 0.f;
    sgemm_nt(nn, no, IN, inp + (long long)n0 * IN, IN, weight + (long long)o0 * IN, IN, o, OUT, true);
  });
}

void dense_backward_input(float* dinp, const float* dout, const float* weight, int N, int IN, int OUT) {
  // dinp (N, IN), overwritten; dout (N, OUT); weight (OUT, IN)
  BARECNN_ASSERT(N >= 0 && IN >= 1 && OUT >= 1, "cpu::dense_backward_input: N=", N, " IN=", IN, " OUT=", OUT);
  const int rb = ceil_div(N, kRowBlock), cb = ceil_div(IN, kColBlockBwd);
  for_items(rb * cb, 1LL * N * IN * OUT >= kMinParallelWork, [&](int item) {
    int n0 = item / cb * kRowBlock, i0 = item % cb * kColBlockBwd;
    int nn = std::min(kRowBlock, N - n0), ni = std::min(kColBlockBwd, IN - i0);
    sgemm_nn(nn, ni, OUT, dout + (long long)n0 * OUT, OUT, 1, weight + i0, IN, dinp + (long long)n0 * IN + i0, IN,
             nullptr, false);
  });
}

void dense_backward_weight(float* dweight, float* dbias, const float* dout, const float* inp, int N, int IN, int OUT) {
  // dweight (OUT, IN), overwritten; dbias (OUT) or null; dout (N, OUT); inp (N, IN)
  BARECNN_ASSERT(N >= 0 && IN >= 1 && OUT >= 1, "cpu::dense_backward_weight: N=", N, " IN=", IN, " OUT=", OUT);
  // Blocks of the output dW; each one reduces over the whole batch (K = N), so no reduction is
  // split across threads.
  const int rb = ceil_div(OUT, kRowBlock), cb = ceil_div(IN, kColBlockBwd);
  for_items(rb * cb, 1LL * N * IN * OUT >= kMinParallelWork, [&](int item) {
    int o0 = item / cb * kRowBlock, i0 = item % cb * kColBlockBwd;
    int no = std::min(kRowBlock, OUT - o0), ni = std::min(kColBlockBwd, IN - i0);
    // A (o, n) = dout[n, o0 + o]: rows 1 apart, columns OUT apart.
    sgemm_nn(no, ni, N, dout + o0, 1, OUT, inp + i0, IN, dweight + (long long)o0 * IN + i0, IN, nullptr, false);
  });
  if (dbias) {
    // Row by row, n ascending for every o: contiguous, vectorizes across o.
    for (int o = 0; o < OUT; o++) dbias[o] = 0.f;
    for (int n = 0; n < N; n++)
      for (int o = 0; o < OUT; o++) dbias[o] += dout[(long long)n * OUT + o];
  }
}

namespace detail {
void gemm_nn(int M, int N, int K, const float* A, long rsa, long csa, const float* B, long ldb, float* C, long ldc,
             const float* row_init, bool accumulate) {
  sgemm_nn(M, N, K, A, rsa, csa, B, ldb, C, ldc, row_init, accumulate);
}
void gemm_nt(int M, int N, int K, const float* A, long lda, const float* B, long ldb, float* C, long ldc,
             bool accumulate) {
  sgemm_nt(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
}
void gemm_nt_filled(int M, int N, int K, const float* A, long lda, const float* B, long ldb, float* C, long ldc,
                    bool accumulate, int* rows) {
  struct Ctx {
    const float* B;
    long ldb;
    int N;
    int* rows;  // the rows handed out so far (the next one asked for must be this one), or -1
  } ctx{B, ldb, N, rows};
  auto fill = [](void* c, int j0, int nr, long* ld) -> const float* {
    const Ctx& x = *static_cast<Ctx*>(c);
    if (*x.rows >= 0) *x.rows = j0 == *x.rows && nr > 0 && j0 + nr <= x.N ? j0 + nr : -1;
    *ld = x.ldb;
    return x.B + j0 * x.ldb;
  };
  *rows = 0;
  sgemm_nt(M, N, K, A, lda, nullptr, 0, C, ldc, accumulate, fill, &ctx);
}
}  // namespace detail

// ---- ISA switch (see sgemm.h) ----

bool cpu_isa_supported(CpuIsa isa) {
  return isa == CpuIsa::Generic || (isa == CpuIsa::Avx2 && cpu_has_avx2_fma()) ||
         (isa == CpuIsa::Avx512 && cpu_has_avx512f());
}

void set_cpu_isa(CpuIsa isa) {
  if (!cpu_isa_supported(isa))
    throw Error(fmt("set_cpu_isa: this CPU lacks ", cpu_isa_name(isa), "; use CpuIsa::Generic"));
  isa_state().store(int(isa));
}

CpuIsa cpu_isa() { return CpuIsa(isa_state().load()); }

const char* cpu_isa_name(CpuIsa isa) {
  return isa == CpuIsa::Avx512 ? "avx512f+fma" : isa == CpuIsa::Avx2 ? "avx2+fma" : "generic";
}

}  // namespace barecnn::cpu
