// Fast float CPU convolution: the three sums of host/reference/conv2d.cpp written as GEMMs over
// im2col matrices, on the SGEMM of sgemm.h, split across OpenMP threads.
//
// Per image n (P = OH*OW output pixels, Q = H*W input pixels, CKK = C*kh*kw, KKK = K*kh*kw):
//
//   forward          out_n (K, P)   = W (K, CKK) col_n (CKK, P)   [+ bias]             sgemm_nn
//                    col_n[(c,i,j), (oh,ow)] = inp[n, c, oh*sh - ph + i, ow*sw - pw + j]
//   backward_input   two forms of dinp[n,c,h,w] = sum over (k,i,j) of dout * W (see below):
//     gather         dinp_n (C, Q)  = Wt (C, KKK) dcol_n (KKK, Q)                       sgemm_nn
//                    Wt[c, (k,i,j)] = W[k, c, i, j];  dcol_n[(k,i,j), (h,w)] = dout[n, k, oh, ow]
//                    for the output pixel whose window reads (h, w) through tap (i, j) (stride 1:
//                    oh = h + ph - i, ow = w + pw - j), 0 where there is none. The reference's
//                    form: one sum per input pixel, nothing scattered.
//     scatter        dcol (CKK, P)  = W^T (CKK, K) dout_n (K, P), then col2im adds each column
//                    back to the input pixels it was read from.                         sgemm_nn
//   backward_weight  dW (K, CKK)    = sum_n dout_n (K, P) col_n (CKK, P)^T               sgemm_nt
//                    db (K)         = sum_n sum_p dout_n[k, p]
//
// Stride 1 (every preset), forward and gather backward-input: col_n and dcol_n are never copied
// out; the GEMM reads each row straight from zero-padded image rows (the "wide rows" below), and
// under AVX2 and AVX-512 runs turned round, the channels in the vector lanes (the "row tiles"
// below).
// Backward-weight with stride 1, K a multiple of 32 and a 3x3 or 5x5 kernel (`deep`'s convs):
// the channels in the vector lanes, one FMA per pixel and tap, the input read in place (the lanes
// form below, AVX2 and AVX-512); other stride-1 shapes over rows wide enough: dout_n laid out
// wide (the wide form below). Other strides, and the other backward-weights: im2col copies (with
// stride 1, a few rows at a time as the GEMM reads them: ColRows). One input channel (the first
// convs): under AVX-512 the forward's short sums in registers, no GEMM (direct loops below; for a
// 3x3 kernel padded 1 across, `deep`'s, the taps held in registers over every channel and an
// aligned output streamed past the caches; for a 5x5 kernel padded 2 across with the ReLU and a
// 2x2 max pooling fused, `paper`'s, the four pixels of each pooling window as four phases of
// polyphase planes); and
// under AVX2 and AVX-512, with 3x3 or 5x5 kernels and K a multiple of 16, backward-weight with the
// channels in the vector lanes, no im2col, no expanded gradient behind a fused pool, only each
// pool window's winner's terms (backward_weight_c1, its own order of the sums). With the ReLU and
// a max pooling after the conv fused (Net's plan), the forward pools each block of rows while it
// is in cache (conv2d_forward_relu_maxpool) and the backward ops
// rebuild the conv's gradient from the pooled one (OutGrad).
//
// Threads: forward and gather backward-input split the output into (image, row or pixel block) items;
// scatter backward-input into (image, channel block) items. Backward-weight reduces over the
// batch, so the batch is cut into at most kMaxGroups groups of images (a function of N only);
// each group's partial dW is summed by one thread, and the partials are added in group order.
// No result depends on the number of threads.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "barecnn/cpu_ops.h"
#include "barecnn/error.h"
#include "barecnn/shape.h"
#include "sgemm.h"

namespace barecnn::cpu {

using namespace detail;

static void check_conv2d_shape(const Conv2dShape& s, const char* op) {
  BARECNN_ASSERT(
      s.N >= 0 && s.C >= 1 && s.K >= 1 && s.kh >= 1 && s.kw >= 1 && s.sh >= 1 && s.sw >= 1 && s.ph >= 0 && s.pw >= 0,
      op, ": bad shape ", s.str());
  BARECNN_ASSERT(s.OH == window_out_size(s.H, s.kh, s.sh, s.ph) && s.OW == window_out_size(s.W, s.kw, s.sw, s.pw), op,
                 ": output size does not follow eq. (2.1) for ", s.str());
}

static long long conv2d_macs(const Conv2dShape& s) { return s.out_numel() * s.C * s.kh * s.kw; }
static int ceil_div(int a, int b) { return (a + b - 1) / b; }
// A 1x1 kernel with stride 1 and no padding: col_n is the input itself (and dcol_n is dout_n).
static bool is_pointwise(const Conv2dShape& s) {
  return s.kh == 1 && s.kw == 1 && s.sh == 1 && s.sw == 1 && s.ph == 0 && s.pw == 0;
}

// Pixels per work item, for a matrix of `rows` rows over `pixels` columns per image: small
// enough that the block (rows x pixels floats) stays in L2, and at least 8 items in all when the
// batch is small, so two or more threads have work. Depends on the shape only.
static int pixel_block(int pixels, long long rows, int N) {
  constexpr long long kL2Floats = 64 * 1024;  // 256 KiB
  long long pb = pixels;
  if (pb * rows > kL2Floats) pb = std::max(64LL, kL2Floats / rows / 16 * 16);
  int want = N > 0 ? ceil_div(8, N) : 1;
  if (want > 1) pb = std::min(pb, std::max(64LL, (long long)ceil_div(ceil_div(pixels, want), 16) * 16));
  return int(std::min<long long>(pb, pixels));
}

// dst[0..n) = src[0..n) for the short runs of im2col (a row of an image): inline vector copies,
// cheaper than a call to memcpy at these sizes.
static inline void copy_run(float* dst, const float* src, int n) {
  int i = 0;
  for (; i + 4 <= n; i += 4) storev<v4f>(dst + i, loadv<v4f>(src + i));
  for (; i < n; i++) dst[i] = src[i];
}

// dst (Hp, Wp) = src (H, W) shifted down by `top` rows and right by `left` columns, zero
// elsewhere: dst[r][q] = src[r - top][q - left]. (top/left may be negative: rows are dropped.)
// One memset for the whole plane, then inline copies of the rows: a memset and a memcpy call per
// short row (3 library calls for each of the ~1000 rows of an image's planes) cost more. Without
// the memset where `zeroed`: dst already holds a plane of this geometry (zeros outside the rows).
static void pad_plane(float* dst, const float* src, int H, int W, int top, int left, int Hp, int Wp,
                      bool zeroed = false) {
  if (!zeroed) std::memset(dst, 0, sizeof(float) * Hp * Wp);
  const int q_lo = std::max(0, left), q_hi = std::min(Wp, W + left);  // dst columns that come from src
  if (q_lo >= q_hi) return;
  for (int r = std::max(0, top); r < std::min(Hp, H + top); r++)
    copy_run(dst + (long long)r * Wp + q_lo, src + (long long)(r - top) * W + (q_lo - left), q_hi - q_lo);
}

// dst (p1 - p0) = the stride-1 windows at offset (di, dj) of a padded plane (., Wp): element p
// (= y*width + x) is plane[y + di][x + dj]. One copy per row of `width` positions.
static void copy_windows(float* dst, const float* plane, int Wp, int width, int p0, int p1, int di, int dj) {
  int y = p0 / width, x = p0 % width;
  for (int p = p0; p < p1; y++, x = 0) {
    int len = std::min(width - x, p1 - p);
    copy_run(dst + (p - p0), plane + (long long)(y + di) * Wp + x + dj, len);
    p += len;
  }
}

// The lanes [0, n) of a 16-lane mask (none for n <= 0, all for n >= 16): a vector's valid part.
static inline __mmask16 tail_mask(int n) {
  return n <= 0 ? __mmask16(0) : n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
}

// r (16 vectors: a 16 x 16 block, row i in r[i]) = its transpose, in registers.
[[gnu::target("avx512f"), gnu::always_inline]] static inline void transpose16_regs(__m512 (&r)[16]) {
  __m512 t[16];
  // Two-source permutes throughout (GCC 12 warns about the undefined pass-through of
  // unpack / shuffle): 4 x 4 blocks inside each 128-bit lane, then the 4 x 4 grid of the blocks.
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29);
  const __m512i hi = _mm512_setr_epi32(2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31);
  const __m512i pairs01 = _mm512_setr_epi32(0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
  const __m512i pairs23 = _mm512_setr_epi32(2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
  const __m512i blocks01 = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
  const __m512i blocks23 = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  const __m512i even = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
  const __m512i odd = _mm512_setr_epi32(4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  for (int g = 0; g < 4; g++) {  // t[4g + j] lane L: column 4L + j of the rows 4g .. 4g + 3
    const __m512 t0 = _mm512_permutex2var_ps(r[4 * g], lo, r[4 * g + 1]);
    const __m512 t1 = _mm512_permutex2var_ps(r[4 * g], hi, r[4 * g + 1]);
    const __m512 t2 = _mm512_permutex2var_ps(r[4 * g + 2], lo, r[4 * g + 3]);
    const __m512 t3 = _mm512_permutex2var_ps(r[4 * g + 2], hi, r[4 * g + 3]);
    t[4 * g] = _mm512_permutex2var_ps(t0, pairs01, t2), t[4 * g + 1] = _mm512_permutex2var_ps(t0, pairs23, t2);
    t[4 * g + 2] = _mm512_permutex2var_ps(t1, pairs01, t3), t[4 * g + 3] = _mm512_permutex2var_ps(t1, pairs23, t3);
  }
  for (int j = 0; j < 4; j++) {  // row 4L + j = lane L of t[j], t[4 + j], t[8 + j], t[12 + j]
    const __m512 p0 = _mm512_permutex2var_ps(t[j], blocks01, t[4 + j]);
    const __m512 p1 = _mm512_permutex2var_ps(t[j], blocks23, t[4 + j]);
    const __m512 p2 = _mm512_permutex2var_ps(t[8 + j], blocks01, t[12 + j]);
    const __m512 p3 = _mm512_permutex2var_ps(t[8 + j], blocks23, t[12 + j]);
    r[j] = _mm512_permutex2var_ps(p0, even, p2), r[4 + j] = _mm512_permutex2var_ps(p0, odd, p2);
    r[8 + j] = _mm512_permutex2var_ps(p1, even, p3), r[12 + j] = _mm512_permutex2var_ps(p1, odd, p3);
  }
}

// The same, 8 x 8 with AVX2.
[[gnu::target("avx2"), gnu::always_inline]] static inline void transpose8_regs(__m256 (&r)[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20), r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20), r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31), r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31), r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// The same copies with 16-float AVX-512 vectors: a run of 28 floats is 2 vector copies, not 7. A
// run of 16 or more ends with its last 16 floats copied again (overlapping the vector before:
// measured 0.85 against 1.14 us for the 24 runs of 28-float rows of a backward-weight row group, on
// a Zen 5, in L1); a shorter one is a masked load and store (lanes past the run are neither read
// nor written). Used where the GEMMs run AVX-512 (cpu_isa()); the same values either way.
[[gnu::target("avx512f")]] static void copy_windows_avx512(float* dst, const float* plane, int Wp, int width, int p0,
                                                           int p1, int di, int dj) {
  int y = p0 / width, x = p0 % width;
  for (int p = p0; p < p1; y++, x = 0) {
    const int len = std::min(width - x, p1 - p);
    const float* src = plane + (long long)(y + di) * Wp + x + dj;
    float* d = dst + (p - p0);
    int i = 0;
    for (; i + 16 <= len; i += 16) _mm512_storeu_ps(d + i, _mm512_loadu_ps(src + i));
    if (i < len && len >= 16) {
      _mm512_storeu_ps(d + len - 16, _mm512_loadu_ps(src + len - 16));
    } else if (i < len) {
      const __mmask16 m = tail_mask(len - i);
      _mm512_mask_storeu_ps(d + i, m, _mm512_maskz_loadu_ps(m, src + i));
    }
    p += len;
  }
}

// copy_windows_avx512 over a whole image (p from 0 to OH*OW), for a run of 15 floats or fewer with
// one plain 16-float load and store (a masked one measured ~2x slower: 0.21 against 0.36-0.69 us
// for the 24 runs of 14-float rows of a backward-weight row group, in L1). Such a run reads and
// writes up to 15 floats past its end: the caller leaves 16 floats of slack after the plane and
// after dst, and writes dst in ascending order of addresses (what a run writes past its end is
// written over by the runs after it).
[[gnu::target("avx512f")]] static void image_windows_avx512(float* dst, const float* plane, int Wp, int OH, int OW,
                                                            int di, int dj) {
  if (OW >= 16) return copy_windows_avx512(dst, plane, Wp, OW, 0, OH * OW, di, dj);
  const float* src = plane + (long long)di * Wp + dj;
  for (int y = 0; y < OH; y++) _mm512_storeu_ps(dst + (long long)y * OW, _mm512_loadu_ps(src + (long long)y * Wp));
}

// pad_plane over `count` consecutive planes of src (count, H, W) into dst (count, Hp, Wp), shifted
// by (top, left), 0 <= left and Wp - W - left <= 16 (left <= 16 too), with 16-float AVX-512
// vectors and no memset: each dst row is a store of zeros at its start, the source row copied at
// `left` by plain loads and stores, and zeros stored at its end, the vectors running up to 15
// floats past the row. The rows are written in
// ascending order, so what a row writes past its end is written over by the rows after it (the
// caller leaves 16 floats of slack after dst); a load past a source row reads the rows after it,
// and where that would pass the end of src's count planes, a masked load reads the row alone
// (masked loads stream slowly when they miss the cache: see prefetch_pooled). Dst rows above or
// below the source (top may be negative: rows dropped) are zeros. The same values as pad_plane.
[[gnu::target("avx512f")]] static void pad_planes_avx512(float* dst, const float* src, long long count, int H, int W,
                                                         int top, int left, int Hp, int Wp) {
  const __m512 zero = _mm512_setzero_ps();
  const float* end = src + count * H * W;
  for (long long pi = 0; pi < count; pi++) {
    const float* sp = src + pi * H * W;
    float* dp = dst + pi * Hp * Wp;
    for (int r = 0; r < Hp; r++) {
      float* d = dp + (long long)r * Wp;
      const int sr = r - top;
      if (sr < 0 || sr >= H) {
        for (int q = 0; q < Wp; q += 16) _mm512_storeu_ps(d + q, zero);
        continue;
      }
      const float* s = sp + (long long)sr * W;
      _mm512_storeu_ps(d, zero);
      for (int x = 0; x < W; x += 16)
        _mm512_storeu_ps(d + left + x,
                         end - (s + x) >= 16 ? _mm512_loadu_ps(s + x) : _mm512_maskz_loadu_ps(tail_mask(W - x), s + x));
      _mm512_storeu_ps(d + left + W, zero);
    }
  }
}

// pad_plane over `count` consecutive planes: pad_planes_avx512 where the GEMMs run AVX-512 and the
// side margins allow it (dst then needs 16 floats of slack after its last plane), else
// pad_plane plane by plane. The same values either way.
static void pad_planes(float* dst, const float* src, long long count, int H, int W, int top, int left, int Hp, int Wp) {
  const int right = Wp - W - left;
  if (cpu_isa() == CpuIsa::Avx512 && left >= 0 && left <= 16 && right >= 0 && right <= 16)
    return pad_planes_avx512(dst, src, count, H, W, top, left, Hp, Wp);
  for (long long pi = 0; pi < count; pi++) pad_plane(dst + pi * Hp * Wp, src + pi * H * W, H, W, top, left, Hp, Wp);
}

// col (C*kh*kw, p1 - p0) [rows ldcol apart] = the im2col columns p0..p1-1 of one image inp (C, H, W):
// col[(c,i,j), p] = inp[c, oh*sh - ph + i, ow*sw - pw + j] (0 in the padding), p = oh*OW + ow.
// Stride 1 (all the presets): each channel is zero-padded once into `plane`, then every row of
// col is a run of memcpys from it. Other strides: element by element.
static void im2col(float* col, long ldcol, const float* inp, const Conv2dShape& s, int p0, int p1,
                   std::vector<float>& plane) {
  if (s.sh == 1 && s.sw == 1) {
    const int Hp = s.H + 2 * s.ph, Wp = s.W + 2 * s.pw;
    float* pl = scratch(plane, (size_t)Hp * Wp);  // (Hp, Wp)
    const bool avx512 = cpu_isa() == CpuIsa::Avx512;
    for (int c = 0; c < s.C; c++) {
      pad_plane(pl, inp + (long long)c * s.H * s.W, s.H, s.W, s.ph, s.pw, Hp, Wp);
      for (int i = 0; i < s.kh; i++)
        for (int j = 0; j < s.kw; j++)
          (avx512 ? copy_windows_avx512 : copy_windows)(col + ((long long)(c * s.kh + i) * s.kw + j) * ldcol, pl, Wp,
                                                        s.OW, p0, p1, i, j);
    }
    return;
  }
  for (int c = 0; c < s.C; c++) {
    for (int i = 0; i < s.kh; i++) {
      for (int j = 0; j < s.kw; j++) {
        float* dst = col + ((long long)(c * s.kh + i) * s.kw + j) * ldcol;  // (p1 - p0)
        for (int p = p0; p < p1; p++) {
          int ih = window_in_pos(p / s.OW, i, s.sh, s.ph), iw = window_in_pos(p % s.OW, j, s.sw, s.pw);
          dst[p - p0] = (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) ? 0.f : inp[((long long)c * s.H + ih) * s.W + iw];
        }
      }
    }
  }
}

// The (C*kh*kw, p1 - p0) column block of one image for output pixels [p0, p1): a 1x1 stride-1
// unpadded convolution reads the image itself (leading dimension P), any other one an im2col copy.
static const float* image_columns(const float* inp_n, const Conv2dShape& s, bool pointwise, int p0, int p1,
                                  std::vector<float>& colbuf, std::vector<float>& planebuf, long* ldcol) {
  const int P = s.OH * s.OW, np = p1 - p0;
  if (pointwise) {
    *ldcol = P;
    return inp_n + p0;
  }
  float* buf = scratch(colbuf, (size_t)s.C * s.kh * s.kw * np);
  im2col(buf, np, inp_n, s, p0, p1, planebuf);
  *ldcol = np;
  return buf;
}

// ---- the fused ReLU (Net's execution plan: a conv followed by a plain relu, --fuse) ----
// The very activation ops of the unfused chain (host/cpu/elementwise.cpp), run on one image's
// block while it is in cache (inside the OpenMP loops they stay on the calling thread: no nested
// parallelism). Forward: relu on the block just computed. Backward: dout as the ReLU backward
// hands it on, read from relu_out = relu(x) in place of x (relu(x) > 0 exactly where x > 0: x <= 0
// gives +0, NaN gives NaN). So the fused ops give the unfused chain's bits.
static constexpr Activation kRelu{Act::Relu, 0.f};

// The loops are those of cpu::activation_forward / activation_backward for Relu, written here
// rather than called: those open an OpenMP parallel region (serialized below their size
// threshold, but entered all the same), and a region entered from inside the conv's own, once per
// row of every block, cost more than the conv itself on a Zen 5 machine (the `deep` net's second
// conv: 19 ms forward fused against 7.6 ms unfused).
static_assert(kRelu.kind == Act::Relu, "the loops below are ReLU's");

// rows x cols block with rows `ld` apart: x = relu(x), in place.
static void relu_block(float* x, int rows, int cols, long ld) {
  for (int r = 0; r < rows; r++) {
    float* row = x + r * ld;
#pragma omp simd
    for (int i = 0; i < cols; i++) {
      const float v = row[i];
      row[i] = v <= 0.f ? 0.f : v;  // +0 where v <= 0 (not 0 * v), NaN stays: activation_forward's
    }
  }
}

// The gradient w.r.t. the conv's own output, one image (K, OH, OW) at a time, from what the
// backward ops are handed:
//   plain           dout itself;
//   + relu          dout as the ReLU backward hands it on: masked with relu_out = relu(conv);
//   + relu + pool   dout and relu_out are the pooled output's gradient and the pooled values
//                   (N, K, POH, POW), mask the pool's argmax: the max-pool backward's scatter of
//                   +0 + dout (its one-term sum) into a zeroed image, masked as the ReLU masks it,
//                   reading the pooled value, which is the winning relu(conv) itself. Pixels no
//                   window chose get +0 either way (+0 from the scatter, 0 * +0 from the mask).
struct OutGrad {
  const float* dout = nullptr;
  const float* relu_out = nullptr;
  const int32_t* mask = nullptr;  // with a fused max pooling
  const Pool2dShape* pool = nullptr;
  // Image n's gradient (K, P): dout's own image, or built in buf.
  const float* image(int n, const Conv2dShape& s, std::vector<float>& buf) const {
    const long long P = (long long)s.OH * s.OW, KP = s.K * P;
    if (!relu_out) return dout + n * KP;
    float* g = scratch(buf, size_t(KP));
    image_into(n, s, g, P);
    return g;
  }
  // The same written to dst, channel k's P values at dst + k*ld.
  void image_into(int n, const Conv2dShape& s, float* dst, long ld) const;
};

// The pooled tensors are read a row at a time with partly masked loads (a pooled row is 14 or 7
// floats). On this Zen 5 such loads, when they miss the cache, stream at about half the speed of
// plain ones (measured: a 6.4 MB copy in 14-float steps, 0.40 ms masked against 0.22 ms plain; the
// hardware prefetcher seems not to follow them); a software prefetch 256 bytes ahead of each of
// the three streams gives that back (0.25 ms).
static inline void prefetch_pooled(const float* dp, const float* y, const int32_t* m) {
  _mm_prefetch(reinterpret_cast<const char*>(dp + 64), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(y + 64), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(m + 64), _MM_HINT_T0);
}

// The ReLU's backward, y > 0 ? d : 0 * d (activation_backward's, slope 0), as a product with 1 or
// 0 (x * 1 is x, x * 0 is 0 * x, exactly): no branch on the data.
[[gnu::target("avx512f")]] static inline __m512 relu_grad16(__m512 d, __m512 y) {
  const __mmask16 pos = _mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_GT_OQ);  // NaN: not > 0
  return _mm512_mul_ps(d, _mm512_maskz_mov_ps(pos, _mm512_set1_ps(1.f)));
}
// The same of +0 + d (maxpool2d_backward's value).
[[gnu::target("avx512f")]] static inline __m512 pooled_grad16(__m512 d, __m512 y) {
  return relu_grad16(_mm512_add_ps(_mm512_setzero_ps(), d), y);
}

