// End-to-end tests of the barecnn executable on small IDX files the tests write: train, eval and
// predict agree; hostile files and flags give exit code 1 or 2 and a message naming the culprit;
// nothing already in the output folder is lost; a run killed with SIGKILL and resumed ends with
// the weights of an uninterrupted run.
#include <gtest/gtest.h>
#include <png.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "barecnn/arch.h"
#include "barecnn/fileutil.h"
#include "barecnn/idx.h"
#include "barecnn/safetensors.h"
#include "barecnn/model_io.h"
#include "barecnn/trainer.h"
#include "synthetic_data.h"
#include "test_gpu.h"

using namespace barecnn;

namespace {

using Result = test::CommandResult;
// The barecnn executable of this build with `args`.
Result run(const std::string& args) { return test::run_command(test::barecnn_exe() + " " + args); }
// The same with environment assignments ("NAME=value ...") before it.
Result run_env(const std::string& env, const std::string& args) {
  return test::run_command(env + " " + test::barecnn_exe() + " " + args);
}

const char* kArch = "\"conv(4,3,pad=1) relu maxpool(2) dense(16) relu dense(3)\"";

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f << bytes;
}

class Cli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = test::fresh_dir("cli_data");
    test::write_bars_dataset(data_);
    model_dir_ = test::fresh_dir("cli_model");
    Result r = run("train --device cpu --data " + data_ + " --arch " + kArch +
                   " --epochs 2 --batch 32 --lr 0.05 --out " + model_dir_);
    ASSERT_EQ(r.rc, 0) << r.out;
    ready_ = true;
  }
  // A failed suite set-up would otherwise show as "skipped": make it fail every test.
  void SetUp() override { ASSERT_TRUE(ready_) << "the suite set-up failed"; }
  static bool ready_;
  // A copy of the data folder with one file replaced by `bytes`.
  static std::string data_with(const std::string& name, const std::string& file, const std::string& bytes) {
    std::string d = test::fresh_dir(name);
    for (const char* f : {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte.gz",
                          "t10k-labels-idx1-ubyte.gz"})
      std::filesystem::copy_file(data_ + "/" + f, d + "/" + f);
    std::filesystem::remove(d + "/" + file);
    write_bytes(d + "/" + file, bytes);
    return d;
  }
  static std::string data_, model_dir_;
};
std::string Cli::data_, Cli::model_dir_;
bool Cli::ready_ = false;

#define EXPECT_FAILS_WITH(res, code_lo, text)                                                       \
  do {                                                                                              \
    Result r_ = (res);                                                                              \
    EXPECT_GE(r_.rc, code_lo) << r_.out;                                                            \
    EXPECT_LE(r_.rc, 2) << r_.out;                                                                  \
    EXPECT_NE(r_.out.find(text), std::string::npos) << "expected '" << text << "' in:\n" << r_.out; \
  } while (0)

}  // namespace

TEST_F(Cli, TrainEvalPredictAgree) {
  auto summary = nlohmann::json::parse(read_file(model_dir_ + "/summary.json", "summary"));
  Result ev = run("eval --model " + model_dir_ + "/model.safetensors --data " + data_ + " --device cpu --json");
  ASSERT_EQ(ev.rc, 0) << ev.out;
  auto j = nlohmann::json::parse(ev.out);
  EXPECT_EQ(j["count"], 150);
  EXPECT_DOUBLE_EQ(j["accuracy"].get<double>(), summary["test_accuracy"].get<double>());
  EXPECT_NEAR(j["loss"].get<double>(), summary["test_loss"].get<double>(), 1e-9);
  EXPECT_GT(j["accuracy"].get<double>(), 0.9);

  std::string csv = model_dir_ + "/pred.csv";
  Result pr = run("predict --model " + model_dir_ + "/model.safetensors --images " + data_ +
                  "/t10k-images-idx3-ubyte.gz --output " + csv + " --device cpu");
  ASSERT_EQ(pr.rc, 0) << pr.out;
  std::istringstream in(read_file(csv, "csv"));
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "index,predicted,class,probability,logit_0,logit_1,logit_2");
  std::vector<uint8_t> labels = read_idx_labels(data_ + "/t10k-labels-idx1-ubyte.gz");
  int rows = 0, correct = 0;
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::stringstream ss(line);
    std::string cell;
    while (std::getline(ss, cell, ',')) f.push_back(cell);
    ASSERT_EQ(f.size(), 7u) << line;
    EXPECT_EQ(std::stoi(f[0]), rows);
    std::vector<double> z = {std::stod(f[4]), std::stod(f[5]), std::stod(f[6])};
    const int arg = int(std::max_element(z.begin(), z.end()) - z.begin());
    EXPECT_EQ(std::stoi(f[1]), arg) << line;
    EXPECT_EQ(f[2], std::to_string(arg)) << line;  // (the class names of this data: "0", "1", "2")
    double sum = 0;
    for (double v : z) sum += std::exp(v - z[arg]);
    EXPECT_NEAR(std::stod(f[3]), 1 / sum, 2e-6) << line;
    correct += std::stoi(f[1]) == labels[rows];
    ++rows;
  }
  EXPECT_EQ(rows, 150);
  EXPECT_DOUBLE_EQ(correct / 150.0, j["accuracy"].get<double>());
}

