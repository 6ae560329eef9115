// Layer objects: each holds its resolved geometry (arch.h), owns the description of its
// parameters, says what a call costs, and makes one op call per direction through the dispatch
// of exec.h (which picks the CUDA launcher, the fast CPU op or the reference). A layer holds no
// per-batch buffers: its
// saved state for backward (the max-pool argmax mask) lives in the NetState beside the
// activations, so one Net can run several batch sizes (training, evaluation) without moving a
// buffer that a captured CUDA Graph points at.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "barecnn/activation.h"
#include "barecnn/arch.h"
#include "barecnn/exec.h"
#include "barecnn/rng.h"
#include "barecnn/shape.h"
#include "barecnn/tensor.h"

namespace barecnn {

// One parameter tensor of a layer, e.g. {"weight", {32, 1, 5, 5}}.
struct ParamSpec {
  std::string name;                // "weight" or "bias"; buffers: "running_mean", ...
  Dims dims;                       // {} for a scalar (num_batches_tracked)
  std::string file_dtype = "F32";  // how model files store it (held as float in memory)
};

// Everything one forward or backward call of a layer needs. Pointers are on ex.device.
//   forward : in (N, in_dims) -> out (N, out_dims)
//   backward: given in, out and dout, writes din (null: not needed) and dparam
template <typename T>
struct LayerCall {
  Exec ex;  // where it runs (with the GPU scratch of workspace_floats(N) floats)
  int N = 0;
  const T* in = nullptr;
  T* out = nullptr;
  const T* dout = nullptr;
  T* din = nullptr;
  const T* param = nullptr;  // this layer's slice of the flat parameter buffer
  T* dparam = nullptr;       // its slice of the flat gradient buffer
  int32_t* saved = nullptr;  // saved_ints(N) int32s kept from forward for backward (argmax mask)
  // Conv + ReLU fused (Net::set_fusion): forward writes relu(conv) into `out` (the ReLU
  // layer's output); backward reads `dout` as the ReLU's output gradient and masks it with
  // relu_out (= that output), so the ReLU layer itself does not run.
  bool fuse_relu = false;
  const T* relu_out = nullptr;
  // Conv + ReLU + max pooling fused (the CPU, float): forward writes the pool's output into `out`
  // and its argmax mask into pool_mask (the pool layer's saved state); backward reads `dout` as
  // the pool's output gradient, with relu_out = the pooled output and the mask.
  bool fuse_maxpool = false;
  Pool2dShape pool;
  int32_t* pool_mask = nullptr;
  // Training or evaluation (RunMode, net.h): batchnorm normalizes with the batch's or the running
  // statistics; dropout draws a mask or passes its input on.
  bool training = false;
  const T* buffers = nullptr;                   // this layer's buffers (batchnorm: running statistics)
  T* update_buffers = nullptr;                  // training: the same buffers to update, or null (gradient checks)
  T* saved_values = nullptr;                    // saved_values(N) values kept from forward (batchnorm: mean, 1/std)
  const gpu::StepCounters* counters = nullptr;  // training: the step's seed and index (dropout's mask)
};

// What one forward or one backward call of a layer costs over a batch: its arithmetic and the
// fewest bytes it must move.
//
// FLOPs: convolution and dense count 2 per multiply-add; their backward computes the weight
// gradient (as many FLOPs as the forward) and, with need_din, the input gradient (as many again).
// The other layers count ~1 op per element they produce, enough to print a rate; flatten is a
// copy and does none.
//
// Bytes: between DRAM and the chip, float32 tensors (int32 for the max-pool mask): each tensor the
// math needs is read once and each result is written once, as though the chip held everything in
// between. This is a lower bound: a kernel that reads dout twice (once for each gradient) or
// re-reads its input tile moves more. So bytes / time is a lower bound of the bandwidth a kernel
// really draws; a layer far below the measured peaks (peak.h) on both FLOP/s and bytes/s is limited
// by something else (launch latency, too few blocks, poor access patterns). Each layer's cost()
// (host/nn/layers.cpp) says which tensors it counts.
struct OpCost {
  double flops = 0;
  double bytes = 0;
};
struct LayerCost {
  OpCost forward, backward;
};

class Layer {
 public:
  virtual ~Layer() = default;

