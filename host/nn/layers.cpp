// Layer objects: parameters' shapes and init, the cost of a call, and one op call per direction.
// resolve_arch (arch.cpp) checks the geometry before a layer is made; which implementation runs
// (GPU, fast CPU, reference) is decided by the op's dispatch (exec.h).
#include <algorithm>
#include <cmath>
#include <cstdint>

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

std::string Layer::spec() const { return layer_desc_str(desc_); }
std::string Layer::label() const { return fmt("layer ", index_, " ", spec()); }

namespace {

// Forwards the four virtual entry points to one template per direction.
#define BARECNN_LAYER_DISPATCH                                        \
  void forward(const LayerCall<float>& c) const override { fwd(c); }  \
  void forward(const LayerCall<double>& c) const override { fwd(c); } \
  void backward(const LayerCall<float>& c) const override { bwd(c); } \
  void backward(const LayerCall<double>& c) const override { bwd(c); }

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

// ---- the fewest bytes (LayerCost): element counts of the whole batch, 4 bytes each ----------------
constexpr double kFloatBytes = 4;  // sizeof(float), and sizeof(int32_t) for the max-pool mask

// Convolution and dense layers: input x, output y, weight W, bias b.
//   forward : read x, W, b; write y.
//   backward: read dy and x (for dW); write dW and db; with need_din also read W and write dx.
void weighted_layer_bytes(LayerCost* c, double x, double y, double W, double b, bool need_din) {
  c->forward.bytes = kFloatBytes * (x + W + b + y);
  c->backward.bytes = kFloatBytes * (y + x + W + b);
  if (need_din) c->backward.bytes += kFloatBytes * (W + x);
}

// ---- convolution -----------------------------------------------------------------------------
class Conv2d final : public Layer {
 public:
  explicit Conv2d(int index, const ArchLayer& a) : Layer(index, a) {}
  std::vector<ParamSpec> param_specs() const override {
    return {{"weight", {desc_.out, in_[0], desc_.kh, desc_.kw}}, {"bias", {desc_.out}}};
  }
  void init_params(float* p, Rng& rng, bool relu_after) const override {
    const int K = desc_.out, fan_in = in_[0] * desc_.kh * desc_.kw, fan_out = K * desc_.kh * desc_.kw;
    init_weights(p, size_t(K) * fan_in, fan_in, fan_out, rng, relu_after);
    std::fill(p + size_t(K) * fan_in, p + size_t(K) * fan_in + K, 0.f);
  }
  size_t workspace_floats(int N, Device device) const override {
    return op::conv2d_backward_weight_workspace(device, shape(N));
  }
  bool can_fuse_relu(Device) const override { return true; }
  bool can_fuse_relu_maxpool(Device device, const Pool2dShape& ps) const override {
    return op::conv2d_fuses_relu_maxpool(device, shape(ps.N), ps);
  }
  LayerCost cost(int N, bool need_din) const override {
    const Conv2dShape s = shape(N);
    LayerCost c;
    // One multiply-add per output element and weight tap: N*K*OH*OW * C*kh*kw.
    c.forward.flops = 2.0 * double(s.out_numel()) * double(s.C) * s.kh * s.kw;
    c.backward.flops = need_din ? 2 * c.forward.flops : c.forward.flops;
    weighted_layer_bytes(&c, double(s.in_numel()), double(s.out_numel()), double(s.weight_numel()), double(s.K),
                         need_din);
    return c;
  }
  BARECNN_LAYER_DISPATCH

