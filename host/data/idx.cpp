// IDX files (the MNIST format), plain or gzip-compressed.
//
// An IDX file is a 4-byte magic (0, 0, element type, number of dimensions), one big-endian uint32
// per dimension, then the elements row-major. barecnn reads unsigned bytes (type 0x08): images
// (count, rows, cols) and labels (count).
//
// Nothing in a header is trusted before it is checked against the file: a plain file must hold
// exactly header + declared bytes before anything is allocated; a gzip file is inflated
// incrementally and its buffer only grows as decompressed data actually arrives, capped at the
// declared size. A hostile header can therefore make barecnn print an error, never allocate
// gigabytes.
#include "barecnn/idx.h"

#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <system_error>

#include "barecnn/error.h"
#include "barecnn/fileutil.h"

namespace fs = std::filesystem;

namespace barecnn {

namespace {

constexpr uint32_t kImagesMagic = 0x00000803;  // unsigned bytes, 3 dimensions
constexpr uint32_t kLabelsMagic = 0x00000801;  // unsigned bytes, 1 dimension
// Largest data section barecnn reads (4 GiB): far beyond any image set that fits a GPU as uint8,
// and small enough that a corrupt header is reported instead of attempted.
constexpr unsigned long long kMaxDataBytes = 1ULL << 32;

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08X", v);
  return buf;
}

uint32_t be32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

void put_be32(std::vector<uint8_t>& out, uint32_t v) {
  out.push_back(uint8_t(v >> 24));
  out.push_back(uint8_t(v >> 16));
  out.push_back(uint8_t(v >> 8));
  out.push_back(uint8_t(v));
}

// The bytes of an IDX file, whatever its compression: read() hands out the decompressed stream.
// A gzip file is inflated from a small fixed input buffer, so memory never depends on what a
// header claims. Every gzip problem (corrupt data, a stream cut short, bytes after its end) is a
// UsageError naming the file. The bytes come from an open file or from memory (`name` stands for
// the file in messages); both go through the same input buffer, so both get the same checks.
class IdxStream {
 public:
  explicit IdxStream(const std::string& path) : path_(path) {
    std::error_code ec;
    if (fs::is_directory(path, ec)) throw UsageError(fmt(path, ": is a folder, not an IDX file"));
    f_.reset(std::fopen(path.c_str(), "rb"));
    if (!f_) throw UsageError(fmt(path, ": cannot open (", std::strerror(errno), ")"));
    struct stat st;
    if (::fstat(::fileno(f_.get()), &st) == 0) file_size_ = (unsigned long long)st.st_size;
    start();
  }
  IdxStream(const std::string& bytes, const std::string& name)
      : path_(name),
        mem_(reinterpret_cast<const uint8_t*>(bytes.data())),
        mem_left_(bytes.size()),
        file_size_(bytes.size()) {
    start();
  }
  ~IdxStream() {
    if (zs_open_) inflateEnd(&zs_);
  }
  IdxStream(const IdxStream&) = delete;
  IdxStream& operator=(const IdxStream&) = delete;

  bool gz() const { return gz_; }
  unsigned long long file_size() const { return file_size_; }

  // Reads up to n decompressed bytes; fewer only at the end of the data.
  size_t read(uint8_t* dst, size_t n) { return gz_ ? read_gz(dst, n) : read_plain(dst, n); }

 private:
  void start() {
    // gzip by content, not by name: a renamed file still reads.
    fill_input(2);
    gz_ = in_len_ >= 2 && in_[0] == 0x1f && in_[1] == 0x8b;
    if (gz_) {
      std::memset(&zs_, 0, sizeof(zs_));
      // 16 + MAX_WBITS: expect the gzip wrapper and verify its CRC-32 and length trailer.
      if (inflateInit2(&zs_, 16 + MAX_WBITS) != Z_OK) throw Error(fmt(path_, ": zlib inflateInit2 failed"));
      zs_open_ = true;
    }
  }

  // Up to n more bytes of the input (the file, or what is left of the memory); 0 at its end.
  size_t read_input(uint8_t* dst, size_t n) {
    if (f_) {
      size_t got = std::fread(dst, 1, n, f_.get());
      if (got == 0 && std::ferror(f_.get())) throw UsageError(fmt(path_, ": read error (", std::strerror(errno), ")"));
      return got;
    }
    size_t take = std::min(n, mem_left_);
    if (take) std::memcpy(dst, mem_, take);
    mem_ += take;
    mem_left_ -= take;
    return take;
  }

