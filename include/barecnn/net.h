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

// One named parameter tensor in the flat buffer: "0.weight" at offset 0, dims {32,1,5,5}.
struct ParamEntry {
  std::string name;  // "<layer-index>.weight" / ".bias", as torch.nn.Sequential names it
  int layer = 0;
  size_t offset = 0;
  Dims dims;
  size_t numel() const { return dims_numel(dims); }
};

// Activations and their gradients for one batch, on one device.
template <typename T>
struct NetState {
  Device device = Device::CPU;
  int N = 0;
  std::vector<BasicTensor<T>> act;   // act[i]: input of layer i; act[L]: the logits (N, K)
  std::vector<BasicTensor<T>> dact;  // dact[i]: d loss / d act[i]
  Tensor workspace;                  // GPU scratch shared by the layers
  std::vector<TensorI> saved;        // saved[i]: layer i's state from forward (argmax mask), or empty
  // fused[i]: layer i (a conv) applies layer i+1 (a ReLU) itself; act[i+1] and dact[i+1] are then
  // not used and hold nothing (GPU float only, with Net::set_gpu_fusion(true)).
  std::vector<bool> fused;
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
  int num_outputs() const;                          // width of the last layer
  int num_layers() const { return int(layers_.size()); }
  Layer& layer(int i) { return *layers_.at(i); }
  const Layer& layer(int i) const { return *layers_.at(i); }
  const std::vector<ParamEntry>& params() const { return params_; }
  size_t num_params() const { return num_params_; }

  // Throws UsageError unless the last layer's width equals `classes`.
  void check_classes(int classes, const std::string& data_desc) const;

  // Seeded, deterministic init into a host buffer of num_params() floats: He for layers that a
  // ReLU-family activation follows, Xavier otherwise; biases zero.
  std::vector<float> init_params(uint64_t seed) const;

  // GPU float only: fuse each conv with a plain ReLU right after it (the ReLU runs in the conv's
  // kernels, forward and backward; the results are bitwise those of the separate layers). Takes
  // effect at the next prepare(). Off by default.
  void set_gpu_fusion(bool on) { gpu_fusion_ = on; }
  bool gpu_fusion() const { return gpu_fusion_; }

  // Allocates (or reuses) the activations for a batch of N on `device`.
  template <typename T>
  void prepare(NetState<T>& st, int N, Device device) const;
  // st.act[0] must hold the input. Writes st.act[1..L].
  template <typename T>
  void forward(NetState<T>& st, const T* params, const Exec& ex);
  // st.dact[L] must hold d loss / d logits. Writes st.dact[L-1..1] (and dact[0] if
  // need_input_grad) and grads (num_params, overwritten).
  template <typename T>
  void backward(NetState<T>& st, const T* params, T* grads, const Exec& ex, bool need_input_grad);
  // The call that forward / backward make for layer i (grads may be null for forward only; the
  // input gradient of layer 0 is skipped unless need_input_grad). Benchmarks time single layers
  // with it.
  template <typename T>
  LayerCall<T> layer_call(NetState<T>& st, int i, const T* params, T* grads, const Exec& ex,
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
  std::vector<ParamEntry> params_;
  std::vector<size_t> layer_offset_;  // start of each layer's slice in the flat buffer
  size_t num_params_ = 0;
  bool gpu_fusion_ = false;
  // Layer i is a view (flatten) that is not the last layer: it does not run, and act[i+1] /
  // dact[i+1] hold nothing; input_slot(j) is the act index layer j reads (past such views).
  bool skipped_view(size_t i) const;
  size_t input_slot(size_t i) const;
};

}  // namespace barecnn