// The pool's 2x2 stride-2 windows expanded back over one channel's (OH, OW) plane g: each
// window's four pixels get the window's gradient at its argmax and +0 at the other three, sixteen
// windows at a time; the row and the column no window covers (odd OH, OW) get +0. Every pixel is
// written once: no zeroing pass, no scatter. The same values as the scatter below.
[[gnu::target("avx512f")]] static void expand_2x2_avx512(float* g, const float* dp, const float* y, const int32_t* m,
                                                         int OH, int OW, int POH, int POW) {
  const __m512i lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi_idx = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512i two_l = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (int oh = 0; oh < POH; oh++) {
    float* top = g + (long long)(2 * oh) * OW;
    float* bot = top + OW;
    for (int ow = 0; ow < POW; ow += 16) {
      const int n2 = 2 * (POW - ow);  // the values of a row the windows cover
      const __mmask16 mw = tail_mask(POW - ow), lo = tail_mask(n2), hi = tail_mask(n2 - 16);
      const long long o = (long long)oh * POW + ow;
      prefetch_pooled(dp + o, y + o, m + o);
      const __m512 v = pooled_grad16(_mm512_maskz_loadu_ps(mw, dp + o), _mm512_maskz_loadu_ps(mw, y + o));
      // where in its window the argmax lies: 0, 1 (top row), OW, OW + 1 (bottom row)
      const __m512i at = _mm512_sub_epi32(_mm512_maskz_loadu_epi32(mw, m + o),
                                          _mm512_add_epi32(_mm512_set1_epi32(2 * oh * OW + 2 * ow), two_l));
      const __m512 tl = _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(at, _mm512_setzero_si512()), v);
      const __m512 tr = _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(at, _mm512_set1_epi32(1)), v);
      const __m512 bl = _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(at, _mm512_set1_epi32(OW)), v);
      const __m512 br = _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(at, _mm512_set1_epi32(OW + 1)), v);
      _mm512_mask_storeu_ps(top + 2 * ow, lo, _mm512_permutex2var_ps(tl, lo_idx, tr));
      _mm512_mask_storeu_ps(top + 2 * ow + 16, hi, _mm512_permutex2var_ps(tl, hi_idx, tr));
      _mm512_mask_storeu_ps(bot + 2 * ow, lo, _mm512_permutex2var_ps(bl, lo_idx, br));
      _mm512_mask_storeu_ps(bot + 2 * ow + 16, hi, _mm512_permutex2var_ps(bl, hi_idx, br));
    }
    for (int x = 2 * POW; x < OW; x++) top[x] = bot[x] = 0.f;  // columns no window covers
  }
  for (int r = 2 * POH; r < OH; r++) std::memset(g + (long long)r * OW, 0, sizeof(float) * size_t(OW));
}

void OutGrad::image_into(int n, const Conv2dShape& s, float* dst, long ld) const {
  const long long P = (long long)s.OH * s.OW, KP = s.K * P;
  if (!relu_out) {
    for (int k = 0; k < s.K; k++) std::memcpy(dst + k * ld, dout + n * KP + k * P, sizeof(float) * size_t(P));
    return;
  }
  if (!pool) {
    for (int k = 0; k < s.K; k++) {
      const float *d_k = dout + n * KP + k * P, *y_k = relu_out + n * KP + k * P;
      float* g = dst + k * ld;
#pragma omp simd
      for (long long i = 0; i < P; i++) {
        const float d = d_k[i];
        g[i] = y_k[i] > 0.f ? d : 0.f * d;  // activation_backward's, slope 0 (-0 and NaN as it gives them)
      }
    }
    return;
  }
  const long long PP = (long long)pool->OH * pool->OW;
  const bool k2s2 = pool->kh == 2 && pool->kw == 2 && pool->sh == 2 && pool->sw == 2;
  for (int k = 0; k < s.K; k++) {
    const long long off = ((long long)n * s.K + k) * PP;
    const float *dp = dout + off, *y = relu_out + off;
    const int32_t* m = mask + off;
    float* gk = dst + k * ld;
    if (k2s2 && cpu_isa() == CpuIsa::Avx512) {
      expand_2x2_avx512(gk, dp, y, m, s.OH, s.OW, pool->OH, pool->OW);
      continue;
    }
    // Any other pool (or ISA): a zeroed plane and the winners scattered into it. d = +0 + dp, then
    // y > 0 ? d : 0 * d as d * (1 or 0), four at a time with SSE: written as scalar code, the
    // compiler branches on y (skipping the multiply by 0), a misprediction on random data.
    std::memset(gk, 0, sizeof(float) * size_t(P));
    long long o = 0;
    const __m128 zero = _mm_setzero_ps(), one = _mm_set1_ps(1.f);
    for (; o + 4 <= PP; o += 4) {
      const __m128 d = _mm_add_ps(zero, _mm_loadu_ps(dp + o));
      const __m128 keep = _mm_and_ps(_mm_cmpgt_ps(_mm_loadu_ps(y + o), zero), one);  // NaN: not > 0
      alignas(16) float v[4];
      _mm_store_ps(v, _mm_mul_ps(d, keep));
      for (int l = 0; l < 4; l++) gk[m[o + l]] = v[l];
    }
    for (; o < PP; o++) {
      const float d = 0.f + dp[o];
      gk[m[o]] = y[o] > 0.f ? d : 0.f * d;
    }
  }
}

// ---- stride 1: windows read in place from padded rows ("wide" rows) ----
// A stride-1 correlation needs no im2col copy. Over a map zero-padded to width Wp = Wo + kw - 1
// (Wo: the result's width), the window of tap (i, j) over the result pixels of rows y0..y1-1 is
// one run of the padded rows, plane + (y0 + i)*Wp + j, if each result row is computed Wp wide
// instead of Wo (its last kw - 1 values read across the row's end; they are computed and dropped).
// So the GEMM's B rows are pointers into the padded planes (sgemm_nn's brows), its C the wide rows
// in a buffer, and the copy out drops the extra columns (and applies a fused ReLU). Each result
// element is the same chain of FMAs over the same values as through im2col: the same bits.
// Used by the forward (the input padded by (ph, pw)) and the gather form of backward-input (dout
// padded by (kh-1-ph, kw-1-pw), the taps flipped).
// The left and right padding can share their zeros: with g = max(left, right) zeros before each
// source row and none after (rows S = Ws + g apart), a window running past a row's end reads the
// next row's g zeros, as it would read its own right padding. So the rows are S wide, not Wp
// (3x3, padding 1: 15 columns for 14 results, not 16; wide_stride).

// Result rows per item: the block's padded planes (Cs channels, rows + kh - 1 rows of Wp) and its
// wide result (M, rows x Wp) stay in L2, and at least 8 items in all when the batch is small.
// Depends on the shape only.
static int wide_row_block(int Ho, int Wp, int Cs, int M, int kh, int N) {
  constexpr long long kL2Floats = 64 * 1024;  // 256 KiB
  long long rb = Ho;
  while (rb > 4 && ((long long)Cs * (rb + kh - 1) * Wp > kL2Floats || (long long)M * rb * Wp > kL2Floats))
    rb = (rb + 1) / 2;
  int want = N > 0 ? ceil_div(8, N) : 1;
  if (want > 1) rb = std::min<long long>(rb, std::max(1, ceil_div(Ho, want)));
  return int(std::max(1LL, rb));
}

struct WideBuffers {
  std::vector<float> plane, wide;
  std::vector<const float*> rows;
};

// The padded rows' layout for a source Ws wide padded by `left` (the right padding is what makes
// the result Wo wide): where both paddings are >= 0, g = max(left, right) zeros before each row,
// rows Ws + g apart; else (a padding < 0: columns dropped) the plain layout, left zeros, rows
// Wo + kw - 1 apart. Returns the row stride; *shift: how far right of the plain layout each
// window starts (g - left).
static int wide_stride(int Ws, int left, int kw, int Wo, int* shift) {
  const int right = Wo + kw - 1 - Ws - left;
  if (left < 0 || right < 0) {
    *shift = 0;
    return Wo + kw - 1;
  }
  const int g = std::max(left, right);
  *shift = g - left;
  return Ws + g;
}

// The padded planes of result rows [y0, y1) into b.plane, and b.rows: the window of tap (c, i, j)
// (the rows of the GEMM's B, Cs*kh*kw of them), result pixel (y0 + r, x) at b.rows[tap] + r*S + x.
// Returns S.
static int wide_planes(const float* src, int Cs, int Hs, int Ws, int top, int left, int kh, int kw, bool flip, int Wo,
                       int y0, int y1, WideBuffers& b) {
  int shift;
  const int S = wide_stride(Ws, left, kw, Wo, &shift), Rb = y1 - y0 + kh - 1;
  const long long plane_n = (long long)Rb * S;
  // (Cs, Rb, S): padded rows y0 .. y1 + kh - 2; then 16 zeros, for the last window of the last
  // plane, which runs up to `right` floats past it (into the next plane's first row elsewhere)
  float* pl = scratch(b.plane, size_t(Cs * plane_n) + 16);
  pad_planes(pl, src, Cs, Hs, Ws, top - y0, left + shift, Rb, S);
  std::fill(pl + Cs * plane_n, pl + Cs * plane_n + 16, 0.f);
  b.rows.resize(size_t(Cs) * kh * kw);
  for (int c = 0; c < Cs; c++)
    for (int i = 0; i < kh; i++)
      for (int j = 0; j < kw; j++)
        b.rows[(c * kh + i) * kw + j] =
            pl + c * plane_n + (flip ? kh - 1 - i : i) * S + (flip ? kw - 1 - j : j) + shift;
  return S;
}

// The copy out of a wide result row: o[0..n) = w[0..n), or relu(w) (relu_block's v <= 0 ? +0 : v).
static void copy_out_row(float* o, const float* w, int n, bool relu) {
  if (relu) {
#pragma omp simd
    for (int x = 0; x < n; x++) o[x] = w[x] <= 0.f ? 0.f : w[x];
  } else {
    copy_run(o, w, n);
  }
}

// relu(v) in each lane: +0 where v <= 0, v elsewhere (NaN is not <= 0: kept), as copy_out_row.
[[gnu::target("avx512f")]] static inline __m512 relu16(__m512 v) {
  return _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LE_OQ), _mm512_setzero_ps());
}

// The same with 16-float AVX-512 vectors, the tail masked (where the GEMMs run AVX-512).
[[gnu::target("avx512f")]] static void copy_out_row_avx512(float* o, const float* w, int n, bool relu) {
  for (int x = 0; x < n; x += 16) {
    const __mmask16 m = tail_mask(n - x);
    const __m512 v = _mm512_maskz_loadu_ps(m, w + x);
    _mm512_mask_storeu_ps(o + x, m, relu ? relu16(v) : v);
  }
}

// out (M, Ho, Wo) rows [y0, y1) = row_init + A (M, Cs*kh*kw) x the windows of src (Cs, Hs, Ws)
// padded by (top, left): tap (c, i, j) reads padded row y + i', column x + j', where (i', j') =
// (i, j), or (kh-1-i, kw-1-j) when `flip`. A(m, r) = A[m*rsa + r*csa]. relu: out = relu(out).
// `out` holds rows out_y0.. of each of its M planes, out_plane floats apart (the whole result:
// out_y0 = 0, out_plane = Ho*Wo; a block's tile: out_y0 = y0).
static void wide_rows(float* out, long long out_plane, int out_y0, const float* A, long rsa, long csa, int M,
                      const float* src, int Cs, int Hs, int Ws, int top, int left, int kh, int kw, bool flip, int Wo,
                      int y0, int y1, const float* row_init, bool relu, WideBuffers& b) {
  // The wide result (M, ncols): result row y0 + r of plane m at m*ncols + r*S, Wo values long (then
  // S - Wo dropped ones); the last row needs only its Wo columns.
  const int S = wide_planes(src, Cs, Hs, Ws, top, left, kh, kw, flip, Wo, y0, y1, b), rb = y1 - y0;
  const int ncols = (rb - 1) * S + Wo;
  float* wide = scratch(b.wide, size_t(M) * ncols);
  sgemm_nn(M, ncols, Cs * kh * kw, A, rsa, csa, nullptr, 0, wide, ncols, row_init, false, b.rows.data());
  const bool avx512 = cpu_isa() == CpuIsa::Avx512;
  for (int m = 0; m < M; m++)
    for (int r = 0; r < rb; r++) {
      const float* w = wide + (long long)m * ncols + (long long)r * S;
      float* o = out + m * out_plane + (long long)(y0 - out_y0 + r) * Wo;
      (avx512 ? copy_out_row_avx512 : copy_out_row)(o, w, Wo, relu);
    }
}

// ---- stride 1 under AVX2 and AVX-512: the channels in the vector lanes ("row tiles") ----
// The wide rows' product turned round: result^T = windows^T x A^T. A tile is MR <= 14 pixels of
// one result row x 32 channels, in 2*MR accumulators of 16 lanes (AVX2: 6 pixels x 16 channels,
// 12 accumulators of 8 lanes); for each reduction index r, the channels' coefficients are two
// vector loads from A packed once per call (RowTileA), and each pixel's window value one broadcast
// read in place from the padded planes (wide_planes). So nothing is packed per image, and tiles
// follow the result's rows: no column is computed and dropped (sgemm_nn over the wide rows
// computes S - Wo extra columns a row and rounds each block up to 32-column panels: 224 columns
// for a 14 x 14 image's 196 results). The tile is transposed in registers into the channels'
// planes. Each result is the same chain of FMAs as through wide_rows' GEMM (from row_init, then r
// ascending; fma(a, b, c) = fma(b, a, c)): the same bits (Conv2dCpu.RowTilesGiveTheGemmsBits).
constexpr int kTileCh = 32;  // channels per tile (two 16-float vectors)
constexpr int kTilePx = 14;  // pixels per tile at most: 28 accumulators + 2 vectors of A + a broadcast

// A (M, R) (A(m, r) = A[m*rsa + r*csa]) packed for the row tiles: panel q (channels 32q ..
// 32q + 31) at a + q*R*32, a[q*R*32 + r*32 + l] = A(32q + l, r); init: row_init in the same panels
// (32 floats each) or null; zeros past M. Packed once per call by the calling thread, into its
// buffers (valid until its next pack), and read by every thread.
struct RowTileA {
  const float *a = nullptr, *init = nullptr;
};
static RowTileA pack_row_tile_a(const float* A, long rsa, long csa, int M, int R, const float* row_init) {
  static thread_local std::vector<float> abuf, ibuf;
  const int Mp = ceil_div(M, kTileCh) * kTileCh;
  RowTileA t;
  float* d = scratch(abuf, size_t(Mp) * R);
  t.a = d;
  for (int q = 0; q < Mp; q += kTileCh, d += (long long)R * kTileCh)
    for (int l = 0; l < kTileCh; l++)
      for (int r = 0; r < R; r++) d[r * kTileCh + l] = q + l < M ? A[(q + l) * rsa + r * csa] : 0.f;
  if (row_init) {
    float* in = scratch(ibuf, size_t(Mp));
    for (int m = 0; m < Mp; m++) in[m] = m < M ? row_init[m] : 0.f;
    t.init = in;
  }
  return t;
}

// One tile: MR pixels, the window values of reduction index r at rows[r] + off (MR in a row), x
// 32 channels (a: the panel, init: its 32 starting values or null for 0). Stores channel l's MR
// results at dst + l*ldm for l < mv, relu'd as copy_out_row where relu.
template <int MR>
[[gnu::target("avx512f,fma")]] static void row_tile(float* dst, long ldm, int mv, const float* const* rows, long off,
                                                    int R, const float* a, const float* init, bool relu) {
  __m512 acc[MR][2];
  const __m512 s0 = init ? _mm512_loadu_ps(init) : _mm512_setzero_ps();
  const __m512 s1 = init ? _mm512_loadu_ps(init + 16) : _mm512_setzero_ps();
#pragma GCC unroll 16
  for (int ii = 0; ii < MR; ii++) acc[ii][0] = s0, acc[ii][1] = s1;
  for (int r = 0; r < R; r++, a += kTileCh) {
    const float* p = rows[r] + off;
    asm("" : "+r"(p));  // p in one register, the pixels at constant offsets (GCC kept 14 offsets)
    const __m512 w0 = _mm512_load_ps(a), w1 = _mm512_load_ps(a + 16);
#pragma GCC unroll 16
    for (int ii = 0; ii < MR; ii++) {
      const __m512 b = _mm512_set1_ps(p[ii]);
      acc[ii][0] = _mm512_fmadd_ps(b, w0, acc[ii][0]);
      acc[ii][1] = _mm512_fmadd_ps(b, w1, acc[ii][1]);
    }
  }
  const __mmask16 m = tail_mask(MR);
#pragma GCC unroll 2
  for (int v = 0; v < 2; v++) {
    __m512 t[16];
#pragma GCC unroll 16
    for (int ii = 0; ii < 16; ii++) t[ii] = ii < MR ? acc[ii][v] : _mm512_setzero_ps();
    transpose16_regs(t);
    const int n = std::min(16, mv - 16 * v);
    for (int l = 0; l < n; l++) _mm512_mask_storeu_ps(dst + (16 * v + l) * ldm, m, relu ? relu16(t[l]) : t[l]);
  }
}

