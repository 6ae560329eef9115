// CUDA kernels of 2-D convolution (docs/MATH.md, "Convolution"): the forward pass, the gradient
// with respect to the input and the gradient with respect to the weights and bias. Direct
// convolution: no im2col + GEMM, no cuDNN.
//
// Each op has two levels:
//   - a simple baseline kernel, one thread per output element, that runs the loops of the CPU
//     reference (host/reference/conv2d.cpp) with the same index helpers of shape.h (nchw,
//     window_in_pos, window_out_pos);
//   - a fast kernel beside it: shared-memory tiles for the forward pass and the input gradient, a
//     two-stage reduction for the weight gradient. Its launcher checks the fast kernel's
//     preconditions (grid limits, shared memory) and falls back to the simple kernel where they
//     do not hold.
// The launchers' ConvImpl argument (Simple or Fast; Exec::conv_impl, set from BARECNN_CONV_IMPL)
// picks the level, so the tests check both.
//
// Fused ReLU: every kernel takes a template flag FUSE_RELU. When set, the forward
// kernels store relu(conv + bias) and the backward kernels read dout * relu'(y) instead of dout,
// with y = the forward's fused output (relu_out); the ReLU's scalar math is act_forward /
// act_derivative of activation.h, the functions kernels/activation.cu applies, so the fused
// results are bitwise those of the separate ReLU kernels. With FUSE_RELU false the flag's code
// compiles away: the kernels are the plain convolution.
//
// Layouts, all NCHW float32: inp (N, C, H, W), weight (K, C, kh, kw) [OIHW], bias (K),
// out (N, K, OH, OW). Every result is summed by one thread, or by one fixed reduction tree, in an
// order that depends only on the shape: no atomics, so results are bitwise the same run to run.
#include <climits>

#include "barecnn/activation.h"
#include "barecnn/cuda_check.h"
#include "barecnn/error.h"
#include "barecnn/gpu_ops.h"
#include "barecnn/shape.h"
#include "launch.cuh"

