// `barecnn bench`: per-layer forward and backward times (like `caffe time`), each layer's FLOP/s
// and bytes/s (on the GPU also as a fraction of the card's measured peaks: include/barecnn/peak.h),
// the time of a forward+backward step, images/s, an epoch's estimate and peak device memory;
// `--json FILE` writes the same figures for scripts.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "barecnn/cuda_check.h"
#include "barecnn/device_buffer.h"
#include "barecnn/error.h"
#include "barecnn/fileutil.h"
#include "barecnn/gpu_ops.h"
#include "barecnn/gradcheck.h"
#include "barecnn/net.h"
#include "barecnn/peak.h"
#include "barecnn/ref_ops.h"
#include "barecnn/trainer.h"

namespace barecnn {

namespace {

constexpr double kEpochImages = 60000;  // a Fashion-MNIST / MNIST training epoch

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

// FLOPs of one layer's forward and backward over a batch of N. Convolution and dense: 2 per
// multiply-add; the backward computes the weight gradient (as many FLOPs as the forward) and, with
// need_din, the input gradient (as many again). Other layers: ~1 op per element they produce,
// enough to print a rate; flatten is a copy and does none.
struct LayerFlops {
  double forward = 0, backward = 0;
};
LayerFlops layer_flops(const Layer& l, int N, bool need_din) {
  LayerFlops f;
  auto specs = l.param_specs();
  if (!specs.empty()) {
    const Dims& w = specs[0].dims;
    const Dims& o = l.out_dims();
    f.forward = w.size() == 4 ? 2.0 * N * o[0] * o[1] * o[2] * w[1] * w[2] * w[3]  // conv (K, C, kh, kw)
                              : 2.0 * N * w[0] * w[1];                             // dense (OUT, IN)
    f.backward = need_din ? 2 * f.forward : f.forward;
    return f;
  }
  if (l.spec() == "flatten") return f;
  f.forward = double(N) * double(dims_numel(l.out_dims()));
  f.backward = need_din ? double(N) * double(dims_numel(l.in_dims())) : 0;
  return f;
}

// The fewest bytes one layer moves (peak.h says what is counted), by the kind of layer.
LayerBytes layer_min_bytes(const Layer& l, int N, bool need_din) {
  const double in = double(N) * double(dims_numel(l.in_dims()));
  const double out = double(N) * double(dims_numel(l.out_dims()));
  const std::string s = l.spec();
  auto specs = l.param_specs();
  if (!specs.empty()) {  // conv and dense: (weight, bias)
    double bias = specs.size() > 1 ? double(dims_numel(specs[1].dims)) : 0;
    return weighted_layer_min_bytes(in, out, double(dims_numel(specs[0].dims)), bias, need_din);
  }
  if (starts_with(s, "maxpool")) return maxpool_min_bytes(in, out, need_din);
  if (starts_with(s, "avgpool")) return avgpool_min_bytes(in, out, need_din);
  if (starts_with(s, "l2pool")) return l2pool_min_bytes(in, out, need_din);
  if (s == "flatten") return copy_min_bytes(in, need_din);
  return elementwise_min_bytes(in, need_din);  // activations and softmax
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
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;
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

// ---- the figures ---------------------------------------------------------------------------------

struct PhaseFigures {  // one direction (forward or backward) of one layer
  double ms = 0, flops = 0, bytes = 0;
};

struct LayerFigures {
  int index = 0;
  std::string spec;
  std::string note;  // "a view" (flatten: no work), "+ relu" / "in the conv" (--fuse on)
  Dims out;  // one sample's output dims
  PhaseFigures fwd, bwd;
};

struct BenchReport {
  std::string arch, input, device, device_name, why;
  int batch = 0, reps = 0;
  std::vector<LayerFigures> layers;
  double step_ms = 0;  // forward + backward of the whole net, timed as one
  // The card's measured peaks (CUDA only).
  std::optional<double> peak_flops, peak_bytes_per_s;
  // Bytes held in DeviceBuffers at the most during warm-up and timing (CUDA only).
  std::optional<size_t> peak_device_bytes;
  // ---- the whole training step as the trainer launches it: forward, loss (+ logits gradient and
  // metrics), backward, optimizer (SGD with momentum); kernel by kernel, and on the GPU also
  // replayed as one CUDA Graph (--cuda-graph on). The batch gather is left out (bench has no
  // data set): one small kernel per step.
  std::optional<double> train_step_ms, train_step_graph_ms;
  // The step an epoch is estimated from: the fastest training step measured.
  double epoch_step_ms() const {
    double ms = train_step_ms ? *train_step_ms : step_ms;
    if (train_step_graph_ms && *train_step_graph_ms < ms) ms = *train_step_graph_ms;
    return ms;
  }
};

double rate(double amount, double ms) { return ms > 0 ? amount / (ms * 1e-3) : 0; }

std::string cpu_model_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (starts_with(line, "model name")) {
      auto p = line.find(':');
      if (p != std::string::npos && p + 2 <= line.size()) return line.substr(p + 2);
    }
  return "cpu";
}

// "1234.5" or, when the peak is known, "1234.5 ( 3.2%)".
std::string rate_cell(double per_s, double unit, std::optional<double> peak) {
  char buf[64];
  if (peak && *peak > 0) std::snprintf(buf, sizeof buf, "%9.1f (%5.1f%%)", per_s / unit, 100 * per_s / *peak);
  else std::snprintf(buf, sizeof buf, "%9.1f", per_s / unit);
  return buf;
}

void print_report(const BenchReport& r) {
  std::printf("bench: %s, batch %d, input %s, device %s: %s (%s), %d reps\n", r.arch.c_str(), r.batch,
              r.input.c_str(), r.device.c_str(), r.device_name.c_str(), r.why.c_str(), r.reps);
  if (r.peak_flops && r.peak_bytes_per_s)
    std::printf("  measured peaks: %.1f TFLOP/s FP32 FMA (no tensor cores), %.0f GB/s DRAM (read + write)\n",
                *r.peak_flops / 1e12, *r.peak_bytes_per_s / 1e9);
  const bool pk = r.peak_flops.has_value();
  const int w = pk ? 18 : 9;
  std::printf("  %-5s %-22s %9s %9s  %*s %*s  %*s %*s\n", "layer", "spec", "fwd ms", "bwd ms", w,
              pk ? "fwd GFLOP/s (peak)" : "fwd GFLOP/s", w, pk ? "fwd GB/s (peak)" : "fwd GB/s", w,
              pk ? "bwd GFLOP/s (peak)" : "bwd GFLOP/s", w, pk ? "bwd GB/s (peak)" : "bwd GB/s");
  double fwd_ms = 0, bwd_ms = 0;
  for (const LayerFigures& l : r.layers) {
    const std::string spec = l.note.empty() ? l.spec : l.spec + " (" + l.note + ")";
    std::printf("  %-5d %-22s %9.4f %9.4f  %*s %*s  %*s %*s\n", l.index, spec.c_str(), l.fwd.ms, l.bwd.ms, w,
                rate_cell(rate(l.fwd.flops, l.fwd.ms), 1e9, r.peak_flops).c_str(), w,
                rate_cell(rate(l.fwd.bytes, l.fwd.ms), 1e9, r.peak_bytes_per_s).c_str(), w,
                rate_cell(rate(l.bwd.flops, l.bwd.ms), 1e9, r.peak_flops).c_str(), w,
                rate_cell(rate(l.bwd.bytes, l.bwd.ms), 1e9, r.peak_bytes_per_s).c_str());
    fwd_ms += l.fwd.ms;
    bwd_ms += l.bwd.ms;
  }
  std::printf("  sum of the layers: forward %.4f ms, backward %.4f ms (bytes: the fewest each layer must move)\n",
              fwd_ms, bwd_ms);
  std::printf("  forward+backward step: %.4f ms, %.0f images/s (without the loss and the optimizer)\n", r.step_ms,
              rate(r.batch, r.step_ms));
  if (r.train_step_ms)
    std::printf("  training step (forward, loss, backward, optimizer)%s: %.4f ms, %.0f images/s\n",
                r.train_step_graph_ms ? ", kernel by kernel" : "", *r.train_step_ms, rate(r.batch, *r.train_step_ms));
  if (r.train_step_graph_ms)
    std::printf("  training step as one CUDA Graph: %.4f ms, %.0f images/s\n", *r.train_step_graph_ms,
                rate(r.batch, *r.train_step_graph_ms));
  const double epoch_ms = r.epoch_step_ms();
  std::printf("  an epoch of %.0f images: %.2f s\n", kEpochImages, kEpochImages / r.batch * epoch_ms / 1e3);
  if (r.peak_device_bytes)
    std::printf("  peak device memory: %.2f MiB in barecnn's buffers (with cuBLAS's 4 MiB workspace; the CUDA "
                "context not counted)\n",
                double(*r.peak_device_bytes) / 1048576.0);
}

nlohmann::ordered_json phase_json(const PhaseFigures& p, const BenchReport& r) {
  nlohmann::ordered_json j{{"ms", p.ms},
                   {"flops", p.flops},
                   {"bytes", p.bytes},
                   {"flops_per_s", rate(p.flops, p.ms)},
                   {"bytes_per_s", rate(p.bytes, p.ms)}};
  if (r.peak_flops) j["flops_fraction_of_peak"] = rate(p.flops, p.ms) / *r.peak_flops;
  if (r.peak_bytes_per_s) j["bytes_fraction_of_peak"] = rate(p.bytes, p.ms) / *r.peak_bytes_per_s;
  return j;
}

// Keys in the order a reader wants them (ordered_json), not sorted.
nlohmann::ordered_json report_json(const BenchReport& r) {
  using json = nlohmann::ordered_json;
  json layers = json::array();
  PhaseFigures fsum, bsum;
  for (const LayerFigures& l : r.layers) {
    layers.push_back({{"index", l.index},
                      {"spec", l.spec},
                      {"note", l.note},
                      {"output", dims_str(l.out)},
                      {"forward", phase_json(l.fwd, r)},
                      {"backward", phase_json(l.bwd, r)}});
    for (auto [sum, p] : {std::pair{&fsum, &l.fwd}, std::pair{&bsum, &l.bwd}}) {
      sum->ms += p->ms;
      sum->flops += p->flops;
      sum->bytes += p->bytes;
    }
  }
  json j{{"arch", r.arch},
         {"input", r.input},
         {"batch", r.batch},
         {"reps", r.reps},
         {"device", r.device},
         {"device_name", r.device_name},
         {"layers", layers}};
  j["peaks"] = r.peak_flops ? json{{"fp32_flops_per_s", *r.peak_flops},
                                   {"bytes_per_s", *r.peak_bytes_per_s},
                                   {"measured", "FP32 FMA on the CUDA cores (no tensor cores); DRAM copy, "
                                                "bytes read + written"}}
                            : json(nullptr);
  const double epoch_ms = r.epoch_step_ms();
  json totals{{"forward", phase_json(fsum, r)},
              {"backward", phase_json(bsum, r)},
              {"forward_backward_step_ms", r.step_ms},
              {"images_per_s", rate(r.batch, r.step_ms)},
              {"epoch_images", kEpochImages},
              {"epoch_s", kEpochImages / r.batch * epoch_ms / 1e3}};
  if (r.train_step_ms) {
    totals["train_step_ms"] = *r.train_step_ms;
    totals["train_images_per_s"] = rate(r.batch, *r.train_step_ms);
  }
  if (r.train_step_graph_ms) {
    totals["train_step_graph_ms"] = *r.train_step_graph_ms;
    totals["train_graph_images_per_s"] = rate(r.batch, *r.train_step_graph_ms);
  }
  j["totals"] = totals;
  j["peak_device_memory_bytes"] = r.peak_device_bytes ? json(*r.peak_device_bytes) : json(nullptr);
  return j;
}

}  // namespace

int bench_main(const std::string& arch, int batch, const std::string& device_flag, int reps, const std::string& input,
               bool fuse, const std::string& json_path) {
  if (batch < 1) throw UsageError(fmt("--batch must be >= 1, got ", batch));
  if (reps < 1) throw UsageError(fmt("--reps must be >= 1, got ", reps));
  if (!json_path.empty()) {  // fail before the benchmark, not after it
    std::string dir = json_path.find('/') == std::string::npos ? "." : json_path.substr(0, json_path.rfind('/'));
    ensure_writable_dir(dir.empty() ? "/" : dir, "--json");
    if (std::filesystem::is_directory(json_path))
      throw UsageError(fmt("--json ", json_path, ": is a folder; name a file, e.g. ", path_join(json_path, "bench.json")));
  }
  BenchReport rep;
  Device dev = choose_device(device_flag, &rep.why);
  Net net(arch, parse_input_dims(input, "--input"));
  net.set_gpu_fusion(fuse);
  const int L = net.num_layers();
  rep.arch = net.spec();
  rep.input = input;
  rep.batch = batch;
  rep.reps = reps;
  rep.device = device_name(dev);
  rep.device_name = dev == Device::CUDA ? gpu_status().name : cpu_model_name();

  std::unique_ptr<GpuContext> gpu;
  if (dev == Device::CUDA) {
    // Before the net allocates anything: the bandwidth test wants the free memory.
    rep.peak_flops = gpu::measure_peak_fp32_flops();
    rep.peak_bytes_per_s = gpu::measure_peak_bandwidth();
    gpu = std::make_unique<GpuContext>();
  }
  Tensor params({int(net.num_params())}, dev), grads({int(net.num_params())}, dev);  // (P)
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
  // The peak counts from here: parameters, activations, saved masks and workspace are already
  // held; the warm-up adds whatever the layers allocate lazily.
  reset_device_memory_peak();
  // Warm-up (allocations, cuBLAS heuristics, clocks).
  for (int r = 0; r < 3; ++r) {
    net.forward(st, params.data(), gpu.get());
    net.backward(st, params.data(), grads.data(), gpu.get(), false);
  }
  if (gpu) gpu->sync();

  // ---- each layer alone ----
  Timer timer(dev, gpu.get());
  for (int i = 0; i < L; ++i) {
    // The very call net.forward / net.backward make (need_input_grad = false: the first layer
    // computes no input gradient).
    LayerCall<float> c = net.layer_call(st, i, params.data(), grads.data(), gpu.get(), false);
    const bool need_din = c.din != nullptr;
    LayerFigures f;
    f.index = i;
    f.spec = net.layer(i).spec();
    f.out = net.layer(i).out_dims();
    if (i > 0 && st.fused[i - 1]) {
      f.note = "in the conv";  // --fuse on: the conv before it ran it, and is timed with it
      rep.layers.push_back(f);
      continue;
    }
    if (net.layer(i).is_view() && i + 1 < L) {
      f.note = "a view";  // no work: the next layer reads this one's input
      rep.layers.push_back(f);
      continue;
    }
    LayerFlops fl = layer_flops(net.layer(i), batch, need_din);
    LayerBytes by = layer_min_bytes(net.layer(i), batch, need_din);
    if (c.fuse_relu) {  // --fuse on: this conv also does the ReLU after it (whose row shows 0 ms)
      f.note = "+ relu";
      const double outs = double(batch) * double(dims_numel(net.layer(i).out_dims()));
      fl.forward += outs;                              // one max per output
      by.backward += 4.0 * outs * (need_din ? 2 : 1);  // each gradient kernel reads the ReLU output
    }
    f.fwd.flops = fl.forward;
    f.bwd.flops = fl.backward;
    f.fwd.bytes = by.forward;
    f.bwd.bytes = by.backward;
    timer.start();
    for (int r = 0; r < reps; ++r) net.layer(i).forward(c);
    f.fwd.ms = timer.stop_ms() / reps;
    timer.start();
    for (int r = 0; r < reps; ++r) net.layer(i).backward(c);
    f.bwd.ms = timer.stop_ms() / reps;
    rep.layers.push_back(f);
  }

  // ---- forward + backward of the whole net ----
  timer.start();
  for (int r = 0; r < reps; ++r) {
    net.forward(st, params.data(), gpu.get());
    net.backward(st, params.data(), grads.data(), gpu.get(), false);
  }
  rep.step_ms = timer.stop_ms() / reps;

  // ---- the whole training step (see BenchReport::train_step_ms) ----
  {
    const int K = net.num_outputs();
    const size_t P = net.num_params();
    OptimConfig opt;  // SGD, momentum 0.9: the trainer's default
    opt.momentum = 0.9f;
    opt.lr = 1e-3f;   // small: hundreds of steps on random data must stay finite
    std::vector<int32_t> lab(batch);
    for (auto& y : lab) y = int32_t(rng.next_u64() % uint64_t(K));
    TensorI labels({batch}, dev), correct({batch}, dev);
    labels.copy_from_host(lab);
    Tensor loss({batch}, dev), m({int(P)}, dev), v({1}, dev);
    m.zero();
    long long t = 0;
    if (dev == Device::CUDA) {
      DeviceBuffer<gpu::StepCounters> counters(1, "step counters");
      DeviceBuffer<double> acc(2, "metrics");
      gpu::StepCounters c0;
      counters.copy_from_host(&c0, 1);
      acc.memset_zero(gpu->stream());
      cudaStream_t s = gpu->stream();
      auto step = [&] {
        gpu::begin_step(counters.data(), opt, s);
        net.forward(st, params.data(), gpu.get());
        gpu::loss_forward_backward(loss.data(), st.dact[L].data(), correct.data(), st.act[L].data(), labels.data(),
                                   batch, K, Loss::SoftmaxCrossEntropy, 1.f / batch, s);
        gpu::accumulate_metrics(acc.data(), loss.data(), correct.data(), batch, s);
        net.backward(st, params.data(), grads.data(), gpu.get(), false);
        gpu::optimizer_step(params.data(), grads.data(), m.data(), v.data(), P, opt, counters.data(), s);
      };
      for (int r = 0; r < 2; ++r) step();
      timer.start();
      for (int r = 0; r < reps; ++r) step();
      rep.train_step_ms = timer.stop_ms() / reps;
      CapturedGraph graph;
      graph.capture(s, step);
      graph.launch(s);  // warm-up: the first launch uploads the graph
      timer.start();
      for (int r = 0; r < reps; ++r) graph.launch(s);
      rep.train_step_graph_ms = timer.stop_ms() / reps;
    } else {
      auto step = [&] {
        net.forward(st, params.data(), nullptr);
        ref::loss_forward_backward<float>(loss.data(), st.dact[L].data(), correct.data(), st.act[L].data(),
                                          labels.data(), batch, K, Loss::SoftmaxCrossEntropy, 1.f / batch);
        net.backward(st, params.data(), grads.data(), nullptr, false);
        ref::optimizer_step(params.data(), grads.data(), m.data(), v.data(), P, opt, ++t);
      };
      step();
      timer.start();
      for (int r = 0; r < reps; ++r) step();
      rep.train_step_ms = timer.stop_ms() / reps;
    }
  }

  if (dev == Device::CUDA) rep.peak_device_bytes = device_memory_stats().peak;

  print_report(rep);
  if (!json_path.empty()) {
    atomic_write_text(json_path, report_json(rep).dump(2) + "\n");
    std::printf("  wrote %s\n", json_path.c_str());
  }
  return 0;
}

}  // namespace barecnn
