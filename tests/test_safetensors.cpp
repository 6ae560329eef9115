// safetensors: round trips, the exact bytes of a tiny file, and hostile files (each must be a
// UsageError naming the file, the tensor and the numbers involved).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "barecnn/error.h"
#include "test_util.h"
#include "barecnn/safetensors.h"

namespace fs = std::filesystem;
using namespace barecnn;

namespace {

using test::slurp;
using test::spit;
using test::usage_error_message;
std::string fresh_dir(const std::string& name) { return test::fresh_dir("st_" + name); }

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = char(v >> (8 * i));
  return s;
}
// A file with the given header text and `data_len` data bytes (header length = its size).
std::string raw_file(const std::string& header, size_t data_len) {
  return le64(header.size()) + header + std::string(data_len, '\x5a');
}

bool has(const std::string& msg, const std::string& part) { return msg.find(part) != std::string::npos; }
#define EXPECT_HAS(msg, part) EXPECT_TRUE(has(msg, part)) << "expected \"" << (part) << "\" in: " << (msg)

// Writes `bytes` to a file and returns the reader's error.
std::string read_error(const std::string& path, const std::string& bytes) {
  spit(path, bytes);
  return usage_error_message([&] { read_safetensors(path); });
}

}  // namespace

TEST(SafeTensors, DtypeSizes) {
  EXPECT_EQ(dtype_size("F32"), 4u);
  EXPECT_EQ(dtype_size("F64"), 8u);
  EXPECT_EQ(dtype_size("I32"), 4u);
  EXPECT_EQ(dtype_size("I64"), 8u);
  EXPECT_EQ(dtype_size("U8"), 1u);
  EXPECT_EQ(dtype_size("BF16x"), 0u);
  EXPECT_EQ(dtype_size(""), 0u);
  SafeTensor t;
  t.shape = {};
  EXPECT_EQ(t.numel(), 1u);  // a scalar
  t.shape = {3, 0, 2};
  EXPECT_EQ(t.numel(), 0u);
  t.shape = {2, 3, 4};
  EXPECT_EQ(t.numel(), 24u);
}

TEST(SafeTensors, RoundTrip) {
  std::string dir = fresh_dir("round");
  SafeTensors st;
  st.metadata["arch"] = "conv(32,5,pad=2) relu maxpool(2) dense(128) relu dense(10)";
  st.metadata["mean"] = "0.2860";
  st.metadata["quote\"and\\unicode"] = "\xc3\xa9t\xc3\xa9";  // "été": escapes and UTF-8 survive
  std::vector<float> w(2 * 1 * 3 * 3);
  for (size_t i = 0; i < w.size(); ++i) w[i] = 0.1f * float(i) - 0.55f;
  st.put_f32("0.weight", {2, 1, 3, 3}, w.data());
  std::vector<float> b = {1.5f, -2.25f};
  st.put_f32("0.bias", {2}, b.data());
  std::vector<double> d = {1.0 / 3, -1e-300, 6.02214076e23};
  st.put_f64("x64", {3}, d.data());
  SafeTensor step;  // I64 scalar
  step.dtype = "I64";
  step.shape = {};
  int64_t sv = -1234567890123LL;
  step.bytes.resize(8);
  std::memcpy(step.bytes.data(), &sv, 8);
  st.tensors["step"] = step;
  st.put_f32("empty", {0, 4}, nullptr);
  SafeTensor u8;
  u8.dtype = "U8";
  u8.shape = {5};
  u8.bytes = {0, 1, 128, 254, 255};
  st.tensors["u8"] = u8;

  std::string path = dir + "/model.safetensors";
  write_safetensors(path, st);
  // The header length is a multiple of 8, padded with spaces.
  std::string bytes = slurp(path);
  uint64_t hlen = 0;
  for (int i = 0; i < 8; ++i) hlen |= uint64_t(uint8_t(bytes[i])) << (8 * i);
  EXPECT_EQ(hlen % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + hlen + 18 * 4 + 2 * 4 + 3 * 8 + 8 + 0 + 5);

  SafeTensors back = read_safetensors(path);
  EXPECT_EQ(back.metadata, st.metadata);
  ASSERT_EQ(back.tensors.size(), 6u);
  for (const auto& [name, t] : st.tensors) {
    ASSERT_TRUE(back.tensors.count(name)) << name;
    const SafeTensor& r = back.tensors.at(name);
    EXPECT_EQ(r.dtype, t.dtype) << name;
    EXPECT_EQ(r.shape, t.shape) << name;
    EXPECT_EQ(r.bytes, t.bytes) << name;
  }
  EXPECT_EQ(back.get_f32("0.weight"), w);
  EXPECT_EQ(back.get_f32("0.bias"), b);
  EXPECT_EQ(back.get_f64("x64"), d);
  EXPECT_TRUE(back.get_f32("empty").empty());
  EXPECT_EQ(back.tensors.at("empty").shape, (std::vector<int64_t>{0, 4}));
  EXPECT_TRUE(back.tensors.at("step").shape.empty());

  // No metadata at all is fine too.
  SafeTensors bare;
  bare.put_f64("a", {1}, d.data());
  write_safetensors(path, bare);
  SafeTensors bare_back = read_safetensors(path);
  EXPECT_TRUE(bare_back.metadata.empty());
  EXPECT_EQ(bare_back.get_f64("a"), std::vector<double>{1.0 / 3});
}

