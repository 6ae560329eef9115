// `barecnn bench` and what it stands on: the cost (FLOPs and fewest bytes) of each kind of layer on
// hand-computed cases, the JSON that `bench --json` writes, how a layer's calls are stretched over
// 10 ms (on a made-up clock), the CPU's peak probe (its ISA, finite cached values) and on a GPU the
// plausibility of the measured peaks. (The device-memory bookkeeping it reports is tested in
// test_device_buffer.cpp.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <vector>

#include "barecnn/cpu_ops.h"
#include "barecnn/fileutil.h"
#include "barecnn/layer.h"
#include "barecnn/net.h"
#include "barecnn/peak.h"
#include "barecnn/stretch.h"
#include "test_gpu.h"
#include "test_util.h"

using namespace barecnn;
using nlohmann::json;

namespace {

using Result = test::CommandResult;
// The barecnn executable of this build with `args`.
Result run(const std::string& args) { return test::run_command(test::barecnn_exe() + " " + args); }

}  // namespace

// ---- the cost of each kind of layer (Layer::cost), hand-computed; 4 bytes per float -----------

// conv(3,3,stride=2,pad=1) on N=3 inputs of 2x5x7: output 3 x 3x4 (eq. 2.1: (5-3+2)/2+1 = 3,
// (7-3+2)/2+1 = 4). x = 3*2*5*7 = 210, y = 3*3*3*4 = 108, W = 3*2*3*3 = 54, b = 3.
TEST(LayerCost, Conv) {
  Net net("conv(3,3,stride=2,pad=1)", {2, 5, 7});
  ASSERT_EQ(net.layer(0).out_dims(), (Dims{3, 3, 4}));
  LayerCost c = net.layer(0).cost(3, true);
  EXPECT_EQ(c.forward.bytes, 1500.0);   // read x 210, W 54, b 3; write y 108: 4 * 375
  EXPECT_EQ(c.backward.bytes, 2556.0);  // read dy 108, x 210, W 54; write dW 54, db 3, dx 210: 4 * 639
  // 108 outputs, each a sum over C*kh*kw = 18 taps: 1944 multiply-adds.
  EXPECT_EQ(c.forward.flops, 3888.0);
  EXPECT_EQ(c.backward.flops, 7776.0);  // dW and dx, as many each as the forward
  LayerCost first = net.layer(0).cost(3, false);
  EXPECT_EQ(first.forward.bytes, 1500.0);
  EXPECT_EQ(first.backward.bytes, 1500.0);  // read dy, x; write dW, db: no W read, no dx written
  EXPECT_EQ(first.backward.flops, 3888.0);  // dW only
}

// maxpool(2) on N=3 x 2x5x7: output 2x3 per plane (the last row and column are left out), so
// x = 210, y = 3*2*2*3 = 36, and the int32 mask has 36 entries.
TEST(LayerCost, MaxPool) {
  Net net("maxpool(2)", {2, 5, 7});
  ASSERT_EQ(net.layer(0).out_dims(), (Dims{2, 2, 3}));
  LayerCost c = net.layer(0).cost(3, true);
  EXPECT_EQ(c.forward.bytes, 1128.0);   // read x 210; write y 36 and the mask 36
  EXPECT_EQ(c.backward.bytes, 1128.0);  // read dy 36 and the mask 36; write dx 210
  EXPECT_EQ(c.forward.flops, 36.0);     // one op per output
  EXPECT_EQ(c.backward.flops, 210.0);   // one per input gradient
  LayerCost first = net.layer(0).cost(3, false);
  EXPECT_EQ(first.backward.bytes, 0.0);  // no parameters, no dx: nothing to do
  EXPECT_EQ(first.backward.flops, 0.0);
}

TEST(LayerCost, AvgAndL2Pool) {
  Net avg("avgpool(2)", {2, 5, 7}), l2("l2pool(2)", {2, 5, 7});
  EXPECT_EQ(avg.layer(0).cost(3, true).forward.bytes, 984.0);   // read x 210, write y 36
  EXPECT_EQ(avg.layer(0).cost(3, true).backward.bytes, 984.0);  // read dy 36, write dx 210
  EXPECT_EQ(l2.layer(0).cost(3, true).forward.bytes, 984.0);
  EXPECT_EQ(l2.layer(0).cost(3, true).backward.bytes, 1968.0);  // also reads x 210 and y 36
  EXPECT_EQ(l2.layer(0).cost(3, false).backward.bytes, 0.0);
  EXPECT_EQ(avg.layer(0).cost(3, false).backward.bytes, 0.0);
}

