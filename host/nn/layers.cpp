// Layer objects: geometry, parameters' shapes and init, and one op call per direction. Which
// implementation runs (GPU, fast CPU, reference) is decided by the op's dispatch (exec.h).
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "barecnn/arch.h"
#include "barecnn/error.h"
#include "barecnn/exec.h"
#include "barecnn/layer.h"

namespace barecnn {

size_t Layer::num_params() const {
  size_t n = 0;
  for (auto& p : param_specs()) n += dims_numel(p.dims);
  return n;
}

std::string Layer::label() const { return fmt("layer ", index_, " ", spec()); }

namespace {

// Forwards the four virtual entry points to one template per direction.
#define BARECNN_LAYER_DISPATCH                                  \
  void forward(const LayerCall<float>& c) override { fwd(c); }  \
  void forward(const LayerCall<double>& c) override { fwd(c); } \
  void backward(const LayerCall<float>& c) override { bwd(c); } \
  void backward(const LayerCall<double>& c) override { bwd(c); }

// Xavier/Glorot uniform, or He normal for layers a ReLU-family activation follows.
void init_weights(float* w, size_t n, int fan_in, int fan_out, Rng& rng, bool relu_after) {
  if (relu_after) {
    double std = std::sqrt(2.0 / fan_in);
    for (size_t i = 0; i < n; ++i) w[i] = float(std * rng.normal());
  } else {
    double lim = std::sqrt(6.0 / (fan_in + fan_out));
    for (size_t i = 0; i < n; ++i) w[i] = float(rng.uniform(-lim, lim));
  }
}

std::string window_str(int kh, int kw) { return kh == kw ? std::to_string(kh) : fmt(kh, "x", kw); }

// Layers on images need a (C, H, W) input.
void need_image(int index, const std::string& spec, const Dims& in) {
  if (in.size() != 3)
    throw UsageError(fmt("layer ", index, " ", spec, ": needs a CxHxW input but gets a flat vector of ", dims_str(in),
                         " values; put it before the first dense/flatten layer"));
}

// ---- convolution -----------------------------------------------------------------------------
class Conv2d final : public Layer {
 public:
  Conv2d(int index, const Dims& in, int K, int kh, int kw, int stride, int pad)
      : Layer(index, in), K_(K), kh_(kh), kw_(kw), stride_(stride), pad_(pad) {
    need_image(index, spec(), in);
    Conv2dShape s = make_conv2d_shape(1, in[0], in[1], in[2], K, kh, kw, stride, pad, label());
    if (s.OH < 1 || s.OW < 1) throw UsageError(fmt(label(), ": output size ", s.OH, "x", s.OW, " is not positive"));
    out_ = {K, s.OH, s.OW};
  }
  LayerKind kind() const override { return LayerKind::Conv; }
  std::string spec() const override {
    std::string s = fmt("conv(", K_, ",", window_str(kh_, kw_));
    if (stride_ != 1) s += fmt(",stride=", stride_);
    if (pad_) s += fmt(",pad=", pad_);
    return s + ")";
  }
  std::vector<ParamSpec> param_specs() const override { return {{"weight", {K_, in_[0], kh_, kw_}}, {"bias", {K_}}}; }
  void init_params(float* p, Rng& rng, bool relu_after) const override {
    int fan_in = in_[0] * kh_ * kw_, fan_out = K_ * kh_ * kw_;
    init_weights(p, size_t(K_) * fan_in, fan_in, fan_out, rng, relu_after);
    std::fill(p + size_t(K_) * fan_in, p + size_t(K_) * fan_in + K_, 0.f);
  }
  size_t workspace_floats(int N) const override { return gpu::conv2d_backward_weight_workspace(shape(N)); }
  bool can_fuse_relu(Device device) const override { return device == Device::CUDA; }
  BARECNN_LAYER_DISPATCH

