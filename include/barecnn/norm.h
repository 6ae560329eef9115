// Batch normalization and dropout: the constants and the index math shared by the CPU reference
// (host/reference/norm.cpp) and the CUDA kernels (kernels/norm.cu). Formulas: docs/MATH.md,
// "Batch normalization" and "Dropout".
#pragma once

#include <cstdint>

#include "barecnn/rng.h"
#include "barecnn/shape.h"  // BARECNN_HD

namespace barecnn {

// PyTorch's defaults for nn.BatchNorm1d/2d: running = (1 - momentum) * running + momentum * batch.
constexpr double kBatchNormEps = 1e-5;
constexpr double kBatchNormMomentum = 0.1;

// A batch-norm input (N, C, S): C channels of S values per sample (S = H*W after an image, 1 after
// a vector). Element e (0 <= e < N*S) of channel c's M = N*S values, sample-major, sits at this offset.
BARECNN_HD long long batchnorm_offset(long long e, int c, int C, int S) {
  const long long n = e / S, s = e - n * S;
  return (n * C + c) * S + s;
}

// The layer's buffers, in this order in its slice of the net's buffer values: running_mean (C),
// running_var (C), num_batches_tracked (1, a count kept in a float: exact up to 2^24 steps).
BARECNN_HD long long batchnorm_buffer_count(int C) { return 2LL * C + 1; }

// Inverted dropout's factor for the kept elements, 1 / (1 - p), rounded once to float.
inline float dropout_scale(float p) { return float(1.0 / (1.0 - double(p))); }

// Element i of a dropout layer's (N, F) input in the step keyed (seed, step): kept or zeroed.
// `stream` is the layer's index in the net; `threshold` is dropout_threshold(p) (rng.h).
BARECNN_HD bool dropout_keeps(uint64_t seed, long long step, int layer, long long i, uint32_t threshold) {
  return dropout_keep(step_draw(seed, step, uint64_t(layer), uint64_t(i)), threshold);
}

}  // namespace barecnn
