// The whole training step on the GPU against the CPU, GPU determinism, and GPU training end to end.
// Every test needs a working GPU and skips (with the reason) where there is none.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "barecnn/error.h"
#include "barecnn/fileutil.h"
#include "barecnn/gpu_ops.h"
#include "barecnn/net.h"
#include "barecnn/exec.h"
#include "barecnn/evaluator.h"
#include "barecnn/trainer.h"
#include "synthetic_data.h"
#include "test_gpu.h"
#include "test_util.h"

using namespace barecnn;

namespace {

struct StepResult {
  double loss = 0;
  std::vector<float> grads, logits;
};

// One forward + loss + backward of `net` on a fixed batch, on `dev`.
StepResult one_step(const Net& net, const std::vector<float>& params, const std::vector<float>& x,
                    const std::vector<int32_t>& labels, Loss loss, Device dev) {
  const int N = int(labels.size()), K = net.num_outputs();
  const ExecContext ctx(dev);
  const Exec& ex = ctx.exec();
  NetState<float> st;
  net.prepare(st, N, dev);
  Tensor p({int(params.size())}, dev), g({int(params.size())}, dev), l({N}, dev);
  TensorI lab({N}, dev), correct({N}, dev);
  p.copy_from_host(params);
  lab.copy_from_host(labels);
  st.act[0].copy_from_host(x);
  net.forward(st, p.data(), ex);
  op::loss_forward_backward(ex, l.data(), st.dact.back().data(), correct.data(), st.act.back().data(), lab.data(), N, K,
                            loss, 1.f / N);
  net.backward(st, p.data(), g.data(), ex, false);
  StepResult r;
  for (float v : l.to_host()) r.loss += v;
  r.loss /= N;
  r.grads = g.to_host();
  r.logits = st.act.back().to_host();
  return r;
}

void compare_step(const std::string& arch, const Dims& input, int N, Loss loss) {
  Net net(arch, input);
  std::vector<float> params = net.init_params(3);
  Rng rng(4);
  for (auto& e : net.params())  // non-zero biases
    if (e.name.find(".bias") != std::string::npos)
      for (size_t i = 0; i < e.numel(); ++i) params[e.offset + i] = float(rng.uniform(-0.1, 0.1));
  std::vector<float> x(size_t(N) * dims_numel(input));
  for (auto& v : x) v = float(rng.uniform(-1, 1));
  std::vector<int32_t> labels(N);
  for (auto& l : labels) l = int32_t(rng.next_u64() % net.num_outputs());
  StepResult cpu = one_step(net, params, x, labels, loss, Device::CPU);
  StepResult gpu = one_step(net, params, x, labels, loss, Device::CUDA);
  // Loss: rel 1e-5 (both sum the same float terms, in different orders).
  EXPECT_NEAR(gpu.loss, cpu.loss, 1e-5 * std::fabs(cpu.loss) + 1e-7) << arch;
  EXPECT_TRUE(test::all_close(cpu.logits, gpu.logits, 1e-5, 1e-4)) << arch;
  // Gradients: every parameter tensor. Each entry is a float sum over up to N*OH*OW (conv weight)
  // or N (dense) products whose order differs between the devices; relative rounding of such a
  // sum is ~ sqrt(terms) * 6e-8, i.e. < 1e-4 for the sizes here, plus cancellation near zero,
  // which the absolute term (1e-5 of the gradient scale 1/N) covers.
  for (auto& e : net.params()) {
    std::vector<float> a(cpu.grads.begin() + e.offset, cpu.grads.begin() + e.offset + e.numel());
    std::vector<float> b(gpu.grads.begin() + e.offset, gpu.grads.begin() + e.offset + e.numel());
    EXPECT_TRUE(test::all_close(a, b, 1e-5, 1e-3)) << arch << " tensor " << e.name;
  }
}

}  // namespace

TEST(TrainStepGpu, PaperNetMatchesCpu) {
  BARECNN_REQUIRE_GPU();
  compare_step("paper", {1, 28, 28}, 64, Loss::SoftmaxCrossEntropy);
}

