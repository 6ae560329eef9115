// The training step object (include/barecnn/step.h) on its own: it is the ops of step.h in
// order; it is deterministic and resumes bitwise from its state; on the GPU it matches the CPU,
// and its CUDA Graph replays the eager step bitwise.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "barecnn/error.h"
#include "barecnn/exec.h"
#include "barecnn/rng.h"
#include "barecnn/step.h"
#include "test_gpu.h"
#include "test_util.h"

using namespace barecnn;

namespace {

constexpr const char* kArch =
    "conv(4,3,pad=1) relu maxpool(2) conv(5,3,stride=2) tanh avgpool(2,stride=1) dense(7) relu dense(3)";

// With batchnorm (per channel and per feature) and dropout (after an image and a vector).
constexpr const char* kArchBn =
    "conv(4,3,pad=1) batchnorm relu maxpool(2) dropout(0.3) dense(7) batchnorm relu dropout(0.5) dense(3)";

struct Data {
  IdxImages images;
  std::vector<uint8_t> labels;
};

// `count` random 11x10 images and labels in 0..2.
Data random_images(int count, uint64_t seed) {
  Data d;
  d.images.count = count, d.images.rows = 11, d.images.cols = 10;
  Rng rng(seed);
  d.images.pixels.resize(size_t(count) * 110);
  for (auto& p : d.images.pixels) p = uint8_t(rng.next_u64() & 0xFF);
  d.labels.resize(count);
  for (auto& y : d.labels) y = uint8_t(rng.next_u64() % 3);
  return d;
}

StepSettings settings(Optim kind) {
  StepSettings s;
  s.batch = 6;
  s.optim.kind = kind;
  s.optim.lr = kind == Optim::Adam ? 0.01f : 0.05f;
  s.optim.momentum = kind == Optim::SGD ? 0.9f : 0.f;
  s.optim.weight_decay = 0.001f;
  s.mean = 0.4f, s.std = 0.3f;
  return s;
}

// settings(kind) with a rate that changes every step: cosine over 2 epochs after 1 warmup epoch.
StepSettings scheduled_settings(Optim kind) {
  StepSettings s = settings(kind);
  s.optim.schedule.kind = LrScheduleKind::Cosine;
  s.optim.schedule.epochs = 2;
  s.optim.schedule.warmup_epochs = 1;
  return s;
}

StepState initial_state(const Net& net, uint64_t seed) {
  const size_t n = net.num_params();
  return {net.init_params(seed), std::vector<float>(n, 0.f), std::vector<float>(n, 0.f), 0};
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// `steps` steps of epoch 0 from the initial state, on `dev`.
StepState run_steps(const Net& net, const Data& d, const StepSettings& s, Device dev, int steps,
                    StepMetrics* m = nullptr) {
  ExecContext ctx(dev);
  TrainStep step(net, ctx.exec(), d.images, d.labels, s);
  step.set_state(initial_state(net, 5));
  step.begin_epoch(9, 0, 0, {});
  for (int i = 0; i < steps; ++i) step.run();
  if (m) *m = step.wait_metrics();
  return step.state();
}

// `steps` CPU steps of epoch 0 as run_steps, but stopped after `stop` and continued from the
// state in a new step object (as a resume does).
StepState resumed_steps(const Net& net, const Data& d, const StepSettings& s, int stop = 2, int steps = 5) {
  ExecContext ctx(Device::CPU);
  StepState half;
  {
    TrainStep a(net, ctx.exec(), d.images, d.labels, s);
    a.set_state(initial_state(net, 5));
    a.begin_epoch(9, 0, 0, {});
    for (int i = 0; i < stop; ++i) a.run();
    half = a.state();
  }
  TrainStep b(net, ctx.exec(), d.images, d.labels, s);
  b.set_state(half);
  b.begin_epoch(9, 0, stop, {});
  for (int i = stop; i < steps; ++i) b.run();
  return b.state();
}

}  // namespace

// The step is, on the CPU, exactly: the batch of the epoch's permutation, gathered and
// normalized; forward; loss with its gradient; backward; the optimizer with t = the step count.
// With a schedule (a warmup: a new rate every step) the optimizer takes the rate of step t,
// lr_at(cfg, t, steps per epoch). With augmentation the gather crops and flips with the draws of
// (the epoch's seed, step t).
TEST(TrainStepCpu, IsTheOpsOfOneStepInOrder) {
  for (bool scheduled : {false, true})
    for (Optim kind : {Optim::SGD, Optim::Adam}) {
      const bool augmented = kind == Optim::SGD;  // (two of the four)
      SCOPED_TRACE(kind == Optim::SGD ? "sgd, augment crop:2,flip" : "adam");
      SCOPED_TRACE(scheduled ? "cosine:2 after 1 warmup epoch" : "constant");
      Data d = random_images(40, 3);
      Net net(kArch, {1, 11, 10});
      StepSettings s = scheduled ? scheduled_settings(kind) : settings(kind);
      if (augmented) s.augment = {2, true};
      StepMetrics m;
      const StepState got = run_steps(net, d, s, Device::CPU, 3, &m);

      // The same by hand.
      const Exec ex = Exec::cpu();
      const int B = s.batch, K = net.num_outputs(), P = 110;
      StepState want = initial_state(net, 5);
      std::vector<int32_t> perm = ref::epoch_permutation(40, 9, 0);
      NetState<float> st;
      net.prepare(st, B, Device::CPU);
      std::vector<float> grads(net.num_params()), loss(B);
      std::vector<int32_t> labels(B), correct(B);
      double loss_sum = 0, correct_sum = 0;
      for (int t = 1; t <= 3; ++t) {
        if (augmented)
          ref::gather_normalize_augment(st.act[0].data(), labels.data(), d.images.pixels.data(), d.labels.data(),
                                        perm.data() + (t - 1) * B, B, 11, 10, s.mean, s.std, s.augment, 9, t);
        else
          ref::gather_normalize(st.act[0].data(), labels.data(), d.images.pixels.data(), d.labels.data(),
                                perm.data() + (t - 1) * B, B, P, s.mean, s.std);
        net.forward(st, want.params.data(), ex);
        op::loss_forward_backward(ex, loss.data(), st.dact.back().data(), correct.data(), st.act.back().data(),
                                  labels.data(), B, K, s.loss, 1.f / B);
        double l = 0, c = 0;
        for (int b = 0; b < B; ++b) l += loss[b], c += correct[b];
        loss_sum += l, correct_sum += c;
        net.backward(st, want.params.data(), grads.data(), ex, false);
        OptimConfig at = s.optim;
        at.lr = lr_at(s.optim, t, 40 / B);
        if (scheduled) {
          EXPECT_EQ(at.lr, float(double(s.optim.lr) * t / 6));  // the warmup: t / 6 of the rate
        }
        ref::optimizer_step(want.params.data(), grads.data(), want.m.data(), want.v.data(), grads.size(), at, t);
      }
      EXPECT_TRUE(bitwise_equal(got.params, want.params));
      EXPECT_TRUE(bitwise_equal(got.m, want.m));
      EXPECT_TRUE(bitwise_equal(got.v, want.v));
      EXPECT_EQ(got.global_step, 3);
      EXPECT_EQ(m.loss_sum, loss_sum);
      EXPECT_EQ(m.correct, correct_sum);
      EXPECT_EQ(m.steps, 3);
    }
}

// Stopped after 2 steps and continued from its state in a new step object: the uninterrupted
// step's weights, bitwise; and two fresh runs agree.
TEST(TrainStepCpu, ResumesBitwiseFromItsState) {
  Data d = random_images(40, 4);
  Net net(kArch, {1, 11, 10});
  const StepSettings s = settings(Optim::Adam);
  const StepState full = run_steps(net, d, s, Device::CPU, 5);
  EXPECT_TRUE(bitwise_equal(full.params, run_steps(net, d, s, Device::CPU, 5).params));

  const StepState resumed = resumed_steps(net, d, s);
  EXPECT_EQ(resumed.global_step, 5);
  EXPECT_TRUE(bitwise_equal(resumed.params, full.params));
  EXPECT_TRUE(bitwise_equal(resumed.v, full.v));
}

// With batchnorm and dropout, the step is the same ops with the forward in training mode: the
// batch's statistics, the running statistics updated in the parameter buffer's tail (and left
// alone by the optimizer), dropout's mask keyed by (the run's seed, step t, layer). And it
// resumes bitwise: the running statistics are in the state, the masks a function of the step.
TEST(TrainStepCpu, BatchNormAndDropoutTrainInTrainingModeAndResumeBitwise) {
  Data d = random_images(40, 13);
  Net net(kArchBn, {1, 11, 10});
  const StepSettings s = settings(Optim::SGD);
  const StepState got = run_steps(net, d, s, Device::CPU, 3);

  const Exec ex = Exec::cpu();
  const int B = s.batch, K = net.num_outputs(), P = 110;
  StepState want = initial_state(net, 5);
  std::vector<int32_t> perm = ref::epoch_permutation(40, 9, 0);
  NetState<float> st;
  net.prepare(st, B, Device::CPU);
  std::vector<float> grads(net.num_params()), loss(B);
  std::vector<int32_t> labels(B), correct(B);
  for (int t = 1; t <= 3; ++t) {
    ref::gather_normalize(st.act[0].data(), labels.data(), d.images.pixels.data(), d.labels.data(),
                          perm.data() + (t - 1) * B, B, P, s.mean, s.std);
    gpu::StepCounters c;
    c.seed = 9, c.global_step = t;
    net.forward(st, want.params.data(), ex, RunMode<float>::train(want.params.data() + net.num_params(), &c));
    op::loss_forward_backward(ex, loss.data(), st.dact.back().data(), correct.data(), st.act.back().data(),
                              labels.data(), B, K, s.loss, 1.f / B);
    net.backward(st, want.params.data(), grads.data(), ex, false);
    ref::optimizer_step(want.params.data(), grads.data(), want.m.data(), want.v.data(), grads.size(), s.optim, t);
  }
  EXPECT_TRUE(bitwise_equal(got.params, want.params));
  EXPECT_TRUE(bitwise_equal(got.m, want.m));
  EXPECT_EQ(got.params[net.buffers()[2].offset], 3.f);  // 1.num_batches_tracked
  // Another seed draws other masks.
  {
    ExecContext ctx(Device::CPU);
    TrainStep other(net, ctx.exec(), d.images, d.labels, s);
    other.set_state(initial_state(net, 5));
    other.begin_epoch(10, 0, 0, {});
    for (int i = 0; i < 3; ++i) other.run();
    EXPECT_FALSE(bitwise_equal(other.state().params, got.params));
  }
  // Stopped after 2 steps, resumed in a new step object: the uninterrupted run's state.
  const StepState full = run_steps(net, d, s, Device::CPU, 5);
  const StepState resumed = resumed_steps(net, d, s);
  EXPECT_TRUE(bitwise_equal(resumed.params, full.params));
  EXPECT_TRUE(bitwise_equal(resumed.m, full.m));
}

// Augmentation changes the run (and off is the default: the settings above train unaugmented);
// an augmented run resumes bitwise from its state (the draws are keyed by the step, not by a
// generator's state); a pad that does not fit the images is refused.
TEST(TrainStepCpu, AugmentedRunDiffersAndResumesBitwise) {
  Data d = random_images(40, 4);
  Net net(kArch, {1, 11, 10});
  StepSettings s = settings(Optim::SGD);
  const StepState plain = run_steps(net, d, s, Device::CPU, 4);
  s.augment = {1, true};
  const StepState full = run_steps(net, d, s, Device::CPU, 4);
  EXPECT_FALSE(bitwise_equal(plain.params, full.params));
  EXPECT_TRUE(bitwise_equal(resumed_steps(net, d, s, 1, 4).params, full.params));
  ExecContext ctx(Device::CPU);
  s.augment = {6, false};  // 2 * 6 > 10 columns
  EXPECT_THROW(TrainStep(net, ctx.exec(), d.images, d.labels, s), Error);
}

// A non-finite loss shows in the metrics and the first non-finite layer is named.
TEST(TrainStepCpu, NamesTheFirstNonFiniteLayer) {
  Data d = random_images(24, 5);
  Net net(kArch, {1, 11, 10});
  ExecContext ctx(Device::CPU);
  TrainStep step(net, ctx.exec(), d.images, d.labels, settings(Optim::SGD));
  StepState st = initial_state(net, 5);
  st.params[net.params()[2].offset] = std::numeric_limits<float>::quiet_NaN();  // a weight of layer 3
  step.set_state(st);
  step.begin_epoch(9, 0, 0, {});
  step.run();
  EXPECT_FALSE(std::isfinite(step.wait_metrics().loss_sum));
  EXPECT_NE(step.first_nonfinite().find("layer 3 conv(5,3,stride=2)"), std::string::npos) << step.first_nonfinite();
}

// On the GPU: the CPU's weights and metrics after a few steps, within the CPU/GPU step tolerances
// of test_gpu_train.cpp (compare_step: gradients atol 1e-5 + rtol 1e-3, compounded over 4 steps).
TEST(TrainStepGpu, MatchesCpuOverSeveralSteps) {
  BARECNN_REQUIRE_GPU();
  for (Optim kind : {Optim::SGD, Optim::Adam}) {
    SCOPED_TRACE(kind == Optim::SGD ? "sgd" : "adam");
    Data d = random_images(40, 6);
    Net net(kArch, {1, 11, 10});
    StepMetrics mc, mg;
    const StepState c = run_steps(net, d, settings(kind), Device::CPU, 4, &mc);
    const StepState g = run_steps(net, d, settings(kind), Device::CUDA, 4, &mg);
    EXPECT_TRUE(test::all_close(c.params, g.params, 1e-4, 1e-3));
    EXPECT_EQ(g.global_step, 4);
    EXPECT_NEAR(mg.loss_sum, mc.loss_sum, 1e-4 * std::fabs(mc.loss_sum));
    EXPECT_EQ(mg.correct, mc.correct);
    EXPECT_EQ(mg.steps, 4);
  }
}

// Five GPU steps with settings `s`, eagerly and with cuda_graph (the first step eager, the second
// captured, the rest replays): the eager run's weights, first moments and metrics bit for bit.
// Returns the eager run's state.
static StepState expect_graph_replays_eager(const Net& net, const Data& d, StepSettings s) {
  StepMetrics me, mg;
  const StepState eager = run_steps(net, d, s, Device::CUDA, 5, &me);
  s.cuda_graph = true;
  const StepState graph = run_steps(net, d, s, Device::CUDA, 5, &mg);
  EXPECT_TRUE(bitwise_equal(eager.params, graph.params));
  EXPECT_TRUE(bitwise_equal(eager.m, graph.m));
  EXPECT_EQ(me.loss_sum, mg.loss_sum);
  EXPECT_EQ(me.correct, mg.correct);
  return eager;
}

// With cuda_graph the first step runs eagerly, the second is captured, the rest are replays: the
// eager step's weights and metrics bit for bit (the counters advance on the device).
TEST(TrainStepGpu, GraphReplaysTheEagerStepBitwise) {
  BARECNN_REQUIRE_GPU();
  Data d = random_images(40, 7);
  Net net(kArch, {1, 11, 10});
  expect_graph_replays_eager(net, d, settings(Optim::Adam));
}

// The same with a rate schedule: the rate of each step is read from the counters on the device,
// so the replays use each step's own rate (a rate baked into the captured kernel would be the
// second step's), and the run differs from the constant rate's.
TEST(TrainStepGpu, GraphWithAScheduleReplaysTheEagerStepBitwise) {
  BARECNN_REQUIRE_GPU();
  Data d = random_images(40, 7);
  Net net(kArch, {1, 11, 10});
  const StepState eager = expect_graph_replays_eager(net, d, scheduled_settings(Optim::SGD));
  const StepState constant = run_steps(net, d, settings(Optim::SGD), Device::CUDA, 5);
  EXPECT_FALSE(bitwise_equal(eager.params, constant.params));
}

// With batchnorm and dropout on the GPU: the CPU's weights, running statistics and metrics after
// a few steps (the same masks: dropout's draws are integer math on both devices), within the
// tolerances of MatchesCpuOverSeveralSteps; and the captured graph replays the eager steps bitwise
// (the masks of each step drawn from the counters on the device).
TEST(TrainStepGpu, BatchNormAndDropoutMatchCpuAndReplayBitwise) {
  BARECNN_REQUIRE_GPU();
  Data d = random_images(40, 14);
  Net net(kArchBn, {1, 11, 10});
  StepMetrics mc, mg;
  // SGD: a conv or dense bias right before a batchnorm has a gradient of exactly 0 in exact
  // arithmetic, so its float gradient is rounding noise, different on each device; Adam would
  // scale that noise up to steps of the full rate (lr * m / sqrt(v)), SGD keeps it tiny.
  const StepState c = run_steps(net, d, settings(Optim::SGD), Device::CPU, 4, &mc);
  const StepState g = run_steps(net, d, settings(Optim::SGD), Device::CUDA, 4, &mg);
  EXPECT_TRUE(test::all_close(c.params, g.params, 1e-4, 1e-3));
  EXPECT_EQ(g.params[net.buffers()[2].offset], 4.f);
  EXPECT_NEAR(mg.loss_sum, mc.loss_sum, 1e-4 * std::fabs(mc.loss_sum));
  EXPECT_EQ(mg.correct, mc.correct);
  expect_graph_replays_eager(net, d, settings(Optim::Adam));
}

// With augmentation: each replay reads its own step and seed from the counters, so the graph's
// replays crop and flip as the eager steps do (draws baked into the capture would repeat the
// second step's); the run differs from the unaugmented one; and it matches the CPU's run, whose
// gather is the same bits (tests/test_gpu_data.cpp AugmentGpu), within the step tolerances.
TEST(TrainStepGpu, GraphWithAugmentationReplaysTheEagerStepBitwise) {
  BARECNN_REQUIRE_GPU();
  Data d = random_images(40, 7);
  Net net(kArch, {1, 11, 10});
  StepSettings s = settings(Optim::Adam);
  s.augment = {2, true};
  const StepState eager = expect_graph_replays_eager(net, d, s);
  EXPECT_FALSE(bitwise_equal(eager.params, run_steps(net, d, settings(Optim::Adam), Device::CUDA, 5).params));
  StepMetrics mc, mg;
  const StepState c = run_steps(net, d, s, Device::CPU, 4, &mc);
  const StepState g = run_steps(net, d, s, Device::CUDA, 4, &mg);
  EXPECT_TRUE(test::all_close(c.params, g.params, 1e-4, 1e-3));
  EXPECT_EQ(mg.correct, mc.correct);
}

// begin_step's rates on the GPU are the CPU's, bit for bit, step after step (the same lr_at), for
// every kind of schedule, across epochs (7 steps each) and past a resume's counters.
TEST(TrainStepGpu, RateSequenceIsTheCpus) {
  BARECNN_REQUIRE_GPU();
  ExecContext gctx(Device::CUDA);
  const Exec cpu = Exec::cpu(), gpu = gctx.exec();
  for (int which = 0; which < 4; ++which) {
    OptimConfig cfg;
    cfg.lr = 0.1f;
    LrSchedule& sc = cfg.schedule;
    if (which == 1)
      sc.kind = LrScheduleKind::Step, sc.num_milestones = 2, sc.milestones[0] = 2, sc.milestones[1] = 3,
      sc.gamma = 0.3f, sc.warmup_epochs = 1;
    if (which == 2) sc.kind = LrScheduleKind::Cosine, sc.epochs = 5;
    if (which == 3) sc.kind = LrScheduleKind::Cosine, sc.epochs = 5, sc.warmup_epochs = 2;
    SCOPED_TRACE(fmt("schedule ", which));
    gpu::StepCounters hc;
    hc.global_step = 3;  // as after a resume
    BasicTensor<gpu::StepCounters> dc;
    dc.reset({1}, Device::CUDA);
    dc.copy_from_host({hc});
    std::vector<float> rates;
    for (long long t = 4; t <= 35; ++t) {
      op::begin_step(cpu, &hc, cfg, 7);
      op::begin_step(gpu, dc.data(), cfg, 7);
      gpu.sync();
      const gpu::StepCounters g = dc.to_host()[0];
      ASSERT_EQ(g.global_step, t);
      EXPECT_EQ(hc.lr, lr_at(cfg, t, 7)) << t;
      EXPECT_EQ(std::memcmp(&g.lr, &hc.lr, sizeof(float)), 0) << t << ": gpu " << g.lr << ", cpu " << hc.lr;
      rates.push_back(hc.lr);
    }
    // (not a constant sequence, except the constant schedule)
    EXPECT_EQ(std::count(rates.begin(), rates.end(), rates[0]) == long(rates.size()), which == 0);
  }
}

// poll_metrics never waits: on the GPU it hands over a copy only once it has arrived, and what it
// hands over are the sums of the steps it says.
TEST(TrainStepGpu, PolledMetricsAreThoseOfTheStepsTheyCover) {
  BARECNN_REQUIRE_GPU();
  Data d = random_images(40, 8);
  Net net(kArch, {1, 11, 10});
  ExecContext ctx(Device::CUDA);
  TrainStep step(net, ctx.exec(), d.images, d.labels, settings(Optim::SGD));
  step.set_state(initial_state(net, 5));
  step.begin_epoch(9, 0, 0, {});
  std::vector<double> sums{0};
  for (int i = 0; i < 5; ++i) {
    step.run();
    sums.push_back(step.wait_metrics().loss_sum);
  }
  step.set_state(initial_state(net, 5));  // the same steps again, polled
  step.begin_epoch(9, 0, 0, {});
  int handed = 0;
  for (int i = 0; i < 5; ++i) {
    step.run();
    StepMetrics m;
    if (step.poll_metrics(&m)) {
      ++handed;
      ASSERT_GE(m.steps, 0);
      ASSERT_LE(m.steps, i + 1);
      EXPECT_EQ(m.loss_sum, sums[m.steps]) << "covers " << m.steps << " steps";
    }
  }
  // Once the GPU is idle the copy queued last has arrived.
  ctx.exec().sync();
  StepMetrics m;
  ASSERT_TRUE(step.poll_metrics(&m));
  EXPECT_EQ(m.loss_sum, sums[m.steps]);
  EXPECT_EQ(step.wait_metrics().loss_sum, sums[5]);
  RecordProperty("copies_handed_over_while_running", handed);
}
