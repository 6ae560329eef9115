// The CPU reference of the data path: batch gather + normalization, the training step's
// augmentation (include/barecnn/augment.h), the epoch permutation, and a statistical sanity check
// of the host random generator.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <set>
#include <vector>

#include "barecnn/augment.h"
#include "barecnn/error.h"
#include "barecnn/ref_ops.h"
#include "barecnn/rng.h"
#include "test_util.h"

namespace barecnn {
namespace {

using test::all_close;

TEST(DataRef, GatherNormalizeHandValues) {
  // 4 images of P = 3 pixels, labels 7, 1, 4, 9; the batch takes rows 2, 0, 2 (repeats allowed)
  const std::vector<uint8_t> images = {0, 255, 51, 10, 20, 30, 255, 0, 102, 1, 2, 3};  // (4, 3)
  const std::vector<uint8_t> labels = {7, 1, 4, 9};
  const std::vector<int32_t> idx = {2, 0, 2};
  const float mean = 0.5f, std = 0.25f;
  // (x / 255 - 0.5) / 0.25: 255 -> 2, 0 -> -2, 102 -> (0.4 - 0.5) / 0.25 = -0.4, 51 -> (0.2 - 0.5) / 0.25 = -1.2
  const std::vector<double> expect = {2, -2, -0.4, -2, 2, -1.2, 2, -2, -0.4};  // (3, 3)
  std::vector<double> out(9, -99);
  std::vector<int32_t> out_labels(3, -1);
  ref::gather_normalize(out.data(), out_labels.data(), images.data(), labels.data(), idx.data(), 3, 3, mean, std);
  EXPECT_TRUE(all_close(expect, out, 1e-15, 1e-15));
  EXPECT_EQ(out_labels, (std::vector<int32_t>{4, 7, 4}));
  std::vector<float> outf(9, -99);
  ref::gather_normalize(outf.data(), out_labels.data(), images.data(), labels.data(), idx.data(), 3, 3, mean, std);
  EXPECT_TRUE(all_close(expect, outf, 1e-6, 1e-6));
  // labels are optional (predict has none)
  std::vector<double> out2(9);
  ref::gather_normalize<double>(out2.data(), nullptr, images.data(), nullptr, idx.data(), 3, 3, mean, std);
  EXPECT_EQ(out2, out);
}

TEST(DataRef, GatherNormalizeFashionMnistStats) {
  // the mean/std a real run uses: every pixel maps through (x/255 - mean)/std independently
  const int P = 784, B = 2;
  std::vector<uint8_t> images(3 * P);
  for (size_t i = 0; i < images.size(); ++i) images[i] = uint8_t((i * 37 + 11) % 256);
  std::vector<uint8_t> labels = {3, 5, 8};
  std::vector<int32_t> idx = {1, 2};
  const float mean = 0.2860f, std = 0.3530f;
  std::vector<float> out(B * P);
  std::vector<int32_t> out_labels(B);
  ref::gather_normalize(out.data(), out_labels.data(), images.data(), labels.data(), idx.data(), B, P, mean, std);
  std::vector<double> expect(B * P);
  for (int b = 0; b < B; ++b)
    for (int p = 0; p < P; ++p) expect[b * P + p] = (images[idx[b] * P + p] / 255.0 - double(mean)) / double(std);
  EXPECT_TRUE(all_close(expect, out, 1e-6, 1e-6));
  EXPECT_EQ(out_labels, (std::vector<int32_t>{5, 8}));
}

// ---- augmentation (augment.h) ----------------------------------------------------------------------

// torchvision's RandomCrop(padding=P) then RandomHorizontalFlip, written out the long way: pad the
// H x W image with P zeros on each side, take the H x W window at top-left (P + dy, P + dx), mirror
// it if flipped. Values are source index + 1, 0 in the padding.
std::vector<int> torchvision_way(int H, int W, int P, int dy, int dx, bool flip) {
  const int Hp = H + 2 * P, Wp = W + 2 * P;
  std::vector<int> padded(size_t(Hp) * Wp, 0);
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x) padded[(y + P) * Wp + (x + P)] = y * W + x + 1;
  std::vector<int> crop(size_t(H) * W), out(size_t(H) * W);
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x) crop[y * W + x] = padded[(y + P + dy) * Wp + (x + P + dx)];
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x) out[y * W + x] = crop[y * W + (flip ? W - 1 - x : x)];
  return out;
}

