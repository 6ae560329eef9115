// CUDA kernels of 2-D convolution (docs/MATH.md, "Convolution"): the forward pass, the gradient
// with respect to the input and the gradient with respect to the weights and bias. Our own
// kernels: no materialized im2col, no cuBLAS, no cuDNN.
//
// Each op has three levels:
//   - a simple baseline kernel, one thread per output element, that runs the loops of the CPU
//     reference (host/reference/conv2d.cpp) with the same index helpers of shape.h (nchw,
//     window_in_pos, window_out_pos);
//   - a tiled direct kernel beside it: shared-memory tiles for the forward pass and the input
//     gradient, a two-stage reduction for the weight gradient. Its launcher checks the kernel's
//     preconditions (grid limits, shared memory) and falls back to the simple kernel where they
//     do not hold;
//   - an implicit-GEMM kernel with register tiles (see its section) for the shapes with a long
//     enough reduction, falling back to the tiled level elsewhere.
// The launchers' ConvImpl argument (Simple, Tiled or Fast; Exec::conv_impl, set from
// BARECNN_CONV_IMPL) picks the level, so the tests check all three.
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
#include <algorithm>
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
// Implicit GEMM with register tiles (forward, input gradient at stride 1, weight gradient)
// ================================================================================================
//
// The direct kernels above do one or a few multiply-adds per shared-memory load plus index math,
// which keeps the 3x3 convolutions over 32-64 channels instruction-bound (RESULTS.md, the H200
// run: 5-7 TFLOP/s forward, 1.3-1.6 backward). These kernels treat the convolution as a matrix
// product over its im2col matrix, never materialized:
//   out[n, m, p] = sum over r of A[m, r] * B[r, (n, p)]
// with p = (oh, ow) of the output map and r = one tap of one source channel, and give every thread
// a TM x TN block of results in registers (4 x 4), so each value staged in shared memory feeds 4
// multiply-adds. The (c, i, j) decode of r is done once per block into a
// table in shared memory, not per element.
//
//   forward:           A = weight (K x C*kh*kw, contiguous), B = im2col(inp), m = k;
//   input gradient:    at stride 1 the gradient is a forward convolution of dout with the weights
//                      turned around: dinp[n, c, h, w] = sum over (k, i', j') of
//                      weight[k, c, kh-1-i', kw-1-j'] * dout[n, k, h - (kh-1-ph) + i', w - (kw-1-pw) + j'],
//                      so A[c, (k, i', j')] = that weight, B = im2col(dout) with padding kh-1-ph;
//   weight gradient:   dweight[k, r] = sum over (n, p) of dout[n, k, p] * B[r, (n, p)], B = im2col(inp):
//                      the product's long side is the reduction, split into P chunks summed by a
//                      second kernel in a fixed order (as the two-stage kernel above).
// Each result is summed by one thread in a fixed order (r ascending; (n, p) ascending within a
// chunk, then the chunks in order): deterministic, but not the order of the direct kernels, so
// the bits differ from theirs by float rounding.

constexpr int kGemmBK = 16;                  // reduction entries staged per step
constexpr int kGemmMaxR = 2048;              // the longest reduction (table in shared memory: 3 ints each)
constexpr int kGemmMinR = 16;                // shorter reductions (C = 1, 3x3) stay on the direct kernels
constexpr int kWgBM = 32;                    // weight gradient: output channels per block
constexpr int kWgBN = 64;                    // weight gradient: taps (c, i, j) per block
constexpr int kWgBK = 32;                    // weight gradient: positions (n, oh, ow) staged per step
constexpr int kWgThreads = 128;              // weight gradient: threads per block, 4 x 4 results each
constexpr long long kWgTargetBlocks = 1024;  // stage-1 blocks to aim for (a function of the shape only)
constexpr long long kWgMinChunk = 256;       // positions per chunk, at least
constexpr long long kWgMaxChunks = 4096;