 private:
  Conv2dShape shape(int N) const {
    return make_conv2d_shape(N, in_[0], in_[1], in_[2], desc_.out, desc_.kh, desc_.kw, desc_.stride, desc_.pad,
                             label());
  }
  template <typename T>
  void fwd(const LayerCall<T>& c) const {
    Conv2dShape s = shape(c.N);
    const T* w = c.param;                     // (K, C, kh, kw)
    const T* b = c.param + s.weight_numel();  // (K)
    if (c.fuse_maxpool) return op::conv2d_forward_relu_maxpool(c.ex, c.out, c.pool_mask, c.in, w, b, s, c.pool);
    op::conv2d_forward(c.ex, c.out, c.in, w, b, s, c.fuse_relu);
  }
  template <typename T>
  void bwd(const LayerCall<T>& c) const {
    Conv2dShape s = shape(c.N);
    T* dw = c.dparam;
    T* db = c.dparam + s.weight_numel();
    if (c.fuse_maxpool) {
      op::conv2d_backward_weight_relu_maxpool(c.ex, dw, db, c.dout, c.relu_out, c.pool_mask, c.in, s, c.pool);
      if (c.din)
        op::conv2d_backward_input_relu_maxpool(c.ex, c.din, c.dout, c.relu_out, c.pool_mask, c.param, s, c.pool);
      return;
    }
    op::conv2d_backward_weight(c.ex, dw, db, c.dout, c.in, s, c.relu_out);
    if (c.din) op::conv2d_backward_input(c.ex, c.din, c.dout, c.param, s, c.relu_out);
  }
};

// ---- pooling ---------------------------------------------------------------------------------
class Pool2d final : public Layer {
 public:
  explicit Pool2d(int index, const ArchLayer& a) : Layer(index, a) {}
  size_t saved_ints(int N) const override {
    return kind() == LayerKind::MaxPool ? size_t(N) * size_t(dims_numel(out_)) : 0;
  }
  std::optional<Pool2dShape> max_pool_shape(int N) const override {
    if (kind() != LayerKind::MaxPool) return std::nullopt;
    return shape(N);
  }
  LayerCost cost(int N, bool need_din) const override {
    const double x = double(N) * double(dims_numel(in_)), y = double(N) * double(dims_numel(out_));
    LayerCost c;
    c.forward.flops = y;
    c.backward.flops = need_din ? x : 0;
    switch (kind()) {
      case LayerKind::MaxPool:
        // An int32 argmax mask of the output's size: forward reads x, writes y and the mask;
        // backward reads dy and the mask and writes dx (the mask names the winner; x is not needed).
        c.forward.bytes = kFloatBytes * (x + y + y);
        c.backward.bytes = kFloatBytes * (y + y + x);
        break;
      case LayerKind::AvgPool:
        // Forward reads x and writes y; backward reads dy and writes dx.
        c.forward.bytes = kFloatBytes * (x + y);
        c.backward.bytes = kFloatBytes * (y + x);
        break;
      default:
        // L2: as average pooling, but the backward also reads x and y (dx = dy * x / y).
        c.forward.bytes = kFloatBytes * (x + y);
        c.backward.bytes = kFloatBytes * (y + x + y + x);
        break;
    }
    if (!need_din) c.backward.bytes = 0;  // no parameters: dx is all a pool's backward makes
    return c;
  }
  BARECNN_LAYER_DISPATCH

