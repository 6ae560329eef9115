// The roofline a kernel is held to: the machine's measured peaks, the card's (kernels/peak.cu) or
// the CPU's (host/cpu/peak.cpp). `barecnn bench` divides a layer's FLOPs and fewest bytes
// (Layer::cost, layer.h) by its time and reports the result as a fraction of these peaks.
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

namespace cpu {

// The widest vector ISA of this CPU, chosen at run time from its feature bits (the binary is built
// for baseline x86-64): "avx512f" (16 floats, FMA), "avx2+fma" (8 floats, FMA) or "sse2"
// (4 floats, a multiply and an add instead of an FMA). measure_peak_fp32_flops runs on it. (The
// GEMMs of sgemm.h have their own ISA switch, cpu_isa() in cpu_ops.h.)
const char* peak_isa();

// FP32 arithmetic peak of `threads` OpenMP threads in FLOP/s, measured: each thread runs 12
// independent FMA chains in vector registers of peak_isa() (2 FLOPs per lane per FMA; with sse2 a
// multiply and an add count as 2), enough to cover the FMA latency on every core type; best of
// 10 timed runs after a warm-up. Measured on the first call per thread count, then cached.
double measure_peak_fp32_flops(int threads);

// Memory bandwidth of `threads` OpenMP threads in bytes/s, measured: each thread copies its slice
// between two buffers (memcpy) of 4x the last-level cache each, at least 128 MiB (at most an
// eighth of the free memory each); every byte read and every byte written counts. Best of 10
// timed runs after a warm-up. Measured on the first call per thread count, then cached. This is
// the DRAM's rate: a layer whose tensors stay in the caches (the ReLU after `paper`'s conv at
// batch 64: 6 MiB in, 6 MiB out) can be reported above 100% of it.
double measure_peak_bandwidth(int threads);

}  // namespace cpu

}  // namespace barecnn
