// The resume checkpoint: everything needed to continue a run so that its final weights are
// bitwise those of an uninterrupted run — weights, optimizer state, position (epoch and step),
// the partial-epoch metrics, and the settings. The data order is a pure function of
// (seed, epoch) (rng.h), so (seed, epoch, step) is the RNG state and the data order.
#pragma once

#include <string>
#include <vector>

#include "barecnn/trainer.h"

namespace barecnn {

struct Checkpoint {
  TrainConfig cfg;  // the run's settings (data, arch, batch, optimizer, loss, seed, limit)
  ModelMeta meta;
  std::string device;                                               // device the run trained on ("cpu" / "cuda")
  int epochs_done = 0;                                              // completed epochs
  long long step_in_epoch = 0;                                      // steps done in the current epoch
  long long global_step = 0;                                        // optimizer steps so far (Adam's bias correction)
  double epoch_loss_sum = 0, epoch_correct = 0, epoch_seconds = 0;  // the partial epoch so far
  std::vector<EpochMetrics> history;
  std::vector<float> params, m, v;
};

void write_checkpoint(const std::string& path, const Checkpoint& c);
Checkpoint read_checkpoint(const std::string& path);

// JSON of the per-epoch metrics (the "epochs" array of summary.json), and back.
std::string history_json(const std::vector<EpochMetrics>& h);
std::vector<EpochMetrics> parse_history_json(const std::string& s, const std::string& file);

}  // namespace barecnn
