#include "barecnn/rng.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace barecnn {

double Rng::normal() {
  // Box-Muller; u1 in (0, 1] so the log is finite.
  double u1 = 1.0 - uniform(), u2 = uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

namespace ref {
std::vector<int32_t> epoch_permutation(int n, uint64_t seed, long long epoch) {
  std::vector<uint64_t> key(n);
  for (int i = 0; i < n; ++i) key[i] = permutation_key(seed, epoch, i);
  std::vector<int32_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  // (key, index) order: the same as a stable sort by key on the GPU
  std::sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return key[a] != key[b] ? key[a] < key[b] : a < b; });
  return idx;
}
}  // namespace ref

}  // namespace barecnn
