// Fast float CPU versions of the cheap-but-frequent ops: ReLU-family and tanh activations (tanh
// by its own vectorizable approximation, below; the backward of tanh and sigmoid the reference's
// expressions), dropout and max pooling.
// The reference evaluates the activation table through a switch per element and routes every
// max-pool gradient through a gather; here the common cases are straight loops the compiler
// vectorizes (a select, not a branch: that needs -fno-trapping-math, CMakeLists.txt; objdump shows
// packed compares, cmpltps with andps or blendvps, with it and a scalar branch without), and
// everything else falls back to the reference.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include <immintrin.h>
#include <omp.h>

#include "barecnn/cpu_ops.h"
#include "barecnn/error.h"
#include "barecnn/norm.h"
#include "barecnn/ref_ops.h"
#include "barecnn/shape.h"

namespace barecnn::cpu {

// Below this many elements a loop runs on the calling thread.
static constexpr long long kMinParallel = 1LL << 15;

// f(i) for every i in [0, n), vectorized: split across the OpenMP team from kMinParallel elements
// on, else on the calling thread without entering a parallel region. (`parallel for simd
// if (n >= kMinParallel)` ran small loops unvectorized: an `if` without a modifier applies to the
// simd construct too. With `if (parallel : ...)` the serialized region still cost ~1 us: a ReLU
// over 8k floats took 5.7 us, then 2.1, now 1.1.) f takes its pointers by value.
template <class F>
[[gnu::always_inline]] inline void for_each_index(long long n, F f) {
  if (n >= kMinParallel) {
#pragma omp parallel for simd schedule(static)
    for (long long i = 0; i < n; ++i) f(i);
  } else {
#pragma omp simd
    for (long long i = 0; i < n; ++i) f(i);
  }
}

// ---- tanh in float, branch-free (the loop over it vectorizes) ----
// glibc's tanhf goes through expm1f, ~20 ns an element on the values a net's tanh sees; this
// runs in ~2 ns with SSE2 vectors. |error| <= 1.4 ulp of the correctly rounded tanh on every float
// in [0, 10] (checked exhaustively when written; the test samples it), odd exactly (sign copied
// from x), +-0 -> +-0, subnormals -> themselves, +-inf -> +-1, NaN -> the same NaN.
//   |x| < 0.625: a + a z p(z), z = a^2, p a degree-5 polynomial fitted (weighted least squares,
//                Lawson iterations) to (tanh(a)/a - 1)/z; 0.74 ulp.
//   otherwise:   1 - 2 / (e^(2a) + 1), a clamped to 9.5 (tanh is 1 in float from 9.01); e^y = 2^n e^r with
//                n = round(y / ln 2), r = y - n ln 2 (ln 2 in two parts, so r is exact enough),
//                e^r by its Taylor series to r^7 (|r| <= ln(2)/2: error 5e-9).
// Written with selects only, so that (with -fno-trapping-math, as barecnn_cpu is built) GCC
// if-converts and vectorizes the loops that call it.
static inline float exp_reduced(float y) {                // e^y for 0 <= y <= 20: no overflow, NaN or inf handling
  const float kLog2e = 1.44269502f, kShift = 12582912.f;  // 1.5 * 2^23: adding it rounds to an integer
  const float kLn2Hi = 0.693145751953125f, kLn2Lo = 1.42860677e-06f;
  const float fn = (y * kLog2e + kShift) - kShift;
  const float r = (y - fn * kLn2Hi) - fn * kLn2Lo;
  float p = 1.f / 5040.f;
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t bits = (int32_t(fn) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
static inline float tanh_float(float x) {
  const float a = std::fabs(x), z = a * a;
  float p = 0.0021475344f;
  p = p * z - 0.0081826719f;
  p = p * z + 0.021702966f;
  p = p * z - 0.053947203f;
  p = p * z + 0.13333210f;
  p = p * z - 0.33333331f;
  const float small = a + a * (z * p);
  const float e = exp_reduced(2.f * (a < 9.5f ? a : 9.5f));
  const float big = 1.f - 2.f / (e + 1.f);
  const float r = std::copysign(a < 0.625f ? small : big, x);
  return x != x ? x : r;
}

void activation_forward(float* out, const float* inp, long long n, Activation a) {
  // The reference's formulas exactly: ReLU is +0 (not 0 * x: -0, or NaN at -inf) where x <= 0,
  // and a NaN stays NaN.
  if (a.kind == Act::Relu) {
    for_each_index(n, [=](long long i) {
      float x = inp[i];
      out[i] = x <= 0.f ? 0.f : x;
    });
    return;
  }
  if (a.kind == Act::LeakyRelu) {
    const float slope = a.alpha;
    for_each_index(n, [=](long long i) {
      float x = inp[i];
      out[i] = x > 0.f ? x : slope * x;
    });
    return;
  }
  if (a.kind == Act::Tanh) {
    for_each_index(n, [=](long long i) { out[i] = tanh_float(inp[i]); });
    return;
  }
  ref::activation_forward(out, inp, n, a);
}

void dropout_map(float* out, const float* in, long long n, float p, uint64_t seed, long long step, int layer) {
  BARECNN_ASSERT(n >= 0 && p >= 0.f && p < 1.f, "cpu::dropout_map: n=", n, " p=", p);
  const uint32_t threshold = dropout_threshold(p);
  const float scale = dropout_scale(p);
  // Every element's product is taken and the mask selects it or +0: a branch on the mask would
  // mispredict on a random p of the elements. The elements are independent: any split is exact.
  for_each_index(n, [=](long long i) {
    const float kept = in[i] * scale;
    out[i] = dropout_keeps(seed, step, layer, i, threshold) ? kept : 0.f;
  });
}

void activation_backward(float* dinp, const float* dout, const float* inp, const float* out, long long n,
                         Activation a) {
  if (!dinp) return;
  if (a.kind == Act::Relu || a.kind == Act::LeakyRelu) {
    const float slope = a.kind == Act::Relu ? 0.f : a.alpha;
    for_each_index(n, [=](long long i) {
      float g = dout[i];  // loaded unconditionally: a select, not a branch
      dinp[i] = inp[i] > 0.f ? g : slope * g;
    });
    return;
  }
  if (a.kind == Act::Tanh || a.kind == Act::Sigmoid) {  // from y: the reference's expressions, threaded
    const bool tanh = a.kind == Act::Tanh;
    for_each_index(n, [=](long long i) {
      const float y = out[i];
      dinp[i] = dout[i] * (tanh ? 1.f - y * y : y * (1.f - y));
    });
    return;
  }
  ref::activation_backward(dinp, dout, inp, out, n, a);
}

// One output row of max pooling: the reference's scan (row-major, strict '>', so a tie or a NaN
// after the first element keeps the earlier one) written as selects, so the compiler vectorizes
// across the row instead of branching on every comparison of random data. KH, KW, SH, SW > 0 are
// the window and stride known at compile time (the 2x2 stride-2 pool of every preset: strided
// loads the compiler turns into shuffles); 0 means "read it from s" (every other pool: the same
// selects, run-time loops). Bitwise the reference: the same comparisons on the same values.
// `rows` holds the plane's rows from `row0` on.
template <int KH, int KW, int SH, int SW>
static void maxpool_row(float* out, int32_t* mask, const float* rows, int row0, int oh, const Pool2dShape& s) {
  const int kh = KH ? KH : s.kh, kw = KW ? KW : s.kw, sh = SH ? SH : s.sh, sw = SW ? SW : s.sw;
  const int W = s.W, h0 = oh * sh;
#pragma omp simd
  for (int ow = 0; ow < s.OW; ++ow) {
    const int w0 = ow * sw;
    const float* win = rows + (h0 - row0) * W + w0;  // the window's top-left pixel
    float best = win[0];
    int32_t best_idx = h0 * W + w0;
    for (int i = 0; i < kh; ++i) {
      for (int j = 0; j < kw; ++j) {
        const float v = win[i * W + j];
        const bool gt = v > best;  // false for the first element itself: it stays
        best = gt ? v : best;
        best_idx = gt ? (h0 + i) * W + w0 + j : best_idx;
      }
    }
    out[ow] = best;
    mask[ow] = best_idx;
  }
}

void maxpool2d_forward(float* out, int32_t* mask, const float* inp, const Pool2dShape& s) {
  // out (N, C, OH, OW); mask (N, C, OH, OW); inp (N, C, H, W). Checked as the reference checks.
  BARECNN_ASSERT(s.N >= 0 && s.C >= 1 && s.kh >= 1 && s.kw >= 1 && s.sh >= 1 && s.sw >= 1 && s.H >= s.kh &&
                     s.W >= s.kw && s.OH == window_out_size(s.H, s.kh, s.sh, 0) &&
                     s.OW == window_out_size(s.W, s.kw, s.sw, 0),
                 "maxpool2d_forward: bad shape ", s.str());
  const long long planes = 1LL * s.N * s.C, in_plane = 1LL * s.H * s.W, out_plane = 1LL * s.OH * s.OW;
#pragma omp parallel for schedule(static) if (planes * in_plane >= kMinParallel)
  for (long long p = 0; p < planes; ++p)
    detail::maxpool_plane_rows(out + p * out_plane, mask + p * out_plane, inp + p * in_plane, 0, 0, s.OH, s);
}

void detail::maxpool_plane_rows(float* out, int32_t* mask, const float* rows, int row0, int oh0, int oh1,
                                const Pool2dShape& s) {
  const bool k2s2 = s.kh == 2 && s.kw == 2 && s.sh == 2 && s.sw == 2;
  for (int oh = oh0; oh < oh1; ++oh) {
    float* o = out + 1LL * oh * s.OW;
    int32_t* m = mask + 1LL * oh * s.OW;
    if (k2s2)
      maxpool_row<2, 2, 2, 2>(o, m, rows, row0, oh, s);
    else
      maxpool_row<0, 0, 0, 0>(o, m, rows, row0, oh, s);
  }
}

// Non-overlapping windows (stride >= window): every input pixel lies in at most one window, so
// the gradient is a scatter of dout through the mask into a zeroed plane: +0 + g, the reference's
// one-term sum (-0 becomes +0), bit for bit. Overlapping windows use the reference.
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
    for (long long o = 0; o < out_plane; ++o) d[m[o]] = 0.f + g[o];
  }
}

// ---- average pooling: the reference's sums in its order (window rows, then columns, from +0), as
// loops the compiler vectorizes across a row; bitwise the reference. KH..SW as in maxpool_row. ----
template <int KH, int KW, int SH, int SW>
static void avgpool_row(float* out, const float* plane, int oh, const Pool2dShape& s, float scale) {
  const int kh = KH ? KH : s.kh, kw = KW ? KW : s.kw, sh = SH ? SH : s.sh, sw = SW ? SW : s.sw;
  const float* base = plane + 1LL * oh * sh * s.W;
#pragma omp simd
  for (int ow = 0; ow < s.OW; ++ow) {
    float acc = 0.f;
    for (int i = 0; i < kh; ++i)
      for (int j = 0; j < kw; ++j) acc += base[1LL * i * s.W + ow * sw + j];
    out[ow] = acc * scale;
  }
}

static void check_avgpool_shape(const Pool2dShape& s, const char* op) {
  BARECNN_ASSERT(s.N >= 0 && s.C >= 1 && s.kh >= 1 && s.kw >= 1 && s.sh >= 1 && s.sw >= 1 && s.H >= s.kh &&
                     s.W >= s.kw && s.OH == window_out_size(s.H, s.kh, s.sh, 0) &&
                     s.OW == window_out_size(s.W, s.kw, s.sw, 0),
                 op, ": bad shape ", s.str());
}

void avgpool2d_forward(float* out, const float* inp, const Pool2dShape& s) {
  // out (N, C, OH, OW); inp (N, C, H, W)
  check_avgpool_shape(s, "avgpool2d_forward");
  const float scale = 1.f / float(s.kh * s.kw);
  const bool k2s2 = s.kh == 2 && s.kw == 2 && s.sh == 2 && s.sw == 2;
  const long long planes = 1LL * s.N * s.C, in_plane = 1LL * s.H * s.W, out_plane = 1LL * s.OH * s.OW;
#pragma omp parallel for schedule(static) if (planes * in_plane >= kMinParallel)
  for (long long p = 0; p < planes; ++p)
    for (int oh = 0; oh < s.OH; ++oh) {
      float* o = out + p * out_plane + 1LL * oh * s.OW;
      if (k2s2)
        avgpool_row<2, 2, 2, 2>(o, inp + p * in_plane, oh, s, scale);
      else
        avgpool_row<0, 0, 0, 0>(o, inp + p * in_plane, oh, s, scale);
    }
}

// Non-overlapping windows: each input pixel sums the dout of at most one window, (+0 + g) * scale
// as the reference's one-term sum gives it (so -0 becomes +0), +0 outside every window.
// Overlapping windows use the reference.
void avgpool2d_backward(float* dinp, const float* dout, const Pool2dShape& s) {
  check_avgpool_shape(s, "avgpool2d_backward");
  if (s.sh < s.kh || s.sw < s.kw) {
    ref::avgpool2d_backward(dinp, dout, s);
    return;
  }
  const float scale = 1.f / float(s.kh * s.kw);
  const long long planes = 1LL * s.N * s.C, in_plane = 1LL * s.H * s.W, out_plane = 1LL * s.OH * s.OW;
#pragma omp parallel for schedule(static) if (planes * in_plane >= kMinParallel)
  for (long long p = 0; p < planes; ++p) {
    for (int h = 0; h < s.H; ++h) {
      float* d = dinp + p * in_plane + 1LL * h * s.W;  // (W)
      const int oh = h / s.sh;
      if (oh >= s.OH || h - oh * s.sh >= s.kh) {  // a row no window covers
        std::fill(d, d + s.W, 0.f);
        continue;
      }
      const float* g = dout + p * out_plane + 1LL * oh * s.OW;  // (OW)
      if (s.sw == 2 && s.kw == 2) {
        const int covered = 2 * s.OW;
#pragma omp simd
        for (int w = 0; w < covered; ++w) d[w] = (0.f + g[w >> 1]) * scale;
        std::fill(d + covered, d + s.W, 0.f);
      } else {
        for (int w = 0; w < s.W; ++w) {
          const int ow = w / s.sw;
          d[w] = ow < s.OW && w - ow * s.sw < s.kw ? (0.f + g[ow]) * scale : 0.f;
        }
      }
    }
  }
}

}  // namespace barecnn::cpu

