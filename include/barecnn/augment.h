// Data augmentation in the training step's gather (train --augment): a random crop after zero
// padding and a random horizontal flip, drawn per sample from the step's counter-based draws
// (rng.h step_draw, stream kDrawAugment). Shared by the CUDA kernel (kernels/data.cu) and the CPU
// reference (host/reference/data.cpp): everything marked BARECNN_HD is the same code on both, so
// both devices pick the same source pixel for every output pixel. Formula: docs/MATH.md.
#pragma once

#include <cstdint>

#include "barecnn/shape.h"  // BARECNN_HD

namespace barecnn {

// torchvision's RandomCrop(H, padding=pad) then RandomHorizontalFlip() on the raw image.
// pad = 0 and flip = false: off (the gather is the plain one, bit for bit).
struct Augment {
  int pad = 0;        // zero padding on each side, in pixels: shifts in [-pad, pad]
  bool flip = false;  // mirror left-right with probability 1/2
  BARECNN_HD bool on() const { return pad > 0 || flip; }
};

// One sample's transform: the crop's offset from the centred crop and the flip.
struct AugmentDraw {
  int dy = 0, dx = 0;  // in [-pad, pad]
  bool flip = false;
};

// A 31-bit field r scaled to [0, n): floor(r * n / 2^31) (the multiply-shift of Lemire, without
// the rejection step). Each value comes up floor(2^31 / n) or that plus 1 times out of 2^31: a
// relative bias below n / 2^31 (< 1.4e-8 for n <= 29), far below anything a training run sees.
BARECNN_HD int augment_scale31(uint64_t r, int n) { return int((r * uint64_t(n)) >> 31); }

// The draw u = step_draw(seed, step, kDrawAugment, b) of sample b read as its transform, from
// disjoint bits: dy from bits 0..30, dx from bits 31..61, the flip from bit 63 (bit 62 unused).
// A setting that is off leaves its part at the identity; the bits of the others do not move.
BARECNN_HD AugmentDraw augment_draw(uint64_t u, const Augment& a) {
  AugmentDraw d;
  if (a.pad > 0) {
    const int n = 2 * a.pad + 1;
    d.dy = augment_scale31(u & 0x7FFFFFFFULL, n) - a.pad;
    d.dx = augment_scale31((u >> 31) & 0x7FFFFFFFULL, n) - a.pad;
  }
  d.flip = a.flip && (u >> 63) != 0;
  return d;
}

// The source of output pixel (y, x) of an H x W image under transform d: the pixel's index
// y' * W + x' in the source image, or -1 where the crop reaches into the padding (a raw 0).
// torchvision's order: the crop (top-left corner pad + dy, pad + dx of the padded image) gives
// c(y, x) = img(y + dy, x + dx); the flip then mirrors the crop, out(y, x) = c(y, W - 1 - x).
BARECNN_HD int augment_source(int y, int x, int H, int W, const AugmentDraw& d) {
  const int sy = y + d.dy;
  const int sx = (d.flip ? W - 1 - x : x) + d.dx;
  if (sy < 0 || sy >= H || sx < 0 || sx >= W) return -1;
  return sy * W + sx;
}

}  // namespace barecnn