// relu on 3 x 2x5x7 = 210 elements: read x, write y; backward read dy and x, write dx.
TEST(LayerCost, Relu) {
  Net net("relu", {2, 5, 7});
  LayerCost c = net.layer(0).cost(3, true);
  EXPECT_EQ(c.forward.bytes, 1680.0);
  EXPECT_EQ(c.backward.bytes, 2520.0);
  EXPECT_EQ(c.forward.flops, 210.0);
  EXPECT_EQ(c.backward.flops, 210.0);
  EXPECT_EQ(net.layer(0).cost(3, false).backward.bytes, 0.0);
}

// batchnorm over 2x5x7 (N=3: 210 elements): forward reads x and writes y, 5 FLOPs each; backward
// reads dy and x, and with need_din writes dx. dropout: an elementwise layer (the mask is drawn
// again, not stored).
TEST(LayerCost, BatchNormAndDropout) {
  Net net("batchnorm dropout(0.5)", {2, 5, 7});
  LayerCost c = net.layer(0).cost(3, true);
  EXPECT_EQ(c.forward.bytes, 1680.0);
  EXPECT_EQ(c.forward.flops, 1050.0);
  EXPECT_EQ(c.backward.bytes, 2520.0);
  EXPECT_EQ(net.layer(0).cost(3, false).backward.bytes, 1680.0);  // dgamma, dbeta still need dy and x
  LayerCost d = net.layer(1).cost(3, true);
  EXPECT_EQ(d.forward.bytes, 1680.0);
  EXPECT_EQ(d.backward.bytes, 2520.0);
}

// softmax over 4 features of N=3 samples, 12 elements: read x, write y; backward read dy and y,
// write dx.
TEST(LayerCost, Softmax) {
  Net net("dense(4) softmax", {1, 1, 6});  // flatten, dense(4), softmax
  ASSERT_EQ(net.layer(2).spec(), "softmax");
  LayerCost c = net.layer(2).cost(3, true);
  EXPECT_EQ(c.forward.bytes, 96.0);
  EXPECT_EQ(c.backward.bytes, 144.0);
}

// dense(5) on N=3 inputs of 7 (a 7x1x1 image, flattened first): x 21, y 15, W 35, b 5.
TEST(LayerCost, Dense) {
  Net net("dense(5)", {7, 1, 1});
  ASSERT_EQ(net.layer(1).spec(), "dense(5)");
  LayerCost c = net.layer(1).cost(3, true);
  EXPECT_EQ(c.forward.bytes, 304.0);   // read x 21, W 35, b 5; write y 15: 4 * 76
  EXPECT_EQ(c.backward.bytes, 528.0);  // read dy 15, x 21, W 35; write dW 35, db 5, dx 21: 4 * 132
  EXPECT_EQ(c.forward.flops, 210.0);   // 3 samples x 35 weights, 2 FLOPs each
  EXPECT_EQ(c.backward.flops, 420.0);  // dW and dx
  EXPECT_EQ(net.layer(1).cost(3, false).backward.bytes, 304.0);  // read dy, x; write dW, db
}

// flatten (when it runs, as the last layer: a copy) of 3 x 2x5x7: reads and writes 210 each way.
TEST(LayerCost, FlattenCopy) {
  Net net("flatten", {2, 5, 7});
  LayerCost c = net.layer(0).cost(3, true);
  EXPECT_EQ(c.forward.bytes, 1680.0);
  EXPECT_EQ(c.backward.bytes, 1680.0);
  EXPECT_EQ(c.forward.flops + c.backward.flops, 0.0);
  EXPECT_EQ(net.layer(0).cost(3, false).backward.bytes, 0.0);
}

// ---- barecnn bench --json ------------------------------------------------------------------------

