// Whole-net gradient checks (every preset, arbitrary architectures, every loss and pooling), the
// float net against the double net, and the non-finite diagnosis.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "barecnn/gradcheck.h"
#include "barecnn/net.h"
#include "barecnn/ref_ops.h"
#include "test_util.h"

using namespace barecnn;

namespace {

::testing::AssertionResult passes(const GradcheckOptions& o) {
  GradcheckResult r = run_gradcheck(o);
  std::ostringstream os;
  os << r.arch << " loss " << loss_name(o.loss) << ":";
  bool any_nonzero = false;
  for (auto& t : r.tensors) {
    os << "\n  " << t.name << " checked " << t.checked << " kinks " << t.skipped << " worst " << t.worst_rel
       << (t.pass ? " ok" : " FAIL");
    any_nonzero |= !t.all_zero;
  }
  if (!r.pass) return ::testing::AssertionFailure() << os.str();
  if (!any_nonzero) return ::testing::AssertionFailure() << "every gradient is zero: " << os.str();
  return ::testing::AssertionSuccess();
}

GradcheckOptions opts(const std::string& arch, Dims input, Loss loss = Loss::SoftmaxCrossEntropy, int samples = 12) {
  GradcheckOptions o;
  o.arch = arch;
  o.input = input;
  o.loss = loss;
  o.samples = samples;
  return o;
}

}  // namespace

TEST(NetGradcheck, PaperPreset) { EXPECT_TRUE(passes(opts("paper", {1, 12, 12}))); }
TEST(NetGradcheck, LeNet5Preset) { EXPECT_TRUE(passes(opts("lenet5", {1, 20, 20}))); }
TEST(NetGradcheck, DeepPreset) { EXPECT_TRUE(passes(opts("deep", {1, 8, 8}, Loss::SoftmaxCrossEntropy, 8))); }

TEST(NetGradcheck, EveryLossOnAMixedNet) {
  const std::string arch =
      "conv(4,3,stride=2,pad=1) elu l2pool(2) conv(3,2x3) leaky_relu(0.1) avgpool(2,stride=1) dense(7) softplus "
      "dense(5)";
  int n = 0;
  const char* const* names = loss_names(&n);
  for (int i = 0; i < n; ++i) {
    SCOPED_TRACE(names[i]);
    EXPECT_TRUE(passes(opts(arch, {3, 17, 15}, parse_loss(names[i]), 8)));
  }
}

TEST(NetGradcheck, StridesPaddingsAndEveryPooling) {
  EXPECT_TRUE(passes(opts("conv(3,3,stride=2,pad=2) tanh maxpool(3,stride=2) dense(4)", {2, 13, 11})));
  EXPECT_TRUE(passes(opts("conv(2,4,stride=3) sigmoid avgpool(2x3,stride=1) dense(3)", {3, 14, 16})));
  EXPECT_TRUE(passes(opts("conv(5,1) arctan l2pool(3,stride=3) conv(2,2,pad=1) relu dense(6) softmax", {1, 9, 9})));
  EXPECT_TRUE(passes(opts("conv(4,7) relu dense(3)", {2, 7, 7})));  // kernel equal to the input
  EXPECT_TRUE(passes(opts("dense(8) tanh dense(3)", {1, 3, 5})));   // no conv at all
  EXPECT_TRUE(passes(opts("conv(3,3,pad=1) identity maxpool(2) conv(3,3,pad=1) relu maxpool(2) dense(4)", {3, 8, 8})));
}

TEST(NetGradcheck, PassesForSeedsTwoToFour) {
  for (uint64_t seed : {2, 3, 4}) {
    GradcheckOptions o = opts("conv(6,3,pad=1) relu maxpool(2) dense(16) relu dense(4)", {2, 10, 10});
    o.seed = seed;
    o.batch = 3;
    EXPECT_TRUE(passes(o)) << "seed " << seed;
  }
}