  // Makes at least `want` unread bytes available in in_ unless the file ends first.
  void fill_input(size_t want) {
    if (in_len_ - in_pos_ >= want || eof_) return;
    std::memmove(in_, in_ + in_pos_, in_len_ - in_pos_);
    in_len_ -= in_pos_;
    in_pos_ = 0;
    while (in_len_ < want && !eof_) {
      size_t got = read_input(in_ + in_len_, sizeof(in_) - in_len_);
      in_len_ += got;
      if (got == 0) eof_ = true;
    }
  }

  size_t read_plain(uint8_t* dst, size_t n) {
    size_t got = 0;
    while (got < n) {
      fill_input(1);
      size_t avail = in_len_ - in_pos_;
      if (avail == 0) break;
      size_t take = std::min(avail, n - got);
      std::memcpy(dst + got, in_ + in_pos_, take);
      in_pos_ += take;
      got += take;
    }
    return got;
  }

  size_t read_gz(uint8_t* dst, size_t n) {
    size_t got = 0;
    while (got < n && !finished_) {
      fill_input(1);
      zs_.next_in = in_ + in_pos_;
      zs_.avail_in = uInt(in_len_ - in_pos_);
      zs_.next_out = dst + got;
      zs_.avail_out = uInt(std::min<size_t>(n - got, UINT_MAX));
      uInt avail_in_before = zs_.avail_in, avail_out_before = zs_.avail_out;
      int rc = inflate(&zs_, Z_NO_FLUSH);
      in_pos_ += avail_in_before - zs_.avail_in;
      consumed_ += avail_in_before - zs_.avail_in;
      got += avail_out_before - zs_.avail_out;
      if (rc == Z_STREAM_END) {
        // Concatenated gzip members are one valid gzip file (cat a.gz b.gz); anything else after
        // the end of the stream is garbage, and a sign that the file is not what it claims.
        fill_input(2);
        size_t left = in_len_ - in_pos_;
        if (left == 0) {
          finished_ = true;
        } else if (left >= 2 && in_[in_pos_] == 0x1f && in_[in_pos_ + 1] == 0x8b) {
          inflateReset(&zs_);
        } else {
          unsigned long long trailing = file_size_ > consumed_ ? file_size_ - consumed_ : left;
          throw UsageError(fmt(path_, ": trailing garbage: ", trailing,
                               " bytes follow the end of the gzip stream (after ", consumed_,
                               " compressed bytes); the file is damaged or not a plain .gz"));
        }
      } else if (rc == Z_BUF_ERROR || (rc == Z_OK && in_pos_ == in_len_ && eof_ && avail_out_before == zs_.avail_out)) {
        // No progress possible: the compressed input ran out inside the stream.
        if (in_len_ - in_pos_ == 0 && eof_)
          throw UsageError(fmt(path_, ": truncated gzip stream: the compressed data ends after ", consumed_,
                               " bytes, before the end of the stream; the file was cut "
                               "short (an interrupted download or copy?)"));
      } else if (rc == Z_DATA_ERROR) {
        throw UsageError(fmt(path_, ": corrupt gzip stream (zlib: ", zs_.msg ? zs_.msg : "data error",
                             ") near compressed byte ", consumed_, "; the file is damaged"));
      } else if (rc == Z_MEM_ERROR) {
        throw Error(fmt(path_, ": out of memory while decompressing"));
      } else if (rc != Z_OK) {
        throw UsageError(fmt(path_, ": gzip error ", rc, " (", zs_.msg ? zs_.msg : "", ")"));
      }
    }
    return got;
  }

