// PNG and PGM images for predict: the pixels read back exactly as written (8 and 16 bits, binary
// and text PGM, comments, a gray palette, alpha), a folder in name order with --invert, and every
// bad file named with what was wrong (colour, size, truncation, bad header values).
#include <gtest/gtest.h>
#include <png.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "barecnn/error.h"
#include "barecnn/image.h"
#include "test_util.h"

using namespace barecnn;

namespace {

std::vector<uint8_t> pattern(int w, int h) {
  std::vector<uint8_t> p(size_t(w) * h);
  for (size_t i = 0; i < p.size(); ++i) p[i] = uint8_t((i * 37 + 11) % 256);
  return p;
}

// A PNG of `format` (PNG_FORMAT_GRAY, _GA, _RGB, ...) from 8-bit samples.
void write_png(const std::string& path, int w, int h, png_uint_32 format, const std::vector<uint8_t>& samples) {
  png_image img;
  std::memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  img.width = png_uint_32(w);
  img.height = png_uint_32(h);
  img.format = format;
  ASSERT_TRUE(png_image_write_to_file(&img, path.c_str(), 0, samples.data(), 0, nullptr)) << img.message;
}

std::string pgm_header(const char* magic, int w, int h, int maxval) {
  return std::string(magic) + "\n# made by a test\n" + std::to_string(w) + " " + std::to_string(h) + "\n" +
         std::to_string(maxval) + "\n";
}

#define EXPECT_USAGE_ERROR(stmt, text)                                                     \
  do {                                                                                     \
    std::string m_ = test::usage_error_message([&] { stmt; });                             \
    EXPECT_NE(m_.find(text), std::string::npos) << "expected '" << text << "' in: " << m_; \
  } while (0)

}  // namespace

TEST(ImageFile, GrayPngReadsBackExactly) {
  std::string d = test::fresh_dir("img_png");
  const std::vector<uint8_t> p = pattern(7, 5);
  write_png(d + "/a.png", 7, 5, PNG_FORMAT_GRAY, p);
  EXPECT_EQ(image_format(d + "/a.png"), ImageFormat::Png);
  IdxImages im = read_png_gray(d + "/a.png");
  EXPECT_EQ(im.count, 1);
  EXPECT_EQ(im.rows, 5);
  EXPECT_EQ(im.cols, 7);
  EXPECT_EQ(im.pixels, p);
  // Gray with alpha: opaque pixels keep their value, transparent ones become black.
  std::vector<uint8_t> ga;
  for (size_t i = 0; i < p.size(); ++i) ga.push_back(p[i]), ga.push_back(i % 2 ? 255 : 0);
  write_png(d + "/ga.png", 7, 5, PNG_FORMAT_GA, ga);
  IdxImages g = read_png_gray(d + "/ga.png");
  for (size_t i = 0; i < p.size(); ++i) EXPECT_EQ(g.pixels[i], i % 2 ? p[i] : 0) << i;
}

TEST(ImageFile, PgmBinaryTextAndSixteenBitReadBack) {
  std::string d = test::fresh_dir("img_pgm");
  const std::vector<uint8_t> p = pattern(4, 3);
  std::string bin = pgm_header("P5", 4, 3, 255) + std::string(p.begin(), p.end());
  IdxImages a = parse_pgm(bin, "a.pgm");
  EXPECT_EQ(a.rows, 3);
  EXPECT_EQ(a.cols, 4);
  EXPECT_EQ(a.pixels, p);
  std::string text = pgm_header("P2", 4, 3, 255);
  for (uint8_t v : p) text += std::to_string(v) + " ";
  EXPECT_EQ(parse_pgm(text, "t.pgm").pixels, p);
  // 16 bits (big-endian), maxval 65535: v * 257 reads back as v.
  std::string wide = pgm_header("P5", 4, 3, 65535);
  for (uint8_t v : p) wide += char((v * 257) >> 8), wide += char((v * 257) & 0xff);
  EXPECT_EQ(parse_pgm(wide, "w.pgm").pixels, p);
  // maxval 15: scaled to 0..255 (15 -> 255, 0 -> 0).
  IdxImages s = parse_pgm(pgm_header("P2", 2, 1, 15) + "15 0", "s.pgm");
  EXPECT_EQ(s.pixels, (std::vector<uint8_t>{255, 0}));
  test::spit(d + "/b.pgm", bin);
  EXPECT_EQ(image_format(d + "/b.pgm"), ImageFormat::Pgm);
  EXPECT_EQ(read_pgm(d + "/b.pgm").pixels, p);
}

