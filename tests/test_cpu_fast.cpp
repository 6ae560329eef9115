// The fast float CPU ops (barecnn::cpu, host/cpu/) against the double-precision reference, on odd
// shapes (batch 1/3/65, channels 1/3/17, kernels 1x1/3x3/5x5/2x3, strides 1/2/3, paddings 0/1/2,
// sizes that do not divide the GEMM tiles, shapes that cross every cache block of sgemm.h) and on
// the layers of the preset nets; then bitwise determinism across thread counts and runs.
// Every check runs once per instruction set the CPU supports (generic x86-64, AVX2+FMA, AVX-512F).
//
// Tolerance. Each op gets its own inputs, scaled so that its reduction of L terms has terms of
// size <= 1/sqrt(L) (as with fan-in initialized weights): outputs are O(1). The inputs are rounded
// to float first and the reference sees exactly those values, so the only difference is float
// rounding of the products and sums. Rounding errors are unbiased and add up like a random walk:
// |err| ~ u * sqrt(L) * O(1) with u = 6e-8, at most ~1.5e-5 for the longest reduction here
// (L = 64 * 784 = 50k, the paper conv's weight gradient); the suite also passes with 1e-5.
// atol = rtol = 1e-4 leaves a margin of 7x or more and still catches one missing or doubled term
// (|term| ~ 1/sqrt(L) >= 4e-3) or a misplaced tap.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <tuple>
#include <vector>

#include "barecnn/cpu_ops.h"
#include "barecnn/error.h"
#include "barecnn/norm.h"
#include "barecnn/ref_ops.h"
#include "barecnn/rng.h"
#include "barecnn/shape.h"
#include "test_util.h"

using namespace barecnn;
using barecnn::test::all_close;
using barecnn::test::cast_vec;
using barecnn::test::conv_shape;
using barecnn::test::random_vec;

namespace {

constexpr double kAtol = 1e-4, kRtol = 1e-4;

std::vector<Conv2dShape> odd_conv_shapes() {
  return {
      conv_shape(1, 1, 7, 9, 3, 3, 3, 1, 1, 1, 1),
      conv_shape(3, 3, 11, 13, 17, 5, 5, 2, 2, 2, 2),
      conv_shape(65, 3, 9, 8, 5, 2, 3, 3, 1, 0, 1),    // 2x3 kernel, stride (3,1), pad (0,1)
      conv_shape(2, 17, 10, 7, 7, 1, 1, 1, 1, 0, 0),   // 1x1: the pointwise path (no im2col)
      conv_shape(3, 17, 9, 9, 3, 1, 1, 2, 2, 0, 0),    // 1x1 with stride 2: im2col
      conv_shape(1, 2, 5, 6, 4, 5, 5, 3, 3, 2, 2),     // kernel as large as the input, stride 3
      conv_shape(2, 3, 30, 31, 19, 3, 2, 1, 2, 1, 0),  // 19 channels: partial 4- and 6-row tiles
      conv_shape(1, 3, 40, 37, 8, 3, 3, 1, 1, 1, 1),   // batch 1: pixels split across 8 items
      conv_shape(2, 30, 8, 8, 100, 3, 3, 1, 1, 1, 1),  // K=100 > MC=96, C*k*k=270 > KC=256
      conv_shape(8, 1, 36, 36, 4, 3, 3, 1, 1, 1, 1),   // 1296 pixels > NC=1024
      conv_shape(2, 64, 28, 28, 5, 3, 3, 1, 1, 1, 1),  // im2col over 256 KiB: pixel blocks
      conv_shape(19, 2, 6, 5, 3, 3, 3, 2, 1, 1, 2),    // 19 images: 9 groups of 2 + 1 in backward_weight
      // stride 1 through padded "wide" rows and the row tiles (forward; gather backward-input
      // where C >= min(K, 32)):
      conv_shape(1, 9, 13, 11, 4, 3, 2, 1, 1, 3, 0),    // pad 3 > kh - 1, batch 1: 8 row blocks
      conv_shape(3, 5, 6, 20, 5, 1, 4, 1, 1, 0, 3),     // 1x4 kernel, pad (0, 3): dout padded by (0, 0)
      conv_shape(2, 40, 40, 40, 40, 3, 3, 1, 1, 1, 1),  // planes over 256 KiB: several row blocks
      // backward_weight: 3 images side by side in the wide form (13 rows of 31: 403 columns each,
      // not a multiple of 8: each image's block ends in its own tail step; CpuGemm below):
      conv_shape(40, 2, 13, 30, 40, 3, 3, 1, 1, 1, 1),
      // backward_weight with the channels in the lanes (stride 1, K a multiple of 32, 3x3 or 5x5):
      // 40 images in 14 groups; 5x5 with 25 tap rows (tiles of 2 and 1 under AVX-512), padding
      // (2, 1); 3 vector pairs of channels over 9 tap rows (4, 4, 1), no top padding:
      conv_shape(40, 2, 13, 15, 64, 3, 3, 1, 1, 1, 1),
      conv_shape(3, 5, 9, 11, 32, 5, 5, 1, 1, 2, 1),
      conv_shape(5, 3, 7, 10, 96, 3, 3, 1, 1, 0, 1),
      // one input channel (the direct AVX-512 loops): a 2x3 kernel, 9 channels (not a multiple of
      // the loops' 4 or 2), 9 rows (not of 4), 19 columns (a 16-pixel vector and a tail of 3);
      // 5x5 over 40 columns (three vectors, two of pooled windows):
      conv_shape(3, 1, 10, 19, 9, 2, 3, 1, 1, 0, 1),
      conv_shape(2, 1, 37, 40, 5, 5, 5, 1, 1, 2, 2),
      // one input channel, K a multiple of 16, 3x3 or 5x5 (backward-weight with the channels in
      // the lanes): odd output sizes (pixels in no 2x2 cell: a last row, a last column), K = 16
      // and 48 (one vector; two then one), 19 images in 10 groups, the widest padded row (64), no
      // padding:
      conv_shape(3, 1, 11, 13, 16, 5, 5, 1, 1, 2, 2),
      conv_shape(19, 1, 9, 10, 48, 3, 3, 1, 1, 1, 1),
      conv_shape(2, 1, 7, 62, 16, 3, 3, 1, 1, 1, 1),
      conv_shape(2, 1, 12, 9, 32, 5, 5, 1, 1, 0, 0),
      // one input channel, 3x3, padded 1 across (the flattened-pixel loops under AVX-512): rows of
      // 7 (a vector spans three rows), no padding down (OH = H - 2), 49 pixels (three vectors, a
      // tail of one), 10 channels (groups of 4, 4, 2 and 8, 2), 3 images of two items; padding 2
      // down (two zero rows above and below), 33 columns, a tail of 7, 7 channels, one image of 8
      // items:
      conv_shape(3, 1, 9, 7, 10, 3, 3, 1, 1, 0, 1),
      conv_shape(1, 1, 5, 33, 7, 3, 3, 1, 1, 2, 1),
      // one input channel, 5x5, padded 2 across, an even width (with a 2x2 stride-2 pool after it:
      // by phases under AVX-512): 9 rows (the last in no window, but read by the row above it), 11
      // windows a row (a vector spans rows; 44 windows: a tail of 12), 7 channels (4, 2, 1), 3
      // images of three items; 2 columns (one window a row: no neighbours), 5 channels; 36
      // columns (18 windows a row: each plane row made from two vectors of the input), one image
      // of five items:
      conv_shape(3, 1, 9, 22, 7, 5, 5, 1, 1, 2, 2),
      conv_shape(2, 1, 6, 2, 5, 5, 5, 1, 1, 2, 2),
      conv_shape(1, 1, 8, 36, 3, 5, 5, 1, 1, 2, 2),
  };
}

// The conv layers of the presets (arch.cpp): paper, lenet5, deep. Batch 16 and 8 rather than 64
// keep the double reference quick in sanitizer builds; the per-image GEMMs are the same, and the
// batch groupings of backward_weight are covered by the odd shapes (65 and 19 images).
std::vector<Conv2dShape> preset_conv_shapes() {
  return {
      conv_shape(16, 1, 28, 28, 32, 5, 5, 1, 1, 2, 2),  // paper conv(32,5,pad=2)
      conv_shape(8, 1, 28, 28, 6, 5, 5, 1, 1, 2, 2),    // lenet5 conv(6,5,pad=2)
      conv_shape(8, 6, 14, 14, 16, 5, 5, 1, 1, 0, 0),   // lenet5 conv(16,5)
      conv_shape(8, 1, 28, 28, 32, 3, 3, 1, 1, 1, 1),   // deep conv(32,3,pad=1) x2
      conv_shape(8, 32, 28, 28, 32, 3, 3, 1, 1, 1, 1),
      conv_shape(8, 32, 14, 14, 64, 3, 3, 1, 1, 1, 1),  // deep conv(64,3,pad=1) x2
      conv_shape(8, 64, 14, 14, 64, 3, 3, 1, 1, 1, 1),
  };
}

struct DenseShape {
  int N, IN, OUT;
};
std::vector<DenseShape> odd_dense_shapes() {
  return {{1, 1, 1},     {3, 7, 5},    {65, 17, 33}, {5, 300, 97}, {65, 1000, 130}, {1, 6272, 128}, {300, 37, 19},
          {67, 129, 16}, {2, 300, 13}, {130, 33, 2}, {5, 84, 11},  {300, 40, 3},    {1030, 130, 9}};
}
// (From {67, 129, 16} on: the narrow layers' own kernels under AVX-512, OUT <= 16: every row count
// mod 4 and 3, inputs past a multiple of 8 and 16, odd OUT, two weight tiles (13, 16), a batch
// longer than sgemm_nn's K block (300), and one large enough to be split across threads.)
// paper dense(128), dense(10); deep dense(256), dense(10); lenet5 dense(120), dense(84), dense(10)
std::vector<DenseShape> preset_dense_shapes() {
  return {{64, 6272, 128}, {64, 128, 10}, {64, 3136, 256}, {64, 256, 10}, {64, 400, 120}, {64, 120, 84}, {64, 84, 10}};
}

// The instruction sets this CPU can run; each check runs under every one of them.
std::vector<cpu::CpuIsa> isas() {
  std::vector<cpu::CpuIsa> v = {cpu::CpuIsa::Generic};
  if (cpu::cpu_isa_supported(cpu::CpuIsa::Avx2)) v.push_back(cpu::CpuIsa::Avx2);
  if (cpu::cpu_isa_supported(cpu::CpuIsa::Avx512)) v.push_back(cpu::CpuIsa::Avx512);
  return v;
}
// Restores the start ISA and thread count after a test.
struct Restore {
  cpu::CpuIsa isa = cpu::cpu_isa();
  int threads = omp_get_max_threads();
  ~Restore() {
    cpu::set_cpu_isa(isa);
    omp_set_num_threads(threads);
  }
};

// Uniform in [-scale, scale), rounded to float; returned in both precisions with equal values.
struct Data {
  std::vector<float> f;
  std::vector<double> d;
};
Data make_data(size_t n, uint64_t seed, double scale) {
  Data x;
  x.f = cast_vec<float>(random_vec(n, seed, -scale, scale));
  x.d = cast_vec<double>(std::vector<double>(x.f.begin(), x.f.end()));
  return x;
}
std::vector<float> nans(size_t n) { return std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()); }

// The bit patterns, so that -0 != +0 and NaN == NaN (of the same payload) in a comparison, and so
// that a comparison does not itself flush a subnormal to zero (DAZ, FlushSubnormals below).
std::vector<uint32_t> bits(const std::vector<float>& v) {
  std::vector<uint32_t> b(v.size());
  std::memcpy(b.data(), v.data(), v.size() * sizeof(float));
  return b;
}
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) { return bits(a) == bits(b); }