// The convolution seen as a GEMM: the source map (inp, or dout for the input gradient), the
// output map, and the geometry that takes one to the other (pads may be negative).
struct GemmConv {
  int N;           // images
  int M;           // output channels (GEMM rows)
  int R;           // reduction length: source channels * kh * kw
  int Cs, Hs, Ws;  // source channels and map
  int OH, OW;      // output map
  int kh, kw, sh, sw, ph, pw;
  int Cw;  // the input-gradient case: the weight's input channels (A's row stride is kh*kw)
};

// Row r of B (one tap of one source channel) as the table holds it: the offset of tap (i, j) of
// channel c from a window's origin, (i, j) packed for the bounds test, and A's column offset.
// BWD_INPUT: the source is dout (channel k), the tap is turned around in A.
template <bool BWD_INPUT>
__device__ __forceinline__ void gemm_table_entry(const GemmConv& g, int r, int& b_off, int& tij, int& a_off) {
  const int taps = g.kh * g.kw;
  const int c = r / taps, t = r - c * taps;
  const int i = t / g.kw, j = t - i * g.kw;
  b_off = (c * g.Hs + i) * g.Ws + j;
  tij = (i << 16) | j;
  a_off = BWD_INPUT ? c * g.Cw * taps + (taps - 1 - t) : r;
}

