// Training on the CPU path: the loss falls on a learnable task, one seed gives one set of weights,
// an interrupted and resumed run equals an uninterrupted one, and divergence is diagnosed.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "barecnn/checkpoint.h"
#include "barecnn/error.h"
#include "barecnn/fileutil.h"
#include "barecnn/safetensors.h"
#include "barecnn/trainer.h"
#include "synthetic_data.h"

using namespace barecnn;

namespace {

const char* kArch = "conv(4,3,pad=1) relu maxpool(2) dense(16) relu dense(3)";

TrainConfig config(const std::string& data, const std::string& out) {
  TrainConfig c;
  c.data_dir = data;
  c.arch = kArch;
  c.device = "cpu";
  c.epochs = 3;
  c.batch = 32;
  c.optim.lr = 0.05f;
  c.optim.momentum = 0.9f;
  c.seed = 7;
  c.out = out;
  c.quiet = true;
  return c;
}

std::vector<float> model_weights(const std::string& dir) {
  Model m = load_model(dir + "/model.safetensors");
  return m.params;
}

nlohmann::json summary(const std::string& dir) {
  return nlohmann::json::parse(read_file(dir + "/summary.json", "summary"));
}

class TrainCpu : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = test::fresh_dir("train_data");
    test::write_bars_dataset(data_);
    ready_ = true;
  }
  // A failed suite set-up would otherwise show as "skipped": make it fail every test.
  void SetUp() override { ASSERT_TRUE(ready_) << "the suite set-up failed"; }
  static std::string data_;
  static bool ready_;
};
std::string TrainCpu::data_;
bool TrainCpu::ready_ = false;

}  // namespace

TEST_F(TrainCpu, LossFallsAndTheTaskIsLearned) {
  std::string out = test::fresh_dir("train_learn");
  train(config(data_, out));
  auto s = summary(out);
  auto& ep = s["epochs"];
  ASSERT_EQ(ep.size(), 3u);
  EXPECT_LT(ep[2]["train_loss"].get<double>(), 0.5 * ep[0]["train_loss"].get<double>()) << s.dump(1);
  EXPECT_GT(s["test_accuracy"].get<double>(), 0.9) << s.dump(1);
  EXPECT_EQ(s["device"], "cpu");
  EXPECT_EQ(s["seed"], 7);
  EXPECT_EQ(s["batch"], 32);
  EXPECT_EQ(s["limit"], 0);
  EXPECT_EQ(s["optimizer"], "sgd (lr 0.05, momentum 0.9, weight decay 0)");
  EXPECT_FALSE(s.contains("peak_device_bytes"));  // GPU runs only
  for (const char* f : {"model.safetensors", "summary.json", "metrics.csv", "checkpoint.safetensors", "loss.png",
                        "accuracy.png", "filters.png", "confusion.png"})
    EXPECT_TRUE(file_exists(out + "/" + f)) << f;
  std::string csv = read_file(out + "/metrics.csv", "metrics");
  EXPECT_EQ(csv.substr(0, csv.find('\n')),
            "epoch,train_loss,train_accuracy,test_accuracy,test_loss,seconds,images_per_second");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 4);
}

TEST_F(TrainCpu, SameSeedGivesIdenticalWeights) {
  std::string a = test::fresh_dir("train_seed_a"), b = test::fresh_dir("train_seed_b"),
              c = test::fresh_dir("train_seed_c");
  TrainConfig ca = config(data_, a), cb = config(data_, b), cc = config(data_, c);
  ca.epochs = cb.epochs = cc.epochs = 1;
  cc.seed = 8;
  train(ca);
  train(cb);
  train(cc);
  EXPECT_EQ(model_weights(a), model_weights(b));
  EXPECT_NE(model_weights(a), model_weights(c));
}

TEST_F(TrainCpu, ResumedRunEqualsUninterruptedRun) {
  // Uninterrupted: 3 epochs with Adam (its state must survive the checkpoint too).
  std::string full = test::fresh_dir("train_full"), part = test::fresh_dir("train_part");
  TrainConfig cf = config(data_, full);
  cf.optim.kind = Optim::Adam;
  cf.optim.lr = 0.005f;
  cf.optim.momentum = 0;
  train(cf);
  // Interrupted after epoch 1, resumed up to 3 epochs in all.
  TrainConfig cp = cf;
  cp.out = part;
  cp.epochs = 1;
  train(cp);
  TrainConfig cr;
  cr.resume = part;
  cr.out = "";
  cr.epochs = 3;
  cr.device = "cpu";
  cr.quiet = true;
  train(cr);
  EXPECT_EQ(model_weights(full), model_weights(part));
  auto sf = summary(full), sp = summary(part);
  ASSERT_EQ(sp["epochs"].size(), 3u);
  for (int e = 0; e < 3; ++e)
    EXPECT_EQ(sf["epochs"][e]["train_loss"].get<double>(), sp["epochs"][e]["train_loss"].get<double>()) << e;
  EXPECT_EQ(sf["test_accuracy"], sp["test_accuracy"]);
}

