// Training, evaluation and prediction on either device, plus the model and checkpoint files.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "barecnn/evaluator.h"
#include "barecnn/exec.h"
#include "barecnn/idx.h"
#include "barecnn/net.h"
#include "barecnn/optim.h"

namespace barecnn {

struct TrainConfig {
  std::string data_dir;  // empty: default_data_dir()
  std::string arch = "paper";
  std::string device = "auto";  // auto | cpu | cuda
  int epochs = 3;
  int batch = 64;
  OptimConfig optim;  // (the CLI's defaults: sgd, lr 0.01, momentum 0.9)
  Loss loss = Loss::SoftmaxCrossEntropy;
  uint64_t seed = 1;
  long long limit = 0;  // first N training images (0: all)
  int threads = 0;      // CPU threads (0: OpenMP default)
  std::string out = "runs/latest";
  std::string resume;              // folder holding checkpoint.safetensors
  long long checkpoint_every = 0;  // steps between mid-epoch checkpoints (0: end of epoch only)
  bool quiet = false;              // no progress display
  bool cuda_graph = false;         // GPU: replay the training step as a captured CUDA Graph
  bool fuse = false;               // GPU: each conv applies the plain ReLU after it (Net::set_gpu_fusion)
};

struct EpochMetrics {
  int epoch = 0;
  double train_loss = 0, train_accuracy = 0, test_loss = 0, test_accuracy = 0;
  double seconds = 0, images_per_second = 0;
};

// Called after every optimizer step with the number of steps so far (tests stop a run there, as
// if it were killed, by throwing).
using StepObserver = std::function<void(long long global_step)>;

// Runs a whole training as the CLI's `train` does; prints the configuration, progress and the
// results; writes the outputs into cfg.out. Throws Error/UsageError on failure.
void train(const TrainConfig& cfg, const StepObserver& after_step = {});

// What a model file holds besides the weights.
struct ModelMeta {
  std::string arch;  // canonical spec
  Dims input;        // C, H, W
  int classes = 0;
  float mean = 0, std = 1;  // input normalization: (x/255 - mean) / std
  std::vector<std::string> class_names;
};

struct Model {
  std::unique_ptr<Net> net;
  ModelMeta meta;
  std::vector<float> params;  // flat, in the net's layout
};

void save_model(const std::string& path, const Net& net, const std::vector<float>& params, const ModelMeta& meta);
// Validates: metadata with arch/input, every tensor present with the right shape and dtype, no
// extra tensors. Errors name the file and the tensor.
Model load_model(const std::string& path);

// Fashion-MNIST's class names when the data looks like it (10 classes), else "0", "1", ...
std::vector<std::string> default_class_names(int classes, const std::string& data_dir);

}  // namespace barecnn