// The paper net at batch 2, input 1x28x28. Hand-computed: conv(32,5,pad=2) reads x 2*784 = 1568,
// W 800, b 32 and writes y 2*32*28*28 = 50176; it is the first layer, so its backward reads dy and
// x and writes dW, db (no dx). maxpool(2): in 50176, out 12544 (+ mask). dense(128): in 2*6272 =
// 12544, W 802816, b 128, out 256, with dx.
TEST(BenchCli, JsonHasEveryLayerAndTheExpectedFigures) {
  std::string dir = test::fresh_dir("bench_json");
  std::string path = dir + "/bench.json";
  Result r = run("bench --device cpu --arch paper --batch 2 --reps 1 --fuse off --json " + path);
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("dense(128)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("GB/s"), std::string::npos) << r.out;
  json j = json::parse(read_file(path, "bench json"));

  EXPECT_EQ(j["device"], "cpu");
  EXPECT_FALSE(j["device_name"].get<std::string>().empty());
  EXPECT_EQ(j["batch"], 2);
  EXPECT_EQ(j["reps"], 1);
  EXPECT_EQ(j["input"], "1x28x28");
  EXPECT_EQ(j["arch"], "conv(32,5,pad=2) relu maxpool(2) flatten dense(128) relu dense(10)");
  EXPECT_TRUE(j["peak_device_memory_bytes"].is_null());
  // The CPU's measured peaks, on the threads the ops get, and every rate as a fraction of them.
  ASSERT_TRUE(j["peaks"].is_object()) << j.dump(2);
  const double pf = j["peaks"]["fp32_flops_per_s"].get<double>(), pb = j["peaks"]["bytes_per_s"].get<double>();
  EXPECT_TRUE(std::isfinite(pf) && pf > 0) << pf;
  EXPECT_TRUE(std::isfinite(pb) && pb > 0) << pb;
  EXPECT_EQ(j["peaks"]["isa"], cpu::peak_isa());
  EXPECT_EQ(j["peaks"]["gemm_isa"], cpu::cpu_isa_name(cpu::cpu_isa()));
  EXPECT_NE(r.out.find(std::string("GEMM kernels (conv, dense): ") + cpu::cpu_isa_name(cpu::cpu_isa()) + "\n"),
            std::string::npos)
      << r.out;
  EXPECT_GE(j["peaks"]["threads"].get<int>(), 1);
  EXPECT_NE(r.out.find("measured peaks:"), std::string::npos) << r.out;
  const int threads = j["peaks"]["threads"].get<int>();
  EXPECT_NE(r.out.find(std::string("GFLOP/s FP32 FMA (") + cpu::peak_isa() + ", " + std::to_string(threads) +
                       (threads == 1 ? " thread)" : " threads)")),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("fwd GFLOP/s (peak)"), std::string::npos) << r.out;

  const std::vector<std::string> specs = {"conv(32,5,pad=2)", "relu", "maxpool(2)", "flatten",
                                          "dense(128)",       "relu", "dense(10)"};
  ASSERT_EQ(j["layers"].size(), specs.size()) << j.dump(2);
  double fwd_bytes = 0, fwd_ms = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const json& l = j["layers"][i];
    EXPECT_EQ(l["index"], int(i));
    EXPECT_EQ(l["spec"], specs[i]);
    if (specs[i] == "flatten") {  // a view: the dense layer reads the pooled maps; no work, no bytes
      EXPECT_EQ(l["note"], "a view");
      for (const char* dir : {"forward", "backward"}) {
        EXPECT_EQ(l[dir]["ms"].get<double>() + l[dir]["bytes"].get<double>(), 0.0) << dir;
        EXPECT_EQ(l[dir]["calls"], 0) << dir;  // not timed
      }
      continue;
    }
    EXPECT_EQ(l["note"], "");
    for (const char* dir : {"forward", "backward"}) {
      EXPECT_GT(l[dir]["ms"].get<double>(), 0) << specs[i] << " " << dir;
      // The mean is of at least --reps calls, timed over at least 10 ms (at batch 2 each layer's
      // call is tens of microseconds, so one call alone would fail this). How many calls it took
      // depends on the host's load (one call can last 20 ms on a busy CI machine): the stretching
      // itself is tested below with a made-up clock.
      const long long calls = l[dir]["calls"].get<long long>();
      EXPECT_GE(calls, 1) << specs[i] << " " << dir;
      EXPECT_GE(double(calls) * l[dir]["ms"].get<double>(), 10.0 * (1 - 1e-9)) << specs[i] << " " << dir;
      EXPECT_GT(l[dir]["bytes"].get<double>(), 0) << specs[i] << " " << dir;
      EXPECT_NEAR(l[dir]["bytes_per_s"].get<double>(),
                  l[dir]["bytes"].get<double>() / (l[dir]["ms"].get<double>() * 1e-3),
                  1e-9 * l[dir]["bytes_per_s"].get<double>());
      EXPECT_NEAR(l[dir]["flops_fraction_of_peak"].get<double>(), l[dir]["flops_per_s"].get<double>() / pf,
                  1e-9 * (1 + l[dir]["flops_fraction_of_peak"].get<double>()))
          << specs[i] << " " << dir;
      EXPECT_NEAR(l[dir]["bytes_fraction_of_peak"].get<double>(), l[dir]["bytes_per_s"].get<double>() / pb,
                  1e-9 * (1 + l[dir]["bytes_fraction_of_peak"].get<double>()))
          << specs[i] << " " << dir;
    }
    fwd_bytes += l["forward"]["bytes"].get<double>();
    fwd_ms += l["forward"]["ms"].get<double>();
  }
  const json& conv = j["layers"][0];
  EXPECT_EQ(conv["output"], "32x28x28");
  EXPECT_EQ(conv["forward"]["bytes"].get<double>(), 4.0 * (1568 + 800 + 32 + 50176));
  EXPECT_EQ(conv["backward"]["bytes"].get<double>(), 4.0 * (50176 + 1568 + 800 + 32));
  EXPECT_EQ(conv["forward"]["flops"].get<double>(), 2.0 * 2 * 32 * 28 * 28 * 25);
  EXPECT_EQ(conv["backward"]["flops"].get<double>(), 2.0 * 2 * 32 * 28 * 28 * 25);  // weight gradient only
  const json& pool = j["layers"][2];
  EXPECT_EQ(pool["forward"]["bytes"].get<double>(), 4.0 * (50176 + 12544 + 12544));
  EXPECT_EQ(pool["backward"]["bytes"].get<double>(), 4.0 * (12544 + 12544 + 50176));
  const json& relu = j["layers"][1];
  EXPECT_EQ(relu["forward"]["bytes"].get<double>(), 4.0 * 2 * 50176);
  EXPECT_EQ(relu["backward"]["bytes"].get<double>(), 4.0 * 3 * 50176);
  const json& dense = j["layers"][4];
  EXPECT_EQ(dense["forward"]["bytes"].get<double>(), 4.0 * (12544 + 802816 + 128 + 256));
  EXPECT_EQ(dense["backward"]["bytes"].get<double>(), 4.0 * (256 + 12544 + 802816 + 128 + 802816 + 12544));
  EXPECT_EQ(dense["forward"]["flops"].get<double>(), 2.0 * 2 * 6272 * 128);
  EXPECT_EQ(dense["backward"]["flops"].get<double>(), 2 * 2.0 * 2 * 6272 * 128);  // dW and dx

  const json& t = j["totals"];
  EXPECT_DOUBLE_EQ(t["forward"]["bytes"].get<double>(), fwd_bytes);
  EXPECT_NEAR(t["forward"]["ms"].get<double>(), fwd_ms, 1e-12 * fwd_ms);
  double step = t["forward_backward_step_ms"].get<double>();
  EXPECT_GT(step, 0);
  EXPECT_NEAR(t["images_per_s"].get<double>(), 2 / (step * 1e-3), 1e-9 * t["images_per_s"].get<double>());
  // The whole training step (loss and optimizer too) is what the epoch is estimated from; the CPU
  // has no CUDA Graph variant.
  ASSERT_TRUE(t.contains("train_step_ms")) << t.dump(1);
  double train_step = t["train_step_ms"].get<double>();
  EXPECT_GT(train_step, 0);
  EXPECT_NEAR(t["train_images_per_s"].get<double>(), 2 / (train_step * 1e-3), 1e-9 * 2 / (train_step * 1e-3));
  EXPECT_NEAR(t["epoch_s"].get<double>(), 60000.0 / 2 * train_step * 1e-3, 1e-9 * t["epoch_s"].get<double>());
  EXPECT_FALSE(t.contains("train_step_graph_ms"));
  EXPECT_NEAR(t["forward"]["flops_fraction_of_peak"].get<double>(), t["forward"]["flops_per_s"].get<double>() / pf,
              1e-9 * (1 + t["forward"]["flops_fraction_of_peak"].get<double>()));
}

