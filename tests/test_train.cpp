// Training on the CPU path: the loss falls on a learnable task, one seed gives one set of weights,
// an interrupted and resumed run equals an uninterrupted one, and divergence is diagnosed.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <csignal>
#include <filesystem>

#include "barecnn/checkpoint.h"
#include "barecnn/evaluator.h"
#include "barecnn/cpu_ops.h"
#include "barecnn/error.h"
#include "barecnn/fileutil.h"
#include "barecnn/names.h"
#include "barecnn/report.h"
#include "barecnn/safetensors.h"
#include "barecnn/trainer.h"
#include "synthetic_data.h"

using namespace barecnn;

namespace {

const char* kArch = "conv(4,3,pad=1) relu maxpool(2) dense(16) relu dense(3)";

TrainConfig config(const std::string& data, const std::string& out) {
  TrainConfig c;
  c.opt.data_dir = data;
  c.spec.arch = kArch;
  c.opt.device = "cpu";
  c.opt.epochs = 3;
  c.spec.batch = 32;
  c.spec.optim.lr = 0.05f;
  c.spec.optim.momentum = 0.9f;
  c.spec.seed = 7;
  c.opt.out = out;
  c.opt.quiet = true;
  return c;
}

// Continues the run in `dir` on the CPU to `epochs` epochs in all, as `train --resume dir` does.
TrainConfig resume_of(const std::string& dir, int epochs) {
  TrainConfig c;
  c.opt.resume = dir;
  c.opt.epochs = epochs;
  c.opt.device = "cpu";
  c.opt.quiet = true;
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

// The note for a net whose output no longer depends on its input: cross-entropy at ln K and
// chance accuracy on the test set (paper at a constant --lr 0.05 ended so: 2.3030, 10.00%).
TEST(ChanceNote, NamesTheEpochLossAndAccuracyOnlyAtChance) {
  EpochMetrics e;
  e.epoch = 2;
  e.test_loss = 2.3030;
  e.test_accuracy = 0.1;
  const std::string n = chance_note(e, 10, Loss::SoftmaxCrossEntropy);
  EXPECT_NE(n.find("after epoch 2"), std::string::npos) << n;
  EXPECT_NE(n.find("ln 10 = 2.3026"), std::string::npos) << n;
  EXPECT_NE(n.find("10.00%"), std::string::npos) << n;
  EXPECT_NE(n.find("--lr"), std::string::npos) << n;
  EXPECT_NE(chance_note(e, 10, Loss::SoftmaxCrossEntropy).size(), 0u);
  EXPECT_EQ(chance_note(e, 10, Loss::MSE), "");  // ln K means nothing for the other losses
  EXPECT_EQ(chance_note(e, 1, Loss::SoftmaxCrossEntropy), "");
  EpochMetrics learning = e;  // better than chance
  learning.test_accuracy = 0.12;
  EXPECT_EQ(chance_note(learning, 10, Loss::SoftmaxCrossEntropy), "");
  EpochMetrics lower = e;  // a loss away from ln K
  lower.test_loss = 2.28;
  EXPECT_EQ(chance_note(lower, 10, Loss::SoftmaxCrossEntropy), "");
  EpochMetrics three = e;  // ln 3 = 1.0986, one third
  three.test_loss = 1.0990;
  three.test_accuracy = 0.335;
  EXPECT_NE(chance_note(three, 3, Loss::SoftmaxCrossEntropy), "");
  EpochMetrics nan = e;
  nan.test_loss = std::nan("");
  EXPECT_EQ(chance_note(nan, 10, Loss::SoftmaxCrossEntropy), "");
}

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
  EXPECT_EQ(s["optimizer"], "sgd");
  EXPECT_EQ(s["lr"], 0.05);
  EXPECT_EQ(s["momentum"], 0.9);
  EXPECT_EQ(s["weight_decay"], 0);
  EXPECT_EQ(s["loss"], "cross_entropy");
  EXPECT_EQ(s["augment"], "none");
  EXPECT_EQ(s["completed"], true);
  EXPECT_EQ(s["epochs_asked"], 3);
  EXPECT_EQ(s["epochs_done"], 3);
  EXPECT_EQ(s["data"]["dir"], data_);
  EXPECT_EQ(s["data"]["train_fingerprint"].get<std::string>().size(), 16u);
  EXPECT_EQ(s["data"]["test_fingerprint"].get<std::string>().size(), 16u);
  EXPECT_EQ(s["class_names"], nlohmann::json({"0", "1", "2"}));
  EXPECT_FALSE(s["barecnn_version"].get<std::string>().empty());
  EXPECT_FALSE(s["barecnn_commit"].get<std::string>().empty());
  EXPECT_EQ(ep[1]["lr"], 0.05);
  EXPECT_FALSE(s.contains("peak_device_bytes"));  // GPU runs only
  for (const char* f : {"model.safetensors", "summary.json", "metrics.csv", "checkpoint.safetensors", "loss.png",
                        "accuracy.png", "filters.png", "confusion.png"})
    EXPECT_TRUE(file_exists(out + "/" + f)) << f;
  std::string csv = read_file(out + "/metrics.csv", "metrics");
  EXPECT_EQ(csv.substr(0, csv.find('\n')),
            "epoch,train_loss,train_accuracy,test_accuracy,test_loss,seconds,images_per_second,lr,loss");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 4);
  EXPECT_NE(csv.find(",0.05,cross_entropy\n"), std::string::npos) << csv;
}

