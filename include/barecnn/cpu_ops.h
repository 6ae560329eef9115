// The fast float CPU versions of the heavy ops (barecnn::cpu, host/cpu/): the same signatures as
// their barecnn::ref specification in ref_ops.h, float only, checked against the double
// reference in tests/test_cpu_fast.cpp and timed against the float reference in
// profiling/cpu_lab.cpp.
//
// How: convolutions are im2col + GEMM, dense layers are GEMMs, all on the register-tiled,
// cache-blocked SGEMM of host/cpu/sgemm.h, with OpenMP across threads (dense layers of at most
// 16 outputs: their own AVX2 / AVX-512 kernels, with the GEMMs' bits).
//
// Deterministic: each output element is computed by one thread in a fixed order that depends
// only on the shape (reductions over the batch are cut into fixed groups of images and the
// group partial sums added in group order), so results are bitwise the same for any number of
// threads and across runs on the same machine. They differ from ref:: by rounding only (another
// summation order, fused multiply-add).
#pragma once

#include <cstddef>
#include <cstdint>

#include "barecnn/activation.h"
#include "barecnn/loss.h"
#include "barecnn/optim.h"
#include "barecnn/shape.h"

namespace barecnn::cpu {

// ---- convolution ----
// With the ReLU after the conv fused (as gpu::conv2d_*): forward with fuse_relu writes relu(conv);
// the backward ops with relu_out (= that output) read dout as the ReLU backward would have handed
// it on. Bitwise the unfused chain of conv and activation ops.
// out (N, K, OH, OW); inp (N, C, H, W); weight (K, C, kh, kw); bias (K) or null
void conv2d_forward(float* out, const float* inp, const float* weight, const float* bias, const Conv2dShape& s,
                    bool fuse_relu = false);
// dinp (N, C, H, W), overwritten, from dout (N, K, OH, OW)
void conv2d_backward_input(float* dinp, const float* dout, const float* weight, const Conv2dShape& s,
                           const float* relu_out = nullptr);
// dweight (K, C, kh, kw), overwritten; dbias (K) or null; from dout and inp
void conv2d_backward_weight(float* dweight, float* dbias, const float* dout, const float* inp, const Conv2dShape& s,
                            const float* relu_out = nullptr);

// With the ReLU and a max pooling after it fused as well (Net's plan, --fuse on, the CPU): the
// conv's output is pooled block by block while it is in cache and never written. ps: the pool
// over the conv's output (N, K, OH, OW) -> (N, K, POH, POW). Forward writes the pooled values and
// the argmax mask (the max-pool's own, bit for bit); the backward ops take the pooled output's
// gradient with them and rebuild the conv's gradient one image at a time: the max-pool backward's
// scatter and the ReLU's mask (pooled > 0 exactly where the winning relu(conv) is). Bitwise the
// unfused chain conv, relu, maxpool. Only where conv2d_fuses_maxpool(s, ps).
bool conv2d_fuses_maxpool(const Conv2dShape& s, const Pool2dShape& ps);
void conv2d_forward_relu_maxpool(float* pooled, int32_t* mask, const float* inp, const float* weight, const float* bias,
                                 const Conv2dShape& s, const Pool2dShape& ps);
void conv2d_backward_input_relu_maxpool(float* dinp, const float* dpooled, const float* pooled, const int32_t* mask,
                                        const float* weight, const Conv2dShape& s, const Pool2dShape& ps);
void conv2d_backward_weight_relu_maxpool(float* dweight, float* dbias, const float* dpooled, const float* pooled,
                                         const int32_t* mask, const float* inp, const Conv2dShape& s,
                                         const Pool2dShape& ps);

// ---- dense: out = inp W^T + b, W (OUT, IN) ----
// out (N, OUT); inp (N, IN); weight (OUT, IN); bias (OUT) or null
void dense_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int IN, int OUT);
// dinp (N, IN), overwritten
void dense_backward_input(float* dinp, const float* dout, const float* weight, int N, int IN, int OUT);
// dweight (OUT, IN), overwritten; dbias (OUT) or null
void dense_backward_weight(float* dweight, float* dbias, const float* dout, const float* inp, int N, int IN, int OUT);

// ---- elementwise (host/cpu/elementwise.cpp): ReLU/leaky ReLU, the tanh and sigmoid backward, the
// max- and average-pool forward and their non-overlapping backward get branch-free loops, bitwise
// the reference; tanh's forward is cpu's own vectorized approximation (<= 1.4 ulp, not bitwise
// glibc's); every other case calls the reference ----
void activation_forward(float* out, const float* inp, long long n, Activation a);
void activation_backward(float* dinp, const float* dout, const float* inp, const float* out, long long n, Activation a);
void maxpool2d_forward(float* out, int32_t* mask, const float* inp, const Pool2dShape& s);
void maxpool2d_backward(float* dinp, const float* dout, const int32_t* mask, const Pool2dShape& s);
void avgpool2d_forward(float* out, const float* inp, const Pool2dShape& s);
void avgpool2d_backward(float* dinp, const float* dout, const Pool2dShape& s);
// ---- loss (host/cpu/loss.cpp): softmax cross-entropy vectorized across the samples, the
// reference's arithmetic with e^x from detail::exp_nearest (not glibc's expf: the two round e^x
// differently only near a tie); every other loss calls the reference. Arguments as
// ref::loss_forward_backward's.
void loss_forward_backward(float* loss, float* dlogits, int32_t* correct, const float* logits, const int32_t* labels,
                           int N, int K, Loss kind, float grad_scale);
