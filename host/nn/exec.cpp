// Which implementation runs each op (include/barecnn/exec.h): the whole table, in one file.
//
//   op                        float, CUDA    float, CPU        double (CPU only)
//   conv2d (3 directions)     gpu::          cpu::             ref::
//   dense (3 directions)      gpu:: (cuBLAS) cpu::             ref::
//   activation                gpu::          cpu::             ref::
//   maxpool2d, avgpool2d      gpu::          cpu::             ref::
//   l2pool2d                  gpu::          ref:: (float)     ref::
//   softmax                   gpu::          ref:: (float)     ref::
//   copy                      cudaMemcpyAsync  std::copy       std::copy
//   optimizer                 gpu::          cpu::             -
//   loss                      gpu::          cpu:: (softmax    -
//                                            cross-entropy;
//                                            the others ref::)
//   metrics, gather,          gpu::          ref:: (float)     -
//   permutation
//   batchnorm, dropout        gpu::          cpu::             ref::
// cpu:: has fast versions of the ops that dominate a CPU step (host/cpu/); the others are cheap
// and run the reference in float. The GPU conv runs the kernels ex.conv_impl names (Simple,
// Tiled or Fast: gpu_ops.h); its workspace is GPU-only (the CPU ops need none).
#include "barecnn/exec.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "barecnn/cpu_ops.h"
#include "barecnn/cuda_check.h"
#include "barecnn/error.h"
#include "barecnn/names.h"
#include "barecnn/rng.h"

