// The arch grammar, the presets, shape inference and the errors that name the layer.
#include <gtest/gtest.h>

#include "barecnn/arch.h"
#include "barecnn/error.h"
#include "barecnn/net.h"

using namespace barecnn;

namespace {

// The message of the UsageError that building `spec` on `input` throws ("" if none).
std::string build_error(const std::string& spec, const Dims& input = {1, 28, 28}) {
  try {
    Net net(spec, input);
  } catch (const UsageError& e) {
    EXPECT_EQ(e.exit_code(), 2);
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Arch, PaperPresetMatchesTheDesign) {
  Net net("paper", {1, 28, 28});
  EXPECT_EQ(net.spec(), "conv(32,5,pad=2) relu maxpool(2) flatten dense(128) relu dense(10)");
  ASSERT_EQ(net.num_layers(), 7);
  EXPECT_EQ(net.layer(0).out_dims(), (Dims{32, 28, 28}));
  EXPECT_EQ(net.layer(2).out_dims(), (Dims{32, 14, 14}));
  EXPECT_EQ(net.layer(3).out_dims(), (Dims{6272}));
  EXPECT_EQ(net.num_outputs(), 10);
  // torch.nn.Sequential names: the inserted flatten is layer 3, so the dense layers are 4 and 6.
  std::vector<std::string> names;
  for (auto& p : net.params()) names.push_back(p.name);
  EXPECT_EQ(names, (std::vector<std::string>{"0.weight", "0.bias", "4.weight", "4.bias", "6.weight", "6.bias"}));
  EXPECT_EQ(net.params()[0].dims, (Dims{32, 1, 5, 5}));  // OIHW
  EXPECT_EQ(net.params()[2].dims, (Dims{128, 6272}));    // [out, in]
  EXPECT_EQ(net.num_params(), size_t(32 * 25 + 32 + 128 * 6272 + 128 + 10 * 128 + 10));
  // Offsets are contiguous in order.
  size_t off = 0;
  for (auto& p : net.params()) {
    EXPECT_EQ(p.offset, off);
    off += p.numel();
  }
}

TEST(Arch, LeNetAndDeepPresetsBuild) {
  Net lenet("lenet5", {1, 28, 28});
  EXPECT_EQ(lenet.layer(2).out_dims(), (Dims{6, 14, 14}));
  EXPECT_EQ(lenet.layer(3).out_dims(), (Dims{16, 10, 10}));
  EXPECT_EQ(lenet.layer(5).out_dims(), (Dims{16, 5, 5}));
  EXPECT_EQ(lenet.num_outputs(), 10);
  Net deep("deep", {1, 28, 28});
  EXPECT_EQ(deep.num_outputs(), 10);
  EXPECT_EQ(deep.layer(9).out_dims(), (Dims{64, 7, 7}));
}

TEST(Arch, FashionPresetIsDeepWithBatchNormAndDropoutAndBringsItsRecipe) {
  Net f("Fashion", {1, 28, 28});  // (any case)
  EXPECT_EQ(f.num_outputs(), 10);
  EXPECT_EQ(f.layer(14).out_dims(), (Dims{64, 7, 7}));
  EXPECT_EQ(f.layer(17).spec(), "dense(256)");
  // deep's parameters, plus each batchnorm's weight and bias (32 + 32 + 64 + 64 + 256 channels);
  // the buffers are running mean and variance per channel and one count per batchnorm.
  Net deep("deep", {1, 28, 28});
  EXPECT_EQ(f.num_params(), deep.num_params() + 2 * (32 + 32 + 64 + 64 + 256));
  EXPECT_EQ(f.num_buffers(), size_t(2 * (32 + 32 + 64 + 64 + 256) + 5));
  int dropouts = 0;
  for (int i = 0; i < f.num_layers(); ++i) dropouts += f.layer(i).spec().rfind("dropout(", 0) == 0;
  EXPECT_EQ(dropouts, 3);
  // The recipe: the flags of profiling/RESULTS.md's 94% run; none for the other presets.
  auto recipe = preset_recipe("FASHION");
  std::string text;
  for (auto& [flag, value] : recipe) text += " " + flag + " " + value;
  EXPECT_EQ(text,
            " --epochs 30 --batch 64 --optimizer sgd --lr 0.05 --momentum 0.9 --weight-decay 5e-4 --lr-schedule "
            "cosine --warmup-epochs 1 --augment crop:2,flip");
  for (const char* p : {"paper", "lenet5", "deep", "conv(4,3) dense(10)"}) EXPECT_TRUE(preset_recipe(p).empty()) << p;
  EXPECT_EQ(preset_names(), "paper, lenet5, deep, fashion");
}

TEST(Arch, ExplicitFlattenIsNotDoubled) {
  Net a("conv(2,3) flatten dense(4)", {1, 5, 5});
  Net b("conv(2,3) dense(4)", {1, 5, 5});
  EXPECT_EQ(a.spec(), b.spec());
  EXPECT_EQ(a.num_layers(), 3);
}

TEST(Arch, ArgumentsAndCanonicalForm) {
  auto d = parse_arch(
      "conv( 8 , 3x5 , stride=2 , pad=1 ) leaky_relu(0.2) maxpool(3,stride=2) elu avgpool(2) l2pool(2x3,stride=1) "
      "dense(7) softmax");
  ASSERT_EQ(d.size(), 8u);
  EXPECT_EQ(d[0].kind, LayerKind::Conv);
  EXPECT_EQ(d[0].out, 8);
  EXPECT_EQ(d[0].kh, 3);
  EXPECT_EQ(d[0].kw, 5);
  EXPECT_EQ(d[0].stride, 2);
  EXPECT_EQ(d[0].pad, 1);
  EXPECT_EQ(layer_desc_str(d[0]), "conv(8,3x5,stride=2,pad=1)");
  EXPECT_FLOAT_EQ(d[1].act.alpha, 0.2f);
  EXPECT_EQ(d[2].stride, 2);
  EXPECT_FLOAT_EQ(d[3].act.alpha, 1.0f);  // elu default
  EXPECT_EQ(d[4].stride, 2);              // pools default to stride = window, as PyTorch
  EXPECT_EQ(layer_desc_str(d[5]), "l2pool(2x3,stride=1)");
  EXPECT_EQ(d[7].kind, LayerKind::Softmax);
}

TEST(Arch, UnknownLayerSuggestsTheNearestName) {
  std::string e = build_error("conv(8,3) rleu dense(10)");
  EXPECT_NE(e.find("unknown layer 'rleu'"), std::string::npos) << e;
  EXPECT_NE(e.find("did you mean 'relu'"), std::string::npos) << e;
  e = build_error("conv2d(8,3) dense(10)");
  EXPECT_NE(e.find("did you mean 'conv'"), std::string::npos) << e;
  e = build_error("maxpol(2) dense(10)");
  EXPECT_NE(e.find("did you mean 'maxpool'"), std::string::npos) << e;
}

TEST(Arch, ErrorsNumberLayersAsTheTableAndPyTorchDoFromZero) {
  // conv 0, relu 1, the inserted flatten 2, dense 3, then the bad layer 4.
  std::string e = build_error("conv(4,3) relu dense(8) foo dense(10)");
  EXPECT_NE(e.find("layer 4: unknown layer 'foo'"), std::string::npos) << e;
  e = build_error("conv(4,3) relu flatten dense(8) dense(x)");  // an explicit flatten: nothing inserted
  EXPECT_NE(e.find("layer 4 'dense(x)'"), std::string::npos) << e;
  e = build_error("conv(4,3) relu(2) dense(10)");  // before any dense: the position as written
  EXPECT_NE(e.find("layer 1 'relu(2)'"), std::string::npos) << e;
  // The same numbers as the shape errors and the table.
  Net n("conv(4,3) relu dense(8) relu dense(10)", {1, 8, 8});
  EXPECT_EQ(n.layer(4).label(), "layer 4 relu");
}

TEST(Arch, NamesInAnyCasePresetsToo) {
  EXPECT_EQ(Net("PAPER", {1, 28, 28}).spec(), Net("paper", {1, 28, 28}).spec());
  EXPECT_EQ(Net("Conv(8,3) ReLU Dense(10)", {1, 8, 8}).spec(), "conv(8,3) relu flatten dense(10)");
  std::string e = build_error("papr");
  EXPECT_NE(e.find("did you mean 'paper'"), std::string::npos) << e;
}

TEST(Arch, MalformedArgumentsNameTheLayer) {
  EXPECT_NE(build_error("conv(8) dense(10)").find("layer 0 'conv(8)'"), std::string::npos);
  EXPECT_NE(build_error("conv(8,3,strde=2) dense(10)").find("did you mean 'stride'"), std::string::npos);
  EXPECT_NE(build_error("conv(8,x) dense(10)").find("whole number"), std::string::npos);
  EXPECT_NE(build_error("conv(8,3 dense(10)").find("no closing ')'"), std::string::npos);
  EXPECT_NE(build_error("dense(10,3)").find("expected dense(units)"), std::string::npos);
  EXPECT_NE(build_error("relu(3) dense(10)").find("takes no arguments"), std::string::npos);
  EXPECT_NE(build_error("leaky_relu(abc) dense(10)").find("finite number"), std::string::npos);
  EXPECT_NE(build_error("").find("empty"), std::string::npos);
}

TEST(Arch, NegativeAndZeroSizesAreRejected) {
  EXPECT_NE(build_error("conv(0,3) dense(10)").find("between 1 and"), std::string::npos);
  EXPECT_NE(build_error("conv(-4,3) dense(10)").find("between 1 and"), std::string::npos);
  EXPECT_NE(build_error("conv(4,3,stride=0) dense(10)").find("stride"), std::string::npos);
  EXPECT_NE(build_error("conv(4,3,pad=-1) dense(10)").find("pad"), std::string::npos);
  EXPECT_NE(build_error("dense(0)").find("units"), std::string::npos);
  EXPECT_NE(build_error("maxpool(0) dense(10)").find("kernel size"), std::string::npos);
}

TEST(Arch, KernelLargerThanItsInputNamesTheLayer) {
  // conv(8,5)+maxpool(2) leaves 12x12 -> 6x6 after a second pool; a 7x7 kernel does not fit.
  std::string e = build_error("conv(8,5) maxpool(2) conv(16,3) maxpool(2) conv(32,7) dense(10)", {1, 28, 28});
  EXPECT_NE(e.find("layer 4 conv(32,7): input 5x5 is smaller than the 7x7 kernel"), std::string::npos) << e;
  e = build_error("maxpool(4) maxpool(4) maxpool(4) dense(10)", {1, 28, 28});
  EXPECT_NE(e.find("layer 2 maxpool(4): input 1x1 is smaller than the 4x4 pooling window"), std::string::npos) << e;
}

TEST(Arch, ImageLayerAfterFlattenIsRejected) {
  std::string e = build_error("dense(10) conv(4,3)");
  EXPECT_NE(e.find("needs a CxHxW input"), std::string::npos) << e;
  e = build_error("conv(4,3) softmax");
  EXPECT_NE(e.find("softmax works on a flat vector"), std::string::npos) << e;
}

TEST(Arch, LastLayerWidthMustMatchTheClasses) {
  Net net("conv(4,3) dense(7)", {1, 8, 8});
  try {
    net.check_classes(10, "the data in /d");
    FAIL() << "no error";
  } catch (const UsageError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("7 outputs"), std::string::npos) << m;
    EXPECT_NE(m.find("10 classes"), std::string::npos) << m;
    EXPECT_NE(m.find("dense(10)"), std::string::npos) << m;
  }
  EXPECT_NO_THROW(net.check_classes(7, "x"));
}

TEST(Arch, NetEndingInAnImageGetsFlattened) {
  Net net("conv(5,8)", {1, 8, 8});  // 5x1x1 -> flatten -> 5 outputs
  EXPECT_EQ(net.num_outputs(), 5);
  EXPECT_EQ(net.layer(net.num_layers() - 1).spec(), "flatten");
}

TEST(Arch, InitIsSeededAndFollowsTheRule) {
  Net net("paper", {1, 28, 28});
  auto a = net.init_params(3), b = net.init_params(3), c = net.init_params(4);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  // Biases start at zero; the first conv (ReLU after it) is He-normal: std ~ sqrt(2/25).
  const auto& w = net.params()[0];
  double s2 = 0;
  for (size_t i = 0; i < w.numel(); ++i) s2 += double(a[w.offset + i]) * a[w.offset + i];
  double sd = std::sqrt(s2 / w.numel());
  EXPECT_NEAR(sd, std::sqrt(2.0 / 25), 0.06);
  for (size_t i = 0; i < net.params()[1].numel(); ++i) EXPECT_EQ(a[net.params()[1].offset + i], 0.f);
  // The last dense layer (no activation after it) is Xavier-uniform: |w| <= sqrt(6/(128+10)).
  const auto& wl = net.params()[4];
  double lim = std::sqrt(6.0 / 138);
  float mx = 0;
  for (size_t i = 0; i < wl.numel(); ++i) mx = std::max(mx, std::fabs(a[wl.offset + i]));
  EXPECT_LE(mx, lim);
  EXPECT_GT(mx, 0.8 * lim);
}

TEST(Arch, NearestSuggestsOnlyPlausibleNames) {
  EXPECT_EQ(nearest("--epoch", {"--epochs", "--batch"}), "--epochs");
  EXPECT_EQ(nearest("zzzzzzzz", {"relu", "conv"}), "");
}

TEST(Arch, ResolveGivesEveryLayerItsShapesWithoutANet) {
  const std::vector<ArchLayer> a = resolve_arch("conv(4,3x5,stride=2,pad=1) l2pool(2x3,stride=1) dense(3)", {2, 9, 12});
  ASSERT_EQ(a.size(), 4u);  // a flatten is inserted before the dense layer
  // (9 - 3 + 2) / 2 + 1 = 5, (12 - 5 + 2) / 2 + 1 = 5; then 5 - 2 + 1 = 4, 5 - 3 + 1 = 3.
  EXPECT_EQ(a[0].in, (Dims{2, 9, 12}));
  EXPECT_EQ(a[0].out, (Dims{4, 5, 5}));
  EXPECT_EQ(a[1].out, (Dims{4, 4, 3}));
  EXPECT_EQ(a[2].desc.kind, LayerKind::Flatten);
  EXPECT_EQ(a[2].out, (Dims{48}));
  EXPECT_EQ(a[3].in, (Dims{48}));
  EXPECT_EQ(a[3].out, (Dims{3}));
  EXPECT_EQ(arch_spec(a), "conv(4,3x5,stride=2,pad=1) l2pool(2x3,stride=1) flatten dense(3)");
  EXPECT_EQ(arch_spec(a), Net(arch_spec(a), {2, 9, 12}).spec());
}

TEST(Arch, BatchNormAndDropoutLayers) {
  Net net("conv(4,3) batchnorm relu dropout(0.25) dense(6) batchnorm dropout dense(10)", {1, 8, 8});
  EXPECT_EQ(net.spec(), "conv(4,3) batchnorm relu dropout(0.25) flatten dense(6) batchnorm dropout(0.5) dense(10)");
  // the canonical spec builds the same net again
  EXPECT_EQ(Net(net.spec(), {1, 8, 8}).spec(), net.spec());
  EXPECT_EQ(net.layer(1).out_dims(), (Dims{4, 6, 6}));  // shape-preserving
  EXPECT_EQ(net.layer(6).out_dims(), (Dims{6}));
  // PyTorch's names: weight and bias are parameters; the running statistics and the count are
  // buffers, after every parameter in the flat buffer.
  std::vector<std::string> params, buffers;
  for (auto& p : net.params()) params.push_back(p.name);
  for (auto& b : net.buffers()) buffers.push_back(b.name + ":" + b.file_dtype);
  EXPECT_EQ(params, (std::vector<std::string>{"0.weight", "0.bias", "1.weight", "1.bias", "5.weight", "5.bias",
                                              "6.weight", "6.bias", "8.weight", "8.bias"}));
  EXPECT_EQ(buffers,
            (std::vector<std::string>{"1.running_mean:F32", "1.running_var:F32", "1.num_batches_tracked:I64",
                                      "6.running_mean:F32", "6.running_var:F32", "6.num_batches_tracked:I64"}));
  EXPECT_EQ(net.num_buffers(), size_t((2 * 4 + 1) + (2 * 6 + 1)));
  EXPECT_EQ(net.buffers()[0].offset, net.num_params());
  EXPECT_EQ(net.state_size(), net.num_params() + net.num_buffers());
  // init: gamma 1, beta 0, running mean 0, running variance 1, count 0
  const std::vector<float> p = net.init_params(3);
  ASSERT_EQ(p.size(), net.state_size());
  for (int c = 0; c < 4; ++c) {
    EXPECT_EQ(p[net.params()[2].offset + c], 1.f);
    EXPECT_EQ(p[net.params()[3].offset + c], 0.f);
    EXPECT_EQ(p[net.buffers()[0].offset + c], 0.f);
    EXPECT_EQ(p[net.buffers()[1].offset + c], 1.f);
  }
  EXPECT_EQ(p[net.buffers()[2].offset], 0.f);
}

TEST(Arch, BatchNormAndDropoutArgumentsAreChecked) {
  EXPECT_NE(build_error("conv(4,3) dropout(1) dense(10)")
                .find("layer 1 'dropout(1)': the dropout probability p must "
                      "be in [0, 1)"),
            std::string::npos)
      << build_error("conv(4,3) dropout(1) dense(10)");
  EXPECT_NE(build_error("dropout(-0.1) dense(10)").find("must be in [0, 1)"), std::string::npos);
  EXPECT_NE(build_error("dropout(x) dense(10)").find("must be a finite number, got 'x'"), std::string::npos);
  EXPECT_NE(build_error("dropout(0.1,0.2) dense(10)").find("expected dropout(p), got 2 arguments"), std::string::npos);
  EXPECT_NE(build_error("batchnorm(3) dense(10)").find("'batchnorm' takes no arguments"), std::string::npos);
  EXPECT_NE(build_error("batchnrom dense(10)").find("did you mean 'batchnorm'?"), std::string::npos);
  EXPECT_EQ(build_error("dropout(0) batchnorm() dense(10)"), "");
}

TEST(Arch, BatchNormRefusesToTrainOnOneValuePerFeature) {
  Net net("dense(5) batchnorm dense(10)", {1, 4, 4});
  EXPECT_NO_THROW(net.check_train_batch(2));
  try {
    net.check_train_batch(1);
    FAIL() << "no error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("layer 2 batchnorm: training normalizes each feature over the batch, which "
                                         "needs at least 2 values; --batch 1 gives 1"),
              std::string::npos)
        << e.what();
  }
  // after an image, one sample has H*W values per channel: batch 1 trains
  EXPECT_NO_THROW(Net("conv(2,3) batchnorm dense(10)", {1, 5, 5}).check_train_batch(1));
}