TEST(NetGradcheck, DetectsAWrongGradient) {
  // The checker must be able to fail: a loss whose reported gradient is scaled is caught.
  GradcheckOptions o = opts("conv(3,3) relu dense(3)", {1, 6, 6});
  GradcheckResult ok = run_gradcheck(o);
  ASSERT_TRUE(ok.pass);
  for (auto& t : ok.tensors) EXPECT_LT(t.worst_rel, 1e-7) << t.name;
  o.corrupt = 1.001;  // a 0.1% error in the conv weight gradient
  GradcheckResult bad = run_gradcheck(o);
  EXPECT_FALSE(bad.pass);
  EXPECT_FALSE(bad.tensors[0].pass);
  EXPECT_TRUE(bad.tensors[1].pass);
}

// The float net (the fast CPU ops) against the double reference net on the same inputs and
// parameters: the logits, the gradients and the input gradient; in training mode also the
// running statistics it updates (dropout draws the same masks: the same seed and step).
static void expect_float_net_matches_double(const std::string& arch, const Dims& input, int N, uint64_t seed,
                                            bool training) {
  Net net(arch, input);
  std::vector<float> pf = net.init_params(seed);
  std::vector<double> pd(pf.begin(), pf.end());
  NetState<float> sf;
  NetState<double> sd;
  net.prepare(sf, N, Device::CPU);
  net.prepare(sd, N, Device::CPU);
  auto x = test::tie_free_vec(sf.act[0].numel(), seed + 6);
  std::copy(x.begin(), x.end(), sd.act[0].data());
  for (size_t i = 0; i < x.size(); ++i) sf.act[0].data()[i] = float(x[i]);
  gpu::StepCounters c;
  c.seed = seed, c.global_step = 8;
  const size_t P = net.num_params();
  net.forward(sf, pf.data(), Exec::cpu(), training ? RunMode<float>::train(pf.data() + P, &c) : RunMode<float>::eval());
  net.forward(sd, pd.data(), Exec::cpu(),
              training ? RunMode<double>::train(pd.data() + P, &c) : RunMode<double>::eval());
  EXPECT_TRUE(test::all_close(sd.act.back().to_host(), sf.act.back().to_host(), 1e-5, 1e-4));
  EXPECT_TRUE(test::all_close(pd, pf, 1e-6, 1e-5));  // (in training: the running statistics moved alike)
  // and the gradients
  auto g = test::random_vec(sf.dact.back().numel(), seed + 7);
  for (size_t i = 0; i < g.size(); ++i) sf.dact.back().data()[i] = float(g[i]), sd.dact.back().data()[i] = g[i];
  std::vector<float> gf(P);
  std::vector<double> gd(P);
  net.backward(sf, pf.data(), gf.data(), Exec::cpu(), true);
  net.backward(sd, pd.data(), gd.data(), Exec::cpu(), true);
  EXPECT_TRUE(test::all_close(gd, gf, 1e-4, 1e-3));
  EXPECT_TRUE(test::all_close(sd.dact[0].to_host(), sf.dact[0].to_host(), 1e-5, 1e-3));
}

TEST(Net, FloatNetMatchesDoubleNet) {
  expect_float_net_matches_double("conv(4,3,pad=1) relu maxpool(2) conv(3,3) tanh avgpool(2) dense(8) sigmoid dense(3)",
                                  {2, 14, 14}, 5, 5, false);
}

TEST(Net, FloatNetMatchesDoubleNetInTraining) {
  expect_float_net_matches_double(
      "conv(4,3,pad=1) batchnorm relu maxpool(2) dropout(0.2) dense(8) batchnorm sigmoid dense(3)", {2, 10, 10}, 6, 5,
      true);
}