std::string label(const Conv2dShape& s, cpu::CpuIsa isa) { return s.str() + " [" + cpu::cpu_isa_name(isa) + "]"; }
std::string label(const DenseShape& d, cpu::CpuIsa isa) {
  return "N=" + std::to_string(d.N) + " IN=" + std::to_string(d.IN) + " OUT=" + std::to_string(d.OUT) + " [" +
         cpu::cpu_isa_name(isa) + "]";
}

// ---- convolution checks, one shape ----

void check_conv_forward(const Conv2dShape& s, bool with_bias, uint64_t seed) {
  int CKK = s.C * s.kh * s.kw;
  Data inp = make_data(s.in_numel(), seed, 1.0);
  Data w = make_data(s.weight_numel(), seed + 1, 1.0 / std::sqrt(CKK));
  Data b = make_data(s.K, seed + 2, 0.5);
  std::vector<double> expect(s.out_numel());
  ref::conv2d_forward(expect.data(), inp.d.data(), w.d.data(), with_bias ? b.d.data() : nullptr, s);
  for (cpu::CpuIsa isa : isas()) {
    cpu::set_cpu_isa(isa);
    std::vector<float> out = nans(s.out_numel());  // every element must be written
    cpu::conv2d_forward(out.data(), inp.f.data(), w.f.data(), with_bias ? b.f.data() : nullptr, s);
    EXPECT_TRUE(all_close(expect, out, kAtol, kRtol)) << "forward " << label(s, isa) << " bias " << with_bias;
  }
}

void check_conv_backward_input(const Conv2dShape& s, uint64_t seed) {
  Data dout = make_data(s.out_numel(), seed, 1.0);
  Data w = make_data(s.weight_numel(), seed + 1, 1.0 / std::sqrt(s.K * s.kh * s.kw));
  std::vector<double> expect(s.in_numel());
  ref::conv2d_backward_input(expect.data(), dout.d.data(), w.d.data(), s);
  for (cpu::CpuIsa isa : isas()) {
    cpu::set_cpu_isa(isa);
    std::vector<float> dinp = nans(s.in_numel());
    cpu::conv2d_backward_input(dinp.data(), dout.f.data(), w.f.data(), s);
    EXPECT_TRUE(all_close(expect, dinp, kAtol, kRtol)) << "backward_input " << label(s, isa);
  }
}

void check_conv_backward_weight(const Conv2dShape& s, bool with_bias, uint64_t seed) {
  double L = double(s.N) * s.OH * s.OW;
  Data dout = make_data(s.out_numel(), seed, 1.0 / std::sqrt(L));
  Data inp = make_data(s.in_numel(), seed + 1, 1.0);
  std::vector<double> dw(s.weight_numel()), db(s.K);
  ref::conv2d_backward_weight(dw.data(), with_bias ? db.data() : nullptr, dout.d.data(), inp.d.data(), s);
  for (cpu::CpuIsa isa : isas()) {
    cpu::set_cpu_isa(isa);
    std::vector<float> dw_f = nans(s.weight_numel()), db_f = nans(s.K);
    cpu::conv2d_backward_weight(dw_f.data(), with_bias ? db_f.data() : nullptr, dout.f.data(), inp.f.data(), s);
    EXPECT_TRUE(all_close(dw, dw_f, kAtol, kRtol)) << "backward_weight dweight " << label(s, isa);
    if (with_bias)
      EXPECT_TRUE(all_close(db, db_f, kAtol, kRtol)) << "backward_weight dbias " << label(s, isa);
    else
      EXPECT_TRUE(std::isnan(db_f[0])) << "dbias written although null was passed";
  }
}

// Each check computes the reference once and runs the cpu:: op under every ISA.
void check_conv_all(const std::vector<Conv2dShape>& shapes) {
  Restore restore;
  uint64_t seed = 100;
  for (size_t i = 0; i < shapes.size(); i++, seed += 10) {
    const Conv2dShape& s = shapes[i];
    check_conv_forward(s, i % 2 == 0, seed);
    check_conv_backward_input(s, seed + 3);
    check_conv_backward_weight(s, i % 2 == 1, seed + 6);
  }
}

// ---- dense checks, one shape ----

void check_dense(const DenseShape& d, bool with_bias, uint64_t seed) {
  {  // forward: L = IN
    Data inp = make_data((size_t)d.N * d.IN, seed, 1.0);
    Data w = make_data((size_t)d.OUT * d.IN, seed + 1, 1.0 / std::sqrt(d.IN));
    Data b = make_data(d.OUT, seed + 2, 0.5);
    std::vector<double> expect((size_t)d.N * d.OUT);
    ref::dense_forward(expect.data(), inp.d.data(), w.d.data(), with_bias ? b.d.data() : nullptr, d.N, d.IN, d.OUT);
    for (cpu::CpuIsa isa : isas()) {
      cpu::set_cpu_isa(isa);
      std::vector<float> out = nans(expect.size());
      cpu::dense_forward(out.data(), inp.f.data(), w.f.data(), with_bias ? b.f.data() : nullptr, d.N, d.IN, d.OUT);
      EXPECT_TRUE(all_close(expect, out, kAtol, kRtol)) << "dense forward " << label(d, isa) << " bias " << with_bias;
    }
  }
  {  // backward input: L = OUT
    Data dout = make_data((size_t)d.N * d.OUT, seed + 3, 1.0);
    Data w = make_data((size_t)d.OUT * d.IN, seed + 4, 1.0 / std::sqrt(d.OUT));
    std::vector<double> expect((size_t)d.N * d.IN);
    ref::dense_backward_input(expect.data(), dout.d.data(), w.d.data(), d.N, d.IN, d.OUT);
    for (cpu::CpuIsa isa : isas()) {
      cpu::set_cpu_isa(isa);
      std::vector<float> dinp = nans(expect.size());
      cpu::dense_backward_input(dinp.data(), dout.f.data(), w.f.data(), d.N, d.IN, d.OUT);
      EXPECT_TRUE(all_close(expect, dinp, kAtol, kRtol)) << "dense backward_input " << label(d, isa);
    }
  }
  {  // backward weight: L = N
    Data dout = make_data((size_t)d.N * d.OUT, seed + 5, 1.0 / std::sqrt(d.N));
    Data inp = make_data((size_t)d.N * d.IN, seed + 6, 1.0);
    std::vector<double> dw((size_t)d.OUT * d.IN), db(d.OUT);
    ref::dense_backward_weight(dw.data(), with_bias ? db.data() : nullptr, dout.d.data(), inp.d.data(), d.N, d.IN,
                               d.OUT);
    for (cpu::CpuIsa isa : isas()) {
      cpu::set_cpu_isa(isa);
      std::vector<float> dw_f = nans(dw.size()), db_f = nans(d.OUT);
      cpu::dense_backward_weight(dw_f.data(), with_bias ? db_f.data() : nullptr, dout.f.data(), inp.f.data(), d.N, d.IN,
                                 d.OUT);
      EXPECT_TRUE(all_close(dw, dw_f, kAtol, kRtol)) << "dense backward_weight dweight " << label(d, isa);
      if (with_bias)
        EXPECT_TRUE(all_close(db, db_f, kAtol, kRtol)) << "dense backward_weight dbias " << label(d, isa);
      else
        EXPECT_TRUE(std::isnan(db_f[0])) << "dbias written although null was passed";
    }
  }
}

void check_dense_all(const std::vector<DenseShape>& shapes) {
  Restore restore;
  uint64_t seed = 500;
  for (size_t i = 0; i < shapes.size(); i++, seed += 10) check_dense(shapes[i], i % 2 == 0, seed);
}

// ---- determinism: all outputs of all ops, as one list of tensors ----

std::vector<std::vector<float>> run_conv_ops(const Conv2dShape& s) {
  Data inp = make_data(s.in_numel(), 1, 1.0), w = make_data(s.weight_numel(), 2, 0.2);
  Data b = make_data(s.K, 3, 0.5), dout = make_data(s.out_numel(), 4, 0.1);
  std::vector<float> out(s.out_numel()), dinp(s.in_numel()), dw(s.weight_numel()), db(s.K);
  cpu::conv2d_forward(out.data(), inp.f.data(), w.f.data(), b.f.data(), s);
  cpu::conv2d_backward_input(dinp.data(), dout.f.data(), w.f.data(), s);
  cpu::conv2d_backward_weight(dw.data(), db.data(), dout.f.data(), inp.f.data(), s);
  return {out, dinp, dw, db};
}

std::vector<std::vector<float>> run_dense_ops(const DenseShape& d) {
  Data inp = make_data((size_t)d.N * d.IN, 1, 1.0), w = make_data((size_t)d.OUT * d.IN, 2, 0.05);
  Data b = make_data(d.OUT, 3, 0.5), dout = make_data((size_t)d.N * d.OUT, 4, 0.1);
  std::vector<float> out((size_t)d.N * d.OUT), dinp((size_t)d.N * d.IN), dw((size_t)d.OUT * d.IN), db(d.OUT);
  cpu::dense_forward(out.data(), inp.f.data(), w.f.data(), b.f.data(), d.N, d.IN, d.OUT);
  cpu::dense_backward_input(dinp.data(), dout.f.data(), w.f.data(), d.N, d.IN, d.OUT);
  cpu::dense_backward_weight(dw.data(), db.data(), dout.f.data(), inp.f.data(), d.N, d.IN, d.OUT);
  return {out, dinp, dw, db};
}

template <typename Shape, typename Run>
void check_deterministic(const Shape& shape, Run run) {
  const char* names[] = {"forward", "backward_input", "backward_weight dweight", "backward_weight dbias"};
  omp_set_num_threads(1);
  auto one = run(shape);
  omp_set_num_threads(2);
  auto two = run(shape), again = run(shape);
  omp_set_num_threads(3);
  auto three = run(shape);
  for (size_t t = 0; t < one.size(); t++) {
    EXPECT_TRUE(same_bits(one[t], two[t])) << names[t] << ": 1 vs 2 threads " << label(shape, cpu::cpu_isa());
    EXPECT_TRUE(same_bits(two[t], again[t])) << names[t] << ": two runs " << label(shape, cpu::cpu_isa());
    EXPECT_TRUE(same_bits(one[t], three[t])) << names[t] << ": 1 vs 3 threads " << label(shape, cpu::cpu_isa());
  }
}

}  // namespace

TEST(Conv2dCpu, OddShapesMatchReference) { check_conv_all(odd_conv_shapes()); }
TEST(Conv2dCpu, PresetShapesMatchReference) { check_conv_all(preset_conv_shapes()); }
TEST(DenseCpu, OddShapesMatchReference) { check_dense_all(odd_dense_shapes()); }
TEST(DenseCpu, PresetShapesMatchReference) { check_dense_all(preset_dense_shapes()); }

// Batch 0 is legal (the reference accepts it): nothing to compute, parameter gradients are zero.
TEST(Conv2dCpu, EmptyBatchGivesZeroGradients) {
  Conv2dShape s = conv_shape(0, 2, 5, 5, 3, 3, 3, 1, 1, 1, 1);
  std::vector<float> w(s.weight_numel(), 1.f), dw = nans(s.weight_numel()), db = nans(s.K);
  cpu::conv2d_forward(nullptr, nullptr, w.data(), nullptr, s);
  cpu::conv2d_backward_weight(dw.data(), db.data(), nullptr, nullptr, s);
  EXPECT_TRUE(all_close(std::vector<double>(dw.size(), 0.0), dw, 0, 0));
  EXPECT_TRUE(all_close(std::vector<double>(db.size(), 0.0), db, 0, 0));
  std::vector<float> ddw = nans(12), ddb = nans(3);
  cpu::dense_backward_weight(ddw.data(), ddb.data(), nullptr, nullptr, 0, 4, 3);
  EXPECT_TRUE(all_close(std::vector<double>(12, 0.0), ddw, 0, 0));
  EXPECT_TRUE(all_close(std::vector<double>(3, 0.0), ddb, 0, 0));
}

