// summary.json, metrics.csv and the PNG charts of a training run.
#include "barecnn/report.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>

#include "barecnn/error.h"
#include "barecnn/fileutil.h"
#include "barecnn/plots.h"
#include "barecnn/version.h"

namespace barecnn {

using json = nlohmann::json;

namespace {

json epochs_array(const std::vector<EpochMetrics>& epochs) {
  json a = json::array();
  for (auto& e : epochs)
    a.push_back({{"epoch", e.epoch},
                 {"train_loss", e.train_loss},
                 {"train_accuracy", e.train_accuracy},
                 {"test_accuracy", e.test_accuracy},
                 {"test_loss", e.test_loss},
                 {"seconds", e.seconds},
                 {"images_per_second", e.images_per_second},
                 {"lr", e.lr}});
  return a;
}

}  // namespace

std::string epochs_json(const std::vector<EpochMetrics>& epochs) { return epochs_array(epochs).dump(); }

std::vector<EpochMetrics> parse_epochs_json(const std::string& text, const std::string& what) {
  std::vector<EpochMetrics> h;
  try {
    for (auto& e : json::parse(text)) {
      EpochMetrics m;
      m.epoch = e.at("epoch").get<int>();
      m.train_loss = e.at("train_loss").get<double>();
      m.train_accuracy = e.at("train_accuracy").get<double>();
      m.test_loss = e.at("test_loss").get<double>();
      m.test_accuracy = e.at("test_accuracy").get<double>();
      m.seconds = e.at("seconds").get<double>();
      m.images_per_second = e.at("images_per_second").get<double>();
      m.lr = e.value("lr", 0.0);
      h.push_back(m);
    }
  } catch (const std::exception& ex) {
    throw UsageError(fmt(what, " is not a valid list of epochs: ", ex.what()));
  }
  return h;
}

std::string summary_json(const RunReport& r) {
  json j;
  j["completed"] = r.completed;
  j["epochs_asked"] = r.epochs_asked;
  j["epochs_done"] = r.epochs.size();
  j["test_accuracy"] = r.test_accuracy;
  j["test_loss"] = r.test_loss;
  j["device"] = r.device;
  for (const SpecSetting& s : spec_settings(r.spec)) {
    if (s.kind == SpecSetting::Integer)
      j[s.key] = s.key == "seed" ? json(std::stoull(s.value)) : json(std::stoll(s.value));
    else if (s.kind == SpecSetting::Number)
      j[s.key] = std::stod(s.value);
    else
      j[s.key] = s.value;
  }
  j["data"] = {{"dir", r.data.dir},
               {"train_fingerprint", r.data.train_fingerprint},
               {"test_fingerprint", r.data.test_fingerprint}};
  j["class_names"] = r.class_names;
  j["barecnn_version"] = barecnn_version();
  j["barecnn_commit"] = barecnn_commit();
  j["fuse"] = r.fuse;
  if (r.peak_device_bytes >= 0) {
    j["cuda_graph"] = r.cuda_graph;
    j["peak_device_bytes"] = r.peak_device_bytes;
  }
  j["epochs"] = epochs_array(r.epochs);
  return j.dump(2) + "\n";
}

std::string chance_note(const EpochMetrics& e, int classes, Loss loss) {
  if (loss != Loss::SoftmaxCrossEntropy || classes < 2) return "";
  const double ln_k = std::log(double(classes)), chance = 1.0 / classes;
  if (!(std::fabs(e.test_loss - ln_k) <= 0.002 * ln_k && e.test_accuracy <= chance + 0.01)) return "";
  char buf[320];
  std::snprintf(buf, sizeof buf,
                "note: after epoch %d the test loss is ln %d = %.4f and the test accuracy %.2f%%, chance: the "
                "net's output no longer depends on its input (e.g. every ReLU dead after too large a step); a "
                "lower --lr may help",
                e.epoch, classes, ln_k, 100 * e.test_accuracy);
  return buf;
}

std::string metrics_csv(const std::vector<EpochMetrics>& epochs, const std::string& loss) {
  std::string s = "epoch,train_loss,train_accuracy,test_accuracy,test_loss,seconds,images_per_second,lr,loss\n";
  char line[320];
  for (auto& e : epochs) {
    std::snprintf(line, sizeof line, "%d,%.9g,%.9g,%.9g,%.9g,%.6g,%.6g,%.9g,%s\n", e.epoch, e.train_loss,
                  e.train_accuracy, e.test_accuracy, e.test_loss, e.seconds, e.images_per_second, e.lr, loss.c_str());
    s += line;
  }
  return s;
}

const std::vector<std::string>& run_file_names() {
  static const std::vector<std::string> names = {
      "model.safetensors", "checkpoint.safetensors", "summary.json", "metrics.csv",
      "loss.png",          "accuracy.png",           "filters.png",  "confusion.png"};
  return names;
}

void write_report(const std::string& dir, const RunReport& r) {
  atomic_write_text(path_join(dir, "summary.json"), summary_json(r));
  atomic_write_text(path_join(dir, "metrics.csv"), metrics_csv(r.epochs, loss_name(r.spec.loss)));
  Series train_loss{"train", {}, {}}, test_loss{"test", {}, {}}, train_acc{"train", {}, {}}, test_acc{"test", {}, {}};
  for (auto& e : r.epochs) {
    train_loss.x.push_back(e.epoch), train_loss.y.push_back(e.train_loss);
    test_loss.x.push_back(e.epoch), test_loss.y.push_back(e.test_loss);
    train_acc.x.push_back(e.epoch), train_acc.y.push_back(100 * e.train_accuracy);
    test_acc.x.push_back(e.epoch), test_acc.y.push_back(100 * e.test_accuracy);
  }
  plot_curves(path_join(dir, "loss.png"), "Loss per epoch (" + r.spec.arch + ")", "epoch", "loss",
              {train_loss, test_loss});
  plot_curves(path_join(dir, "accuracy.png"), "Accuracy per epoch (" + r.spec.arch + ")", "epoch", "accuracy (%)",
              {train_acc, test_acc});
  if (!r.conv_weight.empty())
    plot_filters(path_join(dir, "filters.png"), r.conv_weight.data(), r.conv_k, r.conv_c, r.conv_kh, r.conv_kw,
                 "First convolution layer: filters");
  if (r.classes > 0 && r.confusion.size() == size_t(r.classes) * r.classes)
    plot_confusion(
        path_join(dir, "confusion.png"), r.confusion, r.classes, r.class_names,
        fmt("Confusion matrix on the test set (accuracy ", std::to_string(100 * r.test_accuracy).substr(0, 5), "%)"));
}

}  // namespace barecnn
