// Evaluation of a net on a set of images, batch by batch, on either device.
#pragma once

#include <cstdint>
#include <vector>

#include "barecnn/exec.h"
#include "barecnn/idx.h"
#include "barecnn/loss.h"
#include "barecnn/net.h"

namespace barecnn {

struct EvalResult {
  double loss = 0, accuracy = 0;
  long long count = 0;
  std::vector<int64_t> confusion;  // (K, K): row true, column predicted
  std::vector<float> logits;       // (count, K) when asked for
  std::vector<int32_t> predicted;  // (count)
};

// Keeps the images, the labels and its own batch buffers on ex.device between calls, so the
// trainer evaluates the test set after every epoch with the parameters where they are.
class Evaluator {
 public:
  // `labels` may be empty (prediction only). `net` and `images` must outlive the evaluator.
  Evaluator(const Net& net, const Exec& ex, const IdxImages& images, const std::vector<uint8_t>& labels, float mean,
            float std, Loss loss, int batch);
  // params: flat, on ex.device.
  EvalResult run(const float* params, bool keep_logits);

 private:
  const Net& net_;
  Exec ex_;
  const IdxImages& images_;
  bool has_labels_;
  float mean_, std_;
  Loss loss_;
  int batch_;
  NetState<float> st_;                        // its own activations: the training step's stay put
  BasicTensor<uint8_t> d_images_, d_labels_;  // (n, P), (n)
  TensorI idx_, labels_, correct_;            // (batch)
  Tensor lossv_;                              // (batch)
};

// Evaluates `params` (host, flat) on images on `device`; labels may be empty (prediction only).
EvalResult evaluate(const Net& net, const std::vector<float>& params, const IdxImages& images,
                    const std::vector<uint8_t>& labels, float mean, float std, Loss loss, Device device, int batch,
                    bool keep_logits);

}  // namespace barecnn