  // The spec as written in the arch grammar: "conv(32,5,pad=2)", "relu", "maxpool(2)"
  // (layer_desc_str of its parsed form).
  std::string spec() const;
  LayerKind kind() const { return desc_.kind; }
  virtual std::vector<ParamSpec> param_specs() const { return {}; }
  // Initializes this layer's parameters (host, flat, in param_specs order).
  // `relu_after`: the next nonlinearity is ReLU-like (He init), else Xavier.
  virtual void init_params(float* param, Rng& rng, bool relu_after) const {}
  // Floats of scratch its calls need on `device` for a batch of N (LayerCall::ex.workspace).
  virtual size_t workspace_floats(int N, Device device) const { return 0; }
  // Int32s that forward saves for backward for a batch of N (max pooling: its argmax mask).
  virtual size_t saved_ints(int N) const { return 0; }
  // Values (of the net's type) that a training forward saves for backward (batchnorm: the batch's
  // mean and 1/std per channel).
  virtual size_t saved_values(int N) const { return 0; }
  // Buffers: state that is saved with the model but not trained (batchnorm's running statistics,
  // torch's register_buffer), their initial values, and how a file stores them ("F32", "I64").
  virtual std::vector<ParamSpec> buffer_specs() const { return {}; }
  virtual void init_buffers(float* buffers) const {}
  // Throws UsageError naming the layer if it cannot train on batches of N (batchnorm needs two
  // values per channel).
  virtual void check_train_batch(int N) const {}
  // Is the layer a ReLU-family activation (for the init rule)? Is it a nonlinearity at all?
  virtual bool is_relu_like() const { return false; }
  virtual bool is_activation() const { return false; }
  // Is the output the input's memory read with other dims (flatten)? Then the net hands the input
  // on to the next layer instead of running this one (except as the last layer).
  virtual bool is_view() const { return false; }
  // Can this layer apply a following plain ReLU in its own kernels on `device` (the conv, on both)?
  virtual bool can_fuse_relu(Device device) const { return false; }
  virtual bool is_plain_relu() const { return false; }
  // Can this layer (a conv whose ReLU it applies) also do the max pooling `ps` after that ReLU on
  // `device` (the CPU's fused ops, where their shape allows)? A max-pool layer's shape for a batch
  // of N, or nothing for any other layer.
  virtual bool can_fuse_relu_maxpool(Device device, const Pool2dShape& ps) const { return false; }
  virtual std::optional<Pool2dShape> max_pool_shape(int N) const { return std::nullopt; }
  // The cost of one forward and one backward call over a batch of N (see LayerCost). `need_din`:
  // the input gradient is computed (every layer but the first; nothing needs the gradient of the
  // image).
  virtual LayerCost cost(int N, bool need_din) const = 0;

  // A layer keeps no state between calls: everything a call reads or writes is in the LayerCall.
  virtual void forward(const LayerCall<float>& c) const = 0;
  virtual void forward(const LayerCall<double>& c) const = 0;
  virtual void backward(const LayerCall<float>& c) const = 0;
  virtual void backward(const LayerCall<double>& c) const = 0;

  const Dims& in_dims() const { return in_; }  // one sample: (C, H, W) or (F)
  const Dims& out_dims() const { return out_; }
  size_t num_params() const;
  int index() const { return index_; }
  // "layer 3 conv(32,7)" — used in every message about this layer.
  std::string label() const;

 protected:
  Layer(int index, const ArchLayer& a) : index_(index), desc_(a.desc), in_(a.in), out_(a.out) {}
  int index_;
  LayerDesc desc_;
  Dims in_, out_;
};

// The layer of a resolved arch (resolve_arch in arch.h, which has checked its geometry);
// `index` is its position in the net (torch.nn.Sequential index).
std::unique_ptr<Layer> make_layer(int index, const ArchLayer& a);

}  // namespace barecnn
