// Geometry of convolution and pooling (include/barecnn/shape.h, host/core/geometry.cpp): the output
// size of eq. (2.1), the validating constructors and their messages, and the index helpers that the
// CPU reference and the CUDA kernels share, checked against brute force.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "barecnn/error.h"
#include "barecnn/shape.h"

using namespace barecnn;

// ---- eq. (2.1): floor((H - k + 2 Z_p) / Z_s) + 1 ----

TEST(Geometry, WindowOutSize) {
  struct Case {
    int in, k, stride, pad, out;
  };
  const Case cases[] = {
      {28, 5, 1, 2, 28},                   // "same" convolution of the paper preset
      {28, 5, 1, 0, 24},                   // valid convolution
      {28, 2, 2, 0, 14},                   // 2x2 pooling
      {7, 3, 2, 1, 4},                     // stride 2, padding 1: (7 - 3 + 2) / 2 + 1
      {8, 3, 2, 1, 4},                     // (8 - 3 + 2) / 2 = 3.5 -> floor 3, + 1
      {6, 4, 1, 0, 3},                     // even kernel
      {6, 4, 2, 1, 3},                     // even kernel with padding: (6 - 4 + 2) / 2 + 1
      {5, 5, 1, 0, 1},                     // kernel equal to the input
      {5, 5, 3, 0, 1},                     // kernel equal to the input, any stride
      {7, 2, 2, 0, 3},                     // non-divisible: (7 - 2) / 2 = 2.5 -> floor 2, + 1; last column unused
      {10, 3, 3, 0, 3},                    // (10 - 3) / 3 = 2.33 -> 2, + 1
      {7, 2, 3, 0, 2},                     // stride larger than the kernel
      {1, 1, 1, 0, 1},   {3, 7, 1, 2, 1},  // kernel larger than the input, padding makes it fit exactly
  };
  for (const Case& c : cases)
    EXPECT_EQ(window_out_size(c.in, c.k, c.stride, c.pad), c.out)
        << "in " << c.in << " k " << c.k << " stride " << c.stride << " pad " << c.pad;
}

TEST(Geometry, MakeConv2dShapeFillsEveryField) {
  // rectangular 2x3 kernel, stride 2, padding 1 on a 7x9 input
  Conv2dShape s = make_conv2d_shape(4, 3, 7, 9, 16, 2, 3, 2, 1, "layer 0 conv(16,2x3)");
  EXPECT_EQ(s.N, 4);
  EXPECT_EQ(s.C, 3);
  EXPECT_EQ(s.H, 7);
  EXPECT_EQ(s.W, 9);
  EXPECT_EQ(s.K, 16);
  EXPECT_EQ(s.kh, 2);
  EXPECT_EQ(s.kw, 3);
  EXPECT_EQ(s.sh, 2);
  EXPECT_EQ(s.sw, 2);
  EXPECT_EQ(s.ph, 1);
  EXPECT_EQ(s.pw, 1);
  EXPECT_EQ(s.OH, 4);  // (7 - 2 + 2) / 2 + 1 = 3.5 -> 3 + 1
  EXPECT_EQ(s.OW, 5);  // (9 - 3 + 2) / 2 + 1
  EXPECT_EQ(s.in_numel(), 4LL * 3 * 7 * 9);
  EXPECT_EQ(s.out_numel(), 4LL * 16 * 4 * 5);
  EXPECT_EQ(s.weight_numel(), 16LL * 3 * 2 * 3);
}

TEST(Geometry, MakeConv2dShapeOutputSizes) {
  struct Case {
    int H, W, kh, kw, stride, pad, OH, OW;
  };
  const Case cases[] = {
      {28, 28, 5, 5, 1, 2, 28, 28},  // the paper preset's first layer
      {5, 5, 3, 3, 2, 1, 3, 3},      // stride 2, padding 1
      {6, 6, 4, 4, 1, 0, 3, 3},      // even kernel
      {6, 8, 6, 8, 1, 0, 1, 1},      // kernel equal to the (rectangular) input
      {5, 7, 2, 3, 1, 0, 4, 5},      // rectangular kernel
      {8, 11, 3, 3, 3, 0, 2, 3},     // non-divisible -> floor
      {3, 3, 5, 5, 1, 1, 1, 1},      // kernel larger than the input, padding makes it fit
  };
  for (const Case& c : cases) {
    Conv2dShape s = make_conv2d_shape(1, 1, c.H, c.W, 1, c.kh, c.kw, c.stride, c.pad, "conv");
    EXPECT_EQ(s.OH, c.OH) << s.str();
    EXPECT_EQ(s.OW, c.OW) << s.str();
  }
}