TEST_F(Cli, PredictReadsPngAndPgmImagesAsTheIdxFile) {
  // The first five test images as files (PNG and PGM, one inverted) give the IDX file's rows.
  IdxImages all = read_idx_images(data_ + "/t10k-images-idx3-ubyte.gz");
  std::string dir = test::fresh_dir("cli_png");
  for (int i = 0; i < 5; ++i) {
    const uint8_t* px = all.pixels.data() + size_t(i) * 64;
    const std::string name = dir + "/img" + std::to_string(i);
    if (i % 2 == 0) {
      png_image img;
      std::memset(&img, 0, sizeof img);
      img.version = PNG_IMAGE_VERSION;
      img.width = img.height = 8;
      img.format = PNG_FORMAT_GRAY;
      ASSERT_TRUE(png_image_write_to_file(&img, (name + ".png").c_str(), 0, px, 0, nullptr));
    } else {
      test::spit(name + ".pgm", "P5 8 8 255\n" + std::string(px, px + 64));
    }
  }
  Result idx = run("predict --device cpu --model " + model_dir_ + "/model.safetensors --images " + data_ +
                   "/t10k-images-idx3-ubyte.gz");
  Result png = run("predict --device cpu --model " + model_dir_ + "/model.safetensors --images " + dir);
  ASSERT_EQ(idx.rc, 0) << idx.out;
  ASSERT_EQ(png.rc, 0) << png.out;
  // No --images: the test images of the model's own data.
  Result own = run("predict --device cpu --model " + model_dir_ + "/model.safetensors");
  ASSERT_EQ(own.rc, 0) << own.out;
  EXPECT_NE(own.out.find("note: predicting the test images of the model's data"), std::string::npos) << own.out;
  EXPECT_EQ(own.out.substr(own.out.find("index,")), idx.out);
  std::istringstream a(idx.out), b(png.out);
  std::string la, lb;
  std::getline(a, la), std::getline(b, lb);
  EXPECT_EQ(lb, "index,file,predicted,class,probability,logit_0,logit_1,logit_2");
  for (int i = 0; i < 5; ++i) {
    std::getline(a, la), std::getline(b, lb);
    const std::string file = "img" + std::to_string(i) + (i % 2 == 0 ? ".png" : ".pgm");
    EXPECT_EQ(lb, std::to_string(i) + "," + file + la.substr(la.find(','))) << i;
  }
  // One image, inverted twice over: --invert of the inverted file is the original's row.
  const uint8_t* px = all.pixels.data() + 64;
  std::string inv(64, '\0');
  for (int k = 0; k < 64; ++k) inv[k] = char(255 - px[k]);
  test::spit(dir + "/inv.pgm", "P5 8 8 255\n" + inv);
  Result one =
      run("predict --device cpu --invert --model " + model_dir_ + "/model.safetensors --images " + dir + "/inv.pgm");
  ASSERT_EQ(one.rc, 0) << one.out;
  std::istringstream c(one.out);
  std::string lc;
  std::getline(c, lc), std::getline(c, lc);
  std::istringstream a2(idx.out);
  std::getline(a2, la), std::getline(a2, la), std::getline(a2, la);  // the IDX file's second image
  EXPECT_EQ(lc.substr(lc.find(',')), la.substr(la.find(',')));
  // A colour image, or one of another size: refused, naming the file.
  test::spit(dir + "/big.pgm", "P5 9 8 255\n" + std::string(72, 'x'));
  EXPECT_FAILS_WITH(run("predict --device cpu --model " + model_dir_ + "/model.safetensors --images " + dir), 2,
                    "big.pgm: the image is 9x8 pixels (width x height) but the model takes 8x8");
}

// The GPU's progress lines (stdout is not a terminal here: one line a tenth of an epoch): the last
// line of an epoch shows the epoch's own figures. The GPU copies its metrics to the host
// asynchronously; the last line once showed the copy from the epoch's start (loss 0, acc 0) when
// an epoch had fewer steps than the polling interval. Found by running it through the emulator.
TEST_F(Cli, GpuProgressLastLineShowsTheEpochsFigures) {
  BARECNN_REQUIRE_GPU();
  std::string out = test::fresh_dir("cli_gpu_progress");
  Result r =
      run("train --device cuda --data " + data_ + " --arch " + kArch + " --epochs 1 --batch 32 --lr 0.05 --out " + out);
  ASSERT_EQ(r.rc, 0) << r.out;
  const std::string key = "epoch 1/1 step ";
  size_t at = r.out.rfind(key);
  ASSERT_NE(at, std::string::npos) << r.out;
  long long step = 0, steps = 0;
  double loss = -1, acc = -1;
  ASSERT_EQ(std::sscanf(r.out.c_str() + at + key.size(), "%lld/%lld  loss %lf  acc %lf%%", &step, &steps, &loss, &acc),
            4)
      << r.out.substr(at, 120);
  EXPECT_EQ(step, steps) << r.out.substr(at, 120);
  auto sum = nlohmann::json::parse(read_file(out + "/summary.json", "summary"));
  const auto& e = sum["epochs"][0];
  EXPECT_NEAR(loss, e["train_loss"].get<double>(), 6e-5) << r.out.substr(at, 120);
  EXPECT_NEAR(acc, 100 * e["train_accuracy"].get<double>(), 6e-3) << r.out.substr(at, 120);
}