TEST(AugmentRef, SourceIndexIsTheTorchvisionCropThenFlip) {
  for (auto [H, W] : {std::pair{5, 4}, std::pair{3, 7}, std::pair{28, 28}})
    for (int P : {0, 1, 2})
      for (int dy = -P; dy <= P; ++dy)
        for (int dx = -P; dx <= P; ++dx)
          for (bool flip : {false, true}) {
            SCOPED_TRACE(fmt(H, "x", W, " P=", P, " dy=", dy, " dx=", dx, " flip=", flip));
            const std::vector<int> want = torchvision_way(H, W, P, dy, dx, flip);
            const AugmentDraw d{dy, dx, flip};
            for (int y = 0; y < H; ++y)
              for (int x = 0; x < W; ++x)
                ASSERT_EQ(augment_source(y, x, H, W, d) + 1, want[y * W + x]) << y << "," << x;
          }
}

TEST(AugmentRef, SourceIndexAtTheCorners) {
  const int H = 5, W = 4;
  // The identity: every pixel is itself.
  for (int p = 0; p < H * W; ++p) EXPECT_EQ(augment_source(p / W, p % W, H, W, AugmentDraw{}), p);
  // Shifted down 2 and left 1 (the window's top-left at (P+2, P-1)): the top-left output pixel is
  // padding, the one right of it is source (2, 0); the bottom rows reach below the image.
  const AugmentDraw s{2, -1, false};
  EXPECT_EQ(augment_source(0, 0, H, W, s), -1);
  EXPECT_EQ(augment_source(0, 1, H, W, s), 2 * W + 0);
  EXPECT_EQ(augment_source(2, 3, H, W, s), 4 * W + 2);
  EXPECT_EQ(augment_source(3, 3, H, W, s), -1);
  EXPECT_EQ(augment_source(H - 1, W - 1, H, W, s), -1);
  // Flipped: the corners swap left and right.
  const AugmentDraw f{0, 0, true};
  EXPECT_EQ(augment_source(0, 0, H, W, f), W - 1);
  EXPECT_EQ(augment_source(0, W - 1, H, W, f), 0);
  EXPECT_EQ(augment_source(H - 1, 0, H, W, f), H * W - 1);
  // Flipped after a shift right by 1: output column x is crop column W-1-x, source column W-x.
  const AugmentDraw fs{0, 1, true};
  EXPECT_EQ(augment_source(0, 0, H, W, fs), -1);
  EXPECT_EQ(augment_source(0, 1, H, W, fs), W - 1);
  EXPECT_EQ(augment_source(1, W - 1, H, W, fs), W + 1);
}