namespace barecnn {

namespace {

constexpr int kSimpleBlock = 256;
// Dynamic shared memory a block may use without cudaFuncSetAttribute opt-in.
constexpr size_t kMaxSmemBytes = 48 * 1024;
constexpr long long kMaxGridYZ = 65535;

// Weight gradient (two-stage reduction), see conv2d_backward_weight_partial_kernel.
constexpr int kWgradBlock = 128;                // threads per stage-1 block (a power of two: tree)
constexpr int kWgradTapsPerPass = 64;           // taps accumulated per pass: 64 * 128 * 4 B = 32 KB
constexpr long long kWgradTargetBlocks = 2048;  // enough stage-1 blocks to fill a large GPU
constexpr long long kWgradMinPerThread = 4;     // positions each thread sums at least, per chunk
constexpr long long kWgradMaxChunks = 4096;     // grid.y of stage 1

// ceil(a / b) for b > 0 and a of any sign (C++ division truncates toward zero).
__host__ __device__ inline int ceil_div_signed(int a, int b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

// Forward tile: a tile of `tile` outputs along one axis reads (tile - 1) * stride + k inputs.
__host__ __device__ inline int fwd_span(int tile, int k, int stride) { return (tile - 1) * stride + k; }

// Input-gradient tile: the input rows h0 .. h0+tile-1 are read by the output rows o with
// o*stride in [h0 + pad - k + 1, h0 + tile - 1 + pad], an interval of tile + k - 1 integers that
// holds at most ceil((tile + k - 1) / stride) multiples of the stride.
__host__ __device__ inline int bwd_span(int tile, int k, int stride) { return (tile + k - 1 + stride - 1) / stride; }

// The value a forward kernel stores for the conv result v (bias included): v itself, or relu(v)
// when the ReLU is fused. act_forward(Relu) is the expression activation_forward_kernel applies
// to the stored v, so the fused output is bitwise conv2d_forward + activation_forward(Relu).
template <bool FUSE_RELU>
__device__ __forceinline__ float conv_out_value(float v) {
  if constexpr (FUSE_RELU)
    return act_forward<float>(Act::Relu, v, 0.f);
  else
    return v;
}

// Element i of the gradient a backward kernel consumes: dout[i], or when the ReLU is fused the
// gradient the ReLU backward would have handed on, dout[i] * relu'(x[i]), the one product of
// activation_backward_kernel. relu'(x) = (x > 0 ? 1 : 0) is read from y = relu(x) (relu_out):
// y > 0 exactly where x > 0 (x <= 0 gives y = +0, NaN gives NaN), and act_derivative(Relu) looks
// only at its first argument, so passing y there gives the same factor, hence the same float.
template <bool FUSE_RELU>
__device__ __forceinline__ float conv_grad_value(const float* dout, const float* relu_out, long long i) {
  if constexpr (FUSE_RELU) {
    const float y = relu_out[i];
    return dout[i] * act_derivative<float>(Act::Relu, y, y, 0.f);
  } else {
    return dout[i];
  }
}

// ================================================================================================
// Forward
// ================================================================================================

// conv2d_forward_simple_kernel
// Block: 256 threads, 1-D; grid-stride loop over the N*K*OH*OW outputs in NCHW order.
// Thread: computes out[n,k,oh,ow] = bias[k] + sum over (c, i, j) of
//         inp[n, c, oh*sh - ph + i, ow*sw - pw + j] * weight[k, c, i, j], in the reference's loop
//         order, skipping taps that fall in the zero padding.
// Layouts: out (N, K, OH, OW); inp (N, C, H, W); weight (K, C, kh, kw); bias (K) or null.
// Divisibility: none; any shape. FUSE_RELU: stores relu of that value.
template <bool FUSE_RELU>
__global__ void conv2d_forward_simple_kernel(float* out, const float* inp, const float* weight, const float* bias,
                                             Conv2dShape s, long long total) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int ow = int(idx % s.OW);
    long long r = idx / s.OW;
    const int oh = int(r % s.OH);
    r /= s.OH;
    const int k = int(r % s.K);
    const int n = int(r / s.K);
    float acc = bias ? bias[k] : 0.f;
    for (int c = 0; c < s.C; ++c) {
      for (int i = 0; i < s.kh; ++i) {
        const int ih = window_in_pos(oh, i, s.sh, s.ph);
        if (ih < 0 || ih >= s.H) continue;  // tap row lies in the zero padding
        for (int j = 0; j < s.kw; ++j) {
          const int iw = window_in_pos(ow, j, s.sw, s.pw);
          if (iw < 0 || iw >= s.W) continue;
          acc += inp[nchw(n, c, ih, iw, s.C, s.H, s.W)] * weight[nchw(k, c, i, j, s.C, s.kh, s.kw)];
        }
      }
    }
    out[idx] = conv_out_value<FUSE_RELU>(acc);  // idx == nchw(n, k, oh, ow, K, OH, OW)
  }
}

// conv2d_forward_tiled_kernel<TILE, KB, FUSE_RELU>
// Block: TILE x TILE threads (threadIdx.x along ow, threadIdx.y along oh).
// Grid:  (ceil(OH/TILE) * ceil(OW/TILE), ceil(K/KB), N).
// Block: computes the TILE x TILE output pixels starting at (oh0, ow0) of image n for the KB output
//        channels k0 .. k0+KB-1. For each input channel c it stages in shared memory
//          s_in (span_h, span_w): the input rows/cols the tile reads, halo included, with zeros
//                                 where they fall in the padding; span = (TILE-1)*stride + k;
//          s_w  (KB, kh, kw):     weight[k0 .. k0+KB-1, c], zeros for k >= K;
//        then every thread adds its window times each of the KB filters.
// Thread: one output pixel (oh0 + ty, ow0 + tx) for KB channels, KB accumulators in registers.
//         Threads past OH/OW (partial tiles) load and synchronize but write nothing.
// Layouts: as the simple kernel. Dynamic shared memory: (span_h*span_w + KB*kh*kw) floats.
// Divisibility: none; K, OH, OW need not be multiples of KB or TILE (guarded).
// FUSE_RELU: the store applies relu to acc + bias.
template <int TILE, int KB, bool FUSE_RELU>
__global__ void __launch_bounds__(TILE* TILE)
    conv2d_forward_tiled_kernel(float* out, const float* inp, const float* weight, const float* bias, Conv2dShape s) {
  BARECNN_DYNAMIC_SHARED(float, smem);
  const int span_h = fwd_span(TILE, s.kh, s.sh), span_w = fwd_span(TILE, s.kw, s.sw);
  const int taps = s.kh * s.kw;
  float* s_in = smem;                   // (span_h, span_w)
  float* s_w = smem + span_h * span_w;  // (KB, kh, kw)

  const int tiles_w = (s.OW + TILE - 1) / TILE;
  const int oh0 = int(blockIdx.x / tiles_w) * TILE, ow0 = int(blockIdx.x % tiles_w) * TILE;
  const int k0 = blockIdx.y * KB, n = blockIdx.z;
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * TILE + tx;
  const int oh = oh0 + ty, ow = ow0 + tx;
  // Input position of tap (0, 0) of the tile's first output, and of this thread's window relative
  // to it: window_in_pos(oh, i, ...) - ih0 == ty*sh + i.
  const int ih0 = window_in_pos(oh0, 0, s.sh, s.ph), iw0 = window_in_pos(ow0, 0, s.sw, s.pw);
  const int r0 = ty * s.sh, q0 = tx * s.sw;

  float acc[KB];
#pragma unroll
  for (int kb = 0; kb < KB; ++kb) acc[kb] = 0.f;

  for (int c = 0; c < s.C; ++c) {
    for (int e = tid; e < span_h * span_w; e += TILE * TILE) {
      const int ih = ih0 + e / span_w, iw = iw0 + e % span_w;
      s_in[e] = (ih >= 0 && ih < s.H && iw >= 0 && iw < s.W) ? inp[nchw(n, c, ih, iw, s.C, s.H, s.W)] : 0.f;
    }
    for (int e = tid; e < KB * taps; e += TILE * TILE) {
      const int k = k0 + e / taps;
      s_w[e] = k < s.K ? weight[((long long)k * s.C + c) * taps + e % taps] : 0.f;
    }
    __syncthreads();
    for (int i = 0; i < s.kh; ++i) {
      for (int j = 0; j < s.kw; ++j) {
        const float x = s_in[(r0 + i) * span_w + q0 + j];
#pragma unroll
        for (int kb = 0; kb < KB; ++kb) acc[kb] += x * s_w[kb * taps + i * s.kw + j];
      }
    }
    __syncthreads();  // the next channel overwrites both tiles
  }

  if (oh < s.OH && ow < s.OW) {
#pragma unroll
    for (int kb = 0; kb < KB; ++kb) {
      const int k = k0 + kb;
      if (k < s.K)
        out[nchw(n, k, oh, ow, s.K, s.OH, s.OW)] = conv_out_value<FUSE_RELU>(acc[kb] + (bias ? bias[k] : 0.f));
    }
  }
}

// conv2d_forward_c1_kernel<TILE, KB, FUSE_RELU>: the fast path for C == 1 (the grayscale first layer).
// Block: TILE x TILE threads. Grid: (ceil(OH/TILE) * ceil(OW/TILE), 1, N).
// Block: loads its input tile (with halo) once and every filter once:
//          s_in (span_h, span_w) as in the tiled kernel;
//          s_w  (ceil(K/KB)*KB, kh, kw): all of weight (K, 1, kh, kw), zero-padded to whole groups;
//        then loops over the output channels in groups of KB without reloading anything, so the
//        image is read from global memory once per tile instead of once per group of channels.
// Thread: one output pixel for all K channels, KB accumulators at a time.
// Layouts: as the simple kernel, C == 1. Dynamic shared memory: (span_h*span_w + ceil(K/KB)*KB*kh*kw)
// floats. Divisibility: none. FUSE_RELU: the store applies relu to acc + bias.
template <int TILE, int KB, bool FUSE_RELU>
__global__ void __launch_bounds__(TILE* TILE)
    conv2d_forward_c1_kernel(float* out, const float* inp, const float* weight, const float* bias, Conv2dShape s) {
  BARECNN_DYNAMIC_SHARED(float, smem);
  const int span_h = fwd_span(TILE, s.kh, s.sh), span_w = fwd_span(TILE, s.kw, s.sw);
  const int taps = s.kh * s.kw;
  const int groups = (s.K + KB - 1) / KB;
  float* s_in = smem;                   // (span_h, span_w)
  float* s_w = smem + span_h * span_w;  // (groups * KB, kh, kw)

  const int tiles_w = (s.OW + TILE - 1) / TILE;
  const int oh0 = int(blockIdx.x / tiles_w) * TILE, ow0 = int(blockIdx.x % tiles_w) * TILE;
  const int n = blockIdx.z;
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * TILE + tx;
  const int oh = oh0 + ty, ow = ow0 + tx;
  const int ih0 = window_in_pos(oh0, 0, s.sh, s.ph), iw0 = window_in_pos(ow0, 0, s.sw, s.pw);
  const int r0 = ty * s.sh, q0 = tx * s.sw;

  for (int e = tid; e < span_h * span_w; e += TILE * TILE) {
    const int ih = ih0 + e / span_w, iw = iw0 + e % span_w;
    s_in[e] = (ih >= 0 && ih < s.H && iw >= 0 && iw < s.W) ? inp[nchw(n, 0, ih, iw, 1, s.H, s.W)] : 0.f;
  }
  // weight (K, 1, kh, kw) is contiguous: entry e is filter e / taps, tap e % taps.
  for (int e = tid; e < groups * KB * taps; e += TILE * TILE) s_w[e] = e < s.K * taps ? weight[e] : 0.f;
  __syncthreads();
  if (oh >= s.OH || ow >= s.OW) return;  // no barrier after this point

  for (int g = 0; g < groups; ++g) {
    const float* wg = s_w + g * KB * taps;  // (KB, kh, kw)
    float acc[KB];
#pragma unroll
    for (int kb = 0; kb < KB; ++kb) acc[kb] = 0.f;
    for (int i = 0; i < s.kh; ++i) {
      for (int j = 0; j < s.kw; ++j) {
        const float x = s_in[(r0 + i) * span_w + q0 + j];
#pragma unroll
        for (int kb = 0; kb < KB; ++kb) acc[kb] += x * wg[kb * taps + i * s.kw + j];
      }
    }
#pragma unroll
    for (int kb = 0; kb < KB; ++kb) {
      const int k = g * KB + kb;
      if (k < s.K)
        out[nchw(n, k, oh, ow, s.K, s.OH, s.OW)] = conv_out_value<FUSE_RELU>(acc[kb] + (bias ? bias[k] : 0.f));
    }
  }
}

// ================================================================================================
// Gradient with respect to the input
// ================================================================================================

// conv2d_backward_input_simple_kernel
// Block: 256 threads, 1-D; grid-stride loop over the N*C*H*W input pixels in NCHW order.
// Thread: gathers dinp[n,c,h,w] = sum over (k, i, j) of dout[n,k,oh,ow] * weight[k,c,i,j] for the
//         output (oh, ow) = (window_out_pos(h, i), window_out_pos(w, j)) whose window reads (h, w)
//         through tap (i, j), if any. No scatter, so no atomics.
// Layouts: dinp (N, C, H, W); dout (N, K, OH, OW); weight (K, C, kh, kw). Divisibility: none.
// FUSE_RELU: every dout value is read as dout * relu'(y), y = relu_out (N, K, OH, OW).
template <bool FUSE_RELU>
__global__ void conv2d_backward_input_simple_kernel(float* dinp, const float* dout, const float* relu_out,
                                                    const float* weight, Conv2dShape s, long long total) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int w = int(idx % s.W);
    long long r = idx / s.W;
    const int h = int(r % s.H);
    r /= s.H;
    const int c = int(r % s.C);
    const int n = int(r / s.C);
    float acc = 0.f;
    for (int k = 0; k < s.K; ++k) {
      for (int i = 0; i < s.kh; ++i) {
        const int oh = window_out_pos(h, i, s.sh, s.ph, s.OH);
        if (oh < 0) continue;  // no output row reads row h through tap row i
        for (int j = 0; j < s.kw; ++j) {
          const int ow = window_out_pos(w, j, s.sw, s.pw, s.OW);
          if (ow < 0) continue;
          acc += conv_grad_value<FUSE_RELU>(dout, relu_out, nchw(n, k, oh, ow, s.K, s.OH, s.OW)) *
                 weight[nchw(k, c, i, j, s.C, s.kh, s.kw)];
        }
      }
    }
    dinp[idx] = acc;  // idx == nchw(n, c, h, w, C, H, W)
  }
}