 private:
  Conv2dShape shape(int N) const {
    Conv2dShape s = make_conv2d_shape(N, in_[0], in_[1], in_[2], K_, kh_, kw_, stride_, pad_, label());
    return s;
  }
  template <typename T>
  void fwd(const LayerCall<T>& c) {
    Conv2dShape s = shape(c.N);
    const T* w = c.param;                     // (K, C, kh, kw)
    const T* b = c.param + s.weight_numel();  // (K)
    op::conv2d_forward(c.ex, c.out, c.in, w, b, s, c.fuse_relu);
  }
  template <typename T>
  void bwd(const LayerCall<T>& c) {
    Conv2dShape s = shape(c.N);
    T* dw = c.dparam;
    T* db = c.dparam + s.weight_numel();
    op::conv2d_backward_weight(c.ex, dw, db, c.dout, c.in, s, c.relu_out);
    if (c.din) op::conv2d_backward_input(c.ex, c.din, c.dout, c.param, s, c.relu_out);
  }
  int K_, kh_, kw_, stride_, pad_;
};

// ---- pooling ---------------------------------------------------------------------------------
enum class PoolKind { Max, Avg, L2 };

class Pool2d final : public Layer {
 public:
  Pool2d(int index, const Dims& in, PoolKind kind, int kh, int kw, int stride)
      : Layer(index, in), kind_(kind), kh_(kh), kw_(kw), stride_(stride) {
    need_image(index, spec(), in);
    Pool2dShape s = make_pool2d_shape(1, in[0], in[1], in[2], kh, kw, stride, label());
    out_ = {in[0], s.OH, s.OW};
  }
  LayerKind kind() const override {
    return kind_ == PoolKind::Max   ? LayerKind::MaxPool
           : kind_ == PoolKind::Avg ? LayerKind::AvgPool
                                    : LayerKind::L2Pool;
  }
  std::string spec() const override {
    const char* n = kind_ == PoolKind::Max ? "maxpool" : kind_ == PoolKind::Avg ? "avgpool" : "l2pool";
    std::string s = fmt(n, "(", window_str(kh_, kw_));
    if (!(kh_ == kw_ && stride_ == kh_)) s += fmt(",stride=", stride_);
    return s + ")";
  }
  size_t saved_ints(int N) const override { return kind_ == PoolKind::Max ? size_t(N) * size_t(dims_numel(out_)) : 0; }
  BARECNN_LAYER_DISPATCH

 private:
  Pool2dShape shape(int N) const { return make_pool2d_shape(N, in_[0], in_[1], in_[2], kh_, kw_, stride_, label()); }
  template <typename T>
  void fwd(const LayerCall<T>& c) {
    Pool2dShape s = shape(c.N);
    switch (kind_) {
      case PoolKind::Max:
        // The argmax mask (N, C, OH, OW) is this layer's saved state for backward (NetState::saved).
        BARECNN_ASSERT(c.saved != nullptr, label(), ": forward without its argmax mask buffer");
        return op::maxpool2d_forward(c.ex, c.out, c.saved, c.in, s);
      case PoolKind::Avg:
        return op::avgpool2d_forward(c.ex, c.out, c.in, s);
      case PoolKind::L2:
        return op::l2pool2d_forward(c.ex, c.out, c.in, s);
    }
  }
  template <typename T>
  void bwd(const LayerCall<T>& c) {
    if (!c.din) return;
    Pool2dShape s = shape(c.N);
    switch (kind_) {
      case PoolKind::Max:
        BARECNN_ASSERT(c.saved != nullptr, label(), ": backward without its argmax mask buffer");
        return op::maxpool2d_backward(c.ex, c.din, c.dout, c.saved, s);
      case PoolKind::Avg:
        return op::avgpool2d_backward(c.ex, c.din, c.dout, s);
      case PoolKind::L2:
        return op::l2pool2d_backward(c.ex, c.din, c.dout, c.in, c.out, s);
    }
  }
  PoolKind kind_;
  int kh_, kw_, stride_;
};

// ---- elementwise activations -------------------------------------------------------------------
class ActivationLayer final : public Layer {
 public:
  ActivationLayer(int index, const Dims& in, Activation a) : Layer(index, in), a_(a) { out_ = in; }
  LayerKind kind() const override { return LayerKind::Activation; }
  std::string spec() const override { return activation_name(a_); }
  bool is_activation() const override { return true; }
  bool is_relu_like() const override {
    return a_.kind == Act::Relu || a_.kind == Act::LeakyRelu || a_.kind == Act::Elu;
  }
  bool is_plain_relu() const override { return a_.kind == Act::Relu; }
  BARECNN_LAYER_DISPATCH

 private:
  template <typename T>
  void fwd(const LayerCall<T>& c) {
    op::activation_forward(c.ex, c.out, c.in, 1LL * c.N * dims_numel(in_), a_);
  }
  template <typename T>
  void bwd(const LayerCall<T>& c) {
    if (c.din) op::activation_backward(c.ex, c.din, c.dout, c.in, c.out, 1LL * c.N * dims_numel(in_), a_);
  }
  Activation a_;
};

// ---- softmax over the features of each sample ----------------------------------------------------
class SoftmaxLayer final : public Layer {
 public:
  SoftmaxLayer(int index, const Dims& in) : Layer(index, in) {
    if (in.size() != 1)
      throw UsageError(fmt(label(), ": softmax works on a flat vector of features but gets ", dims_str(in),
                           "; put it after a dense layer"));
    out_ = in;
  }
  LayerKind kind() const override { return LayerKind::Softmax; }
  std::string spec() const override { return "softmax"; }
  bool is_activation() const override { return true; }
  BARECNN_LAYER_DISPATCH