// ---- batch normalization (host/cpu/norm.cpp): ref::batchnorm_forward_train and
// ref::batchnorm_backward with each channel's double sums in 8 interleaved lanes (vectorized, no
// add waiting on the one before); the floats are the reference's except where a double sum lies
// within double rounding of a float boundary; rows of S < 8 values: the reference itself ----
void batchnorm_forward_train(float* y, float* mean, float* invstd, float* running, const float* x, const float* gamma,
                             const float* beta, int N, int C, int S);
void batchnorm_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x, const float* gamma,
                        const float* mean, const float* invstd, int N, int C, int S);

// Dropout's map, forward (in = x) and backward (in = dy) alike: ref::dropout_forward's values bit
// for bit (in * dropout_scale(p) where dropout_keeps, else +0), threaded and without a branch on
// the random mask.
void dropout_map(float* out, const float* in, long long n, float p, uint64_t seed, long long step, int layer);

// The optimizer step over a flat parameter buffer, bitwise ref::optimizer_step; Adam's bias
// corrections bc1 = 1 - beta1^t and bc2 = 1 - beta2^t come from the caller (the step counters),
// computed as the reference computes them. SGD ignores them.
void optimizer_step(float* param, const float* grad, float* m, float* v, size_t n, const OptimConfig& cfg, float bc1,
                    float bc2);

// Flush subnormal floats to zero (FTZ and DAZ) on the calling thread and every OpenMP thread while
// the scope lives; the previous modes come back at its end. Training, evaluation, prediction and
// the benchmark on the CPU run inside one, so a subnormal costs no more than a normal number
// (docs/MATH.md, "Subnormal numbers"); the reference and the tests against it run without.
class FlushSubnormals {
 public:
  FlushSubnormals();
  ~FlushSubnormals();
  FlushSubnormals(const FlushSubnormals&) = delete;
  FlushSubnormals& operator=(const FlushSubnormals&) = delete;

 private:
  unsigned saved_;  // the calling thread's MXCSR before
};
// Whether the calling thread flushes subnormals (both FTZ and DAZ on).
bool flushes_subnormals();

// Which instruction set the GEMM kernels use. The start value is the best the CPU supports
// (AVX-512F, else AVX2+FMA, else baseline x86-64); tests and the lab switch it to check and time
// each. Avx512 runs both GEMMs with 16-float vectors and gives the bits of Avx2 (sgemm.h). Setting
// an ISA the CPU lacks throws barecnn::Error.
enum class CpuIsa : int { Generic, Avx2, Avx512 };
void set_cpu_isa(CpuIsa isa);
CpuIsa cpu_isa();
bool cpu_isa_supported(CpuIsa isa);
const char* cpu_isa_name(CpuIsa isa);  // "generic" / "avx2+fma" / "avx512f+fma"

// The two single-threaded GEMMs of host/cpu/sgemm.h as the library compiled them, for the tests:
// a test that included sgemm.h itself would compile its own copies of the kernels' inline
// functions with the test's flags, and the linker may then hand the library either copy (a
// sanitizer build's test copy rounds differently). Arguments as sgemm_nn / sgemm_nt there.
namespace detail {
void gemm_nn(int M, int N, int K, const float* A, long rsa, long csa, const float* B, long ldb, float* C, long ldc,
             const float* row_init, bool accumulate);
void gemm_nt(int M, int N, int K, const float* A, long lda, const float* B, long ldb, float* C, long ldc,
             bool accumulate);
// gemm_nn with B's rows by pointer (B(k, j) = brows[k][j]), as the convs' wide rows hand them over:
// for M <= 32 its full column panels are read in place, not packed.
void gemm_nn_rows(int M, int N, int K, const float* A, long rsa, long csa, const float* const* brows, float* C,
                  long ldc, const float* row_init, bool accumulate);
// gemm_nt with B's rows by pointer and its columns in blocks of kblock (K a multiple of kblock), as
// conv backward-weight hands it the windows of several images' planes: here B's blocks stored one
// after another, block b of row j at B + (b*N + j)*kblock (sgemm_nt_rows' bblock = N*kblock).
// *rows: how many rows of B the GEMM asked for, or -1 if it asked for a row twice, out of order,
// or past B's last one.
void gemm_nt_blocked(int M, int N, int K, const float* A, long lda, const float* B, int kblock, float* C, long ldc,
                     bool accumulate, int* rows);
// Max pooling of one plane's output rows [oh0, oh1) (out and mask point at the plane's row 0),
// from the plane's input rows starting at row `row0` (rows: row row0's first pixel; the windows of
// those output rows lie inside it). The mask holds plane indices h*W + w. maxpool2d_forward runs
// it on whole planes, the fused conv on the rows of a block.
void maxpool_plane_rows(float* out, int32_t* mask, const float* rows, int row0, int oh0, int oh1, const Pool2dShape& s);
// out[i] = e^in[i], the float nearest to it (computed in double; see host/cpu/loss.cpp), as the
// CPU softmax uses it.
void exp_nearest(float* out, const float* in, long long n);
}  // namespace detail

}  // namespace barecnn::cpu
