// The training loop on either device. On the GPU the whole epoch stays on the device: the data
// set is resident as uint8, a kernel gathers and normalizes each shuffled batch, the loss kernel
// accumulates loss and correct counts on the device, and the host only reads them back (without
// blocking) for the progress display.
#include "barecnn/trainer.h"

#include <nvtx3/nvToolsExt.h>
#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "barecnn/checkpoint.h"
#include "barecnn/cuda_check.h"
#include "barecnn/error.h"
#include "barecnn/fileutil.h"
#include "barecnn/gpu_ops.h"
#include "barecnn/ref_ops.h"
#include "barecnn/report.h"
#include "barecnn/rng.h"

namespace barecnn {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

struct NvtxScope {
  explicit NvtxScope(const char* s) { nvtxRangePushA(s); }
  ~NvtxScope() { nvtxRangePop(); }
};

std::string hms(double s) {
  if (!std::isfinite(s) || s < 0) return "--:--";
  long t = long(s + 0.5);
  return t >= 3600 ? fmt(t / 3600, ":", (t / 60 % 60) / 10, (t / 60 % 60) % 10, ":", (t % 60) / 10, t % 10)
                   : fmt(t / 60, ":", (t % 60) / 10, t % 10);
}

// A progress bar on a terminal (redrawn in place on stderr), plain lines every tenth of an epoch
// otherwise (stdout), nothing when quiet.
class Progress {
 public:
  Progress(bool quiet) : quiet_(quiet), tty_(isatty(STDERR_FILENO) != 0) {}
  void start(int epoch, int epochs, long long steps) {
    epoch_ = epoch, epochs_ = epochs, steps_ = steps, next_line_ = 0;
    last_draw_ = Clock::now() - std::chrono::seconds(1);
  }
  // Called with the latest known figures; cheap when nothing is due.
  void update(long long step, double loss, double acc, double img_s, double eta, bool force = false) {
    if (quiet_) return;
    if (tty_) {
      if (!force && seconds_since(last_draw_) < 0.2) return;
      last_draw_ = Clock::now();
      int width = 28, filled = steps_ ? int(width * step / steps_) : width;
      std::string bar(filled, '#');
      bar += std::string(width - filled, '.');
      std::fprintf(stderr, "\r  epoch %d/%d [%s] %3d%%  loss %.4f  acc %5.1f%%  %7.0f img/s  ETA %s   ", epoch_,
                   epochs_, bar.c_str(), steps_ ? int(100 * step / steps_) : 100, loss, 100 * acc, img_s,
                   hms(eta).c_str());
      std::fflush(stderr);
    } else if (step >= next_line_ || force) {
      next_line_ = step + std::max<long long>(1, steps_ / 10);
      if (step == 0 && !force) return;
      std::printf("  epoch %d/%d step %lld/%lld  loss %.4f  acc %.2f%%  %.0f img/s  ETA %s\n", epoch_, epochs_, step,
                  steps_, loss, 100 * acc, img_s, hms(eta).c_str());
      std::fflush(stdout);
    }
  }
  void end() {
    if (!quiet_ && tty_) std::fprintf(stderr, "\r%120s\r", "");
  }

 private:
  bool quiet_, tty_;
  int epoch_ = 0, epochs_ = 0;
  long long steps_ = 0, next_line_ = 0;
  Clock::time_point last_draw_;
};

double image_mean(const IdxImages& im) {
  double s = 0;
  for (uint8_t p : im.pixels) s += p;
  return s / 255.0 / double(im.pixels.size());
}
double image_std(const IdxImages& im, double mean) {
  double s = 0;
  for (uint8_t p : im.pixels) { double d = p / 255.0 - mean; s += d * d; }
  return std::sqrt(s / double(im.pixels.size()));
}

std::string optim_str(const OptimConfig& o) {
  if (o.kind == Optim::Adam) return fmt("adam (lr ", o.lr, ", betas ", o.beta1, "/", o.beta2, ", weight decay ", o.weight_decay, ")");
  return fmt("sgd (lr ", o.lr, ", momentum ", o.momentum, ", weight decay ", o.weight_decay, ")");
}

}  // namespace

Device choose_device(const std::string& flag, std::string* why) {
  const GpuStatus& g = gpu_status();
  if (flag == "cpu") {
    *why = "--device cpu";
    return Device::CPU;
  }
  if (flag == "cuda") {
    if (!g.ok) throw Error(fmt("--device cuda: no usable GPU: ", g.reason, ". Use --device cpu or --device auto"));
    *why = fmt(g.name, ", sm_", g.cc_major, g.cc_minor, g.emulated ? ": the GPU code runs on the CPU (tests/emu)" : "");
    return Device::CUDA;
  }
  if (flag != "auto") throw UsageError(fmt("--device: expected auto, cpu or cuda, got '", flag, "'"));
  if (g.ok) {
    *why = fmt("auto: ", g.name, ", sm_", g.cc_major, g.cc_minor,
               g.emulated ? ": the GPU code runs on the CPU (tests/emu)" : "");
    return Device::CUDA;
  }
  *why = fmt("auto: no usable GPU (", g.reason, ")");
  return Device::CPU;
}

