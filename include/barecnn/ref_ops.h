// The CPU reference of every op (barecnn::ref, host/reference/), templated on float and double.
// Pointers are raw and NCHW; each carries its shape in a comment. The CUDA launchers in gpu_ops.h
// take the same arguments in the same order, plus a stream. No CUDA header is included here: the
// reference compiles with a plain C++ compiler.
//
// Conventions:
//   - forward ops overwrite their outputs; backward ops overwrite the gradients they produce
//     (parameter gradients are not accumulated across calls);
//   - a null gradient pointer means "not needed" (e.g. the input gradient of the first layer).
#pragma once

#include <cstddef>
#include <cstdint>

#include "barecnn/activation.h"
#include "barecnn/augment.h"
#include "barecnn/loss.h"
#include "barecnn/optim.h"
#include "barecnn/shape.h"

namespace barecnn {

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

// ---- batch normalization (docs/MATH.md, "Batch normalization"; constants in norm.h) ----
// x, y (N, C, S): C channels of S values per sample; per channel M = N*S values (M >= 2 to train).
// Training: the batch's mean[c] and invstd[c] = 1/sqrt(var + eps) (C each, kept for backward),
// y = (x - mean) * invstd * gamma + beta; `running` (running_mean (C), running_var (C) with the
// unbiased variance, num_batches_tracked (1)) is updated when not null.
template <typename T>
void batchnorm_forward_train(T* y, T* mean, T* invstd, T* running, const T* x, const T* gamma, const T* beta, int N,
                             int C, int S);
// Evaluation: y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta.
template <typename T>
void batchnorm_forward_eval(T* y, const T* x, const T* gamma, const T* beta, const T* running, int N, int C, int S);
// After a training forward: dgamma = sum dy * xhat, dbeta = sum dy (C each, overwritten), and dx
// (N, C, S, or null) = gamma * invstd * (dy - dbeta / M - xhat * dgamma / M).
template <typename T>
void batchnorm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* gamma, const T* mean,
                        const T* invstd, int N, int C, int S);

// ---- inverted dropout (training; evaluation is the identity), docs/MATH.md "Dropout" ----
// y[i] = x[i] * dropout_scale(p) where dropout_keeps(seed, step, layer, i, dropout_threshold(p)),
// else 0; the backward applies the same mask and factor to dy. n values (N * F).
template <typename T>
void dropout_forward(T* y, const T* x, long long n, float p, uint64_t seed, long long step, int layer);
template <typename T>
void dropout_backward(T* dx, const T* dy, long long n, float p, uint64_t seed, long long step, int layer);

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
void loss_forward_backward(T* loss, T* dlogits, int32_t* correct, const T* logits, const int32_t* labels, int N, int K,
                           Loss kind, T grad_scale);

// ---- optimizer: one step over a flat buffer of n parameters ----
// m, v: optimizer state (momentum buffer / Adam moments), zero at the start; v unused by SGD.
// step: 1-based step count (Adam's bias correction).
template <typename T>
void optimizer_step(T* param, const T* grad, T* m, T* v, size_t n, const OptimConfig& cfg, long long step);

// ---- data ----
// out (B, P) = (images[idx[b]] (P uint8 pixels) / 255 - mean) / std; out_labels (B) = labels[idx[b]]
template <typename T>
void gather_normalize(T* out, int32_t* out_labels, const uint8_t* images, const uint8_t* labels, const int32_t* idx,
                      int B, int P, float mean, float std);
// The training step's gather with augmentation (augment.h): out (B, H*W) as gather_normalize, with
// sample b cropped and flipped by augment_draw(step_draw(seed, step, kDrawAugment, b), aug), where
// step is the optimizer step in flight (StepCounters::global_step after begin_step).
template <typename T>
void gather_normalize_augment(T* out, int32_t* out_labels, const uint8_t* images, const uint8_t* labels,
                              const int32_t* idx, int B, int H, int W, float mean, float std, const Augment& aug,
                              uint64_t seed, long long step);

}  // namespace ref

}  // namespace barecnn
