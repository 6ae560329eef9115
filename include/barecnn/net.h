// A sequential net built from an arch spec (see arch.h), its flat parameter layout, and the
// forward and backward runs over all layers.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "barecnn/layer.h"
#include "barecnn/loss.h"
#include "barecnn/tensor.h"

namespace barecnn {

// One named tensor in the flat parameter buffer: "0.weight" at offset 0, dims {32,1,5,5}. A
// buffer entry (batchnorm's "1.running_mean") lies after all the trainable parameters.
struct ParamEntry {
  std::string name;  // "<layer-index>.weight" / ".bias", as torch.nn.Sequential names it
  int layer = 0;
  size_t offset = 0;
  Dims dims;
  std::string file_dtype = "F32";  // how model files store it ("I64": num_batches_tracked)
  size_t numel() const { return dims_numel(dims); }
};

// How a forward pass runs. Evaluation (the default): batchnorm uses its running statistics, read
// from the buffers in the tail of the parameter buffer (Net::state_size), and dropout passes its
// input on. Training: batchnorm uses the batch's statistics and updates the running ones in
// `buffers` (null: left alone, as a gradient check wants), and dropout draws its mask from the
// seed and step in `counters` (on the net's device). The backward pass uses the mode of the
// forward before it.
template <typename T>
struct RunMode {
  bool training = false;
  T* buffers = nullptr;                         // training: the buffers to update (params + Net::num_params()), or null
  const gpu::StepCounters* counters = nullptr;  // training with dropout: the step's seed and index
  static RunMode eval() { return {}; }
  static RunMode train(T* buffers, const gpu::StepCounters* counters) { return {true, buffers, counters}; }
};

// One entry of a net's execution plan: a layer that runs, and the slots of NetState::act / dact
// it reads and writes. Layers that do not run have no entry: a flatten before another layer (a
// view: the next layer reads its input), and a ReLU that the conv before it applies (--fuse on),
// and on the CPU a max pooling after that ReLU, which the conv applies as well.
struct PlannedLayer {
  int layer = 0;            // index in the net
  int in = 0;               // act[in] its input, dact[in] its input gradient
  int out = 0;              // act[out] its output, dact[out] its output gradient
  bool fused_relu = false;  // the conv also applies the ReLU layer+1: out = layer + 2
  bool fused_pool = false;  // ... and the max pooling layer+2: out = layer + 3
};

// Activations and their gradients for one batch, on one device, and the plan that uses them.
template <typename T>
struct NetState {
  Device device = Device::CPU;
  int N = 0;
  std::vector<BasicTensor<T>> act;           // act[i]: input of layer i; act[L]: the logits (N, K)
  std::vector<BasicTensor<T>> dact;          // dact[i]: d loss / d act[i] (all empty without grads)
  bool grads = true;                         // prepared for backward (Net::prepare's for_backward)
  Tensor workspace;                          // scratch shared by the layers (Layer::workspace_floats), or empty
  std::vector<TensorI> saved;                // saved[i]: layer i's state from forward (argmax mask), or empty
  std::vector<BasicTensor<T>> saved_values;  // saved_values[i]: layer i's values from forward (batchnorm), or empty
  RunMode<T> mode;                           // the mode of the last forward (backward uses it)
  // The layers that run, in order (Net::prepare); forward, backward, first_nonfinite and bench
  // walk it. A slot no entry uses holds an empty tensor.
  std::vector<PlannedLayer> plan;
  // fused[i]: layer i (a conv) applies layer i+1 (a ReLU) itself (float only, with
  // Net::set_fusion(true)).
  std::vector<bool> fused;
  // fused_pool[i]: layer i (a conv, fused[i]) applies layer i+2 (a max pooling) too (the CPU).
  std::vector<bool> fused_pool;
  // The plan entry of layer i, or null when it does not run.
  const PlannedLayer* planned(int i) const {
    for (const PlannedLayer& p : plan)
      if (p.layer == i) return &p;
    return nullptr;
  }
};

class Net {
 public:
  // Builds and checks a net for one sample of `input` dims (C, H, W). `spec` is an arch spec or
  // a preset name. Throws UsageError naming the layer on any impossible geometry.
  Net(const std::string& spec, const Dims& input);
  Net(Net&&) = default;
  Net& operator=(Net&&) = default;