namespace barecnn {

Exec Exec::on(Device d, const GpuContext* gpu) {
  if (d == Device::CPU) return cpu();
  BARECNN_ASSERT(gpu != nullptr, "a CUDA Exec needs a GpuContext");
  return cuda(*gpu);
}

void Exec::sync() const {
  if (device == Device::CUDA) gpu->sync();
}

namespace op {
namespace {

bool on_gpu(const Exec& ex) {
  if (ex.device != Device::CUDA) return false;
  BARECNN_ASSERT(ex.gpu != nullptr, "a CUDA call needs a GpuContext");
  return true;
}

// The double overloads are the gradient checks' reference: CPU only, by construction.
void cpu_only(const Exec& ex) {
  if (ex.device != Device::CPU) throw Error("internal: double-precision tensors are CPU-only (gradient checks)");
}

}  // namespace

// ---- convolution ----

void conv2d_forward(const Exec& ex, float* out, const float* inp, const float* w, const float* b, const Conv2dShape& s,
                    bool fuse_relu) {
  if (on_gpu(ex)) return gpu::conv2d_forward(out, inp, w, b, s, ex.conv_impl, ex.gpu->stream(), fuse_relu);
  cpu::conv2d_forward(out, inp, w, b, s, fuse_relu);
}
void conv2d_forward(const Exec& ex, double* out, const double* inp, const double* w, const double* b,
                    const Conv2dShape& s, bool fuse_relu) {
  cpu_only(ex);
  BARECNN_ASSERT(!fuse_relu, "the fused conv + ReLU is float-only");
  ref::conv2d_forward(out, inp, w, b, s);
}
void conv2d_backward_input(const Exec& ex, float* dinp, const float* dout, const float* w, const Conv2dShape& s,
                           const float* relu_out) {
  if (on_gpu(ex)) return gpu::conv2d_backward_input(dinp, dout, w, s, ex.conv_impl, ex.gpu->stream(), relu_out);
  cpu::conv2d_backward_input(dinp, dout, w, s, relu_out);
}
void conv2d_backward_input(const Exec& ex, double* dinp, const double* dout, const double* w, const Conv2dShape& s,
                           const double* relu_out) {
  cpu_only(ex);
  BARECNN_ASSERT(!relu_out, "the fused conv + ReLU is float-only");
  ref::conv2d_backward_input(dinp, dout, w, s);
}
size_t conv2d_backward_weight_workspace(Device device, const Conv2dShape& s) {
  return device == Device::CUDA ? gpu::conv2d_backward_weight_workspace(s) : 0;  // the CPU ops need none
}
void conv2d_backward_weight(const Exec& ex, float* dw, float* db, const float* dout, const float* inp,
                            const Conv2dShape& s, const float* relu_out) {
  if (on_gpu(ex))
    return gpu::conv2d_backward_weight(dw, db, dout, inp, s, ex.workspace, ex.conv_impl, ex.gpu->stream(), relu_out);
  cpu::conv2d_backward_weight(dw, db, dout, inp, s, relu_out);
}
void conv2d_backward_weight(const Exec& ex, double* dw, double* db, const double* dout, const double* inp,
                            const Conv2dShape& s, const double* relu_out) {
  cpu_only(ex);
  BARECNN_ASSERT(!relu_out, "the fused conv + ReLU is float-only");
  ref::conv2d_backward_weight(dw, db, dout, inp, s);
}

// conv + ReLU + max pooling: the CPU's float ops only.
static void fused_pool_cpu_only(const Exec& ex, bool is_float) {
  if (ex.device != Device::CPU || !is_float)
    throw Error("internal: the fused conv + ReLU + max-pool runs on the CPU in float only");
}
bool conv2d_fuses_relu_maxpool(Device device, const Conv2dShape& s, const Pool2dShape& ps) {
  return device == Device::CPU && cpu::conv2d_fuses_maxpool(s, ps);
}
void conv2d_forward_relu_maxpool(const Exec& ex, float* pooled, int32_t* mask, const float* inp, const float* w,
                                 const float* b, const Conv2dShape& s, const Pool2dShape& ps) {
  fused_pool_cpu_only(ex, true);
  cpu::conv2d_forward_relu_maxpool(pooled, mask, inp, w, b, s, ps);
}
void conv2d_forward_relu_maxpool(const Exec& ex, double*, int32_t*, const double*, const double*, const double*,
                                 const Conv2dShape&, const Pool2dShape&) {
  fused_pool_cpu_only(ex, false);
}
void conv2d_backward_input_relu_maxpool(const Exec& ex, float* dinp, const float* dpooled, const float* pooled,
                                        const int32_t* mask, const float* w, const Conv2dShape& s,
                                        const Pool2dShape& ps) {
  fused_pool_cpu_only(ex, true);
  cpu::conv2d_backward_input_relu_maxpool(dinp, dpooled, pooled, mask, w, s, ps);
}
void conv2d_backward_input_relu_maxpool(const Exec& ex, double*, const double*, const double*, const int32_t*,
                                        const double*, const Conv2dShape&, const Pool2dShape&) {
  fused_pool_cpu_only(ex, false);
}
void conv2d_backward_weight_relu_maxpool(const Exec& ex, float* dw, float* db, const float* dpooled,
                                         const float* pooled, const int32_t* mask, const float* inp,
                                         const Conv2dShape& s, const Pool2dShape& ps) {
  fused_pool_cpu_only(ex, true);
  cpu::conv2d_backward_weight_relu_maxpool(dw, db, dpooled, pooled, mask, inp, s, ps);
}
void conv2d_backward_weight_relu_maxpool(const Exec& ex, double*, double*, const double*, const double*, const int32_t*,
                                         const double*, const Conv2dShape&, const Pool2dShape&) {
  fused_pool_cpu_only(ex, false);
}

// ---- pooling ----

void maxpool2d_forward(const Exec& ex, float* out, int32_t* mask, const float* inp, const Pool2dShape& s) {
  if (on_gpu(ex)) return gpu::maxpool2d_forward(out, mask, inp, s, ex.gpu->stream());
  cpu::maxpool2d_forward(out, mask, inp, s);
}
void maxpool2d_forward(const Exec& ex, double* out, int32_t* mask, const double* inp, const Pool2dShape& s) {
  cpu_only(ex);
  ref::maxpool2d_forward(out, mask, inp, s);
}
void maxpool2d_backward(const Exec& ex, float* dinp, const float* dout, const int32_t* mask, const Pool2dShape& s) {
  if (on_gpu(ex)) return gpu::maxpool2d_backward(dinp, dout, mask, s, ex.gpu->stream());
  cpu::maxpool2d_backward(dinp, dout, mask, s);
}
void maxpool2d_backward(const Exec& ex, double* dinp, const double* dout, const int32_t* mask, const Pool2dShape& s) {
  cpu_only(ex);
  ref::maxpool2d_backward(dinp, dout, mask, s);
}
void avgpool2d_forward(const Exec& ex, float* out, const float* inp, const Pool2dShape& s) {
  if (on_gpu(ex)) return gpu::avgpool2d_forward(out, inp, s, ex.gpu->stream());
  cpu::avgpool2d_forward(out, inp, s);
}
void avgpool2d_forward(const Exec& ex, double* out, const double* inp, const Pool2dShape& s) {
  cpu_only(ex);
  ref::avgpool2d_forward(out, inp, s);
}
void avgpool2d_backward(const Exec& ex, float* dinp, const float* dout, const Pool2dShape& s) {
  if (on_gpu(ex)) return gpu::avgpool2d_backward(dinp, dout, s, ex.gpu->stream());
  cpu::avgpool2d_backward(dinp, dout, s);
}
void avgpool2d_backward(const Exec& ex, double* dinp, const double* dout, const Pool2dShape& s) {
  cpu_only(ex);
  ref::avgpool2d_backward(dinp, dout, s);
}
void l2pool2d_forward(const Exec& ex, float* out, const float* inp, const Pool2dShape& s) {
  if (on_gpu(ex)) return gpu::l2pool2d_forward(out, inp, s, ex.gpu->stream());
  ref::l2pool2d_forward(out, inp, s);
}
void l2pool2d_forward(const Exec& ex, double* out, const double* inp, const Pool2dShape& s) {
  cpu_only(ex);
  ref::l2pool2d_forward(out, inp, s);
}
void l2pool2d_backward(const Exec& ex, float* dinp, const float* dout, const float* inp, const float* out,
                       const Pool2dShape& s) {
  if (on_gpu(ex)) return gpu::l2pool2d_backward(dinp, dout, inp, out, s, ex.gpu->stream());
  ref::l2pool2d_backward(dinp, dout, inp, out, s);
}
void l2pool2d_backward(const Exec& ex, double* dinp, const double* dout, const double* inp, const double* out,
                       const Pool2dShape& s) {
  cpu_only(ex);
  ref::l2pool2d_backward(dinp, dout, inp, out, s);
}

// ---- activations and softmax ----

void activation_forward(const Exec& ex, float* out, const float* inp, long long n, Activation a) {
  if (on_gpu(ex)) return gpu::activation_forward(out, inp, n, a, ex.gpu->stream());
  cpu::activation_forward(out, inp, n, a);
}
void activation_forward(const Exec& ex, double* out, const double* inp, long long n, Activation a) {
  cpu_only(ex);
  ref::activation_forward(out, inp, n, a);
}
void activation_backward(const Exec& ex, float* dinp, const float* dout, const float* inp, const float* out,
                         long long n, Activation a) {
  if (on_gpu(ex)) return gpu::activation_backward(dinp, dout, inp, out, n, a, ex.gpu->stream());
  cpu::activation_backward(dinp, dout, inp, out, n, a);
}
void activation_backward(const Exec& ex, double* dinp, const double* dout, const double* inp, const double* out,
                         long long n, Activation a) {
  cpu_only(ex);
  ref::activation_backward(dinp, dout, inp, out, n, a);
}
void softmax_forward(const Exec& ex, float* out, const float* inp, int N, int K) {
  if (on_gpu(ex)) return gpu::softmax_forward(out, inp, N, K, ex.gpu->stream());
  ref::softmax_forward(out, inp, N, K);
}
void softmax_forward(const Exec& ex, double* out, const double* inp, int N, int K) {
  cpu_only(ex);
  ref::softmax_forward(out, inp, N, K);
}
void softmax_backward(const Exec& ex, float* dinp, const float* dout, const float* out, int N, int K) {
  if (on_gpu(ex)) return gpu::softmax_backward(dinp, dout, out, N, K, ex.gpu->stream());
  ref::softmax_backward(dinp, dout, out, N, K);
}
void softmax_backward(const Exec& ex, double* dinp, const double* dout, const double* out, int N, int K) {
  cpu_only(ex);
  ref::softmax_backward(dinp, dout, out, N, K);
}

// ---- batch normalization and dropout: float on the GPU runs the kernels, float on the CPU the
// fast versions of host/cpu (the evaluation's batch norm: the reference, a plain map), double the
// reference ----

namespace {
template <typename T>
void bn_train(const Exec& ex, T* y, T* mean, T* invstd, T* running, const T* x, const T* gamma, const T* beta, int N,
              int C, int S) {
  if constexpr (std::is_same_v<T, float>)
    if (on_gpu(ex))
      return gpu::batchnorm_forward_train(y, mean, invstd, running, x, gamma, beta, N, C, S, ex.gpu->stream());
  cpu_only(ex);
  if constexpr (std::is_same_v<T, float>)
    return cpu::batchnorm_forward_train(y, mean, invstd, running, x, gamma, beta, N, C, S);
  ref::batchnorm_forward_train(y, mean, invstd, running, x, gamma, beta, N, C, S);
}
template <typename T>
void bn_eval(const Exec& ex, T* y, const T* x, const T* gamma, const T* beta, const T* running, int N, int C, int S) {
  if constexpr (std::is_same_v<T, float>)
    if (on_gpu(ex)) return gpu::batchnorm_forward_eval(y, x, gamma, beta, running, N, C, S, ex.gpu->stream());
  cpu_only(ex);
  ref::batchnorm_forward_eval(y, x, gamma, beta, running, N, C, S);
}
template <typename T>
void bn_backward(const Exec& ex, T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* gamma, const T* mean,
                 const T* invstd, int N, int C, int S) {
  if constexpr (std::is_same_v<T, float>)
    if (on_gpu(ex))
      return gpu::batchnorm_backward(dx, dgamma, dbeta, dy, x, gamma, mean, invstd, N, C, S, ex.gpu->stream());
  cpu_only(ex);
  if constexpr (std::is_same_v<T, float>)
    return cpu::batchnorm_backward(dx, dgamma, dbeta, dy, x, gamma, mean, invstd, N, C, S);
  ref::batchnorm_backward(dx, dgamma, dbeta, dy, x, gamma, mean, invstd, N, C, S);
}
template <typename T>
void dropout(const Exec& ex, bool forward, T* out, const T* in, long long n, float p, const gpu::StepCounters* c,
             int layer) {
  BARECNN_ASSERT(c != nullptr, "dropout: no step counters (the mask's seed and step)");
  if constexpr (std::is_same_v<T, float>)
    if (on_gpu(ex))
      return forward ? gpu::dropout_forward(out, in, n, p, c, layer, ex.gpu->stream())
                     : gpu::dropout_backward(out, in, n, p, c, layer, ex.gpu->stream());
  cpu_only(ex);
  // (the counters are in host memory here)
  if constexpr (std::is_same_v<T, float>) return cpu::dropout_map(out, in, n, p, c->seed, c->global_step, layer);
  if (forward)
    ref::dropout_forward(out, in, n, p, c->seed, c->global_step, layer);
  else
    ref::dropout_backward(out, in, n, p, c->seed, c->global_step, layer);
}
}  // namespace

void batchnorm_forward_train(const Exec& ex, float* y, float* mean, float* invstd, float* running, const float* x,
                             const float* gamma, const float* beta, int N, int C, int S) {
  bn_train(ex, y, mean, invstd, running, x, gamma, beta, N, C, S);
}
void batchnorm_forward_train(const Exec& ex, double* y, double* mean, double* invstd, double* running, const double* x,
                             const double* gamma, const double* beta, int N, int C, int S) {
  bn_train(ex, y, mean, invstd, running, x, gamma, beta, N, C, S);
}
void batchnorm_forward_eval(const Exec& ex, float* y, const float* x, const float* gamma, const float* beta,
                            const float* running, int N, int C, int S) {
  bn_eval(ex, y, x, gamma, beta, running, N, C, S);
}
void batchnorm_forward_eval(const Exec& ex, double* y, const double* x, const double* gamma, const double* beta,
                            const double* running, int N, int C, int S) {
  bn_eval(ex, y, x, gamma, beta, running, N, C, S);
}
void batchnorm_backward(const Exec& ex, float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                        const float* gamma, const float* mean, const float* invstd, int N, int C, int S) {
  bn_backward(ex, dx, dgamma, dbeta, dy, x, gamma, mean, invstd, N, C, S);
}
void batchnorm_backward(const Exec& ex, double* dx, double* dgamma, double* dbeta, const double* dy, const double* x,
                        const double* gamma, const double* mean, const double* invstd, int N, int C, int S) {
  bn_backward(ex, dx, dgamma, dbeta, dy, x, gamma, mean, invstd, N, C, S);
}
void dropout_forward(const Exec& ex, float* y, const float* x, long long n, float p, const gpu::StepCounters* c,
                     int layer) {
  dropout(ex, true, y, x, n, p, c, layer);
}
void dropout_forward(const Exec& ex, double* y, const double* x, long long n, float p, const gpu::StepCounters* c,
                     int layer) {
  dropout(ex, true, y, x, n, p, c, layer);
}
void dropout_backward(const Exec& ex, float* dx, const float* dy, long long n, float p, const gpu::StepCounters* c,
                      int layer) {
  dropout(ex, false, dx, dy, n, p, c, layer);
}
void dropout_backward(const Exec& ex, double* dx, const double* dy, long long n, float p, const gpu::StepCounters* c,
                      int layer) {
  dropout(ex, false, dx, dy, n, p, c, layer);
}

// ---- dense ----

void dense_forward(const Exec& ex, float* out, const float* inp, const float* w, const float* b, int N, int IN,
                   int OUT) {
  if (on_gpu(ex)) return gpu::dense_forward(out, inp, w, b, N, IN, OUT, ex.gpu->cublas(), ex.gpu->stream());
  cpu::dense_forward(out, inp, w, b, N, IN, OUT);
}
void dense_forward(const Exec& ex, double* out, const double* inp, const double* w, const double* b, int N, int IN,
                   int OUT) {
  cpu_only(ex);
  ref::dense_forward(out, inp, w, b, N, IN, OUT);
}
void dense_backward_input(const Exec& ex, float* dinp, const float* dout, const float* w, int N, int IN, int OUT) {
  if (on_gpu(ex)) return gpu::dense_backward_input(dinp, dout, w, N, IN, OUT, ex.gpu->cublas(), ex.gpu->stream());
  cpu::dense_backward_input(dinp, dout, w, N, IN, OUT);
}
void dense_backward_input(const Exec& ex, double* dinp, const double* dout, const double* w, int N, int IN, int OUT) {
  cpu_only(ex);
  ref::dense_backward_input(dinp, dout, w, N, IN, OUT);
}
void dense_backward_weight(const Exec& ex, float* dw, float* db, const float* dout, const float* inp, int N, int IN,
                           int OUT) {
  if (on_gpu(ex)) return gpu::dense_backward_weight(dw, db, dout, inp, N, IN, OUT, ex.gpu->cublas(), ex.gpu->stream());
  cpu::dense_backward_weight(dw, db, dout, inp, N, IN, OUT);
}
void dense_backward_weight(const Exec& ex, double* dw, double* db, const double* dout, const double* inp, int N, int IN,
                           int OUT) {
  cpu_only(ex);
  ref::dense_backward_weight(dw, db, dout, inp, N, IN, OUT);
}

// ---- copies ----

void copy(const Exec& ex, float* dst, const float* src, size_t n) {
  if (on_gpu(ex))
    CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, ex.gpu->stream()));
  else
    std::copy(src, src + n, dst);
}
void copy(const Exec& ex, double* dst, const double* src, size_t n) {
  cpu_only(ex);
  std::copy(src, src + n, dst);
}