TEST(Net, FirstNonFiniteNamesTheLayer) {
  Net net("conv(2,3) relu dense(4) dense(3)", {1, 5, 5});
  std::vector<float> p = net.init_params(1);
  NetState<float> st;
  net.prepare(st, 2, Device::CPU);
  for (size_t i = 0; i < st.act[0].numel(); ++i) st.act[0].data()[i] = 0.5f;
  net.forward(st, p.data(), Exec::cpu());
  EXPECT_EQ(net.first_nonfinite(st), "");
  // A weight of the first dense layer (layer 3, after the inserted flatten) becomes infinite.
  const ParamEntry* dw = nullptr;
  for (auto& e : net.params())
    if (e.name == "3.weight") dw = &e;
  ASSERT_NE(dw, nullptr);
  for (size_t i = 0; i < dw->numel(); ++i) p[dw->offset + i] = INFINITY;
  net.forward(st, p.data(), Exec::cpu());
  std::string where = net.first_nonfinite(st);
  EXPECT_NE(where.find("layer 3 dense(4)"), std::string::npos) << where;
}

TEST(Net, BackwardOverwritesGradients) {
  Net net("conv(2,3) relu dense(3)", {1, 6, 6});
  std::vector<float> p = net.init_params(2);
  NetState<float> st;
  net.prepare(st, 2, Device::CPU);
  auto x = test::random_vec(st.act[0].numel(), 3);
  std::copy(x.begin(), x.end(), st.act[0].data());
  net.forward(st, p.data(), Exec::cpu());
  for (size_t i = 0; i < st.dact.back().numel(); ++i) st.dact.back().data()[i] = 0.1f * float(i % 7);
  std::vector<float> g1(net.num_params(), 123.f), g2(net.num_params(), -7.f);
  net.backward(st, p.data(), g1.data(), Exec::cpu(), false);
  net.backward(st, p.data(), g2.data(), Exec::cpu(), false);
  EXPECT_EQ(g1, g2);
}

// A state prepared for forward only (the evaluator's) has no gradient buffers, gives the logits of
// a full state bit for bit (fused or not), and refuses backward; preparing it again for backward
// gives it its buffers.
TEST(Net, ForwardOnlyStateHasNoGradientBuffers) {
  for (bool fuse : {false, true}) {
    SCOPED_TRACE(fuse ? "fused" : "unfused");
    Net net("conv(4,3,pad=1) relu maxpool(2) conv(3,3) relu dense(5) relu dense(3)", {1, 9, 9});
    net.set_fusion(fuse);
    std::vector<float> p = net.init_params(4);
    NetState<float> full, fwd;
    net.prepare(full, 3, Device::CPU);
    net.prepare(fwd, 3, Device::CPU, /*for_backward=*/false);
    size_t full_grads = 0;
    for (const Tensor& t : full.dact) full_grads += t.numel();
    EXPECT_GT(full_grads, 0u);
    for (const Tensor& t : fwd.dact) EXPECT_EQ(t.numel(), 0u);
    auto x = test::random_vec(full.act[0].numel(), 5);
    std::copy(x.begin(), x.end(), full.act[0].data());
    std::copy(x.begin(), x.end(), fwd.act[0].data());
    net.forward(full, p.data(), Exec::cpu());
    net.forward(fwd, p.data(), Exec::cpu());
    EXPECT_EQ(full.act.back().to_host(), fwd.act.back().to_host());
    std::vector<float> g(net.num_params());
    EXPECT_THROW(net.backward(fwd, p.data(), g.data(), Exec::cpu(), false), Error);
    net.prepare(fwd, 3, Device::CPU);  // for backward now: the buffers are there again
    for (size_t i = 0; i < fwd.dact.size(); ++i) EXPECT_EQ(fwd.dact[i].numel(), full.dact[i].numel()) << i;
  }
}