std::vector<std::string> default_class_names(int classes, const std::string& data_dir) {
  std::vector<std::string> names;
  if (classes == 10 && data_dir.find("fashion") != std::string::npos)
    names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};
  else
    for (int k = 0; k < classes; ++k) names.push_back(std::to_string(k));
  return names;
}

// ---- evaluation ----------------------------------------------------------------------------------

namespace {

// Evaluates a net on one image set, batch by batch. On the GPU it keeps the images, the labels
// and its buffers on the device between calls: the trainer evaluates the test set after every
// epoch with the run's own GPU context and the parameters where they are.
class Evaluator {
 public:
  // `gpu`: the context to use on Device::CUDA (null: one of its own). `images` must outlive it.
  Evaluator(Net& net, const IdxImages& images, const std::vector<uint8_t>& labels, float mean, float std, Loss loss,
            Device device, int batch, const GpuContext* gpu)
      : net_(net), images_(images), has_labels_(!labels.empty()), mean_(mean), std_(std), loss_(loss),
        device_(device), batch_(batch), gpu_(gpu) {
    const int n = images.count, P = images.rows * images.cols;  // IDX images: 1 channel
    if (P != int(dims_numel(net.input_dims())))
      throw UsageError(fmt("the images are ", images.rows, "x", images.cols, " but the net takes ",
                           dims_str(net.input_dims())));
    lab8_ = has_labels_ ? labels : std::vector<uint8_t>(n, 0);
    if (device_ == Device::CUDA) {
      if (!gpu_) own_gpu_ = std::make_unique<GpuContext>(), gpu_ = own_gpu_.get();
      d_images_.copy_from_host(images.pixels);
      d_labels_.copy_from_host(lab8_);
      d_idx_.resize(batch_), d_lab_.resize(batch_), d_correct_.resize(batch_), d_loss_.resize(batch_);
    }
  }

  // params: flat, on the evaluator's device.
  EvalResult run(const float* params, bool keep_logits) {
    NvtxScope range("evaluate");
    const int K = net_.num_outputs(), n = images_.count, P = images_.rows * images_.cols;
    EvalResult r;
    r.count = n;
    r.confusion.assign(size_t(K) * K, 0);
    if (keep_logits) r.logits.resize(size_t(n) * K);
    r.predicted.resize(n);
    std::vector<int32_t> idx(batch_), lab32(batch_), correct(batch_);
    std::vector<float> lossv(batch_), logits;
    double loss_sum = 0;
    long long correct_sum = 0;
    for (int start = 0; start < n; start += batch_) {
      const int B = std::min(batch_, n - start);
      net_.prepare(st_, B, device_);
      for (int b = 0; b < B; ++b) idx[b] = start + b;
      if (device_ == Device::CUDA) {
        d_idx_.copy_from_host(idx.data(), B);
        gpu::gather_normalize(st_.act[0].data(), d_lab_.data(), d_images_.data(), d_labels_.data(), d_idx_.data(),
                              B, P, mean_, std_, gpu_->stream());
        net_.forward(st_, params, gpu_);
        gpu::loss_forward_backward(d_loss_.data(), nullptr, d_correct_.data(), st_.act.back().data(), d_lab_.data(),
                                   B, K, loss_, 1.f / B, gpu_->stream());
        logits = st_.act.back().to_host();  // synchronizes
        d_loss_.copy_to_host(lossv.data(), B);
        d_correct_.copy_to_host(correct.data(), B);
        d_lab_.copy_to_host(lab32.data(), B);
      } else {
        ref::gather_normalize(st_.act[0].data(), lab32.data(), images_.pixels.data(), lab8_.data(), idx.data(), B, P,
                              mean_, std_);
        net_.forward(st_, params, nullptr);
        ref::loss_forward_backward<float>(lossv.data(), nullptr, correct.data(), st_.act.back().data(), lab32.data(),
                                          B, K, loss_, 1.f / B);
        logits = st_.act.back().to_host();
      }
      for (int b = 0; b < B; ++b) {
        const float* row = logits.data() + size_t(b) * K;
        int pred = int(std::max_element(row, row + K) - row);  // first index on ties, as the loss kernel
        r.predicted[start + b] = pred;
        if (keep_logits) std::copy(row, row + K, r.logits.begin() + size_t(start + b) * K);
        if (has_labels_) {
          loss_sum += lossv[b];
          correct_sum += correct[b];
          r.confusion[size_t(lab32[b]) * K + pred]++;
        }
      }
    }
    if (has_labels_ && n > 0) {
      r.loss = loss_sum / n;
      r.accuracy = double(correct_sum) / n;
    }
    return r;
  }