 private:
  Pool2dShape shape(int N) const {
    return make_pool2d_shape(N, in_[0], in_[1], in_[2], desc_.kh, desc_.kw, desc_.stride, label());
  }
  template <typename T>
  void fwd(const LayerCall<T>& c) const {
    Pool2dShape s = shape(c.N);
    switch (kind()) {
      case LayerKind::MaxPool:
        // The argmax mask (N, C, OH, OW) is this layer's saved state for backward (NetState::saved).
        BARECNN_ASSERT(c.saved != nullptr, label(), ": forward without its argmax mask buffer");
        return op::maxpool2d_forward(c.ex, c.out, c.saved, c.in, s);
      case LayerKind::AvgPool:
        return op::avgpool2d_forward(c.ex, c.out, c.in, s);
      default:
        return op::l2pool2d_forward(c.ex, c.out, c.in, s);
    }
  }
  template <typename T>
  void bwd(const LayerCall<T>& c) const {
    if (!c.din) return;
    Pool2dShape s = shape(c.N);
    switch (kind()) {
      case LayerKind::MaxPool:
        BARECNN_ASSERT(c.saved != nullptr, label(), ": backward without its argmax mask buffer");
        return op::maxpool2d_backward(c.ex, c.din, c.dout, c.saved, s);
      case LayerKind::AvgPool:
        return op::avgpool2d_backward(c.ex, c.din, c.dout, s);
      default:
        return op::l2pool2d_backward(c.ex, c.din, c.dout, c.in, c.out, s);
    }
  }
};

// Elementwise activations and softmax over n elements: forward reads x and writes y; backward
// reads dy and one saved tensor (each activation's derivative follows from x alone or from y
// alone: ReLU's from x, sigmoid's and softmax's from y) and writes dx.
LayerCost elementwise_cost(double n, bool need_din) {
  LayerCost c;
  c.forward = {n, kFloatBytes * (n + n)};
  if (need_din) c.backward = {n, kFloatBytes * (n + n + n)};
  return c;
}

// ---- elementwise activations -------------------------------------------------------------------
class ActivationLayer final : public Layer {
 public:
  explicit ActivationLayer(int index, const ArchLayer& a) : Layer(index, a) {}
  bool is_activation() const override { return true; }
  bool is_relu_like() const override {
    const Act k = desc_.act.kind;
    return k == Act::Relu || k == Act::LeakyRelu || k == Act::Elu;
  }
  bool is_plain_relu() const override { return desc_.act.kind == Act::Relu; }
  LayerCost cost(int N, bool need_din) const override {
    return elementwise_cost(double(N) * double(dims_numel(in_)), need_din);
  }
  BARECNN_LAYER_DISPATCH

 private:
  template <typename T>
  void fwd(const LayerCall<T>& c) const {
    op::activation_forward(c.ex, c.out, c.in, 1LL * c.N * dims_numel(in_), desc_.act);
  }
  template <typename T>
  void bwd(const LayerCall<T>& c) const {
    if (c.din) op::activation_backward(c.ex, c.din, c.dout, c.in, c.out, 1LL * c.N * dims_numel(in_), desc_.act);
  }
};

// ---- softmax over the features of each sample ----------------------------------------------------
class SoftmaxLayer final : public Layer {
 public:
  explicit SoftmaxLayer(int index, const ArchLayer& a) : Layer(index, a) {}
  bool is_activation() const override { return true; }
  LayerCost cost(int N, bool need_din) const override {
    return elementwise_cost(double(N) * double(dims_numel(in_)), need_din);
  }
  BARECNN_LAYER_DISPATCH

 private:
  template <typename T>
  void fwd(const LayerCall<T>& c) const {
    op::softmax_forward(c.ex, c.out, c.in, c.N, in_[0]);
  }
  template <typename T>
  void bwd(const LayerCall<T>& c) const {
    if (c.din) op::softmax_backward(c.ex, c.din, c.dout, c.out, c.N, in_[0]);
  }
};

// ---- flatten: (C, H, W) -> (C*H*W), a view (a copy only as the last layer) -------------------------
class Flatten final : public Layer {
 public:
  explicit Flatten(int index, const ArchLayer& a) : Layer(index, a) {}
  // NCHW is already the flat (N, C*H*W) layout: the net passes the input on (Net::layer_call).
  bool is_view() const override { return true; }
  // When it runs, a copy: reads n and writes n each way; no arithmetic.
  LayerCost cost(int N, bool need_din) const override {
    const double n = double(N) * double(dims_numel(in_));
    LayerCost c;
    c.forward.bytes = kFloatBytes * (n + n);
    if (need_din) c.backward.bytes = kFloatBytes * (n + n);
    return c;
  }
  BARECNN_LAYER_DISPATCH

