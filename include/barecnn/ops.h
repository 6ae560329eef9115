// Every op twice, with the same signature: the CPU reference (barecnn::ref, host/reference/,
// templated on float and double) and the CUDA launcher (barecnn::gpu, kernels/, float, on a
// stream). Pointers are raw and NCHW; each carries its shape in a comment.
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
#include "barecnn/loss.h"
#include "barecnn/shape.h"

namespace barecnn {

// Optimizer settings. SGD (with optional momentum) and Adam, both with L2 weight decay added to
// the gradient, as in torch.optim.SGD / torch.optim.Adam.
enum class Optim : int { SGD, Adam };
struct OptimConfig {
  Optim kind = Optim::SGD;
  float lr = 0.01f;
  float momentum = 0.f;     // SGD only; 0 = the paper's plain gradient descent
  float weight_decay = 0.f;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;  // Adam only
};

namespace ref {

// ---- convolution (docs/MATH.md, "Convolution") ----
// out (N, K, OH, OW); inp (N, C, H, W); weight (K, C, kh, kw); bias (K) or null
template <typename T>
void conv2d_forward(T* out, const T* inp, const T* weight, const T* bias, const Conv2dShape& s);
// dinp (N, C, H, W) from dout (N, K, OH, OW)
template <typename T>
void conv2d_backward_input(T* dinp, const T* dout, const T* weight, const Conv2dShape& s);
// dweight (K, C, kh, kw), dbias (K) or null, from dout and inp
template <typename T>
void conv2d_backward_weight(T* dweight, T* dbias, const T* dout, const T* inp, const Conv2dShape& s);

// ---- pooling ----
// max: out (N, C, OH, OW); mask (N, C, OH, OW) holds the flat index h*W + w of the winner inside
// its (n, c) plane; the first index wins on ties.
template <typename T>
void maxpool2d_forward(T* out, int32_t* mask, const T* inp, const Pool2dShape& s);
template <typename T>
void maxpool2d_backward(T* dinp, const T* dout, const int32_t* mask, const Pool2dShape& s);
template <typename T>
void avgpool2d_forward(T* out, const T* inp, const Pool2dShape& s);
template <typename T>
void avgpool2d_backward(T* dinp, const T* dout, const Pool2dShape& s);
// L2: out = sqrt(sum of squares over the window); backward needs inp and out.
template <typename T>
void l2pool2d_forward(T* out, const T* inp, const Pool2dShape& s);
template <typename T>
void l2pool2d_backward(T* dinp, const T* dout, const T* inp, const T* out, const Pool2dShape& s);

// ---- activations (elementwise over n values) ----
template <typename T>
void activation_forward(T* out, const T* inp, long long n, Activation a);
template <typename T>
void activation_backward(T* dinp, const T* dout, const T* inp, const T* out, long long n, Activation a);
// softmax over each row of (N, K)
template <typename T>
void softmax_forward(T* out, const T* inp, int N, int K);
template <typename T>
void softmax_backward(T* dinp, const T* dout, const T* out, int N, int K);

// ---- dense: out = inp W^T + b, W (OUT, IN) as torch.nn.Linear ----
// out (N, OUT); inp (N, IN); weight (OUT, IN); bias (OUT) or null
template <typename T>
void dense_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int IN, int OUT);
template <typename T>
void dense_backward_input(T* dinp, const T* dout, const T* weight, int N, int IN, int OUT);
template <typename T>
void dense_backward_weight(T* dweight, T* dbias, const T* dout, const T* inp, int N, int IN, int OUT);

// ---- losses ----
// For each sample i: loss[i] (N) = the loss of logits row i (N, K) against one-hot(labels[i]);
// dlogits (N, K) = grad_scale * d loss[i] / d logits (grad_scale = 1/N for the batch mean), or
// null; correct[i] (N) = 1 if argmax of the row (first index on ties) equals the label, or null.
template <typename T>
void loss_forward_backward(T* loss, T* dlogits, int32_t* correct, const T* logits,
                           const int32_t* labels, int N, int K, Loss kind, T grad_scale);

// ---- optimizer: one step over a flat buffer of n parameters ----
// m, v: optimizer state (momentum buffer / Adam moments), zero at the start; v unused by SGD.
// step: 1-based step count (Adam's bias correction).
template <typename T>
void optimizer_step(T* param, const T* grad, T* m, T* v, size_t n, const OptimConfig& cfg, long long step);

// ---- data ----
// out (B, P) = (images[idx[b]] (P uint8 pixels) / 255 - mean) / std; out_labels (B) = labels[idx[b]]
template <typename T>
void gather_normalize(T* out, int32_t* out_labels, const uint8_t* images, const uint8_t* labels,
                      const int32_t* idx, int B, int P, float mean, float std);

}  // namespace ref