// conv2d_gemm_kernel<BM, BN, TM, TN, BWD_INPUT, FUSE_RELU>: forward, or the input gradient at stride 1.
// Block: (BM/TM) * (BN/TN) threads; computes out rows m0 .. m0+BM-1 for BN consecutive columns
//        col0 .. of the N*OH*OW columns (n, oh, ow), looping over r in steps of kGemmBK: stage A
//        (BK x BM) and B (BK x BN) in shared memory, then every thread adds its TM x TN products
//        per r. The next step's operands are loaded into registers while this step computes.
// Thread: rows m0 + tm*TM + a (a < TM), columns col0 + tn + (BN/TN)*b (b < TN): a warp stores
//         consecutive columns. For the staging each thread loads one fixed column of B.
// Grid:  (ceil(N*OH*OW / BN), ceil(M / BM)). Dynamic shared memory: the table, 3*R ints.
// out: (N, M, OH, OW). FUSE_RELU: forward: stores relu(acc + bias); input gradient: B is staged as
// dout * relu'(y), y = relu_out (N, K, OH, OW) of the layer (conv_grad_value).
template <int BM, int BN, int TM, int TN, bool BWD_INPUT, bool FUSE_RELU>
__global__ void __launch_bounds__((BM / TM) * (BN / TN))
    conv2d_gemm_kernel(float* out, const float* src, const float* relu_out, const float* weight, const float* bias,
                       GemmConv g) {
  constexpr int THREADS = (BM / TM) * (BN / TN);
  constexpr int TCOLS = BN / TN;  // threads along the columns
  constexpr int ROWS_PER_PASS = THREADS / BN;
  constexpr int B_LOADS = kGemmBK / ROWS_PER_PASS;  // B values a thread stages per step
  constexpr int A_LOADS = BM * kGemmBK / THREADS;   // A values a thread stages per step
  static_assert(THREADS % BN == 0 && kGemmBK % ROWS_PER_PASS == 0 && (BM * kGemmBK) % THREADS == 0, "staging");
  BARECNN_STATIC_SHARED(float, s_a, kGemmBK*(BM + 1));  // (BK, BM + 1): A transposed, padded
  BARECNN_STATIC_SHARED(float, s_b, kGemmBK* BN);       // (BK, BN)
  BARECNN_DYNAMIC_SHARED(int, s_tab);                   // (3, R): b_off, tij, a_off
  int* t_boff = s_tab;
  int* t_ij = s_tab + g.R;
  int* t_aoff = s_tab + 2 * g.R;

  const int tid = threadIdx.x;
  for (int r = tid; r < g.R; r += THREADS) gemm_table_entry<BWD_INPUT>(g, r, t_boff[r], t_ij[r], t_aoff[r]);

  const int P = g.OH * g.OW;
  const long long cols = (long long)g.N * P;
  const long long col0 = (long long)blockIdx.x * BN;
  const int m0 = blockIdx.y * BM;
  const int a_mstride = BWD_INPUT ? g.kh * g.kw : g.R;

  // The column this thread stages: its image and window origin.
  const long long lcol = col0 + tid % BN;
  const bool lvalid = lcol < cols;
  int l_ih0 = 0, l_iw0 = 0;
  long long l_base = 0;
  if (lvalid) {
    const int n = int(lcol / P), p = int(lcol - (long long)n * P);
    const int oh = p / g.OW, ow = p - (p / g.OW) * g.OW;
    l_ih0 = oh * g.sh - g.ph;
    l_iw0 = ow * g.sw - g.pw;
    l_base = (long long)n * g.Cs * g.Hs * g.Ws + (long long)l_ih0 * g.Ws + l_iw0;
  }
  const int lrow = tid / BN;  // first of the B rows it stages, then every ROWS_PER_PASS

  // One step's operands, from global memory into registers: A entry e = tid + THREADS*u is
  // (k = e % BK, m = e / BK); B row k = lrow + ROWS_PER_PASS*q of this thread's column.
  float a_reg[A_LOADS], b_reg[B_LOADS];
  auto load_step = [&](int r0) {
#pragma unroll
    for (int u = 0; u < A_LOADS; ++u) {
      const int e = tid + THREADS * u;
      const int r = r0 + e % kGemmBK, m = m0 + e / kGemmBK;
      a_reg[u] = (r < g.R && m < g.M) ? weight[(long long)m * a_mstride + t_aoff[r]] : 0.f;
    }
#pragma unroll
    for (int q = 0; q < B_LOADS; ++q) {
      const int r = r0 + lrow + q * ROWS_PER_PASS;
      float v = 0.f;
      if (lvalid && r < g.R) {
        const int ij = t_ij[r];
        const int ih = l_ih0 + (ij >> 16), iw = l_iw0 + (ij & 0xffff);
        if (ih >= 0 && ih < g.Hs && iw >= 0 && iw < g.Ws) {
          const long long idx = l_base + t_boff[r];
          v = BWD_INPUT ? conv_grad_value<FUSE_RELU>(src, relu_out, idx) : src[idx];
        }
      }
      b_reg[q] = v;
    }
  };

  const int tm = tid / TCOLS, tn = tid % TCOLS;
  float acc[TM][TN];
#pragma unroll
  for (int a = 0; a < TM; ++a)
#pragma unroll
    for (int b = 0; b < TN; ++b) acc[a][b] = 0.f;
  __syncthreads();  // the table
  load_step(0);

  for (int r0 = 0; r0 < g.R; r0 += kGemmBK) {
#pragma unroll
    for (int u = 0; u < A_LOADS; ++u) {
      const int e = tid + THREADS * u;
      s_a[(e % kGemmBK) * (BM + 1) + e / kGemmBK] = a_reg[u];
    }
#pragma unroll
    for (int q = 0; q < B_LOADS; ++q) s_b[(lrow + q * ROWS_PER_PASS) * BN + tid % BN] = b_reg[q];
    __syncthreads();
    if (r0 + kGemmBK < g.R) load_step(r0 + kGemmBK);  // in flight while this step computes
#pragma unroll
    for (int k = 0; k < kGemmBK; ++k) {
      float av[TM], bv[TN];
#pragma unroll
      for (int a = 0; a < TM; ++a) av[a] = s_a[k * (BM + 1) + tm * TM + a];
#pragma unroll
      for (int b = 0; b < TN; ++b) bv[b] = s_b[k * BN + tn + TCOLS * b];
#pragma unroll
      for (int a = 0; a < TM; ++a)
#pragma unroll
        for (int b = 0; b < TN; ++b) acc[a][b] += av[a] * bv[b];
    }
    __syncthreads();  // the next step overwrites both tiles
  }

#pragma unroll
  for (int b = 0; b < TN; ++b) {
    const long long col = col0 + tn + TCOLS * b;
    if (col >= cols) continue;
    const int n = int(col / P), p = int(col - (long long)n * P);
#pragma unroll
    for (int a = 0; a < TM; ++a) {
      const int m = m0 + tm * TM + a;
      if (m >= g.M) continue;
      const long long o = ((long long)n * g.M + m) * P + p;
      if constexpr (BWD_INPUT)
        out[o] = acc[a][b];
      else
        out[o] = conv_out_value<FUSE_RELU>(acc[a][b] + (bias ? bias[m] : 0.f));
    }
  }
}