// The edge data of the fused conv tests: input, weights and bias of shape s (seeds seed..seed+2)
// with filter 0 all zero and a zero bias (its outputs are exactly 0: the ReLU's kink, a tie in
// every pooling window) and a NaN pixel in image 0; and n gradient values (seed) with -0 and
// +-1e30 at every `every`-th place and `inf` in the middle.
struct EdgeConv {
  std::vector<float> x, w, b;
};
EdgeConv edge_conv(const Conv2dShape& s, uint64_t seed) {
  const size_t n_in = size_t(s.in_numel()), n_w = size_t(s.weight_numel());
  EdgeConv e{make_data(n_in, seed, 1.0).f, make_data(n_w, seed + 1, 0.5).f, make_data(s.K, seed + 2, 0.5).f};
  std::fill(e.w.begin(), e.w.begin() + n_w / s.K, 0.f);
  e.b[0] = 0.f;
  e.x[n_in / size_t(s.N) / 2] = std::numeric_limits<float>::quiet_NaN();
  return e;
}
std::vector<float> edge_grad(size_t n, uint64_t seed, size_t every, float inf) {
  std::vector<float> g = make_data(n, seed, 1.0).f;
  for (size_t i = 0; i < n; i += every) g[i] = i % 3 == 0 ? -0.f : i % 3 == 1 ? 1e30f : -1e30f;
  g[n / 2] = inf;
  return g;
}

// The fused ReLU (forward with fuse_relu, the backward ops with relu_out) gives the bits of the
// chain it replaces: conv, activation_forward(Relu), activation_backward(Relu), the unfused
// backward ops. Every path of the ops (gather, scatter, pointwise, images side by side in
// backward_weight) under every ISA, with the edges in the data: filter 0 all zero with a zero bias
// (its outputs are exactly 0, the ReLU's kink), a NaN pixel in image 0 (NaN outputs, which the
// ReLU keeps and whose gradient the mask zeroes), and -0, +-inf among the output gradients.
TEST(Conv2dCpu, FusedReluIsTheUnfusedChainBitForBit) {
  Restore restore;
  std::vector<Conv2dShape> shapes = odd_conv_shapes();
  for (const Conv2dShape& s : preset_conv_shapes()) shapes.push_back(s);
  for (cpu::CpuIsa isa : isas()) {
    cpu::set_cpu_isa(isa);
    for (const Conv2dShape& s : shapes) {
      if (s.N == 0) continue;
      const size_t n_in = size_t(s.in_numel()), n_out = size_t(s.out_numel()), n_w = size_t(s.weight_numel());
      const EdgeConv e = edge_conv(s, 71);
      const std::vector<float>&x = e.x, &w = e.w, &b = e.b;
      const std::vector<float> dout = edge_grad(n_out, 74, 11, std::numeric_limits<float>::infinity());
      // fused
      std::vector<float> y(n_out), dx(n_in), dw(n_w), db(s.K);
      cpu::conv2d_forward(y.data(), x.data(), w.data(), b.data(), s, /*fuse_relu=*/true);
      cpu::conv2d_backward_weight(dw.data(), db.data(), dout.data(), x.data(), s, y.data());
      cpu::conv2d_backward_input(dx.data(), dout.data(), w.data(), s, y.data());
      // unfused
      const Activation relu{Act::Relu, 0.f};
      std::vector<float> pre(n_out), yu(n_out), g(n_out), dxu(n_in), dwu(n_w), dbu(s.K);
      cpu::conv2d_forward(pre.data(), x.data(), w.data(), b.data(), s);
      cpu::activation_forward(yu.data(), pre.data(), (long long)n_out, relu);
      cpu::activation_backward(g.data(), dout.data(), pre.data(), yu.data(), (long long)n_out, relu);
      cpu::conv2d_backward_weight(dwu.data(), dbu.data(), g.data(), x.data(), s);
      cpu::conv2d_backward_input(dxu.data(), g.data(), w.data(), s);
      EXPECT_EQ(bits(y), bits(yu)) << label(s, isa);
      EXPECT_EQ(bits(dw), bits(dwu)) << label(s, isa);
      EXPECT_EQ(bits(db), bits(dbu)) << label(s, isa);
      EXPECT_EQ(bits(dx), bits(dxu)) << label(s, isa);
    }
  }
}

// The fused conv + ReLU + max pooling (conv2d_forward_relu_maxpool and its two backward ops) gives
// the bits of the chain it replaces: conv, ReLU, maxpool2d_forward, maxpool2d_backward, the ReLU's
// backward, the conv's backward ops, in values, in the mask and in every gradient. Every stride-1
// shape of the conv tests (row blocks of odd heights, which the fused op rounds to whole pooling
// rows; batch 1 to 65) under every ISA, with three pools: 2x2 stride 2, 3x3 stride 3 and 2x2
// stride 3 (pixels in no window); odd sizes leave rows and columns out. The edges as above: a
// filter of zeros (ties at +0 in every window: the first wins; pooled 0: the ReLU's mask), a NaN
// pixel (image 0, which the one-channel weight gradient sums over every pixel under AVX2 and
// AVX-512, the other images over each window's winner alone), and -0 (the max-pool backward's +0 +
// -0), +-inf, huge values among the pooled gradients.
TEST(Conv2dCpu, FusedReluMaxPoolIsTheUnfusedChainBitForBit) {
  Restore restore;
  std::vector<Conv2dShape> shapes = odd_conv_shapes();
  for (const Conv2dShape& s : preset_conv_shapes()) shapes.push_back(s);
  const Activation relu{Act::Relu, 0.f};
  int checked = 0;
  for (cpu::CpuIsa isa : isas()) {
    cpu::set_cpu_isa(isa);
    for (const Conv2dShape& s : shapes) {
      for (auto [k, stride] : {std::pair{2, 2}, std::pair{3, 3}, std::pair{2, 3}}) {
        if (s.N == 0 || s.OH < k || s.OW < k) continue;
        const Pool2dShape ps = make_pool2d_shape(s.N, s.K, s.OH, s.OW, k, k, stride, "test");
        const bool stride1 = s.sh == 1 && s.sw == 1, pointwise = s.kh == 1 && s.kw == 1 && s.ph == 0 && s.pw == 0;
        ASSERT_EQ(cpu::conv2d_fuses_maxpool(s, ps), stride1 && !pointwise) << label(s, isa);
        if (!cpu::conv2d_fuses_maxpool(s, ps)) continue;
        const size_t n_in = size_t(s.in_numel()), n_out = size_t(s.out_numel()), n_w = size_t(s.weight_numel());
        const size_t n_pool = size_t(ps.out_numel());
        const EdgeConv e = edge_conv(s, 81);
        const std::vector<float>&x = e.x, &w = e.w, &b = e.b;
        const std::vector<float> dp = edge_grad(n_pool, 84, 5, -std::numeric_limits<float>::infinity());
        // fused
        std::vector<float> yp(n_pool, 7.f), dx(n_in, 7.f), dw(n_w, 7.f), db(s.K, 7.f);
        std::vector<int32_t> m(n_pool, -1);
        cpu::conv2d_forward_relu_maxpool(yp.data(), m.data(), x.data(), w.data(), b.data(), s, ps);
        cpu::conv2d_backward_weight_relu_maxpool(dw.data(), db.data(), dp.data(), yp.data(), m.data(), x.data(), s, ps);
        cpu::conv2d_backward_input_relu_maxpool(dx.data(), dp.data(), yp.data(), m.data(), w.data(), s, ps);
        // unfused
        std::vector<float> pre(n_out), y(n_out), ypu(n_pool), dy(n_out), g(n_out), dxu(n_in), dwu(n_w), dbu(s.K);
        std::vector<int32_t> mu(n_pool);
        cpu::conv2d_forward(pre.data(), x.data(), w.data(), b.data(), s);
        cpu::activation_forward(y.data(), pre.data(), (long long)n_out, relu);
        cpu::maxpool2d_forward(ypu.data(), mu.data(), y.data(), ps);
        cpu::maxpool2d_backward(dy.data(), dp.data(), mu.data(), ps);
        cpu::activation_backward(g.data(), dy.data(), pre.data(), y.data(), (long long)n_out, relu);
        cpu::conv2d_backward_weight(dwu.data(), dbu.data(), g.data(), x.data(), s);
        cpu::conv2d_backward_input(dxu.data(), g.data(), w.data(), s);
        const std::string what = label(s, isa) + " pool " + ps.str();
        EXPECT_EQ(bits(yp), bits(ypu)) << what;
        EXPECT_EQ(m, mu) << what;
        EXPECT_EQ(bits(dw), bits(dwu)) << what;
        EXPECT_EQ(bits(db), bits(dbu)) << what;
        EXPECT_EQ(bits(dx), bits(dxu)) << what;
        ++checked;
      }
    }
  }
  EXPECT_GE(checked, 30);
  // Strides other than 1, overlapping windows and a pool of another conv's output are refused.
  const Conv2dShape s = conv_shape(2, 3, 12, 12, 4, 3, 3, 1, 1, 1, 1);
  EXPECT_TRUE(cpu::conv2d_fuses_maxpool(s, make_pool2d_shape(2, 4, 12, 12, 2, 2, 2, "test")));
  EXPECT_FALSE(cpu::conv2d_fuses_maxpool(s, make_pool2d_shape(2, 4, 12, 12, 3, 3, 2, "test")));
  EXPECT_FALSE(cpu::conv2d_fuses_maxpool(s, make_pool2d_shape(2, 5, 12, 12, 2, 2, 2, "test")));
  EXPECT_FALSE(cpu::conv2d_fuses_maxpool(s, make_pool2d_shape(2, 4, 10, 12, 2, 2, 2, "test")));
}

TEST(Conv2dCpu, BitwiseSameForAnyThreadCountAndRun) {
  Restore restore;
  for (cpu::CpuIsa isa : isas()) {
    cpu::set_cpu_isa(isa);
    // the paper conv at its training batch of 64, deep's first two convs, and odd shapes (65
    // images, batch 1 split into pixel blocks, 19 images in groups)
    for (const Conv2dShape& s :
         {conv_shape(64, 1, 28, 28, 32, 5, 5, 1, 1, 2, 2), preset_conv_shapes()[3], preset_conv_shapes()[4],
          odd_conv_shapes()[2], odd_conv_shapes()[7], odd_conv_shapes()[11]})
      check_deterministic(s, run_conv_ops);
  }
}

TEST(DenseCpu, BitwiseSameForAnyThreadCountAndRun) {
  Restore restore;
  for (cpu::CpuIsa isa : isas()) {
    cpu::set_cpu_isa(isa);
    for (const DenseShape& d : {preset_dense_shapes()[0], preset_dense_shapes()[2], odd_dense_shapes()[4]})
      check_deterministic(d, run_dense_ops);
  }
}

// Both instruction sets are checked against the reference above; here only the switch itself.
TEST(CpuIsa, SwitchWorksAndUnsupportedIsRefused) {
  Restore restore;
  EXPECT_TRUE(cpu::cpu_isa_supported(cpu::CpuIsa::Generic));
  cpu::set_cpu_isa(cpu::CpuIsa::Generic);
  EXPECT_EQ(cpu::cpu_isa(), cpu::CpuIsa::Generic);
  for (cpu::CpuIsa isa : {cpu::CpuIsa::Avx2, cpu::CpuIsa::Avx512}) {
    if (cpu::cpu_isa_supported(isa)) {
      cpu::set_cpu_isa(isa);
      EXPECT_EQ(cpu::cpu_isa(), isa);
    } else {
      EXPECT_THROW(cpu::set_cpu_isa(isa), Error) << cpu::cpu_isa_name(isa);
    }
  }
  // AVX-512 implies AVX2 here (its kernels are checked against the AVX2 ones).
  if (cpu::cpu_isa_supported(cpu::CpuIsa::Avx512)) {
    EXPECT_TRUE(cpu::cpu_isa_supported(cpu::CpuIsa::Avx2));
  }
}