TEST(AugmentRef, DrawReadsDisjointBits) {
  const Augment both{3, true}, crop{3, false}, flip{0, true}, off{};
  auto eq = [](AugmentDraw a, AugmentDraw b) { return a.dy == b.dy && a.dx == b.dx && a.flip == b.flip; };
  // All zeros: the lowest shifts, no flip; all ones: the highest, flipped.
  EXPECT_TRUE(eq(augment_draw(0, both), AugmentDraw{-3, -3, false}));
  EXPECT_TRUE(eq(augment_draw(~0ULL, both), AugmentDraw{3, 3, true}));
  // dy: bits 0..30, dx: bits 31..61, the flip: bit 63.
  EXPECT_TRUE(eq(augment_draw(0x7FFFFFFFULL, both), AugmentDraw{3, -3, false}));
  EXPECT_TRUE(eq(augment_draw(0x7FFFFFFFULL << 31, both), AugmentDraw{-3, 3, false}));
  EXPECT_TRUE(eq(augment_draw(1ULL << 63, both), AugmentDraw{-3, -3, true}));
  EXPECT_TRUE(eq(augment_draw(1ULL << 62, both), AugmentDraw{-3, -3, false}));
  // The middle of the 31-bit field is the middle value.
  EXPECT_EQ(augment_draw(1ULL << 30, both).dy, 0);
  // A part that is off stays at the identity, the other part reads the same bits as with both.
  for (uint64_t u : {0ULL, ~0ULL, 0x123456789ABCDEF0ULL, 0xFEDCBA9876543210ULL}) {
    const AugmentDraw b = augment_draw(u, both);
    EXPECT_TRUE(eq(augment_draw(u, crop), AugmentDraw{b.dy, b.dx, false}));
    EXPECT_TRUE(eq(augment_draw(u, flip), AugmentDraw{0, 0, b.flip}));
    EXPECT_TRUE(eq(augment_draw(u, off), AugmentDraw{}));
  }
  EXPECT_FALSE(off.on());
  EXPECT_TRUE(crop.on() && flip.on());
}

// 3 images of 4 x 5 pixels with values 10 y + x + 1 + 100 i (no zeros: padding shows as 0).
struct Small {
  static constexpr int H = 4, W = 5, P = H * W;
  std::vector<uint8_t> images, labels{2, 0, 1};
  Small() {
    images.resize(3 * P);
    for (int i = 0; i < 3; ++i)
      for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x) images[i * P + y * W + x] = uint8_t(10 * y + x + 1 + 100 * i);
  }
};

// The normalized value of raw pixel v, as the gather computes it.
double norm(int v, float mean, float std) { return (v / 255.0 - double(mean)) / double(std); }

TEST(AugmentRef, GatherCropsAndFlipsTheImageAsDrawn) {
  const Small s;
  const int H = s.H, W = s.W, P = s.P, B = 400;
  const float mean = 0.25f, std = 0.5f;
  const Augment aug{2, true};
  const uint64_t seed = 11;
  const long long step = 3;
  std::vector<int32_t> idx(B), labels(B);
  for (int b = 0; b < B; ++b) idx[b] = b % 3;
  std::vector<double> out(size_t(B) * P);
  ref::gather_normalize_augment(out.data(), labels.data(), s.images.data(), s.labels.data(), idx.data(), B, H, W, mean,
                                std, aug, seed, step);
  bool seen_shift = false, seen_flip = false, seen_both = false;
  for (int b = 0; b < B; ++b) {
    SCOPED_TRACE(b);
    EXPECT_EQ(labels[b], s.labels[idx[b]]);
    const AugmentDraw d = augment_draw(step_draw(seed, step, kDrawAugment, b), aug);
    const std::vector<int> want = torchvision_way(H, W, aug.pad, d.dy, d.dx, d.flip);
    for (int p = 0; p < P; ++p) {
      const int v = want[p] == 0 ? 0 : s.images[idx[b] * P + want[p] - 1];
      ASSERT_EQ(out[b * P + p], norm(v, mean, std)) << p;
    }
    // By hand, for three transforms that come up among the 400 samples (the draws are fixed by
    // (seed, step, b), so the same samples every time):
    const double* o = out.data() + b * P;
    const uint8_t* img = s.images.data() + idx[b] * P;
    if (d.dy == 1 && d.dx == -1 && !d.flip) {  // the window 1 down, 1 left: out(y, x) = img(y + 1, x - 1)
      seen_shift = true;
      EXPECT_EQ(o[0 * W + 1], norm(img[1 * W + 0], mean, std));
      EXPECT_EQ(o[2 * W + 4], norm(img[3 * W + 3], mean, std));
      EXPECT_EQ(o[0 * W + 0], norm(0, mean, std));        // the left column is padding
      EXPECT_EQ(o[(H - 1) * W + 2], norm(0, mean, std));  // and the bottom row
    }
    if (d.dy == 0 && d.dx == 0 && d.flip) {  // mirrored in place
      seen_flip = true;
      for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x) EXPECT_EQ(o[y * W + x], norm(img[y * W + W - 1 - x], mean, std));
    }
    if (d.dy == -2 && d.dx == 2 && d.flip) {  // the window 2 up, 2 right, then mirrored
      seen_both = true;
      for (int x = 0; x < 2 * W; ++x) EXPECT_EQ(o[x], norm(0, mean, std));  // the top two rows: padding
      EXPECT_EQ(o[2 * W + 0], norm(0, mean, std));                          // crop (2, 4) = img(0, 6): padding
      EXPECT_EQ(o[2 * W + 2], norm(img[0 * W + 4], mean, std));             // crop (2, 2) = img(0, 4)
      EXPECT_EQ(o[3 * W + 4], norm(img[1 * W + 2], mean, std));             // crop (3, 0) = img(1, 2)
    }
  }
  EXPECT_TRUE(seen_shift && seen_flip && seen_both) << "pick another seed: a transform the test checks did not come up";
}

