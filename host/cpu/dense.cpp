// Fast float CPU dense layer: the three products of host/reference/dense.cpp as GEMMs on the
// SGEMM of sgemm.h, split across OpenMP threads by blocks of the output.
//
//   forward          out (N, OUT)  = inp (N, IN) W^T + b      sgemm_nt (both read along IN)
//   backward_input   dinp (N, IN)  = dout (N, OUT) W           sgemm_nn
//   backward_weight  dW (OUT, IN)  = dout^T inp                sgemm_nn (A = dout read transposed)
//                    db (OUT)      = sum over n of dout
//
// Layers with at most 16 outputs take their own AVX-512 and AVX2 kernels ("narrow layers" below),
// which make the same chains of operations as these GEMMs.
//
// Determinism: the output blocks below depend on the shape only, and every element of a block is
// one fixed chain of operations (sgemm.h), so any number of threads gives the same bits.
// This file also holds the ISA switch shared with conv2d.cpp.
#include <immintrin.h>

#include <type_traits>

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

// ---- narrow layers: OUT <= 16, AVX-512 and AVX2 -------------------------------------------------------
//
// A 10-way classifier head (every preset ends in one) is too small for the GEMMs above: 64 x 128
// x 10 is 82k multiply-adds, ~0.4 us of one core's FMAs, and the general kernels spent 1.8 us
// (forward), 1.1 us (backward-input) and 3.4 us (backward-weight) on it, in the tile edges (10 rows
// of a 12-row tile), the packing, and sgemm_nt's scalar lane sums (640 of them). The kernels below
// make each output's chain of operations the general ones make, bit for bit (DenseCpu.
// NarrowLayersGiveTheGemmsBits), in the shapes of these layers (AVX-512 here; AVX2's further down,
// the same chains in 8-float vectors):
//
//   forward          lane l of output (n, o) is the FMA chain over k = 8q + l, q ascending from 0
//                    (a zero-padded last step when IN % 8 != 0), as in sgemm_nt; a 16-float
//                    vector holds outputs o and o+1 (W packed in such pairs once a call), row n's
//                    8 inputs broadcast to both halves. The 8 lanes are summed in sgemm_nt's tree
//                    ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)) for 16 outputs at once (3 rounds of
//                    shuffles and adds), then bias + sum, as dense_forward's accumulate.
//   backward_input   dinp (n, i): FMA chain over k = 0..OUT-1 from +0, as sgemm_nn's micro-kernel;
//                    3 rows x 128 columns per tile (W copied to 64-byte aligned rows first).
//   backward_weight  dW (o, i): FMA chain over n = 0..N-1 from +0, as sgemm_nn (its K blocks carry
//                    the chain through C); all OUT rows x 32 columns per tile.
//
// Rows (forward, backward_input) and column blocks (backward_weight) are independent, so the
// thread split never changes a bit; a team is woken only above kNarrowParallelWork (waking one
// costs 2.4-3.4 us on a 2-vCPU VM, more than these layers' whole forward at batch 64).
//
// (GCC 12 reports `__Y` uninitialized inside immintrin.h wherever an intrinsic starts from
// _mm512_undefined_ps, as broadcast, shuffle and permute do: its own idiom for "any value".)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
constexpr int kNarrowOut = 16;
constexpr long long kNarrowParallelWork = 1LL << 20;
constexpr int kNarrowRowsBwd = 3;  // backward-input rows per tile: 24 accumulators

// Which narrow kernels a layer of OUT outputs takes: AVX-512's, AVX2's, or none (the GEMMs).
enum class Narrow { None, Avx2, Avx512 };
static Narrow narrow_kernels(int OUT) {
  const int isa = isa_state().load(std::memory_order_relaxed);
  return OUT > kNarrowOut             ? Narrow::None
         : isa == int(CpuIsa::Avx512) ? Narrow::Avx512
         : isa == int(CpuIsa::Avx2)   ? Narrow::Avx2
                                      : Narrow::None;
}