// AVX-512's kernels make each output's chain of operations the AVX2 kernels make (sgemm_nn: 32-column
// tiles of 6-12 rows against 16-column tiles of 4 or 6; sgemm_nt: two rows of A per 16-float
// vector, each half the 8 lanes of one AVX2 accumulator): the conv and dense ops give the same bits
// under both, forward and backward, on odd and preset shapes. On a CPU without AVX-512 this checks
// that Avx512 is refused (CpuIsa above) and nothing else.
TEST(CpuIsa, Avx512GivesTheBitsOfAvx2) {
  if (!cpu::cpu_isa_supported(cpu::CpuIsa::Avx512)) {
    EXPECT_THROW(cpu::set_cpu_isa(cpu::CpuIsa::Avx512), Error);
    return;
  }
  Restore restore;
  std::vector<Conv2dShape> convs = odd_conv_shapes();
  for (const Conv2dShape& s : preset_conv_shapes()) convs.push_back(s);
  for (const Conv2dShape& s : convs) {
    const Data x = make_data(s.in_numel(), 1, 1.0), w = make_data(s.weight_numel(), 2, 0.5), b = make_data(s.K, 3, 0.5),
               g = make_data(s.out_numel(), 4, 1.0);
    std::vector<float> out[2], dinp[2], dw[2], db[2];
    for (int t = 0; t < 2; t++) {
      cpu::set_cpu_isa(t == 0 ? cpu::CpuIsa::Avx2 : cpu::CpuIsa::Avx512);
      out[t] = nans(s.out_numel()), dinp[t] = nans(s.in_numel()), dw[t] = nans(s.weight_numel()), db[t] = nans(s.K);
      cpu::conv2d_forward(out[t].data(), x.f.data(), w.f.data(), b.f.data(), s);
      cpu::conv2d_backward_input(dinp[t].data(), g.f.data(), w.f.data(), s);
      cpu::conv2d_backward_weight(dw[t].data(), db[t].data(), g.f.data(), x.f.data(), s);
    }
    EXPECT_TRUE(same_bits(out[0], out[1])) << "forward " << s.str();
    EXPECT_TRUE(same_bits(dinp[0], dinp[1])) << "backward_input " << s.str();
    EXPECT_TRUE(same_bits(dw[0], dw[1])) << "backward_weight " << s.str();
    EXPECT_TRUE(same_bits(db[0], db[1])) << "backward bias " << s.str();
  }
  std::vector<DenseShape> denses = odd_dense_shapes();
  for (const DenseShape& d : preset_dense_shapes()) denses.push_back(d);
  for (const DenseShape& d : denses) {
    const Data x = make_data(size_t(d.N) * d.IN, 5, 1.0), w = make_data(size_t(d.OUT) * d.IN, 6, 0.5),
               b = make_data(d.OUT, 7, 0.5), g = make_data(size_t(d.N) * d.OUT, 8, 1.0);
    std::vector<float> out[2], dinp[2], dw[2], db[2];
    for (int t = 0; t < 2; t++) {
      cpu::set_cpu_isa(t == 0 ? cpu::CpuIsa::Avx2 : cpu::CpuIsa::Avx512);
      out[t] = nans(size_t(d.N) * d.OUT), dinp[t] = nans(size_t(d.N) * d.IN), dw[t] = nans(size_t(d.OUT) * d.IN),
      db[t] = nans(d.OUT);
      cpu::dense_forward(out[t].data(), x.f.data(), w.f.data(), b.f.data(), d.N, d.IN, d.OUT);
      cpu::dense_backward_input(dinp[t].data(), g.f.data(), w.f.data(), d.N, d.IN, d.OUT);
      cpu::dense_backward_weight(dw[t].data(), db[t].data(), g.f.data(), x.f.data(), d.N, d.IN, d.OUT);
    }
    const std::string label =
        "N=" + std::to_string(d.N) + " IN=" + std::to_string(d.IN) + " OUT=" + std::to_string(d.OUT);
    EXPECT_TRUE(same_bits(out[0], out[1])) << "forward " << label;
    EXPECT_TRUE(same_bits(dinp[0], dinp[1])) << "backward_input " << label;
    EXPECT_TRUE(same_bits(dw[0], dw[1])) << "backward_weight " << label;
    EXPECT_TRUE(same_bits(db[0], db[1])) << "backward bias " << label;
  }
}

// `deep`'s first conv under AVX-512 streams its output past the caches (movntps) where every
// 16-pixel vector is 64-byte aligned (conv2d.cpp, flat_c1). The values are the plain stores' and
// AVX2's, bit for bit: a one-channel 3x3 conv of 3 images x 24 channels x 16 x 16, with and without
// bias and ReLU, written to a 64-byte aligned buffer (streamed) and to one 16 bytes off (plain
// stores), both filled with NaN first. On a CPU without AVX-512 this checks nothing (CpuIsa above
// checks that Avx512 is refused).
TEST(Conv2dCpu, OneChannelStreamedOutputGivesThePlainStoresBits) {
  if (!cpu::cpu_isa_supported(cpu::CpuIsa::Avx512)) return;
  Restore restore;
  const Conv2dShape s = conv_shape(3, 1, 16, 16, 24, 3, 3, 1, 1, 1, 1);
  const size_t n = size_t(s.out_numel());
  const Data x = make_data(s.in_numel(), 11, 1.0), w = make_data(s.weight_numel(), 12, 0.5),
             b = make_data(s.K, 13, 0.5);
  struct Free {
    void operator()(float* p) const { ::operator delete(p, std::align_val_t(64)); }
  };
  std::unique_ptr<float, Free> buf(static_cast<float*>(::operator new((n + 16) * sizeof(float), std::align_val_t(64))));
  for (const float* bias : {b.f.data(), static_cast<const float*>(nullptr)})
    for (bool relu : {false, true}) {
      const std::string what = std::string(bias ? "bias" : "no bias") + (relu ? ", relu" : "");
      std::vector<float> want = nans(n);
      cpu::set_cpu_isa(cpu::CpuIsa::Avx2);
      cpu::conv2d_forward(want.data(), x.f.data(), w.f.data(), bias, s, relu);
      cpu::set_cpu_isa(cpu::CpuIsa::Avx512);
      for (int off : {0, 4}) {  // 64-byte aligned: streamed; 16 bytes off: plain stores
        float* out = buf.get() + off;
        std::fill(out, out + n, std::numeric_limits<float>::quiet_NaN());
        cpu::conv2d_forward(out, x.f.data(), w.f.data(), bias, s, relu);
        EXPECT_TRUE(same_bits(std::vector<float>(out, out + n), want)) << what << ", offset " << off * 4 << " bytes";
      }
    }
}

// Layers of at most 16 outputs take their own kernels under AVX2 and AVX-512 (dense.cpp, "narrow
// layers"); they must give the bits of the GEMMs every other layer takes, composed as
// dense_forward composes them (bias, then sgemm_nt accumulating), on the narrow shapes of the
// lists above, under both instruction sets. On a CPU without AVX2 this checks nothing.
TEST(DenseCpu, NarrowLayersGiveTheGemmsBits) {
  Restore restore;
  std::vector<DenseShape> shapes;
  for (const DenseShape& d : odd_dense_shapes())
    if (d.OUT <= 16) shapes.push_back(d);
  for (const DenseShape& d : preset_dense_shapes())
    if (d.OUT <= 16) shapes.push_back(d);
  ASSERT_GE(shapes.size(), 10u);
  for (cpu::CpuIsa isa : isas()) {
    if (isa == cpu::CpuIsa::Generic) continue;
    cpu::set_cpu_isa(isa);
    for (const DenseShape& d : shapes) {
      const size_t nx = size_t(d.N) * d.IN, nw = size_t(d.OUT) * d.IN, no = size_t(d.N) * d.OUT;
      const Data x = make_data(nx, 21, 1.0), w = make_data(nw, 22, 0.5), b = make_data(d.OUT, 23, 0.5),
                 g = make_data(no, 24, 1.0);
      std::vector<float> out = nans(no), dinp = nans(nx), dw = nans(nw), db = nans(d.OUT);
      cpu::dense_forward(out.data(), x.f.data(), w.f.data(), b.f.data(), d.N, d.IN, d.OUT);
      cpu::dense_backward_input(dinp.data(), g.f.data(), w.f.data(), d.N, d.IN, d.OUT);
      cpu::dense_backward_weight(dw.data(), db.data(), g.f.data(), x.f.data(), d.N, d.IN, d.OUT);
      std::vector<float> want_out(no), want_dinp = nans(nx), want_dw = nans(nw), want_db(d.OUT, 0.f);
      for (int n = 0; n < d.N; n++)
        for (int o = 0; o < d.OUT; o++) want_out[size_t(n) * d.OUT + o] = b.f[o];
      cpu::detail::gemm_nt(d.N, d.OUT, d.IN, x.f.data(), d.IN, w.f.data(), d.IN, want_out.data(), d.OUT, true);
      cpu::detail::gemm_nn(d.N, d.IN, d.OUT, g.f.data(), d.OUT, 1, w.f.data(), d.IN, want_dinp.data(), d.IN, nullptr,
                           false);
      cpu::detail::gemm_nn(d.OUT, d.IN, d.N, g.f.data(), 1, d.OUT, x.f.data(), d.IN, want_dw.data(), d.IN, nullptr,
                           false);
      for (int n = 0; n < d.N; n++)
        for (int o = 0; o < d.OUT; o++) want_db[o] += g.f[size_t(n) * d.OUT + o];
      const std::string label = "N=" + std::to_string(d.N) + " IN=" + std::to_string(d.IN) +
                                " OUT=" + std::to_string(d.OUT) + " [" + cpu::cpu_isa_name(isa) + "]";
      EXPECT_TRUE(same_bits(out, want_out)) << "forward " << label;
      EXPECT_TRUE(same_bits(dinp, want_dinp)) << "backward_input " << label;
      EXPECT_TRUE(same_bits(dw, want_dw)) << "backward_weight " << label;
      EXPECT_TRUE(same_bits(db, want_db)) << "backward bias " << label;
    }
  }
}