// The draws are a function of (seed, step, sample in the batch): the same again gives the same
// batch bit for bit; another step, another seed or another sample gives other transforms.
TEST(AugmentRef, DrawsRepeatForTheSameKeyAndVaryOtherwise) {
  const Small s;
  const int H = s.H, W = s.W, P = s.P, B = 16;
  const Augment aug{1, true};
  const std::vector<int32_t> idx(B, 1);  // the same image in every slot
  auto gather = [&](uint64_t seed, long long step) {
    std::vector<float> out(size_t(B) * P);
    ref::gather_normalize_augment(out.data(), nullptr, s.images.data(), nullptr, idx.data(), B, H, W, 0.3f, 0.4f, aug,
                                  seed, step);
    return out;
  };
  const std::vector<float> a = gather(5, 7);
  EXPECT_EQ(0, std::memcmp(a.data(), gather(5, 7).data(), a.size() * sizeof(float)));
  EXPECT_NE(a, gather(5, 8));
  EXPECT_NE(a, gather(6, 7));
  // Within the batch: the one image comes out in several different transforms.
  std::set<std::vector<float>> distinct;
  for (int b = 0; b < B; ++b) distinct.insert(std::vector<float>(a.begin() + b * P, a.begin() + (b + 1) * P));
  EXPECT_GE(distinct.size(), 8u);  // (18 transforms for P = 1 with the flip; 16 samples)
}

// Over many draws: half the samples are flipped, every shift in [-P, P] comes up about equally
// often on each axis, and the axes and the flip are independent.
TEST(AugmentRef, DrawFrequencies) {
  const int N = 60000, P = 4, n = 2 * P + 1;
  const Augment aug{P, true};
  std::vector<long> dy(n), dx(n), joint(size_t(n) * n);
  long flips = 0, flips_when_dy_low = 0, dy_low = 0;
  for (int i = 0; i < N; ++i) {
    // samples of a batch and steps of a run: both parts of the key vary
    const AugmentDraw d = augment_draw(step_draw(42, 1 + i / 100, kDrawAugment, uint64_t(i % 100)), aug);
    ASSERT_TRUE(d.dy >= -P && d.dy <= P && d.dx >= -P && d.dx <= P) << d.dy << " " << d.dx;
    ++dy[d.dy + P], ++dx[d.dx + P], ++joint[(d.dy + P) * n + (d.dx + P)];
    flips += d.flip;
    if (d.dy < 0) ++dy_low, flips_when_dy_low += d.flip;
  }
  // Binomial standard deviations: sqrt(N p (1 - p)); every bound below is 5 of them.
  EXPECT_NEAR(double(flips) / N, 0.5, 5 * std::sqrt(0.25 / N));
  EXPECT_NEAR(double(flips_when_dy_low) / dy_low, 0.5, 5 * std::sqrt(0.25 / dy_low));
  const double p1 = 1.0 / n, sd1 = std::sqrt(N * p1 * (1 - p1));
  for (int k = 0; k < n; ++k) {
    EXPECT_NEAR(dy[k], N * p1, 5 * sd1) << "dy = " << k - P;
    EXPECT_NEAR(dx[k], N * p1, 5 * sd1) << "dx = " << k - P;
  }
  const double p2 = p1 * p1, sd2 = std::sqrt(N * p2 * (1 - p2));
  for (int k = 0; k < n * n; ++k)
    EXPECT_NEAR(joint[k], N * p2, 5 * sd2) << "dy, dx = " << k / n - P << ", " << k % n - P;
}