namespace barecnn::cpu {

// param[i] = f(i) for every i in [0, n), like for_each_index; f may also write the moment buffers
// at i. From kStreamParams elements on, param is written with non-temporal stores (movntps): the
// forward and backward have just read the weights on every thread, so a weight's cache line is
// often in another core's cache too, and an ordinary store must first take the line over (a read
// for ownership, which the hardware prefetchers do not start early). On the 2-vCPU Zen 5 VM the
// SGD step over 805k weights both threads had just read took 0.66 ms, in another placement of the
// vCPUs 0.23 ms; with streaming stores 0.11 and 0.125 ms (0.09 ms when nothing is shared). The
// next forward reads the weights from memory, once. Smaller buffers stay cached, as before.
// Each element's value is f(i) either way: the same operations, so the same bits.
static constexpr long long kStreamParams = 1LL << 18;  // 1 MiB
static constexpr long long kStreamBlock = 64;          // floats per block: 4 cache lines

// param[i] = f(i) for the blocks of [i0, i1) (whole blocks, param + i0 64-byte aligned): each
// block computed into an L1 buffer (the loop vectorizes), then streamed out.
template <class F>
[[gnu::always_inline]] inline void stream_blocks(float* param, long long i0, long long i1, F f) {
  for (long long i = i0; i < i1; i += kStreamBlock) {
    alignas(64) float t[kStreamBlock];
#pragma omp simd
    for (long long j = 0; j < kStreamBlock; ++j) t[j] = f(i + j);
    for (long long j = 0; j < kStreamBlock; j += 4) _mm_stream_ps(param + i + j, _mm_load_ps(t + j));
  }
}
// The same loop with 8-float vectors where the CPU has AVX2 (without FMA, so the compiler cannot
// fuse a multiply and an add: the reference's roundings stay).
template <class F>
[[gnu::target("avx2")]] void stream_blocks_avx2(float* param, long long i0, long long i1, F f) {
  stream_blocks(param, i0, i1, f);
}

template <class F>
[[gnu::always_inline]] inline void update_params(float* param, long long n, F f) {
  if (n < kStreamParams) {
    for_each_index(n, [=](long long i) { param[i] = f(i); });
    return;
  }
  // Blocks from the first 64-byte aligned element of param, an equal share of them per thread;
  // the few elements before the first block and after the last run on the calling thread.
  const long long head = std::min(n, (long long)((64 - reinterpret_cast<uintptr_t>(param) % 64) % 64 / sizeof(float)));
  const long long blocks = (n - head) / kStreamBlock, tail = head + blocks * kStreamBlock;
  const bool avx2 = cpu_isa() != CpuIsa::Generic;
  for (long long i = 0; i < head; ++i) param[i] = f(i);
#pragma omp parallel
  {
    const long long t = omp_get_thread_num(), nt = omp_get_num_threads();
    const long long i0 = head + blocks * t / nt * kStreamBlock, i1 = head + blocks * (t + 1) / nt * kStreamBlock;
    if (avx2)
      stream_blocks_avx2(param, i0, i1, f);
    else
      stream_blocks(param, i0, i1, f);
    _mm_sfence();  // the streamed stores are ordered before the region's closing barrier
  }
  for (long long i = tail; i < n; ++i) param[i] = f(i);
}

// The reference's optimizer step (host/reference/optim.cpp), the same float operations per element
// in the same order (no fused multiply-add: this file is built for baseline x86-64, and
// stream_blocks_avx2 without FMA), so bitwise the reference; the momentum/no-momentum choice is
// made once outside the loop, and the loop is split across threads and vectorized (elements are
// independent).
void optimizer_step(float* param, const float* grad, float* m, float* v, size_t n, const OptimConfig& cfg, float bc1,
                    float bc2) {
  const long long len = (long long)n;
  const float lr = cfg.lr, wd = cfg.weight_decay;
  switch (cfg.kind) {
    case Optim::SGD: {
      const float mu = cfg.momentum;
      if (mu == 0.f) {
        update_params(param, len, [=](long long i) { return param[i] - lr * (grad[i] + wd * param[i]); });
        return;
      }
      BARECNN_ASSERT(m != nullptr, "optimizer_step: SGD with momentum ", mu, " needs a momentum buffer");
      update_params(param, len, [=](long long i) {
        const float g = grad[i] + wd * param[i];
        const float mi = mu * m[i] + g;
        m[i] = mi;
        return param[i] - lr * mi;
      });
      return;
    }
    case Optim::Adam: {
      BARECNN_ASSERT(m != nullptr && v != nullptr, "optimizer_step: Adam needs both moment buffers");
      const float b1 = cfg.beta1, b2 = cfg.beta2, eps = cfg.eps;
      update_params(param, len, [=](long long i) {
        const float g = grad[i] + wd * param[i];
        const float mi = b1 * m[i] + (1.f - b1) * g;
        const float vi = b2 * v[i] + (1.f - b2) * g * g;
        m[i] = mi;
        v[i] = vi;
        return param[i] - lr * (mi / bc1) / (std::sqrt(vi / bc2) + eps);
      });
      return;
    }
  }
  BARECNN_ASSERT(false, "optimizer_step: unknown optimizer ", static_cast<int>(cfg.kind));
}

}  // namespace barecnn::cpu
