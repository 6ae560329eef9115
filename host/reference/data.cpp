// CPU reference of the batch gather + input normalization: the first op of every training step.
// The dataset stays as uint8 pixels; each batch picks its rows through the epoch's shuffled
// indices and normalizes them on the way: x = (pixel / 255 - mean) / std. Formula: docs/MATH.md.
#include "barecnn/error.h"
#include "barecnn/ref_ops.h"

namespace barecnn::ref {

// out (B, P), out_labels (B) or null; images (num_images, P) uint8, labels (num_images) uint8
// (may be null when out_labels is), idx (B) row numbers into images.
template <typename T>
void gather_normalize(T* out, int32_t* out_labels, const uint8_t* images, const uint8_t* labels, const int32_t* idx,
                      int B, int P, float mean, float std) {
  BARECNN_ASSERT(B >= 0 && P >= 0, "gather_normalize: B = ", B, ", P = ", P);
  BARECNN_ASSERT(std != 0.f, "gather_normalize: std must be nonzero");
  BARECNN_ASSERT(out_labels == nullptr || labels != nullptr, "gather_normalize: labels wanted but none given");
  const T mu = T(mean), sigma = T(std);
  for (int b = 0; b < B; ++b) {
    BARECNN_ASSERT(idx[b] >= 0, "gather_normalize: idx[", b, "] = ", idx[b]);
    const uint8_t* img = images + static_cast<long long>(idx[b]) * P;  // (P)
    T* x = out + static_cast<long long>(b) * P;                        // (P)
    for (int p = 0; p < P; ++p) x[p] = (T(img[p]) / T(255) - mu) / sigma;
    if (out_labels) out_labels[b] = labels[idx[b]];
  }
}

template void gather_normalize<float>(float*, int32_t*, const uint8_t*, const uint8_t*, const int32_t*, int, int, float,
                                      float);
template void gather_normalize<double>(double*, int32_t*, const uint8_t*, const uint8_t*, const int32_t*, int, int,
                                       float, float);

}  // namespace barecnn::ref