 private:
  Net& net_;
  const IdxImages& images_;
  std::vector<uint8_t> lab8_;  // (n) the labels, zeros when there are none
  bool has_labels_;
  float mean_, std_;
  Loss loss_;
  Device device_;
  int batch_;
  const GpuContext* gpu_;
  std::unique_ptr<GpuContext> own_gpu_;
  NetState<float> st_;  // its own activations and masks: the training step's stay where they are
  DeviceBuffer<uint8_t> d_images_, d_labels_;  // (n, P), (n)
  DeviceBuffer<int32_t> d_idx_, d_lab_, d_correct_;  // (batch)
  DeviceBuffer<float> d_loss_;  // (batch)
};

}  // namespace

EvalResult evaluate(Net& net, const std::vector<float>& params, const IdxImages& images,
                    const std::vector<uint8_t>& labels, float mean, float std, Loss loss, Device device, int batch,
                    bool keep_logits) {
  Evaluator ev(net, images, labels, mean, std, loss, device, batch, nullptr);
  if (device != Device::CUDA) return ev.run(params.data(), keep_logits);
  Tensor d_params({int(params.size())}, device);
  d_params.copy_from_host(params);
  return ev.run(d_params.data(), keep_logits);
}

// ---- training ------------------------------------------------------------------------------------

namespace {

class Run {
 public:
  explicit Run(const TrainConfig& cfg_in) : cfg_(cfg_in), progress_(cfg_in.quiet) {}

