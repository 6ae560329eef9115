#include "barecnn/error.h"
#include "barecnn/shape.h"
#include "barecnn/tensor.h"

namespace barecnn {

std::string dims_str(const Dims& d) {
  std::string s;
  for (size_t i = 0; i < d.size(); ++i) s += (i ? "x" : "") + std::to_string(d[i]);
  return s.empty() ? "()" : s;
}

size_t dims_numel(const Dims& d) {
  size_t n = 1;
  for (int x : d) n *= size_t(x < 0 ? 0 : x);
  return n;
}

std::string Conv2dShape::str() const {
  return fmt("N=", N, " C=", C, " H=", H, " W=", W, " K=", K, " k=", kh, "x", kw, " stride=", sh, "x", sw,
             " pad=", ph, "x", pw, " -> ", OH, "x", OW);
}
std::string Pool2dShape::str() const {
  return fmt("N=", N, " C=", C, " H=", H, " W=", W, " k=", kh, "x", kw, " stride=", sh, "x", sw, " -> ", OH, "x", OW);
}

static std::string ksize(int kh, int kw) { return fmt(kh, "x", kw); }

Conv2dShape make_conv2d_shape(int N, int C, int H, int W, int K, int kh, int kw, int stride, int pad,
                              const std::string& layer) {
  if (K < 1) throw UsageError(fmt(layer, ": the number of output channels must be >= 1, got ", K));
  if (kh < 1 || kw < 1) throw UsageError(fmt(layer, ": the kernel size must be >= 1, got ", ksize(kh, kw)));
  if (stride < 1) throw UsageError(fmt(layer, ": the stride must be >= 1, got ", stride));
  if (pad < 0) throw UsageError(fmt(layer, ": the padding must be >= 0, got ", pad));
  if (C < 1 || H < 1 || W < 1) throw UsageError(fmt(layer, ": empty input ", C, "x", H, "x", W));
  if (H + 2 * pad < kh || W + 2 * pad < kw) {
    if (pad == 0)
      throw UsageError(fmt(layer, ": input ", H, "x", W, " is smaller than the ", ksize(kh, kw),
                           " kernel; use a smaller kernel, add padding, or remove a pooling layer before it"));
    throw UsageError(fmt(layer, ": input ", H, "x", W, " padded by ", pad, " is ", H + 2 * pad, "x", W + 2 * pad,
                         ", smaller than the ", ksize(kh, kw), " kernel"));
  }
  Conv2dShape s;
  s.N = N; s.C = C; s.H = H; s.W = W; s.K = K;
  s.kh = kh; s.kw = kw; s.sh = s.sw = stride; s.ph = s.pw = pad;
  s.OH = window_out_size(H, kh, stride, pad);
  s.OW = window_out_size(W, kw, stride, pad);
  return s;
}

Pool2dShape make_pool2d_shape(int N, int C, int H, int W, int kh, int kw, int stride, const std::string& layer) {
  if (kh < 1 || kw < 1) throw UsageError(fmt(layer, ": the pooling window must be >= 1, got ", ksize(kh, kw)));
  if (stride < 1) throw UsageError(fmt(layer, ": the stride must be >= 1, got ", stride));
  if (C < 1 || H < 1 || W < 1) throw UsageError(fmt(layer, ": empty input ", C, "x", H, "x", W));
  if (H < kh || W < kw)
    throw UsageError(fmt(layer, ": input ", H, "x", W, " is smaller than the ", ksize(kh, kw),
                         " pooling window; use a smaller window or remove an earlier pooling layer"));
  Pool2dShape s;
  s.N = N; s.C = C; s.H = H; s.W = W;
  s.kh = kh; s.kw = kw; s.sh = s.sw = stride;
  s.OH = window_out_size(H, kh, stride, 0);
  s.OW = window_out_size(W, kw, stride, 0);
  return s;
}

}  // namespace barecnn