// ---- how bench stretches a layer's calls (barecnn/stretch.h), on a made-up clock ----------------

namespace {

// A clock where every call takes `per_call` ms; records the stretches asked for.
struct FakeCalls {
  double per_call;
  std::vector<long long> stretches;
  double operator()(long long n) {
    stretches.push_back(n);
    return per_call * double(n);
  }
};

}  // namespace

// 1 ms calls, 1 rep: 1 call (1 ms, too short), then as many as fill 1.25 x 10 ms: 13.
TEST(BenchStretch, ShortCallsAreTimedOverTheMinimum) {
  FakeCalls f{1.0, {}};
  Stretch s = time_stretch(1, 10.0, 1'000'000, f);
  EXPECT_EQ(f.stretches, (std::vector<long long>{1, 13}));
  EXPECT_EQ(s.calls, 13);
  EXPECT_DOUBLE_EQ(s.ms_per_call, 1.0);
}

// A stretch at least twice the last one even where the rate seen asks for fewer.
TEST(BenchStretch, EachNewStretchIsAtLeastTwiceTheLast) {
  // 7 calls of 1 ms: 7 ms; 1.25 x 10 ms at 1 ms a call would be 13 calls, twice 7 is 14.
  FakeCalls f{1.0, {}};
  Stretch s = time_stretch(7, 10.0, 1'000'000, f);
  EXPECT_EQ(f.stretches, (std::vector<long long>{7, 14}));
  EXPECT_EQ(s.calls, 14);
}

