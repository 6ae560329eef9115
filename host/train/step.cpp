// The training step (include/barecnn/step.h): enqueue() is the whole step, top to bottom.
#include "barecnn/step.h"

#include <algorithm>

#include "barecnn/error.h"
#include "barecnn/nvtx.h"

namespace barecnn {

TrainStep::TrainStep(const Net& net, const Exec& ex, const IdxImages& images, const std::vector<uint8_t>& labels,
                     const StepSettings& settings)
    : net_(net),
      ex_(ex),
      settings_(settings),
      count_(images.count),
      H_(images.rows),
      W_(images.cols),
      P_(images.rows * images.cols),
      readback_(ex, 2) {
  const int B = settings_.batch;
  BARECNN_ASSERT(B >= 1 && B <= count_, "batch ", B, " for ", count_, " images");
  BARECNN_ASSERT(size_t(P_) == dims_numel(net.input_dims()), "images of ", P_, " pixels for a net taking ",
                 dims_str(net.input_dims()));
  net.check_train_batch(B);
  const Augment& a = settings_.augment;
  BARECNN_ASSERT(a.pad >= 0 && 2 * a.pad <= std::min(H_, W_), "augment pad ", a.pad, " for images of ", H_, "x", W_);
  const Device d = ex_.device;
  const int n = int(net.num_params());
  for (Tensor* t : {&grads_, &m_, &v_}) t->reset({n}, d);
  params_.reset({int(net.state_size())}, d);  // the trainable parameters, then the buffers
  params_.zero(), m_.zero(), v_.zero(), grads_.zero();
  net_.prepare(st_, B, d);
  loss_.reset({B}, d);
  correct_.reset({B}, d);
  labels_.reset({B}, d);
  images_.reset({count_, P_}, d);
  images_.copy_from_host(images.pixels);
  labels8_.reset({count_}, d);
  labels8_.copy_from_host(labels);
  perm_.reset({count_}, d);
  acc_.reset({2}, d);
  counters_.reset({1}, d);
}

void TrainStep::set_state(const StepState& s) {
  const size_t n = net_.num_params();
  BARECNN_ASSERT(s.params.size() == net_.state_size() && s.m.size() == n && s.v.size() == n, "a state of ",
                 s.params.size(), " values and ", s.m.size(), " moments for a net of ", net_.state_size(), " and ", n);
  params_.copy_from_host(s.params);
  m_.copy_from_host(s.m);
  v_.copy_from_host(s.v);
  global_step_ = s.global_step;
}

StepState TrainStep::state() const { return {params_.to_host(), m_.to_host(), v_.to_host(), global_step_}; }

void TrainStep::begin_epoch(uint64_t seed, long long epoch, long long next_batch, const StepMetrics& so_far) {
  op::epoch_permutation(ex_, perm_.data(), count_, seed, epoch);
  gpu::StepCounters c;
  c.next_batch = next_batch;
  c.batch = next_batch;
  c.global_step = global_step_;
  c.seed = seed;
  counters_.copy_from_host({c});
  acc_.copy_from_host({so_far.loss_sum, so_far.correct});
  steps_in_epoch_ = next_batch;
  readback_.queue(acc_.data(), next_batch);  // a first poll then has the start's figures
}

void TrainStep::enqueue() {
  const int B = settings_.batch, K = net_.num_outputs();
  const OptimConfig& opt = settings_.optim;
  op::begin_step(ex_, counters_.data(), opt, steps_per_epoch());
  op::gather_normalize_batch(ex_, st_.act[0].data(), labels_.data(), images_.data(), labels8_.data(), perm_.data(),
                             counters_.data(), B, H_, W_, settings_.augment, settings_.mean, settings_.std);
  net_.forward(st_, params_.data(), ex_, RunMode<float>::train(params_.data() + net_.num_params(), counters_.data()));
  op::loss_forward_backward(ex_, loss_.data(), st_.dact.back().data(), correct_.data(), st_.act.back().data(),
                            labels_.data(), B, K, settings_.loss, 1.f / B);
  op::accumulate_metrics(ex_, acc_.data(), loss_.data(), correct_.data(), B);
  net_.backward(st_, params_.data(), grads_.data(), ex_, false);
  // (data-parallel training all-reduces grads_ here)
  op::optimizer_step(ex_, params_.data(), grads_.data(), m_.data(), v_.data(), net_.num_params(), opt,
                     counters_.data());
}

// With cuda_graph: the first step runs eagerly (it loads every kernel and lets cuBLAS settle), the
// second is captured into a graph, and every step from then on is one graph launch instead of ~20
// kernel launches. The graph holds the addresses of the step's buffers, which never move. NVTX
// ranges are recorded at the capture only, so profile per layer without the graph.
void TrainStep::run(bool eager) {
  NvtxScope range("train_step");
  ++global_step_;
  ++steps_in_epoch_;
  if (eager || !settings_.cuda_graph || !ex_.can_capture()) return enqueue();
  if (!warm_) {
    warm_ = true;
    return enqueue();
  }
  if (!graph_.ready()) {
    NvtxScope capture("capture train_step");
    graph_.capture(ex_.gpu->stream(), [this] { enqueue(); });
  }
  graph_.launch(ex_.gpu->stream());
}

bool TrainStep::poll_metrics(StepMetrics* m) {
  double v[2];
  long long steps = 0;
  if (!readback_.latest(acc_.data(), steps_in_epoch_, v, &steps)) return false;
  *m = {v[0], v[1], steps};
  return true;
}

StepMetrics TrainStep::wait_metrics() {
  double v[2];
  readback_.wait(acc_.data(), v);
  return {v[0], v[1], steps_in_epoch_};
}

}  // namespace barecnn