// conv2d_gemm_wgrad_kernel<FUSE_RELU>: stage 1 of the weight gradient as a GEMM.
// Block: 128 threads; partial sums over the positions q_begin .. q_end-1 of chunk p = blockIdx.z
//        (q = (n, oh, ow) in NCHW order) for output channels k0 .. k0+31 and taps r0 .. r0+63
//        (r = (c, i, j)): stages, kWgBK positions at a time, D = dout (BK x 32) and B = im2col(inp)
//        (BK x 64) in shared memory, then every thread adds its 4 x 4 products per position.
// Thread: channels k0 + tm*4 + a, taps r0 + tn + 16*b (a, b < 4); the blocks of the first tap
//         tile also sum dout over the chunk for the bias (threads with tn == 0).
// Grid:  (ceil(R / 64), ceil(K / 32), P). Static shared memory only (the table covers 64 taps).
// Writes wpart (P, K, C, kh, kw) and, when bpart is not null, bpart (P, K); stage 2 is
// conv2d_backward_weight_reduce_kernel. FUSE_RELU: D is staged as dout * relu'(y).
template <bool FUSE_RELU>
__global__ void __launch_bounds__(kWgThreads)
    conv2d_gemm_wgrad_kernel(float* wpart, float* bpart, const float* dout, const float* relu_out, const float* inp,
                             GemmConv g, long long chunk) {
  BARECNN_STATIC_SHARED(float, s_d, kWgBK*(kWgBM + 1));  // (BK, 32 + 1)
  BARECNN_STATIC_SHARED(float, s_b, kWgBK*(kWgBN + 1));  // (BK, 64 + 1)
  BARECNN_STATIC_SHARED(int, s_tab, 2 * kWgBN);          // b_off, tij per tap of the tile
  const int tid = threadIdx.x;
  const int r0 = blockIdx.x * kWgBN, k0 = blockIdx.y * kWgBM, p = blockIdx.z;
  if (tid < kWgBN && r0 + tid < g.R) {
    int a_off;  // A's column: not needed here (dout is read directly)
    gemm_table_entry<false>(g, r0 + tid, s_tab[tid], s_tab[kWgBN + tid], a_off);
  }

  const int P = g.OH * g.OW;
  const long long Q = (long long)g.N * P;
  const long long q_begin = (long long)p * chunk;
  const long long q_end = q_begin + chunk < Q ? q_begin + chunk : Q;
  const int K = g.M;
  const int lq = tid % kWgBK;    // the position this thread stages, within each step
  const int lrow = tid / kWgBK;  // its first row of D and of B, then every kWgThreads / kWgBK
  constexpr int RSTEP = kWgThreads / kWgBK;
  const int tm = tid / 16, tn = tid % 16;
  const bool do_bias = bpart != nullptr && blockIdx.x == 0 && tn == 0;

  float acc[4][4], bacc[4];
#pragma unroll
  for (int a = 0; a < 4; ++a) {
    bacc[a] = 0.f;
#pragma unroll
    for (int b = 0; b < 4; ++b) acc[a][b] = 0.f;
  }
  __syncthreads();  // the table

  for (long long q0 = q_begin; q0 < q_end; q0 += kWgBK) {
    const long long q = q0 + lq;
    const bool valid = q < q_end;
    int n = 0, pp = 0, ih0 = 0, iw0 = 0;
    if (valid) {
      n = int(q / P);
      pp = int(q - (long long)n * P);
      const int oh = pp / g.OW, ow = pp - (pp / g.OW) * g.OW;
      ih0 = oh * g.sh - g.ph;
      iw0 = ow * g.sw - g.pw;
    }
    const long long d_base = (long long)n * K * P + pp;
    const long long b_base = (long long)n * g.Cs * g.Hs * g.Ws + (long long)ih0 * g.Ws + iw0;
#pragma unroll
    for (int u = 0; u < kWgBM / RSTEP; ++u) {
      const int kl = lrow + u * RSTEP, k = k0 + kl;
      s_d[lq * (kWgBM + 1) + kl] =
          (valid && k < K) ? conv_grad_value<FUSE_RELU>(dout, relu_out, d_base + (long long)k * P) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < kWgBN / RSTEP; ++u) {
      const int rl = lrow + u * RSTEP;
      float v = 0.f;
      if (valid && r0 + rl < g.R) {
        const int ij = s_tab[kWgBN + rl];
        const int ih = ih0 + (ij >> 16), iw = iw0 + (ij & 0xffff);
        if (ih >= 0 && ih < g.Hs && iw >= 0 && iw < g.Ws) v = inp[b_base + s_tab[rl]];
      }
      s_b[lq * (kWgBN + 1) + rl] = v;
    }
    __syncthreads();
#pragma unroll 8
    for (int t = 0; t < kWgBK; ++t) {
      float dv[4], bv[4];
#pragma unroll
      for (int a = 0; a < 4; ++a) dv[a] = s_d[t * (kWgBM + 1) + tm * 4 + a];
#pragma unroll
      for (int b = 0; b < 4; ++b) bv[b] = s_b[t * (kWgBN + 1) + tn + 16 * b];
#pragma unroll
      for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) acc[a][b] += dv[a] * bv[b];
      if (do_bias) {
#pragma unroll
        for (int a = 0; a < 4; ++a) bacc[a] += dv[a];
      }
    }
    __syncthreads();  // the next step overwrites both tiles
  }

  const long long wn = (long long)K * g.R;