  std::string path_;
  std::unique_ptr<FILE, int (*)(FILE*)> f_{nullptr, &std::fclose};
  const uint8_t* mem_ = nullptr;  // in memory: the bytes not yet moved into in_
  size_t mem_left_ = 0;
  unsigned long long file_size_ = 0;
  uint8_t in_[1 << 16];
  size_t in_pos_ = 0, in_len_ = 0;
  bool eof_ = false;
  bool gz_ = false;
  z_stream zs_;
  bool zs_open_ = false;
  bool finished_ = false;
  unsigned long long consumed_ = 0;  // compressed bytes inflated so far
};

// What kind of IDX file a reader expects, for the messages.
struct IdxKind {
  uint32_t magic;
  int ndims;
  const char* what;  // "images", "labels"
  const char* unit;  // "pixel data", "label data"
};

// Reads and checks the magic and the dimensions. `s` is positioned at the data afterwards.
std::vector<uint32_t> read_header(IdxStream& s, const std::string& path, const IdxKind& k) {
  size_t header_bytes = 4 + 4 * size_t(k.ndims);
  uint8_t h[16];
  size_t got = s.read(h, header_bytes);
  if (got < 4)
    throw UsageError(fmt(path, ": truncated header: expected a ", header_bytes, "-byte IDX ", k.what, " header (magic ",
                         hex32(k.magic), " and ", k.ndims, " dimension", k.ndims > 1 ? "s" : "", "), found only ", got,
                         " bytes"));
  uint32_t magic = be32(h);
  if (magic != k.magic) {
    std::string found = hex32(magic);
    if (magic == kImagesMagic)
      found += " (an IDX images file)";
    else if (magic == kLabelsMagic)
      found += " (an IDX labels file)";
    else if ((magic >> 16) == 0 && ((magic >> 8) & 0xff) != 0x08)
      found +=
          fmt(" (element type ", hex32((magic >> 8) & 0xff).replace(2, 6, ""), "; barecnn reads unsigned bytes, 0x08)");
    else if ((magic >> 16) != 0)
      found += " (not an IDX file)";
    throw UsageError(fmt(path, ": not an IDX ", k.what, " file: expected magic ", hex32(k.magic), " (unsigned bytes, ",
                         k.ndims, " dimension", k.ndims > 1 ? "s" : "", "), found ", found));
  }
  if (got < header_bytes)
    throw UsageError(fmt(path, ": truncated header: expected a ", header_bytes, "-byte IDX ", k.what,
                         " header, found only ", got, " bytes"));
  std::vector<uint32_t> dims(k.ndims);
  for (int i = 0; i < k.ndims; ++i) dims[i] = be32(h + 4 + 4 * i);
  return dims;
}

// Reads exactly `declared` data bytes and checks that nothing follows them. `what` describes the
// declaration for messages ("60000 images of 28x28").
std::vector<uint8_t> read_data(IdxStream& s, const std::string& path, const IdxKind& k, unsigned long long declared,
                               const std::string& what, size_t header_bytes) {
  if (declared > kMaxDataBytes)
    throw UsageError(fmt(path, ": absurd size: header declares ", what, " (", declared, " bytes), more than the ",
                         kMaxDataBytes, "-byte limit; the file holds ", s.file_size(),
                         " bytes; the header is corrupt"));
  std::vector<uint8_t> data;
  if (!s.gz()) {
    // Plain: the file size says exactly what is there; check before allocating anything.
    unsigned long long have = s.file_size() - header_bytes;
    if (have < declared)
      throw UsageError(fmt(path, ": truncated data: header declares ", what, " (", declared,
                           " bytes) but the file holds ", have, " bytes of ", k.unit));
    if (have > declared)
      throw UsageError(fmt(path, ": extra data: header declares ", what, " (", declared, " bytes) but the file holds ",
                           have, " bytes of ", k.unit, ", ", have - declared, " more"));
    data.resize(size_t(declared));
    size_t got = s.read(data.data(), data.size());
    if (got != declared)  // the file shrank while we read it
      throw UsageError(fmt(path, ": truncated data: header declares ", what, " (", declared, " bytes) but only ", got,
                           " bytes could be read"));
    return data;
  }

  // gzip: the decompressed size is unknown until the stream ends, and a tiny file can claim
  // gigabytes. Grow the buffer only as data arrives (doubling), never past the declared size.
  size_t filled = 0;
  while (filled < declared) {
    if (filled == data.size()) {
      size_t next = std::max<size_t>(size_t(1) << 16, data.size() * 2);
      data.resize(size_t(std::min<unsigned long long>(next, declared)));
    }
    size_t got = s.read(data.data() + filled, data.size() - filled);
    if (got == 0) break;
    filled += got;
  }
  if (filled < declared)
    throw UsageError(fmt(path, ": truncated data: header declares ", what, " (", declared,
                         " bytes) but the file holds ", filled, " bytes of ", k.unit));
  // Anything left in the stream is extra data; count it with a small scratch buffer (this also
  // runs inflate to the end, which checks the gzip CRC).
  unsigned long long extra = 0;
  uint8_t scratch[1 << 14];
  for (size_t got; (got = s.read(scratch, sizeof(scratch))) > 0;) extra += got;
  if (extra > 0)
    throw UsageError(fmt(path, ": extra data: header declares ", what, " (", declared, " bytes) but the file holds ",
                         declared + extra, " bytes of ", k.unit, ", ", extra, " more"));
  return data;
}

std::vector<uint8_t> with_header(uint32_t magic, const std::vector<uint32_t>& dims, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> out;
  out.reserve(4 + 4 * dims.size() + data.size());
  put_be32(out, magic);
  for (uint32_t d : dims) put_be32(out, d);
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

std::vector<uint8_t> gzip_bytes(const std::vector<uint8_t>& raw, const std::string& path) {
  z_stream zs;
  std::memset(&zs, 0, sizeof(zs));
  // 16 + MAX_WBITS: gzip wrapper, so `zcat` and Python's gzip read the file too.
  if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    throw Error(fmt(path, ": zlib deflateInit2 failed"));
  std::vector<uint8_t> out(deflateBound(&zs, uLong(raw.size())));
  zs.next_in = const_cast<Bytef*>(raw.data());
  zs.avail_in = uInt(raw.size());
  zs.next_out = out.data();
  zs.avail_out = uInt(out.size());
  int rc = deflate(&zs, Z_FINISH);
  size_t n = out.size() - zs.avail_out;
  deflateEnd(&zs);
  if (rc != Z_STREAM_END) throw Error(fmt(path, ": zlib deflate failed (", rc, ")"));
  out.resize(n);
  return out;
}

void write_idx(const std::string& path, uint32_t magic, const std::vector<uint32_t>& dims,
               const std::vector<uint8_t>& data, bool gz) {
  std::vector<uint8_t> raw = with_header(magic, dims, data);
  if (gz) raw = gzip_bytes(raw, path);
  atomic_write_file(path, raw.data(), raw.size());
}

const char* kFileNames[4] = {"train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                             "t10k-labels-idx1-ubyte"};

bool is_default_dir(const std::string& dir) {
  std::string a = fs::path(dir).lexically_normal().string();
  while (a.size() > 1 && a.back() == '/') a.pop_back();
  return a == default_data_dir();
}

std::string data_dir_hint(const std::string& dir) {
  if (is_default_dir(dir)) return "; install it with: sudo apt-get install dataset-fashion-mnist (or pass --data DIR)";
  return "; pass --data DIR with the four IDX files (train-images-idx3-ubyte[.gz], "
         "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])";
}

IdxImages parse_images(IdxStream& s, const std::string& path) {
  const IdxKind kind{kImagesMagic, 3, "images", "pixel data"};
  std::vector<uint32_t> d = read_header(s, path, kind);
  uint32_t count = d[0], rows = d[1], cols = d[2];
  std::string what = fmt(count, " images of ", rows, "x", cols);
  if (count == 0 || rows == 0 || cols == 0)
    throw UsageError(fmt(path, ": header declares ", what, "; expected at least 1 image of at least 1x1"));
  // Each dimension is below 2^32, so the exact product fits in 128 bits. Past the limit (or past
  // what an int counts) the header is corrupt: say so before anything is allocated.
  unsigned __int128 exact = (unsigned __int128)count * rows * cols;
  if (exact > kMaxDataBytes || count > uint32_t(INT_MAX) || rows > uint32_t(INT_MAX) || cols > uint32_t(INT_MAX)) {
    std::string bytes = exact > (unsigned __int128)ULLONG_MAX ? std::string("more than 2^64")
                                                              : std::to_string((unsigned long long)exact);
    std::string limit = exact > kMaxDataBytes ? fmt("more than the ", kMaxDataBytes, "-byte limit")
                                              : fmt("a dimension above ", INT_MAX);
    throw UsageError(fmt(path, ": absurd size: header declares ", what, " (", bytes, " bytes), ", limit,
                         "; the file holds ", s.file_size(), " bytes; the header is corrupt"));
  }
  unsigned long long declared = (unsigned long long)exact;
  IdxImages img;
  img.pixels = read_data(s, path, kind, declared, what, 16);
  img.count = int(count);
  img.rows = int(rows);
  img.cols = int(cols);
  return img;
}

std::vector<uint8_t> parse_labels(IdxStream& s, const std::string& path) {
  const IdxKind kind{kLabelsMagic, 1, "labels", "label data"};
  std::vector<uint32_t> d = read_header(s, path, kind);
  uint32_t count = d[0];
  if (count == 0) throw UsageError(fmt(path, ": header declares 0 labels; expected at least 1"));
  if (count > uint32_t(INT_MAX))
    throw UsageError(fmt(path, ": absurd size: header declares ", count, " labels (", count, " bytes), a count above ",
                         INT_MAX, "; the file holds ", s.file_size(), " bytes; the header is corrupt"));
  return read_data(s, path, kind, count, fmt(count, " labels"), 8);
}

}  // namespace

IdxImages read_idx_images(const std::string& path) {
  IdxStream s(path);
  return parse_images(s, path);
}

std::vector<uint8_t> read_idx_labels(const std::string& path) {
  IdxStream s(path);
  return parse_labels(s, path);
}

IdxImages parse_idx_images(const std::string& bytes, const std::string& name) {
  IdxStream s(bytes, name);
  return parse_images(s, name);
}

std::vector<uint8_t> parse_idx_labels(const std::string& bytes, const std::string& name) {
  IdxStream s(bytes, name);
  return parse_labels(s, name);
}

void write_idx_images(const std::string& path, const IdxImages& img, bool gz) {
  BARECNN_ASSERT(
      img.count >= 0 && img.rows >= 0 && img.cols >= 0 && img.pixels.size() == size_t(img.count) * img.rows * img.cols,
      "write_idx_images ", path, ": ", img.pixels.size(), " pixels for ", img.count, " images of ", img.rows, "x",
      img.cols);
  write_idx(path, kImagesMagic, {uint32_t(img.count), uint32_t(img.rows), uint32_t(img.cols)}, img.pixels, gz);
}

void write_idx_labels(const std::string& path, const std::vector<uint8_t>& labels, bool gz) {
  write_idx(path, kLabelsMagic, {uint32_t(labels.size())}, labels, gz);
}

const char* default_data_dir() { return "/usr/share/datasets/fashion-mnist"; }

namespace {

// The path of file i of the folder: the plain file wins when both exist (it reads faster and is
// what the user unpacked).
std::string data_file(const std::string& dir, int i) {
  std::string plain = path_join(dir, kFileNames[i]);
  if (file_exists(plain)) return plain;
  if (file_exists(plain + ".gz")) return plain + ".gz";
  throw UsageError(fmt("data folder ", dir, ": missing ", kFileNames[i], "[.gz]", data_dir_hint(dir)));
}

void check_folder(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) throw UsageError(fmt("data folder ", dir, " does not exist", data_dir_hint(dir)));
  if (!fs::is_directory(dir, ec)) throw UsageError(fmt("data folder ", dir, " is not a folder", data_dir_hint(dir)));
}

void check_count(const IdxImages& img, const std::vector<uint8_t>& labels, const std::string& ipath,
                 const std::string& lpath) {
  if (size_t(img.count) != labels.size())
    throw UsageError(fmt(lpath, " holds ", labels.size(), " labels but ", ipath, " holds ", img.count,
                         " images; expected one label per image"));
}

int max_label_plus_one(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  int max_label = 0;
  for (uint8_t l : a) max_label = std::max<int>(max_label, l);
  for (uint8_t l : b) max_label = std::max<int>(max_label, l);
  return max_label + 1;
}

// FNV-1a, 64 bits, continued over `n` bytes.
uint64_t fnv1a(uint64_t h, const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

}  // namespace

std::string dataset_fingerprint(const IdxImages& images, const std::vector<uint8_t>& labels) {
  uint64_t h = 0xcbf29ce484222325ull;
  const uint32_t sizes[4] = {uint32_t(images.count), uint32_t(images.rows), uint32_t(images.cols),
                             uint32_t(labels.size())};
  for (uint32_t v : sizes) {
    const uint8_t b[4] = {uint8_t(v >> 24), uint8_t(v >> 16), uint8_t(v >> 8), uint8_t(v)};
    h = fnv1a(h, b, 4);
  }
  h = fnv1a(h, images.pixels.data(), images.pixels.size());
  h = fnv1a(h, labels.data(), labels.size());
  char s[20];
  std::snprintf(s, sizeof s, "%016llx", (unsigned long long)h);
  return s;
}

Dataset load_dataset(const std::string& dir, long long limit) {
  check_folder(dir);
  std::string paths[4];
  for (int i = 0; i < 4; ++i) paths[i] = data_file(dir, i);

  Dataset d;
  d.dir = dir;
  d.train_images_path = paths[0];
  d.train_labels_path = paths[1];
  d.test_images_path = paths[2];
  d.test_labels_path = paths[3];
  d.train = read_idx_images(paths[0]);
  d.train_labels = read_idx_labels(paths[1]);
  d.test = read_idx_images(paths[2]);
  d.test_labels = read_idx_labels(paths[3]);

  check_count(d.train, d.train_labels, d.train_images_path, d.train_labels_path);
  check_count(d.test, d.test_labels, d.test_images_path, d.test_labels_path);
  if (d.train.rows != d.test.rows || d.train.cols != d.test.cols)
    throw UsageError(fmt(d.test_images_path, " holds images of ", d.test.rows, "x", d.test.cols, " but ",
                         d.train_images_path, " holds images of ", d.train.rows, "x", d.train.cols,
                         "; training and test images must have the same size"));

  // Classes and fingerprints over the whole data, before --limit, so a quick run builds the same
  // model and names the same data.
  d.classes = max_label_plus_one(d.train_labels, d.test_labels);
  d.train_fingerprint = dataset_fingerprint(d.train, d.train_labels);
  d.test_fingerprint = dataset_fingerprint(d.test, d.test_labels);

  if (limit > 0 && limit < d.train.count) {
    d.train.count = int(limit);
    d.train.pixels.resize(size_t(limit) * d.train.rows * d.train.cols);
    d.train.pixels.shrink_to_fit();
    d.train_labels.resize(size_t(limit));
  }
  return d;
}

Dataset load_test_set(const std::string& dir) {
  check_folder(dir);
  Dataset d;
  d.dir = dir;
  d.test_images_path = data_file(dir, 2);
  d.test_labels_path = data_file(dir, 3);
  d.test = read_idx_images(d.test_images_path);
  d.test_labels = read_idx_labels(d.test_labels_path);
  check_count(d.test, d.test_labels, d.test_images_path, d.test_labels_path);
  d.classes = max_label_plus_one({}, d.test_labels);
  d.test_fingerprint = dataset_fingerprint(d.test, d.test_labels);
  return d;
}

const KnownData* known_data(const std::string& train_fingerprint, const std::string& test_fingerprint) {
  // Fashion-MNIST as Debian's dataset-fashion-mnist ships it (and as its authors publish it).
  static const KnownData table[] = {
      {"Fashion-MNIST",
       "a2a6655e300c12be",
       "a491d992499f5f7f",
       {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"}},
  };
  for (const KnownData& k : table)
    if ((train_fingerprint.empty() || train_fingerprint == k.train_fingerprint) &&
        test_fingerprint == k.test_fingerprint)
      return &k;
  return nullptr;
}

bool first_label_at_least(const Dataset& d, int classes, std::string* file, size_t* index, int* label) {
  for (const auto& [labels, path] :
       {std::pair{&d.train_labels, &d.train_labels_path}, std::pair{&d.test_labels, &d.test_labels_path}})
    for (size_t i = 0; i < labels->size(); ++i)
      if (int((*labels)[i]) >= classes) {
        *file = *path, *index = i, *label = (*labels)[i];
        return true;
      }
  return false;
}

void check_labels(const Dataset& d, int classes) {
  std::string file;
  size_t i = 0;
  int label = 0;
  if (first_label_at_least(d, classes, &file, &i, &label))
    throw UsageError(fmt(file, ": label ", label, " at index ", i, " is outside the ", classes,
                         " classes of the model (labels 0..", classes - 1, ")"));
}

double image_mean(const IdxImages& im) {
  double s = 0;
  for (uint8_t p : im.pixels) s += p;
  return s / 255.0 / double(im.pixels.size());
}

double image_std(const IdxImages& im, double mean) {
  double s = 0;
  for (uint8_t p : im.pixels) {
    double d = p / 255.0 - mean;
    s += d * d;
  }
  return std::sqrt(s / double(im.pixels.size()));
}

}  // namespace barecnn
