// Fast float CPU versions of the cheap-but-frequent ops: ReLU-family activations and max pooling.
// The reference evaluates the activation table through a switch per element and routes every
// max-pool gradient through a gather; here the common cases are straight loops the compiler
// vectorizes (a select, not a branch: that needs -fno-trapping-math, CMakeLists.txt; objdump shows
// packed compares, cmpltps with andps or blendvps, with it and a scalar branch without), and
// everything else falls back to the reference.
#include <algorithm>

#include "barecnn/cpu_ops.h"
#include "barecnn/ref_ops.h"

namespace barecnn::cpu {

static constexpr long long kMinParallel = 1LL << 15;

void activation_forward(float* out, const float* inp, long long n, Activation a) {
  // The reference's formulas exactly: ReLU is +0 (not 0 * x: -0, or NaN at -inf) where x <= 0,
  // and a NaN stays NaN.
  if (a.kind == Act::Relu) {
#pragma omp parallel for simd schedule(static) if (n >= kMinParallel)
    for (long long i = 0; i < n; ++i) {
      float x = inp[i];
      out[i] = x <= 0.f ? 0.f : x;
    }
    return;
  }
  if (a.kind == Act::LeakyRelu) {
    const float slope = a.alpha;
#pragma omp parallel for simd schedule(static) if (n >= kMinParallel)
    for (long long i = 0; i < n; ++i) {
      float x = inp[i];
      out[i] = x > 0.f ? x : slope * x;
    }
    return;
  }
  ref::activation_forward(out, inp, n, a);
}

void activation_backward(float* dinp, const float* dout, const float* inp, const float* out, long long n,
                         Activation a) {
  if (!dinp) return;
  if (a.kind == Act::Relu || a.kind == Act::LeakyRelu) {
    const float slope = a.kind == Act::Relu ? 0.f : a.alpha;
#pragma omp parallel for simd schedule(static) if (n >= kMinParallel)
    for (long long i = 0; i < n; ++i) {
      float g = dout[i];  // loaded unconditionally: a select, not a branch
      dinp[i] = inp[i] > 0.f ? g : slope * g;
    }
    return;
  }
  ref::activation_backward(dinp, dout, inp, out, n, a);
}

void maxpool2d_forward(float* out, int32_t* mask, const float* inp, const Pool2dShape& s) {
  ref::maxpool2d_forward(out, mask, inp, s);
}

// Non-overlapping windows (stride >= window): every input pixel lies in at most one window, so
// the gradient is a scatter of dout through the mask into a zeroed plane, with no sums at all —
// the same values as the reference's gather, bit for bit. Overlapping windows use the reference.
void maxpool2d_backward(float* dinp, const float* dout, const int32_t* mask, const Pool2dShape& s) {
  if (s.sh < s.kh || s.sw < s.kw) {
    ref::maxpool2d_backward(dinp, dout, mask, s);
    return;
  }
  const long long planes = 1LL * s.N * s.C, in_plane = 1LL * s.H * s.W, out_plane = 1LL * s.OH * s.OW;
#pragma omp parallel for schedule(static) if (planes * in_plane >= kMinParallel)
  for (long long p = 0; p < planes; ++p) {
    float* d = dinp + p * in_plane;  // (H, W)
    std::fill(d, d + in_plane, 0.f);
    const float* g = dout + p * out_plane;    // (OH, OW)
    const int32_t* m = mask + p * out_plane;  // (OH, OW)
    for (long long o = 0; o < out_plane; ++o) d[m[o]] = g[o];
  }
}

}  // namespace barecnn::cpu
