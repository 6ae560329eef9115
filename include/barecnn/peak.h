// The roofline a kernel is held to: the card's measured peaks (kernels/peak.cu) and the fewest
// bytes each kind of layer must move (below). `barecnn bench` divides a layer's FLOPs and bytes
// by its time and reports the result as a fraction of these peaks.
#pragma once

namespace barecnn {

namespace gpu {

// FP32 arithmetic peak of the current GPU in FLOP/s, measured: fused multiply-adds (2 FLOPs each)
// on the CUDA cores, no tensor cores (barecnn's kernels use none). Every SM is filled with
// threads running 8 independent FMA chains each; best of 5 timed runs after a warm-up. Compare
// with the data sheet's SMs x 128 FP32 lanes x 2 x boost clock (67 TFLOP/s on an H100 SXM).
// Measured on the first call (tens of ms), then cached for the process.
double measure_peak_fp32_flops();

// DRAM (HBM) bandwidth of the current GPU in bytes/s, measured: a float4 device-to-device copy
// between two buffers of 512 MiB each (less when the card has less free), far larger than L2;
// every byte read and every byte written counts. Best of 5 timed runs after a warm-up.
// Measured on the first call, then cached for the process.
double measure_peak_bandwidth();

}  // namespace gpu

// ---- the fewest bytes a layer must move ----------------------------------------------------------
//
// Bytes between DRAM and the chip in one forward and one backward call of a layer over a batch,
// float32 tensors (int32 for the max-pool mask): each tensor the math needs is read once and each
// result is written once, as though the chip held everything in between. This is a lower bound:
// a kernel that reads dout twice (once for each gradient) or re-reads its input tile moves more.
// So bytes / time is a lower bound of the bandwidth a kernel really draws; a layer far below the
// measured peak on both FLOP/s and bytes/s is limited by something else (launch latency, too few
// blocks, poor access patterns).
//
// Arguments are element counts of the whole batch. `need_din`: the input gradient is computed
// (every layer but the first; nothing needs the gradient of the image).
struct LayerBytes {
  double forward = 0;
  double backward = 0;
};

// Convolution and dense layers: input x, output y, weight W, bias b.
//   forward : read x, W, b; write y.
//   backward: read dy and x (for dW); write dW and db; with need_din also read W and write dx.
inline LayerBytes weighted_layer_min_bytes(double in, double out, double weight, double bias, bool need_din) {
  const double f = 4;  // sizeof(float)
  LayerBytes b;
  b.forward = f * (in + weight + bias + out);
  b.backward = f * (out + in + weight + bias);
  if (need_din) b.backward += f * (weight + in);
  return b;
}

// Max pooling keeps an int32 argmax mask of the output's size: forward reads x, writes y and the
// mask; backward reads dy and the mask and writes dx (the mask names the winner; x is not needed).
inline LayerBytes maxpool_min_bytes(double in, double out, bool need_din) {
  LayerBytes b;
  b.forward = 4 * (in + out + out);
  b.backward = need_din ? 4 * (out + out + in) : 0;
  return b;
}

// Average pooling: forward reads x and writes y; backward reads dy and writes dx.
inline LayerBytes avgpool_min_bytes(double in, double out, bool need_din) {
  LayerBytes b;
  b.forward = 4 * (in + out);
  b.backward = need_din ? 4 * (out + in) : 0;
  return b;
}

// L2 pooling: as average pooling, but the backward also reads x and y (dx = dy * x / y).
inline LayerBytes l2pool_min_bytes(double in, double out, bool need_din) {
  LayerBytes b;
  b.forward = 4 * (in + out);
  b.backward = need_din ? 4 * (out + in + out + in) : 0;
  return b;
}

// Elementwise activations and softmax over n elements: forward reads x and writes y; backward
// reads dy and one saved tensor (each activation's derivative follows from x alone or from y
// alone: ReLU's from x, sigmoid's and softmax's from y) and writes dx.
inline LayerBytes elementwise_min_bytes(double n, bool need_din) {
  LayerBytes b;
  b.forward = 4 * (n + n);
  b.backward = need_din ? 4 * (n + n + n) : 0;
  return b;
}

// A copy (flatten): reads n and writes n each way.
inline LayerBytes copy_min_bytes(double n, bool need_din) {
  LayerBytes b;
  b.forward = 4 * (n + n);
  b.backward = need_din ? 4 * (n + n) : 0;
  return b;
}

}  // namespace barecnn