#pragma unroll
  for (int a = 0; a < 4; ++a) {
    const int k = k0 + tm * 4 + a;
    if (k >= K) continue;
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const int r = r0 + tn + 16 * b;
      if (r < g.R) wpart[(long long)p * wn + (long long)k * g.R + r] = acc[a][b];
    }
    if (do_bias) bpart[(long long)p * K + k] = bacc[a];
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

// The convolution as the implicit-GEMM kernels see it: the forward pass (and the weight
// gradient, which reads the same im2col of inp), and the input gradient at stride 1.
GemmConv gemm_forward_view(const Conv2dShape& s) {
  return GemmConv{s.N, s.K, s.C * s.kh * s.kw, s.C, s.H, s.W, s.OH, s.OW, s.kh, s.kw, s.sh, s.sw, s.ph, s.pw, s.C};
}
GemmConv gemm_backward_input_view(const Conv2dShape& s) {
  return GemmConv{
      s.N, s.C, s.K * s.kh * s.kw, s.K, s.OH, s.OW, s.H, s.W, s.kh, s.kw, 1, 1, s.kh - 1 - s.ph, s.kw - 1 - s.pw, s.C};
}

// What every implicit-GEMM kernel needs: a source image that int offsets reach, taps that pack
// into 16 bits each, and at least kGemmMinR taps; the forward / input-gradient kernel's table holds
// at most kGemmMaxR.
bool gemm_offsets_ok(const GemmConv& g) {
  return g.R >= kGemmMinR && (long long)g.Cs * g.Hs * g.Ws <= INT_MAX && g.kh < 32768 && g.kw < 32768;
}
bool gemm_shape_ok(const GemmConv& g) { return gemm_offsets_ok(g) && g.R <= kGemmMaxR; }

