// libFuzzer target: the IDX readers (images and labels), on the bytes as given and gzip-compressed.
//
// Random mutations almost never produce a valid gzip stream (the CRC-32 trailer sees to that), so
// the target also compresses every small input itself: the header and size checks then run on
// the incremental-inflate path with the same hostile headers as on the plain path.
#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "barecnn/idx.h"
#include "fuzz_common.h"

namespace {

std::string gzip(const std::string& raw) {
  z_stream zs;
  std::memset(&zs, 0, sizeof(zs));
  // 16 + MAX_WBITS: a gzip wrapper, as in a real .gz file; level 1 keeps the target fast.
  if (deflateInit2(&zs, 1, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK) std::abort();
  std::string out(deflateBound(&zs, uLong(raw.size())), '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(raw.data()));
  zs.avail_in = uInt(raw.size());
  zs.next_out = reinterpret_cast<Bytef*>(&out[0]);
  zs.avail_out = uInt(out.size());
  if (deflate(&zs, Z_FINISH) != Z_STREAM_END) std::abort();
  out.resize(out.size() - zs.avail_out);
  deflateEnd(&zs);
  return out;
}

void parse_both(const std::string& bytes, const char* name) {
  fuzz_expect_barecnn_errors_only("parse_idx_images", [&] {
    barecnn::IdxImages img = barecnn::parse_idx_images(bytes, name);
    // What every caller relies on: positive sizes and exactly count*rows*cols pixels.
    FUZZ_CHECK(img.count > 0 && img.rows > 0 && img.cols > 0, "non-positive size");
    FUZZ_CHECK(img.pixels.size() == size_t(img.count) * size_t(img.rows) * size_t(img.cols),
               "pixel count does not match the sizes");
  });
  fuzz_expect_barecnn_errors_only("parse_idx_labels", [&] {
    std::vector<uint8_t> labels = barecnn::parse_idx_labels(bytes, name);
    FUZZ_CHECK(!labels.empty(), "accepted an empty labels file");
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  parse_both(bytes, "fuzz-input");
  if (size <= (1u << 16)) parse_both(gzip(bytes), "fuzz-input.gz");
  return 0;
}