// Calls slower than the minimum (or as slow as it): the reps asked for, one stretch.
TEST(BenchStretch, SlowCallsAreTimedOverTheRepsAlone) {
  for (long long reps : {1LL, 5LL}) {
    FakeCalls f{20.0, {}};
    Stretch s = time_stretch(reps, 10.0, 1'000'000, f);
    EXPECT_EQ(f.stretches, (std::vector<long long>{reps}));
    EXPECT_EQ(s.calls, reps);
    EXPECT_DOUBLE_EQ(s.ms_per_call, 20.0);
  }
  FakeCalls exact{10.0, {}};
  EXPECT_EQ(time_stretch(1, 10.0, 1'000'000, exact).calls, 1);
}

// Calls the clock cannot see (0 ms): the stretch grows to max_calls and stops there.
TEST(BenchStretch, StopsAtMaxCalls) {
  FakeCalls f{0.0, {}};
  Stretch s = time_stretch(3, 10.0, 5000, f);
  EXPECT_EQ(s.calls, 5000);
  EXPECT_EQ(f.stretches.back(), 5000);
  EXPECT_EQ(f.stretches.size(), 2u);  // 3, then at once the cap (the rate seen asks for far more)
  EXPECT_EQ(s.ms_per_call, 0.0);
}

// Only the last stretch counts: a first stretch slowed by an interruption (9 ms for 1 call) and
// then 0.1 ms calls end with a stretch of at least 10 ms at 0.1 ms a call.
TEST(BenchStretch, OnlyTheLastStretchCounts) {
  std::vector<long long> seen;
  auto calls = [&](long long n) {
    seen.push_back(n);
    return seen.size() == 1 ? 9.0 : 0.1 * double(n);
  };
  Stretch s = time_stretch(1, 10.0, 1'000'000, calls);
  EXPECT_DOUBLE_EQ(s.ms_per_call, 0.1);
  EXPECT_GE(0.1 * double(s.calls), 10.0);
  // 9 ms for 1 call asks for 2 (twice 1); 0.2 ms for 2 asks for 2 x 12.5 / 0.2 = 125: 12.5 ms.
  EXPECT_EQ(seen, (std::vector<long long>{1, 2, 125}));
}

// ---- the CPU's peak probe ------------------------------------------------------------------------

