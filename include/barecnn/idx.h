// IDX files (the MNIST format), plain or gzip-compressed, validated before anything trusts them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace barecnn {

struct IdxImages {
  int count = 0, rows = 0, cols = 0;
  std::vector<uint8_t> pixels;  // (count, rows, cols) row-major
};

// Read one file (".gz" by content: gzip magic 1f 8b, else plain). Throws UsageError naming the
// file, what was expected and what was found: wrong magic, truncated header or data, declared
// sizes beyond what the file holds (nothing larger than the file is ever allocated), corrupt gzip.
IdxImages read_idx_images(const std::string& path);
std::vector<uint8_t> read_idx_labels(const std::string& path);
// The same readers on the bytes of a file already in memory (the fuzzers use them); `name` stands
// for the file in messages. The file readers above run exactly these checks.
IdxImages parse_idx_images(const std::string& bytes, const std::string& name);
std::vector<uint8_t> parse_idx_labels(const std::string& bytes, const std::string& name);

// Writers (tests and tools); `gz` compresses with zlib.
void write_idx_images(const std::string& path, const IdxImages& img, bool gz);
void write_idx_labels(const std::string& path, const std::vector<uint8_t>& labels, bool gz);

// The four standard files of a folder: train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz],
// t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz].
struct Dataset {
  std::string dir;
  IdxImages train, test;
  std::vector<uint8_t> train_labels, test_labels;
  int classes = 0;  // max label + 1 over both sets
  std::string train_images_path, train_labels_path, test_images_path, test_labels_path;
  // dataset_fingerprint of the training files (before --limit) and of the test files.
  std::string train_fingerprint, test_fingerprint;
};

// Default folder: Fashion-MNIST from the Debian package dataset-fashion-mnist.
const char* default_data_dir();
// Loads and validates: counts of images vs labels, equal image sizes in train and test, at
// least one image in each. `limit` > 0 keeps the first `limit` training images. A missing
// folder or file is a UsageError that names it (and, for the default folder, the command that
// installs it).
Dataset load_dataset(const std::string& dir, long long limit = 0);
// Only the two t10k files (eval needs no more); `train` stays empty, `classes` is over the test labels.
Dataset load_test_set(const std::string& dir);
// The first label >= classes, training labels first: its file, index and value; false if none.
bool first_label_at_least(const Dataset& d, int classes, std::string* file, size_t* index, int* label);
// Throws UsageError naming the labels file if any label is >= classes.
void check_labels(const Dataset& d, int classes);

// 16 hex digits that name a set of images and labels: FNV-1a (64-bit) over the count, the image
// size, the pixels and the labels. The same for the same data whatever its folder or compression.
std::string dataset_fingerprint(const IdxImages& images, const std::vector<uint8_t>& labels);

// A data set barecnn recognises by its fingerprints, with its class names.
struct KnownData {
  const char* name;
  const char* train_fingerprint;
  const char* test_fingerprint;
  std::vector<std::string> class_names;
};
// The known data set with these fingerprints (an empty train fingerprint: the test files alone
// decide), or nullptr.
const KnownData* known_data(const std::string& train_fingerprint, const std::string& test_fingerprint);

// Mean and standard deviation of the pixels scaled to [0, 1] (the input normalization).
double image_mean(const IdxImages& im);
double image_std(const IdxImages& im, double mean);

}  // namespace barecnn