// ---- the training step ----

void loss_forward_backward(const Exec& ex, float* loss, float* dlogits, int32_t* correct, const float* logits,
                           const int32_t* labels, int N, int K, Loss kind, float grad_scale) {
  if (on_gpu(ex))
    return gpu::loss_forward_backward(loss, dlogits, correct, logits, labels, N, K, kind, grad_scale, ex.gpu->stream());
  cpu::loss_forward_backward(loss, dlogits, correct, logits, labels, N, K, kind, grad_scale);
}

void accumulate_metrics(const Exec& ex, double* acc, const float* loss, const int32_t* correct, int N) {
  if (on_gpu(ex)) return gpu::accumulate_metrics(acc, loss, correct, N, ex.gpu->stream());
  double l = 0, c = 0;  // the batch's sums first, then into the running ones
  for (int b = 0; b < N; ++b) l += loss[b], c += correct[b];
  acc[0] += l;
  acc[1] += c;
}

void epoch_permutation(const Exec& ex, int32_t* idx, int n, uint64_t seed, long long epoch) {
  if (on_gpu(ex)) return gpu::epoch_permutation(idx, n, seed, epoch, ex.gpu->stream());
  std::vector<int32_t> p = ref::epoch_permutation(n, seed, epoch);
  std::copy(p.begin(), p.end(), idx);
}