// Off, or a crop whose draws all land on the centre, is the plain gather bit for bit; the padding
// is a raw 0 normalized like a black pixel; float and double agree.
TEST(AugmentRef, OffIsThePlainGatherAndPaddingIsBlack) {
  const Small s;
  const int H = s.H, W = s.W, P = s.P, B = 6;
  const std::vector<int32_t> idx = {2, 0, 1, 1, 0, 2};
  const float mean = 0.2860f, std = 0.3530f;
  std::vector<float> plain(size_t(B) * P), off(size_t(B) * P, -9);
  std::vector<int32_t> lp(B), lo(B);
  ref::gather_normalize(plain.data(), lp.data(), s.images.data(), s.labels.data(), idx.data(), B, P, mean, std);
  ref::gather_normalize_augment(off.data(), lo.data(), s.images.data(), s.labels.data(), idx.data(), B, H, W, mean, std,
                                Augment{}, 1, 1);
  EXPECT_EQ(0, std::memcmp(plain.data(), off.data(), plain.size() * sizeof(float)));
  EXPECT_EQ(lp, lo);
  // With crop:4 on 4 x 5 images some samples shift by 4 rows: all padding, all (0/255 - mean)/std.
  const Augment big{4, false};
  std::vector<float> out(size_t(B) * P);
  std::vector<double> outd(size_t(B) * P);
  ref::gather_normalize_augment(out.data(), nullptr, s.images.data(), nullptr, idx.data(), B, H, W, mean, std, big, 3,
                                2);
  ref::gather_normalize_augment(outd.data(), nullptr, s.images.data(), nullptr, idx.data(), B, H, W, mean, std, big, 3,
                                2);
  EXPECT_TRUE(all_close(outd, out, 1e-6, 1e-6));
  const float black = (0.f / 255.f - mean) / std;
  for (int b = 0; b < B; ++b) {
    const AugmentDraw d = augment_draw(step_draw(3, 2, kDrawAugment, b), big);
    const bool all_pad = std::abs(d.dy) >= H || std::abs(d.dx) >= W;
    const long n_black = std::count(out.begin() + b * P, out.begin() + (b + 1) * P, black);
    if (all_pad) EXPECT_EQ(n_black, P) << b;
    if (d.dy == 0 && d.dx == 0) EXPECT_EQ(n_black, 0) << b;  // (no pixel of Small is 0)
  }
}

bool is_permutation_of_iota(const std::vector<int32_t>& p) {
  std::vector<int32_t> s = p;
  std::sort(s.begin(), s.end());
  for (size_t i = 0; i < s.size(); ++i)
    if (s[i] != int32_t(i)) return false;
  return true;
}

