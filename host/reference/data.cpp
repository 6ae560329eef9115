// CPU reference of the batch gather + input normalization: the first op of every training step.
// The dataset stays as uint8 pixels; each batch picks its rows through the epoch's shuffled
// indices and normalizes them on the way: x = (pixel / 255 - mean) / std. The training step may
// also augment each sample (a random crop after zero padding, a random flip: augment.h) on the way.
// Formula: docs/MATH.md.
#include "barecnn/augment.h"
#include "barecnn/error.h"
#include "barecnn/ref_ops.h"
#include "barecnn/rng.h"

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

// The same with sample b transformed by augment_draw(step_draw(seed, step, kDrawAugment, b), aug):
// output pixel (y, x) is source pixel augment_source(y, x, ...), or a raw 0 in the padding, which
// goes through the same map as a black pixel. out (B, H*W); images (num_images, H, W).
template <typename T>
void gather_normalize_augment(T* out, int32_t* out_labels, const uint8_t* images, const uint8_t* labels,
                              const int32_t* idx, int B, int H, int W, float mean, float std, const Augment& aug,
                              uint64_t seed, long long step) {
  BARECNN_ASSERT(B >= 0 && H >= 1 && W >= 1, "gather_normalize_augment: B = ", B, ", H = ", H, ", W = ", W);
  BARECNN_ASSERT(std != 0.f, "gather_normalize_augment: std must be nonzero");
  BARECNN_ASSERT(out_labels == nullptr || labels != nullptr, "gather_normalize_augment: labels wanted but none given");
  BARECNN_ASSERT(aug.pad >= 0, "gather_normalize_augment: pad = ", aug.pad);
  const int P = H * W;
  const T mu = T(mean), sigma = T(std);
  for (int b = 0; b < B; ++b) {
    BARECNN_ASSERT(idx[b] >= 0, "gather_normalize_augment: idx[", b, "] = ", idx[b]);
    const uint8_t* img = images + static_cast<long long>(idx[b]) * P;  // (H, W)
    T* x = out + static_cast<long long>(b) * P;                        // (H, W)
    const AugmentDraw d = augment_draw(step_draw(seed, step, kDrawAugment, uint64_t(b)), aug);
    for (int r = 0; r < H; ++r)
      for (int c = 0; c < W; ++c) {
        const int src = augment_source(r, c, H, W, d);
        const uint8_t px = src < 0 ? uint8_t(0) : img[src];
        x[r * W + c] = (T(px) / T(255) - mu) / sigma;
      }
    if (out_labels) out_labels[b] = labels[idx[b]];
  }
}

template void gather_normalize<float>(float*, int32_t*, const uint8_t*, const uint8_t*, const int32_t*, int, int, float,
                                      float);
template void gather_normalize<double>(double*, int32_t*, const uint8_t*, const uint8_t*, const int32_t*, int, int,
                                       float, float);

template void gather_normalize_augment<float>(float*, int32_t*, const uint8_t*, const uint8_t*, const int32_t*, int,
                                              int, int, float, float, const Augment&, uint64_t, long long);
template void gather_normalize_augment<double>(double*, int32_t*, const uint8_t*, const uint8_t*, const int32_t*, int,
                                               int, int, float, float, const Augment&, uint64_t, long long);

}  // namespace barecnn::ref
