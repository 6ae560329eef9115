// CPU kernel lab: times the float reference (ref::) against the fast CPU ops (cpu::) on every
// conv and dense layer shape of the preset nets, forward and both backward products, and one
// whole training step of the `paper` net built from cpu:: GEMM ops plus ref:: (or, with
// --elementwise fast, vectorized lab stand-ins) for ReLU and max pooling, ref:: for the loss and
// SGD, which gives an epoch estimate.
//
//   build-x/profiling/barecnn_cpu_lab [--batch 64] [--reps 15] [--ref-reps 3] [--threads N]
//                                     [--isa avx512|avx2|generic] [--no-ref] [--step-only] [--clock wall|cpu]
//                                     [--elementwise ref|fast|both]
//
// The machine is shared with other builds: every number is the median of several repetitions
// (after one warm-up call), with the fastest beside it. GFLOP/s counts 2 flops per multiply-add
// of the op's sum. --clock cpu times with the process CPU clock instead of the wall clock: with
// --threads 1 on a loaded machine it measures the kernels without the time the thread spent
// descheduled. (With 2 threads on a busy 2-core machine, a parallel region waits for the thread
// that lost its core: medians then show multiples of the 4 ms scheduler tick.)
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <string>
#include <vector>

#include "barecnn/cpu_ops.h"
#include "barecnn/error.h"
#include "barecnn/ref_ops.h"
#include "barecnn/rng.h"
#include "barecnn/shape.h"

using namespace barecnn;