  void setup() {
    Checkpoint ck;
    bool resuming = !cfg_.resume.empty();
    if (resuming) {
      std::string path = path_join(cfg_.resume, "checkpoint.safetensors");
      if (!file_exists(path))
        throw UsageError(fmt("--resume ", cfg_.resume, ": no checkpoint.safetensors in that folder; pass the --out "
                             "folder of the run to continue"));
      ck = read_checkpoint(path);
      // The run continues with its own settings; only the epoch count (and output folder) change.
      int epochs = cfg_.epochs;
      std::string out = cfg_.out, data = cfg_.data_dir, dev = cfg_.device;
      bool quiet = cfg_.quiet;
      long long every = cfg_.checkpoint_every;
      int threads = cfg_.threads;
      bool graph = cfg_.cuda_graph, fuse = cfg_.fuse;
      std::string resume = cfg_.resume;
      cfg_ = ck.cfg;
      cfg_.epochs = epochs;
      cfg_.resume = resume;
      cfg_.out = out.empty() ? resume : out;
      if (!data.empty()) cfg_.data_dir = data;
      cfg_.device = dev;
      cfg_.quiet = quiet;
      cfg_.checkpoint_every = every;
      cfg_.threads = threads;
      cfg_.cuda_graph = graph;  // how the step is launched changes no result
      cfg_.fuse = fuse;         // nor does fusing (bitwise the same weights)
      if (ck.epochs_done > cfg_.epochs || (ck.epochs_done == cfg_.epochs && ck.step_in_epoch > 0))
        throw UsageError(fmt("--resume ", cfg_.resume, ": the run already has ", ck.epochs_done,
                             " epochs; pass --epochs N with N > ", ck.epochs_done, " to train more"));
      // epochs_done == epochs: the run was stopped after its last checkpoint; only the outputs
      // (model, report) remain to be written.
    }
    if (cfg_.epochs < 1) throw UsageError(fmt("--epochs must be >= 1, got ", cfg_.epochs));
    if (cfg_.batch < 1) throw UsageError(fmt("--batch must be >= 1, got ", cfg_.batch));
    if (!(cfg_.optim.lr > 0) || !std::isfinite(cfg_.optim.lr))
      throw UsageError(fmt("--lr must be a positive finite number, got ", cfg_.optim.lr));
    if (cfg_.threads > 0) omp_set_num_threads(cfg_.threads);

    // Everything that can fail on user input fails here, before any training.
    ensure_writable_dir(cfg_.out, resuming ? "--out (or --resume)" : "--out");
    remove_stale_temp_files(cfg_.out);
    std::string why;
    device_ = choose_device(cfg_.device, &why);
    if (resuming && ck.device != device_name(device_))
      std::printf("note: the checkpoint was trained on %s and continues on %s; the weights will not be bitwise "
                  "those of an uninterrupted run\n", ck.device.c_str(), device_name(device_));
    std::string data_dir = cfg_.data_dir.empty() ? default_data_dir() : cfg_.data_dir;
    cfg_.data_dir = data_dir;
    data_ = load_dataset(data_dir, cfg_.limit);
    Dims input{1, data_.train.rows, data_.train.cols};
    net_ = std::make_unique<Net>(cfg_.arch, input);
    net_->set_gpu_fusion(cfg_.fuse);
    // A label beyond the net's outputs is named with its file; a net wider than the data's
    // classes is an arch mistake.
    check_labels(data_, net_->num_outputs());
    net_->check_classes(data_.classes, "the data in " + data_dir);
    if (data_.train.count < cfg_.batch) {
      std::printf("note: --batch %d is larger than the %d training images; using batch %d\n", cfg_.batch,
                  data_.train.count, data_.train.count);
      cfg_.batch = data_.train.count;
    }
    steps_per_epoch_ = data_.train.count / cfg_.batch;  // the last partial batch is dropped (drop_last)

    if (resuming) {
      meta_ = ck.meta;
      if (meta_.arch != net_->spec())
        throw UsageError(fmt("--resume: the checkpoint's net '", meta_.arch, "' differs from '", net_->spec(), "'"));
    } else {
      meta_.arch = net_->spec();
      meta_.input = input;
      meta_.classes = net_->num_outputs();
      double m = image_mean(data_.train);
      meta_.mean = float(m);
      meta_.std = float(image_std(data_.train, m));
      meta_.class_names = default_class_names(meta_.classes, data_dir);
    }

    std::printf("barecnn train\n");
    std::printf("  device   : %s (%s)\n", device_name(device_), why.c_str());
    if (device_ == Device::CPU) std::printf("  threads  : %d\n", omp_get_max_threads());
    std::printf("  data     : %s: %d training images%s, %d test images, %dx%d, %d classes\n", data_dir.c_str(),
                data_.train.count, cfg_.limit > 0 ? fmt(" (--limit ", cfg_.limit, ")").c_str() : "", data_.test.count,
                data_.train.rows, data_.train.cols, data_.classes);
    std::printf("  normalize: (x/255 - %.4f) / %.4f\n", meta_.mean, meta_.std);
    std::printf("  net      : %s\n%s", net_->spec().c_str(), net_->summary().c_str());
    std::printf("  training : %d epochs x %lld steps of batch %d, %s, loss %s, seed %llu\n", cfg_.epochs,
                steps_per_epoch_, cfg_.batch, optim_str(cfg_.optim).c_str(), loss_name(cfg_.loss).c_str(),
                (unsigned long long)cfg_.seed);
    if (device_ == Device::CUDA)
      std::printf("  launches : %s%s\n",
                  cfg_.cuda_graph ? "the step as one CUDA Graph (captured at the second step)"
                                  : "kernel by kernel (--cuda-graph on: one CUDA Graph)",
                  cfg_.fuse ? "; each conv does the ReLU after it (--fuse on)" : "");
    std::printf("  output   : %s\n", cfg_.out.c_str());
    if (resuming && ck.epochs_done == cfg_.epochs)
      std::printf("  resume   : %s has all %d epochs; writing its outputs\n", cfg_.resume.c_str(), ck.epochs_done);
    else if (resuming)
      std::printf("  resume   : from %s at epoch %d, step %lld\n", cfg_.resume.c_str(), ck.epochs_done + 1,
                  ck.step_in_epoch);
    std::fflush(stdout);

    // Parameters and optimizer state.
    const size_t P = net_->num_params();
    std::vector<float> p0 = resuming ? ck.params : net_->init_params(cfg_.seed);
    std::vector<float> m0 = resuming ? ck.m : std::vector<float>(P, 0.f);
    std::vector<float> v0 = resuming ? ck.v : std::vector<float>(P, 0.f);
    if (p0.size() != P || m0.size() != P || v0.size() != P)
      throw UsageError(fmt("--resume: the checkpoint holds ", p0.size(), " parameters, the net has ", P));
    if (device_ == Device::CUDA) gpu_ = std::make_unique<GpuContext>();
    reset_device_memory_peak();  // summary.json's peak_device_bytes: this run's buffers (+ cuBLAS's workspace)
    for (Tensor* t : {&params_, &grads_, &m_, &v_}) t->reset({int(P)}, device_);
    params_.copy_from_host(p0);
    m_.copy_from_host(m0);
    v_.copy_from_host(v0);
    grads_.zero();

    net_->prepare(st_, cfg_.batch, device_);
    loss_.reset({cfg_.batch}, device_);
    correct_.reset({cfg_.batch}, device_);
    labels_.reset({cfg_.batch}, device_);
    if (device_ == Device::CUDA) {
      d_images_.copy_from_host(data_.train.pixels);
      d_labels_.copy_from_host(data_.train_labels);
      d_perm_.resize(data_.train.count);
      d_acc_.resize(2);
      d_counters_.resize(1, "training step counters");
      CUDA_CHECK(cudaMallocHost(&h_acc_, 2 * sizeof(double)));
      CUDA_CHECK(cudaEventCreateWithFlags(&acc_event_, cudaEventDisableTiming));
    }

    epoch_ = resuming ? ck.epochs_done : 0;
    start_step_ = resuming ? ck.step_in_epoch : 0;
    global_step_ = resuming ? ck.global_step : 0;
    start_loss_sum_ = ck.epoch_loss_sum;
    start_correct_ = ck.epoch_correct;
    start_seconds_ = ck.epoch_seconds;
    history_ = resuming ? ck.history : std::vector<EpochMetrics>{};
    ckpt_path_ = path_join(cfg_.out, "checkpoint.safetensors");
    test_eval_ = std::make_unique<Evaluator>(*net_, data_.test, data_.test_labels, meta_.mean, meta_.std, cfg_.loss,
                                             device_, device_ == Device::CUDA ? 1000 : 250, gpu_.get());
  }