// conv2d_backward_input_tiled_kernel<TILE, CB, FUSE_RELU>: the same gather, tiled.
// Block: TILE x TILE threads (threadIdx.x along w, threadIdx.y along h).
// Grid:  (ceil(H/TILE) * ceil(W/TILE), ceil(C/CB), N).
// Block: computes the TILE x TILE input pixels starting at (h0, w0) of image n for the CB input
//        channels c0 .. c0+CB-1. For each output channel k it stages in shared memory
//          s_dout (span_h, span_w): dout[n, k] rows oh_lo .. oh_lo+span_h-1 and columns
//                 ow_lo .. ow_lo+span_w-1, zeros outside [0,OH) x [0,OW); oh_lo is the first
//                 output row whose window can reach row h0; span = ceil((TILE + k - 1) / stride)
//                 covers every output row that reads the tile (see bwd_span);
//          s_w (CB, kh, kw): weight[k, c0 .. c0+CB-1], zeros for c >= C;
//        then every thread gathers over the taps as the simple kernel does.
// Thread: one input pixel (h0 + ty, w0 + tx) for CB channels, CB accumulators in registers.
//         Threads past H/W load and synchronize but compute and write nothing.
// Dynamic shared memory: (span_h*span_w + CB*kh*kw) floats. Divisibility: none.
// FUSE_RELU: s_dout is staged as dout * relu'(y), y = relu_out (N, K, OH, OW): the mask is applied
// once per element at the load, so the gather below is the same code in both instantiations.
template <int TILE, int CB, bool FUSE_RELU>
__global__ void __launch_bounds__(TILE* TILE)
    conv2d_backward_input_tiled_kernel(float* dinp, const float* dout, const float* relu_out, const float* weight,
                                       Conv2dShape s) {
  BARECNN_DYNAMIC_SHARED(float, smem);
  const int span_h = bwd_span(TILE, s.kh, s.sh), span_w = bwd_span(TILE, s.kw, s.sw);
  const int taps = s.kh * s.kw;
  float* s_dout = smem;                 // (span_h, span_w)
  float* s_w = smem + span_h * span_w;  // (CB, kh, kw)

  const int tiles_w = (s.W + TILE - 1) / TILE;
  const int h0 = int(blockIdx.x / tiles_w) * TILE, w0 = int(blockIdx.x % tiles_w) * TILE;
  const int c0 = blockIdx.y * CB, n = blockIdx.z;
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * TILE + tx;
  const int h = h0 + ty, w = w0 + tx;
  const bool inside = h < s.H && w < s.W;
  // First output row whose window can reach row h0: o*sh - ph + (kh - 1) >= h0. May be negative
  // (those rows load as zeros and window_out_pos never selects them).
  const int oh_lo = ceil_div_signed(h0 + s.ph - s.kh + 1, s.sh);
  const int ow_lo = ceil_div_signed(w0 + s.pw - s.kw + 1, s.sw);

  float acc[CB];
#pragma unroll
  for (int cb = 0; cb < CB; ++cb) acc[cb] = 0.f;

  for (int k = 0; k < s.K; ++k) {
    for (int e = tid; e < span_h * span_w; e += TILE * TILE) {
      const int oh = oh_lo + e / span_w, ow = ow_lo + e % span_w;
      s_dout[e] = (oh >= 0 && oh < s.OH && ow >= 0 && ow < s.OW)
                      ? conv_grad_value<FUSE_RELU>(dout, relu_out, nchw(n, k, oh, ow, s.K, s.OH, s.OW))
                      : 0.f;
    }
    for (int e = tid; e < CB * taps; e += TILE * TILE) {
      const int c = c0 + e / taps;
      s_w[e] = c < s.C ? weight[((long long)k * s.C + c) * taps + e % taps] : 0.f;
    }
    __syncthreads();
    if (inside) {
      for (int i = 0; i < s.kh; ++i) {
        const int oh = window_out_pos(h, i, s.sh, s.ph, s.OH);
        if (oh < 0) continue;
        for (int j = 0; j < s.kw; ++j) {
          const int ow = window_out_pos(w, j, s.sw, s.pw, s.OW);
          if (ow < 0) continue;
          const float d = s_dout[(oh - oh_lo) * span_w + (ow - ow_lo)];
#pragma unroll
          for (int cb = 0; cb < CB; ++cb) acc[cb] += d * s_w[cb * taps + i * s.kw + j];
        }
      }
    }
    __syncthreads();  // the next output channel overwrites both tiles
  }

  if (inside) {
#pragma unroll
    for (int cb = 0; cb < CB; ++cb) {
      const int c = c0 + cb;
      if (c < s.C) dinp[nchw(n, c, h, w, s.C, s.H, s.W)] = acc[cb];
    }
  }
}

