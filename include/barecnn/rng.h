// Deterministic randomness: a counter-based hash (splitmix64), so the same seed gives the same
// numbers on the CPU and the GPU, in any order they are drawn.
#pragma once

#include <cstdint>
#include <vector>

#include "barecnn/shape.h"  // BARECNN_HD

namespace barecnn {

BARECNN_HD uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Sort key of sample i in epoch `epoch`: the permutation sorts samples by (key, i).
BARECNN_HD uint64_t permutation_key(uint64_t seed, long long epoch, int i) {
  return mix64(mix64(seed ^ 0x5EEDF00DULL) + mix64(static_cast<uint64_t>(epoch)) * 0x100000001B3ULL +
               static_cast<uint64_t>(i));
}

// The random draws of a training step (dropout masks, augmentation), keyed by (seed, step, stream,
// i): `step` is the optimizer step (1-based, StepCounters::global_step after begin_step), `stream`
// separates the users (kDrawAugment, or a dropout layer's index), `i` numbers the draws of one
// user in one step. No state: any device draws any value in any order, a resumed run draws what
// the uninterrupted run drew, and a gradient check fixes a mask by fixing the step.
constexpr uint64_t kDrawAugment = 0xA06D3E17ULL;  // the stream of the gather's augmentation
BARECNN_HD uint64_t step_draw(uint64_t seed, long long step, uint64_t stream, uint64_t i) {
  return mix64(mix64(seed ^ 0xD12A4BULL) + mix64(static_cast<uint64_t>(step)) * 0x100000001B3ULL +
               mix64(stream + 0x5157ULL) * 0x9E3779B1ULL + i);
}
// Dropout with rate p keeps an element when the top 24 bits of its draw are >= this threshold,
// round(p * 2^24): integer compares, so every device keeps the same elements.
inline uint32_t dropout_threshold(double p) { return uint32_t(p * 16777216.0 + 0.5); }
BARECNN_HD bool dropout_keep(uint64_t draw, uint32_t threshold) { return uint32_t(draw >> 40) >= threshold; }

// A small sequential generator for host-side draws (weight init, test data).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next_u64() { return mix64(state_++); }
  // uniform in [0, 1)
  double uniform() { return (next_u64() >> 11) * (1.0 / 9007199254740992.0); }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  double normal();  // Box-Muller
  uint64_t state() const { return state_; }
  void set_state(uint64_t s) { state_ = s; }

 private:
  uint64_t state_;
};

namespace ref {
// The epoch's order of samples 0..n-1 (identical to gpu::epoch_permutation).
std::vector<int32_t> epoch_permutation(int n, uint64_t seed, long long epoch);
}  // namespace ref

}  // namespace barecnn
