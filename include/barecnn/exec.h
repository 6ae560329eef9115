// The one dispatch point of every op. An Exec says where a call runs (the device, and on the GPU
// the context: stream and cuBLAS handle, plus the net's scratch); each op below has a float and,
// where the gradient checks need it, a double overload:
//   float  on Device::CUDA -> the CUDA launcher (gpu::, kernels/)
//   float  on Device::CPU  -> the fast CPU op (cpu::, host/cpu/) where there is one, else the
//                             reference in float (the table is host/nn/exec.cpp)
//   double (CPU only)      -> the reference (ref::, host/reference/), for the gradient checks
// Nothing above this layer (layers, net, step, trainer, bench) tests the device. Pointers are on
// ex.device; arguments and shapes are those of the ops in ref_ops.h and gpu_ops.h.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "barecnn/gpu.h"
#include "barecnn/gpu_ops.h"
#include "barecnn/ref_ops.h"
#include "barecnn/tensor.h"

namespace barecnn {

struct Exec {
  Device device = Device::CPU;
  const GpuContext* gpu = nullptr;  // set exactly when device is CUDA
  float* workspace = nullptr;       // scratch for the layers (NetState::workspace), or null
  // Which conv2d kernels the GPU runs (gpu_ops.h); the CPU ignores it. ExecContext sets it from
  // the environment (BARECNN_CONV_IMPL).
  gpu::ConvImpl conv_impl = gpu::ConvImpl::Fast;

  static Exec cpu() { return {}; }
  static Exec cuda(const GpuContext& g) { return {Device::CUDA, &g, nullptr}; }
  // `gpu` must be given for Device::CUDA (a GpuContext of the caller's).
  static Exec on(Device d, const GpuContext* gpu);
  Exec with_workspace(float* w) const {
    Exec e = *this;
    e.workspace = w;
    return e;
  }