void gather_normalize(const Exec& ex, float* out, int32_t* out_labels, const uint8_t* images, const uint8_t* labels,
                      const int32_t* idx, int B, int P, float mean, float std) {
  if (on_gpu(ex)) return gpu::gather_normalize(out, out_labels, images, labels, idx, B, P, mean, std, ex.gpu->stream());
  ref::gather_normalize(out, out_labels, images, labels, idx, B, P, mean, std);
}

void begin_step(const Exec& ex, gpu::StepCounters* c, const OptimConfig& cfg, long long steps_per_epoch) {
  if (on_gpu(ex)) return gpu::begin_step(c, cfg, steps_per_epoch, ex.gpu->stream());
  // What the one-thread kernel does (the CPU optimizer computes Adam's corrections itself).
  c->batch = c->next_batch++;
  const long long t = ++c->global_step;
  c->bc1 = float(1.0 - std::pow(double(cfg.beta1), double(t)));
  c->bc2 = float(1.0 - std::pow(double(cfg.beta2), double(t)));
  c->lr = lr_at(cfg, t, steps_per_epoch);
}

void gather_normalize_batch(const Exec& ex, float* out, int32_t* out_labels, const uint8_t* images,
                            const uint8_t* labels, const int32_t* perm, const gpu::StepCounters* c, int B, int H, int W,
                            const Augment& aug, float mean, float std) {
  if (on_gpu(ex))
    return gpu::gather_normalize_batch(out, out_labels, images, labels, perm, c, B, H, W, aug, mean, std,
                                       ex.gpu->stream());
  const int32_t* idx = perm + c->batch * B;
  if (!aug.on()) return ref::gather_normalize(out, out_labels, images, labels, idx, B, H * W, mean, std);
  ref::gather_normalize_augment(out, out_labels, images, labels, idx, B, H, W, mean, std, aug, c->seed, c->global_step);
}