// row_tile for a run of n pixels (1 <= n <= kTilePx).
template <int MR = kTilePx>
static void row_tile_n(int n, float* dst, long ldm, int mv, const float* const* rows, long off, int R, const float* a,
                       const float* init, bool relu) {
  if constexpr (MR > 1)
    if (n < MR) return row_tile_n<MR - 1>(n, dst, ldm, mv, rows, off, R, a, init, relu);
  row_tile<MR>(dst, ldm, mv, rows, off, R, a, init, relu);
}

// The same under AVX2 (16 registers): MR <= 6 pixels x 16 channels (two 8-float vectors, 12
// accumulators), one half of a 32-channel panel (a: its first channel, rows of A still 32 floats
// apart; init the same); channels l < mv of the 16 stored.
constexpr int kTilePxAvx2 = 6;
template <int MR>
[[gnu::target("avx2,fma")]] static void row_tile_avx2(float* dst, long ldm, int mv, const float* const* rows, long off,
                                                      int R, const float* a, const float* init, bool relu) {
  __m256 acc[MR][2];
  const __m256 s0 = init ? _mm256_loadu_ps(init) : _mm256_setzero_ps();
  const __m256 s1 = init ? _mm256_loadu_ps(init + 8) : _mm256_setzero_ps();
#pragma GCC unroll 8
  for (int ii = 0; ii < MR; ii++) acc[ii][0] = s0, acc[ii][1] = s1;
  for (int r = 0; r < R; r++, a += kTileCh) {
    const float* p = rows[r] + off;
    asm("" : "+r"(p));  // as row_tile
    const __m256 w0 = _mm256_loadu_ps(a), w1 = _mm256_loadu_ps(a + 8);
#pragma GCC unroll 8
    for (int ii = 0; ii < MR; ii++) {
      const __m256 b = _mm256_broadcast_ss(p + ii);
      acc[ii][0] = _mm256_fmadd_ps(b, w0, acc[ii][0]);
      acc[ii][1] = _mm256_fmadd_ps(b, w1, acc[ii][1]);
    }
  }
  const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(MR), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
#pragma GCC unroll 2
  for (int v = 0; v < 2; v++) {
    __m256 t[8];
#pragma GCC unroll 8
    for (int ii = 0; ii < 8; ii++) t[ii] = ii < MR ? acc[ii][v] : _mm256_setzero_ps();
    transpose8_regs(t);
    const int n = std::min(8, mv - 8 * v);
    for (int l = 0; l < n; l++) {
      // relu as copy_out_row: +0 where v <= 0 (NaN is not <= 0: kept)
      const __m256 x = relu ? _mm256_andnot_ps(_mm256_cmp_ps(t[l], _mm256_setzero_ps(), _CMP_LE_OQ), t[l]) : t[l];
      _mm256_maskstore_ps(dst + (8 * v + l) * ldm, m, x);
    }
  }
}
template <int MR = kTilePxAvx2>
static void row_tile_avx2_n(int n, float* dst, long ldm, int mv, const float* const* rows, long off, int R,
                            const float* a, const float* init, bool relu) {
  if constexpr (MR > 1)
    if (n < MR) return row_tile_avx2_n<MR - 1>(n, dst, ldm, mv, rows, off, R, a, init, relu);
  row_tile_avx2<MR>(dst, ldm, mv, rows, off, R, a, init, relu);
}

// Whether a stride-1 product over Cs source channels runs as row tiles rather than sgemm_nn over
// the wide rows: where the GEMMs run AVX2 or AVX-512, over more than one channel (one channel:
// under AVX-512 the direct loops below; under AVX2 a reduction of kh*kw terms is too short for
// a tile's transposes to pay).
static bool use_row_tiles(int Cs) { return cpu_isa() != CpuIsa::Generic && Cs > 1; }

// wide_rows' result by row tiles: rows [y0, y1) of the M result planes, plane m at dst + m*ldm,
// row y at (y - y0)*Wo; A packed (RowTileA). Each row in equal runs of at most kTilePx pixels.
// Panel by panel, each over all the rows: a panel (R x 32 floats: 590 KiB for 512 channels of 3x3
// taps) is read from L2 for each tile, the block's planes (at most 256 KiB, wide_row_block) stay
// there across the panels.
static void row_tiles(float* dst, long ldm, const RowTileA& A, int M, const float* src, int Cs, int Hs, int Ws, int top,
                      int left, int kh, int kw, bool flip, int Wo, int y0, int y1, bool relu, WideBuffers& b) {
  const int S = wide_planes(src, Cs, Hs, Ws, top, left, kh, kw, flip, Wo, y0, y1, b), R = Cs * kh * kw;
  if (cpu_isa() != CpuIsa::Avx512) {  // AVX2: each panel in two halves of 16 channels
    const int mr = ceil_div(Wo, ceil_div(Wo, kTilePxAvx2));
    for (int q = 0; q < M; q += kTileCh / 2)
      for (int y = y0; y < y1; y++)
        for (int x0 = 0; x0 < Wo; x0 += mr)
          row_tile_avx2_n(std::min(mr, Wo - x0), dst + q * ldm + (long long)(y - y0) * Wo + x0, ldm,
                          std::min(kTileCh / 2, M - q), b.rows.data(), (long long)(y - y0) * S + x0, R,
                          A.a + (long long)(q / kTileCh) * kTileCh * R + q % kTileCh, A.init ? A.init + q : nullptr,
                          relu);
    return;
  }
  const int mr = ceil_div(Wo, ceil_div(Wo, kTilePx));
  for (int q = 0; q < M; q += kTileCh)
    for (int y = y0; y < y1; y++)
      for (int x0 = 0; x0 < Wo; x0 += mr)
        row_tile_n(std::min(mr, Wo - x0), dst + q * ldm + (long long)(y - y0) * Wo + x0, ldm, std::min(kTileCh, M - q),
                   b.rows.data(), (long long)(y - y0) * S + x0, R, A.a + (long long)q * R,
                   A.init ? A.init + q : nullptr, relu);
}

// Sixteen 2x2 windows' max pooling, their four values v (top-left, top-right, bottom-left,
// bottom-right) already relu'd: maxpool_row's scan in that order (strict '>', false for NaN on
// either side: the same choices). base: each window's top-left plane index (W: the plane's
// width); lanes outside m are not written.
[[gnu::target("avx512f"), gnu::always_inline]] static inline void maxpool4_avx512(float* out, int32_t* mask,
                                                                                  __mmask16 m, const __m512 (&v)[4],
                                                                                  __m512i base, int W) {
  const int step[4] = {0, 1, W, W + 1};
  __m512 best = v[0];
  __m512i idx = base;
#pragma GCC unroll 3
  for (int t = 1; t < 4; t++) {
    const __mmask16 gt = _mm512_cmp_ps_mask(v[t], best, _CMP_GT_OQ);
    best = _mm512_mask_mov_ps(best, gt, v[t]);
    idx = _mm512_mask_mov_epi32(idx, gt, _mm512_add_epi32(base, _mm512_set1_epi32(step[t])));
  }
  _mm512_mask_storeu_ps(out, m, best);
  _mm512_mask_storeu_epi32(mask, m, idx);
}

// Sixteen 2x2 windows: relu and max pooling of the 32 values t0, t1 of a row and the 32 below
// them, b0, b1 (window l covers values 2l and 2l + 1 of each): each value relu'd as copy_out_row
// does it, then maxpool4_avx512. The windows' top-left plane index is corner + 2l.
[[gnu::target("avx512f")]] static inline void relu_maxpool_16_avx512(float* out, int32_t* mask, __mmask16 m, __m512 t0,
                                                                     __m512 t1, __m512 b0, __m512 b1, int corner,
                                                                     int W) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512 v[4] = {relu16(_mm512_permutex2var_ps(t0, even, t1)), relu16(_mm512_permutex2var_ps(t0, odd, t1)),
                       relu16(_mm512_permutex2var_ps(b0, even, b1)), relu16(_mm512_permutex2var_ps(b0, odd, b1))};
  maxpool4_avx512(out, mask, m, v, _mm512_add_epi32(_mm512_set1_epi32(corner), even), W);
}

// relu + 2x2 stride-2 max pooling of one plane's result rows (a block's tile): pooled rows
// [oh0, oh1) of out / mask (pointing at the plane's row 0), from `wide` holding result rows y0.. of
// the plane, Wp apart, W valid values each; sixteen windows at a time.
[[gnu::target("avx512f")]] static void relu_maxpool_2x2_wide_avx512(float* out, int32_t* mask, const float* wide,
                                                                    int Wp, int y0, int W, int POW, int oh0, int oh1) {
  for (int oh = oh0; oh < oh1; oh++) {
    const float* r0 = wide + (long long)(2 * oh - y0) * Wp;
    const float* r1 = r0 + Wp;
    for (int ow = 0; ow < POW; ow += 16) {
      const int n2 = 2 * (POW - ow);  // the values of a row the windows read
      const __mmask16 m = tail_mask(POW - ow), lo = tail_mask(n2), hi = tail_mask(n2 - 16);
      const __m512 a0 = _mm512_maskz_loadu_ps(lo, r0 + 2 * ow), a1 = _mm512_maskz_loadu_ps(hi, r0 + 2 * ow + 16);
      const __m512 b0 = _mm512_maskz_loadu_ps(lo, r1 + 2 * ow), b1 = _mm512_maskz_loadu_ps(hi, r1 + 2 * ow + 16);
      relu_maxpool_16_avx512(out + (long long)oh * POW + ow, mask + (long long)oh * POW + ow, m, a0, a1, b0, b1,
                             2 * oh * W + 2 * ow, W);
    }
  }
}

// ---- one input channel (the first conv of every preset): direct AVX-512 loops ----
// With C = 1 the GEMM's reduction is only kh*kw terms long (9 or 25), and the wide rows' result,
// written to a buffer and read back around each short sum, costs as much as the sums. These loops
// keep each sum in a register: an output vector (16 pixels of a row) is one chain of FMAs started
// from the bias, over the taps (i, j) in ascending order: the GEMM's chain for each element (the
// same bits). Several chains at a time so that they overlap: four rows of four channels, or for
// the pool four channels x four vectors (two rows x 32 pixels). The taps read the
// block's zero-padded rows as the wide rows do; lanes past a row's end compute on what follows it
// and are never stored.
static bool direct_c1(const Conv2dShape& s) {
  return cpu_isa() == CpuIsa::Avx512 && s.C == 1 && s.sh == 1 && s.sw == 1 && (s.kw == 3 || s.kw == 5);
}

// acc[q][r] = bias[k + q] + sum over taps (i, j) of w[k + q][i][j] * pos[r][i*Wp + j .. + 16).
// Tap by tap: the Q weights of the tap broadcast and the R input vectors loaded once each, then
// Q x R FMAs: Q + R loads per Q*R FMAs (4 + 4 per 16 with Q = R = 4). (Kernel row by kernel row,
// with the Q*KW weights held, took Q*KW + R*KW loads per Q*R*KW FMAs: 10 + 20 per 40 for 5x5 with
// Q = 2, and an unaligned input vector costs two loads where it crosses a cache line.) Each
// chain's order is the taps' (i, then j): the same bits either way.
template <int KW, int Q, int R>
[[gnu::target("avx512f,fma")]] static inline void c1_chains(__m512 (&acc)[Q][R], const float* const (&pos)[R], long Wp,
                                                            int kh, const float* w, const float* bias, int k) {
#pragma GCC unroll 8
  for (int q = 0; q < Q; q++) {
    const __m512 b = _mm512_set1_ps(bias ? bias[k + q] : 0.f);
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) acc[q][r] = b;
  }
  for (int i = 0; i < kh; i++) {
#pragma GCC unroll 8
    for (int j = 0; j < KW; j++) {
      __m512 wv[Q], in[R];
#pragma GCC unroll 8
      for (int q = 0; q < Q; q++) {
        wv[q] = _mm512_set1_ps(w[((long long)(k + q) * kh + i) * KW + j]);
        asm("" : "+v"(wv[q]));  // one broadcast into a register: not one per FMA ({1to16} operands)
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; r++) {
        in[r] = _mm512_loadu_ps(pos[r] + i * Wp + j);
        asm("" : "+v"(in[r]));  // one load into a register: not folded into each of the Q FMAs that read it
      }
#pragma GCC unroll 8
      for (int q = 0; q < Q; q++)
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) acc[q][r] = _mm512_fmadd_ps(wv[q], in[r], acc[q][r]);
    }
  }
}

// The block's input rows, zero-padded: padded rows y0 .. y1 + kh - 2 of the one channel, Wp =
// OW + kw - 1 apart, and 64 zeros after them for the reads past the last row's end.
static const float* c1_plane(std::vector<float>& buf, const float* inp_n, const Conv2dShape& s, int y0, int y1) {
  const int Wp = s.OW + s.kw - 1, Rb = y1 - y0 + s.kh - 1;
  float* pl = scratch(buf, size_t(Rb) * Wp + 64);
  pad_plane(pl, inp_n, s.H, s.W, s.ph - y0, s.pw, Rb, Wp);
  std::memset(pl + (long long)Rb * Wp, 0, 64 * sizeof(float));
  return pl;
}

// Channels k, k+1, ... Q at a time while Q are left, of R output rows (o: the first row's first
// column of channel 0, rows s.OW apart, channels P apart; m: the valid columns). Returns the first
// channel not done.
template <int KW, int Q, int R>
[[gnu::target("avx512f,fma"), gnu::always_inline]] static inline int c1_rows_channels(
    float* o, const float* const (&pos)[R], long Wp, const float* w, const float* bias, const Conv2dShape& s,
    long long P, __mmask16 m, bool relu, int k) {
  for (; k + Q <= s.K; k += Q) {
    __m512 acc[Q][R];
    c1_chains<KW, Q, R>(acc, pos, Wp, s.kh, w, bias, k);
    for (int q = 0; q < Q; q++)
      for (int r = 0; r < R; r++)
        _mm512_mask_storeu_ps(o + (k + q) * P + r * s.OW, m, relu ? relu16(acc[q][r]) : acc[q][r]);
  }
  return k;
}

// R output rows y.. at columns x0..x0+15 (m: the valid ones) of every channel: four channels at a
// time, then two (lenet5's 6), then one.
template <int KW, int R>
[[gnu::target("avx512f,fma")]] static inline void c1_rows(float* out_n, const float* plane, long Wp, const float* w,
                                                          const float* bias, const Conv2dShape& s, int y0, int y,
                                                          int x0, __mmask16 m, bool relu) {
  const long long P = (long long)s.OH * s.OW;
  const float* pos[R];
  for (int r = 0; r < R; r++) pos[r] = plane + (y + r - y0) * Wp + x0;
  float* o = out_n + (long long)y * s.OW + x0;
  int k = c1_rows_channels<KW, 4, R>(o, pos, Wp, w, bias, s, P, m, relu, 0);
  k = c1_rows_channels<KW, 2, R>(o, pos, Wp, w, bias, s, P, m, relu, k);
  c1_rows_channels<KW, 1, R>(o, pos, Wp, w, bias, s, P, m, relu, k);
}

// out_n (K, OH, OW) rows [y0, y1) = conv (relu: relu(conv)) of the padded rows `plane`: four rows
// at a time, then one; four channels at a time, then two, then one.
template <int KW>
[[gnu::target("avx512f,fma")]] static void conv_c1_rows_avx512(float* out_n, const float* plane, const float* w,
                                                               const float* bias, const Conv2dShape& s, int y0, int y1,
                                                               bool relu) {
  const long Wp = s.OW + KW - 1;
  for (int x0 = 0; x0 < s.OW; x0 += 16) {
    const __mmask16 m = tail_mask(s.OW - x0);
    int y = y0;
    for (; y + 4 <= y1; y += 4) c1_rows<KW, 4>(out_n, plane, Wp, w, bias, s, y0, y, x0, m, relu);
    for (; y < y1; y++) c1_rows<KW, 1>(out_n, plane, Wp, w, bias, s, y0, y, x0, m, relu);
  }
}

// ---- one input channel, 3x3, the output as wide as the input (pad 1 across): the taps held ----
// `deep`'s first conv. Its output plane, flattened (p = y*W + x), is 16-pixel vectors; the nine
// taps of a vector are the padded rows' flattened pixels p + i*W + j - 1 with the lanes whose
// column falls off the row's edge masked to +0 (the padding's value). Two vectors' 18 taps are
// loaded once and held in registers over every channel: per channel 18 FMAs, each broadcasting
// its weight from memory ({1to16}), and two stores; the rows form above reloads 4 inputs and 4
// weights for each 16 FMAs. Each chain is c1_chains's (the bias, then the taps (i, j) in order):
// the same bits. One thread of the Zen 5, `deep`'s 64 images, ordinary stores: 0.16 ms (0.15, ~90%
// of the FMA peak, with the output kept in L2) against the rows form's 0.25.
//
// The output (6.4 MB at batch 64) is streamed past the caches (movntps) wherever every vector's
// address is 64-byte aligned (aligned out, P a multiple of 16; the tail vector is stored plainly).
// With ordinary stores each line is first read for ownership, often from the other core's cache,
// which wrote the same image in the last step: two threads, `deep`'s batch of 64, 0.14-0.15 ms
// with ordinary stores, 0.09 streamed (the rows form: 0.14-0.17); at batch 8 (800 KB, which the
// caches would keep) 0.021-0.033 against 0.020-0.023 streamed (rows form 0.022-0.028). The next
// layer then reads the output from memory, once: its time and the training step's stayed within
// the noise (batch 1 to 64).

static bool flat_c1(const Conv2dShape& s) { return direct_c1(s) && s.kh == 3 && s.kw == 3 && s.pw == 1; }

// For nv 16-lane vectors of a plane `width` wide, flattened: per vector, the lanes whose left
// neighbour is in the row (2v) and those whose right one is (2v + 1).
static std::vector<__mmask16> row_edge_masks(int width, int nv) {
  std::vector<__mmask16> edge(2 * size_t(nv));
  for (int p = 0, x = 0; p < 16 * nv; p++, x = x + 1 == width ? 0 : x + 1) {  // x = p % width
    edge[2 * (p / 16)] |= __mmask16(x > 0 ? 1u << p % 16 : 0u);
    edge[2 * (p / 16) + 1] |= __mmask16(x < width - 1 ? 1u << p % 16 : 0u);
  }
  return edge;
}