// The block shape: BM x BN = 32 x 128 for up to 32 output channels, 64 x 64 above, 4 x 4 results
// a thread, 256 threads. Measured on an H200 against 8 x 4 (32 x 128 / 64 x 128) and 8 x 8 (64 x
// 128) results a thread: as fast or faster on deep's shapes at batch 64 (up to 1.7x), within 10%
// at batch 1024 (RESULTS.md). Every result is the same sum in the same order whatever the tile,
// so the choice changes the speed only, never the bits. The grid's size.
constexpr int kGemmThreads = 256;
int gemm_bm(const GemmConv& g) { return g.M <= 32 ? 32 : 64; }
int gemm_bn(const GemmConv& g) { return g.M <= 32 ? 128 : 64; }
long long gemm_grid_x(const GemmConv& g) { return ceil_div((long long)g.N * g.OH * g.OW, (long long)gemm_bn(g)); }
long long gemm_grid_y(const GemmConv& g) { return ceil_div((long long)g.M, (long long)gemm_bm(g)); }
bool gemm_applies(const GemmConv& g) {
  return gemm_shape_ok(g) && gemm_grid_x(g) <= INT_MAX && gemm_grid_y(g) <= kMaxGridYZ;
}

// The forward / input-gradient GEMM kernel, for a shape where gemm_applies.
template <bool BWD_INPUT, bool FUSE_RELU>
void launch_gemm(float* out, const float* src, const float* relu_out, const float* weight, const float* bias,
                 const GemmConv& g, cudaStream_t stream) {
  const size_t smem = size_t(3) * g.R * sizeof(int);
  const dim3 grid(unsigned(gemm_grid_x(g)), unsigned(gemm_grid_y(g)));
  if (gemm_bm(g) == 32) {
    BARECNN_LAUNCH((conv2d_gemm_kernel<32, 128, 4, 4, BWD_INPUT, FUSE_RELU>), grid, kGemmThreads, smem, stream, out,
                   src, relu_out, weight, bias, g);
  } else {
    BARECNN_LAUNCH((conv2d_gemm_kernel<64, 64, 4, 4, BWD_INPUT, FUSE_RELU>), grid, kGemmThreads, smem, stream, out, src,
                   relu_out, weight, bias, g);
  }
}

// The forward pass runs the GEMM kernel over two or more input channels (one channel: the C=1
// kernel above, which stages the image once for all filters); the input gradient at stride 1.
bool gemm_forward_applies(const Conv2dShape& s) { return s.C > 1 && gemm_applies(gemm_forward_view(s)); }
bool gemm_backward_input_applies(const Conv2dShape& s) {
  return s.sh == 1 && s.sw == 1 && gemm_applies(gemm_backward_input_view(s));
}
// The weight gradient as a GEMM: its table covers one tile of taps, so R has no upper bound.
bool gemm_wgrad_applies(const Conv2dShape& s) {
  const GemmConv g = gemm_forward_view(s);
  return gemm_offsets_ok(g) && ceil_div((long long)g.M, (long long)kWgBM) <= kMaxGridYZ;
}
// Its number of chunks: about kWgTargetBlocks blocks, chunks of at least kWgMinChunk positions.
// A function of the shape only, so the summation order is the same on every GPU.
int gemm_wgrad_chunks(const Conv2dShape& s) {
  const long long Q = (long long)s.N * s.OH * s.OW;
  const long long tiles =
      ceil_div((long long)s.K, (long long)kWgBM) * ceil_div((long long)s.C * s.kh * s.kw, (long long)kWgBN);
  long long p = ceil_div(kWgTargetBlocks, tiles);
  const long long by_work = ceil_div(Q, kWgMinChunk);
  if (by_work < p) p = by_work;
  if (p > kWgMaxChunks) p = kWgMaxChunks;
  if (p < 1) p = 1;
  return int(p);
}