TEST(Geometry, MakePool2dShapeOutputSizes) {
  struct Case {
    int H, W, kh, kw, stride, OH, OW;
  };
  const Case cases[] = {
      {28, 28, 2, 2, 2, 14, 14},  // 2x2 max pool
      {7, 7, 2, 2, 2, 3, 3},      // odd input: last row and column are not pooled (floor)
      {5, 5, 3, 3, 2, 2, 2},      // overlapping windows
      {7, 8, 2, 2, 3, 2, 3},      // stride > window
      {4, 6, 4, 6, 1, 1, 1},      // window equal to the input
      {5, 7, 2, 3, 1, 4, 5},      // rectangular window
  };
  for (const Case& c : cases) {
    Pool2dShape s = make_pool2d_shape(2, 3, c.H, c.W, c.kh, c.kw, c.stride, "pool");
    EXPECT_EQ(s.N, 2);
    EXPECT_EQ(s.C, 3);
    EXPECT_EQ(s.kh, c.kh);
    EXPECT_EQ(s.kw, c.kw);
    EXPECT_EQ(s.sh, c.stride);
    EXPECT_EQ(s.sw, c.stride);
    EXPECT_EQ(s.OH, c.OH) << s.str();
    EXPECT_EQ(s.OW, c.OW) << s.str();
    EXPECT_EQ(s.out_numel(), 2LL * 3 * c.OH * c.OW);
  }
}

TEST(Geometry, ShapeStrings) {
  Conv2dShape s = make_conv2d_shape(64, 1, 28, 28, 32, 5, 5, 1, 2, "conv");
  EXPECT_EQ(s.str(), "N=64 C=1 H=28 W=28 K=32 k=5x5 stride=1x1 pad=2x2 -> 28x28");
  Pool2dShape p = make_pool2d_shape(64, 32, 28, 28, 2, 2, 2, "pool");
  EXPECT_EQ(p.str(), "N=64 C=32 H=28 W=28 k=2x2 stride=2x2 -> 14x14");
}

// ---- messages for impossible geometry ----