TEST_F(Cli, InfoAndHelp) {
  Result r = run("info");
  EXPECT_EQ(r.rc, 0);
  EXPECT_NE(r.out.find("CUDA architectures compiled in"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("paper"), std::string::npos);
  EXPECT_NE(r.out.find("train --arch fashion brings its recipe: --epochs 30 "), std::string::npos) << r.out;
  if (gpu_status().emulated) {  // the CUDA emulator build says so, and that its timings mean nothing
    EXPECT_NE(r.out.find("GPU 0: barecnn CUDA emulator, compute capability 9.0"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("through the CUDA emulator in tests/emu"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("  cuBLAS: the emulator\n"), std::string::npos) << r.out;
  } else if (gpu_available()) {  // a real GPU: info opens cuBLAS and says from where
    EXPECT_NE(r.out.find("  cuBLAS: "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("libcublas.so."), std::string::npos) << r.out;
  } else {
    EXPECT_NE(r.out.find("  cuBLAS: not opened (only a GPU run opens it)\n"), std::string::npos) << r.out;
  }
  Result h = run("train --help");
  EXPECT_EQ(h.rc, 0);
  EXPECT_NE(h.out.find("Examples"), std::string::npos) << h.out;
  EXPECT_NE(h.out.find("--checkpoint-every"), std::string::npos);
  EXPECT_NE(h.out.find("--augment"), std::string::npos);
  EXPECT_NE(h.out.find("RandomHorizontalFlip"), std::string::npos) << h.out;
  EXPECT_NE(h.out.find("Flips suit clothes (Fashion-MNIST"), std::string::npos) << h.out;
  EXPECT_NE(h.out.find("not digits (MNIST"), std::string::npos) << h.out;
}

TEST_F(Cli, NoCommandListsTheCommandsAndVersionAnswers) {
  Result r = run("");
  EXPECT_EQ(r.rc, 0) << r.out;
  for (const char* c : {"train", "eval", "predict", "gradcheck", "bench", "info"})
    EXPECT_NE(r.out.find(std::string("  ") + c), std::string::npos) << c << " not listed:\n" << r.out;
  EXPECT_EQ(r.out.find("required"), std::string::npos) << r.out;
  for (const char* flag : {"--version", "-V"}) {
    Result v = run(flag);
    EXPECT_EQ(v.rc, 0) << v.out;
    EXPECT_NE(v.out.find(std::string("barecnn ") + BARECNN_VERSION + " (commit "), std::string::npos) << v.out;
  }
  EXPECT_FAILS_WITH(run("frobnicate"), 2, "unknown command 'frobnicate'");
  EXPECT_EQ(run("frobnicate").out.find("did you mean"), std::string::npos);
  EXPECT_FAILS_WITH(run("trian"), 2, "unknown command 'trian'; did you mean 'train'?");
  EXPECT_FAILS_WITH(run("evl --model x"), 2, "did you mean 'eval'?");
}

// cuBLAS is opened at its first call (host/core/cublas_lib.cpp), not at start-up: linked, it cost
// every process ~0.4 s of static initializers. The loader's own record (LD_DEBUG=files) of a CPU
// evaluation and of --version names no libcublas.
TEST_F(Cli, CpuRunsNeverOpenCublas) {
  for (const std::string& args :
       {std::string("--version"), "eval --device cpu --model " + model_dir_ + "/model.safetensors --data " + data_}) {
    Result r = run_env("LD_DEBUG=files", args);
    EXPECT_EQ(r.rc, 0) << r.out;
    EXPECT_NE(r.out.find("file="), std::string::npos) << "no loader record from LD_DEBUG=files:\n" << r.out;
    EXPECT_EQ(r.out.find("libcublas"), std::string::npos) << args << " opened cuBLAS:\n" << r.out;
  }
}

TEST_F(Cli, GradcheckCommand) {
  Result r = run("gradcheck --arch \"conv(3,3,stride=2,pad=1) elu l2pool(2) dense(4)\" --input 2x9x9 --loss bce");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("gradcheck passed"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("input"), std::string::npos);
  // batchnorm and dropout: checked in training mode (the batch's statistics, one fixed mask)
  Result bn =
      run("gradcheck --arch \"conv(3,3,pad=1) batchnorm relu dropout(0.4) dense(6) batchnorm tanh dense(4)\" "
          "--input 1x6x6 --batch 3");
  EXPECT_EQ(bn.rc, 0) << bn.out;
  EXPECT_NE(bn.out.find("gradcheck passed"), std::string::npos) << bn.out;
  EXPECT_NE(bn.out.find("1.weight"), std::string::npos) << bn.out;  // batchnorm's gamma is checked
  EXPECT_FAILS_WITH(run("gradcheck --arch \"dense(6) batchnorm dense(4)\" --input 1x4x4 --batch 1"), 2,
                    "layer 2 batchnorm: training normalizes each feature over the batch");
  EXPECT_FAILS_WITH(run("gradcheck --arch \"dropout(1.5) dense(4)\" --input 1x4x4"), 2,
                    "layer 0 'dropout(1.5)': the dropout probability p must be in [0, 1)");
  EXPECT_FAILS_WITH(run("gradcheck --input 3x32"), 2, "--input");
  EXPECT_FAILS_WITH(run("gradcheck --seed -3"), 2, "--seed must be an integer from 0");
}

TEST_F(Cli, BadFlags) {
  std::string base =
      "train --device cpu --data " + data_ + " --arch " + kArch + " --out " + test::fresh_dir("cli_flags");
  EXPECT_FAILS_WITH(run(base + " --epoch 2"), 2, "did you mean --epochs");
  EXPECT_FAILS_WITH(run(base + " --epochs abc"), 2, "--epochs");
  EXPECT_FAILS_WITH(run(base + " --lr -1"), 2, "--lr must be a positive finite number");
  EXPECT_FAILS_WITH(run(base + " --lr nan"), 2, "--lr must be a positive finite number");
  EXPECT_FAILS_WITH(run(base + " --batch 0"), 2, "--batch must be >= 1");
  EXPECT_FAILS_WITH(run(base + " --epochs 0"), 2, "--epochs must be >= 1");
  EXPECT_FAILS_WITH(run(base + " --optimizer adamw"), 2, "--optimizer");
  EXPECT_FAILS_WITH(run(base + " --loss crossentropy"), 2, "--loss");
  EXPECT_FAILS_WITH(run(base + " --device tpu"), 2, "--device");
  EXPECT_FAILS_WITH(run(base + " --cuda-graph yes"), 2, "--cuda-graph: expected on or off, got 'yes'");
  EXPECT_FAILS_WITH(run(base + " --fuse 1"), 2, "--fuse: expected auto, on or off, got '1'");
  EXPECT_FAILS_WITH(run("bench --device cpu --fuse maybe"), 2, "--fuse: expected auto, on or off, got 'maybe'");
  EXPECT_FAILS_WITH(run(base + " --epochs 2 --epochs 3"), 2, "--epochs is given 2 times; give it once");
  // --lr-schedule / --warmup-epochs: the flag, what it expects, what it found.
  EXPECT_FAILS_WITH(run(base + " --lr-schedule step:3,x:0.1"), 2,
                    "--lr-schedule: expected constant, step:E1,E2,...:GAMMA");
  EXPECT_FAILS_WITH(run(base + " --lr-schedule step:3,x:0.1"), 2,
                    "a milestone should be a whole number of epochs >= 1, found 'x' in 'step:3,x:0.1'");
  EXPECT_FAILS_WITH(run(base + " --lr-schedule step::0.1"), 2, "no milestone epochs before ':0.1' in 'step::0.1'");
  EXPECT_FAILS_WITH(run(base + " --lr-schedule step:3"), 2, "step needs its milestones and GAMMA");
  EXPECT_FAILS_WITH(run(base + " --lr-schedule linear"), 2, "unknown schedule 'linear' in 'linear'");
  EXPECT_FAILS_WITH(run(base + " --lr-schedule step:3:0"), 2, "GAMMA should be a number > 0, found '0'");
  EXPECT_FAILS_WITH(run(base + " --lr-schedule step:3:-0.5"), 2, "GAMMA should be a number > 0, found '-0.5'");
  EXPECT_FAILS_WITH(run(base + " --lr-schedule step:5,3:0.1"), 2, "the milestones should increase, found 3 after 5");
  EXPECT_FAILS_WITH(run(base + " --lr-schedule step:3,3:0.1"), 2, "the milestones should increase, found 3 after 3");
  EXPECT_FAILS_WITH(run(base + " --lr-schedule cosine:0"), 2, "cosine:E takes a whole number of epochs >= 1");
  EXPECT_FAILS_WITH(run(base + " --lr-schedule constant:2"), 2, "constant takes no arguments");
  EXPECT_FAILS_WITH(run(base + " --epochs 3 --warmup-epochs -1"), 2,
                    "--warmup-epochs: expected a whole number of epochs from 0 to 2 (less than --epochs 3), got -1");
  EXPECT_FAILS_WITH(run(base + " --epochs 3 --warmup-epochs 3"), 2,
                    "--warmup-epochs: expected a whole number of epochs from 0 to 2 (less than --epochs 3), got 3");
  EXPECT_FAILS_WITH(run(base + " --epochs 4 --lr-schedule cosine:3"), 2,
                    "the rate schedule cosine:3 reaches 0 after epoch 3");
  // --augment: the flag, what it expects, what it found; a crop beyond half the 8x8 images.
  EXPECT_FAILS_WITH(run(base + " --augment crop:0"), 2,
                    "--augment: expected none, or crop:P (P a whole number of pixels >= 1), flip, or both as "
                    "crop:P,flip; the padding P of crop:P should be a whole number of pixels >= 1, found '0' in "
                    "'crop:0'");
  EXPECT_FAILS_WITH(run(base + " --augment crop:x"), 2, "found 'x' in 'crop:x'");
  EXPECT_FAILS_WITH(run(base + " --augment flop"), 2, "--augment: expected none, or crop:P");
  EXPECT_FAILS_WITH(run(base + " --augment flop"), 2, "unknown augmentation 'flop' in 'flop'");
  EXPECT_FAILS_WITH(run(base + " --augment ''"), 2, "--augment: expected none, or crop:P");
  EXPECT_FAILS_WITH(run(base + " --augment crop:2,flip,flip"), 2, "flip twice in 'crop:2,flip,flip'");
  EXPECT_FAILS_WITH(run(base + " --augment crop:99"), 2,
                    "--augment crop:99: the padding P of crop:P should be from 1 to 4 (at most half of the 8x8 "
                    "images), found 99");
  EXPECT_FAILS_WITH(run(base + " --seed -1"), 2, "--seed must be an integer from 0 to 18446744073709551615, got '-1'");
  EXPECT_FAILS_WITH(run(base + " --seed 99999999999999999999"), 2, "got '99999999999999999999'");
  EXPECT_FAILS_WITH(run(base + " --loss nll"), 2, "did you mean 'cross_entropy'?");
  EXPECT_FAILS_WITH(run(base + " --class-names a,,b"), 2, "--class-names: an empty name");
  EXPECT_FAILS_WITH(run(base + " --threads 100000"), 2, "--threads must be from 0 to 1024, got 100000");
  // One message, on its first line: no blank line before it.
  Result r = run(base + " --lr -1");
  EXPECT_EQ(r.out.rfind("barecnn: error: ", 0), 0u) << r.out;
}

// --augment crop:2,flip trains through the command line: the banner and summary.json name it, and
// the weights differ from the run without it (the suite's model, the same flags otherwise).
TEST_F(Cli, AugmentedRunNamesItsSettingAndTrainsOtherWeights) {
  const std::string out = test::fresh_dir("cli_augment");
  Result r = run("train --device cpu --data " + data_ + " --arch " + kArch +
                 " --epochs 2 --batch 32 --lr 0.05 --augment crop:2,flip --out " + out);
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find(", seed 1, augment crop:2,flip\n"), std::string::npos) << r.out;
  auto s = nlohmann::json::parse(read_file(out + "/summary.json", "summary"));
  EXPECT_EQ(s["augment"], "crop:2,flip");
  EXPECT_NE(load_model(out + "/model.safetensors").params, load_model(model_dir_ + "/model.safetensors").params);
  auto plain = nlohmann::json::parse(read_file(model_dir_ + "/summary.json", "summary"));
  EXPECT_EQ(plain["augment"], "none");
  // The resume of another setting is refused, naming the flag and both values.
  EXPECT_FAILS_WITH(run("train --device cpu --epochs 3 --resume " + out + " --augment crop:1,flip"), 2,
                    "--augment crop:1,flip (the run's: crop:2,flip)");
}

TEST_F(Cli, FashionPresetTrainsWithItsRecipeWhereTheCommandLineIsSilent) {
  // Each recipe flag is one of train's own (a renamed flag would break the recipe).
  Result h = run("train --help");
  for (auto& [flag, value] : preset_recipe("fashion"))
    EXPECT_NE(h.out.find("  " + flag + " "), std::string::npos) << flag << " is not in:\n" << h.out;
  // The preset ends with dense(10): 8x8 images of 10 classes.
  const std::string data10 = test::fresh_dir("cli_fashion_data");
  for (const char* part : {"train", "t10k"}) {
    IdxImages im;
    std::vector<uint8_t> labels;
    test::make_bars(&im, &labels, 100, 7);
    for (size_t i = 0; i < labels.size(); ++i) labels[i] = uint8_t(i % 10);
    const std::string prefix = data10 + "/" + part;
    write_idx_images(prefix + "-images-idx3-ubyte", im, false);
    write_idx_labels(prefix + "-labels-idx1-ubyte", labels, false);
  }
  // The recipe, but 2 epochs (the cosine spans them; the 1-epoch warmup stays).
  const std::string out = test::fresh_dir("cli_fashion");
  Result r = run("train --device cpu --quiet --arch fashion --epochs 2 --data " + data10 + " --out " + out);
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("recipe: --arch fashion trains with --batch 64 --optimizer sgd --lr 0.05"), std::string::npos)
      << r.out;
  auto s = nlohmann::json::parse(read_file(out + "/summary.json", "summary"));
  EXPECT_EQ(s["batch"], 64);
  EXPECT_EQ(s["optimizer"], "sgd");
  EXPECT_FLOAT_EQ(s["lr"].get<float>(), 0.05f);
  EXPECT_FLOAT_EQ(s["momentum"].get<float>(), 0.9f);
  EXPECT_FLOAT_EQ(s["weight_decay"].get<float>(), 5e-4f);
  EXPECT_EQ(s["lr_schedule"], "cosine:2");
  EXPECT_EQ(s["warmup_epochs"], 1);
  EXPECT_EQ(s["augment"], "crop:2,flip");
  EXPECT_EQ(s["epochs_asked"], 2);
  // A flag given replaces the recipe's value; another optimizer keeps its own rate and momentum;
  // one epoch has no room for the warmup, and the message says so.
  const std::string out2 = test::fresh_dir("cli_fashion_own");
  Result o =
      run("train --device cpu --quiet --arch fashion --epochs 1 --limit 96 --batch 32 --optimizer adam "
          "--augment none --data " +
          data10 + " --out " + out2);
  ASSERT_EQ(o.rc, 0) << o.out;
  EXPECT_NE(o.out.find("(no warmup: it needs --epochs 2 or more)"), std::string::npos) << o.out;
  EXPECT_EQ(o.out.find("--lr 0.05"), std::string::npos) << o.out;
  auto s2 = nlohmann::json::parse(read_file(out2 + "/summary.json", "summary"));
  EXPECT_EQ(s2["batch"], 32);
  EXPECT_EQ(s2["optimizer"], "adam");
  EXPECT_FLOAT_EQ(s2["lr"].get<float>(), 0.001f);
  EXPECT_EQ(s2["augment"], "none");
  EXPECT_EQ(s2["warmup_epochs"], 0);
  EXPECT_EQ(s2["lr_schedule"], "cosine:1");
  // Any other arch has no recipe: train's own defaults.
  Result p = run("train --device cpu --quiet --epochs 1 --limit 64 --data " + data_ + " --arch " + kArch + " --out " +
                 test::fresh_dir("cli_fashion_none"));
  ASSERT_EQ(p.rc, 0) << p.out;
  EXPECT_EQ(p.out.find("recipe:"), std::string::npos) << p.out;
  EXPECT_NE(p.out.find("sgd (lr 0.01, momentum 0.9, weight decay 0), loss cross_entropy, seed 1, augment none"),
            std::string::npos)
      << p.out;
}

TEST_F(Cli, TheDeviceLineSaysWhyInOneParenthesis) {
  Result r = run("train --device auto --quiet --epochs 1 --limit 64 --data " + data_ + " --arch " + kArch + " --out " +
                 test::fresh_dir("cli_device_line"));
  ASSERT_EQ(r.rc, 0) << r.out;
  const size_t at = r.out.find("  device   : ");
  ASSERT_NE(at, std::string::npos) << r.out;
  const std::string line = r.out.substr(at, r.out.find('\n', at) - at);
  EXPECT_NE(line.find("(--device auto found "), std::string::npos) << line;
  EXPECT_EQ(std::count(line.begin(), line.end(), '('), 1) << line;
}

TEST_F(Cli, NamesInAnyCaseAndNotesForFlagsThatDoNotApply) {
  Result r =
      run("train --device CPU --quiet --epochs 1 --data " + data_ + " --arch " + kArch +
          " --optimizer Adam --momentum 0.5 --loss Cross_Entropy --cuda-graph on --out " + test::fresh_dir("cli_case"));
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("note: --momentum applies to sgd only"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("note: --cuda-graph applies only on the GPU"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("adam (lr 0.001"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("warning: the net ends with softmax"), std::string::npos) << r.out;
  // A softmax before the cross-entropy (which applies its own): trained, with a warning.
  Result w = run("train --device cpu --quiet --epochs 1 --data " + data_ +
                 " --arch \"conv(4,3) relu dense(3) softmax\" --out " + test::fresh_dir("cli_softmax"));
  ASSERT_EQ(w.rc, 0) << w.out;
  EXPECT_NE(w.out.find("warning: the net ends with softmax and --loss cross_entropy takes logits"), std::string::npos)
      << w.out;
}

TEST_F(Cli, UnwritableOutputFolderIsCaughtBeforeTraining) {
  std::string d = test::fresh_dir("cli_unwritable");
  write_bytes(d + "/file", "x");
  Result r = run("train --device cpu --data " + data_ + " --arch " + kArch + " --out " + d + "/file/sub");
  EXPECT_FAILS_WITH(r, 2, "--out");
  EXPECT_EQ(r.out.find("epoch 1/"), std::string::npos) << r.out;
}

TEST_F(Cli, BadArchSpecs) {
  std::string base = "train --device cpu --data " + data_ + " --out " + test::fresh_dir("cli_arch") + " --arch ";
  EXPECT_FAILS_WITH(run(base + "\"conv(4,3) rleu dense(3)\""), 2, "did you mean 'relu'");
  EXPECT_FAILS_WITH(run(base + "\"conv(4,9) dense(3)\""), 2, "input 8x8 is smaller than the 9x9 kernel");
  EXPECT_FAILS_WITH(run(base + "\"conv(4,3) dense(10)\""), 2, "has 10 outputs but the data");
  // Fewer outputs than classes is the net's mistake too (not the labels file's), and says where
  // the first label beyond them is.
  EXPECT_FAILS_WITH(run(base + "\"conv(4,3) dense(2)\""), 2, "--arch: the last layer (layer 2 dense(2)) has 2 outputs");
  EXPECT_FAILS_WITH(run(base + "\"conv(4,3) dense(2)\""), 2, "has label 2 at index");
  EXPECT_FAILS_WITH(run(base + "\"conv(-1,3) dense(3)\""), 2, "output channels");
}

TEST_F(Cli, BadIdxFiles) {
  const std::string f = "train-labels-idx1-ubyte";
  std::string good = read_file(data_ + "/" + f, "labels");
  auto train_on = [&](const std::string& d) {
    return run("train --device cpu --data " + d + " --arch " + kArch + " --out " + test::fresh_dir("cli_idx_out"));
  };
  std::string wrong_magic = good;
  wrong_magic[3] = 0x03;
  EXPECT_FAILS_WITH(train_on(data_with("cli_idx1", f, wrong_magic)), 1, f);
  EXPECT_FAILS_WITH(train_on(data_with("cli_idx2", f, good.substr(0, 5))), 1, f);                 // truncated header
  EXPECT_FAILS_WITH(train_on(data_with("cli_idx3", f, good.substr(0, good.size() - 10))), 1, f);  // truncated data
  std::string bad_label = good;
  bad_label[8 + 17] = 7;  // class 7 of a 3-class net
  Result r = train_on(data_with("cli_idx4", f, bad_label));
  EXPECT_GE(r.rc, 1);
  EXPECT_NE(r.out.find("label"), std::string::npos) << r.out;
  std::string huge = good;
  huge[4] = 0x7f;  // declares ~2^31 labels in a file of a few hundred bytes
  EXPECT_FAILS_WITH(train_on(data_with("cli_idx5", f, huge)), 1, f);
  std::string gz = read_file(data_ + "/t10k-images-idx3-ubyte.gz", "gz");
  for (size_t i = gz.size() / 2; i < gz.size() / 2 + 16; ++i) gz[i] ^= 0x5a;
  EXPECT_FAILS_WITH(train_on(data_with("cli_idx6", "t10k-images-idx3-ubyte.gz", gz)), 1, "t10k-images-idx3-ubyte.gz");
  EXPECT_FAILS_WITH(run("train --device cpu --data /nonexistent/folder --arch paper"), 1, "/nonexistent/folder");
}

TEST_F(Cli, BadModelFiles) {
  std::string dir = test::fresh_dir("cli_bad_models");
  std::string model = model_dir_ + "/model.safetensors";
  SafeTensors good = read_safetensors(model);
  auto eval_of = [&](const std::string& path) { return run("eval --device cpu --data " + data_ + " --model " + path); };
  auto variant = [&](const std::string& name, auto&& edit) {
    SafeTensors st = good;
    edit(st);
    std::string p = dir + "/" + name + ".safetensors";
    write_safetensors(p, st);
    return p;
  };
  std::string p;
  p = variant("missing", [](SafeTensors& s) { s.tensors.erase("4.weight"); });
  EXPECT_FAILS_WITH(eval_of(p), 1, "\"4.weight\" is missing");
  p = variant("extra", [](SafeTensors& s) { s.tensors["9.weight"] = s.tensors["0.bias"]; });
  EXPECT_FAILS_WITH(eval_of(p), 1, "unexpected tensor \"9.weight\"");
  p = variant("shape", [](SafeTensors& s) { s.tensors["0.weight"].shape = {4, 1, 9, 1}; });
  EXPECT_FAILS_WITH(eval_of(p), 1, "\"0.weight\" has shape 4x1x9x1");
  p = variant("noarch", [](SafeTensors& s) { s.metadata.erase("arch"); });
  EXPECT_FAILS_WITH(eval_of(p), 1, "no \"arch\"");
  p = variant("badarch", [](SafeTensors& s) { s.metadata["arch"] = "conv(4,3) bogus"; });
  EXPECT_FAILS_WITH(eval_of(p), 1, "unknown layer 'bogus'");
  // Raw corruptions.
  std::string bytes = read_file(model, "model");
  std::string long_header = bytes;
  long_header[5] = 0x7f;  // header length far beyond the file
  write_bytes(dir + "/hdr.safetensors", long_header);
  EXPECT_FAILS_WITH(eval_of(dir + "/hdr.safetensors"), 1, "hdr.safetensors");
  std::string bad_json = bytes;
  bad_json[8] = '[';
  write_bytes(dir + "/json.safetensors", bad_json);
  EXPECT_FAILS_WITH(eval_of(dir + "/json.safetensors"), 1, "json.safetensors");
  std::string dtype = bytes;
  size_t at = dtype.find("\"F32\"");
  ASSERT_NE(at, std::string::npos);
  dtype.replace(at, 5, "\"Q32\"");
  write_bytes(dir + "/dtype.safetensors", dtype);
  EXPECT_FAILS_WITH(eval_of(dir + "/dtype.safetensors"), 1, "Q32");
  write_bytes(dir + "/short.safetensors", bytes.substr(0, bytes.size() - 4));
  EXPECT_FAILS_WITH(eval_of(dir + "/short.safetensors"), 1, "short.safetensors");
  EXPECT_FAILS_WITH(eval_of(dir + "/absent.safetensors"), 1, "absent.safetensors");
}

TEST_F(Cli, ExistingModelSurvivesAFailedRun) {
  std::string out = test::fresh_dir("cli_survive");
  std::filesystem::copy_file(model_dir_ + "/model.safetensors", out + "/model.safetensors");
  std::string before = read_file(out + "/model.safetensors", "model");
  // Another run's folder: refused, naming the file; with --overwrite, a run that fails on its spec
  // or its data leaves it as it was.
  EXPECT_FAILS_WITH(run("train --device cpu --data " + data_ + " --arch " + kArch + " --out " + out), 2,
                    "holds the files of another run (model.safetensors)");
  EXPECT_EQ(run("train --device cpu --data " + data_ + " --arch \"conv(4,3) dense(10)\" --overwrite --out " + out).rc,
            2);
  EXPECT_NE(run("train --device cpu --data /nonexistent --arch " + std::string(kArch) + " --overwrite --out " + out).rc,
            0);
  EXPECT_EQ(read_file(out + "/model.safetensors", "model"), before);
  // A run that diverges in a new folder writes no model.
  std::string fresh = test::fresh_dir("cli_survive_div");
  Result div =
      run("train --device cpu --data " + data_ + " --arch " + kArch + " --lr 1e30 --momentum 0 --out " + fresh);
  EXPECT_FAILS_WITH(div, 1, "diverged");
  EXPECT_FALSE(file_exists(fresh + "/model.safetensors"));
  for (auto& e : std::filesystem::directory_iterator(out))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << "left behind: " << e.path();
}

TEST_F(Cli, KilledAndResumedEqualsUninterrupted) {
  // A longer run (2400 images, batch 16: 150 steps per epoch, 2 epochs) checkpointing every 7
  // steps; killed with SIGKILL at a random moment, then resumed to the end.
  std::string data = test::fresh_dir("cli_kill_data");
  test::write_bars_dataset(data, 2400, 100);
  const std::string args = "train --device cpu --threads 1 --data " + data + " --arch " + kArch +
                           " --epochs 2 --batch 16 --checkpoint-every 7 --quiet --out ";
  std::string full = test::fresh_dir("cli_kill_full");
  auto t0 = std::chrono::steady_clock::now();
  Result rf = run(args + full);
  ASSERT_EQ(rf.rc, 0) << rf.out;
  double run_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  Model ref = load_model(full + "/model.safetensors");

  Rng rng(uint64_t(std::chrono::system_clock::now().time_since_epoch().count()));
  for (int trial = 0; trial < 2; ++trial) {
    std::string part = test::fresh_dir("cli_kill_part" + std::to_string(trial));
    std::string cmd = test::barecnn_exe() + " " + args + part + " >/dev/null 2>&1";
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), (char*)nullptr);
      _exit(127);
    }
    int delay_ms = int(run_ms * rng.uniform(0.2, 0.8));
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    kill(pid, SIGKILL);
    int st = 0;
    waitpid(pid, &st, 0);
    bool killed = WIFSIGNALED(st);
    std::string ck = part + "/checkpoint.safetensors";
    Result rr = file_exists(ck) ? run("train --device cpu --threads 1 --quiet --epochs 2 --resume " + part)
                                : run(args + part);  // killed before the first checkpoint
    ASSERT_EQ(rr.rc, 0) << "trial " << trial << " (killed after " << delay_ms << " ms: " << killed << ")\n" << rr.out;
    Model m = load_model(part + "/model.safetensors");
    EXPECT_EQ(m.params, ref.params) << "trial " << trial << ", killed after " << delay_ms << " ms";
    for (auto& e : std::filesystem::directory_iterator(part))
      EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << "left behind: " << e.path();
  }
}

TEST_F(Cli, CtrlCCheckpointsAndPrintsTheCommandThatContinues) {
  // SIGINT once the first epoch is done (its line is out): exit 130, a checkpoint at the step it
  // stopped at, the first epoch's outputs marked as not complete, and a printed command that
  // continues the run to the weights of an uninterrupted one.
  std::string data = test::fresh_dir("cli_int_data");
  test::write_bars_dataset(data, 2400, 100);
  const std::string args =
      "train --device cpu --threads 1 --data " + data + " --arch " + kArch + " --epochs 4 --batch 16 --out ";
  std::string full = test::fresh_dir("cli_int_full"), part = test::fresh_dir("cli_int_part");
  ASSERT_EQ(run(args + full + " --quiet").rc, 0);
  const std::string log = part + ".log";
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", ("exec " + test::barecnn_exe() + " " + args + part + " >" + log + " 2>&1").c_str(),
          (char*)nullptr);
    _exit(127);
  }
  for (int i = 0; i < 3000 && test::slurp(log).find("epoch 1/4  train loss") == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  kill(pid, SIGINT);
  int st = 0;
  waitpid(pid, &st, 0);
  const std::string out = test::slurp(log);
  ASSERT_TRUE(WIFEXITED(st)) << out;
  ASSERT_EQ(WEXITSTATUS(st), 130) << out;
  EXPECT_NE(out.find("stopped by SIGINT (Ctrl-C) in epoch "), std::string::npos) << out;
  auto summary = nlohmann::json::parse(read_file(part + "/summary.json", "summary"));
  EXPECT_EQ(summary["completed"], false);
  EXPECT_GE(summary["epochs"].size(), 1u);
  const std::string key = "continue with: barecnn ";
  const size_t at = out.find(key);
  ASSERT_NE(at, std::string::npos) << out;
  const std::string again = out.substr(at + key.size(), out.find('\n', at) - at - key.size());
  EXPECT_EQ(again, "train --resume " + part + " --epochs 4 --device cpu --threads 1");
  Result r = run(again + " --quiet");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(load_model(part + "/model.safetensors").params, load_model(full + "/model.safetensors").params);
  EXPECT_EQ(nlohmann::json::parse(read_file(part + "/summary.json", "summary"))["completed"], true);
}