// The probe runs on the widest vector ISA the CPU reports; its figures are finite, positive,
// cached per thread count, and below what that ISA could do at 10 GHz with two FMA pipes of full
// width per core (AVX-512: 16 lanes, AVX2: 8, SSE2: 4; 2 FLOPs each). A loop the compiler dropped
// or a miscounted FLOP lands above the bound.
TEST(PeakCpu, UsesTheWidestIsaAndGivesCachedFiniteFigures) {
  __builtin_cpu_init();
  const std::string want = __builtin_cpu_supports("avx512f")                                 ? "avx512f"
                           : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? "avx2+fma"
                                                                                             : "sse2";
  EXPECT_EQ(cpu::peak_isa(), want);
  const int lanes = want == "avx512f" ? 16 : want == "avx2+fma" ? 8 : 4;
  for (int threads : {1, 2}) {
    const double flops = cpu::measure_peak_fp32_flops(threads);
    EXPECT_TRUE(std::isfinite(flops) && flops > 0) << threads << " threads: " << flops;
    EXPECT_LT(flops, threads * 2.0 * lanes * 2.0 * 10e9) << threads << " threads";
    const double bw = cpu::measure_peak_bandwidth(threads);
    EXPECT_TRUE(std::isfinite(bw) && bw > 0) << threads << " threads: " << bw;
    EXPECT_EQ(cpu::measure_peak_fp32_flops(threads), flops);  // cached: the same number, not a new run
    EXPECT_EQ(cpu::measure_peak_bandwidth(threads), bw);
    std::printf("%d threads, %s: %.1f GFLOP/s FP32, %.1f GB/s\n", threads, want.c_str(), flops / 1e9, bw / 1e9);
  }
  EXPECT_THROW(cpu::measure_peak_fp32_flops(0), Error);
}