// ================================================================================================
// Gradient with respect to the weights and bias
// ================================================================================================

// conv2d_backward_weight_simple_kernel
// Block: 256 threads, 1-D; grid-stride loop over the K*C*kh*kw weights, then (when dbias is
// given) the K biases.
// Thread: sums one entry over the whole batch, in the reference's order (n, oh, ow):
//           dweight[k,c,i,j] = sum of dout[n,k,oh,ow] * inp[n, c, oh*sh - ph + i, ow*sw - pw + j]
//           dbias[k]         = sum of dout[n,k,oh,ow]
// Layouts: dweight (K, C, kh, kw); dbias (K) or null; dout (N, K, OH, OW); inp (N, C, H, W).
// Divisibility: none. Slow for large batches (each thread sums N*OH*OW terms alone).
// FUSE_RELU: dout is read as dout * relu'(y), y = relu_out (N, K, OH, OW), in both sums.
template <bool FUSE_RELU>
__global__ void conv2d_backward_weight_simple_kernel(float* dweight, float* dbias, const float* dout,
                                                     const float* relu_out, const float* inp, Conv2dShape s,
                                                     long long wn, long long total) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    float acc = 0.f;
    if (idx < wn) {
      const int j = int(idx % s.kw);
      long long r = idx / s.kw;
      const int i = int(r % s.kh);
      r /= s.kh;
      const int c = int(r % s.C);
      const int k = int(r / s.C);
      for (int n = 0; n < s.N; ++n) {
        for (int oh = 0; oh < s.OH; ++oh) {
          const int ih = window_in_pos(oh, i, s.sh, s.ph);
          if (ih < 0 || ih >= s.H) continue;  // this tap read padding: contributes 0
          for (int ow = 0; ow < s.OW; ++ow) {
            const int iw = window_in_pos(ow, j, s.sw, s.pw);
            if (iw < 0 || iw >= s.W) continue;
            acc += conv_grad_value<FUSE_RELU>(dout, relu_out, nchw(n, k, oh, ow, s.K, s.OH, s.OW)) *
                   inp[nchw(n, c, ih, iw, s.C, s.H, s.W)];
          }
        }
      }
      dweight[idx] = acc;  // idx == nchw(k, c, i, j, C, kh, kw)
    } else {
      const int k = int(idx - wn);
      for (int n = 0; n < s.N; ++n)
        for (int oh = 0; oh < s.OH; ++oh)
          for (int ow = 0; ow < s.OW; ++ow)
            acc += conv_grad_value<FUSE_RELU>(dout, relu_out, nchw(n, k, oh, ow, s.K, s.OH, s.OW));
      dbias[k] = acc;
    }
  }
}