  // Can work on this device be captured as a CUDA Graph?
  bool can_capture() const { return device == Device::CUDA; }
  // Blocks until all the work handed to this Exec has finished (the GPU stream; nothing on the CPU).
  void sync() const;
};

namespace op {

// ---- layers (float: GPU or fast CPU; double: the reference) ----
// fuse_relu / relu_out: the GPU conv's fused ReLU (gpu_ops.h); CPU float and double take neither.
void conv2d_forward(const Exec& ex, float* out, const float* inp, const float* w, const float* b, const Conv2dShape& s,
                    bool fuse_relu = false);
void conv2d_forward(const Exec& ex, double* out, const double* inp, const double* w, const double* b,
                    const Conv2dShape& s, bool fuse_relu = false);
void conv2d_backward_input(const Exec& ex, float* dinp, const float* dout, const float* w, const Conv2dShape& s,
                           const float* relu_out = nullptr);
void conv2d_backward_input(const Exec& ex, double* dinp, const double* dout, const double* w, const Conv2dShape& s,
                           const double* relu_out = nullptr);
// Uses ex.workspace on the GPU, of conv2d_backward_weight_workspace(ex.device, s) floats (Net
// sizes it: Layer::workspace_floats).
size_t conv2d_backward_weight_workspace(Device device, const Conv2dShape& s);
void conv2d_backward_weight(const Exec& ex, float* dw, float* db, const float* dout, const float* inp,
                            const Conv2dShape& s, const float* relu_out = nullptr);
void conv2d_backward_weight(const Exec& ex, double* dw, double* db, const double* dout, const double* inp,
                            const Conv2dShape& s, const double* relu_out = nullptr);

// conv + ReLU + max pooling in one (cpu_ops.h: the CPU's fused ops; Net plans them only there,
// for float, where cpu::conv2d_fuses_maxpool): forward writes the pooled output and the pool's
// mask; the backward ops take the pooled output's gradient, the pooled values and the mask. Any
// other device or type throws. conv2d_fuses_relu_maxpool: whether `device` has them for s and ps.
bool conv2d_fuses_relu_maxpool(Device device, const Conv2dShape& s, const Pool2dShape& ps);
void conv2d_forward_relu_maxpool(const Exec& ex, float* pooled, int32_t* mask, const float* inp, const float* w,
                                 const float* b, const Conv2dShape& s, const Pool2dShape& ps);
void conv2d_forward_relu_maxpool(const Exec& ex, double* pooled, int32_t* mask, const double* inp, const double* w,
                                 const double* b, const Conv2dShape& s, const Pool2dShape& ps);
void conv2d_backward_input_relu_maxpool(const Exec& ex, float* dinp, const float* dpooled, const float* pooled,
                                        const int32_t* mask, const float* w, const Conv2dShape& s,
                                        const Pool2dShape& ps);
void conv2d_backward_input_relu_maxpool(const Exec& ex, double* dinp, const double* dpooled, const double* pooled,
                                        const int32_t* mask, const double* w, const Conv2dShape& s,
                                        const Pool2dShape& ps);
void conv2d_backward_weight_relu_maxpool(const Exec& ex, float* dw, float* db, const float* dpooled,
                                         const float* pooled, const int32_t* mask, const float* inp,
                                         const Conv2dShape& s, const Pool2dShape& ps);
void conv2d_backward_weight_relu_maxpool(const Exec& ex, double* dw, double* db, const double* dpooled,
                                         const double* pooled, const int32_t* mask, const double* inp,
                                         const Conv2dShape& s, const Pool2dShape& ps);

void maxpool2d_forward(const Exec& ex, float* out, int32_t* mask, const float* inp, const Pool2dShape& s);
void maxpool2d_forward(const Exec& ex, double* out, int32_t* mask, const double* inp, const Pool2dShape& s);
void maxpool2d_backward(const Exec& ex, float* dinp, const float* dout, const int32_t* mask, const Pool2dShape& s);
void maxpool2d_backward(const Exec& ex, double* dinp, const double* dout, const int32_t* mask, const Pool2dShape& s);
void avgpool2d_forward(const Exec& ex, float* out, const float* inp, const Pool2dShape& s);
void avgpool2d_forward(const Exec& ex, double* out, const double* inp, const Pool2dShape& s);
void avgpool2d_backward(const Exec& ex, float* dinp, const float* dout, const Pool2dShape& s);
void avgpool2d_backward(const Exec& ex, double* dinp, const double* dout, const Pool2dShape& s);
void l2pool2d_forward(const Exec& ex, float* out, const float* inp, const Pool2dShape& s);
void l2pool2d_forward(const Exec& ex, double* out, const double* inp, const Pool2dShape& s);
void l2pool2d_backward(const Exec& ex, float* dinp, const float* dout, const float* inp, const float* out,
                       const Pool2dShape& s);
void l2pool2d_backward(const Exec& ex, double* dinp, const double* dout, const double* inp, const double* out,
                       const Pool2dShape& s);

void activation_forward(const Exec& ex, float* out, const float* inp, long long n, Activation a);
void activation_forward(const Exec& ex, double* out, const double* inp, long long n, Activation a);
void activation_backward(const Exec& ex, float* dinp, const float* dout, const float* inp, const float* out,
                         long long n, Activation a);
void activation_backward(const Exec& ex, double* dinp, const double* dout, const double* inp, const double* out,
                         long long n, Activation a);
void softmax_forward(const Exec& ex, float* out, const float* inp, int N, int K);
void softmax_forward(const Exec& ex, double* out, const double* inp, int N, int K);
void softmax_backward(const Exec& ex, float* dinp, const float* dout, const float* out, int N, int K);
void softmax_backward(const Exec& ex, double* dinp, const double* dout, const double* out, int N, int K);

void dense_forward(const Exec& ex, float* out, const float* inp, const float* w, const float* b, int N, int IN,
                   int OUT);
void dense_forward(const Exec& ex, double* out, const double* inp, const double* w, const double* b, int N, int IN,
                   int OUT);
void dense_backward_input(const Exec& ex, float* dinp, const float* dout, const float* w, int N, int IN, int OUT);
void dense_backward_input(const Exec& ex, double* dinp, const double* dout, const double* w, int N, int IN, int OUT);
void dense_backward_weight(const Exec& ex, float* dw, float* db, const float* dout, const float* inp, int N, int IN,
                           int OUT);
void dense_backward_weight(const Exec& ex, double* dw, double* db, const double* dout, const double* inp, int N, int IN,
                           int OUT);

// batch normalization (x, y (N, C, S); gamma, beta, mean, invstd (C); running: running_mean,
// running_var, num_batches_tracked (2C + 1), norm.h) and dropout (n values; the mask's seed and
// step read from c, on ex.device): as ref_ops.h.
void batchnorm_forward_train(const Exec& ex, float* y, float* mean, float* invstd, float* running, const float* x,
                             const float* gamma, const float* beta, int N, int C, int S);
void batchnorm_forward_train(const Exec& ex, double* y, double* mean, double* invstd, double* running, const double* x,
                             const double* gamma, const double* beta, int N, int C, int S);
void batchnorm_forward_eval(const Exec& ex, float* y, const float* x, const float* gamma, const float* beta,
                            const float* running, int N, int C, int S);
void batchnorm_forward_eval(const Exec& ex, double* y, const double* x, const double* gamma, const double* beta,
                            const double* running, int N, int C, int S);
void batchnorm_backward(const Exec& ex, float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                        const float* gamma, const float* mean, const float* invstd, int N, int C, int S);
void batchnorm_backward(const Exec& ex, double* dx, double* dgamma, double* dbeta, const double* dy, const double* x,
                        const double* gamma, const double* mean, const double* invstd, int N, int C, int S);
void dropout_forward(const Exec& ex, float* y, const float* x, long long n, float p, const gpu::StepCounters* c,
                     int layer);
void dropout_forward(const Exec& ex, double* y, const double* x, long long n, float p, const gpu::StepCounters* c,
                     int layer);
void dropout_backward(const Exec& ex, float* dx, const float* dy, long long n, float p, const gpu::StepCounters* c,
                      int layer);
void dropout_backward(const Exec& ex, double* dx, const double* dy, long long n, float p, const gpu::StepCounters* c,
                      int layer);

// dst (n) = src (n), both on ex.device.
void copy(const Exec& ex, float* dst, const float* src, size_t n);
void copy(const Exec& ex, double* dst, const double* src, size_t n);

// ---- the training step (float) ----
void loss_forward_backward(const Exec& ex, float* loss, float* dlogits, int32_t* correct, const float* logits,
                           const int32_t* labels, int N, int K, Loss kind, float grad_scale);
// acc[0] += sum(loss[0..N)), acc[1] += sum(correct[0..N)), in a fixed order (deterministic).
void accumulate_metrics(const Exec& ex, double* acc, const float* loss, const int32_t* correct, int N);
// idx (n) = the epoch's permutation of 0..n-1 (rng.h).
void epoch_permutation(const Exec& ex, int32_t* idx, int n, uint64_t seed, long long epoch);
// out (B, P), out_labels (B) = the normalized images and labels idx[0..B) (ref::gather_normalize).
void gather_normalize(const Exec& ex, float* out, int32_t* out_labels, const uint8_t* images, const uint8_t* labels,
                      const int32_t* idx, int B, int P, float mean, float std);
// The step counters (gpu::StepCounters, on ex.device): begin_step advances them; the gather reads
// batch c->batch of `perm`; the optimizer reads the step's learning rate (lr_at, optim.h) and
// Adam's bias corrections from them, not cfg.lr.
void begin_step(const Exec& ex, gpu::StepCounters* c, const OptimConfig& cfg, long long steps_per_epoch);
// images (num_images, H, W); with aug on, each sample is cropped and flipped by the draws of the
// counters' (seed, global_step) (ref::gather_normalize_augment); off: the plain gather.
void gather_normalize_batch(const Exec& ex, float* out, int32_t* out_labels, const uint8_t* images,
                            const uint8_t* labels, const int32_t* perm, const gpu::StepCounters* c, int B, int H, int W,
                            const Augment& aug, float mean, float std);
void optimizer_step(const Exec& ex, float* param, const float* grad, float* m, float* v, size_t n,
                    const OptimConfig& cfg, const gpu::StepCounters* c);

}  // namespace op

namespace cpu {
class FlushSubnormals;
}

// An Exec with a GpuContext of its own on Device::CUDA (for callers that do not share one). On
// CUDA its conv_impl comes from the environment variable BARECNN_CONV_IMPL=simple|tiled|fast
// (unset: fast); any other value is a UsageError. On the CPU it flushes subnormals to zero on the calling
// thread and the OpenMP threads while it lives (cpu::FlushSubnormals, cpu_ops.h): every command
// that trains, evaluates, predicts or benchmarks on the CPU runs inside one.
class ExecContext {
 public:
  explicit ExecContext(Device d);
  ~ExecContext();
  ExecContext(ExecContext&&) noexcept;
  ExecContext& operator=(ExecContext&&) noexcept;
  const Exec& exec() const { return ex_; }

