// The roofline a kernel is held to: the card's measured peaks (kernels/peak.cu). `barecnn bench`
// divides a layer's FLOPs and fewest bytes (Layer::cost, layer.h) by its time and reports the
// result as a fraction of these peaks.
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

}  // namespace barecnn
