// Atomic file writing, writable-folder checks, and the PNG charts (decoded and inspected).
#include <cairo/cairo.h>
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "barecnn/error.h"
#include "test_util.h"
#include "barecnn/fileutil.h"
#include "barecnn/plots.h"

namespace fs = std::filesystem;
using namespace barecnn;

namespace {

using test::slurp;
using test::spit;
using test::usage_error_message;
std::string fresh_dir(const std::string& name) { return test::fresh_dir("files_" + name); }

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

uint32_t be32(const std::string& s, size_t off) {
  return (uint32_t(uint8_t(s[off])) << 24) | (uint32_t(uint8_t(s[off + 1])) << 16) |
         (uint32_t(uint8_t(s[off + 2])) << 8) | uint32_t(uint8_t(s[off + 3]));
}

// A decoded PNG: checks the signature and IHDR by hand, then decodes with cairo.
struct Png {
  int width = 0, height = 0;
  std::vector<uint32_t> argb;  // (height, width)
  uint32_t at(int x, int y) const { return argb[size_t(y) * width + x]; }
  static double lum(uint32_t p) { return 0.299 * ((p >> 16) & 0xff) + 0.587 * ((p >> 8) & 0xff) + 0.114 * (p & 0xff); }
};

::testing::AssertionResult load_png(const std::string& path, Png* out) {
  std::string bytes = slurp(path);
  const char sig[8] = {'\x89', 'P', 'N', 'G', '\r', '\n', '\x1a', '\n'};
  if (bytes.size() < 33 || bytes.compare(0, 8, std::string(sig, 8)) != 0)
    return ::testing::AssertionFailure() << path << ": no PNG signature (" << bytes.size() << " bytes)";
  // The first chunk must be IHDR, 13 bytes long: width and height, big-endian.
  if (be32(bytes, 8) != 13 || bytes.compare(12, 4, "IHDR") != 0)
    return ::testing::AssertionFailure() << path << ": first chunk is not a 13-byte IHDR";
  int w = int(be32(bytes, 16)), h = int(be32(bytes, 20));

  cairo_surface_t* s = cairo_image_surface_create_from_png(path.c_str());
  if (cairo_surface_status(s) != CAIRO_STATUS_SUCCESS) {
    std::string why = cairo_status_to_string(cairo_surface_status(s));
    cairo_surface_destroy(s);
    return ::testing::AssertionFailure() << path << ": cairo cannot decode it: " << why;
  }
  cairo_surface_flush(s);
  out->width = cairo_image_surface_get_width(s);
  out->height = cairo_image_surface_get_height(s);
  int stride = cairo_image_surface_get_stride(s);
  const unsigned char* data = cairo_image_surface_get_data(s);
  out->argb.resize(size_t(out->width) * out->height);
  for (int y = 0; y < out->height; ++y)
    for (int x = 0; x < out->width; ++x) {
      uint32_t p;
      std::memcpy(&p, data + size_t(y) * stride + 4 * size_t(x), 4);
      out->argb[size_t(y) * out->width + x] = p;
    }
  cairo_surface_destroy(s);
  if (out->width != w || out->height != h)
    return ::testing::AssertionFailure() << path << ": IHDR says " << w << "x" << h << ", decoded " << out->width << "x"
                                         << out->height;
  return ::testing::AssertionSuccess();
}

// Counts of dark (luminance < 60), light (> 230) and saturated (colourful) pixels.
struct Census {
  size_t dark = 0, light = 0, colour = 0, opaque = 0;
};
Census census(const Png& p) {
  Census c;
  for (uint32_t px : p.argb) {
    double l = Png::lum(px);
    if (l < 60) ++c.dark;
    if (l > 230) ++c.light;
    int r = (px >> 16) & 0xff, g = (px >> 8) & 0xff, b = px & 0xff;
    if (std::max({r, g, b}) - std::min({r, g, b}) > 80) ++c.colour;
    if ((px >> 24) == 0xff) ++c.opaque;
  }
  return c;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// atomic_write_file
// ---------------------------------------------------------------------------------------------

TEST(AtomicWrite, WritesAndReplacesWithoutLeavingTempFiles) {
  std::string dir = fresh_dir("atomic");
  std::string path = dir + "/out.bin";
  std::string first(100000, 'a');
  first[12345] = '\0';  // binary-safe
  atomic_write_file(path, first.data(), first.size());
  EXPECT_EQ(slurp(path), first);
  atomic_write_text(path, "short");
  EXPECT_EQ(slurp(path), "short");
  atomic_write_file(path, "", 0);
  EXPECT_TRUE(file_exists(path));
  EXPECT_EQ(slurp(path), "");
  // Only the target remains: no ".out.bin.tmp.*" leftovers.
  EXPECT_EQ(list_dir(dir), std::vector<std::string>{"out.bin"});
}

TEST(AtomicWrite, FailureThrowsAndLeavesTargetUntouched) {
  std::string dir = fresh_dir("atomic_fail");
  // Tests run as root, so permissions cannot make a folder unwritable; a regular file used as a
  // folder fails for everyone (ENOTDIR).
  std::string blocker = dir + "/blocker";
  atomic_write_text(blocker, "i am a file");
  std::string msg = usage_error_message([&] { atomic_write_text(blocker + "/out.txt", "data"); });
  EXPECT_NE(msg.find(blocker + "/out.txt"), std::string::npos) << msg;
  EXPECT_NE(msg.find("Not a directory"), std::string::npos) << msg;

  msg = usage_error_message([&] { atomic_write_text(dir + "/no/such/folder/out.txt", "data"); });
  EXPECT_NE(msg.find(dir + "/no/such/folder/out.txt"), std::string::npos) << msg;
  EXPECT_NE(msg.find("No such file or directory"), std::string::npos) << msg;

  // Replacing an existing target fails late, at the rename: a folder sits at the target's name.
  // The folder stays as it was and the temp file is removed.
  std::string target = dir + "/target";
  fs::create_directories(target + "/inside");
  atomic_write_text(target + "/inside/keep.txt", "old");
  msg = usage_error_message([&] { atomic_write_text(target, "new content"); });
  EXPECT_NE(msg.find(target), std::string::npos) << msg;
  EXPECT_NE(msg.find("rename"), std::string::npos) << msg;
  EXPECT_EQ(slurp(target + "/inside/keep.txt"), "old");
  EXPECT_EQ(list_dir(dir), (std::vector<std::string>{"blocker", "target"}));
  EXPECT_EQ(slurp(blocker), "i am a file");
}

TEST(FileUtil, ReadFileAndPathJoin) {
  std::string dir = fresh_dir("read");
  atomic_write_text(dir + "/x.txt", std::string("ab\0cd", 5));
  EXPECT_EQ(read_file(dir + "/x.txt", "model file"), std::string("ab\0cd", 5));
  std::string msg = usage_error_message([&] { read_file(dir + "/missing.safetensors", "model file"); });
  EXPECT_NE(msg.find("model file"), std::string::npos) << msg;
  EXPECT_NE(msg.find(dir + "/missing.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("No such file"), std::string::npos) << msg;
  msg = usage_error_message([&] { read_file(dir, "model file"); });
  EXPECT_NE(msg.find("folder"), std::string::npos) << msg;

  EXPECT_FALSE(file_exists(dir + "/missing"));
  EXPECT_FALSE(file_exists(dir));  // a folder is not a file
  EXPECT_EQ(path_join("a/b", "c.png"), "a/b/c.png");
  EXPECT_EQ(path_join("a/b/", "c.png"), "a/b/c.png");
  EXPECT_EQ(path_join("", "c.png"), "c.png");
}

TEST(FileUtil, EnsureWritableDir) {
  std::string dir = fresh_dir("writable");
  std::string nested = dir + "/a/b/c";
  ensure_writable_dir(nested, "--out");
  EXPECT_TRUE(fs::is_directory(nested));
  EXPECT_TRUE(fs::is_empty(nested));     // the probe file is gone
  ensure_writable_dir(nested, "--out");  // existing is fine

  std::string blocker = dir + "/file";
  atomic_write_text(blocker, "x");
  std::string msg = usage_error_message([&] { ensure_writable_dir(blocker + "/sub", "--out"); });
  EXPECT_EQ(msg.rfind("--out " + blocker + "/sub: ", 0), 0u) << msg;
  EXPECT_NE(msg.find("choose a writable folder"), std::string::npos) << msg;

  msg = usage_error_message([&] { ensure_writable_dir(blocker, "--resume"); });
  EXPECT_EQ(msg.rfind("--resume " + blocker + ": ", 0), 0u) << msg;
  EXPECT_NE(msg.find("not a folder"), std::string::npos) << msg;

  // /proc/1 exists and no one, not even root, can create files in it.
  if (fs::is_directory("/proc/1")) {
    msg = usage_error_message([&] { ensure_writable_dir("/proc/1", "--out"); });
    EXPECT_EQ(msg.rfind("--out /proc/1: cannot create files there (", 0), 0u) << msg;
  }
}

// ---------------------------------------------------------------------------------------------
// plots
// ---------------------------------------------------------------------------------------------

TEST(Plots, CurvesAreAValidNonBlankPng) {
  std::string dir = fresh_dir("curves");
  std::string path = dir + "/loss.png";
  Series train{"train loss", {1, 2, 3, 4, 5, 6}, {0.9, 0.55, 0.42, NAN, 0.31, 0.28}};
  Series test{"test loss", {1, 2, 3, 4, 5, 6}, {0.7, 0.5, 0.45, 0.41, 0.40, 0.39}};
  plot_curves(path, "Loss", "epoch", "cross-entropy", {train, test});
  Png png;
  ASSERT_TRUE(load_png(path, &png));
  EXPECT_GE(png.width, 400);
  EXPECT_GE(png.height, 300);
  Census c = census(png);
  EXPECT_EQ(c.opaque, png.argb.size());     // opaque white background
  EXPECT_GT(c.light, png.argb.size() / 2);  // mostly background
  EXPECT_GT(c.dark, 200u);                  // text and axes
  EXPECT_GT(c.colour, 300u);                // the two coloured lines
  EXPECT_EQ(list_dir(dir), std::vector<std::string>{"loss.png"});

  // A single point, and a series that is all NaN, still give a chart.
  plot_curves(path, "One epoch", "epoch", "accuracy", {{"acc", {1}, {0.9}}, {"nan", {1}, {NAN}}});
  ASSERT_TRUE(load_png(path, &png));
  c = census(png);
  EXPECT_GT(c.dark, 200u);
  EXPECT_GT(c.colour, 20u);  // the marker of the single point
}

TEST(Plots, FiltersShowBlackAndWhiteWeights) {
  std::string dir = fresh_dir("filters");
  std::string path = dir + "/filters.png";
  const int K = 6, C = 2, kh = 5, kw = 3;
  std::vector<float> w(size_t(K) * C * kh * kw);  // (K, C, kh, kw)
  for (size_t i = 0; i < w.size(); ++i) w[i] = float(std::sin(0.7 * double(i)) * (1 + i % 4));
  w[0] = 7;    // filter 0: one white square (its max)
  w[10] = -7;  //           one black square (its min)
  plot_filters(path, w.data(), K, C, kh, kw, "conv 0 filters");
  Png png;
  ASSERT_TRUE(load_png(path, &png));
  Census c = census(png);
  EXPECT_EQ(c.opaque, png.argb.size());
  // Grey squares of at least 4 px per weight: many exactly black (per-filter minimum) pixels.
  size_t black = 0;
  for (uint32_t px : png.argb) black += (px & 0xffffffu) == 0u;
  EXPECT_GE(black, size_t(K) * 16);
  EXPECT_GT(c.light, 1000u);
  // Grey-scale only: no saturated colours.
  EXPECT_EQ(c.colour, 0u);

  // A constant filter (no range) draws mid-grey instead of dividing by zero.
  std::vector<float> flat(size_t(1) * 1 * 3 * 3, 0.25f);
  plot_filters(path, flat.data(), 1, 1, 3, 3, "flat");
  ASSERT_TRUE(load_png(path, &png));
  size_t mid = 0;
  for (uint32_t px : png.argb) {
    int g = px & 0xff;
    mid += g >= 120 && g <= 135 && int((px >> 8) & 0xff) == g;
  }
  EXPECT_GE(mid, 9u * 16u);
}

TEST(Plots, ConfusionShadesByRowRate) {
  std::string dir = fresh_dir("confusion");
  std::string path = dir + "/confusion.png";
  const int K = 3;
  // Diagonal rates 0.9; off-diagonal 0.05. Row totals differ, so shading by raw counts would
  // make row 2's off-diagonal cells (count 100) darker than row 0's diagonal (count 90).
  std::vector<int64_t> counts = {90, 5, 5, 45, 900, 55, 100, 100, 1800};
  plot_confusion(path, counts, K, {"T-shirt/top", "Trouser", "Ankle boot"}, "Confusion matrix");
  Png png;
  ASSERT_TRUE(load_png(path, &png));
  Census c = census(png);
  EXPECT_EQ(c.opaque, png.argb.size());
  EXPECT_GT(c.dark, 300u);
  EXPECT_GT(c.light, 1000u);

  // Find the matrix: the bounding box of the darkest blue pixels (the diagonal cells, rate 0.9),
  // which spans from cell (0,0) to cell (2,2), i.e. the whole matrix.
  int x0 = png.width, y0 = png.height, x1 = -1, y1 = -1;
  for (int y = 0; y < png.height; ++y)
    for (int x = 0; x < png.width; ++x) {
      uint32_t p = png.at(x, y);
      int r = (p >> 16) & 0xff, b = p & 0xff;
      if (b > r + 60 && Png::lum(p) < 90) {
        x0 = std::min(x0, x), y0 = std::min(y0, y), x1 = std::max(x1, x), y1 = std::max(y1, y);
      }
    }
  ASSERT_GT(x1, x0 + 30);
  ASSERT_GT(y1, y0 + 30);
  double cw = (x1 - x0 + 1) / double(K), ch = (y1 - y0 + 1) / double(K);
  EXPECT_NEAR(cw, ch, 2.0);  // square cells
  // Sample each cell near its top-left corner (away from the count text in the middle).
  auto cell_lum = [&](int i, int j) { return Png::lum(png.at(int(x0 + (j + 0.15) * cw), int(y0 + (i + 0.15) * ch))); };
  for (int i = 0; i < K; ++i)
    for (int j = 0; j < K; ++j)
      if (i != j) {
        EXPECT_LT(cell_lum(i, i) + 100, cell_lum(i, j)) << "cell " << i << "," << j;
        EXPECT_GT(cell_lum(i, j), 200) << "a 5% cell is nearly white; cell " << i << "," << j;
      }
  // Equal rates give equal shades, whatever the counts.
  EXPECT_NEAR(cell_lum(0, 0), cell_lum(2, 2), 1.0);
  EXPECT_NEAR(cell_lum(0, 1), cell_lum(2, 0), 1.0);  // both 0.05
  // The count text inside a dark cell is white: light pixels near the centre of cell (1,1).
  size_t white_in_dark = 0;
  for (int y = int(y0 + 1.3 * ch); y < int(y0 + 1.7 * ch); ++y)
    for (int x = int(x0 + 1.2 * cw); x < int(x0 + 1.8 * cw); ++x) white_in_dark += Png::lum(png.at(x, y)) > 200;
  EXPECT_GT(white_in_dark, 10u);
}

TEST(Plots, WriteFailureNamesTheFile) {
  std::string dir = fresh_dir("plot_fail");
  atomic_write_text(dir + "/file", "x");
  std::string path = dir + "/file/chart.png";
  try {
    plot_curves(path, "t", "x", "y", {{"a", {1, 2}, {1, 2}}});
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

// cairo caches fonts, and fontconfig its configuration, for the life of the process; release
// them at exit so that LeakSanitizer in the sanitizer build reports only real leaks. FcFini is
// looked up at run time: fontconfig is loaded by cairo, but not linked into this test.
namespace {
struct CairoCleanup : ::testing::Environment {
  void TearDown() override {
    cairo_debug_reset_static_data();
    if (auto fc_fini = reinterpret_cast<void (*)()>(dlsym(RTLD_DEFAULT, "FcFini"))) fc_fini();
  }
};
const auto* const g_cairo_cleanup = ::testing::AddGlobalTestEnvironment(new CairoCleanup);
}  // namespace