// Every thread a CPU training step runs on flushes subnormals (FTZ and DAZ) while the run
// trains, and the modes are as before once train() returns (docs/MATH.md, "Subnormal numbers").
TEST_F(TrainCpu, TrainsWithSubnormalsFlushedOnEveryThreadAndRestoresTheModes) {
  ASSERT_FALSE(cpu::flushes_subnormals()) << "the test process starts without FTZ/DAZ";
  long long before = 0;  // (this also starts the OpenMP threads before the run: they must be set, not born set)
#pragma omp parallel num_threads(2) reduction(+ : before)
  before += cpu::flushes_subnormals() ? 1 : 0;
  ASSERT_EQ(before, 0);
  std::string out = test::fresh_dir("train_flush");
  TrainConfig c = config(data_, out);
  c.opt.epochs = 1;
  c.opt.threads = 2;
  long long steps = 0, threads_seen = 0, flushing = 0;
  train(c, [&](long long) {
    ++steps;
#pragma omp parallel num_threads(2) reduction(+ : threads_seen, flushing)
    {
      ++threads_seen;
      flushing += cpu::flushes_subnormals() ? 1 : 0;
    }
  });
  ASSERT_GT(steps, 0);
  EXPECT_EQ(threads_seen, 2 * steps);
  EXPECT_EQ(flushing, threads_seen) << "threads that did not flush subnormals during training";
  EXPECT_FALSE(cpu::flushes_subnormals()) << "the modes are not restored after the run";
  long long after = 0;
#pragma omp parallel num_threads(2) reduction(+ : after)
  after += cpu::flushes_subnormals() ? 1 : 0;
  EXPECT_EQ(after, 0);
}

// The same seed gives the same weights, with the conv+ReLU fused (the default, --fuse auto)
// or not (--fuse off): the fused loops give the unfused chain's bits.
TEST_F(TrainCpu, SameSeedGivesIdenticalWeights) {
  std::string a = test::fresh_dir("train_seed_a"), b = test::fresh_dir("train_seed_b"),
              c = test::fresh_dir("train_seed_c");
  TrainConfig ca = config(data_, a), cb = config(data_, b), cc = config(data_, c);
  ca.opt.epochs = cb.opt.epochs = cc.opt.epochs = 1;
  cb.opt.fuse = false;
  cc.spec.seed = 8;
  train(ca);
  train(cb);
  train(cc);
  EXPECT_EQ(summary(a)["fuse"], true);
  EXPECT_EQ(summary(b)["fuse"], false);
  EXPECT_EQ(model_weights(a), model_weights(b));
  EXPECT_NE(model_weights(a), model_weights(c));
}

TEST_F(TrainCpu, ResumedRunEqualsUninterruptedRun) {
  // Uninterrupted: 3 epochs with Adam (its state must survive the checkpoint too).
  std::string full = test::fresh_dir("train_full"), part = test::fresh_dir("train_part");
  TrainConfig cf = config(data_, full);
  cf.spec.optim.kind = Optim::Adam;
  cf.spec.optim.lr = 0.005f;
  cf.spec.optim.momentum = 0;
  train(cf);
  // Interrupted after epoch 1, resumed up to 3 epochs in all.
  TrainConfig cp = cf;
  cp.opt.out = part;
  cp.opt.epochs = 1;
  train(cp);
  TrainConfig cr = resume_of(part, 3);
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
  cf.opt.epochs = 2;
  cf.opt.checkpoint_every = 5;
  train(cf);
  TrainConfig cp = cf;
  cp.opt.out = part;
  EXPECT_THROW(train(cp, test::stop_after(27)), Error);
  Checkpoint ck = read_checkpoint(part + "/checkpoint.safetensors");
  EXPECT_EQ(ck.epochs_done, 1);
  EXPECT_EQ(ck.step_in_epoch, 7);
  EXPECT_EQ(ck.global_step, 25);
  // The outputs of the epoch that was done are there, marked as not complete.
  EXPECT_EQ(summary(part)["completed"], false);
  EXPECT_EQ(summary(part)["epochs"].size(), 1u);
  ASSERT_TRUE(file_exists(part + "/model.safetensors"));
  EXPECT_NE(model_weights(part), ck.params);  // the model of epoch 1, not the state at step 25
  TrainConfig cr = resume_of(part, 2);
  cr.opt.checkpoint_every = 5;
  train(cr);
  EXPECT_EQ(model_weights(full), model_weights(part));
  auto sf = summary(full), sp = summary(part);
  EXPECT_EQ(sf["epochs"][1]["train_loss"].get<double>(), sp["epochs"][1]["train_loss"].get<double>());
  EXPECT_EQ(sf["epochs"][1]["train_accuracy"].get<double>(), sp["epochs"][1]["train_accuracy"].get<double>());
}

TEST_F(TrainCpu, ResumeOfAFinishedRunRewritesItsOutputsOrSaysSo) {
  std::string out = test::fresh_dir("train_done");
  TrainConfig c = config(data_, out);
  c.opt.epochs = 2;
  train(c);
  std::vector<float> w = model_weights(out);
  // Killed between the last checkpoint and the model file: resuming writes the outputs.
  std::filesystem::remove(out + "/model.safetensors");
  std::filesystem::remove(out + "/summary.json");
  TrainConfig cr = resume_of(out, 2);
  train(cr);
  EXPECT_EQ(model_weights(out), w);
  EXPECT_EQ(summary(out)["epochs"].size(), 2u);
  // Fewer epochs than done: an error that says what to do.
  cr.opt.epochs = 1;
  try {
    train(cr);
    FAIL() << "no error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("already has 2 epochs"), std::string::npos) << e.what();
  }
}