TEST(ImageFile, BadFilesAreNamedWithWhatWasWrong) {
  std::string d = test::fresh_dir("img_bad");
  write_png(d + "/rgb.png", 2, 2, PNG_FORMAT_RGB, std::vector<uint8_t>(12, 100));
  EXPECT_USAGE_ERROR(read_png_gray(d + "/rgb.png"), d + "/rgb.png: a colour PNG");
  std::string png = test::slurp(d + "/rgb.png");
  test::spit(d + "/cut.png", png.substr(0, 20));
  EXPECT_USAGE_ERROR(read_png_gray(d + "/cut.png"), d + "/cut.png: not a readable PNG");
  const std::string p = pgm_header("P5", 4, 3, 255);
  EXPECT_USAGE_ERROR(parse_pgm(p + "abc", "c.pgm"), "c.pgm: truncated: 4x3 samples of 1 byte(s) need 12 bytes");
  EXPECT_USAGE_ERROR(parse_pgm("P5\n4 3\n0\n", "m.pgm"), "m.pgm: PGM maximum value 0; expected 1 to 65535");
  EXPECT_USAGE_ERROR(parse_pgm("P5\n0 3\n255\n", "z.pgm"), "z.pgm: a PGM of 0x3 pixels");
  EXPECT_USAGE_ERROR(parse_pgm("P5\n4\n", "h.pgm"), "h.pgm: the PGM header has no height");
  EXPECT_USAGE_ERROR(parse_pgm("P2\n1 1\n10\n11", "v.pgm"), "v.pgm: a PGM sample of 11 above the maximum value 10");
  EXPECT_USAGE_ERROR(parse_pgm("P6\n1 1\n255\nx", "p6.pgm"), "p6.pgm: not a PGM file");
  test::spit(d + "/text.png", "hello, world");
  std::vector<std::string> files;
  EXPECT_USAGE_ERROR(read_images(d + "/text.png", 1, 1, false, &files), "text.png: neither an IDX file nor a PNG");
  EXPECT_USAGE_ERROR(read_images(d + "/absent.png", 1, 1, false, &files), "absent.png: cannot open");
}

TEST(ImageFile, AFolderInNameOrderOfTheModelsSizeInverted) {
  std::string d = test::fresh_dir("img_folder");
  const std::vector<uint8_t> a = pattern(3, 2), b(6, 40);
  write_png(d + "/b.png", 3, 2, PNG_FORMAT_GRAY, b);
  test::spit(d + "/a.pgm", pgm_header("P5", 3, 2, 255) + std::string(a.begin(), a.end()));
  test::spit(d + "/notes.txt", "not an image");
  std::vector<std::string> files;
  IdxImages im = read_images(d, 2, 3, /*invert=*/true, &files);
  EXPECT_EQ(im.count, 2);
  EXPECT_EQ(files, (std::vector<std::string>{"a.pgm", "b.png"}));
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(im.pixels[i], 255 - a[i]);
    EXPECT_EQ(im.pixels[6 + i], 255 - b[i]);
  }
  // Another size than the model's: the file, its size and the model's.
  EXPECT_USAGE_ERROR(read_images(d, 3, 3, false, &files),
                     d + "/a.pgm: the image is 3x2 pixels (width x height) but the model takes 3x3");
  std::string empty = test::fresh_dir("img_empty");
  EXPECT_USAGE_ERROR(read_images(empty, 2, 3, false, &files), "a folder with no .png or .pgm files");
  // An IDX file: its images, each named by the file.
  IdxImages idx;
  idx.count = 2, idx.rows = 2, idx.cols = 3;
  idx.pixels.assign(12, 7);
  write_idx_images(d + "/x.idx", idx, false);
  IdxImages back = read_images(d + "/x.idx", 2, 3, false, &files);
  EXPECT_EQ(back.pixels, idx.pixels);
  EXPECT_EQ(files, (std::vector<std::string>{"x.idx", "x.idx"}));
}
