// The CUDA launcher of every op (barecnn::gpu, kernels/), float, on a stream: the same ops with
// the same signatures as the CPU reference in ref_ops.h, plus the training step's counters.
// Pointers are raw and NCHW; each carries its shape in a comment.
//
// Conventions:
//   - forward ops overwrite their outputs; backward ops overwrite the gradients they produce
//     (parameter gradients are not accumulated across calls);
//   - a null gradient pointer means "not needed" (e.g. the input gradient of the first layer).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "barecnn/activation.h"
#include "barecnn/augment.h"
#include "barecnn/loss.h"
#include "barecnn/optim.h"
#include "barecnn/shape.h"

namespace barecnn {

namespace gpu {

// Which kernels the three conv2d launchers below run. Simple: one thread per output, the
// baseline. Tiled: the direct kernels with shared-memory tiles (and the two-stage weight
// gradient), each falling back to Simple where its shape limits do not hold. Fast (the default):
// the implicit-GEMM kernels with register tiles where they apply (two or more input channels for
// the forward pass, stride 1 for the input gradient, a reduction of 16 to 2048 taps; the weight
// gradient from 16 taps), Tiled elsewhere. The callers carry the choice (Exec::conv_impl; the tests
// and the conv lab check all three against the reference).
enum class ConvImpl : int { Simple, Tiled, Fast };

// Same ops, same argument order, on `stream`. All pointers are device pointers.
//
// Fused ReLU (for a conv layer followed by relu; Net plans it, --fuse). fuse_relu: out = relu(conv + bias),
// bitwise conv2d_forward followed by activation_forward(Relu). relu_out (N, K, OH, OW), when not
// null, is that fused output y: both backward ops then read g = dout * (y > 0 ? 1 : 0) in place
// of dout, bitwise what activation_backward(Relu) would have passed them (y > 0 exactly where the
// pre-activation is > 0), so the fused chain gives the very gradients of the unfused one.
void conv2d_forward(float* out, const float* inp, const float* weight, const float* bias, const Conv2dShape& s,
                    ConvImpl impl, cudaStream_t stream, bool fuse_relu = false);
void conv2d_backward_input(float* dinp, const float* dout, const float* weight, const Conv2dShape& s, ConvImpl impl,
                           cudaStream_t stream, const float* relu_out = nullptr);
// Deterministic: no floating-point atomics. `workspace` is scratch for the two-stage reduction,
// of conv2d_backward_weight_workspace(s) floats (may be null when that is 0); the same size with
// or without relu_out, and for every ConvImpl.
void conv2d_backward_weight(float* dweight, float* dbias, const float* dout, const float* inp, const Conv2dShape& s,
                            float* workspace, ConvImpl impl, cudaStream_t stream, const float* relu_out = nullptr);
size_t conv2d_backward_weight_workspace(const Conv2dShape& s);
// Whether ConvImpl::Fast runs the implicit-GEMM kernel for this op and shape (else the tiled level).
enum class ConvOp : int { Forward, BackwardInput, BackwardWeight };
bool conv2d_uses_gemm(const Conv2dShape& s, ConvOp op);

void maxpool2d_forward(float* out, int32_t* mask, const float* inp, const Pool2dShape& s, cudaStream_t stream);
void maxpool2d_backward(float* dinp, const float* dout, const int32_t* mask, const Pool2dShape& s, cudaStream_t stream);
void avgpool2d_forward(float* out, const float* inp, const Pool2dShape& s, cudaStream_t stream);
void avgpool2d_backward(float* dinp, const float* dout, const Pool2dShape& s, cudaStream_t stream);
void l2pool2d_forward(float* out, const float* inp, const Pool2dShape& s, cudaStream_t stream);
void l2pool2d_backward(float* dinp, const float* dout, const float* inp, const float* out, const Pool2dShape& s,
                       cudaStream_t stream);

void activation_forward(float* out, const float* inp, long long n, Activation a, cudaStream_t stream);
void activation_backward(float* dinp, const float* dout, const float* inp, const float* out, long long n, Activation a,
                         cudaStream_t stream);
void softmax_forward(float* out, const float* inp, int N, int K, cudaStream_t stream);
void softmax_backward(float* dinp, const float* dout, const float* out, int N, int K, cudaStream_t stream);

// Dense layers go through cuBLAS (row-major GEMM helper); `handle` must be bound to `stream`.
void dense_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int IN, int OUT,
                   cublasHandle_t handle, cudaStream_t stream);
void dense_backward_input(float* dinp, const float* dout, const float* weight, int N, int IN, int OUT,
                          cublasHandle_t handle, cudaStream_t stream);
void dense_backward_weight(float* dweight, float* dbias, const float* dout, const float* inp, int N, int IN, int OUT,
                           cublasHandle_t handle, cudaStream_t stream);

void loss_forward_backward(float* loss, float* dlogits, int32_t* correct, const float* logits, const int32_t* labels,
                           int N, int K, Loss kind, float grad_scale, cudaStream_t stream);
// acc[0] += sum(loss[0..N)), acc[1] += sum(correct[0..N)), in a fixed order (deterministic).
void accumulate_metrics(double* acc, const float* loss, const int32_t* correct, int N, cudaStream_t stream);

void optimizer_step(float* param, const float* grad, float* m, float* v, size_t n, const OptimConfig& cfg,
                    long long step, cudaStream_t stream);

void gather_normalize(float* out, int32_t* out_labels, const uint8_t* images, const uint8_t* labels, const int32_t* idx,
                      int B, int P, float mean, float std, cudaStream_t stream);

// ---- the training step's counters, in device memory ----
// A CUDA Graph replays its kernels with the arguments they were captured with, so what changes
// from one step to the next (which batch of the permutation, Adam's step count t and its bias
// corrections, the step's learning rate) lives in device memory and is advanced by a kernel inside the step. The
// training loop uses these on the GPU with or without a graph, so both run the very same kernels.
struct StepCounters {
  long long next_batch = 0;    // batch of the epoch's permutation that the next step trains on
  long long batch = 0;         // the batch of the step in flight (set by begin_step)
  long long global_step = 0;   // optimizer steps so far (Adam's t after begin_step)
  float bc1 = 1.f, bc2 = 1.f;  // Adam: 1 - beta1^t, 1 - beta2^t (in double, rounded once)
  float lr = 0.f;              // the learning rate of step t: lr_at(cfg, t, steps_per_epoch) (optim.h)
  uint64_t seed = 0;           // the run's seed: with global_step, the key of the step's draws (rng.h)
};
// ---- batch normalization and dropout (kernels/norm.cu; as ref:: in ref_ops.h) ----
void batchnorm_forward_train(float* y, float* mean, float* invstd, float* running, const float* x, const float* gamma,
                             const float* beta, int N, int C, int S, cudaStream_t stream);
void batchnorm_forward_eval(float* y, const float* x, const float* gamma, const float* beta, const float* running,
                            int N, int C, int S, cudaStream_t stream);
void batchnorm_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x, const float* gamma,
                        const float* mean, const float* invstd, int N, int C, int S, cudaStream_t stream);