// Forward of rows [0, R) of a tile: acc[r][j] += the products of row xr[r] with W pair j, over all
// KQ steps of 8 inputs; wp (KQ, JP) pairs. The last step reads the tail, zero-padded.
template <int R, int JP>
[[gnu::target("avx512f,avx2,fma")]] static void narrow_fwd_tile(const float* const* xr, const float* wp, int IN,
                                                                float* accv) {
  __m512 acc[R][JP];
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 8
    for (int j = 0; j < JP; j++) acc[r][j] = _mm512_setzero_ps();
  const int full = IN / 8, KQ = (IN + 7) / 8;
  for (int q = 0; q < KQ; q++, wp += JP * 16) {
    __m512 w[JP];
#pragma GCC unroll 8
    for (int j = 0; j < JP; j++) w[j] = _mm512_load_ps(wp + j * 16);
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
      __m512 x;
      if (q < full) {  // 8 inputs into both halves: one broadcast load
        x = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_loadu_pd(reinterpret_cast<const double*>(xr[r] + 8 * q))));
      } else {  // the tail: IN % 8 inputs, zeros after, in both halves
        const __m512 t = _mm512_maskz_loadu_ps(__mmask16((1u << (IN - 8 * q)) - 1), xr[r] + 8 * q);
        x = _mm512_shuffle_f32x4(t, t, 0x44);
      }
#pragma GCC unroll 8
      for (int j = 0; j < JP; j++) acc[r][j] = _mm512_fmadd_ps(x, w[j], acc[r][j]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; r++)
#pragma GCC unroll 8
    for (int j = 0; j < JP; j++) _mm512_store_ps(accv + (r * JP + j) * 16, acc[r][j]);
}

// Rows [n0, n0 + nn) of the forward. wp: W in pairs; bias_rep[i] = bias of output i % (2 JP), 0 for
// a padded output or no bias, 2 JP + 16 of them.
template <int JP>
[[gnu::target("avx512f,avx2,fma")]] static void narrow_fwd_rows(float* out, const float* inp, const float* wp,
                                                                const float* bias_rep, int n0, int nn, int IN,
                                                                int OUT) {
  constexpr int R = JP <= 6 ? 4 : 3, P = 2 * JP;
  static thread_local std::vector<float> abuf, tbuf;
  const int nacc = (nn * JP + 7) / 8 * 8;  // whole groups of 8; the extra accumulators are zero
  float* accv = scratch(abuf, size_t(nacc) * 16);
  for (int r0 = 0; r0 < nn; r0 += R) {
    const float* xr[R];
    for (int r = 0; r < R; r++) xr[r] = inp + (long long)(n0 + std::min(r0 + r, nn - 1)) * IN;  // repeats the last row
    if (r0 + R <= nn) {
      narrow_fwd_tile<R, JP>(xr, wp, IN, accv + size_t(r0) * JP * 16);
    } else {  // the rows past nn land in t
      alignas(64) float t[R * JP * 16];
      narrow_fwd_tile<R, JP>(xr, wp, IN, t);
      std::memcpy(accv + size_t(r0) * JP * 16, t, sizeof(float) * (nn - r0) * JP * 16);
    }
  }
  std::memset(accv + size_t(nn) * JP * 16, 0, sizeof(float) * (nacc - nn * JP) * 16);
  // Flat outputs of the rows, P per row: straight into out when P == OUT, else through a buffer.
  float* dst = P == OUT ? out + (long long)n0 * OUT : scratch(tbuf, size_t(nacc) * 2);
  const long total = long(nn) * P;
  long fo = 0;  // f0 % P, kept without a division per vector
  for (long f0 = 0; f0 < total; f0 += 16) {
    const __m512 v = _mm512_add_ps(_mm512_loadu_ps(bias_rep + fo), lane_sums16(accv + f0 * 8));
    _mm512_mask_storeu_ps(dst + f0, __mmask16(total - f0 >= 16 ? 0xffff : (1u << (total - f0)) - 1), v);
    fo += 16 % P;
    if (fo >= P) fo -= P;
  }
  if (P != OUT)
    for (int n = 0; n < nn; n++) std::memcpy(out + (long long)(n0 + n) * OUT, dst + size_t(n) * P, sizeof(float) * OUT);
}