 private:
  template <typename T>
  void fwd(const LayerCall<T>& c) const {
    op::copy(c.ex, c.out, c.in, size_t(c.N) * dims_numel(in_));
  }
  template <typename T>
  void bwd(const LayerCall<T>& c) const {
    if (c.din) op::copy(c.ex, c.din, c.dout, size_t(c.N) * dims_numel(in_));
  }
};

// ---- dense (fully connected) -------------------------------------------------------------------
class Dense final : public Layer {
 public:
  explicit Dense(int index, const ArchLayer& a) : Layer(index, a) {}
  std::vector<ParamSpec> param_specs() const override {
    return {{"weight", {desc_.out, in_[0]}}, {"bias", {desc_.out}}};
  }
  void init_params(float* p, Rng& rng, bool relu_after) const override {
    const int units = desc_.out;
    size_t nw = size_t(units) * in_[0];
    init_weights(p, nw, in_[0], units, rng, relu_after);
    std::fill(p + nw, p + nw + units, 0.f);
  }
  LayerCost cost(int N, bool need_din) const override {
    const double IN = in_[0], OUT = desc_.out;
    LayerCost c;
    c.forward.flops = 2.0 * N * OUT * IN;  // one multiply-add per weight and sample
    c.backward.flops = need_din ? 2 * c.forward.flops : c.forward.flops;
    weighted_layer_bytes(&c, N * IN, N * OUT, OUT * IN, OUT, need_din);
    return c;
  }
  BARECNN_LAYER_DISPATCH

 private:
  template <typename T>
  void fwd(const LayerCall<T>& c) const {
    const int IN = in_[0], OUT = desc_.out;
    const T* w = c.param;                     // (OUT, IN)
    const T* b = c.param + size_t(OUT) * IN;  // (OUT)
    op::dense_forward(c.ex, c.out, c.in, w, b, c.N, IN, OUT);
  }
  template <typename T>
  void bwd(const LayerCall<T>& c) const {
    const int IN = in_[0], OUT = desc_.out;
    T* dw = c.dparam;
    T* db = c.dparam + size_t(OUT) * IN;
    op::dense_backward_weight(c.ex, dw, db, c.dout, c.in, c.N, IN, OUT);
    if (c.din) op::dense_backward_input(c.ex, c.din, c.dout, c.param, c.N, IN, OUT);
  }
};

// ---- batch normalization: per channel of an image (BatchNorm2d), per feature of a vector (1d) ----
class BatchNorm final : public Layer {
 public:
  explicit BatchNorm(int index, const ArchLayer& a) : Layer(index, a) {}
  std::vector<ParamSpec> param_specs() const override { return {{"weight", {C()}}, {"bias", {C()}}}; }
  void init_params(float* p, Rng&, bool) const override {
    std::fill(p, p + C(), 1.f);            // gamma
    std::fill(p + C(), p + 2 * C(), 0.f);  // beta
  }
  // The order of batchnorm_buffer_count (norm.h); num_batches_tracked is int64 in torch's files.
  std::vector<ParamSpec> buffer_specs() const override {
    return {{"running_mean", {C()}}, {"running_var", {C()}}, {"num_batches_tracked", {}, "I64"}};
  }
  void init_buffers(float* b) const override {
    std::fill(b, b + C(), 0.f);
    std::fill(b + C(), b + 2 * C(), 1.f);
    b[2 * C()] = 0.f;
  }
  size_t saved_values(int) const override { return 2 * size_t(C()); }  // mean, 1/std
  void check_train_batch(int N) const override {
    if (1LL * N * S() < 2)
      throw UsageError(fmt(label(), ": training normalizes each ", in_.size() == 1 ? "feature" : "channel",
                           " over the batch, which needs at least 2 values; --batch ", N, " gives ", 1LL * N * S(),
                           " (use --batch 2 or more)"));
  }
  // Forward: reads x, writes y (the statistics' passes re-read x from cache at best); per
  // element a sum, a centred square (2) and the affine map (3): 5 FLOPs. Backward: reads dy and
  // x for the sums (dgamma, dbeta: 3 FLOPs each element) and, with need_din, writes dx (5 more).
  LayerCost cost(int N, bool need_din) const override {
    const double n = double(N) * double(dims_numel(in_));
    LayerCost c;
    c.forward = {5 * n, kFloatBytes * (n + n)};
    c.backward = {need_din ? 8 * n : 3 * n, kFloatBytes * (need_din ? 3 * n : 2 * n)};
    return c;
  }
  BARECNN_LAYER_DISPATCH