void optimizer_step(const Exec& ex, float* param, const float* grad, float* m, float* v, size_t n,
                    const OptimConfig& cfg, const gpu::StepCounters* c) {
  if (on_gpu(ex)) return gpu::optimizer_step(param, grad, m, v, n, cfg, c, ex.gpu->stream());
  OptimConfig at = cfg;
  at.lr = c->lr;  // the step's rate (begin_step)
  cpu::optimizer_step(param, grad, m, v, n, at, c->bc1, c->bc2);
}

}  // namespace op

// ---- contexts, the device choice, read-backs ----

namespace {

gpu::ConvImpl conv_impl_from_env() {
  const char* v = std::getenv("BARECNN_CONV_IMPL");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "fast") == 0) return gpu::ConvImpl::Fast;
  if (std::strcmp(v, "tiled") == 0) return gpu::ConvImpl::Tiled;
  if (std::strcmp(v, "simple") == 0) return gpu::ConvImpl::Simple;
  throw UsageError(fmt("BARECNN_CONV_IMPL=", v, ": expected 'simple', 'tiled' or 'fast' (or unset, which means fast)"));
}

}  // namespace

ExecContext::ExecContext(Device d) {
  if (d == Device::CUDA) gpu_ = std::make_unique<GpuContext>();
  if (d == Device::CPU) flush_ = std::make_unique<cpu::FlushSubnormals>();
  ex_ = Exec::on(d, gpu_.get());
  // The one place the environment picks the GPU's conv kernels (a CPU run never reads it).
  if (d == Device::CUDA) ex_.conv_impl = conv_impl_from_env();
}