TEST_F(TrainCpu, DivergenceNamesTheLayerAndKeepsTheCheckpoint) {
  // A run whose first epoch is good and whose second diverges: its checkpoint, rewritten with a
  // learning rate of 1e30, resumed.
  std::string out = test::fresh_dir("train_diverge");
  TrainConfig c = config(data_, out);
  c.opt.epochs = 1;
  train(c);
  Checkpoint ck = read_checkpoint(out + "/checkpoint.safetensors");
  ck.spec.optim.lr = 1e30f;
  ck.spec.optim.momentum = 0;
  write_checkpoint(out + "/checkpoint.safetensors", ck);
  std::string model_before = read_file(out + "/model.safetensors", "model");
  std::string ckpt_before = read_file(out + "/checkpoint.safetensors", "checkpoint");
  TrainConfig cr = resume_of(out, 2);
  try {
    train(cr);
    FAIL() << "no error";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("diverged in epoch 2"), std::string::npos) << m;
    EXPECT_NE(m.find("first non-finite: layer "), std::string::npos) << m;
    EXPECT_NE(m.find("--lr"), std::string::npos) << m;
    EXPECT_NE(m.find("the last good checkpoint is kept in " + out + "/checkpoint.safetensors"), std::string::npos) << m;
  }
  EXPECT_EQ(read_file(out + "/model.safetensors", "model"), model_before);
  EXPECT_EQ(read_file(out + "/checkpoint.safetensors", "checkpoint"), ckpt_before);
  // A new run that diverges before its first checkpoint names none (not another run's).
  TrainConfig bad = config(data_, test::fresh_dir("train_diverge_new"));
  bad.spec.optim.lr = 1e30f;
  bad.spec.optim.momentum = 0;
  try {
    train(bad);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no checkpoint was written yet"), std::string::npos) << e.what();
  }
}

// A StepObserver that raises `sig` in this process after step `at`, `times` times.
StepObserver raise_after(long long at, int sig, int times = 1) {
  return [=](long long step) {
    if (step == at)
      for (int i = 0; i < times; ++i) std::raise(sig);
  };
}

TEST_F(TrainCpu, SignalStopsAfterTheStepWithACheckpointAndResumesBitwise) {
  // 18 steps per epoch; SIGINT after step 25 (epoch 2, step 7), SIGTERM after step 4.
  std::string full = test::fresh_dir("train_sig_full"), part = test::fresh_dir("train_sig_part");
  TrainConfig cf = config(data_, full);
  cf.opt.epochs = 2;
  ASSERT_EQ(train(cf), 0);
  TrainConfig cp = cf;
  cp.opt.out = part;
  EXPECT_EQ(train(cp, raise_after(25, SIGINT)), 130);
  Checkpoint ck = read_checkpoint(part + "/checkpoint.safetensors");
  EXPECT_EQ(ck.epochs_done, 1);
  EXPECT_EQ(ck.step_in_epoch, 7);
  EXPECT_EQ(ck.global_step, 25);
  EXPECT_EQ(summary(part)["completed"], false);
  // eval and predict take the checkpoint as a model: the weights at the stop.
  EXPECT_EQ(load_model(part + "/checkpoint.safetensors").params, ck.params);
  TrainConfig cr = resume_of(part, 2);
  ASSERT_EQ(train(cr), 0);
  EXPECT_EQ(model_weights(full), model_weights(part));
  EXPECT_EQ(summary(part)["completed"], true);

  std::string early = test::fresh_dir("train_sig_early");
  cp.opt.out = early;
  EXPECT_EQ(train(cp, raise_after(4, SIGTERM)), 143);
  EXPECT_EQ(read_checkpoint(early + "/checkpoint.safetensors").global_step, 4);
  EXPECT_FALSE(file_exists(early + "/model.safetensors"));  // (no epoch done yet)
  cr.opt.resume = early;
  ASSERT_EQ(train(cr), 0);
  EXPECT_EQ(model_weights(full), model_weights(early));
}

TEST_F(TrainCpu, ASecondSignalEndsTheProcessAtOnce) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  TrainConfig c = config(data_, test::fresh_dir("train_sig_twice"));
  // The first asks for a stop after the step; the second, before the run gets there, ends it.
  EXPECT_EXIT(train(c, raise_after(3, SIGINT, 2)), ::testing::KilledBySignal(SIGINT), "");
}

TEST_F(TrainCpu, ResumeRefusesFlagsThatChangeTheRunAndOtherData) {
  std::string out = test::fresh_dir("train_conflict");
  TrainConfig c = config(data_, out);
  c.opt.epochs = 1;
  train(c);
  TrainConfig cr = config(data_, out);
  cr.opt.resume = out;
  cr.opt.epochs = 2;
  // The same values given again are no conflict; different ones are, each named with both values.
  cr.opt.spec_flags_given = {"--lr", "--batch", "--seed", "--arch", "--loss"};
  cr.spec.optim.lr = 0.5f;
  cr.spec.seed = 8;
  const std::string m = test::usage_error_message([&] { train(cr); });
  EXPECT_NE(m.find("--lr 0.5 (the run's: 0.05)"), std::string::npos) << m;
  EXPECT_NE(m.find("--seed 8 (the run's: 7)"), std::string::npos) << m;
  EXPECT_EQ(m.find("--batch"), std::string::npos) << m;
  EXPECT_EQ(m.find("--arch"), std::string::npos) << m;  // (the same net, written differently)
  EXPECT_EQ(m.find("--loss"), std::string::npos) << m;
  // Other data: refused, naming both fingerprints.
  std::string other = test::fresh_dir("train_conflict_other");
  test::write_bars_dataset(other, 600, 100, /*seed=*/99);
  TrainConfig co = config(other, out);
  co.opt.resume = out;
  co.opt.epochs = 2;
  const std::string d = test::usage_error_message([&] { train(co); });
  EXPECT_NE(d.find("are not those the run in " + out + " trained on"), std::string::npos) << d;
  // The same files in another folder: fine, and the run continues to the same weights.
  std::string moved = test::fresh_dir("train_conflict_moved");
  for (const auto& f : std::filesystem::directory_iterator(data_))
    std::filesystem::copy_file(f.path(), moved + "/" + f.path().filename().string());
  TrainConfig cm = config(moved, out);
  cm.opt.resume = out;
  cm.opt.epochs = 2;
  EXPECT_EQ(train(cm), 0);
  std::string straight = test::fresh_dir("train_conflict_straight");
  TrainConfig cs = config(data_, straight);
  cs.opt.epochs = 2;
  train(cs);
  EXPECT_EQ(model_weights(out), model_weights(straight));
  EXPECT_EQ(load_model(out + "/model.safetensors").meta.data.dir, moved);
}

