// One training step, written once for both devices (host/train/step.cpp):
//
//   begin_step (the step counters: which batch, Adam's t)
//   gather + normalize the batch of the epoch's permutation      (the data set is resident;
//     with settings.augment, each sample randomly cropped and flipped on the way)
//   forward                                                      (Net, through exec.h)
//   loss, d loss / d logits and correct counts, in one op
//   metrics: the epoch's loss sum and correct count, on the device
//   backward
//   [all-reduce of the flat gradient: the slot for data-parallel training; nothing yet]
//   optimizer step over the flat parameters
//
// The step owns what it trains: the flat parameters, gradients and optimizer state, the batch
// buffers, the resident data set and the counters. Everything that changes from one step to the
// next is read from the counters in device memory, so on the GPU the step has no host
// synchronization and can be captured once as a CUDA Graph and replayed.
#pragma once

#include <cstdint>
#include <vector>

#include "barecnn/augment.h"
#include "barecnn/exec.h"
#include "barecnn/idx.h"
#include "barecnn/loss.h"
#include "barecnn/net.h"

namespace barecnn {

struct StepSettings {
  int batch = 64;
  Loss loss = Loss::SoftmaxCrossEntropy;
  OptimConfig optim;
  float mean = 0, std = 1;  // input normalization: (x/255 - mean) / std
  bool cuda_graph = false;  // replay the step as one captured CUDA Graph (where the device can)
  Augment augment;          // crop and flip each sample in the gather (augment.h); off by default
};

// What the step trains, as the host sees it (checkpoints, the divergence replay).
struct StepState {
  std::vector<float> params, m, v;  // flat, in the net's layout: params of Net::state_size(), m and v of num_params()
  long long global_step = 0;        // optimizer steps so far
};

// The epoch's metrics so far: sums over the samples of the steps counted.
struct StepMetrics {
  double loss_sum = 0, correct = 0;
  long long steps = 0;  // steps of the epoch they cover
};

class TrainStep {
 public:
  // `images` (count of P pixels) and `labels` (count) are copied to ex.device once. `net` must
  // outlive the step; its buffers are prepared here for settings.batch.
  TrainStep(const Net& net, const Exec& ex, const IdxImages& images, const std::vector<uint8_t>& labels,
            const StepSettings& settings);

  void set_state(const StepState& s);
  StepState state() const;  // copies to the host
  const Tensor& params() const { return params_; }
  long long global_step() const { return global_step_; }
  long long steps_per_epoch() const { return count_ / settings_.batch; }  // the last partial batch is dropped

  // Starts epoch `epoch` (its permutation of the data) at batch `next_batch`, with the metrics
  // of the batches before it.
  void begin_epoch(uint64_t seed, long long epoch, long long next_batch, const StepMetrics& so_far);
  // One optimizer step on the next batch. `eager`: kernel by kernel even with cuda_graph.
  void run(bool eager = false);

  // The newest epoch metrics that have reached the host, without waiting (false: none new since
  // the last call). Cheap on the CPU; on the GPU each call may queue a small copy, so the caller
  // spaces the calls out (metrics_cheap()).
  bool poll_metrics(StepMetrics* m);
  StepMetrics wait_metrics();  // the metrics of every step so far
  bool metrics_cheap() const { return readback_.cheap(); }

  // After a non-finite loss: the first layer of the last step whose values are not finite.
  std::string first_nonfinite() const { return net_.first_nonfinite(st_); }

 private:
  void enqueue();  // the step's ops, in order, on ex_

  const Net& net_;
  Exec ex_;
  StepSettings settings_;
  int count_ = 0, H_ = 0, W_ = 0, P_ = 0;
  NetState<float> st_;
  Tensor params_;                            // (state_size) the parameters, then the buffers
  Tensor grads_, m_, v_;                     // (num_params)
  Tensor loss_;                              // (batch) per-sample loss
  TensorI correct_, labels_;                 // (batch)
  BasicTensor<uint8_t> images_, labels8_;    // (count, P), (count): the resident data set
  TensorI perm_;                             // (count) the epoch's order
  TensorD acc_;                              // (2) the epoch's [loss sum, correct count]
  BasicTensor<gpu::StepCounters> counters_;  // (1) the step's batch and Adam's t
  Readback readback_;
  CapturedGraph graph_;
  bool warm_ = false;  // one eager step ran (before the capture)
  long long global_step_ = 0, steps_in_epoch_ = 0;
};

}  // namespace barecnn