// Runs f, expects a UsageError (exit code 2), and returns its message.
template <typename F>
static std::string usage_error_of(F f) {
  try {
    f();
  } catch (const UsageError& e) {
    EXPECT_EQ(e.exit_code(), 2);
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected UsageError, got another exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected UsageError, nothing was thrown";
  return "";
}

#define EXPECT_CONTAINS(msg, part) \
  EXPECT_NE(std::string(msg).find(part), std::string::npos) << "message: \"" << (msg) << "\" lacks \"" << (part) << "\""

TEST(Geometry, Conv2dErrorNamesLayerAndSizes) {
  const std::string layer = "layer 3 conv(32,7)";
  std::string m = usage_error_of([&] { make_conv2d_shape(8, 16, 6, 6, 32, 7, 7, 1, 0, layer); });
  EXPECT_CONTAINS(m, layer);
  EXPECT_CONTAINS(m, "input 6x6 is smaller than the 7x7 kernel");

  // only one side too small, rectangular input
  m = usage_error_of([&] { make_conv2d_shape(1, 1, 9, 4, 2, 5, 5, 1, 0, "layer 1 conv(2,5)"); });
  EXPECT_CONTAINS(m, "layer 1 conv(2,5)");
  EXPECT_CONTAINS(m, "input 9x4 is smaller than the 5x5 kernel");

  // with padding the message gives the padded size
  m = usage_error_of([&] { make_conv2d_shape(1, 1, 3, 3, 4, 7, 7, 1, 1, "layer 5 conv(4,7,pad=1)"); });
  EXPECT_CONTAINS(m, "layer 5 conv(4,7,pad=1)");
  EXPECT_CONTAINS(m, "input 3x3 padded by 1 is 5x5");
  EXPECT_CONTAINS(m, "7x7 kernel");
}

TEST(Geometry, Conv2dErrorBadParameters) {
  std::string m = usage_error_of([] { make_conv2d_shape(1, 1, 8, 8, 0, 3, 3, 1, 0, "layer 0 conv(0,3)"); });
  EXPECT_CONTAINS(m, "layer 0 conv(0,3)");
  EXPECT_CONTAINS(m, "got 0");
  m = usage_error_of([] { make_conv2d_shape(1, 1, 8, 8, 4, 0, 3, 1, 0, "L"); });
  EXPECT_CONTAINS(m, "kernel size");
  EXPECT_CONTAINS(m, "0x3");
  m = usage_error_of([] { make_conv2d_shape(1, 1, 8, 8, 4, 3, 3, 0, 0, "L"); });
  EXPECT_CONTAINS(m, "stride");
  m = usage_error_of([] { make_conv2d_shape(1, 1, 8, 8, 4, 3, 3, 1, -1, "L"); });
  EXPECT_CONTAINS(m, "padding");
  EXPECT_CONTAINS(m, "-1");
  m = usage_error_of([] { make_conv2d_shape(1, 0, 8, 8, 4, 3, 3, 1, 0, "L"); });
  EXPECT_CONTAINS(m, "empty input 0x8x8");
}

TEST(Geometry, Pool2dErrorNamesLayerAndSizes) {
  const std::string layer = "layer 4 maxpool(4)";
  std::string m = usage_error_of([&] { make_pool2d_shape(8, 16, 3, 3, 4, 4, 4, layer); });
  EXPECT_CONTAINS(m, layer);
  EXPECT_CONTAINS(m, "input 3x3 is smaller than the 4x4 pooling window");

  m = usage_error_of([] { make_pool2d_shape(1, 1, 5, 2, 3, 3, 1, "layer 2 avgpool(3)"); });
  EXPECT_CONTAINS(m, "layer 2 avgpool(3)");
  EXPECT_CONTAINS(m, "input 5x2 is smaller than the 3x3 pooling window");

  m = usage_error_of([] { make_pool2d_shape(1, 1, 5, 5, 2, 2, 0, "layer 1 l2pool(2,stride=0)"); });
  EXPECT_CONTAINS(m, "layer 1 l2pool(2,stride=0)");
  EXPECT_CONTAINS(m, "stride");
  m = usage_error_of([] { make_pool2d_shape(1, 1, 5, 5, 0, 0, 1, "L"); });
  EXPECT_CONTAINS(m, "pooling window");
}

// ---- index helpers against brute force ----

TEST(Geometry, NchwEnumeratesInMemoryOrder) {
  const int N = 2, C = 3, H = 4, W = 5;
  long long expect = 0;
  for (int n = 0; n < N; n++)
    for (int c = 0; c < C; c++)
      for (int h = 0; h < H; h++)
        for (int w = 0; w < W; w++) EXPECT_EQ(nchw(n, c, h, w, C, H, W), expect++);
  // no int overflow for tensors past 2^31 elements
  EXPECT_EQ(nchw(1000, 0, 0, 0, 64, 256, 256), 1000LL * 64 * 256 * 256);
}

// window_out_pos(i, k) must return the unique o in [0, out) with window_in_pos(o, k) == i, or -1.
TEST(Geometry, WindowOutPosMatchesBruteForce) {
  int checked = 0, found = 0;
  for (int in = 1; in <= 9; in++)
    for (int k = 1; k <= 6; k++)
      for (int stride = 1; stride <= 4; stride++)
        for (int pad = 0; pad <= 3; pad++) {
          if (in + 2 * pad < k) continue;
          int out = window_out_size(in, k, stride, pad);
          ASSERT_GE(out, 1);
          for (int i = 0; i < in; i++)
            for (int tap = 0; tap < k; tap++) {
              int expect = -1;
              for (int o = 0; o < out; o++)
                if (window_in_pos(o, tap, stride, pad) == i) {
                  ASSERT_EQ(expect, -1) << "two outputs read the same input through one tap";
                  expect = o;
                }
              ASSERT_EQ(window_out_pos(i, tap, stride, pad, out), expect)
                  << "i " << i << " tap " << tap << " in " << in << " k " << k << " stride " << stride << " pad " << pad
                  << " out " << out;
              checked++;
              found += expect >= 0;
            }
        }
  EXPECT_GT(found, 0);
  EXPECT_GT(checked - found, 0);  // the -1 branch was exercised too
}

// The last window of eq. (2.1) fits in the padded input and the next one would not.
TEST(Geometry, LastWindowFitsAndNextDoesNot) {
  for (int in = 1; in <= 12; in++)
    for (int k = 1; k <= 6; k++)
      for (int stride = 1; stride <= 4; stride++)
        for (int pad = 0; pad <= 2; pad++) {
          if (in + 2 * pad < k) continue;
          int out = window_out_size(in, k, stride, pad);
          // window o covers padded positions [o*stride, o*stride + k) of a padded axis of in + 2*pad
          EXPECT_LE((out - 1) * stride + k, in + 2 * pad);
          EXPECT_GT(out * stride + k, in + 2 * pad);
        }
}

// pool_out_range(i) must give exactly the windows o in [0, out) with o*stride <= i < o*stride + k.
TEST(Geometry, PoolOutRangeMatchesBruteForce) {
  int covered = 0, uncovered = 0, multi = 0;
  for (int in = 1; in <= 13; in++)
    for (int k = 1; k <= 5 && k <= in; k++)
      for (int stride = 1; stride <= 5; stride++) {
        int out = window_out_size(in, k, stride, 0);
        for (int i = 0; i < in; i++) {
          int lo, hi;
          pool_out_range(i, k, stride, out, &lo, &hi);
          ASSERT_GE(lo, 0);
          ASSERT_LE(hi, out);
          int count = 0;
          for (int o = 0; o < out; o++) {
            bool contains = o * stride <= i && i < o * stride + k;
            bool in_range = lo <= o && o < hi;
            ASSERT_EQ(in_range, contains) << "i " << i << " o " << o << " in " << in << " k " << k << " stride "
                                          << stride << " range [" << lo << ", " << hi << ")";
            count += contains;
          }
          covered += count > 0;
          uncovered += count == 0;
          multi += count > 1;
        }
      }
  // all three situations occur: gaps (stride > k or leftover), single and overlapping windows
  EXPECT_GT(covered, 0);
  EXPECT_GT(uncovered, 0);
  EXPECT_GT(multi, 0);
}
