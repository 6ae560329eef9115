// CUDA kernels of 2-D pooling (docs/MATH.md, "Pooling"): max (with an argmax mask), average and
// L2-norm pooling, forward and backward. The specification is host/reference/pool2d.cpp; the
// kernels run its loops, one thread per output (forward) or per input pixel (backward), with the
// same index helpers of shape.h (window_in_pos, pool_out_range).
//
// Layouts, NCHW: inp/dinp (N, C, H, W); out/dout/mask (N, C, OH, OW). Window (oh, ow) covers rows
// [oh*sh, oh*sh + kh) and columns [ow*sw, ow*sw + kw); no padding. Every backward pass is a
// gather over the windows that contain the pixel, in the fixed order oh, ow ascending: no
// atomics, deterministic, and pixels that no window covers get 0.
//
// All kernels: block 256, 1-D, grid-stride loop over the elements they produce in NCHW order;
// any shape (no divisibility rules). A pooling window is small, so one thread per element keeps
// the loads coalesced across ow and needs no shared memory.
#include <cstdint>

#include "barecnn/cuda_check.h"
#include "barecnn/error.h"
#include "barecnn/gpu_ops.h"
#include "barecnn/shape.h"
#include "launch.cuh"

namespace barecnn {

namespace {

constexpr int kPoolBlock = 256;

// Thread: output (n, c, oh, ow) = idx; scans its window row-major with a strict '>', so on ties
// the first index wins, exactly as the reference; the scan starts from the window's first element
// (not -inf), as the reference does. Writes the value and its flat index h*W + w in the (n, c)
// plane.
__global__ void maxpool2d_forward_kernel(float* out, int32_t* mask, const float* inp, Pool2dShape s, long long total) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int ow = int(idx % s.OW);
    const long long r = idx / s.OW;
    const int oh = int(r % s.OH);
    const long long nc = r / s.OH;              // n*C + c
    const float* plane = inp + nc * s.H * s.W;  // (H, W)
    const int h0 = window_in_pos(oh, 0, s.sh, 0), w0 = window_in_pos(ow, 0, s.sw, 0);
    int best_idx = h0 * s.W + w0;
    float best = plane[best_idx];
    for (int i = 0; i < s.kh; ++i) {
      for (int j = 0; j < s.kw; ++j) {
        const int e = (h0 + i) * s.W + (w0 + j);
        const float v = plane[e];
        if (v > best) {
          best = v;
          best_idx = e;
        }
      }
    }
    out[idx] = best;
    mask[idx] = best_idx;
  }
}

// Thread: input pixel (n, c, h, w) = idx; sums dout over the windows of pool_out_range(h) x
// pool_out_range(w) whose mask chose this pixel.
__global__ void maxpool2d_backward_kernel(float* dinp, const float* dout, const int32_t* mask, Pool2dShape s,
                                          long long total) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int w = int(idx % s.W);
    const long long r = idx / s.W;
    const int h = int(r % s.H);
    const long long nc = r / s.H;
    int oh_lo, oh_hi, ow_lo, ow_hi;
    pool_out_range(h, s.kh, s.sh, s.OH, &oh_lo, &oh_hi);
    pool_out_range(w, s.kw, s.sw, s.OW, &ow_lo, &ow_hi);
    const int32_t self = h * s.W + w;
    const long long base = nc * s.OH * s.OW;  // start of the (n, c) plane of dout and mask
    float acc = 0.f;
    for (int oh = oh_lo; oh < oh_hi; ++oh) {
      for (int ow = ow_lo; ow < ow_hi; ++ow) {
        const long long o = base + (long long)oh * s.OW + ow;
        if (mask[o] == self) acc += dout[o];
      }
    }
    dinp[idx] = acc;
  }
}

// Thread: output idx = (n, c, oh, ow); out = (sum of the window) * (1 / (kh*kw)), as the reference.
__global__ void avgpool2d_forward_kernel(float* out, const float* inp, Pool2dShape s, long long total) {
  const float scale = 1.f / float(s.kh * s.kw);
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int ow = int(idx % s.OW);
    const long long r = idx / s.OW;
    const int oh = int(r % s.OH);
    const float* plane = inp + (r / s.OH) * s.H * s.W;  // (H, W)
    float acc = 0.f;
    for (int i = 0; i < s.kh; ++i) {
      const int ih = window_in_pos(oh, i, s.sh, 0);
      for (int j = 0; j < s.kw; ++j) acc += plane[ih * s.W + window_in_pos(ow, j, s.sw, 0)];
    }
    out[idx] = acc * scale;
  }
}