  void run() {
    for (; epoch_ < cfg_.epochs; ++epoch_) {
      EpochMetrics em = train_epoch();
      EvalResult ev = test_eval_->run(params_.data(), false);
      em.test_loss = ev.loss;
      em.test_accuracy = ev.accuracy;
      history_.push_back(em);
      last_eval_ = ev;
      std::printf("epoch %d/%d  train loss %.4f  train acc %.2f%%  test loss %.4f  test acc %.2f%%  %.1fs  %.0f img/s\n",
                  em.epoch, cfg_.epochs, em.train_loss, 100 * em.train_accuracy, em.test_loss, 100 * em.test_accuracy,
                  em.seconds, em.images_per_second);
      std::fflush(stdout);
      save_checkpoint(epoch_ + 1, 0, 0, 0, 0);
      start_step_ = 0;
      start_loss_sum_ = start_correct_ = start_seconds_ = 0;
    }
  }

  void finish() {
    std::vector<float> p = params_.to_host();
    if (history_.empty() || last_eval_.count == 0) {
      // Resumed a finished run: evaluate once so the report is whole.
      last_eval_ = test_eval_->run(params_.data(), false);
    }
    save_model(path_join(cfg_.out, "model.safetensors"), *net_, p, meta_);
    RunReport r;
    r.arch = net_->spec();
    r.device = device_name(device_);
    if (device_ == Device::CUDA) r.device += fmt(" (", gpu_status().name, ")");
    r.seed = cfg_.seed;
    r.batch = cfg_.batch;
    r.limit = cfg_.limit;
    r.optimizer = optim_str(cfg_.optim);
    if (device_ == Device::CUDA) {
      r.cuda_graph = cfg_.cuda_graph;
      r.fuse = cfg_.fuse;
      r.peak_device_bytes = (long long)device_memory_stats().peak;
    }
    r.test_accuracy = last_eval_.accuracy;
    r.test_loss = last_eval_.loss;
    r.epochs = history_;
    r.confusion = last_eval_.confusion;
    r.classes = net_->num_outputs();
    r.class_names = meta_.class_names;
    for (int i = 0; i < net_->num_layers(); ++i) {
      auto specs = net_->layer(i).param_specs();
      if (!specs.empty() && specs[0].dims.size() == 4) {
        for (auto& e : net_->params())
          if (e.layer == i && e.name == fmt(i, ".weight")) {
            r.conv_weight.assign(p.begin() + e.offset, p.begin() + e.offset + e.numel());
            r.conv_k = e.dims[0], r.conv_c = e.dims[1], r.conv_kh = e.dims[2], r.conv_kw = e.dims[3];
          }
        break;
      }
    }
    write_report(cfg_.out, r);
    std::printf("test accuracy %.4f, test loss %.4f\nwrote %s/{model.safetensors, summary.json, metrics.csv, "
                "checkpoint.safetensors, loss.png, accuracy.png, confusion.png%s}\n",
                r.test_accuracy, r.test_loss, cfg_.out.c_str(), r.conv_weight.empty() ? "" : ", filters.png");
  }

  ~Run() {
    // An exception may leave a copy into the pinned buffer in flight.
    if (gpu_) cudaStreamSynchronize(gpu_->stream());
    if (h_acc_) cudaFreeHost(h_acc_);
    if (acc_event_) cudaEventDestroy(acc_event_);
  }

