// The sequential net: built from an arch spec, shapes inferred and checked at build time
// (resolve_arch), with one flat parameter buffer laid out layer by layer in torch.nn.Sequential
// order.
#include "barecnn/net.h"

#include <cmath>
#include <cstdint>
#include <optional>
#include <sstream>
#include <type_traits>

#include "barecnn/arch.h"
#include "barecnn/error.h"
#include "barecnn/nvtx.h"

namespace barecnn {

Net::Net(const std::string& spec, const Dims& input) : input_(input) {
  const std::vector<ArchLayer> arch = resolve_arch(spec, input);
  for (const ArchLayer& a : arch) layers_.push_back(make_layer(int(layers_.size()), a));
  spec_ = arch_spec(arch);

  size_t off = 0;
  for (auto& l : layers_) {
    layer_offset_.push_back(off);
    for (auto& p : l->param_specs()) {
      params_.push_back({fmt(l->index(), ".", p.name), l->index(), off, p.dims});
      off += dims_numel(p.dims);
    }
  }
  num_params_ = off;
  for (auto& l : layers_) {
    buffer_offset_.push_back(off);
    for (auto& b : l->buffer_specs()) {
      buffers_.push_back({fmt(l->index(), ".", b.name), l->index(), off, b.dims, b.file_dtype});
      off += dims_numel(b.dims);
    }
  }
  num_buffers_ = off - num_params_;
}

void Net::check_train_batch(int N) const {
  for (auto& l : layers_) l->check_train_batch(N);
}

int Net::num_outputs() const { return layers_.back()->out_dims()[0]; }

void Net::check_classes(int classes, const std::string& data_desc) const {
  if (num_outputs() != classes)
    throw UsageError(fmt("--arch: the last layer (", layers_.back()->label(), ") has ", num_outputs(), " outputs but ",
                         data_desc, " has ", classes, " classes; end the net with dense(", classes, ")"));
}

std::vector<float> Net::init_params(uint64_t seed) const {
  std::vector<float> p(state_size());
  for (size_t i = 0; i < layers_.size(); ++i) layers_[i]->init_buffers(p.data() + buffer_offset_[i]);
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (layers_[i]->num_params() == 0) continue;
    // The first nonlinearity after this layer decides the init rule.
    bool relu_after = false;
    for (size_t j = i + 1; j < layers_.size(); ++j)
      if (layers_[j]->is_activation()) {
        relu_after = layers_[j]->is_relu_like();
        break;
      }
    Rng rng(mix64(seed) ^ mix64(i + 1));  // per-layer streams: adding a layer keeps the others' init
    layers_[i]->init_params(p.data() + layer_offset_[i], rng, relu_after);
  }
  return p;
}