TEST_F(Cli, WithoutOutEachRunGetsItsOwnFolderAndLatestLinksToIt) {
  std::string cwd = test::fresh_dir("cli_runs");
  const std::string cmd = "cd " + cwd + " && " + test::barecnn_exe() + " train --device cpu --quiet --epochs 1 " +
                          "--data " + data_ + " --arch " + kArch;
  Result a = test::run_command(cmd), b = test::run_command(cmd);
  ASSERT_EQ(a.rc, 0) << a.out;
  ASSERT_EQ(b.rc, 0) << b.out;
  EXPECT_NE(a.out.find("output   : runs/1 (runs/latest links to it)"), std::string::npos) << a.out;
  EXPECT_NE(b.out.find("output   : runs/2 (runs/latest links to it)"), std::string::npos) << b.out;
  EXPECT_TRUE(file_exists(cwd + "/runs/1/model.safetensors"));
  EXPECT_EQ(std::filesystem::read_symlink(cwd + "/runs/latest"), "2");
  // A folder that holds no checkpoint: --resume says what it found and when there is one.
  EXPECT_FAILS_WITH(run("train --device cpu --resume " + data_), 2, "no checkpoint.safetensors in that folder");
}

TEST_F(Cli, EvalUsesTheModelsDataAndNeedsOnlyTheTestFiles) {
  // No --data: the data the model was trained on (not the default Fashion-MNIST).
  Result own = run("eval --device cpu --json --model " + model_dir_ + "/model.safetensors");
  ASSERT_EQ(own.rc, 0) << own.out;
  auto j = nlohmann::json::parse(own.out.substr(own.out.find('{')));
  EXPECT_EQ(j["data"], data_);
  EXPECT_EQ(j["count"], 150);
  EXPECT_EQ(j["loss_name"], "cross_entropy");
  // The checkpoint is a model too.
  Result ck = run("eval --device cpu --json --model " + model_dir_ + "/checkpoint.safetensors");
  ASSERT_EQ(ck.rc, 0) << ck.out;
  EXPECT_EQ(nlohmann::json::parse(ck.out.substr(ck.out.find('{')))["accuracy"], j["accuracy"]);
  // A folder with only the two t10k files; other data is named as such.
  std::string t10k = test::fresh_dir("cli_t10k_only");
  test::write_bars_dataset(t10k + "/tmp", 30, 40, /*seed=*/5);
  for (const char* f : {"t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"})
    std::filesystem::rename(t10k + "/tmp/" + f, t10k + "/" + f);
  std::filesystem::remove_all(t10k + "/tmp");
  Result other = run("eval --device cpu --model " + model_dir_ + "/model.safetensors --data " + t10k);
  ASSERT_EQ(other.rc, 0) << other.out;
  EXPECT_NE(other.out.find("note: the test files in " + t10k + " are not those"), std::string::npos) << other.out;
  EXPECT_NE(other.out.find("count 40"), std::string::npos) << other.out;
  // Its data gone: a message that says so.
  std::string moved = test::fresh_dir("cli_eval_moved"), gone = test::fresh_dir("cli_eval_gone_data");
  test::write_bars_dataset(gone);
  ASSERT_EQ(run("train --device cpu --quiet --epochs 1 --data " + gone + " --arch " + kArch + " --out " + moved).rc, 0);
  std::filesystem::remove_all(gone);
  EXPECT_FAILS_WITH(run("eval --device cpu --model " + moved + "/model.safetensors"), 2, "which is not there any more");
}