TEST(TrainStepGpu, LeNetAndDeepMatchCpu) {
  BARECNN_REQUIRE_GPU();
  // Under TSan smaller odd batches: the same layers, kernels and partial blocks.
  compare_step("lenet5", {1, 28, 28}, test::kThreadSanitizer ? 9 : 33, Loss::SoftmaxCrossEntropy);
  compare_step("deep", {1, 28, 28}, test::kThreadSanitizer ? 5 : 17, Loss::SoftmaxCrossEntropy);
}

TEST(TrainStepGpu, EveryLossAndPoolingMatchCpu) {
  BARECNN_REQUIRE_GPU();
  const std::string arch =
      "conv(4,3,stride=2,pad=1) elu l2pool(2) conv(3,2x3) leaky_relu(0.1) avgpool(2,stride=1) dense(7) softplus "
      "dense(5)";
  int n = 0;
  const char* const* names = loss_names(&n);
  for (int i = 0; i < n; ++i) {
    SCOPED_TRACE(names[i]);
    compare_step(arch, {3, 17, 15}, 9, parse_loss(names[i]));
  }
  compare_step("conv(5,3) sigmoid maxpool(3,stride=2) conv(4,1) tanh dense(6) arctan dense(4) softmax", {2, 15, 15},
               257, Loss::MSE);
}

// --fuse on: each conv applies the plain ReLU after it in its own kernels. The fused kernels use
// the ReLU kernels' own expressions, so logits, loss and every gradient are bitwise those of the
// separate layers (which the *MatchCpu tests above hold to the CPU). Nets with a conv followed by
// a ReLU (fused), by a leaky ReLU (not fused), and a conv as the last layer before a flatten.
TEST(TrainStepGpu, FusedConvReluIsBitwiseTheSeparateLayers) {
  BARECNN_REQUIRE_GPU();
  struct Case {
    const char* arch;
    Dims input;
    int N;
    int fused;  // how many convs fuse their ReLU
  };
  for (const Case& k :
       {Case{"paper", {1, 28, 28}, 3, 1}, Case{"deep", {1, 12, 12}, 5, 4},
        Case{"conv(4,3,stride=2,pad=1) relu conv(3,3) leaky_relu(0.1) maxpool(2) conv(5,1) relu dense(3)",
             {2, 13, 11},
             7,
             2}}) {
    SCOPED_TRACE(k.arch);
    Net net(k.arch, k.input);
    std::vector<float> params = net.init_params(8);
    Rng rng(9);
    std::vector<float> x(size_t(k.N) * dims_numel(k.input));
    for (auto& v : x) v = float(rng.uniform(-1, 1));
    std::vector<int32_t> labels(k.N);
    for (auto& l : labels) l = int32_t(rng.next_u64() % net.num_outputs());
    StepResult plain = one_step(net, params, x, labels, Loss::SoftmaxCrossEntropy, Device::CUDA);
    net.set_fusion(true);
    NetState<float> probe;
    net.prepare(probe, 1, Device::CUDA);
    EXPECT_EQ(std::count(probe.fused.begin(), probe.fused.end(), true), k.fused);
    for (size_t i = 0; i < probe.fused.size(); ++i)  // the ReLU's input and its gradient: not kept
      if (probe.fused[i]) {
        EXPECT_EQ(probe.act[i + 1].numel() + probe.dact[i + 1].numel(), 0u) << "layer " << i;
        // the plan: the conv writes the ReLU's output; the ReLU does not run
        ASSERT_NE(probe.planned(int(i)), nullptr);
        EXPECT_TRUE(probe.planned(int(i))->fused_relu);
        EXPECT_EQ(probe.planned(int(i))->out, int(i) + 2);
        EXPECT_EQ(probe.planned(int(i) + 1), nullptr);
      }
    StepResult fused = one_step(net, params, x, labels, Loss::SoftmaxCrossEntropy, Device::CUDA);
    net.set_fusion(false);
    EXPECT_EQ(plain.loss, fused.loss);
    EXPECT_EQ(0, std::memcmp(plain.logits.data(), fused.logits.data(), plain.logits.size() * sizeof(float)));
    ASSERT_EQ(plain.grads.size(), fused.grads.size());
    for (auto& e : net.params())
      EXPECT_EQ(0, std::memcmp(plain.grads.data() + e.offset, fused.grads.data() + e.offset, e.numel() * sizeof(float)))
          << "tensor " << e.name;
  }
}