TEST(SafeTensors, ExactBytesOfATinyFile) {
  std::string dir = fresh_dir("bytes");
  SafeTensors st;
  float v[2] = {1.0f, -2.0f};
  st.put_f32("a", {2}, v);
  std::string path = dir + "/tiny.safetensors";
  write_safetensors(path, st);
  // Header: 54 characters of JSON (keys sorted), padded with 2 spaces to 56.
  std::string header = "{\"a\":{\"data_offsets\":[0,8],\"dtype\":\"F32\",\"shape\":[2]}}  ";
  ASSERT_EQ(header.size(), 56u);
  std::string expected = std::string("\x38\0\0\0\0\0\0\0", 8) + header +
                         std::string("\x00\x00\x80\x3f\x00\x00\x00\xc0", 8);  // 1.0f, -2.0f LE
  EXPECT_EQ(slurp(path), expected);

  // With metadata: "__metadata__" sorts before lower-case names; here 79 bytes + 1 space.
  st.metadata["k"] = "v";
  write_safetensors(path, st);
  header = "{\"__metadata__\":{\"k\":\"v\"},\"a\":{\"data_offsets\":[0,8],\"dtype\":\"F32\",\"shape\":[2]}} ";
  ASSERT_EQ(header.size(), 80u);
  expected = std::string("\x50\0\0\0\0\0\0\0", 8) + header + std::string("\x00\x00\x80\x3f\x00\x00\x00\xc0", 8);
  EXPECT_EQ(slurp(path), expected);
}

TEST(SafeTensors, ReadsHandWrittenFiles) {
  // Another writer's choices: metadata last, tensors not in name order, no padding, extra keys.
  std::string dir = fresh_dir("hand");
  std::string p = dir + "/f.safetensors";
  std::string header =
      "{\"z\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
      "\"a\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[4,8],\"extra\":1},"
      "\"__metadata__\":{\"format\":\"pt\"}}";
  std::string data = std::string("\x00\x00\x40\x40", 4) + std::string("\x07\x00\x00\x00", 4);  // 3.0f, 7
  spit(p, le64(header.size()) + header + data);
  SafeTensors st = read_safetensors(p);
  EXPECT_EQ(st.metadata.at("format"), "pt");
  EXPECT_EQ(st.get_f32("z"), std::vector<float>{3.0f});
  EXPECT_EQ(st.tensors.at("a").bytes, (std::vector<uint8_t>{7, 0, 0, 0}));
}

TEST(SafeTensors, GetChecksDtypeAndName) {
  SafeTensors st;
  double d = 2;
  st.put_f64("w", {}, &d);
  try {
    st.get_f32("w");
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_HAS(std::string(e.what()), "tensor \"w\" has dtype F64, expected F32");
  }
  std::string msg = usage_error_message([&] { st.get_f64("missing.weight"); });
  EXPECT_HAS(msg, "tensor \"missing.weight\" is missing (the file holds: w)");
}

