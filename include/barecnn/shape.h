// Geometry: tensor dimensions, output sizes of convolution and pooling (the paper's eq. 2.1) and
// NCHW index math.
//
// Everything marked BARECNN_HD is shared by the CPU reference and the CUDA kernels, so the CPU
// tests exercise the very index arithmetic the kernels run.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#if defined(__CUDACC__)
#define BARECNN_HD __host__ __device__ __forceinline__
#else
#define BARECNN_HD inline
#endif

namespace barecnn {

// Dimensions, outermost first: (N, C, H, W) for images, (N, F) for flat features.
using Dims = std::vector<int>;
std::string dims_str(const Dims& d);  // "64x1x28x28"
size_t dims_numel(const Dims& d);

// Eq. (2.1): output size of a window of size k slid with stride Z_s over an input of size H that
// is zero-padded by Z_p on each side: floor((H - k + 2 Z_p) / Z_s) + 1.
BARECNN_HD int window_out_size(int in, int k, int stride, int pad) { return (in - k + 2 * pad) / stride + 1; }

// Offset of element (n, c, h, w) of an NCHW tensor of shape (*, C, H, W).
BARECNN_HD long long nchw(int n, int c, int h, int w, int C, int H, int W) {
  return ((static_cast<long long>(n) * C + c) * H + h) * W + w;
}

// A convolution of input (N, C, H, W) with weights (K, C, kh, kw) [OIHW, as PyTorch], stride
// (sh, sw), zero padding (ph, pw), giving output (N, K, OH, OW).
struct Conv2dShape {
  int N = 0, C = 0, H = 0, W = 0;  // input
  int K = 0;                       // output channels (number of filters)
  int kh = 0, kw = 0;              // kernel k1 x k2
  int sh = 1, sw = 1;              // stride Z_s
  int ph = 0, pw = 0;              // zero padding Z_p
  int OH = 0, OW = 0;              // output
  long long in_numel() const { return 1LL * N * C * H * W; }
  long long out_numel() const { return 1LL * N * K * OH * OW; }
  long long weight_numel() const { return 1LL * K * C * kh * kw; }
  std::string str() const;  // "N=64 C=1 H=28 W=28 K=32 k=5x5 stride=1x1 pad=2x2 -> 28x28"
};

// Input row/column that output position `o` and kernel tap `k` read (may fall in the padding).
BARECNN_HD int window_in_pos(int o, int k, int stride, int pad) { return o * stride - pad + k; }

// For the input gradient: the output position o such that o*stride - pad + k == i, if any.
// Returns -1 when no output position reads input i through tap k.
BARECNN_HD int window_out_pos(int i, int k, int stride, int pad, int out_size) {
  int t = i + pad - k;
  if (t < 0 || t % stride != 0) return -1;
  int o = t / stride;
  return o < out_size ? o : -1;
}

// A pooling window of size (kh, kw) with stride (sh, sw) over (N, C, H, W) -> (N, C, OH, OW).
// No padding: every window lies inside the input.
struct Pool2dShape {
  int N = 0, C = 0, H = 0, W = 0;
  int kh = 0, kw = 0;
  int sh = 1, sw = 1;
  int OH = 0, OW = 0;
  long long in_numel() const { return 1LL * N * C * H * W; }
  long long out_numel() const { return 1LL * N * C * OH * OW; }
  std::string str() const;
};

// Range of pooling outputs [lo, hi) along one axis whose window contains input position i.
BARECNN_HD void pool_out_range(int i, int k, int stride, int out_size, int* lo, int* hi) {
  // window o covers [o*stride, o*stride + k): contains i iff o*stride <= i < o*stride + k
  int l = (i - k) / stride + 1;
  if (i - k < 0) l = 0;
  int h = i / stride + 1;
  *lo = l;
  *hi = h < out_size ? h : out_size;
}

// Validating constructors. `layer` names the layer in messages, e.g. "layer 3 conv(32,7)".
// They throw UsageError for impossible geometry ("input 6x6 is smaller than the 7x7 kernel").
// One stride and padding for both axes (as the arch grammar has them), or one per axis.
Conv2dShape make_conv2d_shape(int N, int C, int H, int W, int K, int kh, int kw, int stride, int pad,
                              const std::string& layer);
Conv2dShape make_conv2d_shape(int N, int C, int H, int W, int K, int kh, int kw, int sh, int sw, int ph, int pw,
                              const std::string& layer);
Pool2dShape make_pool2d_shape(int N, int C, int H, int W, int kh, int kw, int stride, const std::string& layer);
Pool2dShape make_pool2d_shape(int N, int C, int H, int W, int kh, int kw, int sh, int sw, const std::string& layer);

}  // namespace barecnn
