// model.safetensors: the weights, named and laid out as torch.nn.Sequential names them, and in
// __metadata__ what eval and predict need besides: the arch, the input and its normalization, the
// class names and the data the model was trained on.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "barecnn/net.h"
#include "barecnn/safetensors.h"

namespace barecnn {

// The data a model was trained on: its folder when trained, and a fingerprint of its training
// and of its test files (idx.h's dataset_fingerprint; empty when unknown, as in files written
// before barecnn recorded it).
struct DataRecord {
  std::string dir, train_fingerprint, test_fingerprint;
};

// What a model file holds besides the weights.
struct ModelMeta {
  std::string arch;  // canonical spec
  Dims input;        // C, H, W
  int classes = 0;
  float mean = 0, std = 1;  // input normalization: (x/255 - mean) / std
  std::vector<std::string> class_names;
  DataRecord data;
};

struct Model {
  std::unique_ptr<Net> net;
  ModelMeta meta;
  std::vector<float> params;     // flat, in the net's layout
  bool from_checkpoint = false;  // read from a checkpoint.safetensors
};

void save_model(const std::string& path, const Net& net, const std::vector<float>& params, const ModelMeta& meta);
// Reads model.safetensors or a checkpoint.safetensors (whose optimizer state it skips).
// Validates: metadata with arch/input, every tensor present with the right shape and dtype, no
// extra tensors. Errors name the file and the tensor.
Model load_model(const std::string& path);

// The pieces the checkpoint shares: the metadata, and the net's tensors under their torch names.
void put_model_meta(SafeTensors& st, const ModelMeta& m);
ModelMeta get_model_meta(const SafeTensors& st, const std::string& path);
void put_params(SafeTensors& st, const Net& net, const std::vector<float>& params);
std::vector<float> get_params(const SafeTensors& st, const Net& net, const std::string& path);

}  // namespace barecnn