TEST_F(TrainCpu, OneRunPerFolderUnlessOverwrite) {
  std::string out = test::fresh_dir("train_folder");
  TrainConfig c = config(data_, out);
  c.opt.epochs = 1;
  train(c);
  test::spit(out + "/notes.txt", "mine");
  const std::string before = read_file(out + "/model.safetensors", "model");
  TrainConfig again = c;
  again.spec.arch = "dense(3)";  // no conv: no filters.png
  const std::string m = test::usage_error_message([&] { train(again); });
  EXPECT_NE(m.find("holds the files of another run (model.safetensors, checkpoint.safetensors"), std::string::npos)
      << m;
  EXPECT_NE(m.find("--overwrite"), std::string::npos) << m;
  EXPECT_EQ(read_file(out + "/model.safetensors", "model"), before);
  // --overwrite with a mistake elsewhere still keeps everything.
  again.opt.overwrite = true;
  TrainConfig broken = again;
  broken.spec.arch = "dense(4)";  // 4 outputs for 3 classes
  EXPECT_NE(test::usage_error_message([&] { train(broken); }).find("dense(3)"), std::string::npos);
  EXPECT_EQ(read_file(out + "/model.safetensors", "model"), before);
  // --overwrite: the other run's files go (filters.png of the conv net too), the user's stay.
  EXPECT_EQ(train(again), 0);
  EXPECT_FALSE(file_exists(out + "/filters.png"));
  EXPECT_TRUE(file_exists(out + "/notes.txt"));
  EXPECT_EQ(load_model(out + "/model.safetensors").meta.arch, "flatten dense(3)");
}

TEST_F(TrainCpu, ClassNamesComeFromTheFlagOrTheDataNeverTheFolderName) {
  // A folder whose name says "fashion" holding other data: "0".."K-1".
  std::string fake = test::fresh_dir("fashion_lookalike");
  for (const auto& f : std::filesystem::directory_iterator(data_))
    std::filesystem::copy_file(f.path(), fake + "/" + f.path().filename().string());
  TrainConfig c = config(fake, test::fresh_dir("train_names_a"));
  c.opt.epochs = 1;
  train(c);
  EXPECT_EQ(load_model(c.opt.out + "/model.safetensors").meta.class_names, (std::vector<std::string>{"0", "1", "2"}));
  c.opt.out = test::fresh_dir("train_names_b");
  c.opt.class_names = {"bar", "cross", "dot"};
  train(c);
  EXPECT_EQ(load_model(c.opt.out + "/model.safetensors").meta.class_names, c.opt.class_names);
  c.opt.class_names = {"bar", "cross"};
  c.opt.out = test::fresh_dir("train_names_c");
  const std::string m = test::usage_error_message([&] { train(c); });
  EXPECT_NE(m.find("--class-names: 2 names given but the data has 3 classes"), std::string::npos) << m;
}

TEST_F(TrainCpu, ResumesACheckpointFromBeforeTheDataWasRecorded) {
  // A checkpoint as barecnn wrote them before it recorded the data's fingerprints, the epochs asked
  // for and the rate per epoch: it still resumes, bitwise.
  std::string full = test::fresh_dir("train_old_full"), part = test::fresh_dir("train_old_part");
  TrainConfig cf = config(data_, full);
  cf.opt.epochs = 2;
  train(cf);
  TrainConfig cp = cf;
  cp.opt.out = part;
  cp.opt.epochs = 1;
  train(cp);
  SafeTensors st = read_safetensors(part + "/checkpoint.safetensors");
  for (const char* k : {"data_train_fingerprint", "data_test_fingerprint", "epochs_asked", "barecnn_version"})
    ASSERT_EQ(st.metadata.erase(k), 1u) << k;
  std::string h = st.metadata["history"];
  ASSERT_NE(h.find(",\"lr\":0.05"), std::string::npos) << h;
  st.metadata["history"] = h.replace(h.find(",\"lr\":0.05"), 10, "");
  write_safetensors(part + "/checkpoint.safetensors", st);
  TrainConfig cr = resume_of(part, 2);
  ASSERT_EQ(train(cr), 0);
  EXPECT_EQ(model_weights(full), model_weights(part));
  EXPECT_EQ(summary(part)["epochs"][0]["lr"], 0.05);
}

