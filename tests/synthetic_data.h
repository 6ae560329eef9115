// A small, learnable image-classification task written as the four IDX files, for training,
// resume and command-line tests: 3 classes (a horizontal bar, a vertical bar, a diagonal) at
// random positions on 8x8 images with noise.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

#include "barecnn/idx.h"
#include "barecnn/rng.h"
#include "test_util.h"

namespace barecnn::test {

inline void make_bars(IdxImages* im, std::vector<uint8_t>* labels, int count, uint64_t seed) {
  const int S = 8;
  Rng r(seed);
  im->count = count, im->rows = S, im->cols = S;
  im->pixels.assign(size_t(count) * S * S, 0);
  labels->resize(count);
  for (int i = 0; i < count; ++i) {
    int cls = int(r.next_u64() % 3), p = 1 + int(r.next_u64() % (S - 2));
    uint8_t* img = im->pixels.data() + size_t(i) * S * S;
    for (int t = 0; t < S * S; ++t) img[t] = uint8_t(r.uniform(0, 60));
    for (int k = 0; k < S; ++k) {
      int y = cls == 0 ? p : k, x = cls == 1 ? p : k;
      img[y * S + x] = uint8_t(200 + r.uniform(0, 55));
    }
    (*labels)[i] = uint8_t(cls);
  }
}

// Writes train (n_train) and t10k (n_test) files into `dir`; gz for the image files. Another
// `seed` draws other images of the same task.
inline void write_bars_dataset(const std::string& dir, int n_train = 600, int n_test = 150, uint64_t seed = 1) {
  std::filesystem::create_directories(dir);
  IdxImages tr, te;
  std::vector<uint8_t> ltr, lte;
  make_bars(&tr, &ltr, n_train, seed);
  make_bars(&te, &lte, n_test, seed + 1);
  write_idx_images(dir + "/train-images-idx3-ubyte.gz", tr, true);
  write_idx_labels(dir + "/train-labels-idx1-ubyte", ltr, false);
  write_idx_images(dir + "/t10k-images-idx3-ubyte.gz", te, true);
  write_idx_labels(dir + "/t10k-labels-idx1-ubyte.gz", lte, true);
}

}  // namespace barecnn::test
