// The files a training run leaves for people and other tools: summary.json, metrics.csv, plots.
// All of them are written after every epoch, so a run stopped at any point has them for the
// epochs it finished ("completed": false until the last).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "barecnn/model_io.h"
#include "barecnn/run_spec.h"

namespace barecnn {

struct EpochMetrics {
  int epoch = 0;
  double train_loss = 0, train_accuracy = 0, test_loss = 0, test_accuracy = 0;
  double seconds = 0, images_per_second = 0;
  double lr = 0;  // the learning rate of the epoch
};

// The per-epoch records as JSON text (summary.json's "epochs", the checkpoint's "history"), and
// back; a missing "lr" (files written before it was recorded) reads as 0.
std::string epochs_json(const std::vector<EpochMetrics>& epochs);
std::vector<EpochMetrics> parse_epochs_json(const std::string& text, const std::string& what);

struct RunReport {
  RunSpec spec;
  std::string device;
  int epochs_asked = 0;
  bool completed = false;  // every epoch asked for is done
  bool cuda_graph = false, fuse = false;
  long long peak_device_bytes = -1;  // GPU: the most bytes held in barecnn's buffers (-1: CPU run)
  double test_accuracy = 0, test_loss = 0;
  std::vector<EpochMetrics> epochs;
  std::vector<int64_t> confusion;  // (K, K) on the test set after the last epoch
  int classes = 0;
  std::vector<std::string> class_names;
  DataRecord data;
  // First conv layer's weights (K, C, kh, kw), if the net has one.
  std::vector<float> conv_weight;
  int conv_k = 0, conv_c = 0, conv_kh = 0, conv_kw = 0;
};

std::string summary_json(const RunReport& r);
// A one-line note when an epoch's test figures are those of a net whose output does not depend on
// its input: softmax cross-entropy over K classes at ln K (within 0.2%) with the accuracy at
// chance (at most 1/K + 1 point), as after a step too large left every ReLU dead (paper, constant
// --lr 0.05: the loss settled at ln 10, finite, so the divergence check says nothing). Empty
// otherwise, and for the other losses.
std::string chance_note(const EpochMetrics& e, int classes, Loss loss);

// One row per epoch; the loss column names the loss the run trains and tests with.
std::string metrics_csv(const std::vector<EpochMetrics>& epochs, const std::string& loss);
// Writes summary.json, metrics.csv, loss.png, accuracy.png, filters.png (if a conv layer),
// confusion.png into `dir`, each atomically.
void write_report(const std::string& dir, const RunReport& r);
// The names of every file write_report and the trainer write into a run's folder.
const std::vector<std::string>& run_file_names();

}  // namespace barecnn