[[gnu::target("avx512f,avx2,fma")]] static void narrow_forward(float* out, const float* inp, const float* weight,
                                                               const float* bias, int N, int IN, int OUT) {
  const int JP = (OUT + 1) / 2, P = 2 * JP, KQ = (IN + 7) / 8;
  static thread_local std::vector<float> wbuf;
  float* wp = scratch(wbuf, size_t(KQ) * JP * 16 + P + 16);
  for (int q = 0; q < KQ; q++)  // pair j of step q: W[2j][8q..8q+8) | W[2j+1][8q..8q+8), zero-padded
    for (int j = 0; j < JP; j++) {
      float* dst = wp + (q * JP + j) * 16;
      const float* w0 = weight + (long long)2 * j * IN + 8 * q;
      if (8 * q + 8 <= IN && 2 * j + 1 < OUT) {
        const __m256d lo = _mm256_loadu_pd(reinterpret_cast<const double*>(w0)),
                      hi = _mm256_loadu_pd(reinterpret_cast<const double*>(w0 + IN));
        _mm512_store_pd(reinterpret_cast<double*>(dst), _mm512_insertf64x4(_mm512_castpd256_pd512(lo), hi, 1));
      } else {
        for (int l = 0; l < 16; l++) {
          const int o = 2 * j + l / 8, k = 8 * q + l % 8;
          dst[l] = o < OUT && k < IN ? weight[(long long)o * IN + k] : 0.f;
        }
      }
    }
  float* bias_rep = wp + size_t(KQ) * JP * 16;
  for (int i = 0, o = 0; i < P + 16; i++, o = o + 1 < P ? o + 1 : 0) bias_rep[i] = bias && o < OUT ? bias[o] : 0.f;
  const int items = (N + kRowBlock - 1) / kRowBlock;
  for_items(items, 1LL * N * IN * OUT >= kNarrowParallelWork, [&](int item) {
    const int n0 = item * kRowBlock, nn = std::min(kRowBlock, N - n0);
    with_size<8>(JP, [&](auto jp) { narrow_fwd_rows<decltype(jp)::value>(out, inp, wp, bias_rep, n0, nn, IN, OUT); });
  });
}