namespace gpu {

// Same ops, same argument order, on `stream`. All pointers are device pointers.
//
// Fused ReLU (opt-in, for a conv layer followed by relu). fuse_relu: out = relu(conv + bias),
// bitwise conv2d_forward followed by activation_forward(Relu). relu_out (N, K, OH, OW), when not
// null, is that fused output y: both backward ops then read g = dout * (y > 0 ? 1 : 0) in place
// of dout, bitwise what activation_backward(Relu) would have passed them (y > 0 exactly where the
// pre-activation is > 0), so the fused chain gives the very gradients of the unfused one.
void conv2d_forward(float* out, const float* inp, const float* weight, const float* bias,
                    const Conv2dShape& s, cudaStream_t stream, bool fuse_relu = false);
void conv2d_backward_input(float* dinp, const float* dout, const float* weight, const Conv2dShape& s,
                           cudaStream_t stream, const float* relu_out = nullptr);
// Deterministic: no floating-point atomics. `workspace` is scratch for the two-stage reduction,
// of conv2d_backward_weight_workspace(s) floats (may be null when that is 0); the same size with
// or without relu_out.
void conv2d_backward_weight(float* dweight, float* dbias, const float* dout, const float* inp,
                            const Conv2dShape& s, float* workspace, cudaStream_t stream,
                            const float* relu_out = nullptr);
size_t conv2d_backward_weight_workspace(const Conv2dShape& s);
// Which conv2d kernels the three launchers above run. Fast (default): the tiled kernels, each
// falling back to Simple where its shape limits do not hold; Simple: one thread per output, the
// baseline. The start value comes from the environment variable BARECNN_CONV_IMPL=simple|fast,
// read once; tests call set_conv_impl to check both against the reference.
enum class ConvImpl : int { Simple, Fast };
void set_conv_impl(ConvImpl impl);
ConvImpl conv_impl();

void maxpool2d_forward(float* out, int32_t* mask, const float* inp, const Pool2dShape& s, cudaStream_t stream);
void maxpool2d_backward(float* dinp, const float* dout, const int32_t* mask, const Pool2dShape& s, cudaStream_t stream);
void avgpool2d_forward(float* out, const float* inp, const Pool2dShape& s, cudaStream_t stream);
void avgpool2d_backward(float* dinp, const float* dout, const Pool2dShape& s, cudaStream_t stream);
void l2pool2d_forward(float* out, const float* inp, const Pool2dShape& s, cudaStream_t stream);
void l2pool2d_backward(float* dinp, const float* dout, const float* inp, const float* out,
                       const Pool2dShape& s, cudaStream_t stream);

void activation_forward(float* out, const float* inp, long long n, Activation a, cudaStream_t stream);
void activation_backward(float* dinp, const float* dout, const float* inp, const float* out, long long n,
                         Activation a, cudaStream_t stream);
void softmax_forward(float* out, const float* inp, int N, int K, cudaStream_t stream);
void softmax_backward(float* dinp, const float* dout, const float* out, int N, int K, cudaStream_t stream);

// Dense layers go through cuBLAS (row-major GEMM helper); `handle` must be bound to `stream`.
void dense_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int IN,
                   int OUT, cublasHandle_t handle, cudaStream_t stream);
void dense_backward_input(float* dinp, const float* dout, const float* weight, int N, int IN, int OUT,
                          cublasHandle_t handle, cudaStream_t stream);
void dense_backward_weight(float* dweight, float* dbias, const float* dout, const float* inp, int N,
                           int IN, int OUT, cublasHandle_t handle, cudaStream_t stream);

void loss_forward_backward(float* loss, float* dlogits, int32_t* correct, const float* logits,
                           const int32_t* labels, int N, int K, Loss kind, float grad_scale,
                           cudaStream_t stream);
// acc[0] += sum(loss[0..N)), acc[1] += sum(correct[0..N)), in a fixed order (deterministic).
void accumulate_metrics(double* acc, const float* loss, const int32_t* correct, int N, cudaStream_t stream);

void optimizer_step(float* param, const float* grad, float* m, float* v, size_t n, const OptimConfig& cfg,
                    long long step, cudaStream_t stream);

void gather_normalize(float* out, int32_t* out_labels, const uint8_t* images, const uint8_t* labels,
                      const int32_t* idx, int B, int P, float mean, float std, cudaStream_t stream);

// ---- the training step's counters, in device memory ----
// A CUDA Graph replays its kernels with the arguments they were captured with, so what changes
// from one step to the next (which batch of the permutation, Adam's step count t and its bias
// corrections) lives in device memory and is advanced by a kernel inside the step. The training
// loop uses these on the GPU with or without a graph, so both run the very same kernels.
struct StepCounters {
  long long next_batch = 0;   // batch of the epoch's permutation that the next step trains on
  long long batch = 0;        // the batch of the step in flight (set by begin_step)
  long long global_step = 0;  // optimizer steps so far (Adam's t after begin_step)
  float bc1 = 1.f, bc2 = 1.f; // Adam: 1 - beta1^t, 1 - beta2^t (in double, rounded once)
};
// One thread: batch = next_batch++, ++global_step, and the bias corrections for the new t.
void begin_step(StepCounters* c, const OptimConfig& cfg, cudaStream_t stream);
// gather_normalize of batch c->batch: idx = perm + c->batch * B.
void gather_normalize_batch(float* out, int32_t* out_labels, const uint8_t* images, const uint8_t* labels,
                            const int32_t* perm, const StepCounters* c, int B, int P, float mean, float std,
                            cudaStream_t stream);
// optimizer_step with t and the bias corrections read from c (after begin_step).
void optimizer_step(float* param, const float* grad, float* m, float* v, size_t n, const OptimConfig& cfg,
                    const StepCounters* c, cudaStream_t stream);
// idx (n) = the epoch's permutation of 0..n-1, identical to ref::epoch_permutation (see rng.h).
void epoch_permutation(int32_t* idx, int n, uint64_t seed, long long epoch, cudaStream_t stream);

}  // namespace gpu
}  // namespace barecnn