// ---------------------------------------------------------------------------------------------
// hostile files
// ---------------------------------------------------------------------------------------------

TEST(SafeTensors, HostileLengths) {
  std::string dir = fresh_dir("lengths");
  std::string p = dir + "/bad.safetensors";
  std::string msg = read_error(p, std::string("\x10\0\0", 3));
  EXPECT_HAS(msg, p + ": not a safetensors file: it holds 3 bytes, fewer than the 8-byte header length");

  msg = read_error(p, le64(1000) + "{}" + std::string(10, ' '));
  EXPECT_HAS(msg, p + ": header length 1000 is beyond the file, which holds only 12 bytes after the 8-byte length");

  // An absurd length must be refused before anything of that size is allocated.
  msg = read_error(p, le64(~uint64_t(0)) + "{}");
  EXPECT_HAS(msg, p + ": header length 18446744073709551615 is beyond the file, which holds only 2 bytes");

  msg = usage_error_message([&] { read_safetensors(dir + "/none.safetensors"); });
  EXPECT_HAS(msg, dir + "/none.safetensors: cannot open (No such file or directory)");
}

TEST(SafeTensors, MalformedHeader) {
  std::string dir = fresh_dir("json");
  std::string p = dir + "/bad.safetensors";
  std::string msg = read_error(p, raw_file("{\"a\": {\"dtype\": ", 0));
  EXPECT_HAS(msg, p + ": malformed JSON header: ");
  msg = read_error(p, raw_file("", 0));
  EXPECT_HAS(msg, p + ": malformed JSON header: ");
  msg = read_error(p, raw_file("[1, 2]", 0));
  EXPECT_HAS(msg, p + ": the header is a JSON array, expected an object");
  msg = read_error(p, raw_file("{\"a\": 5}", 0));
  EXPECT_HAS(msg, p + ": tensor \"a\": entry is a JSON number, expected an object");
}

TEST(SafeTensors, Metadata) {
  std::string dir = fresh_dir("meta");
  std::string p = dir + "/bad.safetensors";
  std::string msg = read_error(p, raw_file("{\"__metadata__\": {\"arch\": \"x\", \"epochs\": 3}}", 0));
  EXPECT_HAS(msg, p + ": __metadata__ key \"epochs\" has a number value; safetensors metadata values must be strings");
  msg = read_error(p, raw_file("{\"__metadata__\": [\"x\"]}", 0));
  EXPECT_HAS(msg, p + ": __metadata__ is a JSON array");
}

