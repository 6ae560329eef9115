// The single-threaded float GEMMs behind barecnn::cpu (internal to barecnn_cpu; not a public
// header). Two kernels, because the ops need two shapes of product:
//
//   sgemm_nn: C (M, N) = A (M, K) B (K, N)   B row-major; A with any row/column stride.
//             Goto/BLIS style: A and B are copied ("packed") into MR-row and NR-column panels so
//             the register-tiled micro-kernel reads both contiguously (B given by rows, the convs'
//             windows of padded planes, is read in place for a short A), MR x NR outputs in
//             registers, one FMA per (i, j, k). Used where the reduction runs down B's columns:
//             conv forward (W x im2col), conv backward-input (W x the gather matrix of dout, or
//             W^T x dout before col2im), dense backward-input (dout x W) and dense
//             backward-weight (dout^T x inp).
//   sgemm_nt: C (M, N) = A (M, K) B (N, K)^T   both row-major along K ("dot-product" form).
//             The reduction runs along the contiguous rows of both operands, so nothing is
//             packed: each output keeps an 8-lane vector of partial sums, added up once at the
//             end of the call. Used for conv backward-weight (dout x im2col^T) and dense forward
//             (inp x W^T), whose operands come that way round and would otherwise need a transpose.
//
// Determinism: every C element is one fixed chain of operations that depends only on (M, N, K)
// and the block constants below, never on which tile or thread computes it, nor on where the
// caller cut C into pieces. Callers partition C (or whole reductions combined in a fixed order)
// across OpenMP threads, so results are bitwise the same for any thread count.
//
// ISA: the kernels are written once with GCC vector extensions, templated on the vector type, and
// compiled for AVX2+FMA (8-float vectors; always_inline templates inlined into target("avx2,fma")
// entry points), for baseline x86-64 (4-float SSE2 vectors, smaller tiles, mul+add), and for
// AVX-512 (16-float vectors in 32 registers: sgemm_nn on 32-column tiles, sgemm_nt with two rows of
// A per vector, each half holding the 8 lanes of one AVX2 accumulator). The choice is made once at
// run time from the CPU's feature bits, so the binary runs on any x86-64 (no -march=native).
// Generic rounds differently (no FMA); AVX-512 and AVX2 give the same bits: each C element of
// sgemm_nn is the same FMA chain (ascending k; the tile's size changes which elements are
// computed together, not how), and each of sgemm_nt's is the same 8 lane chains summed in the same
// tree. So results are bitwise reproducible per machine with or without AVX-512.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include <unistd.h>

#include "barecnn/cpu_ops.h"
#include "barecnn/error.h"

// The 32-byte vector helpers below are always inlined, so the ABI note GCC gives for passing
// them by value in the baseline build never applies. (Not popped: GCC reports it at the end of
// the including file; this header is included only by host/cpu/*.cpp.)
#pragma GCC diagnostic ignored "-Wpsabi"

