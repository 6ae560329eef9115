// CPU reference of 2-D pooling (docs/MATH.md, "Pooling"): max, average and L2-norm pooling, the
// specification that gpu::*pool2d_* in kernels/pool2d.cu is checked against.
//
// Layouts: inp (N, C, H, W), out (N, C, OH, OW). Window (oh, ow) covers rows [oh*sh, oh*sh + kh)
// and columns [ow*sw, ow*sw + kw); there is no padding, so every window lies inside the input.
// Windows may overlap (stride < k) and may leave the last rows/columns or the gaps between windows
// uncovered (stride > k, or sizes that do not divide): such inputs get a zero gradient.
//
// Every backward pass is a gather: each input pixel sums over the windows that contain it
// (pool_out_range of shape.h), in the fixed order oh, ow ascending. No scatter, so no write
// conflicts and no dependence on the number of threads, as in the CUDA kernels.
#include <cmath>

#include "barecnn/error.h"
#include "barecnn/ref_ops.h"
#include "barecnn/shape.h"

namespace barecnn::ref {

static void check_pool2d_shape(const Pool2dShape& s, const char* op) {
  BARECNN_ASSERT(s.N >= 0 && s.C >= 1 && s.kh >= 1 && s.kw >= 1 && s.sh >= 1 && s.sw >= 1 && s.H >= s.kh && s.W >= s.kw,
                 op, ": bad shape ", s.str());
  BARECNN_ASSERT(s.OH == window_out_size(s.H, s.kh, s.sh, 0) && s.OW == window_out_size(s.W, s.kw, s.sw, 0), op,
                 ": output size does not follow eq. (2.1) for ", s.str());
}

// Below this many window reads a call runs on one thread: waking the OpenMP team costs more than
// it saves (small layers, and the thousands of small calls of a gradient check).
static constexpr long long kMinParallelWork = 1LL << 16;
static long long pool2d_reads(const Pool2dShape& s) { return s.out_numel() * s.kh * s.kw; }

// ---- max pooling ----

// out[n,c,oh,ow] = the largest value in the window; mask[n,c,oh,ow] = its flat index h*W + w in
// the (n, c) plane. The scan is row-major with a strict '>', so on ties the first index wins
// (the GPU kernel scans in the same order and gives the same mask).
template <typename T>
void maxpool2d_forward(T* out, int32_t* mask, const T* inp, const Pool2dShape& s) {
  // out (N, C, OH, OW); mask (N, C, OH, OW); inp (N, C, H, W)
  check_pool2d_shape(s, "maxpool2d_forward");
#pragma omp parallel for schedule(static) if (pool2d_reads(s) >= kMinParallelWork)
  for (int n = 0; n < s.N; n++) {
    for (int c = 0; c < s.C; c++) {
      const T* plane = inp + nchw(n, c, 0, 0, s.C, s.H, s.W);  // (H, W)
      for (int oh = 0; oh < s.OH; oh++) {
        for (int ow = 0; ow < s.OW; ow++) {
          int h0 = oh * s.sh, w0 = ow * s.sw;  // top-left corner of the window
          int best_idx = h0 * s.W + w0;
          T best = plane[best_idx];
          for (int i = 0; i < s.kh; i++) {
            for (int j = 0; j < s.kw; j++) {
              int idx = (h0 + i) * s.W + (w0 + j);
              if (plane[idx] > best) {
                best = plane[idx];
                best_idx = idx;
              }
            }
          }
          long long o = nchw(n, c, oh, ow, s.C, s.OH, s.OW);
          out[o] = best;
          mask[o] = best_idx;
        }
      }
    }
  }
}

// dinp[n,c,h,w] = sum of dout[n,c,oh,ow] over the windows that contain (h, w) and chose it as
// their maximum (mask == h*W + w). A pixel that wins several overlapping windows collects all
// of their gradients.
template <typename T>
void maxpool2d_backward(T* dinp, const T* dout, const int32_t* mask, const Pool2dShape& s) {
  // dinp (N, C, H, W), overwritten; dout (N, C, OH, OW); mask (N, C, OH, OW)
  check_pool2d_shape(s, "maxpool2d_backward");
#pragma omp parallel for schedule(static) if (pool2d_reads(s) >= kMinParallelWork)
  for (int n = 0; n < s.N; n++) {
    for (int c = 0; c < s.C; c++) {
      for (int h = 0; h < s.H; h++) {
        int oh_lo, oh_hi;
        pool_out_range(h, s.kh, s.sh, s.OH, &oh_lo, &oh_hi);
        for (int w = 0; w < s.W; w++) {
          int ow_lo, ow_hi;
          pool_out_range(w, s.kw, s.sw, s.OW, &ow_lo, &ow_hi);
          int32_t self = h * s.W + w;
          T acc = T(0);
          for (int oh = oh_lo; oh < oh_hi; oh++) {
            for (int ow = ow_lo; ow < ow_hi; ow++) {
              long long o = nchw(n, c, oh, ow, s.C, s.OH, s.OW);
              if (mask[o] == self) acc += dout[o];
            }
          }
          dinp[nchw(n, c, h, w, s.C, s.H, s.W)] = acc;
        }
      }
    }
  }
}

// ---- average pooling ----

// out[n,c,oh,ow] = (1 / (kh*kw)) * sum of the window. The divisor is always the full window
// size: windows never reach into padding, so there is nothing to exclude.
template <typename T>
void avgpool2d_forward(T* out, const T* inp, const Pool2dShape& s) {
  // out (N, C, OH, OW); inp (N, C, H, W)
  check_pool2d_shape(s, "avgpool2d_forward");
  const T scale = T(1) / T(s.kh * s.kw);
#pragma omp parallel for schedule(static) if (pool2d_reads(s) >= kMinParallelWork)
  for (int n = 0; n < s.N; n++) {
    for (int c = 0; c < s.C; c++) {
      for (int oh = 0; oh < s.OH; oh++) {
        for (int ow = 0; ow < s.OW; ow++) {
          T acc = T(0);
          for (int i = 0; i < s.kh; i++)
            for (int j = 0; j < s.kw; j++) acc += inp[nchw(n, c, oh * s.sh + i, ow * s.sw + j, s.C, s.H, s.W)];
          out[nchw(n, c, oh, ow, s.C, s.OH, s.OW)] = acc * scale;
        }
      }
    }
  }
}

// dinp[n,c,h,w] = (1 / (kh*kw)) * sum of dout over the windows that contain (h, w).
template <typename T>
void avgpool2d_backward(T* dinp, const T* dout, const Pool2dShape& s) {
  // dinp (N, C, H, W), overwritten; dout (N, C, OH, OW)
  check_pool2d_shape(s, "avgpool2d_backward");
  const T scale = T(1) / T(s.kh * s.kw);
#pragma omp parallel for schedule(static) if (pool2d_reads(s) >= kMinParallelWork)
  for (int n = 0; n < s.N; n++) {
    for (int c = 0; c < s.C; c++) {
      for (int h = 0; h < s.H; h++) {
        int oh_lo, oh_hi;
        pool_out_range(h, s.kh, s.sh, s.OH, &oh_lo, &oh_hi);
        for (int w = 0; w < s.W; w++) {
          int ow_lo, ow_hi;
          pool_out_range(w, s.kw, s.sw, s.OW, &ow_lo, &ow_hi);
          T acc = T(0);
          for (int oh = oh_lo; oh < oh_hi; oh++)
            for (int ow = ow_lo; ow < ow_hi; ow++) acc += dout[nchw(n, c, oh, ow, s.C, s.OH, s.OW)];
          dinp[nchw(n, c, h, w, s.C, s.H, s.W)] = acc * scale;
        }
      }
    }
  }
}

// ---- L2-norm pooling ----

// out[n,c,oh,ow] = sqrt(sum of x^2 over the window).
template <typename T>
void l2pool2d_forward(T* out, const T* inp, const Pool2dShape& s) {
  // out (N, C, OH, OW); inp (N, C, H, W)
  check_pool2d_shape(s, "l2pool2d_forward");
#pragma omp parallel for schedule(static) if (pool2d_reads(s) >= kMinParallelWork)
  for (int n = 0; n < s.N; n++) {
    for (int c = 0; c < s.C; c++) {
      for (int oh = 0; oh < s.OH; oh++) {
        for (int ow = 0; ow < s.OW; ow++) {
          T acc = T(0);
          for (int i = 0; i < s.kh; i++) {
            for (int j = 0; j < s.kw; j++) {
              T x = inp[nchw(n, c, oh * s.sh + i, ow * s.sw + j, s.C, s.H, s.W)];
              acc += x * x;
            }
          }
          out[nchw(n, c, oh, ow, s.C, s.OH, s.OW)] = std::sqrt(acc);
        }
      }
    }
  }
}

// d out / d x = x / out for each x in the window, so
//   dinp[n,c,h,w] = sum over the windows containing (h, w) of dout * x[h,w] / out.
// Guard: out == 0 only when every x of the window is 0. There the norm is not differentiable
// (it is a cone, like |x| at 0) and x / out is 0/0; we take the subgradient 0, which is what
// torch.linalg.vector_norm's backward returns for a zero vector. Without the guard one all-zero
// window (e.g. after a ReLU) would turn the whole gradient into NaN.
template <typename T>
void l2pool2d_backward(T* dinp, const T* dout, const T* inp, const T* out, const Pool2dShape& s) {
  // dinp (N, C, H, W), overwritten; dout (N, C, OH, OW); inp (N, C, H, W); out (N, C, OH, OW)
  check_pool2d_shape(s, "l2pool2d_backward");
#pragma omp parallel for schedule(static) if (pool2d_reads(s) >= kMinParallelWork)
  for (int n = 0; n < s.N; n++) {
    for (int c = 0; c < s.C; c++) {
      for (int h = 0; h < s.H; h++) {
        int oh_lo, oh_hi;
        pool_out_range(h, s.kh, s.sh, s.OH, &oh_lo, &oh_hi);
        for (int w = 0; w < s.W; w++) {
          int ow_lo, ow_hi;
          pool_out_range(w, s.kw, s.sw, s.OW, &ow_lo, &ow_hi);
          long long in_idx = nchw(n, c, h, w, s.C, s.H, s.W);
          T x = inp[in_idx];
          T acc = T(0);
          for (int oh = oh_lo; oh < oh_hi; oh++) {
            for (int ow = ow_lo; ow < ow_hi; ow++) {
              long long o = nchw(n, c, oh, ow, s.C, s.OH, s.OW);
              if (out[o] > T(0)) acc += dout[o] * x / out[o];  // out == 0: subgradient 0 (see above)
            }
          }
          dinp[in_idx] = acc;
        }
      }
    }
  }
}

#define BARECNN_INSTANTIATE_POOL2D(T)                                                    \
  template void maxpool2d_forward<T>(T*, int32_t*, const T*, const Pool2dShape&);        \
  template void maxpool2d_backward<T>(T*, const T*, const int32_t*, const Pool2dShape&); \
  template void avgpool2d_forward<T>(T*, const T*, const Pool2dShape&);                  \
  template void avgpool2d_backward<T>(T*, const T*, const Pool2dShape&);                 \
  template void l2pool2d_forward<T>(T*, const T*, const Pool2dShape&);                   \
  template void l2pool2d_backward<T>(T*, const T*, const T*, const T*, const Pool2dShape&);
BARECNN_INSTANTIATE_POOL2D(float)
BARECNN_INSTANTIATE_POOL2D(double)
#undef BARECNN_INSTANTIATE_POOL2D

}  // namespace barecnn::ref