// The max-pool mask is kept per NetState, not in the layer: a forward on another state (the
// trainer evaluates the test set at another batch size between two training steps) must not
// disturb the backward of the first. Each state's gradients are those of a net that only saw it.
TEST(Net, EachStateKeepsItsOwnPoolingMask) {
  Net net("conv(3,3,pad=1) relu maxpool(2) dense(4)", {1, 6, 6});
  std::vector<double> p(net.num_params());
  auto pv = test::random_vec(p.size(), 21);
  std::copy(pv.begin(), pv.end(), p.begin());
  NetState<double> a, b, alone;
  net.prepare(a, 3, Device::CPU);
  net.prepare(alone, 3, Device::CPU);
  net.prepare(b, 5, Device::CPU);
  auto xa = test::tie_free_vec(a.act[0].numel(), 22), xb = test::tie_free_vec(b.act[0].numel(), 23);
  std::copy(xa.begin(), xa.end(), a.act[0].data());
  std::copy(xa.begin(), xa.end(), alone.act[0].data());
  std::copy(xb.begin(), xb.end(), b.act[0].data());
  auto g = test::random_vec(a.dact.back().numel(), 24);
  std::copy(g.begin(), g.end(), a.dact.back().data());
  std::copy(g.begin(), g.end(), alone.dact.back().data());
  std::vector<double> ga(net.num_params()), galone(net.num_params());
  net.forward(alone, p.data(), Exec::cpu());
  net.backward(alone, p.data(), galone.data(), Exec::cpu(), true);
  net.forward(a, p.data(), Exec::cpu());
  net.forward(b, p.data(), Exec::cpu());  // another batch size, other inputs, in between
  net.backward(a, p.data(), ga.data(), Exec::cpu(), true);
  EXPECT_EQ(ga, galone);
  EXPECT_EQ(a.dact[0].to_host(), alone.dact[0].to_host());
  ASSERT_EQ(a.saved.size(), size_t(net.num_layers()));
  EXPECT_EQ(a.saved[2].numel(), size_t(3 * 3 * 3 * 3));  // the maxpool's mask: (N, C, OH, OW)
  EXPECT_EQ(a.saved[0].numel(), 0u);                     // conv saves nothing
}

// Fusion on the CPU: each conv followed by a plain relu applies it (the ReLU layer leaves the plan
// and its buffer is never written), a max pooling right after that ReLU too (its layer leaves the
// plan; the conv writes the pool's output and mask), and forward and backward give the bits of the
// unfused layers; in double the flag changes nothing (the fused loops are float).
TEST(Net, FusionOnTheCpuGivesTheUnfusedBits) {
  Net net("conv(3,3,pad=1) relu maxpool(2) conv(4,3,pad=1) relu dense(4)", {1, 6, 6});
  std::vector<float> p = net.init_params(31);
  auto run = [&](bool fused, std::vector<float>* grads, std::vector<float>* din, std::vector<float>* relu_in) {
    NetState<float> st;
    net.set_fusion(fused);
    net.prepare(st, 2, Device::CPU);
    EXPECT_EQ(std::count(st.fused.begin(), st.fused.end(), true), fused ? 2 : 0);
    EXPECT_EQ(std::count(st.fused_pool.begin(), st.fused_pool.end(), true), fused ? 1 : 0);
    if (fused) {  // the plan: conv 0 writes the pool's output (slot 3); the relu and the pool do not run
      EXPECT_EQ(st.planned(0)->out, 3);
      EXPECT_TRUE(st.planned(0)->fused_pool);
      EXPECT_EQ(st.planned(1), nullptr);
      EXPECT_EQ(st.planned(2), nullptr);
      EXPECT_EQ(st.act[2].numel() + st.dact[2].numel(), 0u);  // the pool's input: never written
      EXPECT_EQ(st.planned(3)->out, 5);
      EXPECT_FALSE(st.planned(3)->fused_pool);
    }
    auto x = test::tie_free_vec(st.act[0].numel(), 32);
    for (size_t i = 0; i < x.size(); ++i) st.act[0].data()[i] = float(x[i]);
    net.forward(st, p.data(), Exec::cpu());
    auto dl = test::random_vec(st.dact.back().numel(), 33);
    for (size_t i = 0; i < dl.size(); ++i) st.dact.back().data()[i] = float(dl[i]);
    grads->assign(net.num_params(), 0.f);
    net.backward(st, p.data(), grads->data(), Exec::cpu(), true);
    *din = st.dact[0].to_host();
    *relu_in = st.act[1].to_host();  // the first ReLU's input: not written when fused
    return st.act.back().to_host();
  };
  std::vector<float> g_on, g_off, d_on, d_off, r_on, r_off;
  const std::vector<float> y_on = run(true, &g_on, &d_on, &r_on), y_off = run(false, &g_off, &d_off, &r_off);
  EXPECT_EQ(y_on, y_off);
  EXPECT_EQ(g_on, g_off);
  EXPECT_EQ(d_on, d_off);
  EXPECT_TRUE(r_on.empty()) << "a fused conv's own output slot holds a buffer";
  EXPECT_FALSE(r_off.empty());
  NetState<double> sd;
  net.set_fusion(true);
  net.prepare(sd, 2, Device::CPU);
  EXPECT_EQ(std::count(sd.fused.begin(), sd.fused.end(), true), 0);
  EXPECT_EQ(std::count(sd.fused_pool.begin(), sd.fused_pool.end(), true), 0);
}