namespace barecnn::cpu::detail {

// One AVX register (8 floats) for the AVX2 build, one SSE register (4 floats) for the baseline
// build and the helper loops outside the GEMMs: GCC's vector extensions keep an 8-float vector in
// registers only where AVX is enabled, and spill it to the stack everywhere else.
typedef float v16f __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
template <typename V>
constexpr int kLanes = int(sizeof(V) / sizeof(float));

template <typename V>
[[gnu::always_inline]] inline V loadv(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);  // an unaligned vector load
  return v;
}
template <typename V>
[[gnu::always_inline]] inline void storev(float* p, const V& v) {
  std::memcpy(p, &v, sizeof v);
}
// Sum of the lanes in a fixed tree: (l0+l4 + l2+l6) + (l1+l5 + l3+l7) for 8 lanes,
// (l0+l2) + (l1+l3) for 4.
template <typename V>
[[gnu::always_inline]] inline float hsumv(const V& v) {
  if constexpr (kLanes<V> == 8) {
    float a0 = v[0] + v[4], a1 = v[1] + v[5], a2 = v[2] + v[6], a3 = v[3] + v[7];
    return (a0 + a2) + (a1 + a3);
  } else {
    return (v[0] + v[2]) + (v[1] + v[3]);
  }
}
// hsumv of 16 consecutive 8-lane groups at once (AVX-512; also the narrow dense layers' forward,
// dense.cpp): lane j of the result = the sum of the 8 floats at a8 + 8j, in hsumv's tree
// ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)): each add takes the same two partial sums in the
// same order, so the same bits, in 3 rounds of two-source shuffles and adds and one permutation
// for 16 sums.
[[gnu::always_inline]] inline v16f lane_sums16(const float* a8) {
  v16f c[4], e[2];
#pragma GCC unroll 4
  for (int m = 0; m < 4; m++) {  // a_i = l_i + l_{i+4}: c[m]'s 128-bit lane L holds group 4m + L's four
    const v16f A = loadv<v16f>(a8 + 32 * m), B = loadv<v16f>(a8 + 32 * m + 16);
    c[m] = __builtin_shufflevector(A, B, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           __builtin_shufflevector(A, B, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  }
#pragma GCC unroll 2
  for (int h = 0; h < 2; h++)  // b0 = a0 + a2, b1 = a1 + a3: lane L of e[h] holds (b0, b1) of c[2h], c[2h+1]
    e[h] = __builtin_shufflevector(c[2 * h], c[2 * h + 1], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) +
           __builtin_shufflevector(c[2 * h], c[2 * h + 1], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
  // b0 + b1: element 4L + m is group 4m + L; the permutation puts it at 4m + L.
  const v16f g = __builtin_shufflevector(e[0], e[1], 0, 2, 16, 18, 4, 6, 20, 22, 8, 10, 24, 26, 12, 14, 28, 30) +
                 __builtin_shufflevector(e[0], e[1], 1, 3, 17, 19, 5, 7, 21, 23, 9, 11, 25, 27, 13, 15, 29, 31);
  return __builtin_shufflevector(g, g, 0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
}
// The same for 8 groups at once (AVX2; also the narrow dense layers' forward): 3 rounds of
// two-source shuffles (within 128-bit lanes after the first) and adds, one permutation.
[[gnu::always_inline]] inline v8f lane_sums8(const float* a8) {
  v8f c[4], e[2];
#pragma GCC unroll 4
  for (int m = 0; m < 4; m++) {  // a_i = l_i + l_{i+4}: c[m] holds group 2m's four, then group 2m + 1's
    const v8f A = loadv<v8f>(a8 + 16 * m), B = loadv<v8f>(a8 + 16 * m + 8);
    c[m] = __builtin_shufflevector(A, B, 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(A, B, 4, 5, 6, 7, 12, 13, 14, 15);
  }
#pragma GCC unroll 2
  for (int h = 0; h < 2; h++)  // b0 = a0 + a2, b1 = a1 + a3: e[h] = (b0, b1) of groups 4h, 4h+2 | 4h+1, 4h+3
    e[h] = __builtin_shufflevector(c[2 * h], c[2 * h + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
           __builtin_shufflevector(c[2 * h], c[2 * h + 1], 2, 3, 10, 11, 6, 7, 14, 15);
  // b0 + b1: groups 0, 2, 4, 6 | 1, 3, 5, 7; the permutation puts them in order.
  const v8f g = __builtin_shufflevector(e[0], e[1], 0, 2, 8, 10, 4, 6, 12, 14) +
                __builtin_shufflevector(e[0], e[1], 1, 3, 9, 11, 5, 7, 13, 15);
  return __builtin_shufflevector(g, g, 0, 4, 1, 5, 2, 6, 3, 7);
}
// Broadcasts are written in place in the kernels (`if constexpr` on the lane count), not in a
// helper: GCC lowers the vector code of a helper function for the baseline ISA before inlining it
// into an AVX2 function (a broadcast helper became 16 inserts per use there).

// f(std::integral_constant<int, n>()) for a run-time n in [1, Max]: kernels whose tile sizes are
// template parameters, so that their accumulators are registers, called with a size known at run
// time (the narrow dense layers' tiles, the one-channel weight gradient's passes).
template <int Max, class F>
inline void with_size(int n, F f) {
  if constexpr (Max > 0) {
    if (n == Max) return f(std::integral_constant<int, Max>());
    with_size<Max - 1>(n, f);
  }
}

// Scratch that lives as long as its thread (OpenMP keeps its pool), grown on demand, so steady
// state training allocates nothing. Returns a 64-byte aligned pointer to n floats (the 16 extra
// floats pay for the alignment).
inline float* scratch(std::vector<float>& buf, size_t n) {
  if (buf.size() < n + 16) buf.resize(n + 16);
  uintptr_t p = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<float*>((p + 63) & ~uintptr_t(63));
}

// ---- sgemm_nn: packed, register-tiled ------------------------------------------------------------

// Columns per micro-tile (NR): 16 with SSE and AVX2 (two 8-float vectors), 32 with AVX-512 (two
// 16-float vectors, so that each broadcast of A feeds two FMAs).
constexpr int kKC = 256;   // K block: an NR-wide B panel (KC x NR = 16 or 32 KiB) stays in L1
constexpr int kMC = 96;    // M block: the packed A block (MC x KC = 96 KiB) stays in L2
constexpr int kNC = 1024;  // N block: the packed B block (KC x NC = 1 MiB) stays in L2/L3

// Packs rows [0, mc) x cols [0, kc) of A (A(i,k) = A[i*rsa + k*csa]) into ceil(mc/MR) panels,
// panel p holding A(p*MR + ii, k) at [k*MR + ii]; rows past mc are zero.
template <int MR>
[[gnu::always_inline]] inline void pack_a(float* dst, const float* A, long rsa, long csa, int mc, int kc) {
  for (int i0 = 0; i0 < mc; i0 += MR, dst += MR * kc) {
    int mr = std::min(MR, mc - i0);
    const float* a = A + i0 * rsa;
    if (rsa == 1 && mr == MR) {  // column-major A: MR contiguous floats per k
      for (int k = 0; k < kc; k++)
        for (int ii = 0; ii < MR; ii++) dst[k * MR + ii] = a[k * csa + ii];
    } else {
      for (int ii = 0; ii < MR; ii++) {
        const float* row = a + ii * rsa;
        if (ii < mr)
          for (int k = 0; k < kc; k++) dst[k * MR + ii] = row[k * csa];
        else
          for (int k = 0; k < kc; k++) dst[k * MR + ii] = 0.f;
      }
    }
  }
}

// Packs rows [0, kc) x cols [0, nc) of row-major B into ceil(nc/NR) panels of [k*NR + jj];
// columns past nc are zero.
// Row k of B is B + k*ldb, or brows[k] where brows is non-null (a B whose rows lie anywhere: the
// windows of padded image rows, conv2d.cpp); col0 is added to either.
template <int NR>
[[gnu::always_inline]] inline void pack_b(float* dst, const float* B, long ldb, const float* const* brows, long col0,
                                          int kc, int nc) {
  for (int j0 = 0; j0 < nc; j0 += NR, dst += NR * kc) {
    int nr = std::min(NR, nc - j0);
    if (nr == NR) {
      for (int k = 0; k < kc; k++)
        std::memcpy(dst + k * NR, (brows ? brows[k] : B + k * ldb) + col0 + j0, NR * sizeof(float));
    } else {
      for (int k = 0; k < kc; k++) {
        const float* row = (brows ? brows[k] : B + k * ldb) + col0 + j0;
        int jj = 0;
        for (; jj < nr; jj++) dst[k * NR + jj] = row[jj];
        for (; jj < NR; jj++) dst[k * NR + jj] = 0.f;
      }
    }
  }
}

// The micro-kernel: C (MR, NR) = start + sum_k a[k] (MR) x b[k] (NR), one FMA chain per element
// in ascending k, starting from C (load_c), else from row_init[i] (row_init non-null), else 0.
// MR * NR/lanes accumulators + NR/lanes B vectors + 1 broadcast must fit the vector registers:
// MR <= 6 with AVX (16 registers, 2 vectors per row), MR = 2 with SSE (16, 4 per row), MR <= 16
// with AVX-512 (32 registers, 1 vector per row).
// Direct: B's rows read in place, row k at brows[k] + col (b unused), not from a packed panel.
template <int MR, int NR, typename V, bool Direct = false>
[[gnu::always_inline]] inline void micro_nn(int kc, const float* a, const float* b, const float* const* brows, long col,
                                            float* C, long ldc, bool load_c, const float* row_init) {
  constexpr int L = kLanes<V>, NV = NR / L;
  V acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; i++) {
    const float s = row_init ? row_init[i] : 0.f;
    V start;
    if constexpr (L == 16)
      start = V{s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s};
    else if constexpr (L == 8)
      start = V{s, s, s, s, s, s, s, s};
    else
      start = V{s, s, s, s};
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) acc[i][v] = load_c ? loadv<V>(C + i * ldc + v * L) : start;
  }
  for (int k = 0; k < kc; k++, a += MR, b += NR) {
    const float* bk = Direct ? brows[k] + col : b;
    V bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) bv[v] = loadv<V>(bk + v * L);
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
      const float s = a[i];
      V ai;
      if constexpr (L == 16)
        ai = V{s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s};
      else if constexpr (L == 8)
        ai = V{s, s, s, s, s, s, s, s};
      else
        ai = V{s, s, s, s};
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) acc[i][v] += ai * bv[v];
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) storev<V>(C + i * ldc + v * L, acc[i][v]);
}

// B's rows given by pointer are read in place (not packed) where A has at most this many rows: a
// panel read in place costs its unaligned loads again for each row tile, a packed one its copy
// once. Measured on a Zen 5 (2 threads): `deep`'s 28 x 28 conv(32) forward and gather
// backward-input 9-10% faster in place (AVX2: 7-15%), its 14 x 14 convs over 64 rows 1.5-2.5%
// slower (AVX2: the same). The same bits either way.
constexpr int kInPlaceRows = 32;

template <int MR, int NR, typename V>
[[gnu::always_inline]] inline void sgemm_nn_impl(int M, int N, int K, const float* A, long rsa, long csa,
                                                 const float* B, long ldb, float* C, long ldc, const float* row_init,
                                                 bool accumulate, const float* const* brows) {
  static thread_local std::vector<float> abuf, bbuf;
  constexpr int MC = kMC / MR * MR;
  float* apack = scratch(abuf, size_t(MC) * kKC);   // (MC/MR panels, KC, MR)
  float* bpack = scratch(bbuf, size_t(kNC) * kKC);  // (NC/NR panels, KC, NR)
  // K in equal blocks of at most KC (288 -> 144 + 144, not 256 + 32: every block pays a pass
  // over C, worth it only for a long block).
  const int nblocks = (K + kKC - 1) / kKC, kc_step = (K + nblocks - 1) / nblocks;
  for (int jc = 0; jc < N; jc += kNC) {
    int nc = std::min(kNC, N - jc);
    for (int pc = 0; pc < K; pc += kc_step) {
      int kc = std::min(kc_step, K - pc);
      bool load_c = accumulate || pc > 0;  // later K blocks continue the chain held in C
      // B by rows (the windows of padded planes) for at most kInPlaceRows rows of A: full panels
      // are read in place, only a last partial one is packed (at bpack; zeros past nc). Else
      // every panel is packed.
      const bool in_place_ok = brows && M <= kInPlaceRows;
      const int nfull = in_place_ok ? nc / NR * NR : 0;
      if (in_place_ok) {
        if (nfull < nc) pack_b<NR>(bpack, nullptr, 0, brows + pc, jc + nfull, kc, nc - nfull);
      } else if (brows) {
        pack_b<NR>(bpack, nullptr, 0, brows + pc, jc, kc, nc);
      } else {
        pack_b<NR>(bpack, B + pc * ldb, ldb, nullptr, jc, kc, nc);
      }
      for (int ic = 0; ic < M; ic += MC) {
        int mc = std::min(MC, M - ic);
        pack_a<MR>(apack, A + ic * rsa + pc * csa, rsa, csa, mc, kc);
        for (int jr = 0; jr < nc; jr += NR) {
          int nr = std::min(NR, nc - jr);
          const bool in_place = jr < nfull;  // (then row k of this K block at brows[pc + k] + jc + jr)
          const float* bp = in_place_ok ? bpack : bpack + jr * kc;
          // The micro-tile into cc (rows ldcc apart), the same chain of operations either way.
          auto tile = [&](const float* ap, float* cc, long ldcc, bool ld, const float* in) {
            if (in_place)
              micro_nn<MR, NR, V, true>(kc, ap, nullptr, brows + pc, jc + jr, cc, ldcc, ld, in);
            else
              micro_nn<MR, NR, V>(kc, ap, bp, nullptr, 0, cc, ldcc, ld, in);
          };
          for (int ir = 0; ir < mc; ir += MR) {
            int mr = std::min(MR, mc - ir);
            const float* ap = apack + ir * kc;
            float* c = C + (ic + ir) * ldc + jc + jr;
            const float* init = (!load_c && row_init) ? row_init + ic + ir : nullptr;
            if (mr == MR && nr == NR) {
              tile(ap, c, ldc, load_c, init);
            } else {
              // Edge tile: run the same kernel on a full tile in a local buffer (the zero rows and
              // columns of the packed panels touch only the lanes that are dropped).
              alignas(64) float t[MR * NR];
              for (int i = 0; i < MR; i++)
                for (int j = 0; j < NR; j++)
                  t[i * NR + j] = i >= mr || j >= nr ? 0.f : load_c ? c[i * ldc + j] : init ? init[i] : 0.f;
              tile(ap, t, NR, true, nullptr);
              for (int i = 0; i < mr; i++)
                for (int j = 0; j < nr; j++) c[i * ldc + j] = t[i * NR + j];
            }
          }
        }
      }
    }
  }
}

// AVX2: MR = 4 or 6 rows per micro-tile, whichever pads M less (ties to 6, the kernel with more
// accumulators): 32 and 64 channels take 4, 6 and 120 take 6. A function of M only.
[[gnu::always_inline]] inline void sgemm_nn_pick(int M, int N, int K, const float* A, long rsa, long csa,
                                                 const float* B, long ldb, float* C, long ldc, const float* row_init,
                                                 bool accumulate, const float* const* brows) {
  int pad4 = (M + 3) / 4 * 4, pad6 = (M + 5) / 6 * 6;
  if (pad6 <= pad4)
    sgemm_nn_impl<6, 16, v8f>(M, N, K, A, rsa, csa, B, ldb, C, ldc, row_init, accumulate, brows);
  else
    sgemm_nn_impl<4, 16, v8f>(M, N, K, A, rsa, csa, B, ldb, C, ldc, row_init, accumulate, brows);
}

// AVX-512: 32-column tiles (two 16-float vectors per row, so each broadcast of A feeds two FMAs),
// MR = 8, 12 or 6 rows (16, 24 or 12 of the 32 registers hold accumulators): whichever pads M
// least, ties to the earlier in that list (8 measured fastest; a short row tile takes the slow
// edge path on every tile). 32, 64, 120 and 288 rows take 8; 84 takes 12; 6 and 1-4 take 6.
// (A 4-row tile was also tried: lenet5's dense(84) backward ran 0.26 ms with it, 0.023 ms
// without, in `bench`; the cause was not found.) A function of M only; neither the rows nor the
// columns of a tile change any element's chain.
[[gnu::always_inline]] inline void sgemm_nn_pick512(int M, int N, int K, const float* A, long rsa, long csa,
                                                    const float* B, long ldb, float* C, long ldc, const float* row_init,
                                                    bool accumulate, const float* const* brows) {
  const int pad8 = (M + 7) / 8 * 8, pad12 = (M + 11) / 12 * 12, pad6 = (M + 5) / 6 * 6;
  const int best = std::min(pad8, std::min(pad12, pad6));
  if (pad8 == best)
    sgemm_nn_impl<8, 32, v16f>(M, N, K, A, rsa, csa, B, ldb, C, ldc, row_init, accumulate, brows);
  else if (pad12 == best)
    sgemm_nn_impl<12, 32, v16f>(M, N, K, A, rsa, csa, B, ldb, C, ldc, row_init, accumulate, brows);
  else
    sgemm_nn_impl<6, 32, v16f>(M, N, K, A, rsa, csa, B, ldb, C, ldc, row_init, accumulate, brows);
}

// ---- sgemm_nt: dot-product form ------------------------------------------------------------------

// Register tile: MRT rows of A x NRT rows of B: 12 vector accumulators + 3 A vectors + 1 B vector
// = 16 registers. The NRT rows of B sit in L1 while the i loop streams A's rows from L2. (2 x 6,
// with less L2 traffic per FMA, measured slower here: dense 6272->128 forward 2.3-2.7 ms against
// 1.5-1.9 ms on one core.)
constexpr int kMRT = 3, kNRT = 4;
// K block: the M x KC block of A stays in L2 (half of it, 128-512 KiB, at least 512 columns); K
// is cut into equal blocks (multiples of 8), not 512 + a short tail. Longer blocks mean fewer
// passes over the lane sums and fewer refills of B's rows: with 512 KiB (a 1 MiB L2) against the
// 128 KiB before, `paper`'s dense(128) forward (64 x 128 x 6272, 2 threads) ran 10-15% faster on
// a Zen 5 (4 blocks of 1568 columns, not 13 of 488). The block never changes a bit (the lanes
// carry across blocks), so it may follow the machine: half the L2 (sysconf), read once; 128 KiB,
// the old block, where the size is unknown; so CPUs with a 512 KiB L2 keep a block that fits.
inline long nt_l2_block_floats() {
  static const long floats = [] {
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    const long bytes = l2 > 0 ? l2 / 2 : 128 * 1024;
    return std::clamp(bytes, 128 * 1024L, 512 * 1024L) / long(sizeof(float));
  }();
  return floats;
}

// The reduction of a tile: n blocks of kc columns; block b's columns start b*a floats after A's
// rows and b*b floats after B's (one block: a plain reduction of kc columns).
struct NtBlocks {
  int n, kc;
  long a, b;
};

// accv (MR, NR, L) [rows ldv apart] (+)= lane partial sums of A (MR, .) B (NR, .)^T over the blocks
// of kb, L = lanes of V, B's row j at B[j]: in each block, lane l of element (i, j) accumulates the
// products with column k = L*q + l, in ascending q, and a tail of kc % L is one more zero-padded
// step; the blocks in order (with kc a multiple of L, the chains of one reduction over them all).
// `first`: start from 0, else continue the sums held in accv. Keeping lanes (not one float) across
// K blocks means the costly lane sum happens once per element per call, not once per K block.
template <int MR, int NR, typename V>
[[gnu::always_inline]] inline void micro_nt(const NtBlocks& kb, const float* A, long lda, const float* const* B,
                                            float* accv, long ldv, bool first) {
  constexpr int L = kLanes<V>;
  const int kc = kb.kc;
  V acc[MR][NR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
    for (int j = 0; j < NR; j++) acc[i][j] = first ? V{} : loadv<V>(accv + i * ldv + j * L);
  for (int blk = 0; blk < kb.n; blk++) {
    const float* Ab = A + blk * kb.a;
    const float* Bb[NR];
#pragma GCC unroll 8
    for (int j = 0; j < NR; j++) Bb[j] = B[j] + blk * kb.b;
    int k = 0;
    for (; k + L <= kc; k += L) {
      V a[MR];
#pragma GCC unroll 8
      for (int i = 0; i < MR; i++) a[i] = loadv<V>(Ab + i * lda + k);
#pragma GCC unroll 8
      for (int j = 0; j < NR; j++) {
        V b = loadv<V>(Bb[j] + k);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) acc[i][j] += a[i] * b;
      }
    }
    if (k < kc) {
      alignas(32) float at[MR][L] = {}, bt[NR][L] = {};
      for (int i = 0; i < MR; i++)
        for (int kk = k; kk < kc; kk++) at[i][kk - k] = Ab[i * lda + kk];
      for (int j = 0; j < NR; j++)
        for (int kk = k; kk < kc; kk++) bt[j][kk - k] = Bb[j][kk];
      for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] += loadv<V>(at[i]) * loadv<V>(bt[j]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
    for (int j = 0; j < NR; j++) storev<V>(accv + i * ldv + j * L, acc[i][j]);
}

// Edge tiles: the kernel instantiated for every mr <= kMRT, nr <= kNRT.
template <int MR, int NR, typename V>
[[gnu::always_inline]] inline void micro_nt_cols(int nr, const NtBlocks& kb, const float* A, long lda,
                                                 const float* const* B, float* accv, long ldv, bool first) {
  if constexpr (NR > 0) {
    if (nr == NR) return micro_nt<MR, NR, V>(kb, A, lda, B, accv, ldv, first);
    micro_nt_cols<MR, NR - 1, V>(nr, kb, A, lda, B, accv, ldv, first);
  }
}
template <int MR, typename V>
[[gnu::always_inline]] inline void micro_nt_tile(int mr, int nr, const NtBlocks& kb, const float* A, long lda,
                                                 const float* const* B, float* accv, long ldv, bool first) {
  if constexpr (MR > 0) {
    if (mr == MR) return micro_nt_cols<MR, kNRT, V>(nr, kb, A, lda, B, accv, ldv, first);
    micro_nt_tile<MR - 1, V>(mr, nr, kb, A, lda, B, accv, ldv, first);
  }
}

// The AVX-512 form of micro_nt<., ., v8f>: the same 8-lane partial sums, bit for bit, with two
// rows of A in each 16-float vector: lanes 0-7 hold the sums of (i, j), lanes 8-15 those of
// (i + 1, j). A tile is MP such row pairs x NR rows of B, so one 8-float load of B, broadcast to
// both halves, feeds MP FMAs of 16 lanes. mr <= 2 MP rows are real; a pair's missing second row
// repeats its first (computed, not stored).
[[gnu::always_inline]] inline v16f cat8(const v8f& lo, const v8f& hi) {
  return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}
template <int MP, int NR>
[[gnu::always_inline]] inline void micro_nt512(int mr, const NtBlocks& kb, const float* A, long lda,
                                               const float* const* B, float* accv, long ldv, bool first) {
  constexpr int L = 8;
  const int kc = kb.kc;
  const float* ar[2 * MP];
#pragma GCC unroll 16
  for (int r = 0; r < 2 * MP; r++) ar[r] = A + (r < mr ? r : r - 1) * lda;
  v16f acc[MP][NR];
#pragma GCC unroll 8
  for (int p = 0; p < MP; p++) {
    const int r1 = 2 * p + 1 < mr ? 2 * p + 1 : 2 * p;
#pragma GCC unroll 16
    for (int j = 0; j < NR; j++)
      acc[p][j] = first ? v16f{} : cat8(loadv<v8f>(accv + 2 * p * ldv + j * L), loadv<v8f>(accv + r1 * ldv + j * L));
  }
  for (int blk = 0; blk < kb.n; blk++) {
    const float *ab[2 * MP], *bb[NR];
#pragma GCC unroll 16
    for (int r = 0; r < 2 * MP; r++) ab[r] = ar[r] + blk * kb.a;
#pragma GCC unroll 16
    for (int j = 0; j < NR; j++) bb[j] = B[j] + blk * kb.b;
    int k = 0;
    for (; k + L <= kc; k += L) {
      v16f a[MP];
#pragma GCC unroll 8
      for (int p = 0; p < MP; p++) a[p] = cat8(loadv<v8f>(ab[2 * p] + k), loadv<v8f>(ab[2 * p + 1] + k));
#pragma GCC unroll 16
      for (int j = 0; j < NR; j++) {
        const v8f b8 = loadv<v8f>(bb[j] + k);
        const v16f b = cat8(b8, b8);
#pragma GCC unroll 8
        for (int p = 0; p < MP; p++) acc[p][j] += a[p] * b;
      }
    }
    if (k < kc) {  // the tail, zero-padded to 8 lanes as in micro_nt
      alignas(64) float at[2 * MP][L] = {}, bt[NR][L] = {};
      for (int r = 0; r < 2 * MP; r++)
        for (int kk = k; kk < kc; kk++) at[r][kk - k] = ab[r][kk];
      for (int j = 0; j < NR; j++)
        for (int kk = k; kk < kc; kk++) bt[j][kk - k] = bb[j][kk];
      for (int p = 0; p < MP; p++)
        for (int j = 0; j < NR; j++) {
          const v8f b8 = loadv<v8f>(bt[j]);
          acc[p][j] += cat8(loadv<v8f>(at[2 * p]), loadv<v8f>(at[2 * p + 1])) * cat8(b8, b8);
        }
    }
  }
#pragma GCC unroll 8
  for (int p = 0; p < MP; p++)
#pragma GCC unroll 16
    for (int j = 0; j < NR; j++) {
      const v16f v = acc[p][j];
      storev<v8f>(accv + 2 * p * ldv + j * L, __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7));
      if (2 * p + 1 < mr)
        storev<v8f>(accv + (2 * p + 1) * ldv + j * L, __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
    }
}
template <int MP, int NR>
[[gnu::always_inline]] inline void micro_nt512_cols(int mr, int nr, const NtBlocks& kb, const float* A, long lda,
                                                    const float* const* B, float* accv, long ldv, bool first) {
  if constexpr (NR > 0) {
    if (nr == NR) return micro_nt512<MP, NR>(mr, kb, A, lda, B, accv, ldv, first);
    micro_nt512_cols<MP, NR - 1>(mr, nr, kb, A, lda, B, accv, ldv, first);
  }
}
template <int MP, int NR>
[[gnu::always_inline]] inline void micro_nt512_tile(int mr, int nr, const NtBlocks& kb, const float* A, long lda,
                                                    const float* const* B, float* accv, long ldv, bool first) {
  if constexpr (MP > 0) {
    if ((mr + 1) / 2 == MP) return micro_nt512_cols<MP, NR>(mr, nr, kb, A, lda, B, accv, ldv, first);
    micro_nt512_tile<MP - 1, NR>(mr, nr, kb, A, lda, B, accv, ldv, first);
  }
}
// AVX-512 tile: kMP512 row pairs x kNR512 rows of B = 24 accumulators + 3 A vectors + 1 B vector
// (2 x 12 and 4 x 6 measured the same on a Zen 5).
constexpr int kMP512 = 3, kNR512 = 8;

// Paired512: the tiles of micro_nt512 (V = v8f: the lanes, and so the bits, of the AVX2 build).
// B's rows by pointer from the caller on request (sgemm_nt_rows' fill): fill(ctx, j0, nr, rows)
// sets rows[r] to B's row j0 + r (where its first block starts), valid until the next call. Asked
// for once per group of rows, in ascending j0, just before the tiles read them, so a caller may
// build them then (conv backward-weight's im2col rows, read back from L1/L2), or point into data
// it has (the windows of padded planes).
using NtRowsFn = void (*)(void* ctx, int j0, int nr, const float** rows);
// The K blocks: equal, multiples of 8, each at most max(512, what keeps A's block in L2). A
// function of (M, K) and the L2's size; the bits are a function of (M, K) only.
inline int nt_block_step(int M, int K) {
  const int kc_max = int(std::max(512L, nt_l2_block_floats() / M / 8 * 8));
  const int nblocks = (K + kc_max - 1) / kc_max;
  return ((K + nblocks - 1) / nblocks + 7) / 8 * 8;
}

template <typename V, bool Paired512 = false>
[[gnu::always_inline]] inline void sgemm_nt_impl(int M, int N, int K, const float* A, long lda, const float* B,
                                                 long ldb, NtRowsFn fill, void* ctx, int kblock, long bblock, float* C,
                                                 long ldc, bool accumulate) {
  constexpr int L = kLanes<V>;
  constexpr int NRB = Paired512 ? kNR512 : kNRT;  // B rows per tile
  static thread_local std::vector<float> buf;
  float* accv = scratch(buf, size_t(M) * N * L);  // (M, N, L) lane partial sums
  const long ldv = long(N) * L;
  // B by rows (conv backward-weight): one pass over the whole reduction, each tile running through
  // the caller's blocks (one block of a whole call measured 7-17% faster than blocks of <= 1024
  // columns, each a pass of the tile loops over A and accv, on a Zen 5 with AVX-512). Plain B:
  // blocks that keep A's in L2, multiples of 8 columns, so they change no bit (the lanes carry
  // across).
  const int kc_step = fill ? K : nt_block_step(M, K);
  for (int pc = 0; pc < K; pc += kc_step) {
    const int kc = std::min(kc_step, K - pc);
    const NtBlocks kb = fill ? NtBlocks{K / kblock, kblock, kblock, bblock} : NtBlocks{1, kc, 0, 0};
    // j outer, i inner: the NRB rows of B are reused from L1 across all of A's rows.
    for (int j0 = 0; j0 < N; j0 += NRB) {
      const int nr = std::min(NRB, N - j0);
      const float* Bj[NRB];
      if (fill)
        fill(ctx, j0, nr, Bj);
      else
        for (int r = 0; r < nr; r++) Bj[r] = B + (j0 + r) * ldb + pc;
      if constexpr (Paired512) {
        for (int i0 = 0; i0 < M; i0 += 2 * kMP512)
          micro_nt512_tile<kMP512, kNR512>(std::min(2 * kMP512, M - i0), nr, kb, A + i0 * lda + pc, lda, Bj,
                                           accv + i0 * ldv + j0 * L, ldv, pc == 0);
      } else {
        for (int i0 = 0; i0 < M; i0 += kMRT)
          micro_nt_tile<kMRT, V>(std::min(kMRT, M - i0), nr, kb, A + i0 * lda + pc, lda, Bj, accv + i0 * ldv + j0 * L,
                                 ldv, pc == 0);
      }
    }
  }
  for (int i = 0; i < M; i++) {
    int j = 0;
    if constexpr (Paired512)
      for (; j + 16 <= N; j += 16) {
        const v16f t = lane_sums16(accv + i * ldv + j * L);
        float* c = C + i * ldc + j;
        storev<v16f>(c, accumulate ? loadv<v16f>(c) + t : t);
      }
    else if constexpr (L == 8)
      for (; j + 8 <= N; j += 8) {
        const v8f t = lane_sums8(accv + i * ldv + j * L);
        float* c = C + i * ldc + j;
        storev<v8f>(c, accumulate ? loadv<v8f>(c) + t : t);
      }
    for (; j < N; j++) {
      float t = hsumv(loadv<V>(accv + i * ldv + j * L));
      C[i * ldc + j] = accumulate ? C[i * ldc + j] + t : t;
    }
  }
}

// ---- the two builds and the run-time choice ------------------------------------------------------

[[gnu::target("avx2,fma")]] inline void sgemm_nn_avx2(int M, int N, int K, const float* A, long rsa, long csa,
                                                      const float* B, long ldb, float* C, long ldc,
                                                      const float* row_init, bool accumulate,
                                                      const float* const* brows) {
  sgemm_nn_pick(M, N, K, A, rsa, csa, B, ldb, C, ldc, row_init, accumulate, brows);
}
[[gnu::target("avx512f,avx2,fma")]] inline void sgemm_nn_avx512(int M, int N, int K, const float* A, long rsa, long csa,
                                                                const float* B, long ldb, float* C, long ldc,
                                                                const float* row_init, bool accumulate,
                                                                const float* const* brows) {
  sgemm_nn_pick512(M, N, K, A, rsa, csa, B, ldb, C, ldc, row_init, accumulate, brows);
}
// Baseline x86-64: 4-float SSE vectors, 2 x 16 tiles (8 accumulators + 4 B vectors + 1 broadcast).
inline void sgemm_nn_generic(int M, int N, int K, const float* A, long rsa, long csa, const float* B, long ldb,
                             float* C, long ldc, const float* row_init, bool accumulate, const float* const* brows) {
  sgemm_nn_impl<2, 16, v4f>(M, N, K, A, rsa, csa, B, ldb, C, ldc, row_init, accumulate, brows);
}
[[gnu::target("avx2,fma")]] inline void sgemm_nt_avx2(int M, int N, int K, const float* A, long lda, const float* B,
                                                      long ldb, NtRowsFn fill, void* ctx, int kblock, long bblock,
                                                      float* C, long ldc, bool accumulate) {
  sgemm_nt_impl<v8f>(M, N, K, A, lda, B, ldb, fill, ctx, kblock, bblock, C, ldc, accumulate);
}
[[gnu::target("avx512f,avx2,fma")]] inline void sgemm_nt_avx512(int M, int N, int K, const float* A, long lda,
                                                                const float* B, long ldb, NtRowsFn fill, void* ctx,
                                                                int kblock, long bblock, float* C, long ldc,
                                                                bool accumulate) {
  sgemm_nt_impl<v8f, true>(M, N, K, A, lda, B, ldb, fill, ctx, kblock, bblock, C, ldc, accumulate);
}
inline void sgemm_nt_generic(int M, int N, int K, const float* A, long lda, const float* B, long ldb, NtRowsFn fill,
                             void* ctx, int kblock, long bblock, float* C, long ldc, bool accumulate) {
  sgemm_nt_impl<v4f>(M, N, K, A, lda, B, ldb, fill, ctx, kblock, bblock, C, ldc, accumulate);
}

inline bool cpu_has_avx2_fma() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
inline bool cpu_has_avx512f() {
  __builtin_cpu_init();
  return cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f");
}

// The ISA in use, as an int (CpuIsa); chosen on first use (the widest the CPU has), changed by
// set_cpu_isa.
inline std::atomic<int>& isa_state() {
  static std::atomic<int> isa{int(cpu_has_avx512f()    ? CpuIsa::Avx512
                                  : cpu_has_avx2_fma() ? CpuIsa::Avx2
                                                       : CpuIsa::Generic)};
  return isa;
}

// C (M, N) = start + A (M, K) B (K, N), the chain of each element starting from C when
// `accumulate`, else from row_init[i] (M values, e.g. a bias per output channel) when non-null,
// else from 0. A(i, k) = A[i*rsa + k*csa]; B, C row-major with leading dimensions ldb, ldc.
// brows (optional): B's rows by pointer, B(k, j) = brows[k][j] (B and ldb unused), read in place
// for M <= kInPlaceRows but for a last partial column panel (the rows are windows of padded image
// rows, already in L1/L2: packing them cost ~11% of `deep`'s 28 x 28 conv forward); the same chain
// of operations per element either way.
inline void sgemm_nn(int M, int N, int K, const float* A, long rsa, long csa, const float* B, long ldb, float* C,
                     long ldc, const float* row_init, bool accumulate, const float* const* brows = nullptr) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int i = 0; i < M; i++) std::fill(C + i * ldc, C + i * ldc + N, row_init ? row_init[i] : 0.f);
    return;
  }
  const int isa = isa_state().load(std::memory_order_relaxed);
  if (isa == int(CpuIsa::Avx512))
    sgemm_nn_avx512(M, N, K, A, rsa, csa, B, ldb, C, ldc, row_init, accumulate, brows);
  else if (isa == int(CpuIsa::Avx2))
    sgemm_nn_avx2(M, N, K, A, rsa, csa, B, ldb, C, ldc, row_init, accumulate, brows);
  else
    sgemm_nn_generic(M, N, K, A, rsa, csa, B, ldb, C, ldc, row_init, accumulate, brows);
}

// The dispatch of sgemm_nt and sgemm_nt_rows.
inline void sgemm_nt_any(int M, int N, int K, const float* A, long lda, const float* B, long ldb, NtRowsFn fill,
                         void* ctx, int kblock, long bblock, float* C, long ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int i = 0; i < M; i++) std::fill(C + i * ldc, C + i * ldc + N, 0.f);
    return;
  }
  const int isa = isa_state().load(std::memory_order_relaxed);
  if (isa == int(CpuIsa::Avx512))
    sgemm_nt_avx512(M, N, K, A, lda, B, ldb, fill, ctx, kblock, bblock, C, ldc, accumulate);
  else if (isa == int(CpuIsa::Avx2))
    sgemm_nt_avx2(M, N, K, A, lda, B, ldb, fill, ctx, kblock, bblock, C, ldc, accumulate);
  else
    sgemm_nt_generic(M, N, K, A, lda, B, ldb, fill, ctx, kblock, bblock, C, ldc, accumulate);
}