// Thread: input pixel idx = (n, c, h, w); dinp = (sum of dout over the windows containing it) / (kh*kw).
__global__ void avgpool2d_backward_kernel(float* dinp, const float* dout, Pool2dShape s, long long total) {
  const float scale = 1.f / float(s.kh * s.kw);
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int w = int(idx % s.W);
    const long long r = idx / s.W;
    const int h = int(r % s.H);
    int oh_lo, oh_hi, ow_lo, ow_hi;
    pool_out_range(h, s.kh, s.sh, s.OH, &oh_lo, &oh_hi);
    pool_out_range(w, s.kw, s.sw, s.OW, &ow_lo, &ow_hi);
    const float* plane = dout + (r / s.H) * s.OH * s.OW;  // (OH, OW)
    float acc = 0.f;
    for (int oh = oh_lo; oh < oh_hi; ++oh)
      for (int ow = ow_lo; ow < ow_hi; ++ow) acc += plane[oh * s.OW + ow];
    dinp[idx] = acc * scale;
  }
}

// Thread: output idx = (n, c, oh, ow); out = sqrt(sum of x^2 over the window).
__global__ void l2pool2d_forward_kernel(float* out, const float* inp, Pool2dShape s, long long total) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int ow = int(idx % s.OW);
    const long long r = idx / s.OW;
    const int oh = int(r % s.OH);
    const float* plane = inp + (r / s.OH) * s.H * s.W;  // (H, W)
    float acc = 0.f;
    for (int i = 0; i < s.kh; ++i) {
      const int ih = window_in_pos(oh, i, s.sh, 0);
      for (int j = 0; j < s.kw; ++j) {
        const float x = plane[ih * s.W + window_in_pos(ow, j, s.sw, 0)];
        acc += x * x;
      }
    }
    out[idx] = sqrtf(acc);
  }
}

// Thread: input pixel idx = (n, c, h, w); dinp = sum over the windows containing it of
// dout * x / out. Windows with out == 0 (all of their inputs 0) contribute 0, the subgradient the
// reference takes (see host/reference/pool2d.cpp): without the guard one all-zero window would
// make the gradient NaN.
__global__ void l2pool2d_backward_kernel(float* dinp, const float* dout, const float* inp, const float* out,
                                         Pool2dShape s, long long total) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int w = int(idx % s.W);
    const long long r = idx / s.W;
    const int h = int(r % s.H);
    int oh_lo, oh_hi, ow_lo, ow_hi;
    pool_out_range(h, s.kh, s.sh, s.OH, &oh_lo, &oh_hi);
    pool_out_range(w, s.kw, s.sw, s.OW, &ow_lo, &ow_hi);
    const long long base = (r / s.H) * s.OH * s.OW;  // start of the (n, c) plane of dout and out
    const float x = inp[idx];
    float acc = 0.f;
    for (int oh = oh_lo; oh < oh_hi; ++oh) {
      for (int ow = ow_lo; ow < ow_hi; ++ow) {
        const long long o = base + (long long)oh * s.OW + ow;
        const float y = out[o];
        if (y > 0.f) acc += dout[o] * x / y;
      }
    }
    dinp[idx] = acc;
  }
}

void check_pool2d_shape(const Pool2dShape& s, const char* op) {
  BARECNN_ASSERT(s.N >= 0 && s.C >= 1 && s.kh >= 1 && s.kw >= 1 && s.sh >= 1 && s.sw >= 1 && s.H >= s.kh && s.W >= s.kw,
                 op, ": bad shape ", s.str());
  BARECNN_ASSERT(s.OH == window_out_size(s.H, s.kh, s.sh, 0) && s.OW == window_out_size(s.W, s.kw, s.sw, 0), op,
                 ": output size does not follow eq. (2.1) for ", s.str());
}

}  // namespace