namespace {
class TrainGpu : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = test::fresh_dir("gpu_train_data");
    test::write_bars_dataset(data_, 1200, 200);
  }
  TrainConfig config(const std::string& out) {
    TrainConfig c;
    c.opt.data_dir = data_;
    c.spec.arch = "conv(8,3,pad=1) relu maxpool(2) dense(32) relu dense(3)";
    c.opt.device = "cuda";
    c.opt.epochs = 2;
    c.spec.batch = 32;
    c.spec.optim.lr = 0.05f;
    c.spec.optim.momentum = 0.9f;
    c.spec.seed = 11;
    c.opt.out = out;
    c.opt.quiet = true;
    return c;
  }
  // Continues the run in `part` to 2 epochs on the GPU, as `train --resume part` does.
  static TrainConfig resume_of(const std::string& part, bool cuda_graph) {
    TrainConfig c;
    c.opt.resume = part;
    c.opt.out = "";
    c.opt.epochs = 2;
    c.opt.device = "cuda";
    c.opt.quiet = true;
    c.opt.cuda_graph = cuda_graph;
    return c;
  }
  static std::string data_;
};
std::string TrainGpu::data_;
}  // namespace

TEST_F(TrainGpu, TwoRunsGiveIdenticalWeights) {
  BARECNN_REQUIRE_GPU();
  std::string a = test::fresh_dir("gpu_det_a"), b = test::fresh_dir("gpu_det_b");
  train(config(a));
  train(config(b));
  EXPECT_EQ(read_file(a + "/model.safetensors", "a"), read_file(b + "/model.safetensors", "b"));
}

TEST_F(TrainGpu, LearnsAndResumesBitwise) {
  BARECNN_REQUIRE_GPU();
  std::string full = test::fresh_dir("gpu_full"), part = test::fresh_dir("gpu_part");
  TrainConfig cf = config(full);
  cf.opt.checkpoint_every = 10;
  train(cf);
  auto s = nlohmann::json::parse(read_file(full + "/summary.json", "summary"));
  EXPECT_GT(s["test_accuracy"].get<double>(), 0.9) << s.dump(1);
  EXPECT_NE(s["device"].get<std::string>().find("cuda"), std::string::npos);
  // The run holds at least its parameters, gradients and optimizer state (4 x P floats) and the
  // resident training set; well under a GiB for this small net.
  Net net(cf.spec.arch, {1, 8, 8});
  const long long peak = s["peak_device_bytes"].get<long long>();
  EXPECT_GT(peak, (long long)(4 * net.num_params() * sizeof(float) + 1200 * 64)) << s.dump(1);
  EXPECT_LT(peak, 1LL << 30);
  EXPECT_EQ(s["cuda_graph"], false);
  TrainConfig cp = cf;
  cp.opt.out = part;
  // Killed in epoch 2 (37 steps each) after step 47; the last checkpoint is at step 40.
  EXPECT_THROW(train(cp, test::stop_after(47)), Error);
  train(resume_of(part, false));
  EXPECT_EQ(read_file(full + "/model.safetensors", "a"), read_file(part + "/model.safetensors", "b"));
}

