// The activation table of the paper (section 2.2) as scalar functions shared by the CPU reference
// and the CUDA kernels. Softmax is row-wise and lives in ref_ops.h / gpu_ops.h.
#pragma once

#include <cmath>
#include <string>

#include "barecnn/shape.h"  // BARECNN_HD

namespace barecnn {

enum class Act : int {
  Identity,
  BinaryStep,
  Sigmoid,
  Tanh,
  Arctan,
  Relu,
  LeakyRelu,  // alpha: slope for x < 0
  Elu,        // alpha: scale of the negative branch
  Softplus,
};

struct Activation {
  Act kind = Act::Identity;
  float alpha = 0.f;
};

std::string activation_name(const Activation& a);  // "leaky_relu(0.01)"

// f(x)
template <typename T>
BARECNN_HD T act_forward(Act kind, T x, T alpha) {
  using std::atan;
  using std::exp;
  using std::fabs;
  using std::log1p;
  using std::tanh;
  switch (kind) {
    case Act::Identity:
      return x;
    case Act::BinaryStep:
      return x >= T(0) ? T(1) : T(0);
    case Act::Sigmoid:
      return T(1) / (T(1) + exp(-x));
    case Act::Tanh:
      return tanh(x);
    case Act::Arctan:
      return atan(x);
    case Act::Relu:
      return x <= T(0) ? T(0) : x;  // (+0 for -0; a NaN stays NaN, as torch.relu: never hidden)
    case Act::LeakyRelu:
      return x > T(0) ? x : alpha * x;
    case Act::Elu:
      return x > T(0) ? x : alpha * (exp(x) - T(1));
    // log(1 + e^x) without overflow: max(x, 0) + log1p(e^-|x|)
    case Act::Softplus:
      return (x > T(0) ? x : T(0)) + log1p(exp(-fabs(x)));
  }
  return x;
}

// f'(x), given x and y = f(x) (whichever is cheaper to use).
template <typename T>
BARECNN_HD T act_derivative(Act kind, T x, T y, T alpha) {
  using std::exp;
  switch (kind) {
    case Act::Identity:
      return T(1);
    case Act::BinaryStep:
      return T(0);  // zero almost everywhere; undefined at 0
    case Act::Sigmoid:
      return y * (T(1) - y);
    case Act::Tanh:
      return T(1) - y * y;
    case Act::Arctan:
      return T(1) / (T(1) + x * x);
    case Act::Relu:
      return x > T(0) ? T(1) : T(0);
    case Act::LeakyRelu:
      return x > T(0) ? T(1) : alpha;
    case Act::Elu:
      return x > T(0) ? T(1) : y + alpha;  // alpha e^x = y + alpha
    case Act::Softplus:
      return T(1) / (T(1) + exp(-x));
  }
  return T(1);
}

}  // namespace barecnn