// Channels k, k+1, ... Q at a time while Q are left, of V vectors from o (channels P apart; tail:
// the last vector's valid lanes). Returns the first channel not done.
template <int Q, int V>
[[gnu::target("avx512f,fma"), gnu::always_inline]] static inline int c1_flat_channels(
    float* o, const __m512 (&tap)[V][9], long long P, const float* w, const float* bias, int K, int k, __mmask16 tail,
    bool relu, bool stream) {
  for (; k + Q <= K; k += Q) {
    __m512 acc[Q][V];
#pragma GCC unroll 8
    for (int q = 0; q < Q; q++) {
      const __m512 b = _mm512_set1_ps(bias ? bias[k + q] : 0.f);
#pragma GCC unroll 2
      for (int v = 0; v < V; v++) acc[q][v] = b;
    }
#pragma GCC unroll 9
    for (int t = 0; t < 9; t++)
#pragma GCC unroll 8
      for (int q = 0; q < Q; q++) {
        const __m512 wv = _mm512_set1_ps(w[(long long)(k + q) * 9 + t]);
#pragma GCC unroll 2
        for (int v = 0; v < V; v++) acc[q][v] = _mm512_fmadd_ps(wv, tap[v][t], acc[q][v]);
      }
#pragma GCC unroll 8
    for (int q = 0; q < Q; q++)
#pragma GCC unroll 2
      for (int v = 0; v < V; v++) {
        float* d = o + (k + q) * P + 16 * v;
        const __m512 y = relu ? relu16(acc[q][v]) : acc[q][v];
        if (v == V - 1 && tail != 0xFFFF)
          _mm512_mask_storeu_ps(d, tail, y);
        else if (stream)
          _mm512_stream_ps(d, y);
        else
          _mm512_storeu_ps(d, y);
      }
  }
  return k;
}

// V vectors from pixel p of every channel (out_n: the image's (K, P) output; row0: the padded
// plane's first row; edge: per vector, the lanes whose left and right neighbours are in the row).
template <int V>
[[gnu::target("avx512f,fma")]] static void c1_flat_vectors(float* out_n, const float* row0, const __mmask16* edge,
                                                           int W, long long P, int p, const float* w, const float* bias,
                                                           int K, bool relu, bool stream) {
  __m512 tap[V][9];
#pragma GCC unroll 2
  for (int v = 0; v < V; v++)
#pragma GCC unroll 3
    for (int i = 0; i < 3; i++) {
      const float* src = row0 + p + 16 * v + (long long)i * W;
      const __mmask16* e = edge + 2 * (p / 16 + v);
      tap[v][3 * i] = _mm512_maskz_loadu_ps(e[0], src - 1);
      tap[v][3 * i + 1] = _mm512_loadu_ps(src);
      tap[v][3 * i + 2] = _mm512_maskz_loadu_ps(e[1], src + 1);
    }
  const __mmask16 tail = tail_mask(int(P - p) - 16 * (V - 1));
  int k = c1_flat_channels<8 / V, V>(out_n + p, tap, P, w, bias, K, 0, tail, relu, stream);
  k = c1_flat_channels<2, V>(out_n + p, tap, P, w, bias, K, k, tail, relu, stream);
  c1_flat_channels<1, V>(out_n + p, tap, P, w, bias, K, k, tail, relu, stream);
}

// out (N, K, OH, W) = conv (relu: relu(conv)) for flat_c1 shapes: (image, run of vector pairs)
// items, a whole image each from 8 images on.
static void conv_c1_flat_avx512(float* out, const float* inp, const float* weight, const float* bias,
                                const Conv2dShape& s, bool relu) {
  const int W = s.W, P = s.OH * s.OW, nv = ceil_div(P, 16), pairs = ceil_div(nv, 2);
  const int runs = std::min(pairs, ceil_div(8, std::max(s.N, 1)));
  const std::vector<__mmask16> edge = row_edge_masks(W, nv);
  const bool stream = P % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 64 == 0;
#pragma omp parallel for schedule(dynamic) if (conv2d_macs(s) >= kMinParallelWork)
  for (int item = 0; item < s.N * runs; item++) {
    static thread_local std::vector<float> buf;
    const int n = item / runs, r = item % runs, v0 = 2 * (pairs * r / runs),
              v1 = std::min(nv, 2 * (pairs * (r + 1) / runs));
    // The plane: input rows -ph .. OH + 1 - ph, zeros outside the image, and 32 zeros before and
    // after for the taps' reads past either end.
    const int Hp = s.OH + 2;
    float* pl = scratch(buf, size_t(Hp) * W + 64);
    std::memset(pl, 0, 32 * sizeof(float));
    pad_plane(pl + 32, inp + (long long)n * s.H * W, s.H, W, s.ph, 0, Hp, W);
    std::memset(pl + 32 + (long long)Hp * W, 0, 32 * sizeof(float));
    float* out_n = out + (long long)n * s.K * P;
    int v = v0;
    for (; v + 2 <= v1; v += 2)
      c1_flat_vectors<2>(out_n, pl + 32, edge.data(), W, P, 16 * v, weight, bias, s.K, relu, stream);
    if (v < v1) c1_flat_vectors<1>(out_n, pl + 32, edge.data(), W, P, 16 * v, weight, bias, s.K, relu, stream);
    if (stream) _mm_sfence();  // the streamed stores are ordered before the loop's closing barrier
  }
}

// Channels k, k+1, ... Q at a time while Q are left, of sixteen pooling windows (pos: their two rows
// x 32 pixels; o: their first output; m: the valid ones). Returns the first channel not done.
template <int KW, int Q>
[[gnu::target("avx512f,fma"), gnu::always_inline]] static inline int c1_pool_channels(
    float* pooled_n, int32_t* mask_n, const float* const (&pos)[4], long Wp, const float* w, const float* bias,
    const Conv2dShape& s, long long PP, long long o, __mmask16 m, int corner, int k) {
  for (; k + Q <= s.K; k += Q) {
    __m512 acc[Q][4];
    c1_chains<KW, Q, 4>(acc, pos, Wp, s.kh, w, bias, k);
#pragma GCC unroll 4
    for (int q = 0; q < Q; q++)
      relu_maxpool_16_avx512(pooled_n + (k + q) * PP + o, mask_n + (k + q) * PP + o, m, acc[q][0], acc[q][1], acc[q][2],
                             acc[q][3], corner, s.OW);
  }
  return k;
}

// pooled_n, mask_n (K, POH, POW) rows [oh0, oh1) = 2x2 stride-2 max pooling of relu(conv) of the
// padded rows `plane` (rows y0..): sixteen windows of four channels at a time (then two, one) from
// four vectors of sums each (two rows x 32 pixels), pooled in registers (relu_maxpool_16_avx512).
template <int KW>
[[gnu::target("avx512f,fma")]] static void conv_c1_relu_maxpool_avx512(float* pooled_n, int32_t* mask_n,
                                                                       const float* plane, const float* w,
                                                                       const float* bias, const Conv2dShape& s,
                                                                       const Pool2dShape& ps, int y0, int oh0,
                                                                       int oh1) {
  const long Wp = s.OW + KW - 1;
  const long long PP = (long long)ps.OH * ps.OW;
  for (int oh = oh0; oh < oh1; oh++)
    for (int ow = 0; ow < ps.OW; ow += 16) {
      const __mmask16 m = tail_mask(ps.OW - ow);
      const float* r0 = plane + (2 * oh - y0) * Wp + 2 * ow;
      const float* const pos[4] = {r0, r0 + 16, r0 + Wp, r0 + Wp + 16};
      const long long o = (long long)oh * ps.OW + ow;
      const int corner = 2 * oh * s.OW + 2 * ow;
      int k = c1_pool_channels<KW, 4>(pooled_n, mask_n, pos, Wp, w, bias, s, PP, o, m, corner, 0);
      k = c1_pool_channels<KW, 2>(pooled_n, mask_n, pos, Wp, w, bias, s, PP, o, m, corner, k);
      c1_pool_channels<KW, 1>(pooled_n, mask_n, pos, Wp, w, bias, s, PP, o, m, corner, k);
    }
}

// ---- one input channel, 5x5 padded 2 across, then the ReLU and a 2x2 max pooling: by phases ----
// `paper`'s conv. The four pixels of a pooling window are the four phases (a0, b0) of the conv's
// output, (2 oh + a0, 2 ow + b0), and the pooled plane, flattened (p = oh*POW + ow), is 16-window
// vectors. Phase (a0, b0)'s tap (i, j) over a vector reads the zero-padded image at (2 (oh + u) +
// a, 2 (ow + v) + b) with a0 + i = 2u + a, b0 + j = 2v + b: so from the polyphase plane (a, b) (the
// input's rows of parity a and columns of parity b, POW wide, a zero row above and below), at p +
// u*POW + v - 1, the lanes whose column falls off the row masked to +0 (the padding's value). Tap
// by tap, the four phases' vectors are loaded once, and each channel's weight broadcast once for
// its four FMAs: 4 + Q loads per 4 Q FMAs, Q = 4 channels (16 accumulators; 3, 5 and 6 channels
// measured slower, 6 spilling registers). The rows form above fills 28 of 32 lanes (rows of
// 28 pixels); here a 14 x 14 pooled plane's 196 windows fill 13 vectors (94%), and a window's four
// values come as four vectors: no permutation before the pooling. Each chain is c1_chains's (the
// bias, then the taps (i, j) in order), relu'd and pooled by maxpool4_avx512, as the rows form's: the
// same bits. `paper`'s 64 images on the Zen 5: one thread 0.46 ms against the rows form's 0.51, two
// threads 0.235 against 0.265.
static bool phase_c1(const Conv2dShape& s) {
  return direct_c1(s) && s.kh == 5 && s.kw == 5 && s.ph == 2 && s.pw == 2 && s.W % 2 == 0;
}

// The polyphase planes of one image (H, W): plane (a, b) at pl + (2a + b)*PS, row r (0 .. POH + 1)
// at r*POW: pl[(2a + b)*PS + r*POW + c] = img[2(r - 1) + a][2c + b], zero outside the image (row 0,
// the rows past H, and the PS - (POH + 2)*POW floats after each plane).
[[gnu::target("avx512f")]] static void polyphase_planes(float* pl, long PS, const float* img, int H, int W, int POH,
                                                        int POW) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int a = 0; a < 2; a++)
    for (int r = 0; r < POH + 2; r++) {
      const int y = 2 * (r - 1) + a;
      float* d0 = pl + 2 * a * PS + (long)r * POW;
      float* d1 = d0 + PS;
      if (y < 0 || y >= H) {
        std::memset(d0, 0, sizeof(float) * POW);
        std::memset(d1, 0, sizeof(float) * POW);
        continue;
      }
      const float* src = img + (long long)y * W;
      for (int c = 0; c < POW; c += 16) {
        const int n = std::min(16, POW - c);
        const __m512 lo = _mm512_maskz_loadu_ps(tail_mask(2 * n), src + 2 * c);
        const __m512 hi = _mm512_maskz_loadu_ps(tail_mask(2 * n - 16), src + 2 * c + 16);
        _mm512_mask_storeu_ps(d0 + c, tail_mask(n), _mm512_permutex2var_ps(lo, even, hi));
        _mm512_mask_storeu_ps(d1 + c, tail_mask(n), _mm512_permutex2var_ps(lo, odd, hi));
      }
    }
  for (int t = 0; t < 4; t++)
    std::memset(pl + t * PS + (long)(POH + 2) * POW, 0, sizeof(float) * (PS - (POH + 2) * POW));
}

// Channels k, k+1, ... Q at a time while Q are left, of the windows of the vector at p (m: the
// valid ones; base: each window's top-left pixel in the conv's plane); pooled and mask: the
// image's (K, PP). Tap by tap: the tap's four phase vectors loaded once each and each channel's
// weight broadcast once, then 4 Q FMAs (4 Q accumulators). Returns the first channel not done.
template <int Q>
[[gnu::target("avx512f,fma"), gnu::always_inline]] static inline int phase_channels(
    float* pooled_n, int32_t* mask_n, const float* pl, long PS, int POW, long PP, long p, __mmask16 left,
    __mmask16 right, __mmask16 m, __m512i base, int OW, const float* w, const float* bias, int K, int k) {
  for (; k + Q <= K; k += Q) {
    __m512 acc[4][Q];
#pragma GCC unroll 16
    for (int q = 0; q < Q; q++) {
      const __m512 b = _mm512_set1_ps(bias ? bias[k + q] : 0.f);
#pragma GCC unroll 4
      for (int ph = 0; ph < 4; ph++) acc[ph][q] = b;
    }
#pragma GCC unroll 25
    for (int t = 0; t < 25; t++) {
      const int i = t / 5, j = t % 5;
      __m512 tap[4];
#pragma GCC unroll 4
      for (int ph = 0; ph < 4; ph++) {
        const int a0 = ph >> 1, b0 = ph & 1, u = (a0 + i) >> 1, a = (a0 + i) & 1, dv = ((b0 + j) >> 1) - 1,
                  b = (b0 + j) & 1;
        const float* src = pl + (2 * a + b) * PS + p + u * POW + dv;
        tap[ph] = dv == 0 ? _mm512_loadu_ps(src) : _mm512_maskz_loadu_ps(dv < 0 ? left : right, src);
        asm("" : "+v"(tap[ph]));  // one load into a register: not folded into each of the Q FMAs that read it
      }
#pragma GCC unroll 16
      for (int q = 0; q < Q; q++) {
        __m512 wv = _mm512_set1_ps(w[(long long)(k + q) * 25 + t]);
        asm("" : "+v"(wv));  // one broadcast into a register: not one per FMA
#pragma GCC unroll 4
        for (int ph = 0; ph < 4; ph++) acc[ph][q] = _mm512_fmadd_ps(wv, tap[ph], acc[ph][q]);
      }
    }
#pragma GCC unroll 16
    for (int q = 0; q < Q; q++) {
      const __m512 v[4] = {relu16(acc[0][q]), relu16(acc[1][q]), relu16(acc[2][q]), relu16(acc[3][q])};
      maxpool4_avx512(pooled_n + (k + q) * PP + p, mask_n + (k + q) * PP + p, m, v, base, OW);
    }
  }
  return k;
}

// Every channel of the windows of the vector at p: four at a time, then two, one.
[[gnu::target("avx512f,fma")]] static void phase_vector(float* pooled_n, int32_t* mask_n, const float* pl, long PS,
                                                        int POW, long PP, long p, __mmask16 left, __mmask16 right,
                                                        const int32_t* corner, int OW, const float* w,
                                                        const float* bias, int K) {
  const __mmask16 m = tail_mask(int(PP - p));
  const __m512i base = _mm512_loadu_si512(corner + p);
  int k = phase_channels<4>(pooled_n, mask_n, pl, PS, POW, PP, p, left, right, m, base, OW, w, bias, K, 0);
  k = phase_channels<2>(pooled_n, mask_n, pl, PS, POW, PP, p, left, right, m, base, OW, w, bias, K, k);
  phase_channels<1>(pooled_n, mask_n, pl, PS, POW, PP, p, left, right, m, base, OW, w, bias, K, k);
}

// pooled, mask (N, K, POH, POW) = 2x2 stride-2 max pooling of relu(conv) for phase_c1 shapes:
// (image, run of vectors) items, a whole image each from 8 images on.
static void conv_c1_phase_pool_avx512(float* pooled, int32_t* mask, const float* inp, const float* weight,
                                      const float* bias, const Conv2dShape& s, const Pool2dShape& ps) {
  const int POH = ps.OH, POW = ps.OW, PP = POH * POW, nv = ceil_div(PP, 16);
  const int runs = std::min(nv, ceil_div(8, std::max(s.N, 1)));
  // Per vector: the lanes whose left and right neighbours are in the row; each window's top-left
  // pixel in the conv's (OH, OW) plane.
  const std::vector<__mmask16> edge = row_edge_masks(POW, nv);
  std::vector<int32_t> corner(16 * size_t(nv));
  for (int p = 0; p < 16 * nv; p++) corner[p] = 2 * (p / POW) * s.OW + 2 * (p % POW);
  // Each plane with 16 floats of slack after it (the reads past its last row: lanes past PP) and
  // 16 before the first (the masked-off read left of p = 0).
  const long PS = long(POH + 2) * POW + 16;
#pragma omp parallel for schedule(dynamic) if (conv2d_macs(s) >= kMinParallelWork)
  for (int item = 0; item < s.N * runs; item++) {
    static thread_local std::vector<float> buf;
    const int n = item / runs, r = item % runs, v0 = nv * r / runs, v1 = nv * (r + 1) / runs;
    float* pl = scratch(buf, 4 * size_t(PS) + 16) + 16;
    std::memset(pl - 16, 0, 16 * sizeof(float));
    polyphase_planes(pl, PS, inp + (long long)n * s.H * s.W, s.H, s.W, POH, POW);
    const long long off = (long long)n * s.K * PP;
    for (int v = v0; v < v1; v++)
      phase_vector(pooled + off, mask + off, pl, PS, POW, PP, 16L * v, edge[2 * v], edge[2 * v + 1], corner.data(),
                   s.OW, weight, bias, s.K);
  }
}

void conv2d_forward(float* out, const float* inp, const float* weight, const float* bias, const Conv2dShape& s,
                    bool fuse_relu) {
  // out (N, K, OH, OW); inp (N, C, H, W); weight (K, C, kh, kw); bias (K) or null
  check_conv2d_shape(s, "cpu::conv2d_forward");
  const int P = s.OH * s.OW, CKK = s.C * s.kh * s.kw;
  const bool pointwise = is_pointwise(s);
  if (flat_c1(s)) {
    conv_c1_flat_avx512(out, inp, weight, bias, s, fuse_relu);
    return;
  }
  if (s.sh == 1 && s.sw == 1 && !pointwise) {
    const int rb = wide_row_block(s.OH, s.OW + s.kw - 1, s.C, s.K, s.kh, s.N), nb = ceil_div(s.OH, rb);
    const bool c1 = direct_c1(s), tiles = !c1 && use_row_tiles(s.C);
    const RowTileA ta = tiles ? pack_row_tile_a(weight, CKK, 1, s.K, CKK, bias) : RowTileA{};
#pragma omp parallel for schedule(dynamic) if (conv2d_macs(s) >= kMinParallelWork)
    for (int item = 0; item < s.N * nb; item++) {
      static thread_local WideBuffers bufs;
      const int n = item / nb, y0 = item % nb * rb, y1 = std::min(s.OH, y0 + rb);
      if (c1) {
        const float* pl = c1_plane(bufs.plane, inp + (long long)n * s.H * s.W, s, y0, y1);
        (s.kw == 3 ? conv_c1_rows_avx512<3> : conv_c1_rows_avx512<5>)(out + (long long)n * s.K * P, pl, weight, bias, s,
                                                                      y0, y1, fuse_relu);
        continue;
      }
      if (tiles) {
        row_tiles(out + (long long)n * s.K * P + (long long)y0 * s.OW, P, ta, s.K, inp + (long long)n * s.C * s.H * s.W,
                  s.C, s.H, s.W, s.ph, s.pw, s.kh, s.kw, false, s.OW, y0, y1, fuse_relu, bufs);
        continue;
      }
      wide_rows(out + (long long)n * s.K * P, P, 0, weight, CKK, 1, s.K, inp + (long long)n * s.C * s.H * s.W, s.C, s.H,
                s.W, s.ph, s.pw, s.kh, s.kw, false, s.OW, y0, y1, bias, fuse_relu, bufs);
    }
    return;
  }
  const int pb = pixel_block(P, CKK, s.N), nb = ceil_div(P, pb);
#pragma omp parallel for schedule(dynamic) if (conv2d_macs(s) >= kMinParallelWork)
  for (int item = 0; item < s.N * nb; item++) {
    static thread_local std::vector<float> colbuf, planebuf;
    int n = item / nb, p0 = item % nb * pb, p1 = std::min(P, p0 + pb), np = p1 - p0;
    const float* inp_n = inp + (long long)n * s.C * s.H * s.W;  // (C, H, W)
    long ldcol;
    const float* col = image_columns(inp_n, s, pointwise, p0, p1, colbuf, planebuf, &ldcol);  // (CKK, np)
    float* o = out + (long long)n * s.K * P + p0;                                             // (K, np) inside (K, P)
    // the sum of out[n,k,:] starts from bias[k], as in the reference
    sgemm_nn(s.K, np, CKK, weight, CKK, 1, col, ldcol, o, P, bias, false);
    if (fuse_relu) relu_block(o, s.K, np, P);
  }
}