// --cuda-graph on replays a captured step: the same kernels with the same arguments, so the same
// weights bit for bit as kernel-by-kernel launches, for SGD and for Adam (whose t and bias
// corrections advance on the device), and across a mid-epoch resume (the counters are set again).
TEST_F(TrainGpu, CudaGraphGivesTheEagerWeightsBitwise) {
  BARECNN_REQUIRE_GPU();
  std::string eager_sgd;
  for (bool adam : {false, true}) {
    SCOPED_TRACE(adam ? "adam" : "sgd");
    std::string eager = test::fresh_dir(adam ? "gpu_eager_adam" : "gpu_eager_sgd");
    if (!adam) eager_sgd = eager;
    std::string graph = test::fresh_dir(adam ? "gpu_graph_adam" : "gpu_graph_sgd");
    TrainConfig ce = config(eager);
    if (adam) {
      ce.spec.optim.kind = Optim::Adam;
      ce.spec.optim.lr = 0.002f;
      ce.spec.optim.momentum = 0;
    }
    TrainConfig cg = ce;
    cg.opt.out = graph;
    cg.opt.cuda_graph = true;
    train(ce);
    train(cg);
    EXPECT_EQ(read_file(eager + "/model.safetensors", "eager"), read_file(graph + "/model.safetensors", "graph"));
    auto se = nlohmann::json::parse(read_file(eager + "/summary.json", "summary"));
    auto sg = nlohmann::json::parse(read_file(graph + "/summary.json", "summary"));
    EXPECT_EQ(se["epochs"][1]["train_loss"], sg["epochs"][1]["train_loss"]);  // the metrics too
    EXPECT_GT(sg["test_accuracy"].get<double>(), 0.9) << sg.dump(1);
  }
  // Stopped mid-epoch and resumed, with the graph on: the uninterrupted eager run's weights.
  std::string part = test::fresh_dir("gpu_graph_part");
  TrainConfig cp = config(part);
  cp.opt.cuda_graph = true;
  cp.opt.checkpoint_every = 10;
  EXPECT_THROW(train(cp, test::stop_after(47)), Error);
  train(resume_of(part, true));
  EXPECT_EQ(read_file(eager_sgd + "/model.safetensors", "eager"), read_file(part + "/model.safetensors", "resumed"));
}

// With a rate schedule (a warmup epoch, then halved after epoch 1) the graph's replays read each
// step's rate from the device counters: the eager run's weights and records, bitwise.
TEST_F(TrainGpu, ScheduledCudaGraphRunGivesTheEagerWeightsBitwise) {
  BARECNN_REQUIRE_GPU();
  std::string eager = test::fresh_dir("gpu_sched_eager"), graph = test::fresh_dir("gpu_sched_graph");
  TrainConfig ce = config(eager);
  ce.spec.optim.schedule.kind = LrScheduleKind::Step;
  ce.spec.optim.schedule.num_milestones = 1;
  ce.spec.optim.schedule.milestones[0] = 1;
  ce.spec.optim.schedule.gamma = 0.5f;
  ce.spec.optim.schedule.warmup_epochs = 1;
  TrainConfig cg = ce;
  cg.opt.out = graph;
  cg.opt.cuda_graph = true;
  train(ce);
  train(cg);
  EXPECT_EQ(read_file(eager + "/model.safetensors", "eager"), read_file(graph + "/model.safetensors", "graph"));
  auto se = nlohmann::json::parse(read_file(eager + "/summary.json", "summary"));
  auto sg = nlohmann::json::parse(read_file(graph + "/summary.json", "summary"));
  EXPECT_EQ(se["epochs"][1]["train_loss"], sg["epochs"][1]["train_loss"]);
  EXPECT_EQ(sg["lr_schedule"], "step:1:0.5");
  EXPECT_EQ(sg["epochs"][0]["lr"], 0.05);
  EXPECT_EQ(sg["epochs"][1]["lr"], 0.025);
}

// A whole run with --fuse on (and the graph): the weights of the plain run (--fuse off), bitwise.
// --fuse auto (unset), the default, fuses on the GPU too.
TEST_F(TrainGpu, FusedRunGivesThePlainWeightsBitwise) {
  BARECNN_REQUIRE_GPU();
  std::string plain = test::fresh_dir("gpu_fuse_plain"), fused = test::fresh_dir("gpu_fuse_on"),
              dflt = test::fresh_dir("gpu_fuse_auto");
  TrainConfig cp = config(plain), cf = config(fused), ca = config(dflt);
  cp.opt.epochs = cf.opt.epochs = ca.opt.epochs = 1;
  cp.opt.fuse = false;
  cf.opt.fuse = true;
  cf.opt.cuda_graph = true;
  train(cp);
  train(cf);
  train(ca);
  EXPECT_EQ(read_file(plain + "/model.safetensors", "plain"), read_file(fused + "/model.safetensors", "fused"));
  EXPECT_EQ(nlohmann::json::parse(read_file(plain + "/summary.json", "summary"))["fuse"], false);
  EXPECT_EQ(nlohmann::json::parse(read_file(fused + "/summary.json", "summary"))["fuse"], true);
  EXPECT_EQ(nlohmann::json::parse(read_file(dflt + "/summary.json", "summary"))["fuse"], true);
}