 private:
  int C() const { return in_[0]; }
  int S() const { return in_.size() == 3 ? in_[1] * in_[2] : 1; }
  template <typename T>
  void fwd(const LayerCall<T>& c) const {
    const T* gamma = c.param;
    const T* beta = c.param + C();
    if (c.training) {
      BARECNN_ASSERT(c.saved_values != nullptr, label(), ": a training forward without its saved-statistics buffer");
      check_train_batch(c.N);
      return op::batchnorm_forward_train(c.ex, c.out, c.saved_values, c.saved_values + C(), c.update_buffers, c.in,
                                         gamma, beta, c.N, C(), S());
    }
    BARECNN_ASSERT(c.buffers != nullptr, label(), ": an evaluation forward without the running statistics");
    op::batchnorm_forward_eval(c.ex, c.out, c.in, gamma, beta, c.buffers, c.N, C(), S());
  }
  template <typename T>
  void bwd(const LayerCall<T>& c) const {
    BARECNN_ASSERT(c.training && c.saved_values != nullptr, label(), ": backward needs a training forward before it");
    op::batchnorm_backward(c.ex, c.din, c.dparam, c.dparam + C(), c.dout, c.in, c.param, c.saved_values,
                           c.saved_values + C(), c.N, C(), S());
  }
};

// ---- dropout: inverted dropout in training, the identity in evaluation ---------------------------
class Dropout final : public Layer {
 public:
  explicit Dropout(int index, const ArchLayer& a) : Layer(index, a) {}
  // Each way: read one tensor, write one (the mask is drawn again, not stored).
  LayerCost cost(int N, bool need_din) const override {
    return elementwise_cost(double(N) * double(dims_numel(in_)), need_din);
  }
  BARECNN_LAYER_DISPATCH

 private:
  template <typename T>
  void fwd(const LayerCall<T>& c) const {
    const long long n = 1LL * c.N * dims_numel(in_);
    if (!c.training) return op::copy(c.ex, c.out, c.in, size_t(n));
    op::dropout_forward(c.ex, c.out, c.in, n, desc_.p, c.counters, index_);
  }
  template <typename T>
  void bwd(const LayerCall<T>& c) const {
    if (!c.din) return;
    BARECNN_ASSERT(c.training, label(), ": backward needs a training forward before it");
    op::dropout_backward(c.ex, c.din, c.dout, 1LL * c.N * dims_numel(in_), desc_.p, c.counters, index_);
  }
};

}  // namespace

std::unique_ptr<Layer> make_layer(int index, const ArchLayer& a) {
  switch (a.desc.kind) {
    case LayerKind::Conv:
      return std::make_unique<Conv2d>(index, a);
    case LayerKind::MaxPool:
    case LayerKind::AvgPool:
    case LayerKind::L2Pool:
      return std::make_unique<Pool2d>(index, a);
    case LayerKind::Activation:
      return std::make_unique<ActivationLayer>(index, a);
    case LayerKind::Softmax:
      return std::make_unique<SoftmaxLayer>(index, a);
    case LayerKind::Flatten:
      return std::make_unique<Flatten>(index, a);
    case LayerKind::Dense:
      return std::make_unique<Dense>(index, a);
    case LayerKind::BatchNorm:
      return std::make_unique<BatchNorm>(index, a);
    case LayerKind::Dropout:
      return std::make_unique<Dropout>(index, a);
  }
  throw Error(fmt("internal: layer ", index, " of an unknown kind"));
}

}  // namespace barecnn