template <typename T>
void Net::prepare(NetState<T>& st, int N, Device device, bool for_backward) const {
  const int L = int(layers_.size());
  // Which convs apply their ReLU themselves (decided anew on every call: the flag may change).
  std::vector<bool> fused(L, false);
  if (std::is_same_v<T, float> && fusion_)  // (the fused kernels are float)
    for (int i = 0; i + 1 < L; ++i) fused[i] = layers_[i]->can_fuse_relu(device) && layers_[i + 1]->is_plain_relu();
  // Which of them pool as well (the CPU's fused ops, where the shapes allow).
  std::vector<bool> fused_pool(L, false);
  for (int i = 0; i + 2 < L; ++i)
    if (fused[i])
      if (std::optional<Pool2dShape> ps = layers_[i + 2]->max_pool_shape(N))
        fused_pool[i] = layers_[i]->can_fuse_relu_maxpool(device, *ps);
  if (st.N == N && st.device == device && int(st.act.size()) == L + 1 && st.fused == fused &&
      st.fused_pool == fused_pool && st.grads == for_backward)
    return;

  // The plan. A view (flatten) that is not the last layer does not run: the layer after it reads
  // its input. A ReLU (and a max pooling) that the conv before it applies does not run either.
  auto skipped_view = [&](int i) { return i + 1 < L && layers_[i]->is_view(); };
  std::vector<PlannedLayer> plan;
  for (int i = 0; i < L; ++i) {
    if ((i > 0 && fused[i - 1]) || (i > 1 && fused_pool[i - 2]) || skipped_view(i)) continue;
    int in = i;
    while (in > 0 && skipped_view(in - 1)) --in;
    plan.push_back({i, in, fused_pool[i] ? i + 3 : fused[i] ? i + 2 : i + 1, fused[i], fused_pool[i]});
  }

  st.plan = plan;
  st.fused = fused;
  st.fused_pool = fused_pool;
  st.N = N;
  st.device = device;
  st.grads = for_backward;
  st.act.resize(L + 1);
  st.dact.resize(L + 1);
  st.saved.resize(L);
  st.saved_values.resize(L);
  auto batch_dims = [N](const Dims& d) {
    Dims b{N};
    b.insert(b.end(), d.begin(), d.end());
    return b;
  };
  // Only the slots the plan writes get buffers (the input's always).
  std::vector<bool> used(L + 1, false);
  used[0] = true;
  for (const PlannedLayer& p : plan) used[p.out] = true;
  for (int i = 0; i <= L; ++i) {
    const Dims d = !used[i] ? Dims{0} : i == 0 ? batch_dims(input_) : batch_dims(layers_[i - 1]->out_dims());
    st.act[i].reset(d, device);
    st.dact[i].reset(for_backward ? d : Dims{0}, device);
  }
  size_t ws = 0;
  for (int i = 0; i < L; ++i) {
    ws = std::max(ws, layers_[i]->workspace_floats(N, device));
    const size_t saved = layers_[i]->saved_ints(N);
    BARECNN_ASSERT(saved <= size_t(INT32_MAX), layers_[i]->label(), ": ", saved, " saved values exceed int32");
    st.saved[i].reset({int(saved)}, device);
    st.saved_values[i].reset({int(layers_[i]->saved_values(N))}, device);
  }
  BARECNN_ASSERT(ws <= size_t(INT32_MAX), "a workspace of ", ws, " floats");
  st.workspace.reset({int(ws)}, device);
}

template <typename T>
LayerCall<T> Net::layer_call(NetState<T>& st, const PlannedLayer& p, const T* params, T* grads, const Exec& ex,
                             bool need_input_grad) const {
  BARECNN_ASSERT(ex.device == st.device, "a ", device_name(st.device), " NetState run on ", device_name(ex.device));
  LayerCall<T> c;
  c.ex = ex.with_workspace(st.workspace.numel() ? st.workspace.data() : nullptr);
  c.N = st.N;
  c.in = st.act[p.in].data();
  c.out = st.act[p.out].data();
  c.dout = st.dact[p.out].data();
  // Nothing needs the gradient w.r.t. the input images: the first layer skips it.
  c.din = (p.in > 0 || need_input_grad) ? st.dact[p.in].data() : nullptr;
  c.param = params + layer_offset_[p.layer];
  c.dparam = grads ? grads + layer_offset_[p.layer] : nullptr;
  c.saved = st.saved[p.layer].numel() ? st.saved[p.layer].data() : nullptr;
  c.fuse_relu = p.fused_relu;  // this conv does the ReLU of the next layer too
  c.relu_out = p.fused_relu ? st.act[p.out].data() : nullptr;
  if (p.fused_pool) {  // the pool's output is act[p.out]; its mask is the pool layer's saved state
    c.fuse_maxpool = true;
    c.pool = *layers_[p.layer + 2]->max_pool_shape(st.N);
    c.pool_mask = st.saved[p.layer + 2].data();
  }
  c.training = st.mode.training;
  c.buffers = params + buffer_offset_[p.layer];
  c.update_buffers = st.mode.buffers ? st.mode.buffers + (buffer_offset_[p.layer] - num_params_) : nullptr;
  c.saved_values = st.saved_values[p.layer].numel() ? st.saved_values[p.layer].data() : nullptr;
  c.counters = st.mode.counters;
  return c;
}

// " + relu", " + relu + maxpool" or nothing: what a planned layer applies besides its own.
static const char* fused_suffix(const PlannedLayer& p) {
  return p.fused_pool ? " + relu + maxpool" : p.fused_relu ? " + relu" : "";
}