static std::vector<uint32_t> float_bits(const std::vector<float>& v) {
  std::vector<uint32_t> b(v.size());
  if (!v.empty()) std::memcpy(b.data(), v.data(), v.size() * sizeof(float));
  return b;
}

// Which pools the CPU plan fuses: a max pooling right after a fused conv + ReLU whose windows do not
// overlap (2x2 stride 2, 3x3, gapped 2 stride 3; odd sizes), not an overlapping one, not after a
// stride-2 conv or a leaky ReLU, not an average pooling; and every net gives the unfused bits
// (logits, the mask's effect on the gradients, the input gradient), batch 3.
TEST(Net, MaxPoolFusionOnTheCpuGivesTheUnfusedBits) {
  struct Case {
    std::string arch;
    Dims input;
    int fused_pools;
  };
  for (const Case& k :
       {Case{"conv(5,3,pad=1) relu maxpool(2) conv(6,3) relu maxpool(3) dense(3)", {2, 13, 11}, 2},
        Case{"conv(4,5,pad=2) relu maxpool(2,stride=3) dense(3)", {1, 9, 10}, 1},
        Case{"conv(4,3) relu maxpool(3,stride=2) dense(3)", {1, 9, 9}, 0},
        Case{"conv(4,3,stride=2,pad=1) relu maxpool(2) dense(3)", {1, 9, 9}, 0},
        Case{"conv(4,3,pad=1) leaky_relu(0.1) maxpool(2) conv(3,1) relu maxpool(2) dense(3)", {1, 8, 8}, 0},
        Case{"conv(4,3,pad=1) relu avgpool(2) dense(3)", {1, 8, 8}, 0}}) {
    SCOPED_TRACE(k.arch);
    Net net(k.arch, k.input);
    std::vector<float> p = net.init_params(41);
    auto run = [&](bool fused, std::vector<float>* grads, std::vector<float>* din) {
      NetState<float> st;
      net.set_fusion(fused);
      net.prepare(st, 3, Device::CPU);
      EXPECT_EQ(std::count(st.fused_pool.begin(), st.fused_pool.end(), true), fused ? k.fused_pools : 0);
      auto x = test::tie_free_vec(st.act[0].numel(), 42);
      for (size_t i = 0; i < x.size(); ++i) st.act[0].data()[i] = float(x[i]);
      net.forward(st, p.data(), Exec::cpu());
      auto dl = test::random_vec(st.dact.back().numel(), 43);
      for (size_t i = 0; i < dl.size(); ++i) st.dact.back().data()[i] = float(dl[i]);
      grads->assign(net.num_params(), 0.f);
      net.backward(st, p.data(), grads->data(), Exec::cpu(), true);
      *din = st.dact[0].to_host();
      return st.act.back().to_host();
    };
    std::vector<float> g_on, g_off, d_on, d_off;
    const std::vector<float> y_on = run(true, &g_on, &d_on), y_off = run(false, &g_off, &d_off);
    EXPECT_EQ(float_bits(y_on), float_bits(y_off));
    EXPECT_EQ(float_bits(g_on), float_bits(g_off));
    EXPECT_EQ(float_bits(d_on), float_bits(d_off));
  }
}

