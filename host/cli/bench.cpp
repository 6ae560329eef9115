// `barecnn bench`: per-layer forward and backward times (like `caffe time`), the time of a whole
// training step, images/s, the FLOP rate of each layer, and peak device memory.
#include <chrono>
#include <cstdio>

#include "barecnn/error.h"
#include "barecnn/gradcheck.h"
#include "barecnn/net.h"
#include "barecnn/ops.h"
#include "barecnn/trainer.h"

namespace barecnn {

namespace {

// Multiply-adds x2 of one layer's forward for a batch of N (0 for layers without arithmetic
// worth counting); backward of conv/dense costs twice the forward (input and weight gradients).
double layer_forward_flops(const Layer& l, int N) {
  auto specs = l.param_specs();
  if (specs.empty()) return double(N) * double(dims_numel(l.out_dims()));  // ~1 op per output
  const Dims& w = specs[0].dims;
  const Dims& o = l.out_dims();
  if (w.size() == 4) return 2.0 * N * o[0] * o[1] * o[2] * w[1] * w[2] * w[3];
  return 2.0 * N * w[0] * w[1];
}

class Timer {
 public:
  Timer(Device d, const GpuContext* g) : dev_(d), gpu_(g) {
    if (dev_ == Device::CUDA) {
      CUDA_CHECK(cudaEventCreate(&a_));
      CUDA_CHECK(cudaEventCreate(&b_));
    }
  }
  ~Timer() {
    if (a_) cudaEventDestroy(a_);
    if (b_) cudaEventDestroy(b_);
  }
  void start() {
    if (dev_ == Device::CUDA) CUDA_CHECK(cudaEventRecord(a_, gpu_->stream()));
    else t0_ = std::chrono::steady_clock::now();
  }
  double stop_ms() {
    if (dev_ == Device::CUDA) {
      CUDA_CHECK(cudaEventRecord(b_, gpu_->stream()));
      CUDA_CHECK(cudaEventSynchronize(b_));
      float ms = 0;
      CUDA_CHECK(cudaEventElapsedTime(&ms, a_, b_));
      return ms;
    }
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0_).count();
  }

 private:
  Device dev_;
  const GpuContext* gpu_;
  cudaEvent_t a_ = nullptr, b_ = nullptr;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace

int bench_main(const std::string& arch, int batch, const std::string& device_flag, int reps, const std::string& input) {
  if (batch < 1) throw UsageError(fmt("--batch must be >= 1, got ", batch));
  if (reps < 1) throw UsageError(fmt("--reps must be >= 1, got ", reps));
  std::string why;
  Device dev = choose_device(device_flag, &why);
  Net net(arch, parse_input_dims(input, "--input"));
  const int L = net.num_layers(), K = net.num_outputs();
  std::unique_ptr<GpuContext> gpu;
  size_t free0 = 0, total = 0;
  if (dev == Device::CUDA) {
    gpu = std::make_unique<GpuContext>();
    CUDA_CHECK(cudaMemGetInfo(&free0, &total));
  }
  Tensor params({int(net.num_params())}, dev), grads({int(net.num_params())}, dev);
  params.copy_from_host(net.init_params(1));
  NetState<float> st;
  net.prepare(st, batch, dev);
  std::vector<float> x(st.act[0].numel());
  Rng rng(7);
  for (auto& v : x) v = float(rng.uniform(-1, 1));
  st.act[0].copy_from_host(x);
  std::vector<float> dl(st.dact[L].numel());
  for (auto& v : dl) v = float(rng.uniform(-1, 1)) / batch;
  st.dact[L].copy_from_host(dl);
  // Warm-up (allocations, cuBLAS heuristics).
  for (int r = 0; r < 3; ++r) {
    net.forward(st, params.data(), gpu.get());
    net.backward(st, params.data(), grads.data(), gpu.get(), false);
  }
  if (gpu) gpu->sync();
  size_t free1 = free0;
  if (dev == Device::CUDA) CUDA_CHECK(cudaMemGetInfo(&free1, &total));

  Timer timer(dev, gpu.get());
  std::vector<double> fwd(L, 0), bwd(L, 0);
  for (int i = 0; i < L; ++i) {
    LayerCall<float> c;
    c.device = dev;
    c.N = batch;
    c.in = st.act[i].data();
    c.out = st.act[i + 1].data();
    c.dout = st.dact[i + 1].data();
    c.din = i > 0 ? st.dact[i].data() : nullptr;
    size_t off = 0;
    for (auto& e : net.params()) if (e.layer < i) off = e.offset + e.numel();
    c.param = params.data() + off;
    c.dparam = grads.data() + off;
    c.gpu = gpu.get();
    c.workspace = dev == Device::CUDA ? st.workspace.data() : nullptr;
    timer.start();
    for (int r = 0; r < reps; ++r) net.layer(i).forward(c);
    fwd[i] = timer.stop_ms() / reps;
    timer.start();
    for (int r = 0; r < reps; ++r) net.layer(i).backward(c);
    bwd[i] = timer.stop_ms() / reps;
  }
  timer.start();
  for (int r = 0; r < reps; ++r) {
    net.forward(st, params.data(), gpu.get());
    net.backward(st, params.data(), grads.data(), gpu.get(), false);
  }
  double step_ms = timer.stop_ms() / reps;

  std::printf("bench: %s, batch %d, input %s, device %s (%s), %d reps\n", net.spec().c_str(), batch, input.c_str(),
              device_name(dev), why.c_str(), reps);
  std::printf("  %-5s %-22s %10s %10s %12s %12s\n", "layer", "spec", "fwd ms", "bwd ms", "fwd GFLOP/s", "bwd GFLOP/s");
  for (int i = 0; i < L; ++i) {
    double f = layer_forward_flops(net.layer(i), batch);
    double b = net.layer(i).num_params() ? 2 * f : f;
    std::printf("  %-5d %-22s %10.4f %10.4f %12.1f %12.1f\n", i, net.layer(i).spec().c_str(), fwd[i], bwd[i],
                f / (fwd[i] * 1e6), b / (bwd[i] * 1e6));
  }
  std::printf("  forward+backward step: %.4f ms, %.0f images/s (the loss and the optimizer add a few us)\n", step_ms,
              batch / (step_ms / 1e3));
  std::printf("  an epoch of 60000 images: %.2f s\n", 60000.0 / batch * step_ms / 1e3);
  if (dev == Device::CUDA)
    std::printf("  device memory in use by the net: %.1f MiB (of %.1f GiB)\n", (free0 - free1) / 1048576.0,
                total / 1073741824.0);
  (void)K;
  return 0;
}

}  // namespace barecnn
