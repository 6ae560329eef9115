// CPU reference of the dense (fully connected) layer (docs/MATH.md, "Dense layers"): the
// specification that gpu::dense_* in kernels/dense.cu (cuBLAS GEMMs) is checked against.
//
//   out[n,o] = bias[o] + sum_i inp[n,i] * weight[o,i]      i.e. out = inp W^T + b
//
// weight is (OUT, IN), as torch.nn.Linear stores it, so checkpoints load into PyTorch unchanged.
// Determinism: each output element is summed by one thread, over a fixed index order.
#include "barecnn/error.h"
#include "barecnn/ref_ops.h"

namespace barecnn::ref {

// Below this many multiply-adds a call runs on one thread: waking the OpenMP team costs more
// than it saves (small layers, and the thousands of small calls of a gradient check).
static constexpr long long kMinParallelWork = 1LL << 16;

template <typename T>
void dense_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int IN, int OUT) {
  // out (N, OUT); inp (N, IN); weight (OUT, IN); bias (OUT) or null
  BARECNN_ASSERT(N >= 0 && IN >= 1 && OUT >= 1, "dense_forward: N=", N, " IN=", IN, " OUT=", OUT);
#pragma omp parallel for schedule(static) if (1LL * N * IN * OUT >= kMinParallelWork)
  for (int n = 0; n < N; n++) {
    const T* x = inp + (long long)n * IN;  // (IN)
    for (int o = 0; o < OUT; o++) {
      const T* wrow = weight + (long long)o * IN;  // (IN)
      T acc = bias ? bias[o] : T(0);
      for (int i = 0; i < IN; i++) acc += x[i] * wrow[i];
      out[(long long)n * OUT + o] = acc;
    }
  }
}

// dinp = dout W:  dinp[n,i] = sum_o dout[n,o] * weight[o,i].
// Written as row updates (dinp row += dout[n,o] * weight row o, o ascending) so the inner loop
// walks memory contiguously; each dinp[n,i] is still the sum over o in ascending order.
template <typename T>
void dense_backward_input(T* dinp, const T* dout, const T* weight, int N, int IN, int OUT) {
  // dinp (N, IN), overwritten; dout (N, OUT); weight (OUT, IN)
  BARECNN_ASSERT(N >= 0 && IN >= 1 && OUT >= 1, "dense_backward_input: N=", N, " IN=", IN, " OUT=", OUT);
#pragma omp parallel for schedule(static) if (1LL * N * IN * OUT >= kMinParallelWork)
  for (int n = 0; n < N; n++) {
    T* dx = dinp + (long long)n * IN;  // (IN)
    for (int i = 0; i < IN; i++) dx[i] = T(0);
    for (int o = 0; o < OUT; o++) {
      T g = dout[(long long)n * OUT + o];
      const T* wrow = weight + (long long)o * IN;  // (IN)
      for (int i = 0; i < IN; i++) dx[i] += g * wrow[i];
    }
  }
}

// dW = dout^T inp:  dweight[o,i] = sum_n dout[n,o] * inp[n,i];  dbias[o] = sum_n dout[n,o].
// Parallel over o: each weight row is summed by one thread over the batch, n ascending.
template <typename T>
void dense_backward_weight(T* dweight, T* dbias, const T* dout, const T* inp, int N, int IN, int OUT) {
  // dweight (OUT, IN), overwritten; dbias (OUT) or null; dout (N, OUT); inp (N, IN)
  BARECNN_ASSERT(N >= 0 && IN >= 1 && OUT >= 1, "dense_backward_weight: N=", N, " IN=", IN, " OUT=", OUT);
#pragma omp parallel for schedule(static) if (1LL * N * IN * OUT >= kMinParallelWork)
  for (int o = 0; o < OUT; o++) {
    T* dw = dweight + (long long)o * IN;  // (IN)
    for (int i = 0; i < IN; i++) dw[i] = T(0);
    T db = T(0);
    for (int n = 0; n < N; n++) {
      T g = dout[(long long)n * OUT + o];
      const T* x = inp + (long long)n * IN;  // (IN)
      for (int i = 0; i < IN; i++) dw[i] += g * x[i];
      db += g;
    }
    if (dbias) dbias[o] = db;
  }
}

#define BARECNN_INSTANTIATE_DENSE(T)                                               \
  template void dense_forward<T>(T*, const T*, const T*, const T*, int, int, int); \
  template void dense_backward_input<T>(T*, const T*, const T*, int, int, int);    \
  template void dense_backward_weight<T>(T*, T*, const T*, const T*, int, int, int);
BARECNN_INSTANTIATE_DENSE(float)
BARECNN_INSTANTIATE_DENSE(double)
#undef BARECNN_INSTANTIATE_DENSE

}  // namespace barecnn::ref