 private:
  // One optimizer step on batch `step` of the current epoch's permutation.
  void train_step(long long step) {
    NvtxScope range("train_step");
    const int B = cfg_.batch, K = net_->num_outputs();
    const int P = data_.train.rows * data_.train.cols;
    const float grad_scale = 1.f / B;
    ++global_step_;
    if (device_ == Device::CUDA) {
      // The device counters (set at the epoch's start) already point at batch `step`.
      if (cfg_.cuda_graph && !replaying_) graph_step();
      else launch_step();
    } else {
      ref::gather_normalize(st_.act[0].data(), labels_.data(), data_.train.pixels.data(), data_.train_labels.data(),
                            h_perm_.data() + step * B, B, P, meta_.mean, meta_.std);
      net_->forward(st_, params_.data(), nullptr);
      ref::loss_forward_backward<float>(loss_.data(), st_.dact.back().data(), correct_.data(), st_.act.back().data(),
                                        labels_.data(), B, K, cfg_.loss, grad_scale);
      double batch_loss = 0;
      long long batch_correct = 0;
      for (int b = 0; b < B; ++b) batch_loss += loss_.data()[b], batch_correct += correct_.data()[b];
      if (!std::isfinite(batch_loss)) diverged(step, net_->first_nonfinite(st_));
      net_->backward(st_, params_.data(), grads_.data(), nullptr, false);
      for (size_t i = 0; i < grads_.numel(); ++i)
        if (!std::isfinite(grads_.data()[i])) diverged(step, net_->first_nonfinite(st_));
      ref::optimizer_step(params_.data(), grads_.data(), m_.data(), v_.data(), params_.numel(), cfg_.optim,
                          global_step_);
      loss_sum_ += batch_loss;
      correct_sum_ += double(batch_correct);
    }
  }

  // The kernels of one GPU training step, on the run's stream, with no host synchronization and
  // no allocation: everything that changes from step to step is read from d_counters_, so the
  // same launches can be captured once into a CUDA Graph and replayed.
  void launch_step() {
    const int B = cfg_.batch, K = net_->num_outputs();
    const int P = data_.train.rows * data_.train.cols;
    cudaStream_t s = gpu_->stream();
    gpu::begin_step(d_counters_.data(), cfg_.optim, s);
    gpu::gather_normalize_batch(st_.act[0].data(), labels_.data(), d_images_.data(), d_labels_.data(),
                                d_perm_.data(), d_counters_.data(), B, P, meta_.mean, meta_.std, s);
    net_->forward(st_, params_.data(), gpu_.get());
    gpu::loss_forward_backward(loss_.data(), st_.dact.back().data(), correct_.data(), st_.act.back().data(),
                               labels_.data(), B, K, cfg_.loss, 1.f / B, s);
    gpu::accumulate_metrics(d_acc_.data(), loss_.data(), correct_.data(), B, s);
    net_->backward(st_, params_.data(), grads_.data(), gpu_.get(), false);
    // (data-parallel training would all-reduce grads_ here)
    gpu::optimizer_step(params_.data(), grads_.data(), m_.data(), v_.data(), params_.numel(), cfg_.optim,
                        d_counters_.data(), s);
  }

  // --cuda-graph on: the first step runs eagerly (it loads every kernel and lets cuBLAS settle),
  // the second is captured into a graph, and every step from then on is one cudaGraphLaunch
  // instead of ~20 launches. The graph holds the addresses of the run's buffers, which never move
  // after setup (evaluation has buffers of its own). NVTX ranges are recorded at capture only, so
  // profile per layer with --cuda-graph off.
  void graph_step() {
    if (!graph_.ready() && !graph_warm_) {
      launch_step();
      graph_warm_ = true;
      return;
    }
    if (!graph_.ready()) {
      NvtxScope range("capture train_step");
      graph_.capture(gpu_->stream(), [this] { launch_step(); });
    }
    graph_.launch(gpu_->stream());
  }

  // Points the device counters at batch `next_batch` of the epoch, after `global_step` steps.
  void set_device_counters(long long next_batch, long long global_step) {
    gpu::StepCounters c;
    c.next_batch = next_batch;
    c.batch = next_batch;
    c.global_step = global_step;
    d_counters_.copy_from_host(&c, 1);
  }

  [[noreturn]] void diverged(long long step, const std::string& where) {
    progress_.end();
    std::string ck = file_exists(ckpt_path_) ? fmt("; the last good checkpoint is kept in ", ckpt_path_)
                                             : "; no checkpoint was written yet";
    throw Error(fmt("training diverged in epoch ", epoch_ + 1, " at step ", step + 1, ": the loss is not finite",
                    where.empty() ? "" : "; first non-finite: " + where, ". Lower --lr (now ", cfg_.optim.lr, ")",
                    ck));
  }

  // The epoch's permutation, on the device that trains.
  void make_permutation() {
    if (device_ == Device::CUDA) gpu::epoch_permutation(d_perm_.data(), data_.train.count, cfg_.seed, epoch_, gpu_->stream());
    else h_perm_ = ref::epoch_permutation(data_.train.count, cfg_.seed, epoch_);
  }