// The bodies of the three launchers, once per value of the fusion flag, so the runtime choice
// (fuse_relu / relu_out) picks a whole instantiation; the unfused one has no ReLU code at all.
template <bool FUSE_RELU>
void conv2d_forward_impl(float* out, const float* inp, const float* weight, const float* bias, const Conv2dShape& s,
                         gpu::ConvImpl impl, cudaStream_t stream) {
  if (impl == gpu::ConvImpl::Fast && gemm_forward_applies(s)) {
    launch_gemm<false, FUSE_RELU>(out, inp, nullptr, weight, bias, gemm_forward_view(s), stream);
    CUDA_CHECK_LAUNCH("conv2d_forward (implicit GEMM)", s.str());
    return;
  }
  if (impl != gpu::ConvImpl::Simple) {
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
  if (impl == gpu::ConvImpl::Fast && gemm_backward_input_applies(s)) {
    launch_gemm<true, FUSE_RELU>(dinp, dout, relu_out, weight, nullptr, gemm_backward_input_view(s), stream);
    CUDA_CHECK_LAUNCH("conv2d_backward_input (implicit GEMM)", s.str());
    return;
  }
  if (impl != gpu::ConvImpl::Simple) {
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
  // Two stages through the workspace: the GEMM kernel (Fast, where it applies) or the tiled one
  // write P partial sums, then one kernel adds them in order. Stage 2 sums partials that already
  // carry the mask: the same kernel with or without it.
  const bool gemm = impl == gpu::ConvImpl::Fast && gemm_wgrad_applies(s);
  if (gemm || (impl != gpu::ConvImpl::Simple && wgrad_fast_ok(s))) {
    BARECNN_ASSERT(workspace != nullptr, "conv2d_backward_weight: the workspace is null; it needs ",
                   gpu::conv2d_backward_weight_workspace(s), " floats (conv2d_backward_weight_workspace) for ",
                   s.str());
    const int P = gemm ? gemm_wgrad_chunks(s) : wgrad_chunks(s);
    const long long chunk = ceil_div((long long)s.N * s.OH * s.OW, (long long)P);
    float* wpart = workspace;                                        // (P, K, C, kh, kw)
    float* bpart = dbias ? workspace + (long long)P * wn : nullptr;  // (P, K)
    if (gemm) {
      const GemmConv g = gemm_forward_view(s);
      const dim3 grid(unsigned(ceil_div(g.R, kWgBN)), unsigned(ceil_div(g.M, kWgBM)), unsigned(P));
      BARECNN_LAUNCH((conv2d_gemm_wgrad_kernel<FUSE_RELU>), grid, kWgThreads, 0, stream, wpart, bpart, dout, relu_out,
                     inp, g, chunk);
      CUDA_CHECK_LAUNCH("conv2d_backward_weight (stage 1: partial sums, implicit GEMM)", s.str());
    } else {
      const dim3 grid(unsigned((long long)s.K * s.C), unsigned(P));
      BARECNN_LAUNCH((conv2d_backward_weight_partial_kernel<FUSE_RELU>), grid, kWgradBlock, 0, stream, wpart, bpart,
                     dout, relu_out, inp, s, chunk);
      CUDA_CHECK_LAUNCH("conv2d_backward_weight (stage 1: partial sums)", s.str());
    }
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

bool conv2d_uses_gemm(const Conv2dShape& s, ConvOp op) {
  check_conv2d_shape(s, "conv2d_uses_gemm");
  switch (op) {
    case ConvOp::Forward:
      return gemm_forward_applies(s);
    case ConvOp::BackwardInput:
      return gemm_backward_input_applies(s);
    case ConvOp::BackwardWeight:
      return gemm_wgrad_applies(s);
  }
  return false;
}

size_t conv2d_backward_weight_workspace(const Conv2dShape& s) {
  check_conv2d_shape(s, "conv2d_backward_weight_workspace");
  // The larger of the tiled and GEMM levels' sizes whatever the ConvImpl (and with or without the
  // fused ReLU), so a buffer sized once stays valid.
  size_t n = 0;
  if (wgrad_fast_ok(s)) n = size_t(wgrad_chunks(s)) * size_t(s.weight_numel() + s.K);
  if (gemm_wgrad_applies(s)) n = std::max(n, size_t(gemm_wgrad_chunks(s)) * size_t(s.weight_numel() + s.K));
  return n;
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