ExecContext::~ExecContext() = default;
ExecContext::ExecContext(ExecContext&&) noexcept = default;
ExecContext& ExecContext::operator=(ExecContext&&) noexcept = default;

ExecTimer::ExecTimer(const Exec& ex) : ex_(ex) {
  if (ex_.device == Device::CUDA) a_.create(true), b_.create(true);
}

void ExecTimer::start() {
  if (ex_.device == Device::CUDA)
    a_.record(ex_.gpu->stream());
  else
    t0_ = std::chrono::steady_clock::now();
}

double ExecTimer::stop_ms() {
  if (ex_.device == Device::CUDA) {
    b_.record(ex_.gpu->stream());
    b_.synchronize();
    return b_.ms_since(a_);
  }
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0_).count();
}

Device choose_device(const std::string& flag_in, std::string* why) {
  const std::string flag = lower(flag_in);
  const GpuStatus& g = gpu_status();
  if (flag == "cpu") {
    *why = "--device cpu";
    return Device::CPU;
  }
  if (flag == "cuda") {
    if (!g.ok) throw Error(fmt("--device cuda: no usable GPU: ", g.reason, ". Use --device cpu or --device auto"));
    *why = fmt(g.name, ", sm_", g.cc_major, g.cc_minor,
               g.emulated ? "; the GPU code runs on the CPU through tests/emu" : "");
    return Device::CUDA;
  }
  if (flag != "auto") throw UsageError(fmt("--device: expected auto, cpu or cuda, got '", flag_in, "'"));
  if (g.ok) {
    *why = fmt("--device auto found ", g.name, ", sm_", g.cc_major, g.cc_minor,
               g.emulated ? "; the GPU code runs on the CPU through tests/emu" : "");
    return Device::CUDA;
  }
  *why = fmt("--device auto found no usable GPU: ", g.reason);
  return Device::CPU;
}