  // Reads the device metrics without blocking: the last values that have arrived, and the number
  // of steps of the epoch they cover. Then asks for the current ones (they arrive later).
  void poll_metrics(long long done, double* loss_sum, double* correct, long long* steps) {
    if (device_ != Device::CUDA) {
      *loss_sum = loss_sum_, *correct = correct_sum_, *steps = done;
      return;
    }
    cudaError_t q = cudaEventQuery(acc_event_);
    if (q == cudaErrorNotReady) {
      (void)cudaGetLastError();  // "not ready" is recorded as the last error: clear it, or the next
                                 // launch check would report it as its own failure
    } else {
      CUDA_CHECK(q);
      seen_loss_ = h_acc_[0], seen_correct_ = h_acc_[1], seen_steps_ = pending_steps_;
      CUDA_CHECK(cudaMemcpyAsync(h_acc_, d_acc_.data(), 2 * sizeof(double), cudaMemcpyDeviceToHost, gpu_->stream()));
      CUDA_CHECK(cudaEventRecord(acc_event_, gpu_->stream()));
      pending_steps_ = done;
    }
    *loss_sum = seen_loss_, *correct = seen_correct_, *steps = seen_steps_;
  }
  // Blocks until the metrics of all steps so far are on the host.
  void sync_metrics(long long done, double* loss_sum, double* correct) {
    if (device_ == Device::CUDA) {
      CUDA_CHECK(cudaMemcpyAsync(h_acc_, d_acc_.data(), 2 * sizeof(double), cudaMemcpyDeviceToHost, gpu_->stream()));
      CUDA_CHECK(cudaEventRecord(acc_event_, gpu_->stream()));
      CUDA_CHECK(cudaStreamSynchronize(gpu_->stream()));
      seen_loss_ = h_acc_[0], seen_correct_ = h_acc_[1], seen_steps_ = pending_steps_ = done;
    } else {
      seen_loss_ = loss_sum_, seen_correct_ = correct_sum_, seen_steps_ = done;
    }
    *loss_sum = seen_loss_, *correct = seen_correct_;
  }

  EpochMetrics train_epoch() {
    NvtxScope range("epoch");
    make_permutation();
    loss_sum_ = start_loss_sum_, correct_sum_ = start_correct_;
    if (device_ == Device::CUDA) {
      double init[2] = {start_loss_sum_, start_correct_};
      d_acc_.copy_from_host(init, 2);
      seen_loss_ = start_loss_sum_, seen_correct_ = start_correct_;
      seen_steps_ = pending_steps_ = start_step_;
      CUDA_CHECK(cudaMemcpyAsync(h_acc_, d_acc_.data(), 2 * sizeof(double), cudaMemcpyDeviceToHost, gpu_->stream()));
      CUDA_CHECK(cudaEventRecord(acc_event_, gpu_->stream()));
      // Kept so that a divergence can be replayed step by step to name the layer.
      snap_params_ = params_.to_host(), snap_m_ = m_.to_host(), snap_v_ = v_.to_host();
      snap_global_step_ = global_step_;
      snap_step_ = start_step_;  // after a mid-epoch resume the snapshot is at that step
      set_device_counters(start_step_, global_step_);
    }
    progress_.start(epoch_ + 1, cfg_.epochs, steps_per_epoch_);
    auto t0 = Clock::now();
    const long long poll_every = 200;
    for (long long step = start_step_; step < steps_per_epoch_; ++step) {
      train_step(step);
      long long done = step + 1;
      // On the GPU the last step's figures come from sync_metrics below: a poll there would show
      // the previous copy, which after a short epoch is the one from its start (loss 0, acc 0).
      if (device_ == Device::CPU || (done % poll_every == 0 && done < steps_per_epoch_)) {
        double ls, cs;
        long long counted;
        poll_metrics(done, &ls, &cs, &counted);
        if (device_ == Device::CUDA && !std::isfinite(ls)) replay_divergence();
        double el = seconds_since(t0);
        long long seen = std::max<long long>(1, counted * cfg_.batch);
        double img_s = (done - start_step_) * cfg_.batch / std::max(el, 1e-9);
        double eta = (steps_per_epoch_ - done) * cfg_.batch / std::max(img_s, 1e-9);
        if (counted > 0) progress_.update(done, ls / seen, cs / seen, img_s, eta);  // else nothing arrived yet
      }
      if (cfg_.checkpoint_every > 0 && global_step_ % cfg_.checkpoint_every == 0 && done < steps_per_epoch_) {
        double ls, cs;
        sync_metrics(done, &ls, &cs);
        if (!std::isfinite(ls)) replay_divergence();
        save_checkpoint(epoch_, done, ls, cs, start_seconds_ + seconds_since(t0));
      }
      if (cfg_.stop_after_steps > 0 && global_step_ >= cfg_.stop_after_steps)
        throw Error(fmt("stopped after ", global_step_, " steps (stop_after_steps)"));
    }
    double ls, cs;
    sync_metrics(steps_per_epoch_, &ls, &cs);
    if (!std::isfinite(ls)) replay_divergence();
    if (device_ == Device::CUDA) {
      const double seen = double(steps_per_epoch_) * cfg_.batch;
      const double img_s = (steps_per_epoch_ - start_step_) * cfg_.batch / std::max(seconds_since(t0), 1e-9);
      progress_.update(steps_per_epoch_, ls / seen, cs / seen, img_s, 0.0);
    }
    progress_.end();
    double secs = start_seconds_ + seconds_since(t0);
    EpochMetrics em;
    em.epoch = epoch_ + 1;
    long long n = steps_per_epoch_ * cfg_.batch;
    em.train_loss = ls / n;
    em.train_accuracy = cs / n;
    em.seconds = secs;
    em.images_per_second = n / std::max(secs, 1e-9);
    return em;
  }