TEST_F(TrainCpu, MidEpochCheckpointResumesBitwise) {
  // 600 images / batch 32 = 18 steps per epoch; checkpoints every 5 steps. The interrupted run
  // stops at step 27 (epoch 2, step 9): its last checkpoint is from step 25 (epoch 2, step 7).
  std::string full = test::fresh_dir("train_mid_full"), part = test::fresh_dir("train_mid_part");
  TrainConfig cf = config(data_, full);
  cf.epochs = 2;
  cf.checkpoint_every = 5;
  train(cf);
  TrainConfig cp = cf;
  cp.out = part;
  EXPECT_THROW(train(cp, test::stop_after(27)), Error);
  Checkpoint ck = read_checkpoint(part + "/checkpoint.safetensors");
  EXPECT_EQ(ck.epochs_done, 1);
  EXPECT_EQ(ck.step_in_epoch, 7);
  EXPECT_EQ(ck.global_step, 25);
  EXPECT_FALSE(file_exists(part + "/model.safetensors"));
  TrainConfig cr;
  cr.resume = part;
  cr.out = "";
  cr.epochs = 2;
  cr.device = "cpu";
  cr.quiet = true;
  cr.checkpoint_every = 5;
  train(cr);
  EXPECT_EQ(model_weights(full), model_weights(part));
  auto sf = summary(full), sp = summary(part);
  EXPECT_EQ(sf["epochs"][1]["train_loss"].get<double>(), sp["epochs"][1]["train_loss"].get<double>());
  EXPECT_EQ(sf["epochs"][1]["train_accuracy"].get<double>(), sp["epochs"][1]["train_accuracy"].get<double>());
}

TEST_F(TrainCpu, ResumeOfAFinishedRunRewritesItsOutputsOrSaysSo) {
  std::string out = test::fresh_dir("train_done");
  TrainConfig c = config(data_, out);
  c.epochs = 2;
  train(c);
  std::vector<float> w = model_weights(out);
  // Killed between the last checkpoint and the model file: resuming writes the outputs.
  std::filesystem::remove(out + "/model.safetensors");
  std::filesystem::remove(out + "/summary.json");
  TrainConfig cr;
  cr.resume = out;
  cr.out = "";
  cr.epochs = 2;
  cr.quiet = true;
  cr.device = "cpu";
  train(cr);
  EXPECT_EQ(model_weights(out), w);
  EXPECT_EQ(summary(out)["epochs"].size(), 2u);
  // Fewer epochs than done: an error that says what to do.
  cr.epochs = 1;
  try {
    train(cr);
    FAIL() << "no error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("already has 2 epochs"), std::string::npos) << e.what();
  }
}

TEST_F(TrainCpu, DivergenceNamesTheLayerAndKeepsTheCheckpoint) {
  std::string out = test::fresh_dir("train_diverge");
  TrainConfig c = config(data_, out);
  c.epochs = 1;
  train(c);  // a good checkpoint and model
  std::string model_before = read_file(out + "/model.safetensors", "model");
  std::string ckpt_before = read_file(out + "/checkpoint.safetensors", "checkpoint");
  TrainConfig bad = config(data_, out);
  bad.optim.lr = 1e30f;
  bad.optim.momentum = 0;
  try {
    train(bad);
    FAIL() << "no error";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("diverged"), std::string::npos) << m;
    EXPECT_NE(m.find("first non-finite: layer "), std::string::npos) << m;
    EXPECT_NE(m.find("--lr"), std::string::npos) << m;
    EXPECT_NE(m.find("last good checkpoint"), std::string::npos) << m;
  }
  EXPECT_EQ(read_file(out + "/model.safetensors", "model"), model_before);
  EXPECT_EQ(read_file(out + "/checkpoint.safetensors", "checkpoint"), ckpt_before);
}

TEST_F(TrainCpu, ModelFileHasTorchNamesAndMetadata) {
  std::string out = test::fresh_dir("train_model");
  TrainConfig c = config(data_, out);
  c.epochs = 1;
  train(c);
  SafeTensors st = read_safetensors(out + "/model.safetensors");
  std::vector<std::string> names;
  for (auto& [n, t] : st.tensors) names.push_back(n);
  EXPECT_EQ(names, (std::vector<std::string>{"0.bias", "0.weight", "4.bias", "4.weight", "6.bias", "6.weight"}));
  EXPECT_EQ(st.tensors["0.weight"].shape, (std::vector<int64_t>{4, 1, 3, 3}));
  EXPECT_EQ(st.tensors["4.weight"].shape, (std::vector<int64_t>{16, 64}));
  EXPECT_EQ(st.metadata["arch"], "conv(4,3,pad=1) relu maxpool(2) flatten dense(16) relu dense(3)");
  EXPECT_EQ(st.metadata["input"], "1x8x8");
  EXPECT_EQ(st.metadata["classes"], "3");
  EXPECT_TRUE(st.metadata.count("normalize_mean"));
  // eval's numbers equal the training run's final test evaluation
  Model m = load_model(out + "/model.safetensors");
  Dataset d = load_dataset(data_);
  EvalResult r = evaluate(*m.net, m.params, d.test, d.test_labels, m.meta.mean, m.meta.std, Loss::SoftmaxCrossEntropy,
                          Device::CPU, 64, false);
  EXPECT_DOUBLE_EQ(r.accuracy, summary(out)["test_accuracy"].get<double>());
}
