// GPU-vs-CPU parity of the optimizer steps and the step counters (kernels/optim.cu).
//
// Every test feeds the kernel float inputs and the DOUBLE-precision CPU reference the very same
// values (each float converted exactly to double), so any difference is float rounding in the
// kernel, bounded by the tolerance stated (and justified) next to each comparison; u = 2^-24
// ~ 6e-8 is the float unit roundoff. GPU outputs are pre-filled with NaN (or a sentinel), so an
// element a kernel fails to write fails the comparison. cuBLAS runs in full FP32 (GpuContext sets
// CUBLAS_DEFAULT_MATH: no TF32), so the dense tolerances are those of float accumulation.
//
// All tests skip where no GPU works (BARECNN_REQUIRE_GPU).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "barecnn/cuda_check.h"
#include "barecnn/device_buffer.h"
#include "barecnn/gpu.h"
#include "barecnn/gpu_ops.h"
#include "barecnn/ref_ops.h"
#include "barecnn/rng.h"
#include "test_gpu.h"
#include "test_util.h"

namespace barecnn {
namespace {

using namespace test;  // all_close, upload, download, random_floats, ... (test_util.h, test_gpu.h)

// ---- optimizer -----------------------------------------------------------------------------------

// Three steps of `cfg` over n parameters with a new gradient each step, the GPU in float and the
// reference in double from the same start; state compared after every step.
void check_optimizer(const GpuContext& ctx, const OptimConfig& cfg, bool use_m, bool use_v, uint64_t seed) {
  const size_t n = 1001;
  std::vector<float> p = random_floats(n, seed);  // (n)
  std::vector<double> ref_p = to_double(p), ref_m(n, 0.0), ref_v(n, 0.0);
  DeviceBuffer<float> d_p = upload(p), d_g(n);
  DeviceBuffer<float> d_m = upload(std::vector<float>(n, 0.f)), d_v = upload(std::vector<float>(n, 0.f));
  for (long long step = 1; step <= 3; ++step) {
    SCOPED_TRACE(fmt("step ", step));
    std::vector<float> g = random_floats(n, seed + 10 * step);
    d_g.copy_from_host(g.data(), n);
    CUDA_CHECK(cudaDeviceSynchronize());  // see upload()
    ref::optimizer_step<double>(ref_p.data(), to_double(g).data(), use_m ? ref_m.data() : nullptr,
                                use_v ? ref_v.data() : nullptr, n, cfg, step);
    gpu::optimizer_step(d_p.data(), d_g.data(), use_m ? d_m.data() : nullptr, use_v ? d_v.data() : nullptr, n, cfg,
                        step, ctx.stream());
    // Parameters ~1, each step rounds param, m, v once or twice in float (~1e-7 absolute each),
    // and the update's quotient m/(sqrt v + eps) is well conditioned (g is never near 0 to
    // within rounding for these random draws): 3 steps stay below ~1e-6. A missing term is far
    // larger (weight decay: lr*wd*param ~ 5e-4 per step). atol 2e-6, rtol 1e-5.
    EXPECT_TRUE(all_close(ref_p, download(ctx, d_p), 2e-6, 1e-5)) << "param";
    if (use_m) {
      EXPECT_TRUE(all_close(ref_m, download(ctx, d_m), 2e-6, 1e-5)) << "m";
    }
    if (use_v) {
      EXPECT_TRUE(all_close(ref_v, download(ctx, d_v), 1e-9, 1e-5)) << "v";
    }
  }
}

TEST(OptimGpu, PlainSgdMatchesReference) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  OptimConfig cfg;
  cfg.kind = Optim::SGD;
  cfg.lr = 0.1f;
  check_optimizer(ctx, cfg, false, false, 4000);  // no momentum: m and v may be null
}

TEST(OptimGpu, SgdMomentumWeightDecayMatchesReference) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  OptimConfig cfg;
  cfg.kind = Optim::SGD;
  cfg.lr = 0.1f;
  cfg.momentum = 0.9f;
  cfg.weight_decay = 1e-2f;
  check_optimizer(ctx, cfg, true, false, 4100);
}

TEST(OptimGpu, AdamMatchesReference) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  OptimConfig cfg;
  cfg.kind = Optim::Adam;
  cfg.lr = 1e-2f;
  check_optimizer(ctx, cfg, true, true, 4200);
  cfg.weight_decay = 1e-2f;
  check_optimizer(ctx, cfg, true, true, 4300);
}

// The training loop's variant: t and the bias corrections come from the device counters that
// begin_step advances. Same kernel, so the same parameters bit for bit as the host-step variant,
// step after step (the bias corrections are rounded to float once on either side).
TEST(OptimGpu, DeviceStepCountersGiveTheHostStepResults) {
  BARECNN_REQUIRE_GPU();
  GpuContext ctx;
  for (Optim kind : {Optim::Adam, Optim::SGD}) {
    SCOPED_TRACE(kind == Optim::Adam ? "adam" : "sgd");
    OptimConfig cfg;
    cfg.kind = kind;
    cfg.lr = 1e-2f;
    cfg.momentum = kind == Optim::SGD ? 0.9f : 0.f;
    cfg.weight_decay = 1e-3f;
    const size_t n = 777;
    std::vector<float> p = random_floats(n, 4400);
    DeviceBuffer<float> a_p = upload(p), b_p = upload(p), d_g(n);
    DeviceBuffer<float> a_m = upload(std::vector<float>(n, 0.f)), a_v = upload(std::vector<float>(n, 0.f));
    DeviceBuffer<float> b_m = upload(std::vector<float>(n, 0.f)), b_v = upload(std::vector<float>(n, 0.f));
    gpu::StepCounters c0;
    c0.global_step = 5;  // as after a resume at step 5
    c0.next_batch = 2;
    DeviceBuffer<gpu::StepCounters> d_c(1);
    d_c.copy_from_host(&c0, 1);
    for (long long step = 6; step <= 9; ++step) {
      SCOPED_TRACE(fmt("step ", step));
      d_g.copy_from_host(random_floats(n, 4500 + step).data(), n);
      CUDA_CHECK(cudaDeviceSynchronize());
      gpu::optimizer_step(a_p.data(), d_g.data(), a_m.data(), a_v.data(), n, cfg, step, ctx.stream());
      gpu::begin_step(d_c.data(), cfg, 1, ctx.stream());
      gpu::optimizer_step(b_p.data(), d_g.data(), b_m.data(), b_v.data(), n, cfg, d_c.data(), ctx.stream());
      std::vector<float> pa = download(ctx, a_p), pb = download(ctx, b_p);
      EXPECT_EQ(0, std::memcmp(pa.data(), pb.data(), n * sizeof(float)));
      gpu::StepCounters c;
      ctx.sync();
      d_c.copy_to_host(&c, 1);
      EXPECT_EQ(c.global_step, step);
      EXPECT_EQ(c.batch, step - 4);  // 2, 3, ... : the batch of this step
      EXPECT_EQ(c.next_batch, step - 3);
      EXPECT_EQ(c.bc1, float(1.0 - std::pow(double(cfg.beta1), double(step))));
      EXPECT_EQ(c.bc2, float(1.0 - std::pow(double(cfg.beta2), double(step))));
    }
  }
}

}  // namespace
}  // namespace barecnn
