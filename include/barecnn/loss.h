// The loss table of the paper (section 2.5). Every loss compares the net's K outputs for a sample
// with the one-hot vector of its label; the reported loss is the mean over the batch.
#pragma once

#include <string>

namespace barecnn {

enum class Loss : int {
  SoftmaxCrossEntropy,  // -sum_k y_k log softmax(z)_k, fused and computed by log-sum-exp
  BinaryCrossEntropy,   // -sum_k [y_k log s(z_k) + (1-y_k) log(1-s(z_k))], s = sigmoid, from logits
  MSE,                  // (1/K) sum_k (y_k - z_k)^2
  MSLE,                 // (1/K) sum_k (log(1+y_k) - log(1+z_k))^2, z_k clamped to > -1
  L2,                   // sum_k (y_k - z_k)^2
  L1,                   // sum_k |y_k - z_k|
  MAE,                  // (1/K) sum_k |y_k - z_k|
  MAPE,                 // (100/K) sum_k |y_k - z_k| / max(|y_k|, eps)
};

std::string loss_name(Loss l);  // "cross_entropy", "bce", "mse", ...
// Parses a --loss value; throws UsageError listing the valid names.
Loss parse_loss(const std::string& s);
// All names, in table order.
const char* const* loss_names(int* count);

}  // namespace barecnn