// Backward-input tile: kNarrowRowsBwd rows (d: their rows of dout; dst: where they go, null for a
// repeated row) x the 8 vectors of 128 columns of W, masked by m in a row's last block only (the
// masks take registers).
template <bool Masked>
[[gnu::target("avx512f,avx2,fma"), gnu::always_inline]] inline void narrow_bwd_input_tile(float* const* dst,
                                                                                          const float* const* d,
                                                                                          const float* weight, long ldw,
                                                                                          int OUT, const __mmask16* m) {
  constexpr int RB = kNarrowRowsBwd;
  __m512 acc[RB][8];
#pragma GCC unroll 8
  for (int r = 0; r < RB; r++)
#pragma GCC unroll 8
    for (int v = 0; v < 8; v++) acc[r][v] = _mm512_setzero_ps();
  for (int k = 0; k < OUT; k++, weight += ldw) {
    __m512 a[RB];
#pragma GCC unroll 8
    for (int r = 0; r < RB; r++) a[r] = _mm512_set1_ps(d[r][k]);
#pragma GCC unroll 8
    for (int v = 0; v < 8; v++) {
      __m512 wv = Masked ? _mm512_maskz_loadu_ps(m[v], weight + 16 * v) : _mm512_load_ps(weight + 16 * v);
      asm("" : "+v"(wv));  // one load into a register, not one folded into each row's FMA
#pragma GCC unroll 8
      for (int r = 0; r < RB; r++) acc[r][v] = _mm512_fmadd_ps(a[r], wv, acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RB; r++)
    if (dst[r])
#pragma GCC unroll 8
      for (int v = 0; v < 8; v++) _mm512_mask_storeu_ps(dst[r] + 16 * v, Masked ? m[v] : 0xffff, acc[r][v]);
}

// Backward-input rows [n0, n0 + nn): tiles of kNarrowRowsBwd rows x 128 columns. weight: W's rows
// ldw apart, 64-byte aligned (a 64-byte load across two lines costs two).
[[gnu::target("avx512f,avx2,fma")]] static void narrow_bwd_input_rows(float* dinp, const float* dout,
                                                                      const float* weight, long ldw, int n0, int nn,
                                                                      int IN, int OUT) {
  constexpr int RB = kNarrowRowsBwd;
  for (int r0 = n0; r0 < n0 + nn; r0 += RB) {
    const float* d[RB];
    for (int r = 0; r < RB; r++)  // rows past the end repeat the last one, computed and not stored
      d[r] = dout + (long long)std::min(r0 + r, n0 + nn - 1) * OUT;
    for (int c0 = 0; c0 < IN; c0 += 128) {
      float* dst[RB];
      for (int r = 0; r < RB; r++) dst[r] = r0 + r < n0 + nn ? dinp + (long long)(r0 + r) * IN + c0 : nullptr;
      if (c0 + 128 <= IN) {
        narrow_bwd_input_tile<false>(dst, d, weight + c0, ldw, OUT, nullptr);
      } else {
        __mmask16 m[8];
#pragma GCC unroll 8
        for (int v = 0; v < 8; v++) {
          const int left = IN - c0 - 16 * v;
          m[v] = __mmask16(left >= 16 ? 0xffff : left > 0 ? (1u << left) - 1 : 0);
        }
        narrow_bwd_input_tile<true>(dst, d, weight + c0, ldw, OUT, m);
      }
    }
  }
}

// Backward-weight columns [c0, c0 + 32) of outputs [o0, o0 + OB): OB x 2 accumulators, the chain
// over all N rows.
template <int OB>
[[gnu::target("avx512f,avx2,fma")]] static void narrow_bwd_weight_tile(float* dweight, const float* dout,
                                                                       const float* inp, int o0, int c0, int N, int IN,
                                                                       int OUT) {
  const int left = IN - c0;
  const __mmask16 m0 = __mmask16(left >= 16 ? 0xffff : (1u << left) - 1),
                  m1 = __mmask16(left >= 32  ? 0xffff
                                 : left > 16 ? (1u << (left - 16)) - 1
                                             : 0);
  __m512 acc[OB][2];
#pragma GCC unroll 16
  for (int o = 0; o < OB; o++) acc[o][0] = acc[o][1] = _mm512_setzero_ps();
  const float* x = inp + c0;
  const float* d = dout + o0;
  for (int n = 0; n < N; n++, x += IN, d += OUT) {
    const __m512 x0 = _mm512_maskz_loadu_ps(m0, x), x1 = _mm512_maskz_loadu_ps(m1, x + 16);
#pragma GCC unroll 16
    for (int o = 0; o < OB; o++) {
      const __m512 dv = _mm512_set1_ps(d[o]);
      acc[o][0] = _mm512_fmadd_ps(dv, x0, acc[o][0]);
      acc[o][1] = _mm512_fmadd_ps(dv, x1, acc[o][1]);
    }
  }
#pragma GCC unroll 16
  for (int o = 0; o < OB; o++) {
    _mm512_mask_storeu_ps(dweight + (long long)(o0 + o) * IN + c0, m0, acc[o][0]);
    _mm512_mask_storeu_ps(dweight + (long long)(o0 + o) * IN + c0 + 16, m1, acc[o][1]);
  }
}
// db (o) = sum over n of dout (n, o), n ascending from +0 (as dense_backward_weight's loop below):
// one masked vector holds every o.
[[gnu::target("avx512f,avx2,fma")]] static void narrow_bias_grad(float* dbias, const float* dout, int N, int OUT) {
  const __mmask16 m = __mmask16((1u << OUT) - 1);
  __m512 acc = _mm512_setzero_ps();
  for (int n = 0; n < N; n++) acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(m, dout + (long long)n * OUT));
  _mm512_mask_storeu_ps(dbias, m, acc);
}

// ---- the same narrow kernels under AVX2 (8-float vectors, 16 registers) --------------------------
//
// The chains are the AVX-512 kernels' (and so the AVX2 GEMMs'), in smaller tiles: forward, one
// vector of 8 lanes per output, 2 rows x up to 6 outputs per tile, the lane sums of 8 outputs at
// a time; backward-input 2 rows x 48 columns; backward-weight up to 6 outputs x 16 columns.

// W (OUT, IN) copied to rows ldw >= IN apart, each 64-byte aligned (a vector load across two cache
// lines costs two) and zero after its IN floats; valid until the calling thread's next call.
static const float* aligned_weight(const float* weight, int IN, int OUT, long ldw) {
  static thread_local std::vector<float> wbuf;
  float* w = scratch(wbuf, size_t(OUT) * ldw);
  for (int k = 0; k < OUT; k++) {
    std::memcpy(w + k * ldw, weight + (long long)k * IN, sizeof(float) * IN);
    std::fill(w + k * ldw + IN, w + (k + 1) * ldw, 0.f);
  }
  return w;
}

// Outputs in groups of at most 6, as even as possible (10 -> 5 + 5): a function of OUT only.
static int narrow_group(int OUT) { return (OUT + (OUT + 5) / 6 - 1) / ((OUT + 5) / 6); }

// Forward tile: rows xr[0], xr[1] x outputs [0, JO) of w (rows ldw apart, 32-byte aligned,
// zero-padded to whole steps of 8): acc (2, JO) lane vectors into accv[(r * ldv + j) * 8].
template <int JO>
[[gnu::target("avx2,fma")]] static void narrow_fwd_tile2(const float* const* xr, const float* w, long ldw, int IN,
                                                         float* accv, long ldv) {
  __m256 acc[2][JO];
#pragma GCC unroll 8
  for (int j = 0; j < JO; j++) acc[0][j] = acc[1][j] = _mm256_setzero_ps();
  const int full = IN / 8;
  for (int q = 0; q < (IN + 7) / 8; q++) {
    __m256 x0, x1;
    if (q < full) {
      x0 = _mm256_loadu_ps(xr[0] + 8 * q), x1 = _mm256_loadu_ps(xr[1] + 8 * q);
    } else {  // the tail, zero-padded
      const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(IN - 8 * q), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      x0 = _mm256_maskload_ps(xr[0] + 8 * q, m), x1 = _mm256_maskload_ps(xr[1] + 8 * q, m);
    }
#pragma GCC unroll 8
    for (int j = 0; j < JO; j++) {
      __m256 wv = _mm256_load_ps(w + j * ldw + 8 * q);
      asm("" : "+x"(wv));  // one load into a register, not one folded into each row's FMA
      acc[0][j] = _mm256_fmadd_ps(x0, wv, acc[0][j]);
      acc[1][j] = _mm256_fmadd_ps(x1, wv, acc[1][j]);
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < JO; j++) {
    _mm256_store_ps(accv + j * 8, acc[0][j]);
    _mm256_store_ps(accv + (ldv + j) * 8, acc[1][j]);
  }
}
// Rows [n0, n0 + nn) of the forward: one lane vector per output at accv[(n * OUT + o) * 8], so that
// the flat outputs of the rows are consecutive; bias_rep[i] = bias of output i % OUT.
[[gnu::target("avx2,fma")]] static void narrow_fwd_rows_avx2(float* out, const float* inp, const float* w, long ldw,
                                                             const float* bias_rep, int n0, int nn, int IN, int OUT) {
  const int G = narrow_group(OUT);
  static thread_local std::vector<float> abuf;
  const long total = long(nn) * OUT, groups = (total + 7) / 8;
  float* accv = scratch(abuf, size_t(groups) * 64 + size_t(OUT) * 8);  // + a repeated last row's outputs
  for (int r0 = 0; r0 < nn; r0 += 2) {
    const float* xr[2] = {inp + (long long)(n0 + r0) * IN, inp + (long long)(n0 + std::min(r0 + 1, nn - 1)) * IN};
    for (int o0 = 0; o0 < OUT; o0 += G)
      with_size<6>(std::min(G, OUT - o0), [&](auto jo) {
        narrow_fwd_tile2<decltype(jo)::value>(xr, w + o0 * ldw, ldw, IN, accv + (size_t(r0) * OUT + o0) * 8, OUT);
      });
  }
  std::memset(accv + total * 8, 0, sizeof(float) * (groups * 8 - total) * 8);
  float* dst = out + (long long)n0 * OUT;
  const long step = 8 % OUT;
  long fo = 0;  // f0 % OUT, kept without a division per vector
  for (long f0 = 0; f0 < total; f0 += 8) {
    const __m256 v = _mm256_add_ps(_mm256_loadu_ps(bias_rep + fo), lane_sums8(accv + f0 * 8));
    if (total - f0 >= 8) {
      _mm256_storeu_ps(dst + f0, v);
    } else {
      alignas(32) float t[8];
      _mm256_store_ps(t, v);
      std::memcpy(dst + f0, t, sizeof(float) * (total - f0));
    }
    fo += step;
    if (fo >= OUT) fo -= OUT;
  }
}

static void narrow_forward_avx2(float* out, const float* inp, const float* weight, const float* bias, int N, int IN,
                                int OUT) {
  static thread_local std::vector<float> brep;
  float* bias_rep = scratch(brep, size_t(OUT) + 8);
  for (int i = 0, o = 0; i < OUT + 8; i++, o = o + 1 < OUT ? o + 1 : 0) bias_rep[i] = bias ? bias[o] : 0.f;
  const long ldw = (IN + 15) / 16 * 16;
  const float* w = aligned_weight(weight, IN, OUT, ldw);
  for_items(ceil_div(N, kRowBlock), 1LL * N * IN * OUT >= kNarrowParallelWork, [&](int item) {
    narrow_fwd_rows_avx2(out, inp, w, ldw, bias_rep, item * kRowBlock, std::min(kRowBlock, N - item * kRowBlock), IN,
                         OUT);
  });
}

// Backward-input tile: 2 rows (d: their rows of dout; dst: where, null for a repeated row) x
// columns [c0, c0 + 8 NV) of W (rows ldw apart, padded with zeros to a multiple of 8 columns).
template <int NV>
[[gnu::target("avx2,fma")]] static void narrow_bwd_input_tile2(float* const* dst, const float* const* d, const float* w,
                                                               long ldw, int OUT, int ncols) {
  __m256 acc[2][NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; v++) acc[0][v] = acc[1][v] = _mm256_setzero_ps();
  for (int k = 0; k < OUT; k++, w += ldw) {
    const __m256 a0 = _mm256_broadcast_ss(d[0] + k), a1 = _mm256_broadcast_ss(d[1] + k);
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) {
      __m256 wv = _mm256_load_ps(w + 8 * v);
      asm("" : "+x"(wv));  // one load into a register, not one folded into each row's FMA
      acc[0][v] = _mm256_fmadd_ps(a0, wv, acc[0][v]);
      acc[1][v] = _mm256_fmadd_ps(a1, wv, acc[1][v]);
    }
  }
#pragma GCC unroll 2
  for (int r = 0; r < 2; r++) {
    if (!dst[r]) continue;
    if (ncols == 8 * NV) {
#pragma GCC unroll 8
      for (int v = 0; v < NV; v++) _mm256_storeu_ps(dst[r] + 8 * v, acc[r][v]);
    } else {
      alignas(32) float t[8 * NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; v++) _mm256_store_ps(t + 8 * v, acc[r][v]);
      std::memcpy(dst[r], t, sizeof(float) * ncols);
    }
  }
}
// Backward-weight tile: outputs [o0, o0 + OB) x columns [c0, c0 + 16) (ncols of them real; inp's
// rows read through a zero-padded copy where fewer), the chain over all N rows.
template <int OB>
[[gnu::target("avx2,fma")]] static void narrow_bwd_weight_tile2(float* dweight, const float* dout, const float* inp,
                                                                int o0, int c0, int ncols, int N, int IN, int OUT) {
  __m256 acc[OB][2];
#pragma GCC unroll 8
  for (int o = 0; o < OB; o++) acc[o][0] = acc[o][1] = _mm256_setzero_ps();
  const float* x = inp + c0;
  const float* d = dout + o0;
  for (int n = 0; n < N; n++, x += IN, d += OUT) {
    __m256 x0, x1;
    if (ncols == 16) {
      x0 = _mm256_loadu_ps(x), x1 = _mm256_loadu_ps(x + 8);
    } else {
      alignas(32) float t[16] = {};
      std::memcpy(t, x, sizeof(float) * ncols);
      x0 = _mm256_load_ps(t), x1 = _mm256_load_ps(t + 8);
    }
#pragma GCC unroll 8
    for (int o = 0; o < OB; o++) {
      const __m256 dv = _mm256_broadcast_ss(d + o);
      acc[o][0] = _mm256_fmadd_ps(dv, x0, acc[o][0]);
      acc[o][1] = _mm256_fmadd_ps(dv, x1, acc[o][1]);
    }
  }
#pragma GCC unroll 8
  for (int o = 0; o < OB; o++) {
    float* row = dweight + (long long)(o0 + o) * IN + c0;
    if (ncols == 16) {
      _mm256_storeu_ps(row, acc[o][0]), _mm256_storeu_ps(row + 8, acc[o][1]);
    } else {
      alignas(32) float t[16];
      _mm256_store_ps(t, acc[o][0]), _mm256_store_ps(t + 8, acc[o][1]);
      std::memcpy(row, t, sizeof(float) * ncols);
    }
  }
}
void dense_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int IN, int OUT) {
  // out (N, OUT); inp (N, IN); weight (OUT, IN); bias (OUT) or null
  BARECNN_ASSERT(N >= 0 && IN >= 1 && OUT >= 1, "cpu::dense_forward: N=", N, " IN=", IN, " OUT=", OUT);
  const Narrow narrow = narrow_kernels(OUT);
  if (narrow == Narrow::Avx512) return narrow_forward(out, inp, weight, bias, N, IN, OUT);
  if (narrow == Narrow::Avx2) return narrow_forward_avx2(out, inp, weight, bias, N, IN, OUT);
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
  const Narrow narrow = narrow_kernels(OUT);
  if (narrow != Narrow::None) {
    const long ldw = (IN + 15) / 16 * 16;
    const float* w = aligned_weight(weight, IN, OUT, ldw);
    return for_items(ceil_div(N, kRowBlock), 1LL * N * IN * OUT >= kNarrowParallelWork, [&](int item) {
      const int n0 = item * kRowBlock, nn = std::min(kRowBlock, N - n0);
      if (narrow == Narrow::Avx512) return narrow_bwd_input_rows(dinp, dout, w, ldw, n0, nn, IN, OUT);
      for (int r0 = n0; r0 < n0 + nn; r0 += 2) {  // AVX2: 2 rows x 48 columns
        const bool two = r0 + 1 < n0 + nn;
        const float* d[2] = {dout + (long long)r0 * OUT, dout + (long long)(two ? r0 + 1 : r0) * OUT};
        for (int c0 = 0; c0 < IN; c0 += 48) {
          float* dst[2] = {dinp + (long long)r0 * IN + c0, two ? dinp + (long long)(r0 + 1) * IN + c0 : nullptr};
          const int ncols = std::min(48, IN - c0);
          with_size<6>((ncols + 7) / 8,
                       [&](auto nv) { narrow_bwd_input_tile2<decltype(nv)::value>(dst, d, w + c0, ldw, OUT, ncols); });
        }
      }
    });
  }
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
  const Narrow narrow = narrow_kernels(OUT);
  if (narrow == Narrow::Avx512) {
    // Blocks of 32 columns, all OUT rows (in two tiles above 12), each the whole batch's chain.
    const int ob = OUT <= 12 ? OUT : (OUT + 1) / 2;
    for_items(ceil_div(IN, 32), 1LL * N * IN * OUT >= kNarrowParallelWork, [&](int item) {
      for (int o0 = 0; o0 < OUT; o0 += ob)
        with_size<12>(std::min(ob, OUT - o0), [&](auto n) {
          narrow_bwd_weight_tile<decltype(n)::value>(dweight, dout, inp, o0, item * 32, N, IN, OUT);
        });
    });
    if (dbias) narrow_bias_grad(dbias, dout, N, OUT);
    return;
  }
  if (narrow == Narrow::Avx2) {  // blocks of 16 columns, outputs in groups of at most 6
    const int G = narrow_group(OUT);
    for_items(ceil_div(IN, 16), 1LL * N * IN * OUT >= kNarrowParallelWork, [&](int item) {
      for (int o0 = 0; o0 < OUT; o0 += G)
        with_size<6>(std::min(G, OUT - o0), [&](auto n) {
          narrow_bwd_weight_tile2<decltype(n)::value>(dweight, dout, inp, o0, item * 16, std::min(16, IN - item * 16),
                                                      N, IN, OUT);
        });
    });
  } else {
    // Blocks of the output dW; each one reduces over the whole batch (K = N), so no reduction is
    // split across threads.
    const int rb = ceil_div(OUT, kRowBlock), cb = ceil_div(IN, kColBlockBwd);
    for_items(rb * cb, 1LL * N * IN * OUT >= kMinParallelWork, [&](int item) {
      int o0 = item / cb * kRowBlock, i0 = item % cb * kColBlockBwd;
      int no = std::min(kRowBlock, OUT - o0), ni = std::min(kColBlockBwd, IN - i0);
      // A (o, n) = dout[n, o0 + o]: rows 1 apart, columns OUT apart.
      sgemm_nn(no, ni, N, dout + o0, 1, OUT, inp + i0, IN, dweight + (long long)o0 * IN + i0, IN, nullptr, false);
    });
  }
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
void gemm_nn_rows(int M, int N, int K, const float* A, long rsa, long csa, const float* const* brows, float* C,
                  long ldc, const float* row_init, bool accumulate) {
  sgemm_nn(M, N, K, A, rsa, csa, nullptr, 0, C, ldc, row_init, accumulate, brows);
}
void gemm_nt_blocked(int M, int N, int K, const float* A, long lda, const float* B, int kblock, float* C, long ldc,
                     bool accumulate, int* rows) {
  struct Ctx {
    const float* B;
    int N, kblock;
    int* rows;  // the rows handed out so far (the next one asked for must be this one), or -1
  } ctx{B, N, kblock, rows};
  auto fill = [](void* c, int j0, int nr, const float** out) {
    const Ctx& x = *static_cast<Ctx*>(c);
    if (*x.rows >= 0) *x.rows = j0 == *x.rows && nr > 0 && j0 + nr <= x.N ? j0 + nr : -1;
    for (int r = 0; r < nr; r++) out[r] = x.B + long(j0 + r) * x.kblock;
  };
  *rows = 0;
  sgemm_nt_rows(M, N, K, A, lda, fill, &ctx, kblock, long(N) * kblock, C, ldc, accumulate);
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