// conv2d_backward_weight_partial_kernel: stage 1 of the deterministic weight gradient.
// Block: 128 threads (kWgradBlock), 1-D. Grid: (K*C, P); blockIdx.x = k*C + c, blockIdx.y = chunk p.
// Block: the sum over (n, oh, ow) is cut into P chunks of `chunk` consecutive positions
//        q = (n*OH + oh)*OW + ow (the last ones may be short or empty). Block (k, c, p) sums chunk
//        p for the kh*kw weights of filter (k, c) (and, for c == 0 when bpart is given, the bias
//        k) and writes one partial sum per weight:
//          wpart[p, k, c, i, j]   (P, K, C, kh, kw)
//          bpart[p, k]            (P, K)
// Thread: takes positions q = start + tid, start + tid + 128, ... (consecutive threads read
//         consecutive ow: coalesced), reads dout once per position and adds dout * inp for each
//         tap into its own column of s_acc (taps, 128) in shared memory; then a fixed-shape tree
//         over the 128 columns reduces every tap at once. Taps are processed in passes of whole
//         kernel rows, at most 64 taps per pass (requires kw <= 64, checked by the launcher).
// Determinism: the chunking, the per-thread order and the tree depend only on the shape; no atomics.
// Divisibility: none. FUSE_RELU: the one read of dout per position is dout * relu'(y),
// y = relu_out (N, K, OH, OW), so the weight and the bias partials both see the masked gradient.
template <bool FUSE_RELU>
__global__ void __launch_bounds__(kWgradBlock)
    conv2d_backward_weight_partial_kernel(float* wpart, float* bpart, const float* dout, const float* relu_out,
                                          const float* inp, Conv2dShape s, long long chunk) {
  BARECNN_STATIC_SHARED(float, s_acc, kWgradTapsPerPass* kWgradBlock);  // (taps of this pass, thread)
  BARECNN_STATIC_SHARED(float, s_bias, kWgradBlock);                    // (thread)
  const int tid = threadIdx.x;
  const int k = int(blockIdx.x / s.C), c = int(blockIdx.x % s.C);
  const int p = blockIdx.y;
  const long long M = (long long)s.N * s.OH * s.OW;
  const long long q_begin = (long long)p * chunk;
  const long long q_end = q_begin + chunk < M ? q_begin + chunk : M;
  const long long wn = (long long)s.K * s.C * s.kh * s.kw;
  const bool do_bias = bpart != nullptr && c == 0;
  const int rows_per_pass = kWgradTapsPerPass / s.kw;  // >= 1

  for (int i0 = 0; i0 < s.kh; i0 += rows_per_pass) {
    const int i1 = i0 + rows_per_pass < s.kh ? i0 + rows_per_pass : s.kh;
    const int ptaps = (i1 - i0) * s.kw;
    for (int t = 0; t < ptaps; ++t) s_acc[t * kWgradBlock + tid] = 0.f;
    float bacc = 0.f;
    for (long long q = q_begin + tid; q < q_end; q += kWgradBlock) {
      const int ow = int(q % s.OW);
      const long long r = q / s.OW;
      const int oh = int(r % s.OH), n = int(r / s.OH);
      const float d = conv_grad_value<FUSE_RELU>(dout, relu_out, nchw(n, k, oh, ow, s.K, s.OH, s.OW));
      bacc += d;
      for (int i = i0; i < i1; ++i) {
        const int ih = window_in_pos(oh, i, s.sh, s.ph);
        if (ih < 0 || ih >= s.H) continue;
        for (int j = 0; j < s.kw; ++j) {
          const int iw = window_in_pos(ow, j, s.sw, s.pw);
          if (iw < 0 || iw >= s.W) continue;
          s_acc[((i - i0) * s.kw + j) * kWgradBlock + tid] += d * inp[nchw(n, c, ih, iw, s.C, s.H, s.W)];
        }
      }
    }
    s_bias[tid] = bacc;
    __syncthreads();
    for (int half = kWgradBlock / 2; half > 0; half >>= 1) {
      if (tid < half) {
        for (int t = 0; t < ptaps; ++t) s_acc[t * kWgradBlock + tid] += s_acc[t * kWgradBlock + tid + half];
        s_bias[tid] += s_bias[tid + half];
      }
      __syncthreads();
    }
    for (int t = tid; t < ptaps; t += kWgradBlock)
      wpart[(long long)p * wn + nchw(k, c, i0 + t / s.kw, t % s.kw, s.C, s.kh, s.kw)] = s_acc[t * kWgradBlock];
    if (do_bias && i0 == 0 && tid == 0) bpart[(long long)p * s.K + k] = s_bias[0];
    __syncthreads();  // the next pass clears s_acc and s_bias
  }
}