// flatten is a view: the dense layer after it reads the conv's buffers (nothing is copied and the
// flatten's own buffers stay empty); as the last layer it still writes the logits.
TEST(Net, FlattenIsAViewExceptAsTheLastLayer) {
  Net mid("conv(2,3) relu dense(3)", {1, 5, 5});  // conv relu flatten dense
  ASSERT_EQ(mid.num_layers(), 4);
  ASSERT_EQ(mid.layer(2).spec(), "flatten");
  NetState<double> st;
  mid.prepare(st, 2, Device::CPU);
  EXPECT_EQ(st.act[3].numel() + st.dact[3].numel(), 0u);
  // The plan: conv, relu, and the dense reading the relu's output; the flatten does not run.
  ASSERT_EQ(st.plan.size(), 3u);
  EXPECT_EQ(st.planned(2), nullptr);
  const PlannedLayer* dense = st.planned(3);
  ASSERT_NE(dense, nullptr);
  EXPECT_EQ(dense->in, 2);
  EXPECT_EQ(dense->out, 4);
  EXPECT_FALSE(dense->fused_relu);
  EXPECT_EQ(st.planned(1)->in, 1);
  LayerCall<double> c = mid.layer_call<double>(st, *dense, nullptr, nullptr, Exec::cpu(), false);
  EXPECT_EQ(c.in, st.act[2].data());    // the relu's output, read as (N, 2*3*3)
  EXPECT_EQ(c.din, st.dact[2].data());  // and its gradient written there
  EXPECT_TRUE(passes(opts("conv(2,3) relu dense(3)", {1, 5, 5})));

  Net last("conv(2,3) flatten", {1, 5, 5});
  std::vector<double> p(last.num_params());
  auto pv = test::random_vec(p.size(), 41);
  std::copy(pv.begin(), pv.end(), p.begin());
  NetState<double> s2;
  last.prepare(s2, 2, Device::CPU);
  auto x = test::random_vec(s2.act[0].numel(), 42);
  std::copy(x.begin(), x.end(), s2.act[0].data());
  last.forward(s2, p.data(), Exec::cpu());
  EXPECT_EQ(s2.act[2].to_host(), s2.act[1].to_host());  // the logits: the conv's output, copied
  auto g = test::random_vec(s2.dact[2].numel(), 43);
  std::copy(g.begin(), g.end(), s2.dact[2].data());
  std::vector<double> grads(last.num_params());
  last.backward(s2, p.data(), grads.data(), Exec::cpu(), true);
  EXPECT_EQ(s2.dact[1].to_host(), s2.dact[2].to_host());
}

// ---- batch normalization and dropout in a net ------------------------------------------------------

TEST(NetGradcheck, BatchNormAndDropoutInTrainingMode) {
  // batchnorm after a conv (per channel) and after a dense layer (per feature); dropout after an
  // image and after a vector; the gradient check runs in training mode with one fixed mask.
  for (uint64_t seed : {1, 2}) {
    GradcheckOptions o =
        opts("conv(4,3,pad=1) batchnorm relu maxpool(2) dropout(0.3) dense(8) batchnorm tanh dropout(0.5) dense(3)",
             {2, 6, 6});
    o.seed = seed;
    o.batch = 4;
    EXPECT_TRUE(passes(o)) << "seed " << seed;
  }
}

