// Whole-net gradient check in double: backward against central differences for every parameter
// tensor and the input (sampled when large). Used by `barecnn gradcheck` and the tests.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "barecnn/loss.h"
#include "barecnn/tensor.h"

namespace barecnn {

struct GradcheckOptions {
  std::string arch = "paper";
  Dims input = {1, 28, 28};  // C, H, W
  Loss loss = Loss::SoftmaxCrossEntropy;
  uint64_t seed = 1;
  int batch = 2;
  int samples = 24;      // entries checked per tensor (all when the tensor is smaller)
  double step = 1e-6;    // central-difference step h
  double tol = 1e-6;     // Caffe criterion: |a - n| <= tol * max(|a|, |n|, 1) (+ the rounding floor)
  double corrupt = 1.0;  // tests only: scales the analytic gradient of the first tensor (must then fail)
};

struct GradcheckTensor {
  std::string name;  // "0.weight", ..., "input"
  Dims dims;
  size_t checked = 0;     // entries compared
  size_t skipped = 0;     // entries within h of a kink (one-sided differences disagree)
  double worst_rel = 0;   // worst |a - n| / max(|a|, |n|, 1)
  bool all_zero = false;  // analytic and numeric gradients are zero on every checked entry
  bool pass = false;
};

struct GradcheckResult {
  std::string arch;  // canonical spec of the net checked
  double loss = 0;
  std::vector<GradcheckTensor> tensors;
  bool pass = false;
};

GradcheckResult run_gradcheck(const GradcheckOptions& opt);
// Parses "CxHxW" (e.g. "3x32x32"); throws UsageError naming `flag`.
Dims parse_input_dims(const std::string& s, const std::string& flag);

}  // namespace barecnn