namespace gpu {

void maxpool2d_forward(float* out, int32_t* mask, const float* inp, const Pool2dShape& s, cudaStream_t stream) {
  // out (N, C, OH, OW); mask (N, C, OH, OW); inp (N, C, H, W)
  NvtxRange range("maxpool2d_forward");
  check_pool2d_shape(s, "maxpool2d_forward");
  const long long total = s.out_numel();
  if (total == 0) return;
  BARECNN_ASSERT(out != nullptr && mask != nullptr && inp != nullptr, "maxpool2d_forward: null pointer for ", s.str());
  BARECNN_LAUNCH(maxpool2d_forward_kernel, grid_for(total, kPoolBlock), kPoolBlock, 0, stream, out, mask, inp, s,
                 total);
  CUDA_CHECK_LAUNCH("maxpool2d_forward", s.str());
}

void maxpool2d_backward(float* dinp, const float* dout, const int32_t* mask, const Pool2dShape& s,
                        cudaStream_t stream) {
  // dinp (N, C, H, W), overwritten; dout (N, C, OH, OW); mask (N, C, OH, OW)
  NvtxRange range("maxpool2d_backward");
  check_pool2d_shape(s, "maxpool2d_backward");
  const long long total = s.in_numel();
  if (dinp == nullptr || total == 0) return;  // null gradient: not needed
  BARECNN_ASSERT(dout != nullptr && mask != nullptr, "maxpool2d_backward: null pointer for ", s.str());
  BARECNN_LAUNCH(maxpool2d_backward_kernel, grid_for(total, kPoolBlock), kPoolBlock, 0, stream, dinp, dout, mask, s,
                 total);
  CUDA_CHECK_LAUNCH("maxpool2d_backward", s.str());
}

void avgpool2d_forward(float* out, const float* inp, const Pool2dShape& s, cudaStream_t stream) {
  // out (N, C, OH, OW); inp (N, C, H, W)
  NvtxRange range("avgpool2d_forward");
  check_pool2d_shape(s, "avgpool2d_forward");
  const long long total = s.out_numel();
  if (total == 0) return;
  BARECNN_ASSERT(out != nullptr && inp != nullptr, "avgpool2d_forward: null pointer for ", s.str());
  BARECNN_LAUNCH(avgpool2d_forward_kernel, grid_for(total, kPoolBlock), kPoolBlock, 0, stream, out, inp, s, total);
  CUDA_CHECK_LAUNCH("avgpool2d_forward", s.str());
}

void avgpool2d_backward(float* dinp, const float* dout, const Pool2dShape& s, cudaStream_t stream) {
  // dinp (N, C, H, W), overwritten; dout (N, C, OH, OW)
  NvtxRange range("avgpool2d_backward");
  check_pool2d_shape(s, "avgpool2d_backward");
  const long long total = s.in_numel();
  if (dinp == nullptr || total == 0) return;
  BARECNN_ASSERT(dout != nullptr, "avgpool2d_backward: null pointer for ", s.str());
  BARECNN_LAUNCH(avgpool2d_backward_kernel, grid_for(total, kPoolBlock), kPoolBlock, 0, stream, dinp, dout, s, total);
  CUDA_CHECK_LAUNCH("avgpool2d_backward", s.str());
}

void l2pool2d_forward(float* out, const float* inp, const Pool2dShape& s, cudaStream_t stream) {
  // out (N, C, OH, OW); inp (N, C, H, W)
  NvtxRange range("l2pool2d_forward");
  check_pool2d_shape(s, "l2pool2d_forward");
  const long long total = s.out_numel();
  if (total == 0) return;
  BARECNN_ASSERT(out != nullptr && inp != nullptr, "l2pool2d_forward: null pointer for ", s.str());
  BARECNN_LAUNCH(l2pool2d_forward_kernel, grid_for(total, kPoolBlock), kPoolBlock, 0, stream, out, inp, s, total);
  CUDA_CHECK_LAUNCH("l2pool2d_forward", s.str());
}

void l2pool2d_backward(float* dinp, const float* dout, const float* inp, const float* out, const Pool2dShape& s,
                       cudaStream_t stream) {
  // dinp (N, C, H, W), overwritten; dout (N, C, OH, OW); inp (N, C, H, W); out (N, C, OH, OW)
  NvtxRange range("l2pool2d_backward");
  check_pool2d_shape(s, "l2pool2d_backward");
  const long long total = s.in_numel();
  if (dinp == nullptr || total == 0) return;
  BARECNN_ASSERT(dout != nullptr && inp != nullptr && out != nullptr, "l2pool2d_backward: null pointer for ", s.str());
  BARECNN_LAUNCH(l2pool2d_backward_kernel, grid_for(total, kPoolBlock), kPoolBlock, 0, stream, dinp, dout, inp, out, s,
                 total);
  CUDA_CHECK_LAUNCH("l2pool2d_backward", s.str());
}

}  // namespace gpu
}  // namespace barecnn