TEST(Net, TrainingAndEvaluationModes) {
  Net net("conv(3,3) batchnorm relu dropout(0.5) dense(4) batchnorm dense(3)", {1, 6, 6});
  std::vector<float> p = net.init_params(2);
  const size_t P = net.num_params();
  NetState<float> st;
  net.prepare(st, 5, Device::CPU);
  auto x = test::random_vec(st.act[0].numel(), 3, -2, 4);
  for (size_t i = 0; i < x.size(); ++i) st.act[0].data()[i] = float(x[i]);
  gpu::StepCounters c;
  c.seed = 9, c.global_step = 4;

  // Evaluation: the initial running statistics (mean 0, variance 1): y = x / sqrt(1 + eps);
  // dropout passes its input on; no buffer changes.
  const std::vector<float> before = p;
  net.forward(st, p.data(), Exec::cpu());
  EXPECT_EQ(p, before);
  const std::vector<float> conv = st.act[1].to_host(), bn = st.act[2].to_host();
  for (size_t i = 0; i < conv.size(); ++i) EXPECT_FLOAT_EQ(bn[i], conv[i] / std::sqrt(1.f + 1e-5f));
  EXPECT_EQ(st.act[4].to_host(), st.act[3].to_host());

  // Training without buffers to update: the batch's statistics; dropout zeroes about half.
  net.forward(st, p.data(), Exec::cpu(), RunMode<float>::train(nullptr, &c));
  EXPECT_EQ(p, before);
  const std::vector<float> bnt = st.act[2].to_host();
  for (int ch = 0; ch < 3; ++ch) {  // per channel: mean 0 (beta), variance ~1 (gamma^2)
    double s = 0, q = 0;
    int n = 0;
    for (int i = 0; i < 5; ++i)
      for (int j = 0; j < 16; ++j, ++n) s += bnt[(i * 3 + ch) * 16 + j];
    for (int i = 0; i < 5; ++i)
      for (int j = 0; j < 16; ++j) q += std::pow(bnt[(i * 3 + ch) * 16 + j] - s / n, 2);
    EXPECT_NEAR(s / n, 0, 1e-5);
    EXPECT_NEAR(q / n, 1, 1e-3);
  }
  const std::vector<float> relu = st.act[3].to_host(), drop = st.act[4].to_host();
  int zeroed = 0, nonzero = 0;
  for (size_t i = 0; i < relu.size(); ++i)
    if (relu[i] != 0) {
      ++nonzero;
      if (drop[i] == 0)
        ++zeroed;
      else
        EXPECT_EQ(drop[i], relu[i] * 2.f);
    }
  EXPECT_GT(zeroed, nonzero / 4);
  EXPECT_LT(zeroed, nonzero * 3 / 4);

  // Training with the buffers: the running statistics move, the count goes to 1, the
  // parameters do not change.
  net.forward(st, p.data(), Exec::cpu(), RunMode<float>::train(p.data() + P, &c));
  for (size_t i = 0; i < P; ++i) ASSERT_EQ(p[i], before[i]);
  const ParamEntry& rm = net.buffers()[0];
  const ParamEntry& count = net.buffers()[2];
  EXPECT_EQ(rm.name, "1.running_mean");
  double moved = 0;
  for (size_t i = 0; i < rm.numel(); ++i) moved += std::fabs(p[rm.offset + i]);
  EXPECT_GT(moved, 0);
  EXPECT_EQ(p[count.offset], 1.f);
  EXPECT_EQ(p[net.buffers()[5].offset], 1.f);  // the second batchnorm's count

  // Backward after a training forward: dropout's gradient uses the forward's mask.
  std::vector<float> g(P);
  for (size_t i = 0; i < st.dact.back().numel(); ++i) st.dact.back().data()[i] = 0.1f * float(i % 7) - 0.3f;
  net.backward(st, p.data(), g.data(), Exec::cpu(), true);
  const std::vector<float> d3 = st.dact[3].to_host(), d4 = st.dact[4].to_host();
  for (size_t i = 0; i < d3.size(); ++i) {
    if (relu[i] != 0) {
      EXPECT_EQ(d3[i], drop[i] == 0 ? 0.f : d4[i] * 2.f);
    }
  }
}
