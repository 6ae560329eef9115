// IDX reading and writing: round trips, and every way a file can be wrong (each must be a
// UsageError naming the file and the numbers involved, and none may allocate what a hostile
// header claims).
#include <gtest/gtest.h>
#include <zlib.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <new>
#include <string>
#include <vector>

#include "barecnn/error.h"
#include "test_util.h"
#include "barecnn/fileutil.h"
#include "barecnn/idx.h"

// --- the largest single allocation, to prove that hostile headers are not trusted --------------
// Replacing the global operator new is standard C++; it sees every std::vector/std::string
// allocation of the program, the library included.
// GCC pairs the inlined std::allocator new/delete with our free() and warns falsely.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
namespace {
std::atomic<bool> g_track{false};
std::atomic<size_t> g_max_alloc{0};
void note_alloc(size_t n) {
  if (!g_track.load(std::memory_order_relaxed)) return;
  size_t cur = g_max_alloc.load(std::memory_order_relaxed);
  while (n > cur && !g_max_alloc.compare_exchange_weak(cur, n)) {}
}
}  // namespace

void* operator new(size_t n) {
  note_alloc(n);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace fs = std::filesystem;
using namespace barecnn;

namespace {

using test::slurp;
using test::spit;
using test::usage_error_message;
std::string fresh_dir(const std::string& name) { return test::fresh_dir("idx_" + name); }

// Tracks the largest allocation made while it lives.
struct AllocWatch {
  AllocWatch() {
    g_max_alloc = 0;
    g_track = true;
  }
  ~AllocWatch() { g_track = false; }
  size_t max() const { return g_max_alloc.load(); }
};

std::string be32(uint32_t v) { return {char(v >> 24), char(v >> 16), char(v >> 8), char(v)}; }
// A raw IDX file: magic, dims, then `data`.
std::string idx_bytes(uint32_t magic, std::vector<uint32_t> dims, const std::string& data) {
  std::string s = be32(magic);
  for (uint32_t d : dims) s += be32(d);
  return s + data;
}

std::string gzip(const std::string& raw) {
  z_stream zs{};
  EXPECT_EQ(deflateInit2(&zs, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(deflateBound(&zs, uLong(raw.size())), '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(raw.data()));
  zs.avail_in = uInt(raw.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = uInt(out.size());
  EXPECT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
  out.resize(out.size() - zs.avail_out);
  deflateEnd(&zs);
  return out;
}

// Pixels with structure and noise: compressible, so gzip uses Huffman blocks (not stored ones).
std::string pixel_pattern(size_t n, uint32_t seed = 1) {
  std::string s(n, '\0');
  uint32_t x = seed;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    s[i] = char((i % 28) * 9 + ((x >> 24) & 7));
  }
  return s;
}

IdxImages make_images(int count, int rows, int cols, uint32_t seed = 1) {
  IdxImages img;
  img.count = count, img.rows = rows, img.cols = cols;
  std::string p = pixel_pattern(size_t(count) * rows * cols, seed);
  img.pixels.assign(p.begin(), p.end());
  return img;
}

bool has(const std::string& msg, const std::string& part) { return msg.find(part) != std::string::npos; }

#define EXPECT_HAS(msg, part) EXPECT_TRUE(has(msg, part)) << "expected \"" << (part) << "\" in: " << (msg)

}  // namespace

// ---------------------------------------------------------------------------------------------
// round trips and byte layout
// ---------------------------------------------------------------------------------------------

TEST(Idx, PlainRoundTripAndHeaderBytes) {
  std::string dir = fresh_dir("plain");
  IdxImages img = make_images(3, 5, 7);
  write_idx_images(dir + "/img", img, false);
  std::string bytes = slurp(dir + "/img");
  // Magic 0x00000803, then 3, 5, 7 big-endian, then the 105 pixels.
  ASSERT_EQ(bytes.size(), 16u + 105u);
  EXPECT_EQ(bytes.substr(0, 16), std::string("\0\0\x08\x03\0\0\0\x03\0\0\0\x05\0\0\0\x07", 16));
  EXPECT_EQ(bytes.substr(16), std::string(img.pixels.begin(), img.pixels.end()));
  IdxImages back = read_idx_images(dir + "/img");
  EXPECT_EQ(back.count, 3);
  EXPECT_EQ(back.rows, 5);
  EXPECT_EQ(back.cols, 7);
  EXPECT_EQ(back.pixels, img.pixels);

  std::vector<uint8_t> labels = {3, 1, 4, 1, 5, 9, 2, 6};
  write_idx_labels(dir + "/lab", labels, false);
  EXPECT_EQ(slurp(dir + "/lab"), std::string("\0\0\x08\x01\0\0\0\x08\x03\x01\x04\x01\x05\x09\x02\x06", 16));
  EXPECT_EQ(read_idx_labels(dir + "/lab"), labels);
}

TEST(Idx, GzipRoundTrip) {
  std::string dir = fresh_dir("gz");
  // Larger than the reader's first 64 KiB buffer, so the buffer has to grow.
  IdxImages img = make_images(200, 28, 28);
  write_idx_images(dir + "/img.gz", img, true);
  std::string bytes = slurp(dir + "/img.gz");
  ASSERT_GE(bytes.size(), 2u);
  EXPECT_EQ(uint8_t(bytes[0]), 0x1f);
  EXPECT_EQ(uint8_t(bytes[1]), 0x8b);
  EXPECT_LT(bytes.size(), img.pixels.size());  // it is compressed
  IdxImages back = read_idx_images(dir + "/img.gz");
  EXPECT_EQ(back.count, 200);
  EXPECT_EQ(back.rows, 28);
  EXPECT_EQ(back.cols, 28);
  EXPECT_EQ(back.pixels, img.pixels);

  std::vector<uint8_t> labels(1000);
  for (size_t i = 0; i < labels.size(); ++i) labels[i] = uint8_t(i * 7 % 10);
  write_idx_labels(dir + "/lab.gz", labels, true);
  EXPECT_EQ(read_idx_labels(dir + "/lab.gz"), labels);

  // gzip is detected by content, not by name; concatenated gzip members are one valid file.
  std::string raw = idx_bytes(0x801, {4}, std::string("\x01\x02\x03\x04", 4));
  spit(dir + "/lab_no_ext", gzip(raw.substr(0, 6)) + gzip(raw.substr(6)));
  EXPECT_EQ(read_idx_labels(dir + "/lab_no_ext"), (std::vector<uint8_t>{1, 2, 3, 4}));
}

// ---------------------------------------------------------------------------------------------
// malformed files
// ---------------------------------------------------------------------------------------------

TEST(Idx, WrongMagic) {
  std::string dir = fresh_dir("magic");
  std::string p = dir + "/labels-as-images";
  write_idx_labels(p, {1, 2, 3}, false);
  std::string msg = usage_error_message([&] { read_idx_images(p); });
  EXPECT_HAS(msg, p + ": not an IDX images file");
  EXPECT_HAS(msg, "expected magic 0x00000803");
  EXPECT_HAS(msg, "found 0x00000801 (an IDX labels file)");

  write_idx_images(p + ".gz", make_images(1, 2, 2), true);
  msg = usage_error_message([&] { read_idx_labels(p + ".gz"); });
  EXPECT_HAS(msg, p + ".gz: not an IDX labels file");
  EXPECT_HAS(msg, "expected magic 0x00000801");
  EXPECT_HAS(msg, "found 0x00000803");

  spit(p, "\x89PNG\r\n\x1a\n and more bytes");
  msg = usage_error_message([&] { read_idx_images(p); });
  EXPECT_HAS(msg, "found 0x89504E47 (not an IDX file)");

  spit(p, idx_bytes(0x00000D03, {1, 1, 1}, std::string(4, '\0')));  // float elements
  msg = usage_error_message([&] { read_idx_images(p); });
  EXPECT_HAS(msg, "found 0x00000D03 (element type 0x0D");
}

TEST(Idx, TruncatedHeader) {
  std::string dir = fresh_dir("header");
  std::string p = dir + "/short";
  spit(p, idx_bytes(0x803, {60000}, "").substr(0, 8) + std::string("\0\0", 2));  // 10 bytes
  std::string msg = usage_error_message([&] { read_idx_images(p); });
  EXPECT_HAS(msg, p + ": truncated header");
  EXPECT_HAS(msg, "expected a 16-byte IDX images header");
  EXPECT_HAS(msg, "found only 10 bytes");

  spit(p, "");
  msg = usage_error_message([&] { read_idx_labels(p); });
  EXPECT_HAS(msg, p + ": truncated header: expected a 8-byte IDX labels header");
  EXPECT_HAS(msg, "found only 0 bytes");

  spit(p + ".gz", gzip(std::string("\0\0\x08\x01\0\0", 6)));
  msg = usage_error_message([&] { read_idx_labels(p + ".gz"); });
  EXPECT_HAS(msg, p + ".gz: truncated header");
  EXPECT_HAS(msg, "found only 6 bytes");
}

TEST(Idx, TruncatedData) {
  std::string dir = fresh_dir("trunc");
  std::string p = dir + "/train-images-idx3-ubyte";
  std::string raw = idx_bytes(0x803, {3, 28, 28}, pixel_pattern(1234));
  spit(p, raw);
  std::string msg = usage_error_message([&] { read_idx_images(p); });
  EXPECT_HAS(msg, p + ": truncated data: header declares 3 images of 28x28 (2352 bytes) but the "
                      "file holds 1234 bytes of pixel data");

  spit(p + ".gz", gzip(raw));
  msg = usage_error_message([&] { read_idx_images(p + ".gz"); });
  EXPECT_HAS(msg, p + ".gz: truncated data: header declares 3 images of 28x28 (2352 bytes) but "
                      "the file holds 1234 bytes of pixel data");

  spit(p, idx_bytes(0x801, {10}, "\x01\x02\x03"));
  msg = usage_error_message([&] { read_idx_labels(p); });
  EXPECT_HAS(msg, p + ": truncated data: header declares 10 labels (10 bytes) but the file holds "
                      "3 bytes of label data");
}

TEST(Idx, ExtraData) {
  std::string dir = fresh_dir("extra");
  std::string p = dir + "/img";
  std::string raw = idx_bytes(0x803, {2, 4, 4}, pixel_pattern(32 + 5));
  spit(p, raw);
  std::string msg = usage_error_message([&] { read_idx_images(p); });
  EXPECT_HAS(msg, p + ": extra data: header declares 2 images of 4x4 (32 bytes) but the file "
                      "holds 37 bytes of pixel data, 5 more");
  spit(p + ".gz", gzip(raw));
  msg = usage_error_message([&] { read_idx_images(p + ".gz"); });
  EXPECT_HAS(msg, p + ".gz: extra data: header declares 2 images of 4x4 (32 bytes) but the file "
                      "holds 37 bytes of pixel data, 5 more");
}

TEST(Idx, ZeroDimensions) {
  std::string dir = fresh_dir("zero");
  std::string p = dir + "/img";
  spit(p, idx_bytes(0x803, {0, 28, 28}, ""));
  std::string msg = usage_error_message([&] { read_idx_images(p); });
  EXPECT_HAS(msg, p + ": header declares 0 images of 28x28; expected at least 1 image");
  spit(p, idx_bytes(0x803, {5, 28, 0}, ""));
  msg = usage_error_message([&] { read_idx_images(p); });
  EXPECT_HAS(msg, p + ": header declares 5 images of 28x0");
  spit(p, idx_bytes(0x801, {0}, ""));
  msg = usage_error_message([&] { read_idx_labels(p); });
  EXPECT_HAS(msg, p + ": header declares 0 labels");
}

TEST(Idx, HostileSizesFailWithoutAllocating) {
  std::string dir = fresh_dir("hostile");
  std::string p = dir + "/img";
  // 2^31 images of 28x28 in a 100-byte file: 1.7 TB declared.
  spit(p, idx_bytes(0x803, {1u << 31, 28, 28}, std::string(84, '\x7f')));
  ASSERT_EQ(fs::file_size(p), 100u);
  std::string msg;
  {
    AllocWatch w;
    msg = usage_error_message([&] { read_idx_images(p); });
    EXPECT_LT(w.max(), size_t(1) << 20) << "allocated " << w.max() << " bytes";
  }
  EXPECT_HAS(msg, p + ": absurd size: header declares 2147483648 images of 28x28 (1683627180032 bytes)");
  EXPECT_HAS(msg, "the file holds 100 bytes");

  // Dimensions whose product overflows 64 bits.
  spit(p, idx_bytes(0x803, {0x7fffffffu, 0xffffffffu, 0xffffffffu}, ""));
  msg = usage_error_message([&] { read_idx_images(p); });
  EXPECT_HAS(msg, p + ": absurd size");

  // Below the absurd limit (784 MB) but far beyond a 100-byte file: a plain file is checked
  // against its size before anything is allocated...
  spit(p, idx_bytes(0x803, {1000000, 28, 28}, std::string(84, '\x7f')));
  {
    AllocWatch w;
    msg = usage_error_message([&] { read_idx_images(p); });
    EXPECT_LT(w.max(), size_t(1) << 20) << "allocated " << w.max() << " bytes";
  }
  EXPECT_HAS(msg, p + ": truncated data: header declares 1000000 images of 28x28 (784000000 bytes) "
                      "but the file holds 84 bytes of pixel data");

  // ...and a gzip file only grows its buffer as data actually arrives.
  spit(p + ".gz", gzip(idx_bytes(0x803, {1000000, 28, 28}, std::string(84, '\x7f'))));
  {
    AllocWatch w;
    msg = usage_error_message([&] { read_idx_images(p + ".gz"); });
    EXPECT_LT(w.max(), size_t(1) << 20) << "allocated " << w.max() << " bytes";
  }
  EXPECT_HAS(msg, p + ".gz: truncated data: header declares 1000000 images of 28x28 (784000000 "
                      "bytes) but the file holds 84 bytes of pixel data");

  // Labels: 2^31 - 1 declared in a tiny file.
  spit(p, idx_bytes(0x801, {0x7fffffffu}, "\x01\x02"));
  {
    AllocWatch w;
    msg = usage_error_message([&] { read_idx_labels(p); });
    EXPECT_LT(w.max(), size_t(1) << 20) << "allocated " << w.max() << " bytes";
  }
  EXPECT_HAS(msg, p + ": truncated data: header declares 2147483647 labels (2147483647 bytes) but "
                      "the file holds 2 bytes of label data");
  spit(p, idx_bytes(0x801, {0xffffffffu}, "\x01\x02"));
  msg = usage_error_message([&] { read_idx_labels(p); });
  EXPECT_HAS(msg, p + ": absurd size: header declares 4294967295 labels (4294967295 bytes)");
  EXPECT_HAS(msg, "the file holds 10 bytes");
}

TEST(Idx, CorruptGzip) {
  std::string dir = fresh_dir("corrupt");
  std::string p = dir + "/img.gz";
  std::string good = gzip(idx_bytes(0x803, {10, 28, 28}, pixel_pattern(7840, 5)));
  ASSERT_GT(good.size(), 200u);

  // Bytes flipped in the middle: bad deflate data or a CRC mismatch, either way "corrupt".
  std::string bad = good;
  for (size_t i = bad.size() / 2; i < bad.size() / 2 + 8; ++i) bad[i] = char(~bad[i]);
  spit(p, bad);
  std::string msg = usage_error_message([&] { read_idx_images(p); });
  EXPECT_HAS(msg, p + ": corrupt gzip stream");

  // A single flipped bit in the CRC-32 trailer: the data decodes, the check does not pass.
  bad = good;
  bad[bad.size() - 6] ^= 0x10;
  spit(p, bad);
  msg = usage_error_message([&] { read_idx_images(p); });
  EXPECT_HAS(msg, p + ": corrupt gzip stream");
  EXPECT_HAS(msg, "incorrect data check");

  // Cut short: the gzip stream does not end.
  spit(p, good.substr(0, good.size() / 2));
  msg = usage_error_message([&] { read_idx_images(p); });
  EXPECT_HAS(
      msg, p + ": truncated gzip stream: the compressed data ends after " + std::to_string(good.size() / 2) + " bytes");

  // Garbage after the end of the stream.
  spit(p, good + "garbage!");
  msg = usage_error_message([&] { read_idx_images(p); });
  EXPECT_HAS(msg, p + ": trailing garbage: 8 bytes follow the end of the gzip stream");
}

TEST(Idx, MissingOrUnreadableFile) {
  std::string dir = fresh_dir("missing");
  std::string msg = usage_error_message([&] { read_idx_images(dir + "/nope.gz"); });
  EXPECT_HAS(msg, dir + "/nope.gz: cannot open (No such file or directory)");
  msg = usage_error_message([&] { read_idx_labels(dir); });
  EXPECT_HAS(msg, dir + ": is a folder");
}

// ---------------------------------------------------------------------------------------------
// load_dataset / check_labels
// ---------------------------------------------------------------------------------------------

namespace {
// Writes a small dataset: `ntrain` and `ntest` images of rows x cols, labels i % classes.
void write_dataset(const std::string& dir, int ntrain, int ntest, int rows, int cols, int classes, bool gz) {
  std::string ext = gz ? ".gz" : "";
  write_idx_images(dir + "/train-images-idx3-ubyte" + ext, make_images(ntrain, rows, cols, 1), gz);
  write_idx_images(dir + "/t10k-images-idx3-ubyte" + ext, make_images(ntest, rows, cols, 2), gz);
  std::vector<uint8_t> ltr(ntrain), lte(ntest);
  for (int i = 0; i < ntrain; ++i) ltr[i] = uint8_t(i % classes);
  for (int i = 0; i < ntest; ++i) lte[i] = uint8_t((i + 1) % classes);
  write_idx_labels(dir + "/train-labels-idx1-ubyte" + ext, ltr, gz);
  write_idx_labels(dir + "/t10k-labels-idx1-ubyte" + ext, lte, gz);
}
}  // namespace

TEST(Dataset, LoadsPlainAndGzipAndLimits) {
  std::string dir = fresh_dir("ds");
  write_dataset(dir, 12, 5, 6, 4, 7, /*gz=*/true);
  // A plain file next to the .gz one is preferred.
  write_idx_labels(dir + "/t10k-labels-idx1-ubyte", {0, 1, 2, 3, 4}, false);
  Dataset d = load_dataset(dir);
  EXPECT_EQ(d.train.count, 12);
  EXPECT_EQ(d.test.count, 5);
  EXPECT_EQ(d.train.rows, 6);
  EXPECT_EQ(d.train.cols, 4);
  EXPECT_EQ(d.classes, 7);  // train labels 0..6
  EXPECT_EQ(d.train_images_path, dir + "/train-images-idx3-ubyte.gz");
  EXPECT_EQ(d.test_labels_path, dir + "/t10k-labels-idx1-ubyte");
  EXPECT_EQ(d.test_labels, (std::vector<uint8_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(d.train.pixels, make_images(12, 6, 4, 1).pixels);

  Dataset l = load_dataset(dir, 5);
  EXPECT_EQ(l.train.count, 5);
  ASSERT_EQ(l.train.pixels.size(), 5u * 6 * 4);
  EXPECT_EQ(l.train.pixels, std::vector<uint8_t>(d.train.pixels.begin(), d.train.pixels.begin() + 120));
  EXPECT_EQ(l.train_labels, (std::vector<uint8_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(l.test.count, 5);  // the test set stays whole
  EXPECT_EQ(l.classes, 7);

  Dataset all = load_dataset(dir, 1000);  // larger than the set: keep all
  EXPECT_EQ(all.train.count, 12);
  EXPECT_EQ(all.train_labels.size(), 12u);
}

TEST(Dataset, CountMismatchAndSizeMismatch) {
  std::string dir = fresh_dir("ds_bad");
  write_dataset(dir, 10, 4, 5, 5, 3, false);
  write_idx_labels(dir + "/train-labels-idx1-ubyte", std::vector<uint8_t>(9, 1), false);
  std::string msg = usage_error_message([&] { load_dataset(dir); });
  EXPECT_HAS(msg,
             dir + "/train-labels-idx1-ubyte holds 9 labels but " + dir + "/train-images-idx3-ubyte holds 10 images");

  write_dataset(dir, 10, 4, 5, 5, 3, false);
  write_idx_images(dir + "/t10k-images-idx3-ubyte", make_images(4, 5, 6), false);
  msg = usage_error_message([&] { load_dataset(dir); });
  EXPECT_HAS(msg, dir + "/t10k-images-idx3-ubyte holds images of 5x6 but " + dir +
                      "/train-images-idx3-ubyte holds images of 5x5");

  // Zero test images.
  write_dataset(dir, 10, 4, 5, 5, 3, false);
  spit(dir + "/t10k-images-idx3-ubyte", idx_bytes(0x803, {0, 5, 5}, ""));
  msg = usage_error_message([&] { load_dataset(dir); });
  EXPECT_HAS(msg, dir + "/t10k-images-idx3-ubyte: header declares 0 images of 5x5");
}

TEST(Dataset, MissingFolderOrFile) {
  std::string dir = fresh_dir("ds_missing");
  std::string msg = usage_error_message([&] { load_dataset(dir + "/nowhere"); });
  EXPECT_HAS(msg, "data folder " + dir + "/nowhere does not exist");
  EXPECT_HAS(msg, "pass --data DIR");
  EXPECT_FALSE(has(msg, "apt-get")) << msg;

  write_dataset(dir, 3, 2, 2, 2, 2, false);
  fs::remove(dir + "/t10k-labels-idx1-ubyte");
  msg = usage_error_message([&] { load_dataset(dir); });
  EXPECT_HAS(msg, "data folder " + dir + ": missing t10k-labels-idx1-ubyte[.gz]");

  atomic_write_text(dir + "/afile", "x");
  msg = usage_error_message([&] { load_dataset(dir + "/afile"); });
  EXPECT_HAS(msg, dir + "/afile is not a folder");
}

TEST(Dataset, DefaultFolderMissingGivesInstallHint) {
  ASSERT_STREQ(default_data_dir(), "/usr/share/datasets/fashion-mnist");
  // Where the data is installed (CI), the same missing-folder path through a spelling of the
  // default folder that does not exist: "<default>/./missing/.." normalizes to the default, so it
  // gets the install hint, yet the folder itself is missing.
  std::string missing = fs::exists(default_data_dir()) ? std::string(default_data_dir()) + "/missing-for-test/.."
                                                       : std::string(default_data_dir());
  std::string msg = usage_error_message([&] { load_dataset(missing); });
  EXPECT_HAS(msg, "data folder " + missing + " does not exist");
  EXPECT_HAS(msg, "install it with: sudo apt-get install dataset-fashion-mnist");
  EXPECT_HAS(msg, "--data DIR");
}

TEST(Dataset, CheckLabelsNamesTheFileAndTheLabel) {
  std::string dir = fresh_dir("ds_labels");
  write_dataset(dir, 6, 5, 3, 3, 4, false);
  write_idx_labels(dir + "/t10k-labels-idx1-ubyte", {0, 1, 2, 12, 3}, false);
  Dataset d = load_dataset(dir);
  EXPECT_EQ(d.classes, 13);
  check_labels(d, 13);  // fine
  std::string msg = usage_error_message([&] { check_labels(d, 10); });
  EXPECT_HAS(msg, dir + "/t10k-labels-idx1-ubyte: label 12 at index 3 is outside the 10 classes");
  msg = usage_error_message([&] { check_labels(d, 3); });  // train labels 0..3 fail first
  EXPECT_HAS(msg, dir + "/train-labels-idx1-ubyte: label 3 at index 3 is outside the 3 classes");
}

TEST(Dataset, FashionMnist) {
  if (!fs::is_directory(default_data_dir()))
    GTEST_SKIP() << default_data_dir() << " not installed (apt-get install dataset-fashion-mnist)";
  Dataset d = load_dataset(default_data_dir());
  EXPECT_EQ(d.train.count, 60000);
  EXPECT_EQ(d.test.count, 10000);
  EXPECT_EQ(d.train.rows, 28);
  EXPECT_EQ(d.train.cols, 28);
  EXPECT_EQ(d.test.rows, 28);
  EXPECT_EQ(d.train.pixels.size(), 60000u * 784);
  EXPECT_EQ(d.train_labels.size(), 60000u);
  EXPECT_EQ(d.test_labels.size(), 10000u);
  EXPECT_EQ(d.classes, 10);
  // Balanced classes: 6000 training and 1000 test images each.
  std::vector<int> per(10, 0);
  for (uint8_t l : d.train_labels) ++per[l];
  for (int c = 0; c < 10; ++c) EXPECT_EQ(per[c], 6000) << "class " << c;
  check_labels(d, 10);
  // Recognised by its fingerprints, with its class names; its test files alone too.
  const KnownData* k = known_data(d.train_fingerprint, d.test_fingerprint);
  ASSERT_NE(k, nullptr) << d.train_fingerprint << " " << d.test_fingerprint;
  EXPECT_STREQ(k->name, "Fashion-MNIST");
  EXPECT_EQ(k->class_names.front(), "T-shirt/top");
  EXPECT_EQ(k->class_names.back(), "Ankle boot");
  EXPECT_EQ(known_data("", load_test_set(default_data_dir()).test_fingerprint), k);
  EXPECT_EQ(load_dataset(default_data_dir(), 100).train_fingerprint, d.train_fingerprint);  // before --limit
}

TEST(Dataset, FingerprintNamesTheDataNotTheFolderOrTheCompression) {
  std::string a = fresh_dir("fp_a"), b = fresh_dir("fp_b");
  write_dataset(a, 12, 5, 4, 4, 3, false);
  write_dataset(b, 12, 5, 4, 4, 3, true);  // the same data, gzipped, elsewhere
  Dataset da = load_dataset(a), db = load_dataset(b);
  EXPECT_EQ(da.train_fingerprint.size(), 16u);
  EXPECT_EQ(da.train_fingerprint, db.train_fingerprint);
  EXPECT_EQ(da.test_fingerprint, db.test_fingerprint);
  EXPECT_NE(da.train_fingerprint, da.test_fingerprint);
  EXPECT_EQ(known_data(da.train_fingerprint, da.test_fingerprint), nullptr);
  // One pixel, one label, or the image size changed: another fingerprint.
  IdxImages im = da.test;
  std::vector<uint8_t> labels = da.test_labels;
  const std::string fp = dataset_fingerprint(im, labels);
  im.pixels[7] ^= 1;
  EXPECT_NE(dataset_fingerprint(im, labels), fp);
  im.pixels[7] ^= 1;
  labels[2] ^= 1;
  EXPECT_NE(dataset_fingerprint(im, labels), fp);
  labels[2] ^= 1;
  im.rows = 2, im.cols = 8;
  EXPECT_NE(dataset_fingerprint(im, labels), fp);
}

TEST(Dataset, TestSetAloneNeedsOnlyTheT10kFiles) {
  std::string dir = fresh_dir("ds_t10k");
  write_dataset(dir, 12, 5, 4, 4, 3, false);
  const Dataset whole = load_dataset(dir);
  fs::remove(dir + "/train-images-idx3-ubyte");
  fs::remove(dir + "/train-labels-idx1-ubyte");
  Dataset d = load_test_set(dir);
  EXPECT_EQ(d.test.count, 5);
  EXPECT_EQ(d.train.count, 0);
  EXPECT_EQ(d.test_fingerprint, whole.test_fingerprint);
  EXPECT_EQ(d.test_labels, whole.test_labels);
  EXPECT_HAS(usage_error_message([&] { load_dataset(dir); }), "missing train-images-idx3-ubyte[.gz]");
  fs::remove(dir + "/t10k-labels-idx1-ubyte");
  EXPECT_HAS(usage_error_message([&] { load_test_set(dir); }), "missing t10k-labels-idx1-ubyte[.gz]");
}
