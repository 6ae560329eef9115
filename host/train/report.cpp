// summary.json, metrics.csv and the PNG charts of a training run.
#include "barecnn/report.h"

#include <nlohmann/json.hpp>

#include <cstdio>

#include "barecnn/error.h"
#include "barecnn/fileutil.h"
#include "barecnn/plots.h"

namespace barecnn {

using json = nlohmann::json;

std::string summary_json(const RunReport& r) {
  json j;
  j["test_accuracy"] = r.test_accuracy;
  j["test_loss"] = r.test_loss;
  j["device"] = r.device;
  j["arch"] = r.arch;
  j["seed"] = r.seed;
  j["batch"] = r.batch;
  j["limit"] = r.limit;
  j["optimizer"] = r.optimizer;
  if (r.peak_device_bytes >= 0) {
    j["cuda_graph"] = r.cuda_graph;
    j["fuse"] = r.fuse;
    j["peak_device_bytes"] = r.peak_device_bytes;
  }
  json epochs = json::array();
  for (auto& e : r.epochs)
    epochs.push_back({{"epoch", e.epoch},
                      {"train_loss", e.train_loss},
                      {"train_accuracy", e.train_accuracy},
                      {"test_accuracy", e.test_accuracy},
                      {"test_loss", e.test_loss},
                      {"seconds", e.seconds},
                      {"images_per_second", e.images_per_second}});
  j["epochs"] = epochs;
  return j.dump(2) + "\n";
}

std::string metrics_csv(const std::vector<EpochMetrics>& epochs) {
  std::string s = "epoch,train_loss,train_accuracy,test_accuracy,test_loss,seconds,images_per_second\n";
  char line[256];
  for (auto& e : epochs) {
    std::snprintf(line, sizeof line, "%d,%.9g,%.9g,%.9g,%.9g,%.6g,%.6g\n", e.epoch, e.train_loss, e.train_accuracy,
                  e.test_accuracy, e.test_loss, e.seconds, e.images_per_second);
    s += line;
  }
  return s;
}

void write_report(const std::string& dir, const RunReport& r) {
  atomic_write_text(path_join(dir, "summary.json"), summary_json(r));
  atomic_write_text(path_join(dir, "metrics.csv"), metrics_csv(r.epochs));
  Series train_loss{"train", {}, {}}, test_loss{"test", {}, {}}, train_acc{"train", {}, {}}, test_acc{"test", {}, {}};
  for (auto& e : r.epochs) {
    train_loss.x.push_back(e.epoch), train_loss.y.push_back(e.train_loss);
    test_loss.x.push_back(e.epoch), test_loss.y.push_back(e.test_loss);
    train_acc.x.push_back(e.epoch), train_acc.y.push_back(100 * e.train_accuracy);
    test_acc.x.push_back(e.epoch), test_acc.y.push_back(100 * e.test_accuracy);
  }
  plot_curves(path_join(dir, "loss.png"), "Loss per epoch (" + r.arch + ")", "epoch", "loss", {train_loss, test_loss});
  plot_curves(path_join(dir, "accuracy.png"), "Accuracy per epoch (" + r.arch + ")", "epoch", "accuracy (%)",
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