  const std::string& spec() const { return spec_; }  // resolved, canonical spec
  const Dims& input_dims() const { return input_; }
  int num_outputs() const;  // width of the last layer
  int num_layers() const { return int(layers_.size()); }
  Layer& layer(int i) { return *layers_.at(i); }
  const Layer& layer(int i) const { return *layers_.at(i); }
  // The flat parameter buffer: the trainable parameters (num_params(), what the optimizer and the
  // gradients cover), then the layers' buffers (batchnorm's running statistics, num_buffers()):
  // state_size() values in all, which every forward's `params` points at.
  const std::vector<ParamEntry>& params() const { return params_; }
  const std::vector<ParamEntry>& buffers() const { return buffers_; }
  size_t num_params() const { return num_params_; }
  size_t num_buffers() const { return num_buffers_; }
  size_t state_size() const { return num_params_ + num_buffers_; }
  // Throws UsageError naming the layer if one cannot train on batches of N (batchnorm on 1 value).
  void check_train_batch(int N) const;

  // Throws UsageError unless the last layer's width equals `classes`.
  void check_classes(int classes, const std::string& data_desc) const;

  // Seeded, deterministic init into a host buffer of state_size() floats: He for layers that a
  // ReLU-family activation follows, Xavier otherwise; biases zero; batchnorm's scale 1, its
  // running mean 0 and variance 1.
  std::vector<float> init_params(uint64_t seed) const;

  // Float only, either device: fuse each conv with a plain ReLU right after it (the ReLU runs in
  // the conv's kernels or CPU loops, forward and backward; the results are bitwise those of the
  // separate layers). Takes effect at the next prepare(). Off by default (the commands turn it on:
  // --fuse auto).
  void set_fusion(bool on) { fusion_ = on; }
  bool fusion() const { return fusion_; }

  // Plans the run (which layers run, on which buffers) and allocates (or reuses) the activations
  // for a batch of N on `device`, and their gradients unless !for_backward (forward only, as the
  // evaluator runs: half the memory; backward then refuses the state).
  template <typename T>
  void prepare(NetState<T>& st, int N, Device device, bool for_backward = true) const;
  // st.act[0] must hold the input; params holds state_size() values. Writes st.act[1..L].
  template <typename T>
  void forward(NetState<T>& st, const T* params, const Exec& ex, const RunMode<T>& mode = RunMode<T>::eval()) const;
  // After a training forward: st.dact[L] must hold d loss / d logits. Writes st.dact[L-1..1] (and
  // dact[0] if need_input_grad) and grads (num_params, overwritten).
  template <typename T>
  void backward(NetState<T>& st, const T* params, T* grads, const Exec& ex, bool need_input_grad) const;
  // The call that forward / backward make for a plan entry (grads may be null for forward only;
  // the input gradient of the net's input is skipped unless need_input_grad). Benchmarks time
  // single layers with it.
  template <typename T>
  LayerCall<T> layer_call(NetState<T>& st, const PlannedLayer& p, const T* params, T* grads, const Exec& ex,
                          bool need_input_grad) const;

  // After a non-finite loss: the first layer whose output (forward) or input gradient (backward)
  // holds a NaN/Inf, as "layer 4 dense(128): output has 3 non-finite values", or "" if none
  // (with fused conv+ReLU layers, whose insides are not kept: a hint to rerun without fusion).
  std::string first_nonfinite(const NetState<float>& st) const;

  // A table of the layers: index, spec, output shape, parameter count.
  std::string summary() const;

 private:
  std::string spec_;
  Dims input_;
  std::vector<std::unique_ptr<Layer>> layers_;
  std::vector<ParamEntry> params_, buffers_;
  std::vector<size_t> layer_offset_;   // start of each layer's parameters in the flat buffer
  std::vector<size_t> buffer_offset_;  // start of each layer's buffers in the flat buffer
  size_t num_params_ = 0, num_buffers_ = 0;
  bool fusion_ = false;
};

}  // namespace barecnn