// Under AVX2 and AVX-512 the stride-1 forward and gather backward-input run as row tiles (the
// channels in the vector lanes, conv2d.cpp): each result the same chain of FMAs as the GEMM over
// the im2col matrix (from the bias, the reduction in order), so the bits of detail::gemm_nn on the
// matrices built here: the forward's col (C*kh*kw, P), the backward's dcol (K*kh*kw, H*W) of the
// gradient through flipped taps with the weights' channel axes swapped. Row runs of 1-14 pixels
// (AVX-512) and 1-6 (AVX2), channel counts past 16 and 32, a 2x3 kernel, padding wider than the
// kernel, C = 32 < K (gather from 32 input channels).
TEST(Conv2dCpu, RowTilesGiveTheGemmsBits) {
  Restore restore;
  const std::vector<Conv2dShape> shapes = {
      conv_shape(2, 3, 9, 11, 40, 3, 3, 1, 1, 1, 1), conv_shape(1, 37, 6, 13, 5, 2, 3, 1, 1, 1, 0),
      conv_shape(2, 32, 7, 14, 64, 3, 3, 1, 1, 1, 1), conv_shape(1, 20, 5, 29, 17, 3, 3, 1, 1, 3, 1),
      conv_shape(1, 2, 4, 1, 3, 1, 1, 1, 1, 0, 0) /* 1x1 unpadded: pointwise, no tiles */};
  int checked = 0;
  for (cpu::CpuIsa isa : isas()) {
    if (isa == cpu::CpuIsa::Generic) continue;  // no FMA there: the wide rows' GEMM, its own rounding
    cpu::set_cpu_isa(isa);
    for (const Conv2dShape& s : shapes) {
      const int P = s.OH * s.OW, Q = s.H * s.W, KK = s.kh * s.kw;
      const Data x = make_data(s.in_numel(), 11, 1.0), w = make_data(s.weight_numel(), 12, 0.5),
                 b = make_data(s.K, 13, 0.5), g = make_data(s.out_numel(), 14, 1.0);
      std::vector<float> out = nans(s.out_numel()), want = nans(s.out_numel());
      cpu::conv2d_forward(out.data(), x.f.data(), w.f.data(), b.f.data(), s);
      for (int n = 0; n < s.N; n++) {
        std::vector<float> col(size_t(s.C) * KK * P, 0.f);
        for (int c = 0; c < s.C; c++)
          for (int i = 0; i < s.kh; i++)
            for (int j = 0; j < s.kw; j++)
              for (int oh = 0; oh < s.OH; oh++)
                for (int ow = 0; ow < s.OW; ow++) {
                  const int h = oh - s.ph + i, v = ow - s.pw + j;
                  if (h >= 0 && h < s.H && v >= 0 && v < s.W) {
                    col[size_t((c * s.kh + i) * s.kw + j) * P + oh * s.OW + ow] =
                        x.f[((size_t(n) * s.C + c) * s.H + h) * s.W + v];
                  }
                }
        cpu::detail::gemm_nn(s.K, P, s.C * KK, w.f.data(), s.C * KK, 1, col.data(), P,
                             want.data() + size_t(n) * s.K * P, P, b.f.data(), false);
      }
      EXPECT_EQ(std::count_if(want.begin(), want.end(), [](float v) { return std::isnan(v); }), 0);
      EXPECT_TRUE(same_bits(out, want)) << "forward " << label(s, isa);
      ++checked;
      if (s.C < std::min(s.K, 32)) continue;  // the scatter form
      std::vector<float> dx = nans(s.in_numel()), want_dx = nans(s.in_numel());
      cpu::conv2d_backward_input(dx.data(), g.f.data(), w.f.data(), s);
      std::vector<float> wt(size_t(s.C) * s.K * KK);  // wt[c][(k, i, j)] = w[k][c][i][j]
      for (int k = 0; k < s.K; k++)
        for (int c = 0; c < s.C; c++)
          for (int t = 0; t < KK; t++) wt[(size_t(c) * s.K + k) * KK + t] = w.f[(size_t(k) * s.C + c) * KK + t];
      for (int n = 0; n < s.N; n++) {
        std::vector<float> dcol(size_t(s.K) * KK * Q, 0.f);
        for (int k = 0; k < s.K; k++)
          for (int i = 0; i < s.kh; i++)
            for (int j = 0; j < s.kw; j++)
              for (int h = 0; h < s.H; h++)
                for (int v = 0; v < s.W; v++) {
                  const int oh = h + s.ph - i, ow = v + s.pw - j;
                  if (oh >= 0 && oh < s.OH && ow >= 0 && ow < s.OW) {
                    dcol[size_t((k * s.kh + i) * s.kw + j) * Q + h * s.W + v] =
                        g.f[((size_t(n) * s.K + k) * s.OH + oh) * s.OW + ow];
                  }
                }
        cpu::detail::gemm_nn(s.C, Q, s.K * KK, wt.data(), s.K * KK, 1, dcol.data(), Q,
                             want_dx.data() + size_t(n) * s.C * Q, Q, nullptr, false);
      }
      EXPECT_EQ(std::count_if(want_dx.begin(), want_dx.end(), [](float v) { return std::isnan(v); }), 0);
      EXPECT_TRUE(same_bits(dx, want_dx)) << "backward_input " << label(s, isa);
      ++checked;
    }
  }
  if (cpu::cpu_isa_supported(cpu::CpuIsa::Avx2)) {
    EXPECT_GE(checked, 8);  // 5 forwards, 3 backwards per ISA
  }
}

// sgemm_nt_rows (conv backward-weight: B's rows windows of padded planes, one image per block of
// the reduction) carries each output's lane partial sums across blocks, so blocks of a multiple of
// 8 columns (4 in the baseline build) give the bits of sgemm_nt over the same B laid out plainly,
// whose own K blocks differ (1100 past 512 columns at 70 rows); a block of another length (70)
// ends in its own zero-padded step: a different sum, within rounding of the plain one. The rows are asked for once
// each, in order (ColRows builds them then). Tails of 8 lanes, row and column edges of the tiles,
// accumulating; every ISA.
TEST(CpuGemm, BlockedRowsGiveTheBitsOfThePlainReduction) {
  Restore restore;
  const std::tuple<int, int, int, int> shapes[] = {{70, 13, 1100, 1100}, {32, 25, 2352, 784}, {32, 288, 3360, 840},
                                                   {64, 9, 2240, 224},   {5, 3, 600, 8},      {1, 1, 7, 7},
                                                   {6, 150, 560, 70},    {13, 17, 280, 70}};
  uint64_t seed = 900;
  for (cpu::CpuIsa isa : isas()) {
    cpu::set_cpu_isa(isa);
    for (auto [M, N, K, kblock] : shapes) {
      const Data a = make_data(size_t(M) * K, seed++, 1.0), b = make_data(size_t(N) * K, seed++, 1.0),
                 c0 = make_data(size_t(M) * N, seed++, 1.0);
      std::vector<float> blocked(size_t(N) * K);  // b's blocks stored one after another
      for (int j = 0; j < N; j++)
        for (int k = 0; k < K; k++)
          blocked[(size_t(k / kblock) * N + j) * kblock + k % kblock] = b.f[size_t(j) * K + k];
      const std::string label = std::string(cpu::cpu_isa_name(isa)) + " " + std::to_string(M) + "x" +
                                std::to_string(N) + "x" + std::to_string(K) + " blocks of " + std::to_string(kblock);
      for (bool acc : {false, true}) {
        std::vector<float> plain = acc ? c0.f : nans(size_t(M) * N), rows = plain;
        cpu::detail::gemm_nt(M, N, K, a.f.data(), K, b.f.data(), K, plain.data(), N, acc);
        int asked = -1;
        cpu::detail::gemm_nt_blocked(M, N, K, a.f.data(), K, blocked.data(), kblock, rows.data(), N, acc, &asked);
        EXPECT_EQ(asked, N) << label << ": each row asked for once, in order";
        const int lanes = isa == cpu::CpuIsa::Generic ? 4 : 8;  // the baseline build's vectors hold 4
        if (kblock % lanes == 0 || kblock == K) {
          EXPECT_TRUE(same_bits(plain, rows)) << label << (acc ? " +=" : "");
          continue;
        }
        EXPECT_FALSE(same_bits(plain, rows)) << label << ": a short block's own tail step";
        for (size_t e = 0; e < plain.size(); e++)
          ASSERT_NEAR(rows[e], plain[e], 1e-5 * std::sqrt(double(K)) * (1 + std::fabs(plain[e]))) << label << " " << e;
      }
    }
  }
}

// sgemm_nn with B's rows by pointer (the convs' wide rows) reads its full column panels in place
// and packs only a last partial one: the same chain per element as from B packed whole. Column
// counts around the 16- and 32-column panels and past the N block (1024), a row tile's edge, K past
// the K block (256), a row start, accumulating; every ISA.
TEST(CpuGemm, RowsReadInPlaceGiveThePackedBits) {
  Restore restore;
  const std::tuple<int, int, int> shapes[] = {{32, 840, 288}, {64, 224, 576}, {13, 31, 9},
                                              {8, 65, 300},   {9, 1100, 20},  {1, 1, 1}};
  uint64_t seed = 1200;
  for (cpu::CpuIsa isa : isas()) {
    cpu::set_cpu_isa(isa);
    for (auto [M, N, K] : shapes) {
      const Data a = make_data(size_t(M) * K, seed++, 1.0), b = make_data(size_t(K) * (N + 3), seed++, 1.0),
                 c0 = make_data(size_t(M) * N, seed++, 1.0), init = make_data(M, seed++, 1.0);
      std::vector<const float*> rows(static_cast<size_t>(K));  // B's rows N + 3 floats apart, from column 2
      for (int k = 0; k < K; k++) rows[size_t(k)] = b.f.data() + size_t(k) * (N + 3) + 2;
      const std::string label = std::string(cpu::cpu_isa_name(isa)) + " " + std::to_string(M) + "x" +
                                std::to_string(N) + "x" + std::to_string(K);
      for (int mode = 0; mode < 3; mode++) {  // from 0, from a row start, accumulating
        std::vector<float> packed = mode == 2 ? c0.f : nans(size_t(M) * N), direct = packed;
        const float* start = mode == 1 ? init.f.data() : nullptr;
        cpu::detail::gemm_nn(M, N, K, a.f.data(), K, 1, b.f.data() + 2, N + 3, packed.data(), N, start, mode == 2);
        cpu::detail::gemm_nn_rows(M, N, K, a.f.data(), K, 1, rows.data(), direct.data(), N, start, mode == 2);
        EXPECT_TRUE(same_bits(packed, direct)) << label << " mode " << mode;
      }
    }
  }
}

// The two GEMMs themselves, on every kind of edge of both builds' tiles: rows 1-17 (partial row
// tiles and row pairs), columns 1-65 (partial 16- and 32-column tiles, partial 8-row B tiles),
// reductions 1-600 (tails of 8 lanes, several K blocks), and shapes past the M, N and K blocks;
// A row-major and transposed, with a row start, accumulating. Each result is the double reference
// within tolerance under AVX2, and the AVX2 bits under AVX-512.
TEST(CpuIsa, Avx512GemmsGiveTheBitsOfAvx2OnEveryEdge) {
  if (!cpu::cpu_isa_supported(cpu::CpuIsa::Avx512)) {
    EXPECT_THROW(cpu::set_cpu_isa(cpu::CpuIsa::Avx512), Error);
    return;
  }
  Restore restore;
  std::vector<std::tuple<int, int, int>> shapes;
  for (int M : {1, 2, 3, 5, 6, 7, 8, 9, 12, 13, 17})
    for (int N : {1, 5, 8, 12, 16, 17, 31, 33, 65})
      for (int K : {1, 7, 8, 9, 25, 600}) shapes.emplace_back(M, N, K);
  shapes.emplace_back(100, 40, 300);  // M past sgemm_nn's MC (96), K past KC (256)
  shapes.emplace_back(70, 33, 4100);  // sgemm_nt: K cut into blocks (M >= 64), 16-column lane sums
  shapes.emplace_back(9, 1100, 20);   // N past sgemm_nn's NC (1024)
  uint64_t seed = 100;
  for (auto [M, N, K] : shapes) {
    const double scale = 1.0 / std::sqrt(double(K));
    const Data a = make_data(size_t(M) * K, seed++, 1.0), b = make_data(size_t(K) * N, seed++, scale),
               bt = make_data(size_t(N) * K, seed++, scale), c0 = make_data(size_t(M) * N, seed++, 1.0),
               init = make_data(M, seed++, 1.0);
    // The double references: A B (+ init or C), A B^T (+ C).
    std::vector<double> nn(size_t(M) * N), nt(size_t(M) * N);
    for (int i = 0; i < M; i++)
      for (int j = 0; j < N; j++) {
        double t = 0, u = 0;
        for (int k = 0; k < K; k++) {
          t += a.d[size_t(i) * K + k] * b.d[size_t(k) * N + j];
          u += a.d[size_t(i) * K + k] * bt.d[size_t(j) * K + k];
        }
        nn[size_t(i) * N + j] = t, nt[size_t(i) * N + j] = u;
      }
    std::vector<double> nn_init = nn, nn_acc = nn, nt_acc = nt;
    for (int i = 0; i < M; i++)
      for (int j = 0; j < N; j++) {
        nn_init[size_t(i) * N + j] += init.d[i];
        nn_acc[size_t(i) * N + j] += c0.d[size_t(i) * N + j];
        nt_acc[size_t(i) * N + j] += c0.d[size_t(i) * N + j];
      }
    // A transposed: A^T stored row-major (K, M), read with rsa = 1, csa = M.
    std::vector<float> at(size_t(K) * M);
    for (int i = 0; i < M; i++)
      for (int k = 0; k < K; k++) at[size_t(k) * M + i] = a.f[size_t(i) * K + k];
    const std::string label = std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K);
    std::vector<float> out[2][5];
    for (int t = 0; t < 2; t++) {
      cpu::set_cpu_isa(t == 0 ? cpu::CpuIsa::Avx2 : cpu::CpuIsa::Avx512);
      auto& o = out[t];
      for (auto& v : o) v = nans(size_t(M) * N);
      o[3] = c0.f, o[4] = c0.f;
      cpu::detail::gemm_nn(M, N, K, a.f.data(), K, 1, b.f.data(), N, o[0].data(), N, init.f.data(), false);
      cpu::detail::gemm_nn(M, N, K, at.data(), 1, M, b.f.data(), N, o[1].data(), N, nullptr, false);
      cpu::detail::gemm_nt(M, N, K, a.f.data(), K, bt.f.data(), K, o[2].data(), N, false);
      cpu::detail::gemm_nn(M, N, K, a.f.data(), K, 1, b.f.data(), N, o[3].data(), N, nullptr, true);
      cpu::detail::gemm_nt(M, N, K, a.f.data(), K, bt.f.data(), K, o[4].data(), N, true);
    }
    const std::vector<double>* ref[5] = {&nn_init, &nn, &nt, &nn_acc, &nt_acc};
    const char* name[5] = {"nn +init", "nn A^T", "nt", "nn +=", "nt +="};
    for (int v = 0; v < 5; v++) {
      EXPECT_TRUE(all_close(*ref[v], out[0][v], kAtol, kRtol)) << name[v] << " " << label << " [avx2]";
      EXPECT_TRUE(same_bits(out[0][v], out[1][v])) << name[v] << " " << label << " [avx512 vs avx2]";
    }
  }
}

