// The files a training run leaves for people and other tools: summary.json, metrics.csv, plots.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "barecnn/trainer.h"

namespace barecnn {

struct RunReport {
  std::string arch, device;
  uint64_t seed = 0;
  int batch = 0;
  long long limit = 0;    // training images used (0: all)
  std::string optimizer;  // "sgd (lr 0.01, momentum 0.9, weight decay 0)"
  bool cuda_graph = false, fuse = false;
  long long peak_device_bytes = -1;  // GPU: the most bytes held in barecnn's buffers (-1: CPU run)
  double test_accuracy = 0, test_loss = 0;
  std::vector<EpochMetrics> epochs;
  std::vector<int64_t> confusion;  // (K, K) on the test set after the last epoch
  int classes = 0;
  std::vector<std::string> class_names;
  // First conv layer's weights (K, C, kh, kw), if the net has one.
  std::vector<float> conv_weight;
  int conv_k = 0, conv_c = 0, conv_kh = 0, conv_kw = 0;
};

std::string summary_json(const RunReport& r);
std::string metrics_csv(const std::vector<EpochMetrics>& epochs);
// Writes summary.json, metrics.csv, loss.png, accuracy.png, filters.png (if a conv layer),
// confusion.png into `dir`, each atomically.
void write_report(const std::string& dir, const RunReport& r);

}  // namespace barecnn
