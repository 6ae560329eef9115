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
// One value when both axes have it ("2"), else both ("2x3").
static std::string per_axis(int h, int w) { return h == w ? std::to_string(h) : fmt(h, "x", w); }

Conv2dShape make_conv2d_shape(int N, int C, int H, int W, int K, int kh, int kw, int stride, int pad,
                              const std::string& layer) {
  return make_conv2d_shape(N, C, H, W, K, kh, kw, stride, stride, pad, pad, layer);
}

Conv2dShape make_conv2d_shape(int N, int C, int H, int W, int K, int kh, int kw, int sh, int sw, int ph, int pw,
                              const std::string& layer) {
  if (K < 1) throw UsageError(fmt(layer, ": the number of output channels must be >= 1, got ", K));
  if (kh < 1 || kw < 1) throw UsageError(fmt(layer, ": the kernel size must be >= 1, got ", ksize(kh, kw)));
  if (sh < 1 || sw < 1) throw UsageError(fmt(layer, ": the stride must be >= 1, got ", per_axis(sh, sw)));
  if (ph < 0 || pw < 0) throw UsageError(fmt(layer, ": the padding must be >= 0, got ", per_axis(ph, pw)));
  if (C < 1 || H < 1 || W < 1) throw UsageError(fmt(layer, ": empty input ", C, "x", H, "x", W));
  // 64-bit: a net of many padded layers can grow H past what H + 2 * pad holds in an int.
  const long long PH = H + 2LL * ph, PW = W + 2LL * pw;
  if (PH < kh || PW < kw) {
    if (ph == 0 && pw == 0)
      throw UsageError(fmt(layer, ": input ", H, "x", W, " is smaller than the ", ksize(kh, kw),
                           " kernel; use a smaller kernel, add padding, or remove a pooling layer before it"));
    throw UsageError(fmt(layer, ": input ", H, "x", W, " padded by ", per_axis(ph, pw), " is ", PH, "x", PW,
                         ", smaller than the ", ksize(kh, kw), " kernel"));
  }
  Conv2dShape s;
  s.N = N;
  s.C = C;
  s.H = H;
  s.W = W;
  s.K = K;
  s.kh = kh;
  s.kw = kw;
  s.sh = sh;
  s.sw = sw;
  s.ph = ph;
  s.pw = pw;
  // Eq. (2.1) in 64 bits. One image's output must fit the int sizes every layer keeps (Dims,
  // a flatten's width): past that the padding or the channel count is a typo, not a net.
  const long long OH = (PH - kh) / sh + 1, OW = (PW - kw) / sw + 1;
  // (Checked factor by factor so that the product itself cannot overflow.)
  if (OH > INT_MAX || OW > INT_MAX || K * OH > INT_MAX || K * OH * OW > INT_MAX)
    throw UsageError(fmt(layer, ": output ", K, "x", OH, "x", OW, " is more than ", INT_MAX,
                         " values per image; use less padding, fewer output channels or a larger stride"));
  s.OH = int(OH);
  s.OW = int(OW);
  return s;
}

Pool2dShape make_pool2d_shape(int N, int C, int H, int W, int kh, int kw, int stride, const std::string& layer) {
  return make_pool2d_shape(N, C, H, W, kh, kw, stride, stride, layer);
}

Pool2dShape make_pool2d_shape(int N, int C, int H, int W, int kh, int kw, int sh, int sw, const std::string& layer) {
  if (kh < 1 || kw < 1) throw UsageError(fmt(layer, ": the pooling window must be >= 1, got ", ksize(kh, kw)));
  if (sh < 1 || sw < 1) throw UsageError(fmt(layer, ": the stride must be >= 1, got ", per_axis(sh, sw)));
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
  s.sh = sh;
  s.sw = sw;
  s.OH = window_out_size(H, kh, sh, 0);
  s.OW = window_out_size(W, kw, sw, 0);
  return s;
}

}  // namespace barecnn