// Whether the conv's output can be pooled block by block (conv2d_forward_relu_maxpool): the wide
// rows' path (stride 1, not 1x1 unpadded), and windows that do not overlap (each output pixel
// lies in at most one: the backward's scatter), over this conv's output.
bool conv2d_fuses_maxpool(const Conv2dShape& s, const Pool2dShape& ps) {
  return s.sh == 1 && s.sw == 1 && !is_pointwise(s) && ps.N == s.N && ps.C == s.K && ps.H == s.OH && ps.W == s.OW &&
         ps.kh >= 1 && ps.kw >= 1 && ps.sh >= ps.kh && ps.sw >= ps.kw && ps.OH >= 1 && ps.OW >= 1 &&
         ps.OH == window_out_size(ps.H, ps.kh, ps.sh, 0) && ps.OW == window_out_size(ps.W, ps.kw, ps.sw, 0);
}

// The fused ops' arguments: a conv shape, and a pool it can be fused with.
static void check_fused_pool(const Conv2dShape& s, const Pool2dShape& ps, const char* op) {
  check_conv2d_shape(s, op);
  BARECNN_ASSERT(conv2d_fuses_maxpool(s, ps), op, ": conv ", s.str(), " with pool ", ps.str());
}

// The forward's items as conv2d_forward's, with blocks of whole pooling rows: rb a multiple of the
// pool's stride, so every window lies inside one block (kh <= sh). Each block's conv rows go to a
// tile while in cache, which the pool reads: for 2x2 stride 2 under AVX-512
// relu_maxpool_2x2_wide_avx512, else detail::maxpool_plane_rows (maxpool2d_forward's own rows);
// only the pooled values and the mask are written. Rows past the last window are computed and
// dropped, as the unfused pool never reads them. Each conv value is the same chain of FMAs as in
// conv2d_forward (row tiles or the wide rows' GEMM, as there). (One input channel, 5x5 padded 2
// across, 2x2 stride 2, under AVX-512: by phases, conv_c1_phase_pool_avx512, its own items.)
void conv2d_forward_relu_maxpool(float* pooled, int32_t* mask, const float* inp, const float* weight, const float* bias,
                                 const Conv2dShape& s, const Pool2dShape& ps) {
  // pooled, mask (N, K, POH, POW); inp (N, C, H, W); weight (K, C, kh, kw); bias (K) or null
  check_fused_pool(s, ps, "cpu::conv2d_forward_relu_maxpool");
  const int PP = ps.OH * ps.OW, CKK = s.C * s.kh * s.kw;
  int rb = wide_row_block(s.OH, s.OW + s.kw - 1, s.C, s.K, s.kh, s.N);
  rb = std::min(ceil_div(rb, ps.sh) * ps.sh, ceil_div(s.OH, ps.sh) * ps.sh);
  const int nb = ceil_div(s.OH, rb);
  // 2x2 stride 2 (every preset) where the GEMMs run AVX-512: relu and pool in 16-lane vectors;
  // otherwise maxpool2d_forward's own rows over the relu'd tile.
  const bool direct = cpu_isa() == CpuIsa::Avx512 && ps.kh == 2 && ps.kw == 2 && ps.sh == 2 && ps.sw == 2;
  const bool c1 = direct_c1(s);  // one input channel: the sums in registers, pooled there
  const bool tiles = !(direct && c1) && use_row_tiles(s.C);
  if (direct && phase_c1(s)) {
    conv_c1_phase_pool_avx512(pooled, mask, inp, weight, bias, s, ps);
    return;
  }
  const RowTileA ta = tiles ? pack_row_tile_a(weight, CKK, 1, s.K, CKK, bias) : RowTileA{};
#pragma omp parallel for schedule(dynamic) if (conv2d_macs(s) >= kMinParallelWork)
  for (int item = 0; item < s.N * nb; item++) {
    static thread_local WideBuffers bufs;
    static thread_local std::vector<float> tilebuf;
    const int n = item / nb, y0 = item % nb * rb, y1 = std::min(s.OH, y0 + rb);
    const int oh0 = y0 / ps.sh, oh1 = std::min(ps.OH, ceil_div(y1, ps.sh));  // the windows starting in the block
    if (direct && c1) {
      const float* pl = c1_plane(bufs.plane, inp + (long long)n * s.H * s.W, s, y0, y1);
      const long long off = (long long)n * s.K * PP;
      (s.kw == 3 ? conv_c1_relu_maxpool_avx512<3> : conv_c1_relu_maxpool_avx512<5>)(pooled + off, mask + off, pl,
                                                                                    weight, bias, s, ps, y0, oh0, oh1);
      continue;
    }
    // The block's conv rows (K, rb, OW) into a tile in L1/L2 (relu'd there unless the 2x2 pool
    // does it), by row tiles or the wide rows' GEMM; pooled from there.
    const long long tp = (long long)(y1 - y0) * s.OW;
    float* tile = scratch(tilebuf, size_t(s.K * tp));
    const float* inp_n = inp + (long long)n * s.C * s.H * s.W;
    if (tiles)
      row_tiles(tile, tp, ta, s.K, inp_n, s.C, s.H, s.W, s.ph, s.pw, s.kh, s.kw, false, s.OW, y0, y1, !direct, bufs);
    else
      wide_rows(tile, tp, y0, weight, CKK, 1, s.K, inp_n, s.C, s.H, s.W, s.ph, s.pw, s.kh, s.kw, false, s.OW, y0, y1,
                bias, !direct, bufs);
    for (int k = 0; k < s.K; k++) {
      const long long off = ((long long)n * s.K + k) * PP;
      if (direct)
        relu_maxpool_2x2_wide_avx512(pooled + off, mask + off, tile + k * tp, s.OW, y0, s.OW, ps.OW, oh0, oh1);
      else
        detail::maxpool_plane_rows(pooled + off, mask + off, tile + k * tp, y0, oh0, oh1, ps);
    }
  }
}

// col2im: dinp (C1, H, W) += the columns of dcol (C1*kh*kw, P) scattered back to the input pixels
// they were read from (im2col's transpose), for the C1 channels of one image starting at dinp.
// Each input pixel's sum runs over (i, j, oh, ow) in that order.
static void col2im_add(float* dinp, const float* dcol, const Conv2dShape& s, int C1) {
  const int P = s.OH * s.OW;
  for (int c = 0; c < C1; c++) {
    for (int i = 0; i < s.kh; i++) {
      for (int j = 0; j < s.kw; j++) {
        const float* src = dcol + ((long long)(c * s.kh + i) * s.kw + j) * P;  // (OH, OW)
        int ow_lo = s.pw - j > 0 ? ceil_div(s.pw - j, s.sw) : 0;
        int ow_hi = s.W - 1 + s.pw - j >= 0 ? std::min(s.OW, (s.W - 1 + s.pw - j) / s.sw + 1) : 0;
        if (ow_lo >= ow_hi) continue;  // tap column j only ever read padding
        for (int oh = 0; oh < s.OH; oh++) {
          int ih = window_in_pos(oh, i, s.sh, s.ph);
          if (ih < 0 || ih >= s.H) continue;                  // this tap read padding
          float* d = dinp + ((long long)c * s.H + ih) * s.W;  // (W)
          const float* g = src + (long long)oh * s.OW;        // (OW)
          if (s.sw == 1) {
            float* dd = d + (ow_lo - s.pw + j);
#pragma omp simd
            for (int x = ow_lo; x < ow_hi; x++) dd[x - ow_lo] += g[x];
          } else {
            for (int x = ow_lo; x < ow_hi; x++) d[x * s.sw - s.pw + j] += g[x];
          }
        }
      }
    }
  }
}

// col2im_add's sums with stride 1 and 16-float AVX-512 vectors, written over dinp (C1, H, W)
// rather than added to it: each 16 pixels of an input row are one vector register, started at +0
// and added the rows of dcol that read them, in (i, j) order (oh = ih + ph - i, ow = iw + pw - j),
// then stored once. Each pixel gets the same adds in the same order as from col2im_add over a
// zeroed dinp (a masked-off lane adds nothing); as a loop of short masked adds into dinp, the
// reloads of what the previous tap had just stored made col2im ~16% slower than the scalar loop.
[[gnu::target("avx512f")]] static void col2im_s1_avx512(float* dinp, const float* dcol, const Conv2dShape& s, int C1) {
  const int P = s.OH * s.OW;
  for (int c = 0; c < C1; c++)
    for (int ih = 0; ih < s.H; ih++)
      for (int w0 = 0; w0 < s.W; w0 += 16) {
        const __mmask16 row = tail_mask(s.W - w0);
        __m512 acc = _mm512_setzero_ps();
        for (int i = 0; i < s.kh; i++) {
          const int oh = ih + s.ph - i;
          if (oh < 0 || oh >= s.OH) continue;  // this tap reads row ih from no output row
          for (int j = 0; j < s.kw; j++) {
            // lane l (iw = w0 + l) takes ow = w0 + l + pw - j, if 0 <= ow < OW
            const int shift = s.pw - j + w0;
            const __mmask16 m = __mmask16(row & tail_mask(s.OW - shift) & ~tail_mask(-shift));
            if (!m) continue;
            const float* g = dcol + ((long long)(c * s.kh + i) * s.kw + j) * P + (long long)oh * s.OW;
            // the address of ow = shift, taken as an integer: it may lie before g, in masked-off lanes only
            const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(g) + sizeof(float) * std::intptr_t(shift);
            acc = _mm512_mask_add_ps(acc, m, acc, _mm512_maskz_loadu_ps(m, reinterpret_cast<const void*>(at)));
          }
        }
        _mm512_mask_storeu_ps(dinp + ((long long)c * s.H + ih) * s.W + w0, row, acc);
      }
}

// Two forms of the same sum (see the top of the file); both give each dinp element to one item.
//   gather  (stride 1, C >= min(K, 32)): dinp_n (C, Q) = Wt (C, KKK) dcol_n (KKK, Q); items are
//           (image, block of input pixels).
//   scatter (C < min(K, 32) or stride > 1): dcol (CKK, P) = W^T (CKK, K) dout_n (K, P), then
//           col2im; items are (image, block of input channels), whose rows of dcol and pixels of
//           dinp are their own. Its GEMM has C*kh*kw rows instead of C, so it wins when C is small
//           (the first layer: C = 1), and it does no wasted work for stride > 1. From 32 channels
//           (one AVX-512 row tile's) gather: `deep`'s conv(64) over 32 channels, 2 threads on a
//           Zen 5, 1.92-2.05 -> 1.34-1.35 ms by row tiles; AVX2 scatter 3.12, gather 3.08-3.13
//           over the wide rows, 2.41 by row tiles (the rule is the same under every ISA: so are
//           the bits).
static void backward_input(float* dinp, const OutGrad& og, const float* weight, const Conv2dShape& s) {
  // dinp (N, C, H, W), overwritten; the conv's gradient (N, K, OH, OW) from og; weight (K, C, kh, kw)
  const int Q = s.H * s.W, P = s.OH * s.OW, KK = s.kh * s.kw, KKK = s.K * KK, CKK = s.C * KK;
  const bool parallel = conv2d_macs(s) >= kMinParallelWork;
  const bool pointwise = is_pointwise(s);
  const bool scatter = !pointwise && ((s.C < s.K && s.C < kTileCh) || s.sh > 1 || s.sw > 1);
  if (scatter) {
    // Channels per item: the item's dcol rows (cb*KK x P) stay in L2; at least 8 items if possible.
    constexpr long long kL2Floats = 64 * 1024;
    int cb = int(std::max(1LL, std::min<long long>(s.C, kL2Floats / ((long long)KK * P))));
    if (s.N > 0 && s.N * ceil_div(s.C, cb) < 8) cb = std::max(1, std::min(cb, ceil_div(s.C, ceil_div(8, s.N))));
    const int nb = ceil_div(s.C, cb);
#pragma omp parallel for schedule(dynamic) if (parallel)
    for (int item = 0; item < s.N * nb; item++) {
      static thread_local std::vector<float> colbuf, gradbuf;
      int n = item / nb, c0 = item % nb * cb, nc = std::min(cb, s.C - c0);
      float* dcol = scratch(colbuf, (size_t)nc * KK * P);  // (nc*kh*kw, P)
      const float* g = og.image(n, s, gradbuf);            // (K, P)
      // A (r, k) = weight[k, c0*KK + r]: W^T, rows 1 apart, columns CKK apart
      sgemm_nn(nc * KK, P, s.K, weight + (long long)c0 * KK, 1, CKK, g, P, dcol, P, nullptr, false);
      float* d = dinp + ((long long)n * s.C + c0) * Q;  // (nc, H, W)
      if (cpu_isa() == CpuIsa::Avx512 && s.sh == 1 && s.sw == 1) {
        col2im_s1_avx512(d, dcol, s, nc);
        continue;
      }
      std::fill(d, d + (long long)nc * Q, 0.f);
      col2im_add(d, dcol, s, nc);
    }
    return;
  }
  // gather: wt (C, K, kh, kw), the weights with the channel axes swapped, rows of the GEMM's A.
  static thread_local std::vector<float> wtbuf;
  float* wt = scratch(wtbuf, (size_t)s.C * KKK);
  for (int k = 0; k < s.K; k++)
    for (int c = 0; c < s.C; c++)
      for (int t = 0; t < KK; t++) wt[((long long)c * s.K + k) * KK + t] = weight[((long long)k * s.C + c) * KK + t];
  if (pointwise) {  // dcol_n is dout_n itself
    const int qb = pixel_block(Q, KKK, s.N), nb = ceil_div(Q, qb);
#pragma omp parallel for schedule(dynamic) if (parallel)
    for (int item = 0; item < s.N * nb; item++) {
      static thread_local std::vector<float> gradbuf;
      int n = item / nb, q0 = item % nb * qb, q1 = std::min(Q, q0 + qb), nq = q1 - q0;
      const float* dout_n = og.image(n, s, gradbuf);  // (K, P)
      float* d = dinp + (long long)n * s.C * Q + q0;  // (C, nq) inside (C, Q)
      sgemm_nn(s.C, nq, KKK, wt, KKK, 1, dout_n + q0, P, d, Q, nullptr, false);
    }
    return;
  }
  // dinp_n rows [y0, y1) = wt x the flipped windows of dout_n padded by (kh-1-ph, kw-1-pw): dcol_n's
  // column (h, w), row (k, i, j) is dout[k, h + ph - i, w + pw - j] (wide rows above).
  const int rb = wide_row_block(s.H, s.W + s.kw - 1, s.K, s.C, s.kh, s.N), nb = ceil_div(s.H, rb);
  const bool tiles = use_row_tiles(s.K);
  const RowTileA ta = tiles ? pack_row_tile_a(wt, KKK, 1, s.C, KKK, nullptr) : RowTileA{};
#pragma omp parallel for schedule(dynamic) if (parallel)
  for (int item = 0; item < s.N * nb; item++) {
    static thread_local WideBuffers bufs;
    static thread_local std::vector<float> gradbuf;
    const int n = item / nb, y0 = item % nb * rb, y1 = std::min(s.H, y0 + rb);
    const float* dout_n = og.image(n, s, gradbuf);  // (K, OH, OW)
    if (tiles) {
      row_tiles(dinp + (long long)n * s.C * Q + (long long)y0 * s.W, Q, ta, s.C, dout_n, s.K, s.OH, s.OW,
                s.kh - 1 - s.ph, s.kw - 1 - s.pw, s.kh, s.kw, true, s.W, y0, y1, false, bufs);
      continue;
    }
    wide_rows(dinp + (long long)n * s.C * Q, Q, 0, wt, KKK, 1, s.C, dout_n, s.K, s.OH, s.OW, s.kh - 1 - s.ph,
              s.kw - 1 - s.pw, s.kh, s.kw, true, s.W, y0, y1, nullptr, false, bufs);
  }
}

// At most this many image groups in the batch reduction of backward_weight: enough to keep 16
// threads busy, few enough that adding the partials up stays cheap.
static constexpr int kMaxGroups = 16;
// Each GEMM of backward_weight reduces over at least kCatPixels columns where it can: small
// images are laid side by side (their dout rows copied next to each other), because the cost of
// a call's start and end per output element is only amortized over a long reduction. The images
// of a call are as many as keep their whole im2col matrix under kMaxColFloats (4 MiB; only the
// strided form builds it whole: stride 1 builds it by rows, ColRows); a larger single image is
// cut into pixel blocks. The wide form (below) takes as many images as keep the call's wide
// gradient and padded planes under kWideFloats (1 MiB: 4 images of 32 channels at 28 x 28).
static constexpr int kCatPixels = 2048;
static constexpr long long kMaxColFloats = 1LL << 20;
static constexpr long long kWideFloats = 1LL << 18;

// The im2col matrix of nc consecutive images laid side by side (column m*P + p is image m's pixel
// p), as sgemm_nt_rows' NtRowsFn (one block). With AVX-512 and stride 1, its rows [j0, j0 + nr)
// are built in rowbuf when the GEMM asks for them, so that they are read from L1/L2: from the
// images' padded planes (made once by the constructor: nc x C planes in planebuf), each row (c, i,
// j) a run of window copies per image, as im2col makes it. Otherwise the whole matrix is built
// first, by im2col, and handed out by rows (under AVX2, building the rows group by group measured
// 3-10% slower with 2 threads on `deep`'s conv(64), though 4% faster with one).
class ColRows {
 public:
  ColRows(const float* inp, const Conv2dShape& s, int nc, std::vector<float>& rowbuf, std::vector<float>& planebuf)
      : s_(s), nc_(nc), width_(long(nc) * s.OH * s.OW), rowbuf_(rowbuf) {
    by_rows_ = cpu_isa() == CpuIsa::Avx512 && s.sh == 1 && s.sw == 1;
    const int P = s.OH * s.OW;
    if (by_rows_) {
      const int Hp = s.H + 2 * s.ph, Wp = s.W + 2 * s.pw;
      planes_ = scratch(planebuf, (size_t)nc * s.C * Hp * Wp + 16);  // (nc, C, Hp, Wp) and the slack
      pad_planes(planes_, inp, (long long)nc * s.C, s.H, s.W, s.ph, s.pw, Hp, Wp);
      return;
    }
    planes_ = scratch(planebuf, (size_t)s.C * s.kh * s.kw * width_);  // the whole matrix
    for (int m = 0; m < nc; m++) im2col(planes_ + m * P, width_, inp + (long long)m * s.C * s.H * s.W, s, 0, P, rowbuf);
  }
  static void fill(void* ctx, int j0, int nr, const float** rows) {
    const float* first = static_cast<const ColRows*>(ctx)->rows(j0, nr);
    for (int r = 0; r < nr; r++) rows[r] = first + r * static_cast<const ColRows*>(ctx)->width_;
  }