TEST(RunSpecTable, EverySettingRoundTripsAndBadTextIsNamed) {
  RunSpec s;
  s.arch = "dense(3)";
  s.batch = 17;
  s.optim.kind = Optim::Adam;
  s.optim.lr = 0.1f;  // not exact in binary: the text must still read back to the same float
  s.optim.momentum = 0;
  s.optim.weight_decay = 3e-5f;
  s.optim.beta1 = 0.85f;
  s.optim.beta2 = 0.995f;
  s.optim.eps = 1e-7f;
  s.loss = Loss::MAPE;
  s.seed = 18446744073709551615ull;
  s.limit = 123;
  std::map<std::string, std::string> m;
  for (const SpecSetting& x : spec_settings(s)) m[x.key] = x.value;
  EXPECT_EQ(m["lr"], "0.1");
  EXPECT_EQ(m["seed"], "18446744073709551615");
  RunSpec r = spec_from_settings(m, "f");
  EXPECT_EQ(r.arch, s.arch);
  EXPECT_EQ(r.batch, s.batch);
  EXPECT_EQ(r.optim.kind, s.optim.kind);
  EXPECT_EQ(r.optim.lr, s.optim.lr);
  EXPECT_EQ(r.optim.weight_decay, s.optim.weight_decay);
  EXPECT_EQ(r.optim.beta1, s.optim.beta1);
  EXPECT_EQ(r.optim.beta2, s.optim.beta2);
  EXPECT_EQ(r.optim.eps, s.optim.eps);
  EXPECT_EQ(r.loss, s.loss);
  EXPECT_EQ(r.seed, s.seed);
  EXPECT_EQ(r.limit, s.limit);
  for (float x : {1e-30f, 0.3f, 1.f / 3, 123456.7f, 1e30f})
    EXPECT_EQ(std::strtof(shortest_float(x).c_str(), nullptr), x);
  auto bad = m;
  bad["batch"] = "0";
  EXPECT_NE(test::usage_error_message([&] {
              spec_from_settings(bad, "ck.safetensors");
            }).find("ck.safetensors: the run's setting \"batch\" should be an integer >= 1, found \"0\""),
            std::string::npos);
  bad = m;
  bad["seed"] = "-1";
  EXPECT_NE(test::usage_error_message([&] { spec_from_settings(bad, "f"); }).find("\"seed\""), std::string::npos);
  bad = m;
  bad.erase("loss");
  EXPECT_NE(test::usage_error_message([&] { spec_from_settings(bad, "f"); }).find("\"loss\" is missing"),
            std::string::npos);
}

// lr_at (optim.h) against hand-computed rates, at the boundaries of the schedules and the warmup
// (10 steps per epoch; step t is the t-th of the run, 1-based).
TEST(LrSchedule, RatesAtTheBoundaries) {
  auto cfg = [](const char* text, int warmup, float lr) {
    OptimConfig c;
    c.lr = lr;
    parse_lr_schedule(text, &c.schedule);
    c.schedule.warmup_epochs = warmup;
    return c;
  };
  // constant: the rate itself, every step
  OptimConfig c = cfg("constant", 0, 0.05f);
  for (long long t : {1, 2, 10, 11, 1000000}) EXPECT_EQ(lr_at(c, t, 10), 0.05f) << t;
  // step:2,4:0.5 — epochs 1-2 at 0.8, epochs 3-4 (steps 21-40) at 0.4, from epoch 5 (step 41) 0.2
  c = cfg("step:2,4:0.5", 0, 0.8f);
  EXPECT_EQ(lr_at(c, 1, 10), 0.8f);
  EXPECT_EQ(lr_at(c, 20, 10), 0.8f);
  EXPECT_EQ(lr_at(c, 21, 10), 0.4f);
  EXPECT_EQ(lr_at(c, 40, 10), 0.4f);
  EXPECT_EQ(lr_at(c, 41, 10), 0.2f);
  EXPECT_EQ(lr_at(c, 500, 10), 0.2f);
  // cosine over 4 epochs = 40 steps: lr (1 + cos(pi k / 40)) / 2 with k = t - 1
  c = cfg("cosine:4", 0, 1.f);
  EXPECT_EQ(lr_at(c, 1, 10), 1.f);
  EXPECT_FLOAT_EQ(lr_at(c, 11, 10), 0.8535533905932737f);  // k = 10: (1 + cos(pi/4)) / 2
  EXPECT_EQ(lr_at(c, 21, 10), 0.5f);                       // k = 20: cos(pi/2) ~ 6e-17
  EXPECT_FLOAT_EQ(lr_at(c, 31, 10), 0.1464466094067262f);  // k = 30
  EXPECT_FLOAT_EQ(lr_at(c, 40, 10), 0.0015413331334360f);  // k = 39, the last step of the run
  EXPECT_EQ(lr_at(c, 41, 10), 0.f);                        // past the end
  // warmup over 2 epochs (20 steps): the schedule's rate times t / 20, then the schedule
  c = cfg("constant", 2, 1.f);
  EXPECT_EQ(lr_at(c, 1, 10), 0.05f);
  EXPECT_EQ(lr_at(c, 10, 10), 0.5f);
  EXPECT_EQ(lr_at(c, 20, 10), 1.f);
  EXPECT_EQ(lr_at(c, 21, 10), 1.f);
  // warmup with a step schedule whose first milestone is inside it: epoch 2 ramps toward 0.5
  c = cfg("step:1:0.5", 2, 1.f);
  EXPECT_EQ(lr_at(c, 10, 10), 0.5f);    // 1 * 10/20
  EXPECT_EQ(lr_at(c, 15, 10), 0.375f);  // 0.5 * 15/20
  EXPECT_EQ(lr_at(c, 21, 10), 0.5f);
  // cosine after 1 warmup epoch, over 3 epochs: it anneals over the 20 steps after the warmup
  c = cfg("cosine:3", 1, 1.f);
  EXPECT_EQ(lr_at(c, 5, 10), 0.5f);  // warmup: 1 * 5/10
  EXPECT_EQ(lr_at(c, 10, 10), 1.f);
  EXPECT_EQ(lr_at(c, 11, 10), 1.f);   // k = 0
  EXPECT_EQ(lr_at(c, 21, 10), 0.5f);  // k = 10 of 20
  EXPECT_EQ(lr_at(c, 31, 10), 0.f);
}