// On the CPU --fuse auto (the default) fuses each conv with the plain ReLU after it: the conv's row
// says "+ relu" and carries both layers' cost, the ReLU's row says "in the conv" and takes no time.
TEST(BenchCli, CpuFusesConvAndReluByDefault) {
  std::string dir = test::fresh_dir("bench_fused");
  std::string path = dir + "/bench.json";
  // conv 0 applies the relu and the max pooling after it; conv 4 its relu (an average pooling is
  // not fused).
  Result r =
      run("bench --device cpu --arch \"conv(4,3) relu maxpool(2) conv(3,3,pad=1) relu avgpool(2) dense(10)\" "
          "--batch 2 --reps 1 --json " +
          path);
  ASSERT_EQ(r.rc, 0) << r.out;
  json j = json::parse(read_file(path, "bench json"));
  ASSERT_EQ(j["layers"].size(), 8u) << j.dump(2);
  EXPECT_EQ(j["layers"][0]["note"], "+ relu + maxpool");
  EXPECT_EQ(j["layers"][3]["note"], "+ relu");
  for (int i : {1, 2, 4}) {
    EXPECT_EQ(j["layers"][i]["note"], "in the conv") << i;
    EXPECT_EQ(j["layers"][i]["forward"]["ms"].get<double>() + j["layers"][i]["backward"]["ms"].get<double>(), 0.0) << i;
  }
  EXPECT_EQ(j["layers"][5]["note"], "");
  EXPECT_GT(j["layers"][0]["forward"]["ms"].get<double>(), 0.0);
  EXPECT_NE(r.out.find("(+ relu + maxpool)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("(+ relu)"), std::string::npos) << r.out;
}
// batchnorm and dropout get rows of their own, timed in training mode.
TEST(BenchCli, BatchNormAndDropoutRows) {
  std::string dir = test::fresh_dir("bench_bn");
  std::string path = dir + "/bench.json";
  Result r =
      run("bench --device cpu --arch \"conv(4,3) batchnorm relu dropout(0.3) dense(10)\" --batch 4 --reps 2 --json " +
          path);
  ASSERT_EQ(r.rc, 0) << r.out;
  json j = json::parse(read_file(path, "bench json"));
  ASSERT_EQ(j["layers"].size(), 6u) << j.dump(2);
  EXPECT_EQ(j["layers"][1]["spec"], "batchnorm");
  EXPECT_EQ(j["layers"][3]["spec"], "dropout(0.3)");
  for (int i : {1, 3}) {
    EXPECT_GT(j["layers"][i]["forward"]["ms"].get<double>(), 0.0) << i;
    EXPECT_GT(j["layers"][i]["forward"]["flops"].get<double>(), 0.0) << i;
  }
}

TEST(BenchCli, BadJsonPathFailsBeforeBenchmarking) {
  std::string dir = test::fresh_dir("bench_bad_json");
  test::spit(dir + "/file", "x");
  Result r = run("bench --device cpu --arch paper --batch 2 --reps 1 --json " + dir + "/file/out.json");
  EXPECT_EQ(r.rc, 2) << r.out;
  EXPECT_NE(r.out.find("--json"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("forward+backward"), std::string::npos) << "benchmarked anyway:\n" << r.out;

  Result d = run("bench --device cpu --arch paper --batch 2 --reps 1 --json " + dir);
  EXPECT_EQ(d.rc, 2) << d.out;
  EXPECT_NE(d.out.find("is a folder"), std::string::npos) << d.out;

  Result reps = run("bench --device cpu --reps 0");
  EXPECT_EQ(reps.rc, 2) << reps.out;
  EXPECT_NE(reps.out.find("--reps must be >= 1, got 0"), std::string::npos) << reps.out;
}

// --threads sets the threads of the ops and of the measured peaks (as train's --threads); out of
// range it is refused, naming the flag, before anything is measured.
TEST(BenchCli, ThreadsFlagSetsTheThreads) {
  std::string dir = test::fresh_dir("bench_threads");
  std::string path = dir + "/bench.json";
  Result r = run("bench --device cpu --arch \"conv(2,3) relu dense(3)\" --batch 2 --reps 1 --threads 1 --json " + path);
  ASSERT_EQ(r.rc, 0) << r.out;
  json j = json::parse(read_file(path, "bench json"));
  EXPECT_EQ(j["peaks"]["threads"], 1) << j.dump(2);
  EXPECT_NE(r.out.find("(" + std::string(cpu::peak_isa()) + ", 1 thread)"), std::string::npos) << r.out;
  for (const char* bad : {"-1", "1025"}) {
    Result b = run(std::string("bench --device cpu --batch 2 --reps 1 --threads ") + bad);
    EXPECT_EQ(b.rc, 2) << bad << "\n" << b.out;
    EXPECT_NE(b.out.find("--threads must be"), std::string::npos) << b.out;
    EXPECT_EQ(b.out.find("measured peaks"), std::string::npos) << "benchmarked anyway:\n" << b.out;
  }
}

// ---- on a GPU ----------------------------------------------------------------------------------

// Positive, and below what the chip could do at its top clock: SMs x 128 FP32 lanes x 2 FLOPs x
// clock (no NVIDIA SM has more than 128 FP32 lanes), and 2 transfers per memory clock x bus width.
// A kernel whose work the compiler dropped, or a miscounted FLOP or byte, lands above the bound.
TEST(PeakGpu, MeasuredPeaksArePlausibleAndCached) {
  BARECNN_REQUIRE_GPU();
  if (gpu_status().emulated)
    GTEST_SKIP() << "needs a real GPU's speed: the CUDA emulator runs the peak kernels on the CPU";
  int dev = 0, sms = 0, clock_khz = 0, mem_khz = 0, bus_bits = 0;
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, dev), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&mem_khz, cudaDevAttrMemoryClockRate, dev), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev), cudaSuccess);

  double flops = gpu::measure_peak_fp32_flops();
  EXPECT_GT(flops, 1e11);  // even a small GPU does 100 GFLOP/s
  EXPECT_LT(flops, 1e15);
  if (clock_khz > 0) {
    EXPECT_LE(flops, 1.1 * sms * 128.0 * 2.0 * clock_khz * 1e3);
  }

  double bw = gpu::measure_peak_bandwidth();
  EXPECT_GT(bw, 1e10);
  EXPECT_LT(bw, 2e13);
  if (mem_khz > 0 && bus_bits > 0) {
    EXPECT_LE(bw, 1.1 * 2.0 * mem_khz * 1e3 * bus_bits / 8);
  }

  EXPECT_EQ(gpu::measure_peak_fp32_flops(), flops);  // cached: the same number, not a new run
  EXPECT_EQ(gpu::measure_peak_bandwidth(), bw);
  std::printf("measured: %.2f TFLOP/s FP32, %.0f GB/s\n", flops / 1e12, bw / 1e9);
}

