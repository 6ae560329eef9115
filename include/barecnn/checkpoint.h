// The resume checkpoint: everything needed to continue a run so that its final weights are
// bitwise those of an uninterrupted run — weights, optimizer state, position (epoch and step),
// the partial-epoch metrics, and the run's settings (RunSpec) and data. The data order is a pure
// function of (seed, epoch) (rng.h), so (seed, epoch, step) is the RNG state and the data order.
#pragma once

#include <string>
#include <vector>

#include "barecnn/model_io.h"
#include "barecnn/report.h"
#include "barecnn/run_spec.h"

namespace barecnn {

// __metadata__ "format" of a checkpoint, and the tensors it holds besides the model's (load_model
// skips them, so a checkpoint serves as a model).
inline constexpr const char* kCheckpointFormat = "barecnn-checkpoint-1";
inline constexpr const char* kCheckpointStateTensors[] = {"optimizer.m", "optimizer.v", "epoch_metrics"};

struct Checkpoint {
  RunSpec spec;
  ModelMeta meta;                                                   // with the data the run trains on
  std::string device;                                               // device the run trained on ("cpu" / "cuda")
  int epochs_asked = 0;                                             // --epochs of the run that wrote it
  int epochs_done = 0;                                              // completed epochs
  long long step_in_epoch = 0;                                      // steps done in the current epoch
  long long global_step = 0;                                        // optimizer steps so far (Adam's bias correction)
  double epoch_loss_sum = 0, epoch_correct = 0, epoch_seconds = 0;  // the partial epoch so far
  std::vector<EpochMetrics> history;
  std::vector<float> params, m, v;
};

void write_checkpoint(const std::string& path, const Checkpoint& c);
Checkpoint read_checkpoint(const std::string& path);

}  // namespace barecnn
