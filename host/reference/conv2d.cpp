// CPU reference of 2-D convolution (docs/MATH.md, "Convolution"): the readable specification that
// gpu::conv2d_* in kernels/conv2d.cu is checked against.
//
// Layouts: inp (N, C, H, W), weight (K, C, kh, kw) [OIHW, as torch.nn.Conv2d], out (N, K, OH, OW).
// The operation is a cross-correlation (no kernel flip), as in every deep-learning framework:
//
//   out[n,k,oh,ow] = bias[k] + sum_{c,i,j} inp[n, c, oh*sh - ph + i, ow*sw - pw + j] * weight[k,c,i,j]
//
// with inp = 0 outside [0,H) x [0,W) (zero padding). All index math goes through the helpers of
// shape.h (nchw, window_in_pos, window_out_pos), the very ones the CUDA kernels call.
//
// Determinism: every output element is summed by exactly one thread, in a fixed loop order, so the
// result does not depend on the number of OpenMP threads.
#include "barecnn/error.h"
#include "barecnn/ref_ops.h"
#include "barecnn/shape.h"

namespace barecnn::ref {

// The output size must be the eq. (2.1) size of the input; a mismatch is a caller bug.
static void check_conv2d_shape(const Conv2dShape& s, const char* op) {
  BARECNN_ASSERT(
      s.N >= 0 && s.C >= 1 && s.K >= 1 && s.kh >= 1 && s.kw >= 1 && s.sh >= 1 && s.sw >= 1 && s.ph >= 0 && s.pw >= 0,
      op, ": bad shape ", s.str());
  BARECNN_ASSERT(s.OH == window_out_size(s.H, s.kh, s.sh, s.ph) && s.OW == window_out_size(s.W, s.kw, s.sw, s.pw), op,
                 ": output size does not follow eq. (2.1) for ", s.str());
}

// Below this many multiply-adds a call runs on one thread: waking the OpenMP team costs more
// than it saves (tiny layers, and the thousands of small calls of a gradient check).
static constexpr long long kMinParallelWork = 1LL << 16;
static long long conv2d_macs(const Conv2dShape& s) { return s.out_numel() * s.C * s.kh * s.kw; }

template <typename T>
void conv2d_forward(T* out, const T* inp, const T* weight, const T* bias, const Conv2dShape& s) {
  // out (N, K, OH, OW); inp (N, C, H, W); weight (K, C, kh, kw); bias (K) or null
  check_conv2d_shape(s, "conv2d_forward");
#pragma omp parallel for schedule(static) if (conv2d_macs(s) >= kMinParallelWork)
  for (int n = 0; n < s.N; n++) {
    for (int k = 0; k < s.K; k++) {
      for (int oh = 0; oh < s.OH; oh++) {
        for (int ow = 0; ow < s.OW; ow++) {
          T acc = bias ? bias[k] : T(0);
          for (int c = 0; c < s.C; c++) {
            for (int i = 0; i < s.kh; i++) {
              int ih = window_in_pos(oh, i, s.sh, s.ph);
              if (ih < 0 || ih >= s.H) continue;  // tap lies in the zero padding
              for (int j = 0; j < s.kw; j++) {
                int iw = window_in_pos(ow, j, s.sw, s.pw);
                if (iw < 0 || iw >= s.W) continue;
                acc += inp[nchw(n, c, ih, iw, s.C, s.H, s.W)] * weight[nchw(k, c, i, j, s.C, s.kh, s.kw)];
              }
            }
          }
          out[nchw(n, k, oh, ow, s.K, s.OH, s.OW)] = acc;
        }
      }
    }
  }
}

// dinp[n,c,h,w] = sum over (k, i, j) of dout[n,k,oh,ow] * weight[k,c,i,j] for the output position
// (oh, ow) whose window reads input (h, w) through tap (i, j), if there is one. This is the gather
// form (one sum per input pixel, no scatter, so no write conflicts); for stride 1 it equals the
// "full" correlation of dout with the flipped kernel (docs/MATH.md). gpu::conv2d_backward_input
// runs the same loop, one thread per input pixel.
template <typename T>
void conv2d_backward_input(T* dinp, const T* dout, const T* weight, const Conv2dShape& s) {
  // dinp (N, C, H, W), overwritten; dout (N, K, OH, OW); weight (K, C, kh, kw)
  check_conv2d_shape(s, "conv2d_backward_input");
#pragma omp parallel for schedule(static) if (conv2d_macs(s) >= kMinParallelWork)
  for (int n = 0; n < s.N; n++) {
    for (int c = 0; c < s.C; c++) {
      for (int h = 0; h < s.H; h++) {
        for (int w = 0; w < s.W; w++) {
          T acc = T(0);
          for (int k = 0; k < s.K; k++) {
            for (int i = 0; i < s.kh; i++) {
              int oh = window_out_pos(h, i, s.sh, s.ph, s.OH);
              if (oh < 0) continue;  // no output row reads row h through tap row i
              for (int j = 0; j < s.kw; j++) {
                int ow = window_out_pos(w, j, s.sw, s.pw, s.OW);
                if (ow < 0) continue;
                acc += dout[nchw(n, k, oh, ow, s.K, s.OH, s.OW)] * weight[nchw(k, c, i, j, s.C, s.kh, s.kw)];
              }
            }
          }
          dinp[nchw(n, c, h, w, s.C, s.H, s.W)] = acc;
        }
      }
    }
  }
}

// dweight[k,c,i,j] = sum over (n, oh, ow) of dout[n,k,oh,ow] * inp[n, c, oh*sh - ph + i, ow*sw - pw + j]
// dbias[k]         = sum over (n, oh, ow) of dout[n,k,oh,ow]
// Parallel over output channels k: each weight is summed by one thread over the whole batch.
template <typename T>
void conv2d_backward_weight(T* dweight, T* dbias, const T* dout, const T* inp, const Conv2dShape& s) {
  // dweight (K, C, kh, kw), overwritten; dbias (K) or null; dout (N, K, OH, OW); inp (N, C, H, W)
  check_conv2d_shape(s, "conv2d_backward_weight");
#pragma omp parallel for schedule(static) if (conv2d_macs(s) >= kMinParallelWork)
  for (int k = 0; k < s.K; k++) {
    if (dbias) {
      T acc = T(0);
      for (int n = 0; n < s.N; n++)
        for (int oh = 0; oh < s.OH; oh++)
          for (int ow = 0; ow < s.OW; ow++) acc += dout[nchw(n, k, oh, ow, s.K, s.OH, s.OW)];
      dbias[k] = acc;
    }
    for (int c = 0; c < s.C; c++) {
      for (int i = 0; i < s.kh; i++) {
        for (int j = 0; j < s.kw; j++) {
          T acc = T(0);
          for (int n = 0; n < s.N; n++) {
            for (int oh = 0; oh < s.OH; oh++) {
              int ih = window_in_pos(oh, i, s.sh, s.ph);
              if (ih < 0 || ih >= s.H) continue;  // this tap read padding: contributes 0
              for (int ow = 0; ow < s.OW; ow++) {
                int iw = window_in_pos(ow, j, s.sw, s.pw);
                if (iw < 0 || iw >= s.W) continue;
                acc += dout[nchw(n, k, oh, ow, s.K, s.OH, s.OW)] * inp[nchw(n, c, ih, iw, s.C, s.H, s.W)];
              }
            }
          }
          dweight[nchw(k, c, i, j, s.C, s.kh, s.kw)] = acc;
        }
      }
    }
  }
}

#define BARECNN_INSTANTIATE_CONV2D(T)                                                    \
  template void conv2d_forward<T>(T*, const T*, const T*, const T*, const Conv2dShape&); \
  template void conv2d_backward_input<T>(T*, const T*, const T*, const Conv2dShape&);    \
  template void conv2d_backward_weight<T>(T*, T*, const T*, const T*, const Conv2dShape&);
BARECNN_INSTANTIATE_CONV2D(float)
BARECNN_INSTANTIATE_CONV2D(double)
#undef BARECNN_INSTANTIATE_CONV2D

}  // namespace barecnn::ref