TEST(LrSchedule, TextRoundTripsAndOldCheckpointsReadAsConstant) {
  RunSpec s;
  parse_lr_schedule("step:30,60,90:0.1", &s.optim.schedule);
  s.optim.schedule.warmup_epochs = 2;
  std::map<std::string, std::string> m;
  for (const SpecSetting& x : spec_settings(s)) m[x.key] = x.value;
  EXPECT_EQ(m["lr_schedule"], "step:30,60,90:0.1");
  EXPECT_EQ(m["warmup_epochs"], "2");
  RunSpec r = spec_from_settings(m, "f");
  EXPECT_EQ(lr_schedule_str(r.optim.schedule), "step:30,60,90:0.1");
  EXPECT_EQ(r.optim.schedule.num_milestones, 3);
  EXPECT_EQ(r.optim.schedule.milestones[2], 90);
  EXPECT_EQ(r.optim.schedule.gamma, 0.1f);
  EXPECT_EQ(r.optim.schedule.warmup_epochs, 2);
  m["lr_schedule"] = "cosine:7";
  EXPECT_EQ(spec_from_settings(m, "f").optim.schedule.epochs, 7);
  m["lr_schedule"] = "cosine:x";
  EXPECT_NE(test::usage_error_message([&] {
              spec_from_settings(m, "ck");
            }).find("ck: the run's setting \"lr_schedule\" should be constant, step:E1,E2,...:GAMMA or cosine:E"),
            std::string::npos);
  m.erase("lr_schedule");
  m.erase("warmup_epochs");
  r = spec_from_settings(m, "f");
  EXPECT_EQ(r.optim.schedule.kind, LrScheduleKind::Constant);
  EXPECT_EQ(r.optim.schedule.warmup_epochs, 0);
}

// A step schedule trains to other weights than the constant rate, and the records show its rate.
TEST_F(TrainCpu, StepScheduleDecaysTheRateAndRecordsIt) {
  std::string con = test::fresh_dir("train_sched_const"), dec = test::fresh_dir("train_sched_step");
  TrainConfig cc = config(data_, con), cd = config(data_, dec);
  cc.opt.epochs = cd.opt.epochs = 3;
  parse_lr_schedule("step:1,2:0.5", &cd.spec.optim.schedule);
  train(cc);
  train(cd);
  // Epoch 1 runs at the same rate: the first epoch's figures are equal, the weights after 3 not.
  auto sc = summary(con), sd = summary(dec);
  EXPECT_EQ(sc["epochs"][0]["train_loss"].get<double>(), sd["epochs"][0]["train_loss"].get<double>());
  EXPECT_NE(model_weights(con), model_weights(dec));
  EXPECT_EQ(sd["lr_schedule"], "step:1,2:0.5");
  EXPECT_EQ(sd["warmup_epochs"], 0);
  EXPECT_EQ(sc["lr_schedule"], "constant");
  EXPECT_EQ(sd["epochs"][0]["lr"], 0.05);
  EXPECT_EQ(sd["epochs"][1]["lr"], 0.025);
  EXPECT_EQ(sd["epochs"][2]["lr"], 0.0125);
  std::string csv = read_file(dec + "/metrics.csv", "metrics");
  EXPECT_NE(csv.find(",0.05,cross_entropy\n"), std::string::npos) << csv;
  EXPECT_NE(csv.find(",0.025,cross_entropy\n"), std::string::npos) << csv;
  EXPECT_NE(csv.find(",0.0125,cross_entropy\n"), std::string::npos) << csv;
  // The warmup: epoch 1's last step is at the full rate, the weights differ again.
  std::string warm = test::fresh_dir("train_sched_warm");
  TrainConfig cw = cd;
  cw.opt.out = warm;
  cw.spec.optim.schedule.warmup_epochs = 1;
  train(cw);
  EXPECT_NE(model_weights(warm), model_weights(dec));
  EXPECT_EQ(summary(warm)["epochs"][0]["lr"], 0.05);
  EXPECT_EQ(summary(warm)["warmup_epochs"], 1);
}

// Cosine with a warmup, stopped mid-epoch and resumed: bitwise the uninterrupted run; a resume
// with another schedule, or past the cosine's end, is refused.
TEST_F(TrainCpu, ScheduledRunResumesMidEpochBitwise) {
  std::string full = test::fresh_dir("train_sched_full"), part = test::fresh_dir("train_sched_part");
  TrainConfig cf = config(data_, full);
  cf.opt.epochs = 3;
  cf.opt.checkpoint_every = 5;
  parse_lr_schedule("cosine", &cf.spec.optim.schedule);
  cf.spec.optim.schedule.warmup_epochs = 1;
  train(cf);
  EXPECT_EQ(summary(full)["lr_schedule"], "cosine:3");  // the run's epochs, fixed at its start
  TrainConfig cp = cf;
  cp.opt.out = part;
  EXPECT_THROW(train(cp, test::stop_after(27)), Error);  // epoch 2, step 9; checkpoint at step 25
  EXPECT_EQ(read_checkpoint(part + "/checkpoint.safetensors").global_step, 25);
  TrainConfig other = config(data_, part);
  other.opt.resume = part;
  other.opt.epochs = 3;
  other.opt.spec_flags_given = {"--lr-schedule", "--warmup-epochs"};
  parse_lr_schedule("step:2:0.1", &other.spec.optim.schedule);
  other.spec.optim.schedule.warmup_epochs = 1;
  std::string m = test::usage_error_message([&] { train(other); });
  EXPECT_NE(m.find("--lr-schedule step:2:0.1 (the run's: cosine:3)"), std::string::npos) << m;
  EXPECT_EQ(m.find("--warmup-epochs"), std::string::npos) << m;
  m = test::usage_error_message([&] { train(resume_of(part, 4)); });
  EXPECT_NE(m.find("--epochs 4: the rate schedule cosine:3 reaches 0 after epoch 3"), std::string::npos) << m;
  TrainConfig cr = resume_of(part, 3);
  cr.opt.checkpoint_every = 5;
  train(cr);
  EXPECT_EQ(model_weights(full), model_weights(part));
  auto sf = summary(full), sp = summary(part);
  for (int e = 0; e < 3; ++e) {
    EXPECT_EQ(sf["epochs"][e]["train_loss"].get<double>(), sp["epochs"][e]["train_loss"].get<double>()) << e;
    EXPECT_EQ(sf["epochs"][e]["lr"].get<double>(), sp["epochs"][e]["lr"].get<double>()) << e;
  }
  EXPECT_GT(sf["epochs"][1]["lr"].get<double>(), sf["epochs"][2]["lr"].get<double>());
}