// ---- elementwise: ReLU-family activations and max pooling ----

TEST(ActivationCpu, ReluFamilyMatchesReferenceExactly) {
  // Tie-free inputs away from 0 (the kink). Odd n exercises the vector loop's remainder.
  const long long n = 100003;
  std::vector<float> x = cast_vec<float>(test::tie_free_vec(n, 31, -3, 3));
  std::vector<float> dout = cast_vec<float>(random_vec(n, 32));
  // (tanh's forward is cpu's own approximation: TanhIsWithinTwoUlpsAndKeepsTheEdges below)
  for (Activation a : {Activation{Act::Relu, 0.f}, Activation{Act::LeakyRelu, 0.05f}, Activation{Act::Sigmoid, 0.f}}) {
    std::vector<float> y_ref(n), y(n), d_ref(n), d(n, 123.f);
    ref::activation_forward(y_ref.data(), x.data(), n, a);
    cpu::activation_forward(y.data(), x.data(), n, a);
    ref::activation_backward(d_ref.data(), dout.data(), x.data(), y_ref.data(), n, a);
    cpu::activation_backward(d.data(), dout.data(), x.data(), y.data(), n, a);
    // The same float formulas as the reference (values; the signs of zeros: the test below).
    EXPECT_EQ(y, y_ref) << activation_name(a);
    EXPECT_EQ(d, d_ref) << activation_name(a);
  }
}

// The vectorized select keeps the reference's conventions at the edges, bit for bit: +0 and -0
// (the kink: x > 0 is false for both), subnormals, +-inf, NaN, and NaN gradients.
TEST(ActivationCpu, ReluFamilyKeepsTheReferenceAtTheEdgesBitForBit) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const float sub = std::numeric_limits<float>::denorm_min(), big = std::numeric_limits<float>::max();
  std::vector<float> x = {0.f, -0.f, sub, -sub, 1e-38f, -1e-38f, inf, -inf, nan, -nan, big, -big, 1.f, -1.f};
  std::vector<float> g = {1.f, -2.f, 3.f, -4.f, sub, -sub, 5.f, -6.f, 7.f, nan, inf, -inf, -0.f, 0.f};
  // Repeated past a vector register's width, in every alignment, and a long run for the threads.
  std::vector<float> xs, gs;
  for (int r = 0; r < 4000; ++r)
    for (size_t i = 0; i < x.size(); ++i) xs.push_back(x[(i + r) % x.size()]), gs.push_back(g[(i + 3 * r) % g.size()]);
  const long long n = (long long)xs.size();
  for (Activation a : {Activation{Act::Relu, 0.f}, Activation{Act::LeakyRelu, 0.1f}}) {
    std::vector<float> y_ref(n), y(n), d_ref(n), d(n);
    ref::activation_forward(y_ref.data(), xs.data(), n, a);
    cpu::activation_forward(y.data(), xs.data(), n, a);
    ref::activation_backward(d_ref.data(), gs.data(), xs.data(), y_ref.data(), n, a);
    cpu::activation_backward(d.data(), gs.data(), xs.data(), y.data(), n, a);
    EXPECT_EQ(bits(y), bits(y_ref)) << activation_name(a);
    EXPECT_EQ(bits(d), bits(d_ref)) << activation_name(a);
  }
}

// cpu's tanh is its own approximation (elementwise.cpp), not glibc's: within 1.5 ulp of tanh
// rounded from double on every 389th float in [0, 10] (and the negatives: odd exactly), on a random
// run through the threads, and the conventions at the edges: +-0 -> +-0 (sign kept), subnormals
// -> themselves, +-inf -> +-1, NaN -> NaN. The backward of tanh and sigmoid is the reference's
// expression from y: bitwise.
TEST(ActivationCpu, TanhIsWithinTwoUlpsAndKeepsTheEdges) {
  const Activation th{Act::Tanh, 0.f};
  std::vector<float> xs;
  for (uint32_t b = 0; b < 0x41200000u; b += 389) {
    float x;
    std::memcpy(&x, &b, sizeof x);
    xs.push_back(x), xs.push_back(-x);
  }
  const long long n = (long long)xs.size();
  std::vector<float> y(n);
  cpu::activation_forward(y.data(), xs.data(), n, th);
  double worst = 0;
  float worst_x = 0;
  for (long long i = 0; i < n; ++i) {
    const double t = std::tanh(double(xs[i]));
    const float tf = float(t);
    const double ulp =
        std::fabs(tf) >= 1.f ? 5.960464477539063e-08 : std::nextafter(std::fabs(tf), 2.f) - std::fabs(tf);
    const double err = std::fabs(double(y[i]) - t) / ulp;
    if (err > worst) worst = err, worst_x = xs[i];
    if (i % 2 == 1) {
      ASSERT_EQ(bits({y[i]}), bits({-y[i - 1]})) << "not odd at " << xs[i];
    }
  }
  EXPECT_LE(worst, 1.5) << "worst at x = " << worst_x;
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const float sub = std::numeric_limits<float>::denorm_min();
  const float below1 = std::nextafter(1.f, 0.f);  // tanh(9) rounded; from 9.01 on tanh rounds to 1
  const std::vector<float> x = {0.f, -0.f, sub, -sub, 1e-39f, -1e-39f, inf, -inf, nan, 9.f, -9.f, 9.5f, -9.5f, 1e30f};
  const std::vector<float> want = {0.f,  -0.f, sub,    -sub,    1e-39f, -1e-39f, 1.f,
                                   -1.f, nan,  below1, -below1, 1.f,    -1.f,    1.f};
  std::vector<float> e(x.size());
  cpu::activation_forward(e.data(), x.data(), (long long)x.size(), th);
  EXPECT_EQ(bits(e), bits(want));
  // Backward, through the threads, against the reference from the same y.
  const Data g = make_data(size_t(n), 9, 1.0);
  for (Activation a : {th, Activation{Act::Sigmoid, 0.f}}) {
    std::vector<float> yy(n), d(n), d_ref(n);
    ref::activation_forward(yy.data(), xs.data(), n, a);
    cpu::activation_backward(d.data(), g.f.data(), xs.data(), yy.data(), n, a);
    ref::activation_backward(d_ref.data(), g.f.data(), xs.data(), yy.data(), n, a);
    EXPECT_EQ(bits(d), bits(d_ref)) << activation_name(a);
  }
}

// The fast batch norm (8 lanes per channel sum) against the double reference (atol + rtol) on odd
// shapes, a flat one (S = 1) and the fashion preset's planes (196, 784 values a row); against the
// float reference: the same floats on all of them (the sums differ by double rounding only);
// bitwise the same for 1, 2 and 3 threads; the running statistics and the count as the reference's.
TEST(BatchNormCpu, MatchesTheReferenceOnOddAndPresetShapes) {
  struct Shape {
    int N, C, S;
  };
  for (Shape b : {Shape{3, 5, 37}, Shape{7, 13, 1}, Shape{2, 1, 9}, Shape{5, 2, 8}, Shape{16, 3, 196}, Shape{8, 2, 784},
                  Shape{64, 3, 1}}) {
    SCOPED_TRACE(fmt("N=", b.N, " C=", b.C, " S=", b.S));
    const size_t n = size_t(b.N) * b.C * b.S;
    const double M = double(b.N) * b.S;
    auto floats = [](size_t k, uint64_t seed, double lo, double hi) {
      return cast_vec<float>(random_vec(k, seed, lo, hi));
    };
    auto to_double = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
    const std::vector<float> x = floats(n, 21, -3, 5), g = floats(b.C, 22, 0.5, 2), be = floats(b.C, 23, -1, 1),
                             dy = floats(n, 24, -1, 1);
    std::vector<float> running = floats(batchnorm_buffer_count(b.C), 25, 0.5, 1.5);
    running[2 * b.C] = 41;
    // double reference
    std::vector<double> y(n), mean(b.C), invstd(b.C), rr = to_double(running), dx(n), dg(b.C), db(b.C);
    ref::batchnorm_forward_train(y.data(), mean.data(), invstd.data(), rr.data(), to_double(x).data(),
                                 to_double(g).data(), to_double(be).data(), b.N, b.C, b.S);
    ref::batchnorm_backward(dx.data(), dg.data(), db.data(), to_double(dy).data(), to_double(x).data(),
                            to_double(g).data(), mean.data(), invstd.data(), b.N, b.C, b.S);
    // float reference and the fast version, 1-3 threads
    struct Out {
      std::vector<float> y, mean, invstd, running, dx, dg, db;
    };
    auto run = [&](bool fast) {
      Out o{nans(n), nans(b.C), nans(b.C), running, nans(n), nans(b.C), nans(b.C)};
      auto fwd = fast ? &cpu::batchnorm_forward_train : &ref::batchnorm_forward_train<float>;
      auto bwd = fast ? &cpu::batchnorm_backward : &ref::batchnorm_backward<float>;
      fwd(o.y.data(), o.mean.data(), o.invstd.data(), o.running.data(), x.data(), g.data(), be.data(), b.N, b.C, b.S);
      bwd(o.dx.data(), o.dg.data(), o.db.data(), dy.data(), x.data(), g.data(), o.mean.data(), o.invstd.data(), b.N,
          b.C, b.S);
      return o;
    };
    const Out want = run(false);
    for (int threads : {1, 2, 3}) {
      omp_set_num_threads(threads);
      const Out got = run(true);
      SCOPED_TRACE(fmt(threads, " threads"));
      const double sums = 4 * M * 1e-6;
      EXPECT_TRUE(all_close(mean, got.mean, sums, 1e-5)) << "mean";
      EXPECT_TRUE(all_close(invstd, got.invstd, 1e-5, 1e-4)) << "invstd";
      EXPECT_TRUE(all_close(y, got.y, 2e-5 + sums, 1e-5)) << "y";
      EXPECT_TRUE(all_close(std::vector<double>(rr.begin(), rr.end() - 1),
                            std::vector<float>(got.running.begin(), got.running.end() - 1), 1e-5 + sums, 1e-5))
          << "running statistics";
      EXPECT_EQ(got.running.back(), 42.f) << "num_batches_tracked";
      EXPECT_TRUE(all_close(dg, got.dg, sums, 1e-5)) << "dgamma";
      EXPECT_TRUE(all_close(db, got.db, sums, 1e-5)) << "dbeta";
      EXPECT_TRUE(all_close(dx, got.dx, 2e-5 + sums, 1e-4)) << "dx";
      for (auto [name, a, r] : {std::tuple{"y", &got.y, &want.y}, std::tuple{"mean", &got.mean, &want.mean},
                                std::tuple{"invstd", &got.invstd, &want.invstd},
                                std::tuple{"running", &got.running, &want.running}, std::tuple{"dx", &got.dx, &want.dx},
                                std::tuple{"dgamma", &got.dg, &want.dg}, std::tuple{"dbeta", &got.db, &want.db}})
        EXPECT_EQ(bits(*a), bits(*r)) << name << ": not the float reference's floats";
    }
    omp_set_num_threads(omp_get_num_procs());
  }
}