 private:
  // B's rows [j0, j0 + nr), width_ apart.
  const float* rows(int j0, int nr) const {
    const Conv2dShape& s = s_;
    const int P = s.OH * s.OW, KK = s.kh * s.kw;
    if (!by_rows_) return planes_ + j0 * width_;
    const int Hp = s.H + 2 * s.ph, Wp = s.W + 2 * s.pw;
    float* out = scratch(rowbuf_, (size_t)nr * width_ + 16);  // + the slack of image_windows_avx512
    for (int r = j0; r < j0 + nr; r++) {  // out in ascending order of addresses, as image_windows_avx512 needs
      const int c = r / KK, i = r % KK / s.kw, j = r % s.kw;
      for (int m = 0; m < nc_; m++)
        image_windows_avx512(out + (r - j0) * width_ + m * P, planes_ + ((long long)m * s.C + c) * Hp * Wp, Wp, s.OH,
                             s.OW, i, j);
    }
    return out;
  }
  const Conv2dShape& s_;
  int nc_;
  long width_;
  std::vector<float>& rowbuf_;
  bool by_rows_;
  float* planes_;  // by rows: (nc, C, Hp, Wp), else the whole (C*kh*kw, nc*P) matrix
};

// The wide form of backward-weight (stride 1): no im2col. As in the forward's wide rows, over an
// image's planes zero-padded in rows S apart (wide_stride: S = W + pw for a "same" conv), tap (c,
// i, j)'s window for output row oh is the run plane_c + (oh + i)*S + j + shift, so with the
// gradient laid out wide as well (gw (K, OH*S): row oh of channel k at k*ld + oh*S, then S - OW
// zeros), dW[k][(c, i, j)] is a plain product of gw's row k with the OH*S floats from plane_c +
// i*S + j + shift: B's row (c, i, j) is a pointer into the planes, nothing is copied. The zero
// columns meet values the reduction does not include (the next row's first pixels): each adds a
// +-0 product, which changes no sum of finite values (an inf or NaN there turns its channel's
// taps NaN, where the reference may keep them finite). The images of a call lie side by side in gw
// (image m's columns at m*cols), their planes one after another: the GEMM runs through them as the
// blocks of its reduction (sgemm_nt_rows), B's row (c, i, j) of image m at the same offset in m's
// planes.
// Each image's block of the reduction is its OH*S columns rounded up to a multiple of 8 (a block's
// tail of fewer than 8 lanes is a slow zero-padded step in every tile: 28 x 29 = 812 columns took
// 10% longer than 816), and each zero column is a multiply-add more: the wide form is taken where
// they are under 1/16 of the block (measured on `deep`'s convs before they took the lanes form
// below: 28 x 28, 32 of 816, wide; 14 x 14, 20 of 216, kept ColRows: there the wide form measured
// 4-14% slower, with 2 zero columns a row 6-10%). A function of the shape only.
struct WideGrad {
  bool on = false;       // the wide form is taken
  int S = 0, shift = 0;  // the planes' rows S apart, windows `shift` right of the plain layout (wide_stride)
  long long cols = 0;    // each image's block of the reduction
  long long plane = 0;   // floats per padded plane: its Hp rows, then the zero rows the runs read past
                         // it (up to kw - 2 + shift + 8 floats)
};
static WideGrad wide_weight_grad(const Conv2dShape& s) {
  WideGrad w;
  if (s.sh != 1 || s.sw != 1 || is_pointwise(s)) return w;
  w.S = wide_stride(s.W, s.pw, s.kw, s.OW, &w.shift);
  w.cols = ((long long)s.OH * w.S + 7) / 8 * 8;
  w.plane = (long long)(s.H + 2 * s.ph + ceil_div(s.kw - 1 + w.shift + 7, w.S)) * w.S;
  w.on = (w.cols - (long long)s.OH * s.OW) * 16 < w.cols;
  return w;
}

// rows[(c, i, j)] = plane c's window of tap (i, j) (planes `plane` floats apart, rows S apart).
static void wide_windows(const float** rows, const Conv2dShape& s, int S, int shift, long long plane,
                         const float* planes) {
  for (int c = 0; c < s.C; c++)
    for (int i = 0; i < s.kh; i++)
      for (int j = 0; j < s.kw; j++) *rows++ = planes + c * plane + (long long)i * S + j + shift;
}
// sgemm_nt_rows' fill from an array of all of B's row pointers (ctx).
static void rows_from_array(void* ctx, int j0, int nr, const float** rows) {
  const float* const* all = static_cast<const float* const*>(ctx);
  std::copy(all + j0, all + j0 + nr, rows);
}

// dst (K, cols), rows ld apart = g (K, OH*OW) laid out wide: each row of OW values followed by
// S - OW zeros, then zeros up to cols (>= OH*S).
static void widen(float* dst, long ld, const float* g, int K, int OH, int OW, int S, long long cols) {
  for (int k = 0; k < K; k++) {
    float* dk = dst + k * ld;
    for (int y = 0; y < OH; y++) {
      float* d = dk + (long long)y * S;
      std::memcpy(d, g + ((long long)k * OH + y) * OW, sizeof(float) * size_t(OW));
      std::fill(d + OW, d + S, 0.f);
    }
    std::fill(dk + (long long)OH * S, dk + cols, 0.f);
  }
}

// ---- one input channel, K a multiple of 16: backward-weight with the channels in the lanes ----
// With C = 1 (the first convs) dW[k][i][j] and the bias gradient are sums over the output pixels p
// of dout[k][p] times one value of p's patch (inp[oh + i - ph][ow + j - pw], and 1 for the bias:
// "tap" KK = kh*kw), only kh*kw + 1 terms per pixel and channel. As a GEMM over im2col (above)
// that takes the gradient expanded to every pixel, the im2col copy and a pass for the bias sums,
// each as costly as a fair part of the GEMM. Here a vector holds 16 channels' sums of one tap: per
// pixel, the gradient vectors of its channels (a row of the gradient transposed to (pixel,
// channel)) times its patch values broadcast from the zero-padded image, one FMA per (tap,
// vector); each weight is one chain of FMAs, nothing is added up across lanes. With the 2x2
// stride-2 max pooling fused, the pixel gradients come from the pooled ones (the winner's class
// in its window selects it, +0 elsewhere), so nothing is expanded.
//
// The order of each weight's sum (one chain): the images of a group in order; in each image the
// 2x2 cells (oh / 2, ow / 2) row by row, each cell's four pixels top-left, top-right,
// bottom-left, bottom-right; then the pixels of an odd last row or column (no cell) in pixel order.
// Then the groups in order, as backward_weight adds its partials. The fused and the unfused
// chain compute the same terms in the same order (every pixel's, the +0 ones too): the same bits,
// and under AVX2 (8 channels a vector) the same chains as under AVX-512.
static constexpr int kC1Stride = 64;  // the padded image's row stride in floats (patch offsets are constants)

// Where this form is used: a function of the shape (and of the ISA only between AVX2 / AVX-512,
// which give the same bits, and the baseline build's GEMM, which rounds differently anyway), so
// that the fused and the unfused ops of a net always take the same form. 3x3 and 5x5 kernels (the
// AVX-512 loops hold all 10 or 26 taps' accumulators for 32 channels, the patch offsets
// constants), K a multiple of 16 (whole vectors: `lenet5`'s K = 6 keeps the GEMM, which wastes
// no lanes), a padded row of at most kC1Stride floats.
static bool c1_lanes(const Conv2dShape& s) {
  const CpuIsa isa = cpu_isa();
  return (isa == CpuIsa::Avx2 || isa == CpuIsa::Avx512) && s.C == 1 && s.sh == 1 && s.sw == 1 &&
         ((s.kh == 5 && s.kw == 5) || (s.kh == 3 && s.kw == 3)) && s.K % 16 == 0 && s.W + 2 * s.pw <= kC1Stride;
}

// The pixels in the order of the sums: position i is pixel (oh, ow) with xo[i] = oh*kC1Stride + ow
// (its patch's corner in the padded image) and pos[oh*OW + ow] = i; the first 4*cells positions
// are the cells'.
struct C1Order {
  int cells = 0;
  std::vector<int32_t> xo, pos, corner;  // corner[w]: cell w's top-left pixel, 2*cy*OW + 2*cx
  explicit C1Order(const Conv2dShape& s) {
    const int CH = s.OH / 2, CW = s.OW / 2;
    cells = CH * CW;
    corner.assign(size_t(cells) + 16, 0);
    for (int w = 0; w < cells; w++) corner[size_t(w)] = 2 * (w / CW) * s.OW + 2 * (w % CW);
    std::vector<int32_t> pix;
    auto add = [&](int oh, int ow) { pix.push_back(oh * s.OW + ow), xo.push_back(oh * kC1Stride + ow); };
    for (int cy = 0; cy < CH; cy++)
      for (int cx = 0; cx < CW; cx++)
        for (int c = 0; c < 4; c++) add(2 * cy + (c >> 1), 2 * cx + (c & 1));
    for (int oh = 0; oh < s.OH; oh++)
      for (int ow = 0; ow < s.OW; ow++)
        if (oh >= 2 * CH || ow >= 2 * CW) add(oh, ow);
    pos.resize(pix.size());
    for (size_t i = 0; i < pix.size(); i++) pos[size_t(pix[i])] = int32_t(i);
  }
};

// dst (n rows, ldd apart) = the transpose of the 16 x n block src (rows lds apart), n <= 16; row i
// goes to dst + rows[i] * ldd where rows is given.
[[gnu::target("avx512f")]] static void transpose16(float* dst, long ldd, const float* src, long lds, int n,
                                                   const int32_t* rows) {
  const __mmask16 m = tail_mask(n);
  __m512 r[16];
  for (int i = 0; i < 16; i++) r[i] = _mm512_maskz_loadu_ps(m, src + i * lds);
  transpose16_regs(r);
  for (int i = 0; i < n; i++) _mm512_storeu_ps(dst + (rows ? rows[i] : i) * ldd, r[i]);
}
// The same, 8 x 8 with AVX2 (n <= 8).
[[gnu::target("avx2")]] static void transpose8(float* dst, long ldd, const float* src, long lds, int n,
                                               const int32_t* rows) {
  const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  __m256 r[8];
  for (int i = 0; i < 8; i++) r[i] = _mm256_maskload_ps(src + i * lds, m);
  transpose8_regs(r);
  for (int i = 0; i < n; i++) _mm256_storeu_ps(dst + (rows ? rows[i] : i) * ldd, r[i]);
}
// dst (cols, K) = src (K, cols) transposed (rows ld apart), K a multiple of 16; column j to row
// rows[j] where rows is given.
static void c1_transpose(float* dst, const float* src, long ld, int K, int cols, const int32_t* rows = nullptr) {
  const bool avx512 = cpu_isa() == CpuIsa::Avx512;
  const int B = avx512 ? 16 : 8;
  for (int k = 0; k < K; k += B)
    for (int p = 0; p < cols; p += B) {
      const int n = std::min(B, cols - p);
      const int32_t* rp = rows ? rows + p : nullptr;
      float* d = dst + (rows ? 0 : (long long)p * K) + k;
      if (avx512)
        transpose16(d, K, src + (long long)k * ld + p, ld, n, rp);
      else
        transpose8(d, K, src + (long long)k * ld + p, ld, n, rp);
    }
}

// c1_transpose of the ReLU's gradient (AVX-512): dst (cols, K) = relu_grad16(d, y) (K, cols)
// transposed (rows ld apart), column j to row rows[j]; the gradient made in registers, not first
// written out whole (OutGrad::image) and read back.
[[gnu::target("avx512f")]] static void c1_transpose_relu_avx512(float* dst, const float* d, const float* y, long ld,
                                                                int K, int cols, const int32_t* rows) {
  for (int k = 0; k < K; k += 16)
    for (int p = 0; p < cols; p += 16) {
      const int n = std::min(16, cols - p);
      const __mmask16 m = tail_mask(n);
      __m512 r[16];
      for (int i = 0; i < 16; i++) {
        const long long o = (long long)(k + i) * ld + p;
        r[i] = relu_grad16(_mm512_maskz_loadu_ps(m, d + o), _mm512_maskz_loadu_ps(m, y + o));
      }
      transpose16_regs(r);
      for (int i = 0; i < n; i++) _mm512_storeu_ps(dst + (long long)rows[p + i] * K + k, r[i]);
    }
}

// One block of c1_cells_avx512: 16 channels (rows `cells` apart) x n cells (16 where Full).
template <bool Full>
[[gnu::target("avx512f"), gnu::always_inline]] static inline void c1_cells_block(float* vt, uint8_t* dst,
                                                                                 const float* dp, const float* y,
                                                                                 const int32_t* m, int K, int cells,
                                                                                 int n, int OW, __m512i corner) {
  const __mmask16 mw = tail_mask(n);  // (plain loads where Full: masked ones are slower on this Zen 5)
  __m512 r[16];
  for (int i = 0; i < 16; i++)
    r[i] = pooled_grad16(Full ? _mm512_loadu_ps(dp + i * cells) : _mm512_maskz_loadu_ps(mw, dp + i * cells),
                         Full ? _mm512_loadu_ps(y + i * cells) : _mm512_maskz_loadu_ps(mw, y + i * cells));
  transpose16_regs(r);
  for (int i = 0; i < (Full ? 16 : n); i++) _mm512_storeu_ps(vt + (long long)i * K, r[i]);
  const __m512i ow_v = _mm512_set1_epi32(OW), shift = _mm512_set1_epi32(16 - OW);
  __m512i word[4];  // word[a] lane w: channels 4a .. 4a + 3's positions at cell w, a byte each
  for (int a = 0; a < 4; a++) {
    word[a] = _mm512_setzero_si512();
    for (int b = 0; b < 4; b++) {
      const int32_t* mi = m + (4 * a + b) * cells;
      __m512i at = _mm512_sub_epi32(Full ? _mm512_loadu_si512(mi) : _mm512_maskz_loadu_epi32(mw, mi), corner);
      at = _mm512_mask_add_epi32(at, _mm512_cmpge_epi32_mask(at, ow_v), at, shift);  // OW, OW + 1 -> 16, 17
      word[a] = _mm512_or_si512(word[a], _mm512_maskz_slli_epi32(0xFFFF, at, 8 * b));
    }
  }
  // Lane L of the 128-bit lanes of the four stores: the 16 bytes of cell 4L, then + 1, + 2, + 3.
  const __m512i u0 = _mm512_maskz_unpacklo_epi32(0xFFFF, word[0], word[1]),
                u1 = _mm512_maskz_unpackhi_epi32(0xFFFF, word[0], word[1]);
  const __m512i u2 = _mm512_maskz_unpacklo_epi32(0xFFFF, word[2], word[3]),
                u3 = _mm512_maskz_unpackhi_epi32(0xFFFF, word[2], word[3]);
  _mm512_storeu_si512(dst, _mm512_maskz_unpacklo_epi64(0xFF, u0, u2));
  _mm512_storeu_si512(dst + 64, _mm512_maskz_unpackhi_epi64(0xFF, u0, u2));
  _mm512_storeu_si512(dst + 128, _mm512_maskz_unpacklo_epi64(0xFF, u1, u3));
  _mm512_storeu_si512(dst + 192, _mm512_maskz_unpackhi_epi64(0xFF, u1, u3));
}
// From a fused 2x2 stride-2 max pooling's gradient dp, values y and mask m (K, cells): vt (cells,
// K), each window's gradient (expand_2x2_avx512's value: +0 + dp, the ReLU's mask applied), a
// cell's values for all channels in a row; and cb, where in its cell each window's winner lies, as
// c1_winners_avx512's permute index (0 top-left, 1 top-right, 16 bottom-left, 17 bottom-right),
// one byte per channel: cb (K / 16, cells rounded up to 16, 16) bytes, the cells of each 16 in
// the order c1_cell_slot gives. Blocks of 16 channels x 16 cells: the values computed along the
// cells and transposed in registers (4 x 16 two-source permutes); the positions, four channels'
// bytes packed in a 32-bit word, need only a 4 x 4 transpose of words (8 unpacks within the
// 128-bit lanes), which is what leaves the cells permuted. (Positions as floats, transposed like
// the values, took this function 25-35% longer in a lab of its own on the Zen 5; inside `paper`'s
// conv backward, where it also waits on the pooled tensors, less.)
[[gnu::target("avx512f")]] static void c1_cells_avx512(float* vt, uint8_t* cb, const float* dp, const float* y,
                                                       const int32_t* m, int K, int OW, const C1Order& ord) {
  const int cells = ord.cells, cpad = ceil_div(cells, 16) * 16;
  for (int k0 = 0; k0 < K; k0 += 16)
    for (int w0 = 0; w0 < cells; w0 += 16) {
      const long long e = (long long)k0 * cells + w0;
      const __m512i corner = _mm512_loadu_si512(ord.corner.data() + w0);
      float* v = vt + (long long)w0 * K + k0;
      uint8_t* c = cb + ((long long)(k0 / 16) * cpad + w0) * 16;
      if (cells - w0 >= 16)
        c1_cells_block<true>(v, c, dp + e, y + e, m + e, K, cells, 16, OW, corner);
      else
        c1_cells_block<false>(v, c, dp + e, y + e, m + e, K, cells, cells - w0, OW, corner);
    }
}
// Where cell w's 16 bytes lie in its channels' part of cb: cell 16h + 4L + j at slot 16h + 4j + L.
static inline int c1_cell_slot(int w) { return (w & ~15) | ((w & 3) << 2) | ((w >> 2) & 3); }
// 16 channels' positions from cb as 32-bit integers.
[[gnu::target("avx512f")]] static inline __m512i c1_codes(const uint8_t* p) {
  return _mm512_maskz_cvtepu8_epi32(0xFFFF, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
// v, c (K, cells) with AVX2: the windows' gradients as above and where the winners lie, 0 top-left,
// 1 top-right, 2 bottom-left, 3 bottom-right, as floats; along the cells (not transposed), 8 cells
// a vector: the last of a row loads its cells masked and stores all 8 lanes (the lanes past the
// row are written over by the next row, or land in the 8 floats of slack after v and c).
[[gnu::target("avx2")]] static void c1_cells_avx2(float* v, float* c, const float* dp, const float* y, const int32_t* m,
                                                  int K, int CH, int CW, int OW) {
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), two_l = _mm256_add_epi32(iota, iota);
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.f);
  const long long cells = (long long)CH * CW;
  for (int k = 0; k < K; k++)
    for (int cy = 0; cy < CH; cy++)
      for (int cx = 0; cx < CW; cx += 8) {
        const __m256i mw = _mm256_cmpgt_epi32(_mm256_set1_epi32(CW - cx), iota);
        const long long e = k * cells + (long long)cy * CW + cx;
        const __m256 d = _mm256_add_ps(zero, _mm256_maskload_ps(dp + e, mw));
        const __m256 keep = _mm256_and_ps(_mm256_cmp_ps(_mm256_maskload_ps(y + e, mw), zero, _CMP_GT_OQ), one);
        _mm256_storeu_ps(v + e, _mm256_mul_ps(d, keep));  // y > 0 ? d : 0 * d (NaN: 0 * d)
        __m256i at = _mm256_sub_epi32(_mm256_maskload_epi32(m + e, mw),
                                      _mm256_add_epi32(_mm256_set1_epi32(2 * cy * OW + 2 * cx), two_l));
        const __m256i bottom = _mm256_cmpgt_epi32(at, _mm256_set1_epi32(OW - 1));
        at = _mm256_add_epi32(at, _mm256_and_si256(bottom, _mm256_set1_epi32(2 - OW)));  // OW, OW + 1 -> 2, 3
        _mm256_storeu_ps(c + e, _mm256_cvtepi32_ps(at));
      }
}
// gt (P, K) in the order of the sums from the cells' vt and ct: each cell's four pixels, the
// window's gradient at its winner, +0 at the other three; +0 for the pixels past the cells.
[[gnu::target("avx2")]] static void c1_cell_rows_avx2(float* gt, const float* vt, const float* ct, const C1Order& ord,
                                                      int K, int P) {
  for (int w = 0; w < ord.cells; w++)
    for (int k = 0; k < K; k += 8) {
      const __m256 v = _mm256_loadu_ps(vt + (long long)w * K + k), c = _mm256_loadu_ps(ct + (long long)w * K + k);
      for (int q = 0; q < 4; q++)
        _mm256_storeu_ps(gt + (long long)(4 * w + q) * K + k,
                         _mm256_and_ps(_mm256_cmp_ps(c, _mm256_set1_ps(float(q)), _CMP_EQ_OQ), v));
    }
  std::fill(gt + (long long)4 * ord.cells * K, gt + (long long)P * K, 0.f);
}
// vt, ct (cells, K) from the pooled tensors with AVX2: v, c (K, cells) along the cells
// (c1_cells_avx2), then transposed. tmp: (2, K, cells) + 16 floats.
static void c1_cells_t_avx2(float* vt, float* ct, float* tmp, const float* dp, const float* y, const int32_t* m,
                            const Conv2dShape& s, const C1Order& ord) {
  const int cells = ord.cells;
  float *v = tmp, *c = tmp + (long long)s.K * cells + 8;
  c1_cells_avx2(v, c, dp, y, m, s.K, s.OH / 2, s.OW / 2, s.OW);
  c1_transpose(vt, v, cells, s.K, cells);
  c1_transpose(ct, c, cells, s.K, cells);
}