// conv2d_backward_weight_reduce_kernel: stage 2.
// Block: 256 threads, 1-D; grid-stride loop over the K*C*kh*kw weights, then (when dbias is
// given) the K biases.
// Thread: dweight[w] = sum over p = 0, 1, ..., P-1 of wpart[p, w] (fixed order); dbias likewise
//         from bpart. Consecutive threads read consecutive partials: coalesced.
// Layouts: wpart (P, K*C*kh*kw); bpart (P, K). Divisibility: none.
__global__ void conv2d_backward_weight_reduce_kernel(float* dweight, float* dbias, const float* wpart,
                                                     const float* bpart, long long wn, int K, int P, long long total) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    float acc = 0.f;
    if (idx < wn) {
      for (int p = 0; p < P; ++p) acc += wpart[(long long)p * wn + idx];
      dweight[idx] = acc;
    } else {
      const long long k = idx - wn;
      for (int p = 0; p < P; ++p) acc += bpart[(long long)p * K + k];
      dbias[k] = acc;
    }
  }
}

// ================================================================================================
// Launchers
// ================================================================================================

void check_conv2d_shape(const Conv2dShape& s, const char* op) {
  BARECNN_ASSERT(s.N >= 0 && s.C >= 1 && s.H >= 1 && s.W >= 1 && s.K >= 1 && s.kh >= 1 && s.kw >= 1 && s.sh >= 1 &&
                     s.sw >= 1 && s.ph >= 0 && s.pw >= 0,
                 op, ": bad shape ", s.str());
  BARECNN_ASSERT(s.H + 2 * s.ph >= s.kh && s.W + 2 * s.pw >= s.kw, op,
                 ": the kernel is larger than the padded input: ", s.str());
  BARECNN_ASSERT(s.OH == window_out_size(s.H, s.kh, s.sh, s.ph) && s.OW == window_out_size(s.W, s.kw, s.sw, s.pw), op,
                 ": output size does not follow eq. (2.1) for ", s.str());
}

// The tiled forward kernels for one tile size. Returns false (nothing launched) where their
// preconditions do not hold: N and ceil(K/KB) within grid.z/grid.y, shared memory <= 48 KB.
template <int TILE, int KB, bool FUSE_RELU>
bool launch_forward_fast(float* out, const float* inp, const float* weight, const float* bias, const Conv2dShape& s,
                         cudaStream_t stream) {
  const long long tiles = ceil_div((long long)s.OH, TILE) * ceil_div((long long)s.OW, TILE);
  if (s.N > kMaxGridYZ || tiles > INT_MAX) return false;
  const size_t in_tile = size_t(fwd_span(TILE, s.kh, s.sh)) * size_t(fwd_span(TILE, s.kw, s.sw));
  const size_t taps = size_t(s.kh) * size_t(s.kw);
  const dim3 block(TILE, TILE);
  if (s.C == 1) {
    const size_t smem = (in_tile + size_t(ceil_div(s.K, KB)) * KB * taps) * sizeof(float);
    if (smem <= kMaxSmemBytes) {
      const dim3 grid(unsigned(tiles), 1, unsigned(s.N));
      BARECNN_LAUNCH((conv2d_forward_c1_kernel<TILE, KB, FUSE_RELU>), grid, block, smem, stream, out, inp, weight, bias,
                     s);
      CUDA_CHECK_LAUNCH("conv2d_forward (tiled, C=1)", s.str());
      return true;
    }
  }
  const long long groups = ceil_div((long long)s.K, KB);
  const size_t smem = (in_tile + size_t(KB) * taps) * sizeof(float);
  if (smem > kMaxSmemBytes || groups > kMaxGridYZ) return false;
  const dim3 grid(unsigned(tiles), unsigned(groups), unsigned(s.N));
  BARECNN_LAUNCH((conv2d_forward_tiled_kernel<TILE, KB, FUSE_RELU>), grid, block, smem, stream, out, inp, weight, bias,
                 s);
  CUDA_CHECK_LAUNCH("conv2d_forward (tiled)", s.str());
  return true;
}