// The threaded, branch-free dropout is the reference's map bit for bit: the same mask (the draw of
// (seed, step, layer, element)), in * scale where kept and +0 where dropped, whatever the input is
// (+0, -0, subnormals, +-inf, NaN), for any number of threads; over n that is no multiple of a
// vector's width, several rates (0: keeps all), seeds, steps and layers.
TEST(DropoutCpu, MaskAndValuesAreTheReferenceBitForBit) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const float sub = std::numeric_limits<float>::denorm_min(), big = std::numeric_limits<float>::max();
  const std::vector<float> edge = {0.f, -0.f, sub, -sub, inf, -inf, nan, -nan, big, -big, 1.f, -1.f, 0.3f};
  Rng r(5);
  std::vector<float> x(100003);
  for (size_t i = 0; i < x.size(); ++i) x[i] = i % 7 == 0 ? edge[(i / 7) % edge.size()] : float(r.uniform(-3, 3));
  const long long n = (long long)x.size();
  for (float p : {0.f, 0.25f, 0.5f, 0.9f})
    for (auto [seed, step, layer] : {std::tuple{1ULL, 1LL, 7}, std::tuple{0xFFFFFFFFFFFFFFFFULL, 123456LL, 0}}) {
      std::vector<float> want(n), got(n);
      ref::dropout_forward(want.data(), x.data(), n, p, seed, step, layer);
      for (int threads : {1, 2, 3}) {
        omp_set_num_threads(threads);
        std::fill(got.begin(), got.end(), 42.f);
        cpu::dropout_map(got.data(), x.data(), n, p, seed, step, layer);
        EXPECT_EQ(bits(got), bits(want)) << "p " << p << " seed " << seed << " threads " << threads;
      }
      omp_set_num_threads(omp_get_num_procs());
      // A short call (one thread) and an offset start: the same values.
      cpu::dropout_map(got.data(), x.data(), 13, p, seed, step, layer);
      const std::vector<uint32_t> gb = bits(got), wb = bits(want);
      EXPECT_TRUE(std::equal(gb.begin(), gb.begin() + 13, wb.begin())) << "p " << p;
      // The backward is the same map of dy: the reference's backward agrees.
      std::vector<float> back(n);
      ref::dropout_backward(back.data(), x.data(), n, p, seed, step, layer);
      EXPECT_EQ(bits(back), bits(want));
      // Something was dropped, and kept values were scaled (the test can tell a wrong mask).
      if (p > 0) {
        long long dropped = 0, nonzero = 0;
        for (long long i = 0; i < n; ++i) {
          nonzero += x[i] != 0.f;
          dropped += want[i] == 0.f && x[i] != 0.f;
          if (want[i] != 0.f && std::isfinite(x[i])) {
            EXPECT_EQ(want[i], x[i] * dropout_scale(p)) << i;
          }
        }
        EXPECT_NEAR(double(dropped) / nonzero, p, 0.01) << p;
      }
    }
}

// The vectorized max-pool forward makes the reference's choices, bit for bit, in values and in the
// mask: a strict '>' in row-major order, so on a tie (+0 against -0, equal values) the first pixel
// wins, a NaN in the first pixel stays (every comparison with it is false) and a later NaN is
// skipped; +-inf and subnormals compare as numbers. Windows 2x2 stride 2 (the compiled fast path,
// odd sizes leave a row and a column out), and the general path: overlapping, gapped, 1xk, kx1.
TEST(Pool2dCpu, MaxPoolForwardMakesTheReferenceChoicesBitForBit) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const float sub = std::numeric_limits<float>::denorm_min();
  const std::vector<float> edge = {0.f, -0.f, sub, -sub, inf, -inf, nan, 1.f, 1.f, -1.f, -0.f, 0.f, -inf, 2.f};
  struct Case {
    int H, W, kh, kw, sh, sw;
  };
  for (Case c : {Case{28, 28, 2, 2, 2, 2}, Case{13, 11, 2, 2, 2, 2}, Case{7, 9, 3, 3, 2, 2}, Case{9, 8, 2, 3, 1, 2},
                 Case{10, 10, 2, 2, 3, 3}, Case{6, 12, 1, 4, 1, 4}, Case{5, 5, 5, 1, 1, 1}}) {
    Pool2dShape s = make_pool2d_shape(3, 5, c.H, c.W, c.kh, c.kw, c.sh, c.sw, "test");
    const size_t n_in = size_t(s.in_numel()), n_out = size_t(s.out_numel());
    // Random values with the edge values sprinkled in at a rate that puts several in most windows,
    // and one plane of random values only.
    std::vector<float> x = cast_vec<float>(random_vec(n_in, 51));
    for (size_t i = 0; i < n_in - size_t(c.H * c.W); i += 1 + i % 3) x[i] = edge[(i * 7) % edge.size()];
    std::vector<float> y_ref(n_out), y(n_out, 123.f);
    std::vector<int32_t> m_ref(n_out), m(n_out, -1);
    ref::maxpool2d_forward(y_ref.data(), m_ref.data(), x.data(), s);
    cpu::maxpool2d_forward(y.data(), m.data(), x.data(), s);
    EXPECT_EQ(bits(y), bits(y_ref)) << s.str();
    EXPECT_EQ(m, m_ref) << s.str();
  }
}

TEST(Pool2dCpu, MaxPoolBackwardMatchesReferenceExactly) {
  // Non-overlapping (the scatter path), stride > window (pixels in no window must get 0), and
  // overlapping windows (the reference fallback); bit for bit, with -0 and subnormals in dout.
  for (auto [k, stride] : {std::pair{2, 2}, std::pair{2, 3}, std::pair{3, 2}}) {
    Pool2dShape s = make_pool2d_shape(5, 3, 13, 11, k, k, stride, "test");
    std::vector<float> x = cast_vec<float>(test::tie_free_vec(size_t(s.in_numel()), 41));
    std::vector<float> out(size_t(s.out_numel())), dout = cast_vec<float>(random_vec(size_t(s.out_numel()), 42));
    for (size_t i = 0; i < dout.size(); i += 5) dout[i] = i % 2 ? -0.f : -std::numeric_limits<float>::denorm_min();
    std::vector<int32_t> mask(size_t(s.out_numel()));
    cpu::maxpool2d_forward(out.data(), mask.data(), x.data(), s);
    std::vector<float> d_ref(size_t(s.in_numel())), d(size_t(s.in_numel()), std::nanf(""));
    ref::maxpool2d_backward(d_ref.data(), dout.data(), mask.data(), s);
    cpu::maxpool2d_backward(d.data(), dout.data(), mask.data(), s);
    EXPECT_EQ(bits(d), bits(d_ref)) << "k " << k << " stride " << stride;  // -0 too: +0 + -0 is +0
  }
}

// Average pooling, both directions, bitwise the reference (its sums in its order): the presets'
// 2x2 stride 2 (the compile-time row), 3x3 stride 3, stride > window (pixels in no window get
// +0), overlapping windows (the reference's backward), odd sizes, large batches for the threads;
// dout with -0 and subnormals (a one-term sum from +0 turns -0 into +0).
TEST(Pool2dCpu, AvgPoolIsTheReferenceBitForBit) {
  const float sub = std::numeric_limits<float>::denorm_min();
  for (auto [k, stride, N] :
       {std::tuple{2, 2, 40}, std::tuple{3, 3, 5}, std::tuple{2, 3, 5}, std::tuple{3, 2, 5}, std::tuple{1, 1, 3}}) {
    Pool2dShape s = make_pool2d_shape(N, 3, 13, 11, k, k, stride, "test");
    std::vector<float> x = cast_vec<float>(random_vec(size_t(s.in_numel()), 43));
    std::vector<float> dout = cast_vec<float>(random_vec(size_t(s.out_numel()), 44));
    for (size_t i = 0; i < dout.size(); i += 7) dout[i] = i % 2 ? -0.f : -sub;
    std::vector<float> y_ref(size_t(s.out_numel())), y(size_t(s.out_numel()), std::nanf(""));
    ref::avgpool2d_forward(y_ref.data(), x.data(), s);
    cpu::avgpool2d_forward(y.data(), x.data(), s);
    EXPECT_EQ(bits(y), bits(y_ref)) << "forward k " << k << " stride " << stride;
    std::vector<float> d_ref(size_t(s.in_numel())), d(size_t(s.in_numel()), std::nanf(""));
    ref::avgpool2d_backward(d_ref.data(), dout.data(), s);
    cpu::avgpool2d_backward(d.data(), dout.data(), s);
    EXPECT_EQ(bits(d), bits(d_ref)) << "backward k " << k << " stride " << stride;
  }
}

// ---- the optimizer step ----

// cpu's e^x (host/cpu/loss.cpp) is the float nearest to e^x, computed in double: on every 389th
// float in [-110, 95] (both signs) it is (float) exp(double) within 1 ulp, and equal to it but
// for a few ties (none in 5.8M here; 1 in the 2.24e9 floats of that range, checked exhaustively
// when written, against 170,648 for glibc's expf). The edges are expf's: NaN -> NaN, -inf -> 0,
// +inf -> inf, +-0 and subnormals -> 1, overflow to inf from 88.7228394 on, subnormal results.
TEST(LossCpu, ExpIsTheNearestFloat) {
  std::vector<float> xs;
  for (uint32_t b = 0; b < 0x42dc0000u; b += 389) {  // 0x42dc0000 = 110
    float x;
    std::memcpy(&x, &b, sizeof x);
    if (x <= 95.f) xs.push_back(x);
    xs.push_back(-x);
  }
  const long long n = (long long)xs.size();
  std::vector<float> y(n);
  cpu::detail::exp_nearest(y.data(), xs.data(), n);
  long long differ = 0;
  for (long long i = 0; i < n; ++i) {
    const float want = float(std::exp(double(xs[i])));
    if (bits({y[i]}) != bits({want})) {
      ++differ;
      ASSERT_EQ(std::nextafter(want, y[i]), y[i]) << "more than 1 ulp at x = " << xs[i];
    }
  }
  EXPECT_LE(differ, n / 1000000) << "of " << n;
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const float sub = std::numeric_limits<float>::denorm_min(), fmax = std::numeric_limits<float>::max();
  const std::vector<float> x = {nan,  -inf,        inf,         0.f,    -0.f,    sub,
                                -sub, 88.7228317f, 88.7228394f, -100.f, -103.9f, -104.f};
  const std::vector<float> want = {nan,
                                   0.f,
                                   inf,
                                   1.f,
                                   1.f,
                                   1.f,
                                   1.f,
                                   float(std::exp(88.7228317)),
                                   inf,
                                   float(std::exp(-100.0)),
                                   float(std::exp(-103.9)),
                                   0.f};
  std::vector<float> e(x.size());
  cpu::detail::exp_nearest(e.data(), x.data(), (long long)x.size());
  EXPECT_TRUE(std::isnan(e[0]));
  for (size_t i = 1; i < x.size(); ++i) EXPECT_EQ(bits({e[i]}), bits({want[i]})) << "x = " << x[i];
  EXPECT_LE(e[7], fmax);
  EXPECT_GT(e[9], 0.f);  // subnormal
  EXPECT_LT(e[9], std::numeric_limits<float>::min());
}