// acc (NT taps x NV vectors of 16 channels; a second vector +0 where NV is 1) from, or where Store
// to, A's rows t0 .. t0 + NT - 1 at channel k0.
template <int NT, int NV, bool Store>
[[gnu::target("avx512f"), gnu::always_inline]] static inline void c1_acc_avx512(__m512 (&acc)[NT][2], float* A, int K,
                                                                                int t0, int k0) {
#pragma GCC unroll 16
  for (int t = 0; t < NT; t++)
    for (int v = 0; v < 2; v++) {
      float* a = A + (long long)(t0 + t) * K + k0 + 16 * v;
      if (Store && v < NV)
        _mm512_storeu_ps(a, acc[t][v]);
      else if (!Store)
        acc[t][v] = v < NV ? _mm512_loadu_ps(a) : _mm512_setzero_ps();
    }
}

// A (TAPS, K) += one image's chains for the taps T0 .. T0 + NT - 1 (NT <= 13), 32 channels at a
// time (two vectors; 16 when K is 16). Pooled: the cells' gradients from vt / cb, +0 past them;
// else gt (P, K), the gradient transposed, its rows in the order of the sums.
template <int KW, int T0, int NT, bool Pooled, int NV>
[[gnu::target("avx512f,fma")]] static void c1_lanes_avx512_nv(float* A, const float* pl, const float* vt,
                                                              const uint8_t* cb, const float* gt, const C1Order& ord,
                                                              int K, int P, int k0) {
  constexpr int KK = KW * KW;
  __m512 acc[NT][2];  // (the loops over t unrolled, so that acc lives in registers, not on the stack)
  c1_acc_avx512<NT, NV, false>(acc, A, K, T0, k0);
  const int32_t* xo = ord.xo.data();
  const int cellpix = Pooled ? 4 * ord.cells : 0;
  const long long cpart = (long long)ceil_div(ord.cells, 16) * 16 * 16;  // bytes of cb per 16 channels
  __m512 v0 = _mm512_setzero_ps(), v1 = v0;
  __m512i c0 = _mm512_setzero_si512(), c1 = c0;
  for (int pos = 0; pos < P; pos++) {
    __m512 g0, g1;
    if (Pooled) {
      if (pos < cellpix) {
        const int q = pos & 3;
        if (q == 0) {  // the cell's windows: values and where the winners lie
          const int w = pos >> 2;
          const long long e = (long long)w * K + k0;
          const uint8_t* cp = cb + (k0 / 16) * cpart + c1_cell_slot(w) * 16;
          v0 = _mm512_loadu_ps(vt + e), c0 = c1_codes(cp);
          if (NV == 2) v1 = _mm512_loadu_ps(vt + e + 16), c1 = c1_codes(cp + cpart);
        }
        const __m512i qv = _mm512_set1_epi32((q & 1) + 8 * (q & 2));  // cb's 0, 1, 16, 17
        g0 = _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(c0, qv), v0);
        g1 = _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(c1, qv), v1);
      } else {
        g0 = g1 = _mm512_setzero_ps();
      }
    } else {
      const float* gp = gt + (long long)pos * K + k0;
      g0 = _mm512_loadu_ps(gp);
      g1 = NV == 2 ? _mm512_loadu_ps(gp + 16) : _mm512_setzero_ps();
    }
    const float* xb = pl + xo[pos];
#pragma GCC unroll 16
    for (int t = 0; t < NT; t++) {
      const int tap = T0 + t;
      const __m512 x = tap < KK ? _mm512_set1_ps(xb[(tap / KW) * kC1Stride + tap % KW]) : _mm512_set1_ps(1.f);
      acc[t][0] = _mm512_fmadd_ps(x, g0, acc[t][0]);
      if (NV == 2) acc[t][1] = _mm512_fmadd_ps(x, g1, acc[t][1]);
    }
  }
  c1_acc_avx512<NT, NV, true>(acc, A, K, T0, k0);
}
template <int KW, int T0, int NT, bool Pooled>
static void c1_lanes_avx512(float* A, const float* pl, const float* vt, const uint8_t* cb, const float* gt,
                            const C1Order& ord, int K, int P) {
  for (int k0 = 0; k0 < K; k0 += 32)
    (K - k0 >= 32 ? c1_lanes_avx512_nv<KW, T0, NT, Pooled, 2>
                  : c1_lanes_avx512_nv<KW, T0, NT, Pooled, 1>)(A, pl, vt, cb, gt, ord, K, P, k0);
}
// acc (NT taps x 16 channels) from, or where Store to, A's rows t0 .. t0 + NT - 1 at channel k0.
template <int NT, bool Store>
[[gnu::target("avx2"), gnu::always_inline]] static inline void c1_acc_avx2(__m256 (&acc)[NT][2], float* A, int K,
                                                                           int t0, int k0) {
#pragma GCC unroll 8
  for (int t = 0; t < NT; t++)
    for (int v = 0; v < 2; v++) {
      float* a = A + (long long)(t0 + t) * K + k0 + 8 * v;
      if (Store)
        _mm256_storeu_ps(a, acc[t][v]);
      else
        acc[t][v] = _mm256_loadu_ps(a);
    }
}
// The same chains with AVX2: 16 channels (two 8-float vectors) x NT <= 6 taps a pass, the taps
// t0 .. t0 + NT - 1, the last of them the bias where Bias (the passes split the channels and the
// taps, which changes no chain); gt (P, K) the gradient in the order of the sums.
template <int NT, bool Bias>
[[gnu::target("avx2,fma")]] static void c1_lanes_avx2(float* A, const float* pl, const float* gt, const C1Order& ord,
                                                      int K, int P, int KW, int t0, int k0) {
  long off[NT];
  for (int t = 0; t < NT; t++) off[t] = ((t0 + t) / KW) * kC1Stride + (t0 + t) % KW;
  __m256 acc[NT][2];  // (the loops over t unrolled, so that acc lives in registers, not on the stack)
  c1_acc_avx2<NT, false>(acc, A, K, t0, k0);
  const int32_t* xo = ord.xo.data();
  for (int pos = 0; pos < P; pos++) {
    const float* gp = gt + (long long)pos * K + k0;
    const __m256 g0 = _mm256_loadu_ps(gp), g1 = _mm256_loadu_ps(gp + 8);
    const float* xb = pl + xo[pos];
#pragma GCC unroll 8
    for (int t = 0; t < NT; t++) {
      const __m256 x = Bias && t == NT - 1 ? _mm256_set1_ps(1.f) : _mm256_broadcast_ss(xb + off[t]);
      acc[t][0] = _mm256_fmadd_ps(x, g0, acc[t][0]);
      acc[t][1] = _mm256_fmadd_ps(x, g1, acc[t][1]);
    }
  }
  c1_acc_avx2<NT, true>(acc, A, K, t0, k0);
}
// f(nt, bias, t0, k0) for each 16 channels k0 and each pass over the taps t0 .. t0 + nt - 1 of
// kh * kw + 1 (the last the bias, in the last pass): equal passes of at most max_nt taps.
template <class F>
static void c1_avx2_passes(const Conv2dShape& s, int max_nt, F f) {
  const int TAPS = s.kh * s.kw + 1, passes = ceil_div(TAPS, max_nt);
  for (int k0 = 0; k0 < s.K; k0 += 16)
    for (int p = 0, t0 = 0; p < passes; p++) {
      const int nt = (TAPS - t0) / (passes - p);  // 26 taps as 5 + 5 + 5 + 5 + 6 (max 6), 3 + 3 + 4 x 5 (max 4)
      f(nt, p == passes - 1, t0, k0);
      t0 += nt;
    }
}
static void c1_lanes_avx2_all(float* A, const float* pl, const float* gt, const C1Order& ord, const Conv2dShape& s) {
  const int P = s.OH * s.OW;
  c1_avx2_passes(s, 6, [&](int nt, bool bias, int t0, int k0) {
    with_size<6>(nt, [&](auto n) {
      constexpr int NT = decltype(n)::value;
      (bias ? c1_lanes_avx2<NT, true> : c1_lanes_avx2<NT, false>)(A, pl, gt, ord, s.K, P, s.kw, t0, k0);
    });
  });
}

// The winners-only chains (c1_winners_avx512 below, where the reasoning is) with AVX2: 16 channels
// (two 8-float vectors) x NT <= 4 taps a pass (16 ymm registers: 2 NT accumulators, the two
// vectors of gradients and of places, the four values), the taps t0 .. t0 + NT - 1, the last of
// them the bias where Bias. A tap's four values for the cell (top row j, j + 1, bottom row j,
// j + 1: two 8-byte loads) are picked lane by lane by the winner's place (ct, 0 to 3) with one
// single-source permute per vector. The same chains as c1_lanes_avx2's over a finite image.
template <int NT, bool Bias>
[[gnu::target("avx2,fma")]] static void c1_winners_avx2(float* A, const float* pl, const float* vt, const float* ct,
                                                        const C1Order& ord, int K, int KW, int t0, int k0) {
  long off[NT];
  for (int t = 0; t < NT; t++) off[t] = ((t0 + t) / KW) * kC1Stride + (t0 + t) % KW;
  __m256 acc[NT][2];  // (the loops over t unrolled, so that acc lives in registers, not on the stack)
  c1_acc_avx2<NT, false>(acc, A, K, t0, k0);
  for (int w = 0; w < ord.cells; w++) {
    const long long e = (long long)w * K + k0;
    const __m256 v0 = _mm256_loadu_ps(vt + e), v1 = _mm256_loadu_ps(vt + e + 8);
    const __m256i q0 = _mm256_cvttps_epi32(_mm256_loadu_ps(ct + e)),
                  q1 = _mm256_cvttps_epi32(_mm256_loadu_ps(ct + e + 8));
    const float* xb = pl + ord.xo[size_t(4 * w)];  // the cell's top-left pixel's window
#pragma GCC unroll 8
    for (int t = 0; t < NT; t++) {
      if (Bias && t == NT - 1) {
        acc[t][0] = _mm256_fmadd_ps(_mm256_set1_ps(1.f), v0, acc[t][0]);
        acc[t][1] = _mm256_fmadd_ps(_mm256_set1_ps(1.f), v1, acc[t][1]);
        continue;
      }
      const __m128i top = _mm_loadu_si64(xb + off[t]), bottom = _mm_loadu_si64(xb + off[t] + kC1Stride);
      const __m256 src = _mm256_zextps128_ps256(_mm_castsi128_ps(_mm_unpacklo_epi64(top, bottom)));
      acc[t][0] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(src, q0), v0, acc[t][0]);
      acc[t][1] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(src, q1), v1, acc[t][1]);
    }
  }
  c1_acc_avx2<NT, true>(acc, A, K, t0, k0);
}
static void c1_winners_avx2_all(float* A, const float* pl, const float* vt, const float* ct, const C1Order& ord,
                                const Conv2dShape& s) {
  c1_avx2_passes(s, 4, [&](int nt, bool bias, int t0, int k0) {
    with_size<4>(nt, [&](auto n) {
      constexpr int NT = decltype(n)::value;
      (bias ? c1_winners_avx2<NT, true> : c1_winners_avx2<NT, false>)(A, pl, vt, ct, ord, s.K, s.kw, t0, k0);
    });
  });
}

// The pooled chains with the winners only (AVX-512). Of a cell's four pixels only the window's
// winner has a gradient other than +0, and which pixel that is varies from channel to channel.
// So a cell adds one FMA per tap to each vector of 16 channels: the window's gradient (vt) times,
// in each lane, the tap's value at that channel's winner, picked by one two-source permute from
// the cell's two padded rows at the tap's row (16 floats each from the cell's left column; lane
// index cb + the tap's column: 0, 1 the top row, 16, 17 the bottom one). A quarter of the FMAs of
// c1_lanes_avx512, whose other three quarters add products with +0; otherwise the same chains
// of the same terms in the same order, and so the same bits where those products are +-0 (a
// finite image): a sum starts at +0 and never becomes -0, and adding +-0 to it changes nothing.
// (Under FTZ a sum flushed to -0 could have been turned into +0 by such a term: a zero's sign.)
// Pixels outside the cells (odd OH, OW) have gradient +0 and no term here either. The rows read
// 16 floats from the cell's left column: up to 15 past the padded plane's end (the caller's
// slack), never picked. Taps T0 .. T0 + NT - 1, NT <= 10 (passes of 9 for 5x5: 13 spilled).
template <int KW, int T0, int NT, int NV>
[[gnu::target("avx512f,fma")]] static void c1_winners_avx512_nv(float* A, const float* pl, const float* vt,
                                                                const uint8_t* cb, const C1Order& ord, int K, int k0) {
  constexpr int KK = KW * KW;
  __m512 acc[NT][2];  // (the loops over t unrolled, so that acc lives in registers, not on the stack)
  c1_acc_avx512<NT, NV, false>(acc, A, K, T0, k0);
  const long long cpart = (long long)ceil_div(ord.cells, 16) * 16 * 16;  // bytes of cb per 16 channels
  for (int w = 0; w < ord.cells; w++) {
    const long long e = (long long)w * K + k0;
    const uint8_t* cp = cb + (k0 / 16) * cpart + c1_cell_slot(w) * 16;
    const __m512 v0 = _mm512_loadu_ps(vt + e), v1 = NV == 2 ? _mm512_loadu_ps(vt + e + 16) : _mm512_setzero_ps();
    const __m512i i0 = c1_codes(cp), i1 = NV == 2 ? c1_codes(cp + cpart) : _mm512_setzero_si512();
    const float* xb = pl + ord.xo[size_t(4 * w)];  // the cell's top-left pixel's window
#pragma GCC unroll 16
    for (int t = 0; t < NT; t++) {
      const int tap = T0 + t;
      if (tap < KK) {
        const float* x = xb + (tap / KW) * kC1Stride;
        const __m512 r0 = _mm512_loadu_ps(x), r1 = _mm512_loadu_ps(x + kC1Stride);
        const __m512i j = _mm512_set1_epi32(tap % KW);
        acc[t][0] = _mm512_fmadd_ps(_mm512_permutex2var_ps(r0, _mm512_add_epi32(i0, j), r1), v0, acc[t][0]);
        if (NV == 2)
          acc[t][1] = _mm512_fmadd_ps(_mm512_permutex2var_ps(r0, _mm512_add_epi32(i1, j), r1), v1, acc[t][1]);
      } else {  // the bias: x = 1 at every pixel
        acc[t][0] = _mm512_fmadd_ps(_mm512_set1_ps(1.f), v0, acc[t][0]);
        if (NV == 2) acc[t][1] = _mm512_fmadd_ps(_mm512_set1_ps(1.f), v1, acc[t][1]);
      }
    }
  }
  c1_acc_avx512<NT, NV, true>(acc, A, K, T0, k0);
}
template <int KW, int T0, int NT>
static void c1_winners_avx512(float* A, const float* pl, const float* vt, const uint8_t* cb, const C1Order& ord,
                              int K) {
  for (int k0 = 0; k0 < K; k0 += 32)
    (K - k0 >= 32 ? c1_winners_avx512_nv<KW, T0, NT, 2> : c1_winners_avx512_nv<KW, T0, NT, 1>)(A, pl, vt, cb, ord, K,
                                                                                               k0);
}
// Whether the n floats at x are all finite (no inf, no NaN): their exponent bits not all ones.
static bool all_finite(const float* x, long long n) {
  const __m128i exp = _mm_set1_epi32(0x7F800000);
  __m128i bad = _mm_setzero_si128();
  long long i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m128i e = _mm_and_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)), exp);
    bad = _mm_or_si128(bad, _mm_cmpeq_epi32(e, exp));
  }
  bool ok = _mm_movemask_epi8(bad) == 0;
  for (; i < n; i++) ok = ok && std::isfinite(x[i]);
  return ok;
}

// One image's chains added to A: from gt (P, K), or under AVX-512 where Pooled from vt and cb.
template <bool Pooled>
static void c1_lanes_image(float* A, const float* pl, const float* vt, const uint8_t* cb, const float* gt,
                           const C1Order& ord, const Conv2dShape& s) {
  const int K = s.K, P = s.OH * s.OW;
  // (AVX2: the pooled gradient comes as gt too, rows first: 16 ymm registers hold no more)
  if (cpu_isa() != CpuIsa::Avx512) return c1_lanes_avx2_all(A, pl, gt, ord, s);
  if (s.kw == 5) {  // 26 taps: two passes of 13 (26 accumulators)
    c1_lanes_avx512<5, 0, 13, Pooled>(A, pl, vt, cb, gt, ord, K, P);
    c1_lanes_avx512<5, 13, 13, Pooled>(A, pl, vt, cb, gt, ord, K, P);
  } else {  // 10 taps: one pass
    c1_lanes_avx512<3, 0, 10, Pooled>(A, pl, vt, cb, gt, ord, K, P);
  }
}