TEST(SafeTensors, MissingOrMistypedFields) {
  std::string dir = fresh_dir("fields");
  std::string p = dir + "/bad.safetensors";
  std::string msg = read_error(p, raw_file("{\"w\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4));
  EXPECT_HAS(msg, p + ": tensor \"w\": missing \"dtype\"");
  msg = read_error(p, raw_file("{\"w\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4));
  EXPECT_HAS(msg, p + ": tensor \"w\": missing \"shape\"");
  msg = read_error(p, raw_file("{\"w\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4));
  EXPECT_HAS(msg, p + ": tensor \"w\": missing \"data_offsets\"");
  msg = read_error(p, raw_file("{\"w\": {\"dtype\": 7, \"shape\": [1], \"data_offsets\": [0, 4]}}", 4));
  EXPECT_HAS(msg, p + ": tensor \"w\": \"dtype\" is a number, expected a string");
  msg = read_error(p, raw_file("{\"w\": {\"dtype\": \"F32\", \"shape\": \"1\", \"data_offsets\": [0, 4]}}", 4));
  EXPECT_HAS(msg, p + ": tensor \"w\": \"shape\" is a string, expected an array of integers");
  msg = read_error(p, raw_file("{\"w\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}", 4));
  EXPECT_HAS(msg, p + ": tensor \"w\": \"shape\" holds a number, expected non-negative integers");
  msg = read_error(p, raw_file("{\"w\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 4));
  EXPECT_HAS(msg, p + ": tensor \"w\": \"shape\" [-1] has a negative or too large dimension");
  msg = read_error(p, raw_file("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}", 4));
  EXPECT_HAS(msg, p + ": tensor \"w\": \"data_offsets\" is [0], expected [begin, end]");
  msg = read_error(p, raw_file("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", 4));
  EXPECT_HAS(msg, p + ": tensor \"w\": \"data_offsets\" [-4,0] must hold two non-negative integers");
}

TEST(SafeTensors, BadOffsetsAndSizes) {
  std::string dir = fresh_dir("offsets");
  std::string p = dir + "/bad.safetensors";
  // Offsets past the end of the 8 data bytes.
  std::string msg =
      read_error(p, raw_file("{\"w\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}", 8));
  EXPECT_HAS(msg, p + ": tensor \"w\": data_offsets [0, 16] go past the end of the data, which holds 8 bytes");
  // begin > end.
  msg = read_error(p, raw_file("{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 0]}}", 8));
  EXPECT_HAS(msg, p + ": tensor \"w\": data_offsets [8, 0] has begin > end");
  // Byte length does not match the shape.
  msg = read_error(p, raw_file("{\"w\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 8]}}", 8));
  EXPECT_HAS(msg, p + ": tensor \"w\": F32 shape [3] needs 12 bytes but data_offsets [0, 8] span 8");
  // A shape whose byte count overflows 64 bits.
  msg = read_error(
      p, raw_file("{\"w\": {\"dtype\": \"F64\", \"shape\": [4294967296, 4294967296], \"data_offsets\": [0, 8]}}", 8));
  EXPECT_HAS(msg, p + ": tensor \"w\": shape [4294967296,4294967296] is too large");
  // Unknown dtype: names the dtype and the tensor.
  msg = read_error(p, raw_file("{\"w\": {\"dtype\": \"BF16\", \"shape\": [4], \"data_offsets\": [0, 8]}}", 8));
  EXPECT_HAS(msg, p + ": tensor \"w\": unknown dtype \"BF16\"");

  // Overlap: a [0, 8) and b [4, 12).
  msg = read_error(p, raw_file("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
                               " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
                               12));
  EXPECT_HAS(msg, p + ": tensors \"a\" [0, 8) and \"b\" [4, 12) overlap");
  // The same tensor bytes twice (aliasing) is an overlap too.
  msg = read_error(p, raw_file("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
                               " \"b\": {\"dtype\": \"I32\", \"shape\": [2], \"data_offsets\": [0, 8]}}",
                               8));
  EXPECT_HAS(msg, p + ": tensors \"a\" [0, 8) and \"b\" [0, 8) overlap");
  // Gap: bytes [8, 12) belong to no tensor.
  msg = read_error(p, raw_file("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
                               " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [12, 20]}}",
                               20));
  EXPECT_HAS(msg, p + ": gap in the data: bytes [8, 12) before tensor \"b\" belong to no tensor");
  // Gap at the start.
  msg = read_error(p, raw_file("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", 8));
  EXPECT_HAS(msg, p + ": gap in the data: bytes [0, 4) before tensor \"a\" belong to no tensor");
  // Trailing bytes after the last tensor.
  msg = read_error(p, raw_file("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 12));
  EXPECT_HAS(msg, p + ": gap in the data: bytes [8, 12) after the last tensor belong to no tensor");
  // No tensors, but data bytes.
  msg = read_error(p, raw_file("{}", 3));
  EXPECT_HAS(msg, p + ": gap in the data: bytes [0, 3) after the last tensor");
}

TEST(SafeTensors, ZeroSizeTensorsTileAnywhereContiguous) {
  // An empty tensor at the boundary of two others is contiguous; the writer places it so.
  std::string dir = fresh_dir("zero");
  std::string p = dir + "/f.safetensors";
  std::string header =
      "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
      "\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[4,4]},"
      "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
  spit(p, raw_file(header, 8));
  SafeTensors st = read_safetensors(p);
  EXPECT_EQ(st.tensors.size(), 3u);
  EXPECT_EQ(st.tensors.at("e").numel(), 0u);
  // Inside another tensor it is not.
  header =
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}";
  std::string msg = read_error(p, raw_file(header, 8));
  EXPECT_HAS(msg, p + ": tensors \"a\" [0, 8) and \"e\" [4, 4) overlap");
}