// The tiled input-gradient kernel for one tile size; false where its preconditions do not hold
// (N and ceil(C/CB) within grid.z/grid.y, shared memory <= 48 KB).
template <int TILE, int CB, bool FUSE_RELU>
bool launch_backward_input_fast(float* dinp, const float* dout, const float* relu_out, const float* weight,
                                const Conv2dShape& s, cudaStream_t stream) {
  const long long tiles = ceil_div((long long)s.H, TILE) * ceil_div((long long)s.W, TILE);
  const long long groups = ceil_div((long long)s.C, CB);
  const size_t span = size_t(bwd_span(TILE, s.kh, s.sh)) * size_t(bwd_span(TILE, s.kw, s.sw));
  const size_t smem = (span + size_t(CB) * s.kh * s.kw) * sizeof(float);
  if (s.N > kMaxGridYZ || groups > kMaxGridYZ || tiles > INT_MAX || smem > kMaxSmemBytes) return false;
  const dim3 grid(unsigned(tiles), unsigned(groups), unsigned(s.N)), block(TILE, TILE);
  BARECNN_LAUNCH((conv2d_backward_input_tiled_kernel<TILE, CB, FUSE_RELU>), grid, block, smem, stream, dinp, dout,
                 relu_out, weight, s);
  CUDA_CHECK_LAUNCH("conv2d_backward_input (tiled)", s.str());
  return true;
}

// The two-stage weight gradient applies when a kernel row fits in one pass and K*C fits grid.x.
bool wgrad_fast_ok(const Conv2dShape& s) { return s.kw <= kWgradTapsPerPass && (long long)s.K * s.C <= INT_MAX; }

// Number of chunks P of the (n, oh, ow) sum: enough stage-1 blocks for a large GPU, but at least
// kWgradMinPerThread positions per thread. A function of the shape only (not of the device), so
// the summation order, and hence the result, is the same on every GPU.
int wgrad_chunks(const Conv2dShape& s) {
  const long long M = (long long)s.N * s.OH * s.OW;
  long long p = ceil_div(kWgradTargetBlocks, (long long)s.K * s.C);
  const long long by_work = ceil_div(M, (long long)kWgradBlock * kWgradMinPerThread);
  if (by_work < p) p = by_work;
  if (p > kWgradMaxChunks) p = kWgradMaxChunks;
  if (p < 1) p = 1;
  return int(p);
}

// The bodies of the three launchers, once per value of the fusion flag, so the runtime choice
// (fuse_relu / relu_out) picks a whole instantiation; the unfused one has no ReLU code at all.
template <bool FUSE_RELU>
void conv2d_forward_impl(float* out, const float* inp, const float* weight, const float* bias, const Conv2dShape& s,
                         gpu::ConvImpl impl, cudaStream_t stream) {
  if (impl == gpu::ConvImpl::Fast) {
    // 16x16 tiles waste threads on small maps (7x7 uses 49 of 256): 8x8 tiles there.
    const bool launched = (s.OH >= 16 && s.OW >= 16)
                              ? launch_forward_fast<16, 8, FUSE_RELU>(out, inp, weight, bias, s, stream)
                              : launch_forward_fast<8, 16, FUSE_RELU>(out, inp, weight, bias, s, stream);
    if (launched) return;
  }
  const long long total = s.out_numel();
  BARECNN_LAUNCH((conv2d_forward_simple_kernel<FUSE_RELU>), grid_for(total, kSimpleBlock), kSimpleBlock, 0, stream, out,
                 inp, weight, bias, s, total);
  CUDA_CHECK_LAUNCH("conv2d_forward (simple)", s.str());
}

template <bool FUSE_RELU>
void conv2d_backward_input_impl(float* dinp, const float* dout, const float* relu_out, const float* weight,
                                const Conv2dShape& s, gpu::ConvImpl impl, cudaStream_t stream) {
  if (impl == gpu::ConvImpl::Fast) {
    const bool launched = (s.H >= 16 && s.W >= 16)
                              ? launch_backward_input_fast<16, 8, FUSE_RELU>(dinp, dout, relu_out, weight, s, stream)
                              : launch_backward_input_fast<8, 16, FUSE_RELU>(dinp, dout, relu_out, weight, s, stream);
    if (launched) return;
  }
  const long long total = s.in_numel();
  BARECNN_LAUNCH((conv2d_backward_input_simple_kernel<FUSE_RELU>), grid_for(total, kSimpleBlock), kSimpleBlock, 0,
                 stream, dinp, dout, relu_out, weight, s, total);
  CUDA_CHECK_LAUNCH("conv2d_backward_input (simple)", s.str());
}