// The mask's seed and step are read from c (device memory), as ref::dropout_* takes them.
void dropout_forward(float* y, const float* x, long long n, float p, const StepCounters* c, int layer,
                     cudaStream_t stream);
void dropout_backward(float* dx, const float* dy, long long n, float p, const StepCounters* c, int layer,
                      cudaStream_t stream);

// One thread: batch = next_batch++, ++global_step, the bias corrections and the learning rate for
// the new t (cfg and steps_per_epoch do not change between steps: a captured graph may hold them).
void begin_step(StepCounters* c, const OptimConfig& cfg, long long steps_per_epoch, cudaStream_t stream);
// gather_normalize of batch c->batch: idx = perm + c->batch * B; images (num_images, H, W). With
// aug on, ref::gather_normalize_augment with the seed and step (global_step) read from c, so each
// replay of a captured graph draws the transforms of its own step; off: gather_normalize itself.
void gather_normalize_batch(float* out, int32_t* out_labels, const uint8_t* images, const uint8_t* labels,
                            const int32_t* perm, const StepCounters* c, int B, int H, int W, const Augment& aug,
                            float mean, float std, cudaStream_t stream);
// optimizer_step with the learning rate and Adam's bias corrections read from c (after begin_step);
// cfg.lr is not used.
void optimizer_step(float* param, const float* grad, float* m, float* v, size_t n, const OptimConfig& cfg,
                    const StepCounters* c, cudaStream_t stream);
// idx (n) = the epoch's permutation of 0..n-1, identical to ref::epoch_permutation (see rng.h).
void epoch_permutation(int32_t* idx, int n, uint64_t seed, long long epoch, cudaStream_t stream);

}  // namespace gpu

}  // namespace barecnn