// --augment's text: the forms it takes, the canonical text it writes (which reads back to the same
// setting), what it refuses and why; checkpoints from before augmentation read as none.
TEST(AugmentSpec, TextRoundTripsAndOldCheckpointsReadAsNone) {
  auto parsed = [](const std::string& t) {
    Augment a{9, true};
    parse_augment(t, &a);
    return augment_str(a);
  };
  EXPECT_EQ(parsed("none"), "none");
  EXPECT_EQ(parsed("None"), "none");
  EXPECT_EQ(parsed("crop:4"), "crop:4");
  EXPECT_EQ(parsed("flip"), "flip");
  EXPECT_EQ(parsed("crop:2,flip"), "crop:2,flip");
  EXPECT_EQ(parsed("flip,crop:2"), "crop:2,flip");
  Augment a;
  parse_augment("crop:3,flip", &a);
  EXPECT_EQ(a.pad, 3);
  EXPECT_TRUE(a.flip);
  auto error = [](const std::string& t) {
    return test::usage_error_message([&] {
      Augment x;
      parse_augment(t, &x);
    });
  };
  for (const char* bad : {"", "crop:0", "crop:x", "crop:-1", "crop", "crop:", "flop", "flip,", ",flip", "flip:1",
                          "flip,flip", "crop:1,crop:2", "none,flip", "crop:2 flip"}) {
    const std::string m = error(bad);
    EXPECT_EQ(m.rfind("--augment: expected none, or crop:P", 0), 0u) << bad << ": " << m;
    EXPECT_NE(m.find(std::string("'") + bad + "'"), std::string::npos) << bad << ": " << m;
  }
  EXPECT_NE(error("").find("found nothing"), std::string::npos);
  EXPECT_NE(error("crop:0").find("should be a whole number of pixels >= 1, found '0'"), std::string::npos);
  EXPECT_NE(error("crop:x").find("found 'x'"), std::string::npos);
  EXPECT_NE(error("flop").find("unknown augmentation 'flop'"), std::string::npos);
  // The pad must fit the images: at most half of the shorter side.
  EXPECT_NO_THROW(check_augment_fits(Augment{14, true}, 28, 28));
  EXPECT_NO_THROW(check_augment_fits(Augment{}, 1, 1));
  const std::string m = test::usage_error_message([] { check_augment_fits(Augment{99, false}, 28, 28); });
  EXPECT_NE(m.find("--augment crop:99: the padding P of crop:P should be from 1 to 14 (at most half of the 28x28 "
                   "images), found 99"),
            std::string::npos)
      << m;
  // Saved and read back; a checkpoint without the key (older than --augment) reads as none.
  RunSpec s;
  s.augment = {2, true};
  std::map<std::string, std::string> kv;
  for (const SpecSetting& x : spec_settings(s)) kv[x.key] = x.value;
  EXPECT_EQ(kv["augment"], "crop:2,flip");
  RunSpec r = spec_from_settings(kv, "f");
  EXPECT_EQ(r.augment.pad, 2);
  EXPECT_TRUE(r.augment.flip);
  kv["augment"] = "crop:zero";
  EXPECT_NE(test::usage_error_message([&] {
              spec_from_settings(kv, "ck");
            }).find("ck: the run's setting \"augment\" should be none, crop:P, flip or crop:P,flip"),
            std::string::npos);
  kv.erase("augment");
  EXPECT_FALSE(spec_from_settings(kv, "f").augment.on());
}

// A run with --augment crop:2,flip trains (and learns the task), to other weights than without;
// stopped mid-epoch and resumed it ends bitwise where the uninterrupted run does; a resume with
// another --augment is refused; the same setting written another way is not a conflict; a pad
// beyond half the 8x8 images is refused before training.
TEST_F(TrainCpu, AugmentedRunDiffersResumesBitwiseAndKeepsItsSetting) {
  std::string plain = test::fresh_dir("train_aug_plain"), full = test::fresh_dir("train_aug_full"),
              part = test::fresh_dir("train_aug_part");
  TrainConfig cp = config(data_, plain);
  cp.opt.epochs = 2;
  train(cp);
  TrainConfig cf = cp;
  cf.opt.out = full;
  cf.opt.checkpoint_every = 5;
  parse_augment("crop:2,flip", &cf.spec.augment);
  ASSERT_EQ(train(cf), 0);
  auto sf = summary(full);
  EXPECT_EQ(sf["augment"], "crop:2,flip");
  EXPECT_EQ(summary(plain)["augment"], "none");
  EXPECT_NE(model_weights(full), model_weights(plain));
  EXPECT_NE(sf["epochs"][0]["train_loss"].get<double>(), summary(plain)["epochs"][0]["train_loss"].get<double>());
  EXPECT_LT(sf["epochs"][1]["train_loss"].get<double>(), 1.0);  // (3 classes: chance is ln 3 = 1.1)
  EXPECT_EQ(read_checkpoint(full + "/checkpoint.safetensors").spec.augment.pad, 2);

  TrainConfig cs = cf;
  cs.opt.out = part;
  EXPECT_THROW(train(cs, test::stop_after(24)), Error);  // epoch 2 (18 steps each), checkpoint at step 20
  EXPECT_EQ(read_checkpoint(part + "/checkpoint.safetensors").global_step, 20);
  TrainConfig other = config(data_, part);
  other.opt.resume = part;
  other.opt.epochs = 2;
  other.opt.spec_flags_given = {"--augment"};
  const std::string m = test::usage_error_message([&] { train(other); });  // (its augment: none)
  EXPECT_NE(m.find("--augment none (the run's: crop:2,flip)"), std::string::npos) << m;
  parse_augment("flip", &other.spec.augment);
  EXPECT_NE(test::usage_error_message([&] { train(other); }).find("--augment flip (the run's: crop:2,flip)"),
            std::string::npos);
  parse_augment("flip,crop:2", &other.spec.augment);  // the same setting: the run continues
  ASSERT_EQ(train(other), 0);
  EXPECT_EQ(model_weights(full), model_weights(part));
  EXPECT_EQ(summary(part)["augment"], "crop:2,flip");

  TrainConfig wide = config(data_, test::fresh_dir("train_aug_wide"));
  wide.spec.augment = {5, false};
  const std::string w = test::usage_error_message([&] { train(wide); });
  EXPECT_NE(w.find("--augment crop:5: the padding P of crop:P should be from 1 to 4 (at most half of the 8x8 images)"),
            std::string::npos)
      << w;
  EXPECT_FALSE(file_exists(wide.opt.out + "/checkpoint.safetensors"));
}