TEST_F(TrainGpu, DivergenceIsFoundAndNamed) {
  BARECNN_REQUIRE_GPU();
  TrainConfig c = config(test::fresh_dir("gpu_div"));
  c.spec.optim.lr = 1e30f;
  c.spec.optim.momentum = 0;
  try {
    train(c);
    FAIL() << "no error";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("diverged"), std::string::npos) << m;
    EXPECT_NE(m.find("first non-finite: layer "), std::string::npos) << m;
  }
}

TEST_F(TrainGpu, EvaluateMatchesCpu) {
  BARECNN_REQUIRE_GPU();
  Net net3("conv(8,3,pad=1) relu maxpool(2) dense(32) relu dense(3)", {1, 8, 8});
  std::vector<float> p = net3.init_params(5);
  Dataset d = load_dataset(data_);
  EvalResult c = evaluate(net3, p, d.test, d.test_labels, 0.2f, 0.3f, Loss::SoftmaxCrossEntropy, Device::CPU, 64, true);
  EvalResult g =
      evaluate(net3, p, d.test, d.test_labels, 0.2f, 0.3f, Loss::SoftmaxCrossEntropy, Device::CUDA, 64, true);
  EXPECT_TRUE(test::all_close(c.logits, g.logits, 1e-5, 1e-4));
  EXPECT_NEAR(c.loss, g.loss, 1e-5 * c.loss);
  EXPECT_EQ(c.count, g.count);
}

TEST_F(TrainGpu, ProgressPollsLeaveNoStaleError) {
  BARECNN_REQUIRE_GPU();
  // 1200 images at batch 5: 240 steps, progress polls at steps 200 and 240, so the second poll
  // may find the first copy still in flight ("not ready"), which must not leak into the next
  // launch check (evaluate() runs right after).
  TrainConfig c = config(test::fresh_dir("gpu_polls"));
  c.spec.batch = 5;
  c.opt.epochs = 1;
  EXPECT_NO_THROW(train(c));
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

// BARECNN_CONV_IMPL picks the GPU's conv kernels (exec.h); unset means fast, and a value it does
// not know stops with a message naming the variable, the value and the choices.
TEST(ExecContextGpu, ConvImplComesFromTheEnvironment) {
  BARECNN_REQUIRE_GPU();
  struct Restore {
    ~Restore() { unsetenv("BARECNN_CONV_IMPL"); }
  } restore;
  unsetenv("BARECNN_CONV_IMPL");
  EXPECT_EQ(ExecContext(Device::CUDA).exec().conv_impl, gpu::ConvImpl::Fast);
  const std::pair<const char*, gpu::ConvImpl> known[] = {
      {"simple", gpu::ConvImpl::Simple}, {"tiled", gpu::ConvImpl::Tiled}, {"fast", gpu::ConvImpl::Fast}};
  for (const auto& [name, impl] : known) {
    setenv("BARECNN_CONV_IMPL", name, 1);
    EXPECT_EQ(ExecContext(Device::CUDA).exec().conv_impl, impl) << name;
  }
  setenv("BARECNN_CONV_IMPL", "gemm", 1);
  try {
    ExecContext ctx(Device::CUDA);
    FAIL() << "no error for BARECNN_CONV_IMPL=gemm";
  } catch (const UsageError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("BARECNN_CONV_IMPL=gemm"), std::string::npos) << m;
    EXPECT_NE(m.find("'tiled'"), std::string::npos) << m;
  }
}