namespace {

struct Options {
  int batch = 64, reps = 15, ref_reps = 3, threads = 0;
  bool ref = true, step_only = false, cpu_clock = false;
  std::string isa, elementwise = "both";
};

bool g_cpu_clock = false;
double now_ms() {
  if (g_cpu_clock) {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
  }
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Median and fastest time of fn() in ms over `reps` calls, after one warm-up call. The median is
// the number to quote; the fastest shows what the code does when nothing else runs.
struct Timing {
  double median = 0, best = 0;
};
Timing time_ms(const std::function<void()>& fn, int reps) {
  fn();
  std::vector<double> t;
  for (int r = 0; r < reps; r++) {
    double t0 = now_ms();
    fn();
    t.push_back(now_ms() - t0);
  }
  std::sort(t.begin(), t.end());
  return {t[t.size() / 2], t[0]};
}

std::vector<float> random_floats(size_t n, uint64_t seed, float scale) {
  Rng r(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = float(r.uniform(-scale, scale));
  return v;
}

struct Row {
  std::string layer, op;
  double macs;
  Timing ref, cpu;
};

void print_header() {
  std::printf("%-32s %-15s %9s %6s  %8s %6s %8s %6s  %7s\n", "layer", "op", "ref ms", "GF/s", "cpu ms", "GF/s",
              "best ms", "GF/s", "speedup");
}
void print_row(const Row& r) {
  auto gf = [&](double ms) { return 2 * r.macs / (ms * 1e6); };
  std::printf("%-32s %-15s ", r.layer.c_str(), r.op.c_str());
  if (r.ref.median > 0)
    std::printf("%9.3f %6.2f  ", r.ref.median, gf(r.ref.median));
  else
    std::printf("%9s %6s  ", "-", "-");
  std::printf("%8.3f %6.2f %8.3f %6.2f  ", r.cpu.median, gf(r.cpu.median), r.cpu.best, gf(r.cpu.best));
  if (r.ref.median > 0)
    std::printf("%6.1fx\n", r.ref.median / r.cpu.median);
  else
    std::printf("%7s\n", "-");
}

struct ConvLayer {
  std::string name;
  int C, H, W, K, k, pad;
};
struct DenseLayer {
  std::string name;
  int IN, OUT;
};

void time_conv(const ConvLayer& L, const Options& o) {
  Conv2dShape s = make_conv2d_shape(o.batch, L.C, L.H, L.W, L.K, L.k, L.k, 1, L.pad, L.name);
  auto inp = random_floats(s.in_numel(), 1, 1.f), w = random_floats(s.weight_numel(), 2, 0.1f);
  auto b = random_floats(s.K, 3, 0.1f), dout = random_floats(s.out_numel(), 4, 0.01f);
  std::vector<float> out(s.out_numel()), dinp(s.in_numel()), dw(s.weight_numel()), db(s.K);
  double macs = double(s.out_numel()) * s.C * s.kh * s.kw;
  std::string layer = L.name + " " + std::to_string(L.C) + "x" + std::to_string(L.H) + "x" + std::to_string(L.W);
  auto row = [&](const char* op, std::function<void()> ref_fn, std::function<void()> cpu_fn) {
    Row r{layer, op, macs, o.ref ? time_ms(ref_fn, o.ref_reps) : Timing{}, time_ms(cpu_fn, o.reps)};
    print_row(r);
  };
  row(
      "forward", [&] { ref::conv2d_forward(out.data(), inp.data(), w.data(), b.data(), s); },
      [&] { cpu::conv2d_forward(out.data(), inp.data(), w.data(), b.data(), s); });
  row(
      "backward_input", [&] { ref::conv2d_backward_input(dinp.data(), dout.data(), w.data(), s); },
      [&] { cpu::conv2d_backward_input(dinp.data(), dout.data(), w.data(), s); });
  row(
      "backward_weight", [&] { ref::conv2d_backward_weight(dw.data(), db.data(), dout.data(), inp.data(), s); },
      [&] { cpu::conv2d_backward_weight(dw.data(), db.data(), dout.data(), inp.data(), s); });
}

void time_dense(const DenseLayer& L, const Options& o) {
  int N = o.batch;
  auto inp = random_floats((size_t)N * L.IN, 1, 1.f), w = random_floats((size_t)L.OUT * L.IN, 2, 0.05f);
  auto b = random_floats(L.OUT, 3, 0.1f), dout = random_floats((size_t)N * L.OUT, 4, 0.01f);
  std::vector<float> out((size_t)N * L.OUT), dinp((size_t)N * L.IN), dw((size_t)L.OUT * L.IN), db(L.OUT);
  double macs = double(N) * L.IN * L.OUT;
  std::string layer = L.name + " " + std::to_string(L.IN) + "->" + std::to_string(L.OUT);
  auto row = [&](const char* op, std::function<void()> ref_fn, std::function<void()> cpu_fn) {
    Row r{layer, op, macs, o.ref ? time_ms(ref_fn, o.ref_reps) : Timing{}, time_ms(cpu_fn, o.reps)};
    print_row(r);
  };
  row(
      "forward", [&] { ref::dense_forward(out.data(), inp.data(), w.data(), b.data(), N, L.IN, L.OUT); },
      [&] { cpu::dense_forward(out.data(), inp.data(), w.data(), b.data(), N, L.IN, L.OUT); });
  row(
      "backward_input", [&] { ref::dense_backward_input(dinp.data(), dout.data(), w.data(), N, L.IN, L.OUT); },
      [&] { cpu::dense_backward_input(dinp.data(), dout.data(), w.data(), N, L.IN, L.OUT); });
  row(
      "backward_weight",
      [&] { ref::dense_backward_weight(dw.data(), db.data(), dout.data(), inp.data(), N, L.IN, L.OUT); },
      [&] { cpu::dense_backward_weight(dw.data(), db.data(), dout.data(), inp.data(), N, L.IN, L.OUT); });
}

// ---- lab stand-ins for the elementwise stages (not library code) ----
// The step below uses ref:: for ReLU and max pooling, whose scalar loops (a data-dependent branch
// per element) dominate it. These plain loops compute the same values (first index wins a tie,
// as in ref::maxpool2d_*) in a form the compiler vectorizes, split across threads like the cpu::
// ops; with --elementwise fast the step uses them, to estimate the step once the trainer has
// fast CPU versions of these ops.
void relu_forward_fast(float* out, const float* inp, long long n) {
#pragma omp parallel for simd schedule(static) if (n >= (1 << 16))
  for (long long i = 0; i < n; i++) out[i] = inp[i] > 0.f ? inp[i] : 0.f;
}
void relu_backward_fast(float* dinp, const float* dout, const float* inp, long long n) {
#pragma omp parallel for simd schedule(static) if (n >= (1 << 16))
  for (long long i = 0; i < n; i++) {
    const float g = dout[i];  // loaded unconditionally: a select, not a branch on the sign
    dinp[i] = inp[i] > 0.f ? g : 0.f;
  }
}
// 2x2 windows, stride 2 (the paper net's maxpool(2)).
void maxpool2x2_forward_fast(float* out, int32_t* mask, const float* inp, const Pool2dShape& s) {
#pragma omp parallel for schedule(static)
  for (int plane = 0; plane < s.N * s.C; plane++) {
    const float* x = inp + (long long)plane * s.H * s.W;  // (H, W)
    float* o = out + (long long)plane * s.OH * s.OW;      // (OH, OW)
    int32_t* m = mask + (long long)plane * s.OH * s.OW;
    for (int oh = 0; oh < s.OH; oh++)
      for (int ow = 0; ow < s.OW; ow++) {
        int i0 = 2 * oh * s.W + 2 * ow, best = i0;
        for (int idx : {i0 + 1, i0 + s.W, i0 + s.W + 1})
          if (x[idx] > x[best]) best = idx;
        o[oh * s.OW + ow] = x[best];
        m[oh * s.OW + ow] = best;
      }
  }
}
void maxpool2x2_backward_fast(float* dinp, const float* dout, const int32_t* mask, const Pool2dShape& s) {
#pragma omp parallel for schedule(static)
  for (int plane = 0; plane < s.N * s.C; plane++) {
    float* d = dinp + (long long)plane * s.H * s.W;
    const float* g = dout + (long long)plane * s.OH * s.OW;
    const int32_t* m = mask + (long long)plane * s.OH * s.OW;
    std::fill(d, d + s.H * s.W, 0.f);
    for (int o = 0; o < s.OH * s.OW; o++) d[m[o]] = g[o];  // disjoint windows: one writer per pixel
  }
}

// One SGD-momentum training step of `paper` = conv(32,5,pad=2) relu maxpool(2) dense(128) relu
// dense(10), softmax cross-entropy, batch B, on a synthetic uint8 data set of 60,000 images:
// the work the CPU trainer does per step once its conv/dense layers call cpu::. Prints the
// median of each stage and of the whole step, and the epoch time it implies.
void time_paper_step(const Options& o, bool fast_elementwise) {
  const int B = o.batch, P = 28 * 28, n_train = 60000;
  Conv2dShape cs = make_conv2d_shape(B, 1, 28, 28, 32, 5, 5, 1, 2, "conv(32,5,pad=2)");
  Pool2dShape ps = make_pool2d_shape(B, 32, 28, 28, 2, 2, 2, "maxpool(2)");
  const int F = 32 * 14 * 14, H1 = 128, K = 10;
  Rng rng(7);
  std::vector<uint8_t> images((size_t)n_train * P), labels(n_train);
  for (auto& x : images) x = uint8_t(rng.next_u64() & 255);
  for (auto& y : labels) y = uint8_t(rng.next_u64() % 10);
  std::vector<int32_t> perm = ref::epoch_permutation(n_train, 1, 0);
  // parameters, gradients and momentum in one flat buffer each, as the trainer keeps them
  const size_t n_cw = 32 * 25, n_cb = 32, n_w1 = (size_t)H1 * F, n_b1 = H1, n_w2 = (size_t)K * H1, n_b2 = K;
  const size_t n_params = n_cw + n_cb + n_w1 + n_b1 + n_w2 + n_b2;
  std::vector<float> params = random_floats(n_params, 11, 0.02f), grads(n_params), mom(n_params);
  float *cw = params.data(), *cb = cw + n_cw, *w1 = cb + n_cb, *b1 = w1 + n_w1, *w2 = b1 + n_b1, *b2 = w2 + n_w2;
  float *dcw = grads.data(), *dcb = dcw + n_cw, *dw1 = dcb + n_cb, *db1 = dw1 + n_w1, *dw2 = db1 + n_b1,
        *db2 = dw2 + n_w2;
  std::vector<float> x((size_t)B * P), c((size_t)B * F * 4), a((size_t)B * F * 4), pool((size_t)B * F),
      h((size_t)B * H1), ha((size_t)B * H1), logits((size_t)B * K), loss(B), dlogits((size_t)B * K),
      dha((size_t)B * H1), dh((size_t)B * H1), dpool((size_t)B * F), da((size_t)B * F * 4), dc((size_t)B * F * 4);
  std::vector<int32_t> y(B), mask((size_t)B * F), correct(B);
  OptimConfig opt;
  opt.lr = 0.01f, opt.momentum = 0.9f;
  const Activation relu{Act::Relu, 0.f};
  long long step = 0;
  int batch_i = 0;

  struct Stage {
    const char* name;
    std::function<void()> fn;
  };
  std::vector<Stage> stages = {
      {"gather_normalize",
       [&] {
         int start = (batch_i++ % (n_train / B)) * B;
         ref::gather_normalize(x.data(), y.data(), images.data(), labels.data(), perm.data() + start, B, P, 0.286f,
                               0.353f);
       }},
      {"conv forward (cpu)", [&] { cpu::conv2d_forward(c.data(), x.data(), cw, cb, cs); }},
      {"relu forward",
       [&] {
         if (fast_elementwise)
           relu_forward_fast(a.data(), c.data(), cs.out_numel());
         else
           ref::activation_forward(a.data(), c.data(), cs.out_numel(), relu);
       }},
      {"maxpool forward",
       [&] {
         if (fast_elementwise)
           maxpool2x2_forward_fast(pool.data(), mask.data(), a.data(), ps);
         else
           ref::maxpool2d_forward(pool.data(), mask.data(), a.data(), ps);
       }},
      {"dense1 forward (cpu)", [&] { cpu::dense_forward(h.data(), pool.data(), w1, b1, B, F, H1); }},
      {"relu forward", [&] { ref::activation_forward(ha.data(), h.data(), (long long)B * H1, relu); }},
      {"dense2 forward (cpu)", [&] { cpu::dense_forward(logits.data(), ha.data(), w2, b2, B, H1, K); }},
      {"loss",
       [&] {
         ref::loss_forward_backward(loss.data(), dlogits.data(), correct.data(), logits.data(), y.data(), B, K,
                                    Loss::SoftmaxCrossEntropy, 1.f / B);
       }},
      {"dense2 backward (cpu)",
       [&] {
         cpu::dense_backward_weight(dw2, db2, dlogits.data(), ha.data(), B, H1, K);
         cpu::dense_backward_input(dha.data(), dlogits.data(), w2, B, H1, K);
       }},
      {"relu backward",
       [&] { ref::activation_backward(dh.data(), dha.data(), h.data(), ha.data(), (long long)B * H1, relu); }},
      {"dense1 backward_weight (cpu)", [&] { cpu::dense_backward_weight(dw1, db1, dh.data(), pool.data(), B, F, H1); }},
      {"dense1 backward_input (cpu)", [&] { cpu::dense_backward_input(dpool.data(), dh.data(), w1, B, F, H1); }},
      {"maxpool backward",
       [&] {
         if (fast_elementwise)
           maxpool2x2_backward_fast(da.data(), dpool.data(), mask.data(), ps);
         else
           ref::maxpool2d_backward(da.data(), dpool.data(), mask.data(), ps);
       }},
      {"relu backward",
       [&] {
         if (fast_elementwise)
           relu_backward_fast(dc.data(), da.data(), c.data(), cs.out_numel());
         else
           ref::activation_backward(dc.data(), da.data(), c.data(), a.data(), cs.out_numel(), relu);
       }},
      {"conv backward_weight (cpu)", [&] { cpu::conv2d_backward_weight(dcw, dcb, dc.data(), x.data(), cs); }},
      {"sgd momentum step",
       [&] {
         ref::optimizer_step(params.data(), grads.data(), mom.data(), static_cast<float*>(nullptr), n_params, opt,
                             ++step);
       }},
  };
  // Per stage: run the whole step reps times, timing each stage inside it (so every stage sees
  // the caches as they are in a real step).
  std::vector<std::vector<double>> t(stages.size());
  std::vector<double> total;
  for (int r = 0; r < o.reps + 1; r++) {
    double t_step = 0;
    for (size_t i = 0; i < stages.size(); i++) {
      double t0 = now_ms();
      stages[i].fn();
      double dt = now_ms() - t0;
      t_step += dt;
      if (r > 0) t[i].push_back(dt);  // r == 0 warms up
    }
    if (r > 0) total.push_back(t_step);
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::printf("\npaper net training step, batch %d, ReLU/max pool %s (median of %d steps):\n", B,
              fast_elementwise ? "by the lab's vectorized stand-ins" : "by ref::", o.reps);
  double sum_medians = 0;
  for (size_t i = 0; i < stages.size(); i++) {
    double m = median(t[i]);
    sum_medians += m;
    std::printf("  %-30s %8.3f ms\n", stages[i].name, m);
  }
  double step_ms = median(total);
  int steps = n_train / B;  // drop_last
  std::printf("  %-30s %8.3f ms  (sum of stage medians %.3f ms)\n", "whole step", step_ms, sum_medians);
  std::printf("  epoch estimate: %d steps x %.3f ms = %.2f s  (%.0f images/s)\n", steps, step_ms, steps * step_ms / 1e3,
              B / (step_ms / 1e3));
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError("cpu_lab: " + a + " needs a value");
      return argv[++i];
    };
    if (a == "--batch")
      o.batch = std::atoi(value().c_str());
    else if (a == "--reps")
      o.reps = std::atoi(value().c_str());
    else if (a == "--ref-reps")
      o.ref_reps = std::atoi(value().c_str());
    else if (a == "--threads")
      o.threads = std::atoi(value().c_str());
    else if (a == "--isa")
      o.isa = value();
    else if (a == "--no-ref")
      o.ref = false;
    else if (a == "--step-only")
      o.step_only = true;
    else if (a == "--elementwise") {
      o.elementwise = value();
      if (o.elementwise != "ref" && o.elementwise != "fast" && o.elementwise != "both")
        throw UsageError("cpu_lab: --elementwise must be ref, fast or both, got " + o.elementwise);
    } else if (a == "--clock") {
      std::string c = value();
      if (c != "wall" && c != "cpu") throw UsageError("cpu_lab: --clock must be wall or cpu, got " + c);
      o.cpu_clock = c == "cpu";
    } else
      throw UsageError(
          "cpu_lab: unknown option " + a +
          " (options: --batch N --reps N --ref-reps N --threads N --isa avx512|avx2|generic --no-ref --step-only "
          "--clock wall|cpu --elementwise ref|fast|both)");
  }
  if (o.batch < 1 || o.reps < 1 || o.ref_reps < 1)
    throw UsageError("cpu_lab: --batch, --reps, --ref-reps must be >= 1");
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Options o = parse(argc, argv);
    if (o.threads > 0) omp_set_num_threads(o.threads);
    g_cpu_clock = o.cpu_clock;
    if (o.isa == "generic")
      cpu::set_cpu_isa(cpu::CpuIsa::Generic);
    else if (o.isa == "avx2")
      cpu::set_cpu_isa(cpu::CpuIsa::Avx2);
    else if (o.isa == "avx512")
      cpu::set_cpu_isa(cpu::CpuIsa::Avx512);
    else if (!o.isa.empty())
      throw UsageError("cpu_lab: --isa must be avx512, avx2 or generic, got " + o.isa);
    std::printf("barecnn cpu lab: batch %d, %d threads, isa %s, median of %d (cpu) / %d (ref) runs, %s clock\n",
                o.batch, omp_get_max_threads(), cpu::cpu_isa_name(cpu::cpu_isa()), o.reps, o.ref_reps,
                o.cpu_clock ? "process CPU" : "wall");
    if (!o.step_only) {
      print_header();
      const std::vector<ConvLayer> convs = {
          {"paper conv(32,5,pad=2)", 1, 28, 28, 32, 5, 2}, {"lenet5 conv(6,5,pad=2)", 1, 28, 28, 6, 5, 2},
          {"lenet5 conv(16,5)", 6, 14, 14, 16, 5, 0},      {"deep conv(32,3,pad=1)", 1, 28, 28, 32, 3, 1},
          {"deep conv(32,3,pad=1)", 32, 28, 28, 32, 3, 1}, {"deep conv(64,3,pad=1)", 32, 14, 14, 64, 3, 1},
          {"deep conv(64,3,pad=1)", 64, 14, 14, 64, 3, 1},
      };
      for (auto& L : convs) time_conv(L, o);
      const std::vector<DenseLayer> denses = {
          {"paper dense(128)", 6272, 128}, {"paper dense(10)", 128, 10},    {"deep dense(256)", 3136, 256},
          {"deep dense(10)", 256, 10},     {"lenet5 dense(120)", 400, 120}, {"lenet5 dense(84)", 120, 84},
      };
      for (auto& L : denses) time_dense(L, o);
    }
    if (o.elementwise != "fast") time_paper_step(o, false);
    if (o.elementwise != "ref") time_paper_step(o, true);
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return e.exit_code();
  }
}