TEST_F(Cli, PyTorchLoadsTheModelAndPredictsTheSame) {
  // tests/torch_parity.py builds the torch.nn.Sequential of the spec, load_state_dict(strict=True),
  // and compares its logits with `barecnn predict`. Skips where PyTorch is not installed
  // (Debian: apt-get install python3-torch).
  const std::string py = "/usr/bin/python3";
  if (!file_exists(py) || std::system((py + " -c 'import torch' >/dev/null 2>&1").c_str()) != 0)
    GTEST_SKIP() << "PyTorch is not installed for " << py << " (apt-get install python3-torch)";
  const std::string script = std::string(BARECNN_SOURCE_DIR) + "/tests/torch_parity.py";
  const std::vector<std::string> archs = {
      kArch,
      "\"conv(3,3,stride=2,pad=1) elu l2pool(2,stride=1) conv(4,2x1) leaky_relu(0.2) avgpool(2x3,stride=1) dense(5) "
      "tanh dense(3)\"",
      "\"conv(5,3) sigmoid maxpool(3,stride=2) dense(8) softplus dense(3) softmax\"",
      // batchnorm (BatchNorm2d and BatchNorm1d, in eval(): the running statistics) and dropout
      // (nn.Dropout: the identity in eval())
      "\"conv(4,3,pad=1) batchnorm relu maxpool(2) dropout(0.25) dense(8) batchnorm relu dropout(0.5) dense(3)\""};
  for (size_t i = 0; i < archs.size(); ++i) {
    std::string out = test::fresh_dir("cli_torch" + std::to_string(i));
    Result t = run("train --device cpu --quiet --epochs 1 --batch 32 --data " + data_ + " --arch " + archs[i] +
                   " --out " + out);
    ASSERT_EQ(t.rc, 0) << t.out;
    Result p = run("predict --device cpu --model " + out + "/model.safetensors --images " + data_ +
                   "/t10k-images-idx3-ubyte.gz --output " + out + "/pred.csv");
    ASSERT_EQ(p.rc, 0) << p.out;
    std::string cmd = py + " " + script + " " + out + "/model.safetensors " + data_ + "/t10k-images-idx3-ubyte.gz " +
                      out + "/pred.csv 2>&1";
    FILE* f = popen(cmd.c_str(), "r");
    std::string text;
    char buf[512];
    while (fgets(buf, sizeof buf, f)) text += buf;
    int st = pclose(f);
    EXPECT_EQ(WEXITSTATUS(st), 0) << archs[i] << "\n" << text;
  }
}
