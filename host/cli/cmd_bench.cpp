// `barecnn bench`: per-layer forward and backward times (like `caffe time`), each layer's FLOP/s
// and bytes/s from its cost (Layer::cost) and as a fraction of the machine's measured peaks (the
// card's or the CPU's: include/barecnn/peak.h), the time of a forward+backward step, images/s, an
// epoch's estimate and peak device memory; `--json FILE` writes the same figures for scripts.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "barecnn/cpu_ops.h"
#include "barecnn/cuda_check.h"
#include "barecnn/device_buffer.h"
#include "barecnn/error.h"
#include "barecnn/fileutil.h"
#include "barecnn/gpu_ops.h"
#include "barecnn/gradcheck.h"
#include "barecnn/net.h"
#include "barecnn/peak.h"
#include "barecnn/step.h"
#include "barecnn/stretch.h"
#include "commands.h"
#include "barecnn/trainer.h"

namespace barecnn::cli {

namespace {

constexpr double kEpochImages = 60000;  // a Fashion-MNIST / MNIST training epoch

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

// ---- the figures ---------------------------------------------------------------------------------

struct PhaseFigures {  // one direction (forward or backward) of one layer
  double ms = 0, flops = 0, bytes = 0;
  long long calls = 0;  // how many back-to-back calls the mean `ms` is taken over
};

// A layer's calls are timed over at least this long: --reps calls, or as many more as fill it.
// Over a short stretch the shared CPU's interruptions are not averaged out: 30 calls of a 1-2 us
// layer (`deep`'s dense(10) forward) are 30-60 us, and one descheduling or interrupt in them
// doubled the mean now and then (bench rows of 44-49% against 57-62% typical); over 10 ms each
// such event moves the mean by a percent or so, its steady-state share.
constexpr double kMinTimedMs = 10;
constexpr long long kMaxCalls = 10'000'000;

struct LayerFigures {
  int index = 0;
  std::string spec;
  std::string note;  // "a view" (flatten: no work), "+ relu" / "+ relu + maxpool" / "in the conv" (--fuse on)
  Dims out;          // one sample's output dims
  PhaseFigures fwd, bwd;
};

struct BenchReport {
  std::string arch, input, device, device_name, why;
  int batch = 0, reps = 0;
  std::vector<LayerFigures> layers;
  double step_ms = 0;  // forward + backward of the whole net, timed as one
  // The machine's measured peaks: the card's, or on the CPU those of peak_threads threads with
  // the vector ISA peak_isa.
  std::optional<double> peak_flops, peak_bytes_per_s;
  std::string peak_isa;
  std::string gemm_isa;  // CPU: the instruction set of the GEMM kernels (cpu::cpu_isa_name)
  int peak_threads = 0;
  // Bytes held in DeviceBuffers at the most during warm-up and timing (CUDA only).
  std::optional<size_t> peak_device_bytes;
  // ---- the training step the trainer runs (TrainStep: gather, forward, loss + logits gradient
  // and metrics, backward, optimizer: SGD with momentum) on random images; kernel by kernel, and
  // on the GPU also replayed as one CUDA Graph (--cuda-graph on).
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

std::string threads_str(int n) { return std::to_string(n) + (n == 1 ? " thread" : " threads"); }

// "1234.5" or, when the peak is known, "1234.5 ( 3.2%)".
std::string rate_cell(double per_s, double unit, std::optional<double> peak) {
  char buf[64];
  if (peak && *peak > 0)
    std::snprintf(buf, sizeof buf, "%9.1f (%5.1f%%)", per_s / unit, 100 * per_s / *peak);
  else
    std::snprintf(buf, sizeof buf, "%9.1f", per_s / unit);
  return buf;
}

void print_report(const BenchReport& r) {
  std::printf("bench: %s, batch %d, input %s, device %s: %s (%s), %d reps (each layer: at least %g ms of calls)\n",
              r.arch.c_str(), r.batch, r.input.c_str(), r.device.c_str(), r.device_name.c_str(), r.why.c_str(), r.reps,
              kMinTimedMs);
  if (r.peak_flops && r.peak_bytes_per_s) {
    if (r.device == "cpu") {
      std::printf("  measured peaks: %.1f GFLOP/s FP32 FMA (%s, %s), %.1f GB/s memory copy (read + write, %s)\n",
                  *r.peak_flops / 1e9, r.peak_isa.c_str(), threads_str(r.peak_threads).c_str(),
                  *r.peak_bytes_per_s / 1e9, threads_str(r.peak_threads).c_str());
      std::printf("  GEMM kernels (conv, dense): %s\n", r.gemm_isa.c_str());
    } else {
      std::printf("  measured peaks: %.1f TFLOP/s FP32 FMA (no tensor cores), %.0f GB/s DRAM (read + write)\n",
                  *r.peak_flops / 1e12, *r.peak_bytes_per_s / 1e9);
    }
  }
  const bool pk = r.peak_flops.has_value();
  const int w = pk ? 18 : 9;
  auto spec_cell = [](const LayerFigures& l) { return l.note.empty() ? l.spec : l.spec + " (" + l.note + ")"; };
  int ws = 22;  // the spec column: as wide as its longest cell
  for (const LayerFigures& l : r.layers) ws = std::max(ws, int(spec_cell(l).size()));
  std::printf("  %-5s %-*s %9s %9s  %*s %*s  %*s %*s\n", "layer", ws, "spec", "fwd ms", "bwd ms", w,
              pk ? "fwd GFLOP/s (peak)" : "fwd GFLOP/s", w, pk ? "fwd GB/s (peak)" : "fwd GB/s", w,
              pk ? "bwd GFLOP/s (peak)" : "bwd GFLOP/s", w, pk ? "bwd GB/s (peak)" : "bwd GB/s");
  double fwd_ms = 0, bwd_ms = 0;
  for (const LayerFigures& l : r.layers) {
    std::printf("  %-5d %-*s %9.4f %9.4f  %*s %*s  %*s %*s\n", l.index, ws, spec_cell(l).c_str(), l.fwd.ms, l.bwd.ms, w,
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
    std::printf(
        "  peak device memory: %.2f MiB in barecnn's buffers (with cuBLAS's 4 MiB workspace; the CUDA "
        "context not counted)\n",
        double(*r.peak_device_bytes) / 1048576.0);
}

nlohmann::ordered_json phase_json(const PhaseFigures& p, const BenchReport& r) {
  nlohmann::ordered_json j{{"ms", p.ms},
                           {"calls", p.calls},
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
  json j{{"arch", r.arch},  {"input", r.input},   {"batch", r.batch},
         {"reps", r.reps},  {"device", r.device}, {"device_name", r.device_name},
         {"layers", layers}};
  if (!r.peak_flops) {
    j["peaks"] = nullptr;
  } else if (r.device == "cpu") {
    j["peaks"] = json{{"fp32_flops_per_s", *r.peak_flops},
                      {"bytes_per_s", *r.peak_bytes_per_s},
                      {"isa", r.peak_isa},
                      {"gemm_isa", r.gemm_isa},
                      {"threads", r.peak_threads},
                      {"measured", fmt("FP32 FMA in ", r.peak_isa, " vector registers on ", r.peak_threads,
                                       " threads; memory copy on as many threads, bytes read + written")}};
  } else {
    j["peaks"] = json{{"fp32_flops_per_s", *r.peak_flops},
                      {"bytes_per_s", *r.peak_bytes_per_s},
                      {"measured", "FP32 FMA on the CUDA cores (no tensor cores); DRAM copy, bytes read + written"}};
  }
  const double epoch_ms = r.epoch_step_ms();
  json totals{{"forward", phase_json(fsum, r)},        {"backward", phase_json(bsum, r)},
              {"forward_backward_step_ms", r.step_ms}, {"images_per_s", rate(r.batch, r.step_ms)},
              {"epoch_images", kEpochImages},          {"epoch_s", kEpochImages / r.batch * epoch_ms / 1e3}};
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

int bench_main(const std::string& arch, int batch, const std::string& device_flag, int reps, const std::string& input,
               std::optional<bool> fuse, const std::string& json_path, int threads) {
  check_at_least(batch, 1, "--batch");
  check_at_least(reps, 1, "--reps");
  check_threads(threads);
  if (!json_path.empty()) {  // fail before the benchmark, not after it
    std::string dir = json_path.find('/') == std::string::npos ? "." : json_path.substr(0, json_path.rfind('/'));
    ensure_writable_dir(dir.empty() ? "/" : dir, "--json");
    if (std::filesystem::is_directory(json_path))
      throw UsageError(
          fmt("--json ", json_path, ": is a folder; name a file, e.g. ", path_join(json_path, "bench.json")));
  }
  if (threads > 0) omp_set_num_threads(threads);  // the ops' threads and the peaks' alike
  BenchReport rep;
  Device dev = choose_device(device_flag, &rep.why);
  Net net(arch, parse_input_dims(input, "--input"));
  net.set_fusion(fuse_for(fuse));
  const int L = net.num_layers();
  rep.arch = net.spec();
  rep.input = input;
  rep.batch = batch;
  rep.reps = reps;
  rep.device = device_name(dev);
  rep.device_name = dev == Device::CUDA ? gpu_status().name : cpu_model_name();

  // Before the net allocates anything: the bandwidth test wants the free memory.
  if (dev == Device::CUDA) {
    rep.peak_flops = gpu::measure_peak_fp32_flops();
    rep.peak_bytes_per_s = gpu::measure_peak_bandwidth();
  } else {
    // As many threads as the CPU ops get (--threads, else OpenMP's default: OMP_NUM_THREADS or all cores).
    rep.peak_threads = omp_get_max_threads();
    rep.peak_isa = cpu::peak_isa();
    rep.gemm_isa = cpu::cpu_isa_name(cpu::cpu_isa());
    rep.peak_flops = cpu::measure_peak_fp32_flops(rep.peak_threads);
    rep.peak_bytes_per_s = cpu::measure_peak_bandwidth(rep.peak_threads);
  }
  const ExecContext ctx(dev);
  const Exec& ex = ctx.exec();
  Tensor params({int(net.state_size())}, dev), grads({int(net.num_params())}, dev);  // (P + buffers), (P)
  params.copy_from_host(net.init_params(1));
  // Forward passes in training mode (batchnorm on the batch, dropout drawing masks), as in a step.
  gpu::StepCounters host_counters;
  host_counters.seed = 1, host_counters.global_step = 1;
  BasicTensor<gpu::StepCounters> counters({1}, dev);
  counters.copy_from_host({host_counters});
  const RunMode<float> mode = RunMode<float>::train(params.data() + net.num_params(), counters.data());
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
    net.forward(st, params.data(), ex, mode);
    net.backward(st, params.data(), grads.data(), ex, false);
  }
  ex.sync();

  // ---- each layer alone ----
  ExecTimer timer(ex);
  // p.ms = the mean of a stretch of back-to-back calls of call() (barecnn/stretch.h).
  auto time_calls = [&](PhaseFigures& p, auto call) {
    const Stretch s = time_stretch(reps, kMinTimedMs, kMaxCalls, [&](long long n) {
      timer.start();
      for (long long r = 0; r < n; ++r) call();
      return timer.stop_ms();
    });
    p.ms = s.ms_per_call;
    p.calls = s.calls;
  };
  for (int i = 0; i < L; ++i) {
    LayerFigures f;
    f.index = i;
    f.spec = net.layer(i).spec();
    f.out = net.layer(i).out_dims();
    const PlannedLayer* p = st.planned(i);
    if (!p) {  // not in the plan: a ReLU or max pooling the conv before it applies (--fuse on), or a view
      f.note = (i > 0 && st.fused[i - 1]) || (i > 1 && st.fused_pool[i - 2]) ? "in the conv" : "a view";
      rep.layers.push_back(f);
      continue;
    }
    // The very call net.forward / net.backward make (need_input_grad = false: the first layer
    // computes no input gradient).
    LayerCall<float> c = net.layer_call(st, *p, params.data(), grads.data(), ex, false);
    const bool need_din = c.din != nullptr;
    LayerCost cost = net.layer(i).cost(batch, need_din);
    if (p->fused_pool) {  // --fuse on, CPU: the conv also does the ReLU and the max pooling after it
      f.note = "+ relu + maxpool";
      const double outs = double(batch) * double(dims_numel(net.layer(i).out_dims()));
      const double pooled = double(batch) * double(dims_numel(net.layer(i + 2).out_dims()));
      cost.forward.flops += 2 * outs;  // one max for the ReLU, one comparison for the pool, per conv output
      // The conv's output is neither written nor read back: forward writes the pooled values and
      // the mask; each gradient op reads the pooled gradient, values and mask instead of dy.
      cost.forward.bytes += 4.0 * (2 * pooled - outs);
      cost.backward.bytes += 4.0 * (3 * pooled * (need_din ? 2 : 1) - outs);
    } else if (p->fused_relu) {  // --fuse on: this conv also does the ReLU after it (whose row shows 0 ms)
      f.note = "+ relu";
      const double outs = double(batch) * double(dims_numel(net.layer(i).out_dims()));
      cost.forward.flops += outs;                              // one max per output
      cost.backward.bytes += 4.0 * outs * (need_din ? 2 : 1);  // each gradient kernel reads the ReLU output
    }
    f.fwd.flops = cost.forward.flops;
    f.bwd.flops = cost.backward.flops;
    f.fwd.bytes = cost.forward.bytes;
    f.bwd.bytes = cost.backward.bytes;
    time_calls(f.fwd, [&] { net.layer(i).forward(c); });
    time_calls(f.bwd, [&] { net.layer(i).backward(c); });
    rep.layers.push_back(f);
  }

  // ---- forward + backward of the whole net ----
  timer.start();
  for (int r = 0; r < reps; ++r) {
    net.forward(st, params.data(), ex, mode);
    net.backward(st, params.data(), grads.data(), ex, false);
  }
  rep.step_ms = timer.stop_ms() / reps;

  // ---- the whole training step (see BenchReport::train_step_ms) ----
  {
    // Random images and labels, `steps` batches of them: each timed stretch is at most one
    // epoch of them, the next epoch is started between stretches (untimed).
    const int steps = std::max(2, std::min(reps, 16));
    const Dims& in = net.input_dims();
    IdxImages images;
    images.count = steps * batch;
    images.rows = in[0] * in[1], images.cols = in[2];  // the gather copies C*H*W bytes per image
    images.pixels.resize(size_t(images.count) * dims_numel(in));
    for (auto& px : images.pixels) px = uint8_t(rng.next_u64() & 0xFF);
    std::vector<uint8_t> labels(images.count);
    for (auto& y : labels) y = uint8_t(rng.next_u64() % uint64_t(net.num_outputs()));
    StepSettings ss;
    ss.batch = batch;
    ss.optim.momentum = 0.9f;  // SGD with momentum: the trainer's default
    ss.optim.lr = 1e-3f;       // small: hundreds of steps on random data must stay finite
    ss.mean = 0.5f, ss.std = 0.25f;
    auto time_steps = [&](TrainStep& step) {
      step.set_state({net.init_params(1), std::vector<float>(net.num_params(), 0.f),
                      std::vector<float>(net.num_params(), 0.f), 0});
      long long epoch = 0;
      step.begin_epoch(1, epoch, 0, {});
      for (int r = 0; r < 2; ++r) step.run();  // warm-up (with cuda_graph: the eager step, the capture)
      double ms = 0;
      for (int done = 0; done < reps;) {
        step.begin_epoch(1, ++epoch, 0, {});
        ex.sync();
        const int n = std::min(reps - done, steps);
        timer.start();
        for (int r = 0; r < n; ++r) step.run();
        ms += timer.stop_ms();
        done += n;
      }
      return ms / reps;
    };
    {
      TrainStep step(net, ex, images, labels, ss);
      rep.train_step_ms = time_steps(step);
    }
    if (ex.can_capture()) {
      ss.cuda_graph = true;
      TrainStep step(net, ex, images, labels, ss);
      rep.train_step_graph_ms = time_steps(step);
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

}  // namespace

Runner add_bench(CLI::App& app) {
  struct Opts {
    std::string arch = "paper", device = "auto", input = "1x28x28", json, fuse = "auto";
    int batch = 64, reps = 20, threads = 0;
  };
  auto o = std::make_shared<Opts>();
  auto* bench = app.add_subcommand("bench", "per-layer forward/backward times, step time, images/s");
  bench->add_option("--arch", o->arch, "arch spec or preset")->capture_default_str();
  bench->add_option("--batch", o->batch, "batch size")->capture_default_str();
  bench->add_option("--device", o->device, "auto, cpu or cuda")->capture_default_str();
  bench
      ->add_option("--reps", o->reps,
                   "timed repetitions (of each layer: at least this many calls, more where they take under 10 ms)")
      ->capture_default_str();
  bench->add_option("--input", o->input, "input shape CxHxW")->capture_default_str();
  bench->add_option("--threads", o->threads, "CPU threads (0: OpenMP's default, OMP_NUM_THREADS or all cores)")
      ->capture_default_str();
  bench->add_option("--json", o->json, "also write the figures (per layer, totals, peaks) as JSON to this file");
  bench
      ->add_option("--fuse", o->fuse,
                   "on: each conv applies the ReLU after it (and on the CPU a max pooling after that), as train "
                   "--fuse on; auto (the default): on")
      ->capture_default_str();
  bench->footer(
      "Examples:\n  barecnn bench --arch paper --batch 256\n"
      "  barecnn bench --arch deep --batch 1024 --json bench-deep.json");
  return [o] {
    return bench_main(o->arch, o->batch, o->device, o->reps, o->input, parse_fuse(o->fuse), o->json, o->threads);
  };
}

}  // namespace barecnn::cli