// C (M, N) (+)= A (M, K) B (N, K)^T, all row-major (leading dimensions lda, ldb, ldc).
inline void sgemm_nt(int M, int N, int K, const float* A, long lda, const float* B, long ldb, float* C, long ldc,
                     bool accumulate) {
  sgemm_nt_any(M, N, K, A, lda, B, ldb, nullptr, nullptr, 0, 0, C, ldc, accumulate);
}

// The same with B's rows by pointer from fill (NtRowsFn), its columns in blocks of kblock (K a
// multiple of kblock): B(j, b*kblock + q) = row_j[b*bblock + q], row_j as fill gives it (A's
// columns run on as usual). With kblock a multiple of 8, the same operations as sgemm_nt on B laid
// out plainly.
inline void sgemm_nt_rows(int M, int N, int K, const float* A, long lda, NtRowsFn fill, void* ctx, int kblock,
                          long bblock, float* C, long ldc, bool accumulate) {
  sgemm_nt_any(M, N, K, A, lda, nullptr, 0, fill, ctx, kblock, bblock, C, ldc, accumulate);
}

// Sum of x[0..n) as 4 interleaved partial sums (x[4q + lane]) in a fixed tree, then the tail:
// vectorizes without reassociating anything, and the order depends on n only.
inline float sum_lanes(const float* x, long n) {
  v4f acc{};
  long i = 0;
  for (; i + 4 <= n; i += 4) acc += loadv<v4f>(x + i);
  float t = hsumv(acc);
  for (; i < n; i++) t += x[i];
  return t;
}

// sum_lanes of the four rows x + r*ld (r = 0..3) at once, each into out[r] with sum_lanes' bits:
// four independent chains of vector adds overlap where one chain waits on each add before it.
inline void sum_lanes_4rows(const float* x, long ld, long n, float* out) {
  v4f acc[4] = {};
  long i = 0;
  for (; i + 4 <= n; i += 4)
    for (int r = 0; r < 4; r++) acc[r] += loadv<v4f>(x + r * ld + i);
  for (int r = 0; r < 4; r++) {
    float t = hsumv(acc[r]);
    for (long j = i; j < n; j++) t += x[r * ld + j];
    out[r] = t;
  }
}

// Below this many multiply-adds an op runs on one thread: waking the OpenMP team costs more than
// it saves.
constexpr long long kMinParallelWork = 1LL << 17;

}  // namespace barecnn::cpu::detail