template <bool FUSE_RELU>
void conv2d_backward_weight_impl(float* dweight, float* dbias, const float* dout, const float* relu_out,
                                 const float* inp, const Conv2dShape& s, float* workspace, gpu::ConvImpl impl,
                                 cudaStream_t stream) {
  const long long wn = s.weight_numel();
  const long long total = wn + (dbias ? s.K : 0);
  if (impl == gpu::ConvImpl::Fast && wgrad_fast_ok(s)) {
    BARECNN_ASSERT(workspace != nullptr, "conv2d_backward_weight: the workspace is null; it needs ",
                   gpu::conv2d_backward_weight_workspace(s), " floats (conv2d_backward_weight_workspace) for ",
                   s.str());
    const int P = wgrad_chunks(s);
    const long long chunk = ceil_div((long long)s.N * s.OH * s.OW, (long long)P);
    float* wpart = workspace;                                        // (P, K, C, kh, kw)
    float* bpart = dbias ? workspace + (long long)P * wn : nullptr;  // (P, K)
    const dim3 grid(unsigned((long long)s.K * s.C), unsigned(P));
    BARECNN_LAUNCH((conv2d_backward_weight_partial_kernel<FUSE_RELU>), grid, kWgradBlock, 0, stream, wpart, bpart, dout,
                   relu_out, inp, s, chunk);
    CUDA_CHECK_LAUNCH("conv2d_backward_weight (stage 1: partial sums)", s.str());
    // Stage 2 sums partials that already carry the mask: the same kernel with or without it.
    BARECNN_LAUNCH(conv2d_backward_weight_reduce_kernel, grid_for(total, kSimpleBlock), kSimpleBlock, 0, stream,
                   dweight, dbias, wpart, bpart, wn, s.K, P, total);
    CUDA_CHECK_LAUNCH("conv2d_backward_weight (stage 2: sum of partials)", s.str());
    return;
  }
  BARECNN_LAUNCH((conv2d_backward_weight_simple_kernel<FUSE_RELU>), grid_for(total, kSimpleBlock), kSimpleBlock, 0,
                 stream, dweight, dbias, dout, relu_out, inp, s, wn, total);
  CUDA_CHECK_LAUNCH("conv2d_backward_weight (simple)", s.str());
}

}  // namespace

namespace gpu {

void conv2d_forward(float* out, const float* inp, const float* weight, const float* bias, const Conv2dShape& s,
                    ConvImpl impl, cudaStream_t stream, bool fuse_relu) {
  // out (N, K, OH, OW) = conv, or relu(conv) when fuse_relu; inp (N, C, H, W); weight (K, C, kh, kw);
  // bias (K) or null
  NvtxRange range(fuse_relu ? "conv2d_forward+relu" : "conv2d_forward");
  check_conv2d_shape(s, "conv2d_forward");
  if (s.N == 0) return;
  BARECNN_ASSERT(out != nullptr && inp != nullptr && weight != nullptr, "conv2d_forward: null pointer for ", s.str());
  if (fuse_relu) {
    conv2d_forward_impl<true>(out, inp, weight, bias, s, impl, stream);
  } else {
    conv2d_forward_impl<false>(out, inp, weight, bias, s, impl, stream);
  }
}

void conv2d_backward_input(float* dinp, const float* dout, const float* weight, const Conv2dShape& s, ConvImpl impl,
                           cudaStream_t stream, const float* relu_out) {
  // dinp (N, C, H, W), overwritten; dout (N, K, OH, OW); weight (K, C, kh, kw);
  // relu_out (N, K, OH, OW) or null: the fused forward's output, whose ReLU dout passes back through
  NvtxRange range(relu_out ? "conv2d_backward_input+relu" : "conv2d_backward_input");
  check_conv2d_shape(s, "conv2d_backward_input");
  if (dinp == nullptr || s.N == 0) return;  // null gradient: not needed (e.g. the first layer)
  BARECNN_ASSERT(dout != nullptr && weight != nullptr, "conv2d_backward_input: null pointer for ", s.str());
  if (relu_out) {
    conv2d_backward_input_impl<true>(dinp, dout, relu_out, weight, s, impl, stream);
  } else {
    conv2d_backward_input_impl<false>(dinp, dout, nullptr, weight, s, impl, stream);
  }
}

size_t conv2d_backward_weight_workspace(const Conv2dShape& s) {
  check_conv2d_shape(s, "conv2d_backward_weight_workspace");
  // The fast kernel's size whatever the ConvImpl (and with or without the fused ReLU), so a buffer
  // sized once stays valid.
  if (!wgrad_fast_ok(s)) return 0;
  return size_t(wgrad_chunks(s)) * size_t(s.weight_numel() + s.K);
}

void conv2d_backward_weight(float* dweight, float* dbias, const float* dout, const float* inp, const Conv2dShape& s,
                            float* workspace, ConvImpl impl, cudaStream_t stream, const float* relu_out) {
  // dweight (K, C, kh, kw), overwritten; dbias (K) or null; dout (N, K, OH, OW); inp (N, C, H, W);
  // relu_out (N, K, OH, OW) or null: the fused forward's output, whose ReLU dout passes back through
  NvtxRange range(relu_out ? "conv2d_backward_weight+relu" : "conv2d_backward_weight");
  check_conv2d_shape(s, "conv2d_backward_weight");
  BARECNN_ASSERT(dweight != nullptr, "conv2d_backward_weight: dweight is null for ", s.str());
  BARECNN_ASSERT(s.N == 0 || (dout != nullptr && inp != nullptr), "conv2d_backward_weight: null pointer for ", s.str());
  if (relu_out) {
    conv2d_backward_weight_impl<true>(dweight, dbias, dout, relu_out, inp, s, workspace, impl, stream);
  } else {
    conv2d_backward_weight_impl<false>(dweight, dbias, dout, nullptr, inp, s, workspace, impl, stream);
  }
}

}  // namespace gpu
}  // namespace barecnn