 private:
  template <typename T>
  void fwd(const LayerCall<T>& c) {
    op::softmax_forward(c.ex, c.out, c.in, c.N, in_[0]);
  }
  template <typename T>
  void bwd(const LayerCall<T>& c) {
    if (c.din) op::softmax_backward(c.ex, c.din, c.dout, c.out, c.N, in_[0]);
  }
};

// ---- flatten: (C, H, W) -> (C*H*W), a view (a copy only as the last layer) -------------------------
class Flatten final : public Layer {
 public:
  Flatten(int index, const Dims& in) : Layer(index, in) { out_ = {int(dims_numel(in))}; }
  LayerKind kind() const override { return LayerKind::Flatten; }
  std::string spec() const override { return "flatten"; }
  // NCHW is already the flat (N, C*H*W) layout: the net passes the input on (Net::layer_call).
  bool is_view() const override { return true; }
  BARECNN_LAYER_DISPATCH

 private:
  template <typename T>
  void fwd(const LayerCall<T>& c) {
    op::copy(c.ex, c.out, c.in, size_t(c.N) * dims_numel(in_));
  }
  template <typename T>
  void bwd(const LayerCall<T>& c) {
    if (c.din) op::copy(c.ex, c.din, c.dout, size_t(c.N) * dims_numel(in_));
  }
};

// ---- dense (fully connected) -------------------------------------------------------------------
class Dense final : public Layer {
 public:
  Dense(int index, const Dims& in, int units) : Layer(index, in), units_(units) {
    if (in.size() != 1)
      throw UsageError(fmt(label(), ": needs a flat input, gets ", dims_str(in),
                           " (a flatten is inserted "
                           "automatically before the first dense layer)"));
    out_ = {units};
  }
  LayerKind kind() const override { return LayerKind::Dense; }
  std::string spec() const override { return fmt("dense(", units_, ")"); }
  std::vector<ParamSpec> param_specs() const override { return {{"weight", {units_, in_[0]}}, {"bias", {units_}}}; }
  void init_params(float* p, Rng& rng, bool relu_after) const override {
    size_t nw = size_t(units_) * in_[0];
    init_weights(p, nw, in_[0], units_, rng, relu_after);
    std::fill(p + nw, p + nw + units_, 0.f);
  }
  BARECNN_LAYER_DISPATCH

 private:
  template <typename T>
  void fwd(const LayerCall<T>& c) {
    const int IN = in_[0], OUT = units_;
    const T* w = c.param;                     // (OUT, IN)
    const T* b = c.param + size_t(OUT) * IN;  // (OUT)
    op::dense_forward(c.ex, c.out, c.in, w, b, c.N, IN, OUT);
  }
  template <typename T>
  void bwd(const LayerCall<T>& c) {
    const int IN = in_[0], OUT = units_;
    T* dw = c.dparam;
    T* db = c.dparam + size_t(OUT) * IN;
    op::dense_backward_weight(c.ex, dw, db, c.dout, c.in, c.N, IN, OUT);
    if (c.din) op::dense_backward_input(c.ex, c.din, c.dout, c.param, c.N, IN, OUT);
  }
  int units_;
};

}  // namespace

std::unique_ptr<Layer> make_conv2d(int index, const Dims& in, int out_channels, int kh, int kw, int stride, int pad) {
  return std::make_unique<Conv2d>(index, in, out_channels, kh, kw, stride, pad);
}
std::unique_ptr<Layer> make_maxpool2d(int index, const Dims& in, int kh, int kw, int stride) {
  return std::make_unique<Pool2d>(index, in, PoolKind::Max, kh, kw, stride);
}
std::unique_ptr<Layer> make_avgpool2d(int index, const Dims& in, int kh, int kw, int stride) {
  return std::make_unique<Pool2d>(index, in, PoolKind::Avg, kh, kw, stride);
}
std::unique_ptr<Layer> make_l2pool2d(int index, const Dims& in, int kh, int kw, int stride) {
  return std::make_unique<Pool2d>(index, in, PoolKind::L2, kh, kw, stride);
}
std::unique_ptr<Layer> make_activation(int index, const Dims& in, Activation a) {
  return std::make_unique<ActivationLayer>(index, in, a);
}
std::unique_ptr<Layer> make_softmax(int index, const Dims& in) { return std::make_unique<SoftmaxLayer>(index, in); }
std::unique_ptr<Layer> make_flatten(int index, const Dims& in) { return std::make_unique<Flatten>(index, in); }
std::unique_ptr<Layer> make_dense(int index, const Dims& in, int units) {
  return std::make_unique<Dense>(index, in, units);
}

}  // namespace barecnn