 private:
  std::unique_ptr<GpuContext> gpu_;
  std::unique_ptr<cpu::FlushSubnormals> flush_;  // on the CPU
  Exec ex_;
};

// Times work handed to an Exec: CUDA events on the GPU's stream, the wall clock on the CPU.
class ExecTimer {
 public:
  explicit ExecTimer(const Exec& ex);
  void start();
  double stop_ms();  // waits for the work since start()

 private:
  Exec ex_;
  CudaEvent a_, b_;
  std::chrono::steady_clock::time_point t0_;
};

// Picks the device from --device "auto" | "cpu" | "cuda"; `why` says why (the commands print it).
Device choose_device(const std::string& flag, std::string* why);

// Whether a net fuses each conv with the plain ReLU after it (Net::set_fusion), from --fuse on|off,
// or unset (auto): on, on both devices. The fused loops and kernels give the unfused
// chain's bits and save passes over the activations (and, on the GPU, the memory of the ReLU's
// input and its gradient). The GPU's were opt-in until they had run on one: on an H200
// (2026-12-04) their tests passed and a 3-epoch paper run gave the unfused run's weights bitwise.
inline bool fuse_for(const std::optional<bool>& flag) { return flag.value_or(true); }

// A few values of a buffer on ex.device, read back without blocking the work. Each value read is
// tagged with what the caller passed when it was asked for (the training step: how many steps it
// covers). On the GPU a copy into pinned memory is queued behind the work so far and handed over
// once it has arrived; on the CPU the values are read at once.
class Readback {
 public:
  Readback(const Exec& ex, size_t n);
  ~Readback();
  Readback(const Readback&) = delete;
  Readback& operator=(const Readback&) = delete;
  // Queues a copy of src (n values) tagged `tag`, unless one is still on its way.
  void queue(const double* src, long long tag);
  // The newest values that arrived since the last call (and their tag): true if any. Then queues
  // the next copy, tagged `tag`. Never waits.
  bool latest(const double* src, long long tag, double* out, long long* out_tag);
  // Waits for everything queued so far and reads src.
  void wait(const double* src, double* out);
  // Is a read cheap enough to do after every step (host memory)? Else the caller spaces them out.
  bool cheap() const { return ex_.device == Device::CPU; }

 private:
  Exec ex_;
  size_t n_;
  PinnedBuffer<double> host_;  // GPU: where the copies land
  CudaEvent event_;            // GPU: recorded after each copy
  bool pending_ = false;       // GPU: a copy is on its way
  long long tag_ = 0;          // GPU: the pending copy's tag
};

}  // namespace barecnn