static void backward_weight_c1(float* dweight, float* dbias, const OutGrad& og, const float* inp,
                               const Conv2dShape& s) {
  const int P = s.OH * s.OW, KK = s.kh * s.kw, TAPS = KK + 1;
  const long long AN = (long long)TAPS * s.K;  // one group's chains (TAPS, K)
  const int G = ceil_div(s.N, kMaxGroups), ngroups = ceil_div(s.N, G);
  const Pool2dShape* ps = og.pool;
  const bool pooled = ps && ps->kh == 2 && ps->kw == 2 && ps->sh == 2 && ps->sw == 2;
  const C1Order ord(s);
  static thread_local std::vector<float> accbuf;
  float* acc = scratch(accbuf, size_t(ngroups * AN));
#pragma omp parallel if (conv2d_macs(s) >= kMinParallelWork)
  {
#pragma omp for schedule(dynamic)
    for (int g = 0; g < ngroups; g++) {
      static thread_local std::vector<float> planebuf, tbuf, gradbuf;
      float* a = acc + g * AN;
      std::fill(a, a + AN, 0.f);
      float* pl = scratch(planebuf, size_t(s.H + 2 * s.ph) * kC1Stride + 16);  // + c1_winners_avx512's slack
      const long long cells = ord.cells, cpad = ceil_div(ord.cells, 16) * 16;
      float* t = scratch(tbuf, size_t(P * s.K + 4 * cells * s.K + s.K * cpad / 4 + 128));
      for (int n = g * G; n < std::min(s.N, g * G + G); n++) {
        // pl (Hp, kC1Stride): the image zero-padded by (ph, pw) (the zeros written for the group's first)
        pad_plane(pl, inp + (long long)n * s.H * s.W, s.H, s.W, s.ph, s.pw, s.H + 2 * s.ph, kC1Stride, n > g * G);
        if (pooled) {
          const long long off = (long long)n * s.K * ps->OH * ps->OW;
          const float *dp = og.dout + off, *y = og.relu_out + off;
          const int32_t* m = og.mask + off;
          // vt, ct (cells, K), tmp (2, K, cells) + 16, gt (P, K), cb (K * cpad bytes)
          float *vt = t, *ct = vt + cells * s.K + 16, *tmp = ct + cells * s.K + 16, *gt = tmp + 2 * cells * s.K + 16;
          uint8_t* cb = reinterpret_cast<uint8_t*>(gt + P * s.K + 16);
          const bool finite = all_finite(inp + (long long)n * s.H * s.W, (long long)s.H * s.W);  // else x * +0 is NaN
          if (cpu_isa() != CpuIsa::Avx512) {
            c1_cells_t_avx2(vt, ct, tmp, dp, y, m, s, ord);
            if (finite) {
              c1_winners_avx2_all(a, pl, vt, ct, ord, s);
            } else {
              c1_cell_rows_avx2(gt, vt, ct, ord, s.K, P);
              c1_lanes_image<true>(a, pl, vt, cb, gt, ord, s);
            }
            continue;
          }
          c1_cells_avx512(vt, cb, dp, y, m, s.K, s.OW, ord);
          if (!finite) {
            c1_lanes_image<true>(a, pl, vt, cb, gt, ord, s);
          } else if (s.kw == 5) {  // 26 taps: three passes (18 accumulators)
            c1_winners_avx512<5, 0, 9>(a, pl, vt, cb, ord, s.K);
            c1_winners_avx512<5, 9, 9>(a, pl, vt, cb, ord, s.K);
            c1_winners_avx512<5, 18, 8>(a, pl, vt, cb, ord, s.K);
          } else {  // 10 taps: one pass
            c1_winners_avx512<3, 0, 10>(a, pl, vt, cb, ord, s.K);
          }
        } else {
          float* gt = t;  // in the order of the sums
          const long long off = (long long)n * s.K * P;
          if (og.relu_out && !og.pool && cpu_isa() == CpuIsa::Avx512)  // the ReLU alone
            c1_transpose_relu_avx512(gt, og.dout + off, og.relu_out + off, P, s.K, P, ord.pos.data());
          else
            c1_transpose(gt, og.image(n, s, gradbuf), P, s.K, P, ord.pos.data());
          c1_lanes_image<false>(a, pl, nullptr, nullptr, gt, ord, s);
        }
      }
    }
    // implicit barrier: every group's chains are complete
#pragma omp for schedule(static)
    for (int k = 0; k < s.K; k++)
      for (int t = 0; t < TAPS; t++) {  // t == KK: the bias
        float sum = acc[(long long)t * s.K + k];
        for (int g = 1; g < ngroups; g++) sum += acc[g * AN + (long long)t * s.K + k];
        if (t < KK)
          dweight[(long long)k * KK + t] = sum;
        else if (dbias)
          dbias[k] = sum;
      }
  }
}

// ---- stride 1, K a multiple of 32: backward-weight with the channels in the lanes ----
// dW^T (CKK, K) in vectors of channels: tap t = (c, i, j) x L channels (16 under AVX-512, 8 under
// AVX2) is one vector of sums, and each output pixel adds one FMA to it: the pixel's value of
// the tap, broadcast from the image's padded planes (read in place, rows S apart as in the wide
// form), times the pixel's gradient for the L channels (the gradient transposed to (pixel,
// channel), gT). A tile is RT tap rows (c, i) x kw taps x NV = 2 vectors: 24 accumulators
// under AVX-512 for 3x3 (20 for 5x5), 12 (10) under AVX2; each tap row is one pointer, the taps of
// the row constant offsets from it. No im2col, no wide gradient, no lane sums to add up, no
// column computed and dropped.
// The order of each weight's sum (one chain of FMAs): the images of a group in order, each
// image's output pixels in order (row by row), starting from +0; then the groups in order, as
// backward_weight adds its partials. The same chain under AVX2 and AVX-512 (the tiles only change
// which sums are computed together). A function of the shape only (not taken under the generic
// ISA, which keeps the im2col GEMM).
static bool lanes_weight_grad(const Conv2dShape& s) {
  return s.sh == 1 && s.sw == 1 && !is_pointwise(s) && s.K % 32 == 0 && (s.kw == 3 || s.kw == 5) &&
         cpu_isa() != CpuIsa::Generic;
}

// part (T = RT*KW taps, rows K apart; the tile's first channel at part) (+)= the taps' sums over one
// image: rp[rt] the padded plane row of tap row rt (pixel (y, x) of tap j at rp[rt][y*S + x + j]),
// gT the gradient's first channel of the tile (pixel p's at gT + p*K). first: start from +0.
template <typename V, int RT, int KW, int NV>
[[gnu::always_inline]] inline void lanes_tile(float* part, int K, const float* const* rp, const float* gT, int OH,
                                              int OW, int S, bool first) {
  constexpr int L = kLanes<V>, T = RT * KW;
  V acc[T][NV];
#pragma GCC unroll 16
  for (int t = 0; t < T; t++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) acc[t][v] = first ? V{} : loadv<V>(part + (long long)t * K + v * L);
  const float* r[RT];
#pragma GCC unroll 8
  for (int rt = 0; rt < RT; rt++) r[rt] = rp[rt];
  for (int y = 0; y < OH; y++) {
    const float* g = gT + (long long)y * OW * K;
    for (int x = y * S, xe = y * S + OW; x < xe; x++, g += K) {
      V gv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) gv[v] = loadv<V>(g + v * L);
#pragma GCC unroll 8
      for (int rt = 0; rt < RT; rt++)
#pragma GCC unroll 8
        for (int j = 0; j < KW; j++) {
          const float b = r[rt][x + j];
          V bv;
          if constexpr (L == 16)
            bv = V{b, b, b, b, b, b, b, b, b, b, b, b, b, b, b, b};
          else
            bv = V{b, b, b, b, b, b, b, b};
#pragma GCC unroll 4
          for (int v = 0; v < NV; v++) acc[rt * KW + j][v] += bv * gv[v];
        }
    }
  }
#pragma GCC unroll 16
  for (int t = 0; t < T; t++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) storev<V>(part + (long long)t * K + v * L, acc[t][v]);
}
// lanes_tile for the first n <= RT tap rows.
template <typename V, int RT, int KW, int NV>
[[gnu::always_inline]] inline void lanes_tile_n(int n, float* part, int K, const float* const* rp, const float* gT,
                                                int OH, int OW, int S, bool first) {
  if constexpr (RT > 1)
    if (n < RT) return lanes_tile_n<V, RT - 1, KW, NV>(n, part, K, rp, gT, OH, OW, S, first);
  lanes_tile<V, RT, KW, NV>(part, K, rp, gT, OH, OW, S, first);
}
// One image: part (CKK, K) (+)= its taps' sums. planes: its C padded planes, `plane` floats apart,
// rows S apart, the windows `shift` right of the plain layout (WideGrad).
template <typename V, int KW>
[[gnu::always_inline]] inline void lanes_image(float* part, const float* planes, const WideGrad& wg, const float* gT,
                                               const Conv2dShape& s, bool first) {
  constexpr int L = kLanes<V>, NV = 2, RT = (L == 16 ? 12 : 6) / KW;
  const int rows = s.C * s.kh;  // tap rows (c, i)
  for (int k0 = 0; k0 < s.K; k0 += NV * L)
    for (int tr = 0; tr < rows; tr += RT) {
      const int n = std::min(RT, rows - tr);
      const float* rp[RT];
      for (int q = 0; q < n; q++) {
        const int c = (tr + q) / s.kh, i = (tr + q) % s.kh;
        rp[q] = planes + c * wg.plane + (long long)i * wg.S + wg.shift;
      }
      lanes_tile_n<V, RT, KW, NV>(n, part + (long long)tr * KW * s.K + k0, s.K, rp, gT + k0, s.OH, s.OW, wg.S, first);
    }
}
[[gnu::target("avx512f,avx2,fma")]] static void lanes_image_avx512(float* part, const float* planes, const WideGrad& wg,
                                                                   const float* gT, const Conv2dShape& s, bool first) {
  if (s.kw == 3)  // (called, not through a pointer: inlined into this target's code)
    lanes_image<v16f, 3>(part, planes, wg, gT, s, first);
  else
    lanes_image<v16f, 5>(part, planes, wg, gT, s, first);
}
[[gnu::target("avx2,fma")]] static void lanes_image_avx2(float* part, const float* planes, const WideGrad& wg,
                                                         const float* gT, const Conv2dShape& s, bool first) {
  if (s.kw == 3)  // (called, not through a pointer: inlined into this target's code)
    lanes_image<v8f, 3>(part, planes, wg, gT, s, first);
  else
    lanes_image<v8f, 5>(part, planes, wg, gT, s, first);
}

static void backward_weight(float* dweight, float* dbias, const OutGrad& og, const float* inp, const Conv2dShape& s) {
  // dweight (K, C, kh, kw), overwritten; dbias (K) or null; the conv's gradient (N, K, OH, OW)
  // from og; inp (N, C, H, W)
  const int P = s.OH * s.OW, CKK = s.C * s.kh * s.kw;
  const long long WN = (long long)s.K * CKK;
  const bool parallel = conv2d_macs(s) >= kMinParallelWork;
  if (s.N == 0) {
    std::fill(dweight, dweight + WN, 0.f);
    if (dbias) std::fill(dbias, dbias + s.K, 0.f);
    return;
  }
  if (c1_lanes(s)) return backward_weight_c1(dweight, dbias, og, inp, s);
  const int G = ceil_div(s.N, kMaxGroups), ngroups = ceil_div(s.N, G);
  const WideGrad wg = wide_weight_grad(s);
  const bool lanes = lanes_weight_grad(s);  // then the partials are transposed: (CKK, K)
  const bool pointwise = is_pointwise(s), wide = wg.on && !lanes;
  // seg: pixels of one image per GEMM (all of them unless col would be too large);
  // cat: whole images side by side per GEMM (wide: as many as keep the call's gw and planes within
  // kWideFloats). Functions of the shape only.
  const int seg = pointwise || wide ? P : int(std::min<long long>(P, std::max(64LL, kMaxColFloats / CKK)));
  int cat = 1;
  if (wide)
    cat = int(std::max(1LL, std::min<long long>(G, kWideFloats / (s.K * wg.cols + s.C * wg.plane))));
  else if (!pointwise && seg == P)
    cat = int(std::max(1LL, std::min<long long>({ceil_div(kCatPixels, P), G, kMaxColFloats / ((long long)CKK * P)})));
  // partial (ngroups, K, CKK): group g's sum; with one group it is dweight itself. The lanes form:
  // (ngroups, CKK, K), always apart from dweight, transposed into it at the end.
  // bsum (N, K): each image's bias gradient, the sum of its dout row, taken while the row is in
  // cache from the GEMM; the bias adds them up in image order at the end.
  static thread_local std::vector<float> partbuf, bsumbuf;
  float* partial = ngroups == 1 && !lanes ? dweight : scratch(partbuf, (size_t)ngroups * WN);
  float* bsum = dbias ? scratch(bsumbuf, (size_t)s.N * s.K) : nullptr;
  auto bias_sums = [&](int n, const float* g, long ld) {  // g (K, P), rows ld apart: image n's gradient
    if (bsum) {
      float* bn = bsum + (long long)n * s.K;
      int k = 0;
      for (; k + 4 <= s.K; k += 4) sum_lanes_4rows(g + k * ld, ld, P, bn + k);
      for (; k < s.K; k++) bn[k] = sum_lanes(g + k * ld, P);
    }
  };
#pragma omp parallel if (parallel)
  {
#pragma omp for schedule(dynamic)
    for (int g = 0; g < ngroups; g++) {
      static thread_local std::vector<float> colbuf, planebuf, doutbuf, gradbuf;
      static thread_local std::vector<const float*> rowbuf;
      float* pg = partial + g * WN;  // (K, CKK); the lanes form (CKK, K)
      bool first = true;
      const int n_end = std::min(s.N, g * G + G);
      if (lanes) {
        const bool avx512 = cpu_isa() == CpuIsa::Avx512;
        for (int n = g * G; n < n_end; n++, first = false) {
          float* g1 = scratch(gradbuf, size_t(s.K) * P);
          og.image_into(n, s, g1, P);
          bias_sums(n, g1, P);
          float* gT = scratch(doutbuf, size_t(s.K) * P);
          c1_transpose(gT, g1, P, s.K, P);
          float* planes = scratch(planebuf, size_t(s.C * wg.plane) + 16);  // + pad_planes' slack
          pad_planes(planes, inp + (long long)n * s.C * s.H * s.W, s.C, s.H, s.W, s.ph, s.pw + wg.shift,
                     int(wg.plane / wg.S), wg.S);
          (avx512 ? lanes_image_avx512 : lanes_image_avx2)(pg, planes, wg, gT, s, first);
        }
        continue;
      }
      for (int n0 = g * G; n0 < n_end; n0 += cat) {
        const int nc = std::min(cat, n_end - n0);
        const float* inp0 = inp + (long long)n0 * s.C * s.H * s.W;  // (nc, C, H, W)
        if (wide) {
          // gw (K, nc*cols) and the planes (nc, C, plane / S rows of S), one image per K block
          const long long width = nc * wg.cols;
          float* gw = scratch(doutbuf, size_t(s.K * width));
          float* g1 = scratch(gradbuf, size_t(s.K) * P);
          for (int m = 0; m < nc; m++) {
            og.image_into(n0 + m, s, g1, P);
            bias_sums(n0 + m, g1, P);
            widen(gw + m * wg.cols, width, g1, s.K, s.OH, s.OW, wg.S, wg.cols);
          }
          float* planes = scratch(planebuf, size_t(nc * s.C * wg.plane) + 16);  // + pad_planes' slack
          pad_planes(planes, inp0, (long long)nc * s.C, s.H, s.W, s.ph, s.pw + wg.shift, int(wg.plane / wg.S), wg.S);
          rowbuf.resize(size_t(CKK));
          wide_windows(rowbuf.data(), s, wg.S, wg.shift, wg.plane, planes);
          sgemm_nt_rows(s.K, CKK, int(width), gw, width, rows_from_array, rowbuf.data(), int(wg.cols), s.C * wg.plane,
                        pg, CKK, !first);
          first = false;
          continue;
        }
        if (!pointwise && seg == P) {
          // nc whole images side by side: dcat (K, nc*P) and col (CKK, nc*P), col's rows built by
          // ColRows when the GEMM is about to read them; the same values and the same GEMM (the
          // same bits) as with col built first.
          const int width = nc * P;
          float* dcat = scratch(doutbuf, (size_t)s.K * width);
          for (int m = 0; m < nc; m++) {  // image m's gradient (K, P) written into its columns
            og.image_into(n0 + m, s, dcat + m * P, width);
            bias_sums(n0 + m, dcat + m * P, width);
          }
          ColRows cr(inp0, s, nc, colbuf, planebuf);
          sgemm_nt_rows(s.K, CKK, width, dcat, width, ColRows::fill, &cr, width, 0, pg, CKK, !first);
          first = false;
          continue;
        }
        const float* dout_n = og.image(n0, s, gradbuf);  // (K, P)
        bias_sums(n0, dout_n, P);
        for (int p0 = 0; p0 < P; p0 += seg) {
          int p1 = std::min(P, p0 + seg), np = p1 - p0;
          long ldcol;
          const float* col = image_columns(inp0, s, pointwise, p0, p1, colbuf, planebuf, &ldcol);  // (CKK, np)
          sgemm_nt(s.K, CKK, np, dout_n + p0, P, col, ldcol, pg, CKK, !first);
          first = false;
        }
      }
    }
    // implicit barrier: every partial is complete
    if (lanes) {
      // dweight[k][t] = partial 0 + partial 1 + ... in group order, the partials (CKK, K): a tap's
      // row of channels at a time, added as vectors, then written to the channels' rows
#pragma omp for schedule(static)
      for (int t = 0; t < CKK; t++) {
        float row[1024];
        const float* p0 = partial + (long long)t * s.K;
        for (int k0 = 0; k0 < s.K; k0 += 1024) {
          const int n = std::min(1024, s.K - k0);
          std::copy(p0 + k0, p0 + k0 + n, row);
          for (int g = 1; g < ngroups; g++) {
            const float* pg = p0 + g * WN + k0;
#pragma omp simd
            for (int k = 0; k < n; k++) row[k] += pg[k];
          }
          for (int k = 0; k < n; k++) dweight[(long long)(k0 + k) * CKK + t] = row[k];
        }
      }
    } else if (ngroups > 1) {
      // dweight[e] = partial 0 + partial 1 + ... in group order, a chunk of elements at a time so
      // that each add is a vector over the chunk (one element at a time, a chain of scalar adds
      // 147 KiB apart, was 7% of `deep`'s conv(64) weight gradient)
      constexpr long long kChunk = 256;
#pragma omp for schedule(static)
      for (long long e0 = 0; e0 < WN; e0 += kChunk) {
        const long long n = std::min(kChunk, WN - e0);
        float* out = dweight + e0;
        std::copy(partial + e0, partial + e0 + n, out);
        for (int g = 1; g < ngroups; g++) {
          const float* pg = partial + g * WN + e0;
#pragma omp simd
          for (long long e = 0; e < n; e++) out[e] += pg[e];
        }
      }
    }
    if (dbias) {
#pragma omp for schedule(static)
      for (int k = 0; k < s.K; k++) {
        float acc = 0.f;
        for (int n = 0; n < s.N; n++) acc += bsum[(long long)n * s.K + k];
        dbias[k] = acc;
      }
    }
  }
}

void conv2d_backward_input(float* dinp, const float* dout, const float* weight, const Conv2dShape& s,
                           const float* relu_out) {
  check_conv2d_shape(s, "cpu::conv2d_backward_input");
  backward_input(dinp, OutGrad{dout, relu_out}, weight, s);
}

void conv2d_backward_weight(float* dweight, float* dbias, const float* dout, const float* inp, const Conv2dShape& s,
                            const float* relu_out) {
  check_conv2d_shape(s, "cpu::conv2d_backward_weight");
  backward_weight(dweight, dbias, OutGrad{dout, relu_out}, inp, s);
}

void conv2d_backward_input_relu_maxpool(float* dinp, const float* dpooled, const float* pooled, const int32_t* mask,
                                        const float* weight, const Conv2dShape& s, const Pool2dShape& ps) {
  check_fused_pool(s, ps, "cpu::conv2d_backward_input_relu_maxpool");
  backward_input(dinp, OutGrad{dpooled, pooled, mask, &ps}, weight, s);
}

void conv2d_backward_weight_relu_maxpool(float* dweight, float* dbias, const float* dpooled, const float* pooled,
                                         const int32_t* mask, const float* inp, const Conv2dShape& s,
                                         const Pool2dShape& ps) {
  check_fused_pool(s, ps, "cpu::conv2d_backward_weight_relu_maxpool");
  backward_weight(dweight, dbias, OutGrad{dpooled, pooled, mask, &ps}, inp, s);
}

}  // namespace barecnn::cpu
