// `barecnn bench` and what it stands on: the fewest-bytes model of each kind of layer on
// hand-computed cases, the JSON that `bench --json` writes, and on a GPU the plausibility of the
// measured peaks. (The device-memory bookkeeping it reports is tested in test_device_buffer.cpp.)
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <vector>

#include "barecnn/fileutil.h"
#include "barecnn/peak.h"
#include "test_gpu.h"
#include "test_util.h"

using namespace barecnn;
using nlohmann::json;

namespace {

using Result = test::CommandResult;
// The barecnn executable of this build with `args`.
Result run(const std::string& args) { return test::run_command(std::string(BARECNN_EXE) + " " + args); }

}  // namespace

// ---- the fewest bytes of each kind of layer (hand-computed; 4 bytes per float) -------------------

// conv(3,3,stride=2,pad=1) on N=3 inputs of 2x5x7: output 3 x 3x4 (eq. 2.1: (5-3+2)/2+1 = 3,
// (7-3+2)/2+1 = 4). in = 3*2*5*7 = 210, out = 3*3*3*4 = 108, weight 3*2*3*3 = 54, bias 3.
TEST(LayerBytes, Conv) {
  LayerBytes b = weighted_layer_min_bytes(210, 108, 54, 3, true);
  EXPECT_EQ(b.forward, 4.0 * (210 + 54 + 3 + 108));  // 1500: read x, W, b; write y
  // read dy 108, x 210, W 54; write dW 54, db 3, dx 210
  EXPECT_EQ(b.backward, 2556.0);
  LayerBytes first = weighted_layer_min_bytes(210, 108, 54, 3, false);
  EXPECT_EQ(first.forward, 1500.0);
  EXPECT_EQ(first.backward, 4.0 * (108 + 210 + 54 + 3));  // no W read, no dx written
}

// maxpool(2) on N=3 x 2x5x7: output 2x3 per plane (the last row and column are left out), so
// in = 210, out = 3*2*2*3 = 36, and the int32 mask has 36 entries.
TEST(LayerBytes, MaxPool) {
  LayerBytes b = maxpool_min_bytes(210, 36, true);
  EXPECT_EQ(b.forward, 4.0 * (210 + 36 + 36));   // 1128: read x; write y and the mask
  EXPECT_EQ(b.backward, 4.0 * (36 + 36 + 210));  // read dy and the mask; write dx
  EXPECT_EQ(maxpool_min_bytes(210, 36, false).backward, 0.0);
}

TEST(LayerBytes, AvgAndL2Pool) {
  EXPECT_EQ(avgpool_min_bytes(210, 36, true).forward, 984.0);   // 4 * (210 + 36)
  EXPECT_EQ(avgpool_min_bytes(210, 36, true).backward, 984.0);  // read dy, write dx
  EXPECT_EQ(l2pool_min_bytes(210, 36, true).forward, 984.0);
  EXPECT_EQ(l2pool_min_bytes(210, 36, true).backward, 1968.0);  // also reads x and y
  EXPECT_EQ(l2pool_min_bytes(210, 36, false).backward, 0.0);
}

// relu on 210 elements: read x, write y; backward read dy and x, write dx.
TEST(LayerBytes, Relu) {
  LayerBytes b = elementwise_min_bytes(210, true);
  EXPECT_EQ(b.forward, 1680.0);
  EXPECT_EQ(b.backward, 2520.0);
  EXPECT_EQ(elementwise_min_bytes(210, false).backward, 0.0);
}

// dense(5) on N=3 inputs of 7: in 21, out 15, weight 35, bias 5.
TEST(LayerBytes, Dense) {
  LayerBytes b = weighted_layer_min_bytes(21, 15, 35, 5, true);
  EXPECT_EQ(b.forward, 304.0);   // 4 * (21 + 35 + 5 + 15)
  EXPECT_EQ(b.backward, 528.0);  // 4 * (15 + 21 + 35 + 5 + 35 + 21)
}

TEST(LayerBytes, FlattenCopy) {
  EXPECT_EQ(copy_min_bytes(210, true).forward, 1680.0);
  EXPECT_EQ(copy_min_bytes(210, true).backward, 1680.0);
}

// ---- barecnn bench --json ------------------------------------------------------------------------

// The paper net at batch 2, input 1x28x28. Hand-computed: conv(32,5,pad=2) reads x 2*784 = 1568,
// W 800, b 32 and writes y 2*32*28*28 = 50176; it is the first layer, so its backward reads dy and
// x and writes dW, db (no dx). maxpool(2): in 50176, out 12544 (+ mask). dense(128): in 2*6272 =
// 12544, W 802816, b 128, out 256, with dx.
TEST(BenchCli, JsonHasEveryLayerAndTheExpectedFigures) {
  std::string dir = test::fresh_dir("bench_json");
  std::string path = dir + "/bench.json";
  Result r = run("bench --device cpu --arch paper --batch 2 --reps 1 --json " + path);
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
  EXPECT_TRUE(j["peaks"].is_null());  // not measured on the CPU
  EXPECT_TRUE(j["peak_device_memory_bytes"].is_null());

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
      for (const char* dir : {"forward", "backward"})
        EXPECT_EQ(l[dir]["ms"].get<double>() + l[dir]["bytes"].get<double>(), 0.0) << dir;
      continue;
    }
    EXPECT_EQ(l["note"], "");
    for (const char* dir : {"forward", "backward"}) {
      EXPECT_GT(l[dir]["ms"].get<double>(), 0) << specs[i] << " " << dir;
      EXPECT_GT(l[dir]["bytes"].get<double>(), 0) << specs[i] << " " << dir;
      EXPECT_FALSE(l[dir].contains("flops_fraction_of_peak"));  // CPU: rates only
      EXPECT_NEAR(l[dir]["bytes_per_s"].get<double>(),
                  l[dir]["bytes"].get<double>() / (l[dir]["ms"].get<double>() * 1e-3),
                  1e-9 * l[dir]["bytes_per_s"].get<double>());
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
  for (const json& l : j["layers"])
    for (const char* dir : {"forward", "backward"}) {
      const json& p = l[dir];
      if (l["spec"] == "flatten") {  // a view, as in the CPU twin of this test: no work, no bytes
        EXPECT_EQ(l["note"], "a view");
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