TEST_F(TrainCpu, ModelFileHasTorchNamesAndMetadata) {
  std::string out = test::fresh_dir("train_model");
  TrainConfig c = config(data_, out);
  c.opt.epochs = 1;
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

// A net with batchnorm and dropout: it learns the task (the test evaluation in eval mode: the
// running statistics, no dropout); the model file holds the running statistics and
// num_batches_tracked (int64, the number of training steps) under torch's names; eval gives the
// run's test accuracy; an interrupted run resumes mid-epoch bitwise (the running statistics are in
// the checkpoint, the masks a function of the step).
TEST_F(TrainCpu, BatchNormAndDropoutLearnSaveAndResumeBitwise) {
  const char* arch =
      "conv(4,3,pad=1) batchnorm relu maxpool(2) dropout(0.2) dense(16) batchnorm relu dropout(0.3) dense(3)";
  std::string full = test::fresh_dir("train_bn_full"), part = test::fresh_dir("train_bn_part");
  TrainConfig cf = config(data_, full);
  cf.spec.arch = arch;
  cf.opt.epochs = 2;
  cf.opt.checkpoint_every = 5;
  train(cf);
  auto s = summary(full);
  EXPECT_GT(s["test_accuracy"].get<double>(), 0.9) << s.dump(1);

  SafeTensors st = read_safetensors(full + "/model.safetensors");
  for (const char* name : {"1.running_mean", "1.running_var", "7.running_mean", "7.running_var"}) {
    ASSERT_TRUE(st.tensors.count(name)) << name;
    EXPECT_EQ(st.tensors[name].dtype, "F32");
  }
  ASSERT_TRUE(st.tensors.count("1.num_batches_tracked"));
  EXPECT_EQ(st.tensors["1.num_batches_tracked"].dtype, "I64");
  EXPECT_TRUE(st.tensors["1.num_batches_tracked"].shape.empty());            // a scalar, as torch saves it
  EXPECT_EQ(st.get_i64("7.num_batches_tracked"), std::vector<int64_t>{36});  // 2 epochs of 18 steps
  const std::vector<float> var = st.get_f32("1.running_var");
  EXPECT_NE(var, std::vector<float>(4, 1.f));  // moved from the initial 1

  Model m = load_model(full + "/model.safetensors");
  Dataset d = load_dataset(data_);
  EvalResult r = evaluate(*m.net, m.params, d.test, d.test_labels, m.meta.mean, m.meta.std, Loss::SoftmaxCrossEntropy,
                          Device::CPU, 64, false);
  EXPECT_DOUBLE_EQ(r.accuracy, s["test_accuracy"].get<double>());

  // A file without the running statistics (as from before batchnorm, with a batchnorm arch
  // written in by hand) or with the count as a float: refused, naming the tensor.
  SafeTensors no_var = st;
  no_var.tensors.erase("1.running_var");
  write_safetensors(full + "/no_var.safetensors", no_var);
  EXPECT_NE(test::usage_error_message([&] {
              load_model(full + "/no_var.safetensors");
            }).find("tensor \"1.running_var\" is missing; the net"),
            std::string::npos);
  SafeTensors f32_count = st;
  const float count = 1.f;
  f32_count.put_f32("1.num_batches_tracked", {}, &count);
  write_safetensors(full + "/f32_count.safetensors", f32_count);
  EXPECT_NE(test::usage_error_message([&] {
              load_model(full + "/f32_count.safetensors");
            }).find("tensor \"1.num_batches_tracked\" has dtype F32, expected I64"),
            std::string::npos);

  TrainConfig cp = cf;
  cp.opt.out = part;
  EXPECT_THROW(train(cp, test::stop_after(27)), Error);
  TrainConfig cr = resume_of(part, 2);
  cr.opt.checkpoint_every = 5;
  train(cr);
  EXPECT_EQ(model_weights(full), model_weights(part));

  // batch 1 cannot train a batchnorm over features: refused before anything is written
  std::string one = test::fresh_dir("train_bn_batch1");
  TrainConfig c1 = config(data_, one);
  c1.spec.arch = arch;
  c1.spec.batch = 1;
  EXPECT_THROW(train(c1), UsageError);
  EXPECT_FALSE(file_exists(one + "/summary.json"));
}
