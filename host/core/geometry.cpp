#include <climits>

#include "barecnn/error.h"
#include "barecnn/shape.h"

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
  return fmt("N=", N, " C=", C, " H=", H, " W=", W, " K=", K, " k=", kh, "x", kw, " stride=", sh, "x", sw, " pad=", ph,
             "x", pw, " -> ", OH, "x", OW);
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
  // 64-bit: a net of many padded layers can grow H past what H + 2 * pad holds in an int.
  const long long PH = H + 2LL * pad, PW = W + 2LL * pad;
  if (PH < kh || PW < kw) {
    if (pad == 0)
      throw UsageError(fmt(layer, ": input ", H, "x", W, " is smaller than the ", ksize(kh, kw),
                           " kernel; use a smaller kernel, add padding, or remove a pooling layer before it"));
    throw UsageError(fmt(layer, ": input ", H, "x", W, " padded by ", pad, " is ", PH, "x", PW, ", smaller than the ",
                         ksize(kh, kw), " kernel"));
  }
  Conv2dShape s;
  s.N = N;
  s.C = C;
  s.H = H;
  s.W = W;
  s.K = K;
  s.kh = kh;
  s.kw = kw;
  s.sh = s.sw = stride;
  s.ph = s.pw = pad;
  // Eq. (2.1) in 64 bits. One image's output must fit the int sizes every layer keeps (Dims,
  // a flatten's width): past that the padding or the channel count is a typo, not a net.
  const long long OH = (PH - kh) / stride + 1, OW = (PW - kw) / stride + 1;
  // (Checked factor by factor so that the product itself cannot overflow.)
  if (OH > INT_MAX || OW > INT_MAX || K * OH > INT_MAX || K * OH * OW > INT_MAX)
    throw UsageError(fmt(layer, ": output ", K, "x", OH, "x", OW, " is more than ", INT_MAX,
                         " values per image; use less padding, fewer output channels or a larger stride"));
  s.OH = int(OH);
  s.OW = int(OW);
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
  s.N = N;
  s.C = C;
  s.H = H;
  s.W = W;
  s.kh = kh;
  s.kw = kw;
  s.sh = s.sw = stride;
  s.OH = window_out_size(H, kh, stride, 0);
  s.OW = window_out_size(W, kw, stride, 0);
  return s;
}

}  // namespace barecnn