Readback::Readback(const Exec& ex, size_t n) : ex_(ex), n_(n) {
  if (ex_.device == Device::CUDA) {
    host_.resize(n);
    event_.create(false);
  }
}

Readback::~Readback() {
  // A copy into the pinned buffer may still be in flight (an exception stopped the work).
  if (pending_) cudaStreamSynchronize(ex_.gpu->stream());
}

void Readback::queue(const double* src, long long tag) {
  if (ex_.device == Device::CPU || pending_) return;
  CUDA_CHECK(cudaMemcpyAsync(host_.data(), src, n_ * sizeof(double), cudaMemcpyDeviceToHost, ex_.gpu->stream()));
  event_.record(ex_.gpu->stream());
  pending_ = true;
  tag_ = tag;
}

bool Readback::latest(const double* src, long long tag, double* out, long long* out_tag) {
  if (ex_.device == Device::CPU) {
    std::copy(src, src + n_, out);
    *out_tag = tag;
    return true;
  }
  if (pending_ && !event_.done()) return false;
  const bool arrived = pending_;
  if (arrived) {
    std::copy(host_.data(), host_.data() + n_, out);
    *out_tag = tag_;
    pending_ = false;
  }
  queue(src, tag);
  return arrived;
}

void Readback::wait(const double* src, double* out) {
  if (ex_.device == Device::CUDA) {
    CUDA_CHECK(cudaMemcpyAsync(host_.data(), src, n_ * sizeof(double), cudaMemcpyDeviceToHost, ex_.gpu->stream()));
    CUDA_CHECK(cudaStreamSynchronize(ex_.gpu->stream()));
    pending_ = false;
    src = host_.data();
  }
  std::copy(src, src + n_, out);
}

}  // namespace barecnn