  // The GPU found a non-finite loss at a progress point: rerun the epoch from its start, one
  // synchronized step at a time, until the first non-finite loss, and name the layer. Training
  // is deterministic, so the replay meets the same values.
  [[noreturn]] void replay_divergence() {
    params_.copy_from_host(snap_params_);
    m_.copy_from_host(snap_m_);
    v_.copy_from_host(snap_v_);
    global_step_ = snap_global_step_;
    set_device_counters(snap_step_, global_step_);
    replaying_ = true;  // step by step, without the graph
    double init[2] = {0, 0};
    for (long long step = snap_step_; step < steps_per_epoch_; ++step) {
      d_acc_.copy_from_host(init, 2);
      train_step(step);
      std::vector<double> acc = d_acc_.to_host();
      if (!std::isfinite(acc[0])) {
        // Recompute that step's forward and backward from the weights before it to inspect them.
        diverged(step, net_->first_nonfinite(st_));
      }
    }
    diverged(steps_per_epoch_ - 1, "");
  }

  void save_checkpoint(int epochs_done, long long step_in_epoch, double loss_sum, double correct, double secs) {
    NvtxScope range("checkpoint");
    Checkpoint c;
    c.cfg = cfg_;
    c.meta = meta_;
    c.device = device_name(device_);
    c.epochs_done = epochs_done;
    c.step_in_epoch = step_in_epoch;
    c.global_step = global_step_;
    c.epoch_loss_sum = loss_sum;
    c.epoch_correct = correct;
    c.epoch_seconds = secs;
    c.history = history_;
    c.params = params_.to_host();
    c.m = m_.to_host();
    c.v = v_.to_host();
    write_checkpoint(ckpt_path_, c);
  }

  TrainConfig cfg_;
  Progress progress_;
  Device device_ = Device::CPU;
  std::unique_ptr<GpuContext> gpu_;
  Dataset data_;
  std::unique_ptr<Net> net_;
  ModelMeta meta_;
  Tensor params_, grads_, m_, v_;  // flat (P)
  NetState<float> st_;
  Tensor loss_;                     // (B) per-sample loss
  TensorI correct_, labels_;        // (B)
  std::vector<int32_t> h_perm_;     // CPU: the epoch's order
  DeviceBuffer<uint8_t> d_images_, d_labels_;  // GPU: the resident training set
  DeviceBuffer<int32_t> d_perm_;
  DeviceBuffer<double> d_acc_;      // GPU: [loss sum, correct count] of the epoch so far
  DeviceBuffer<gpu::StepCounters> d_counters_;  // GPU: (1) the step's batch and Adam's t
  CapturedGraph graph_;                         // --cuda-graph on: the captured step
  bool graph_warm_ = false, replaying_ = false;
  std::unique_ptr<Evaluator> test_eval_;        // the test set, evaluated after each epoch
  double* h_acc_ = nullptr;         // pinned
  cudaEvent_t acc_event_ = nullptr;
  double seen_loss_ = 0, seen_correct_ = 0;
  long long seen_steps_ = 0, pending_steps_ = 0;
  double loss_sum_ = 0, correct_sum_ = 0;  // CPU accumulators
  std::vector<float> snap_params_, snap_m_, snap_v_;
  long long snap_global_step_ = 0, snap_step_ = 0;
  long long steps_per_epoch_ = 0, start_step_ = 0, global_step_ = 0;
  double start_loss_sum_ = 0, start_correct_ = 0, start_seconds_ = 0;
  int epoch_ = 0;
  std::vector<EpochMetrics> history_;
  EvalResult last_eval_;
  std::string ckpt_path_;
};

}  // namespace

void train(const TrainConfig& cfg) {
  Run run(cfg);
  run.setup();
  run.run();
  run.finish();
}

}  // namespace barecnn