// The CPU softmax cross-entropy is the reference's arithmetic with exp_nearest for e^x: the
// scan for the argmax (first index on ties; a NaN is never chosen over an earlier number), the
// sum over k ascending, (m + log(sum)) - z_c, grad_scale (e_k / sum - y_k). This twin is the
// reference's row loop so written; the CPU op must give its bits (NaN as NaN) under every ISA,
// on odd shapes, on rows of +-0, subnormals, +-inf, NaN and ties, with and without the gradient,
// and stay within float rounding of the double reference on ordinary rows.
void softmax_twin(float* loss, float* dz, int32_t* correct, const float* logits, const int32_t* labels, int N, int K,
                  float grad_scale) {
  for (int i = 0; i < N; ++i) {
    const float* z = logits + (long long)i * K;
    int best = 0;
    for (int k = 1; k < K; ++k)
      if (z[k] > z[best]) best = k;
    correct[i] = best == labels[i];
    std::vector<float> e(K), d(K);
    for (int k = 0; k < K; ++k) d[k] = z[k] - z[best];
    cpu::detail::exp_nearest(e.data(), d.data(), K);
    float sum = 0;
    for (int k = 0; k < K; ++k) sum += e[k];
    loss[i] = z[best] + std::log(sum) - z[labels[i]];
    for (int k = 0; k < K; ++k) dz[(long long)i * K + k] = grad_scale * (e[k] / sum - (k == labels[i] ? 1.f : 0.f));
  }
}
::testing::AssertionResult same_bits_or_nan(const std::vector<float>& a, const std::vector<float>& b) {
  for (size_t i = 0; i < a.size(); ++i)
    if (!(std::isnan(a[i]) && std::isnan(b[i])) && bits({a[i]}) != bits({b[i]}))
      return ::testing::AssertionFailure() << "element " << i << ": " << a[i] << " vs " << b[i];
  return ::testing::AssertionSuccess();
}
TEST(LossCpu, SoftmaxIsTheReferenceArithmeticUnderEveryIsa) {
  Restore restore;
  struct Case {
    int N, K;
    std::vector<float> z;  // empty: random
  };
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const float sub = std::numeric_limits<float>::denorm_min();
  std::vector<Case> cases = {{1, 1, {}}, {3, 2, {}}, {64, 10, {}}, {65, 17, {}}, {130, 33, {}}, {200, 10, {}}};
  cases.push_back({11, 5, {0.f, -0.f, 0.f, 0.f,   0.f,    sub, -sub,  0.f,  1e-39f, -1e-39f, inf,  1.f,  2.f, 3.f,
                           4.f, -inf, 1.f, 2.f,   -inf,   0.f, 1.f,   nan,  3.f,    2.f,     0.f,  nan,  1.f, 2.f,
                           3.f, 4.f,  inf, inf,   0.f,    1.f, 2.f,   -inf, -inf,   -inf,    -inf, -inf, 3.f, 3.f,
                           3.f, 1.f,  3.f, 1e30f, -1e30f, 0.f, 1e30f, 5.f,  -3.f,   -3.f,    -2.f, -2.f, -2.f}});
  for (const Case& c : cases) {
    const size_t NK = size_t(c.N) * c.K;
    const std::vector<float> z = c.z.empty() ? make_data(NK, 11 + c.K, 8.0).f : c.z;
    std::vector<int32_t> labels(c.N);
    for (int i = 0; i < c.N; ++i) labels[i] = (i * 7 + 3) % c.K;
    std::vector<float> want_l(c.N), want_dz(NK);
    std::vector<int32_t> want_c(c.N);
    softmax_twin(want_l.data(), want_dz.data(), want_c.data(), z.data(), labels.data(), c.N, c.K, 1.f / c.N);
    const std::string label = "N=" + std::to_string(c.N) + " K=" + std::to_string(c.K);
    for (cpu::CpuIsa isa : isas()) {
      cpu::set_cpu_isa(isa);
      std::vector<float> l = nans(c.N), dz = nans(NK), l2 = nans(c.N);
      std::vector<int32_t> cor(c.N, -1);
      cpu::loss_forward_backward(l.data(), dz.data(), cor.data(), z.data(), labels.data(), c.N, c.K,
                                 Loss::SoftmaxCrossEntropy, 1.f / c.N);
      cpu::loss_forward_backward(l2.data(), nullptr, nullptr, z.data(), labels.data(), c.N, c.K,
                                 Loss::SoftmaxCrossEntropy, 1.f / c.N);
      const std::string where = label + " [" + cpu::cpu_isa_name(isa) + "]";
      EXPECT_TRUE(same_bits_or_nan(l, want_l)) << "loss " << where;
      EXPECT_TRUE(same_bits_or_nan(l2, want_l)) << "loss without the gradient " << where;
      EXPECT_TRUE(same_bits_or_nan(dz, want_dz)) << "gradient " << where;
      EXPECT_EQ(cor, want_c) << "correct " << where;
    }
    if (!c.z.empty()) continue;
    // Ordinary rows: within float rounding of the double reference.
    std::vector<double> dl(c.N), ddz(NK), zd(z.begin(), z.end());
    ref::loss_forward_backward<double>(dl.data(), ddz.data(), nullptr, zd.data(), labels.data(), c.N, c.K,
                                       Loss::SoftmaxCrossEntropy, 1.0 / c.N);
    for (int i = 0; i < c.N; ++i) EXPECT_NEAR(want_l[i], dl[i], 1e-5 + 1e-5 * std::fabs(dl[i])) << label;
    for (size_t j = 0; j < NK; ++j) EXPECT_NEAR(want_dz[j], ddz[j], 1e-7 + 1e-5 * std::fabs(ddz[j])) << label;
  }
  // The other losses are the reference's.
  const Data z = make_data(60, 3, 2.0);
  const std::vector<int32_t> labels = {0, 1, 2, 3, 4, 5};
  std::vector<float> l(6), dz(60), rl(6), rdz(60);
  cpu::loss_forward_backward(l.data(), dz.data(), nullptr, z.f.data(), labels.data(), 6, 10, Loss::MSLE, 0.5f);
  ref::loss_forward_backward<float>(rl.data(), rdz.data(), nullptr, z.f.data(), labels.data(), 6, 10, Loss::MSLE, 0.5f);
  EXPECT_EQ(bits(l), bits(rl));
  EXPECT_EQ(bits(dz), bits(rdz));
}

// The threaded, vectorized step gives the reference's bits for every optimizer setting: the same
// float operations per element in the same order. Long buffers (the threads split them, the vector
// loop has a remainder) with subnormal, zero and large gradients among random ones, three steps:
// one below the size from which the parameters are written with streaming stores, one above it
// starting 3 floats past a 64-byte boundary (elements before the first aligned block and after the
// last take the scalar path), under every instruction set (the streamed blocks use AVX2 where the
// CPU has it).
TEST(OptimizerCpu, StepIsTheReferenceBitForBit) {
  Restore restore;
  for (cpu::CpuIsa isa : isas())
    for (auto [n, offset] : {std::pair<size_t, size_t>{200003, 0}, std::pair<size_t, size_t>{300007, 3}}) {
      cpu::set_cpu_isa(isa);
      std::vector<float> p0 = cast_vec<float>(random_vec(n, 61)), grad = cast_vec<float>(random_vec(n, 62));
      const float sub = std::numeric_limits<float>::denorm_min();
      for (size_t i = 0; i < n; i += 97) grad[i] = (i / 97) % 3 == 0 ? sub : (i / 97) % 3 == 1 ? -0.f : 1e30f;
      OptimConfig sgd, momentum, adam;
      sgd.lr = 0.1f;
      momentum.lr = 0.05f, momentum.momentum = 0.9f, momentum.weight_decay = 5e-4f;
      adam.kind = Optim::Adam, adam.lr = 1e-3f, adam.weight_decay = 1e-4f;
      for (const OptimConfig& cfg : {sgd, momentum, adam}) {
        std::vector<float> p_ref = p0, m_ref(n), m(n), v_ref(n), v(n);
        // p at `offset` floats past a 64-byte boundary
        std::vector<float> storage(n + 16 + offset);
        float* p = storage.data() + (64 - reinterpret_cast<uintptr_t>(storage.data()) % 64) % 64 / 4 + offset;
        std::copy(p0.begin(), p0.end(), p);
        for (long long t = 1; t <= 3; ++t) {
          ref::optimizer_step(p_ref.data(), grad.data(), m_ref.data(), v_ref.data(), n, cfg, t);
          const float bc1 = float(1.0 - std::pow(double(cfg.beta1), double(t)));
          const float bc2 = float(1.0 - std::pow(double(cfg.beta2), double(t)));
          cpu::optimizer_step(p, grad.data(), m.data(), v.data(), n, cfg, bc1, bc2);
        }
        const char* kind = cfg.kind == Optim::Adam ? "adam" : cfg.momentum != 0.f ? "sgd+momentum" : "sgd";
        const std::string what = std::string(kind) + " n " + std::to_string(n) + " " + cpu::cpu_isa_name(isa);
        EXPECT_EQ(bits(std::vector<float>(p, p + n)), bits(p_ref)) << what;
        EXPECT_EQ(bits(m), bits(m_ref)) << what;
        EXPECT_EQ(bits(v), bits(v_ref)) << what;
      }
    }
}

// ---- subnormals ----

// Inside the scope a subnormal operand reads as zero (DAZ) and a result below the normal range
// becomes zero (FTZ), on the calling thread and on every OpenMP thread (the team exists before the
// scope, so its threads do not inherit the modes); outside it both are kept. The results are
// compared as bits: a float comparison on this thread would itself read a subnormal as zero.
TEST(FlushSubnormalsCpu, FlushesOnEveryThreadInsideTheScopeOnly) {
  const float sub = std::numeric_limits<float>::denorm_min(), tiny = std::numeric_limits<float>::min();
  volatile float vs = sub, vt = tiny;  // read at run time, computed under each thread's modes
  omp_set_num_threads(2);
  auto results = [&] {
    std::vector<float> r(2 * omp_get_max_threads(), -1.f);
#pragma omp parallel
    {
      const int t = omp_get_thread_num();
      r[2 * t] = vs + 0.f;        // DAZ: +0; else the subnormal
      r[2 * t + 1] = vt * 0.25f;  // FTZ: +0; else the subnormal 2^-128
    }
    return bits(r);
  };
  const uint32_t sub_bits = 1u, quarter_bits = 1u << 21;  // denorm_min; FLT_MIN / 4 = 2^-128
  const std::vector<uint32_t> kept = {sub_bits, quarter_bits, sub_bits, quarter_bits}, flushed(4, 0u);
  ASSERT_FALSE(cpu::flushes_subnormals());
  EXPECT_EQ(results(), kept) << "subnormals flushed outside the scope";
  {
    cpu::FlushSubnormals flush;
    EXPECT_TRUE(cpu::flushes_subnormals());
    EXPECT_EQ(results(), flushed) << "a subnormal survived inside the scope";
    std::vector<float> y(64), x(64, sub);
    cpu::activation_forward(y.data(), x.data(), 64, Activation{Act::LeakyRelu, 0.5f});
    EXPECT_EQ(bits(y), std::vector<uint32_t>(64, 0u)) << "DAZ: a subnormal is not above zero";
  }
  EXPECT_FALSE(cpu::flushes_subnormals());
  EXPECT_EQ(results(), kept) << "the modes were not restored";
}