TEST(BenchCliGpu, JsonHasPeaksFractionsAndPeakMemory) {
  BARECNN_REQUIRE_GPU();
  std::string path = test::fresh_dir("bench_json_gpu") + "/bench.json";
  const int N = 64;
  Result r = run("bench --device cuda --arch paper --batch " + std::to_string(N) + " --reps 3 --json " + path);
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("measured peaks"), std::string::npos) << r.out;
  json j = json::parse(read_file(path, "bench json"));
  EXPECT_EQ(j["device"], "cuda");
  ASSERT_TRUE(j["peaks"].is_object()) << j.dump(2);
  double pf = j["peaks"]["fp32_flops_per_s"].get<double>(), pb = j["peaks"]["bytes_per_s"].get<double>();
  // The peaks' size needs a real GPU's speed (PeakGpu); under the CUDA emulator only the JSON's
  // shape and arithmetic are checked.
  const bool real_gpu = !gpu_status().emulated;
  if (real_gpu) {
    EXPECT_GT(pf, 1e11);
    EXPECT_GT(pb, 1e10);
  }
  EXPECT_GT(pf, 0);
  EXPECT_GT(pb, 0);
  ASSERT_EQ(j["layers"].size(), 7u);
  EXPECT_EQ(j["layers"][0]["note"], "+ relu");  // the GPU fuses the ReLU, not the max pooling
  EXPECT_EQ(j["layers"][1]["note"], "in the conv");
  EXPECT_EQ(j["layers"][2]["note"], "");
  for (const json& l : j["layers"])
    for (const char* dir : {"forward", "backward"}) {
      const json& p = l[dir];
      // flatten is a view, as in the CPU twin of this test; the ReLU after the conv runs in the conv
      // (--fuse auto, the default): no work, no bytes.
      if (l["spec"] == "flatten" || l["note"] == "in the conv") {
        EXPECT_EQ(l["note"], l["spec"] == "flatten" ? "a view" : "in the conv");
        EXPECT_EQ(p["ms"].get<double>() + p["bytes"].get<double>(), 0.0) << dir;
        continue;
      }
      EXPECT_GT(p["ms"].get<double>(), 0) << l["spec"] << " " << dir;
      EXPECT_NEAR(p["flops_fraction_of_peak"].get<double>(), p["flops_per_s"].get<double>() / pf,
                  1e-9 * (1 + p["flops_fraction_of_peak"].get<double>()));
      EXPECT_NEAR(p["bytes_fraction_of_peak"].get<double>(), p["bytes_per_s"].get<double>() / pb,
                  1e-9 * (1 + p["bytes_fraction_of_peak"].get<double>()));
      // Full FP32 (no TF32 tensor cores): no layer can beat the FMA peak by much.
      if (real_gpu) {
        EXPECT_LT(p["flops_fraction_of_peak"].get<double>(), 1.2) << l["spec"] << " " << dir;
      }
    }
  // At least the parameters and their gradients (805,066 floats each), the input and the conv
  // output with its gradient (2 x 64 x 32 x 28 x 28 floats); well under a GiB.
  ASSERT_TRUE(j["peak_device_memory_bytes"].is_number()) << j.dump(2);
  double mem = j["peak_device_memory_bytes"].get<double>();
  EXPECT_GE(mem, 4.0 * (2 * 805066 + N * 784 + 2.0 * N * 32 * 784));
  EXPECT_LT(mem, 1073741824.0);
  // The training step, kernel by kernel and as one CUDA Graph (the capture must have worked).
  const json& t = j["totals"];
  ASSERT_TRUE(t.contains("train_step_ms") && t.contains("train_step_graph_ms")) << t.dump(1);
  EXPECT_GT(t["train_step_graph_ms"].get<double>(), 0);
  EXPECT_NEAR(t["epoch_s"].get<double>(),
              60000.0 / N * std::min(t["train_step_ms"].get<double>(), t["train_step_graph_ms"].get<double>()) * 1e-3,
              1e-9 * t["epoch_s"].get<double>());
}