TEST(DataRef, EpochPermutation) {
  for (int n : {1, 2, 7, 1000, 60001}) {
    SCOPED_TRACE(n);
    std::vector<int32_t> p = ref::epoch_permutation(n, 42, 0);
    ASSERT_EQ(p.size(), size_t(n));
    EXPECT_TRUE(is_permutation_of_iota(p));
    // same (seed, epoch) -> the same order
    EXPECT_EQ(p, ref::epoch_permutation(n, 42, 0));
  }
  const int n = 1000;
  std::vector<int32_t> base = ref::epoch_permutation(n, 42, 0);
  std::vector<int32_t> iota(n);
  std::iota(iota.begin(), iota.end(), 0);
  EXPECT_NE(base, iota) << "the permutation does not shuffle";
  // different epochs and different seeds give different orders; count the fixed points against
  // the base order (about 1 expected for independent random permutations)
  for (auto [seed, epoch] : {std::pair<uint64_t, long long>{42, 1}, {42, 2}, {43, 0}, {0, 0}, {42, 1000000}}) {
    SCOPED_TRACE(testing::Message() << "seed " << seed << " epoch " << epoch);
    std::vector<int32_t> q = ref::epoch_permutation(n, seed, epoch);
    EXPECT_TRUE(is_permutation_of_iota(q));
    int same = 0;
    for (int i = 0; i < n; ++i) same += q[i] == base[i];
    EXPECT_LT(same, 20);
  }
  // roughly uniform: position of sample 0 over many epochs is spread over the whole range
  double mean_pos = 0;
  const int epochs = 2000;
  for (int e = 0; e < epochs; ++e) {
    std::vector<int32_t> q = ref::epoch_permutation(100, 7, e);
    mean_pos += std::find(q.begin(), q.end(), 0) - q.begin();
  }
  mean_pos /= epochs;
  EXPECT_NEAR(mean_pos, 49.5, 3.0);  // std of the mean is 29/sqrt(2000) = 0.65
}

// A statistical sanity check: it fails when the generator is broken (constant, biased, or a bad
// Box-Muller), with bounds many standard errors wide so a working generator never trips them.
TEST(DataRef, RngUniformAndNormalMoments) {
  const int n = 100000;
  Rng r(12345);
  double sum = 0, sum2 = 0, lo = 1, hi = 0;
  int below_tenth = 0;
  for (int i = 0; i < n; ++i) {
    double u = r.uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    lo = std::min(lo, u);
    hi = std::max(hi, u);
    sum += u;
    sum2 += u * u;
    below_tenth += u < 0.1;
  }
  double mean = sum / n, var = sum2 / n - mean * mean;
  EXPECT_NEAR(mean, 0.5, 0.01);           // standard error 0.0009
  EXPECT_NEAR(var, 1.0 / 12, 0.003);      // standard error 0.0003
  EXPECT_NEAR(below_tenth, n / 10, 600);  // standard error 95
  EXPECT_LT(lo, 1e-3);
  EXPECT_GT(hi, 1 - 1e-3);
  for (int i = 0; i < 1000; ++i) {
    double u = r.uniform(-3, 5);
    ASSERT_GE(u, -3.0);
    ASSERT_LT(u, 5.0);
  }

  Rng g(777);
  sum = sum2 = 0;
  double sum4 = 0;
  int beyond2 = 0;
  for (int i = 0; i < n; ++i) {
    double x = g.normal();
    ASSERT_TRUE(std::isfinite(x));
    sum += x;
    sum2 += x * x;
    sum4 += x * x * x * x;
    beyond2 += std::fabs(x) > 2;
  }
  mean = sum / n;
  var = sum2 / n - mean * mean;
  EXPECT_NEAR(mean, 0.0, 0.02);           // standard error 0.003
  EXPECT_NEAR(var, 1.0, 0.03);            // standard error 0.0045
  EXPECT_NEAR(sum4 / n, 3.0, 0.2);        // kurtosis of a normal; standard error 0.03
  EXPECT_NEAR(beyond2, 0.0455 * n, 500);  // P(|x| > 2) = 4.55%; standard error 66

  // the same seed gives the same stream; state() / set_state() resume it
  Rng a(99), b(99);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(a.next_u64(), b.next_u64());
  uint64_t st = a.state();
  double x1 = a.uniform();
  a.set_state(st);
  EXPECT_EQ(a.uniform(), x1);
  EXPECT_NE(Rng(1).next_u64(), Rng(2).next_u64());
}

}  // namespace
}  // namespace barecnn