template <typename T>
void Net::forward(NetState<T>& st, const T* params, const Exec& ex, const RunMode<T>& mode) const {
  st.mode = mode;
  for (const PlannedLayer& p : st.plan) {
    NvtxScope range(layers_[p.layer]->label() + fused_suffix(p) + " forward");
    layers_[p.layer]->forward(layer_call<T>(st, p, params, nullptr, ex, false));
  }
}

template <typename T>
void Net::backward(NetState<T>& st, const T* params, T* grads, const Exec& ex, bool need_input_grad) const {
  BARECNN_ASSERT(st.grads, "backward on a NetState prepared for forward only");
  for (auto p = st.plan.rbegin(); p != st.plan.rend(); ++p) {
    NvtxScope range(layers_[p->layer]->label() + fused_suffix(*p) + " backward");
    layers_[p->layer]->backward(layer_call<T>(st, *p, params, grads, ex, need_input_grad));
  }
}

static size_t count_nonfinite(const std::vector<float>& v) {
  size_t n = 0;
  for (float x : v) n += !std::isfinite(x);
  return n;
}

std::string Net::first_nonfinite(const NetState<float>& st) const {
  if (st.act.empty()) return "";
  if (size_t n = count_nonfinite(st.act[0].to_host())) return fmt("the input batch has ", n, " non-finite values");
  for (const PlannedLayer& p : st.plan)
    if (size_t n = count_nonfinite(st.act[p.out].to_host()))
      return fmt(layers_[p.layer]->label(), ": its output (forward) has ", n, " non-finite values of ",
                 st.act[p.out].numel());
  for (auto p = st.plan.rbegin(); p != st.plan.rend(); ++p)
    if (p->in == 0)
      continue;
    else if (size_t n = count_nonfinite(st.dact[p->in].to_host()))
      return fmt(layers_[p->layer]->label(), ": its input gradient (backward) has ", n, " non-finite values of ",
                 st.dact[p->in].numel());
  // A fused conv's pre-activation is not kept: an infinity the ReLU zeroed (or the pool dropped)
  // is not seen.
  for (const PlannedLayer& p : st.plan)
    if (p.fused_relu) return "none outside the fused conv+ReLU layers (rerun with --fuse off to see inside them)";
  return "";
}

std::string Net::summary() const {
  std::ostringstream os;
  char line[256];
  std::snprintf(line, sizeof line, "  %-5s %-24s %-14s %10s\n", "layer", "spec", "output", "params");
  os << line;
  std::snprintf(line, sizeof line, "  %-5s %-24s %-14s %10s\n", "", "input", dims_str(input_).c_str(), "");
  os << line;
  for (auto& l : layers_) {
    std::snprintf(line, sizeof line, "  %-5d %-24s %-14s %10zu\n", l->index(), l->spec().c_str(),
                  dims_str(l->out_dims()).c_str(), l->num_params());
    os << line;
  }
  std::snprintf(line, sizeof line, "  total parameters: %zu\n", num_params_);
  os << line;
  if (num_buffers_) {
    std::snprintf(line, sizeof line, "  buffers (batchnorm's running statistics, not trained): %zu\n", num_buffers_);
    os << line;
  }
  return os.str();
}

template void Net::prepare<float>(NetState<float>&, int, Device, bool) const;
template void Net::prepare<double>(NetState<double>&, int, Device, bool) const;
template void Net::forward<float>(NetState<float>&, const float*, const Exec&, const RunMode<float>&) const;
template void Net::forward<double>(NetState<double>&, const double*, const Exec&, const RunMode<double>&) const;
template void Net::backward<float>(NetState<float>&, const float*, float*, const Exec&, bool) const;
template void Net::backward<double>(NetState<double>&, const double*, double*, const Exec&, bool) const;
template LayerCall<float> Net::layer_call<float>(NetState<float>&, const PlannedLayer&, const float*, float*,
                                                 const Exec&, bool) const;
template LayerCall<double> Net::layer_call<double>(NetState<double>&, const PlannedLayer&, const double*, double*,
                                                   const Exec&, bool) const;

}  // namespace barecnn
