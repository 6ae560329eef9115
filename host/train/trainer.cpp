// The training run: set-up, the epoch loop, the outputs. The step itself is TrainStep (step.h),
// evaluation is evaluator.h, the progress display progress.h, the files checkpoint.h and report.h.
#include "barecnn/trainer.h"

#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>

#include "barecnn/checkpoint.h"
#include "barecnn/cuda_check.h"
#include "barecnn/error.h"
#include "barecnn/fileutil.h"
#include "barecnn/nvtx.h"
#include "barecnn/report.h"
#include "barecnn/step.h"
#include "progress.h"

namespace barecnn {

std::vector<std::string> default_class_names(int classes, const std::string& data_dir) {
  std::vector<std::string> names;
  if (classes == 10 && data_dir.find("fashion") != std::string::npos)
    names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};
  else
    for (int k = 0; k < classes; ++k) names.push_back(std::to_string(k));
  return names;
}

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string optim_str(const OptimConfig& o) {
  if (o.kind == Optim::Adam)
    return fmt("adam (lr ", o.lr, ", betas ", o.beta1, "/", o.beta2, ", weight decay ", o.weight_decay, ")");
  return fmt("sgd (lr ", o.lr, ", momentum ", o.momentum, ", weight decay ", o.weight_decay, ")");
}

// Resuming continues the saved run with its own settings: the command line only says how to run
// it (these fields change no number; --epochs says how far to go).
TrainConfig resumed_config(const TrainConfig& saved, const TrainConfig& cli) {
  TrainConfig c = saved;
  c.epochs = cli.epochs;
  c.resume = cli.resume;
  c.out = cli.out.empty() ? cli.resume : cli.out;
  if (!cli.data_dir.empty()) c.data_dir = cli.data_dir;
  c.device = cli.device;
  c.quiet = cli.quiet;
  c.checkpoint_every = cli.checkpoint_every;
  c.threads = cli.threads;
  c.cuda_graph = cli.cuda_graph;  // how the step is launched changes no result
  c.fuse = cli.fuse;              // nor does fusing (bitwise the same weights)
  return c;
}

// A point of the run the training can restart from: where the state was, and the state. The last
// checkpoint in memory; a divergence is replayed from it.
struct RestartPoint {
  int epoch = 0;             // epochs done
  long long next_batch = 0;  // batches of the current epoch done
  StepMetrics metrics;       // the current epoch's sums so far
  StepState state;
};

class TrainingRun {
 public:
  TrainingRun(const TrainConfig& cfg, const StepObserver& after_step)
      : cfg_(cfg), after_step_(after_step), progress_(cfg.quiet) {}

  // Everything that can fail on user input fails here, before any training.
  void setup() {
    Checkpoint ck;
    const bool resuming = !cfg_.resume.empty();
    if (resuming) {
      std::string path = path_join(cfg_.resume, "checkpoint.safetensors");
      if (!file_exists(path))
        throw UsageError(fmt("--resume ", cfg_.resume,
                             ": no checkpoint.safetensors in that folder; pass the --out "
                             "folder of the run to continue"));
      ck = read_checkpoint(path);
      cfg_ = resumed_config(ck.cfg, cfg_);
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

    ensure_writable_dir(cfg_.out, resuming ? "--out (or --resume)" : "--out");
    remove_stale_temp_files(cfg_.out);
    std::string why;
    const Device device = choose_device(cfg_.device, &why);
    if (resuming && ck.device != device_name(device))
      std::printf(
          "note: the checkpoint was trained on %s and continues on %s; the weights will not be bitwise "
          "those of an uninterrupted run\n",
          ck.device.c_str(), device_name(device));
    if (cfg_.data_dir.empty()) cfg_.data_dir = default_data_dir();
    data_ = load_dataset(cfg_.data_dir, cfg_.limit);
    const Dims input{1, data_.train.rows, data_.train.cols};
    net_ = std::make_unique<Net>(cfg_.arch, input);
    net_->set_gpu_fusion(cfg_.fuse);
    // A label beyond the net's outputs is named with its file; a net wider than the data's
    // classes is an arch mistake.
    check_labels(data_, net_->num_outputs());
    net_->check_classes(data_.classes, "the data in " + cfg_.data_dir);
    if (data_.train.count < cfg_.batch) {
      std::printf("note: --batch %d is larger than the %d training images; using batch %d\n", cfg_.batch,
                  data_.train.count, data_.train.count);
      cfg_.batch = data_.train.count;
    }
    if (resuming) {
      meta_ = ck.meta;
      if (meta_.arch != net_->spec())
        throw UsageError(fmt("--resume: the checkpoint's net '", meta_.arch, "' differs from '", net_->spec(), "'"));
    } else {
      meta_.arch = net_->spec();
      meta_.input = input;
      meta_.classes = net_->num_outputs();
      const double m = image_mean(data_.train);
      meta_.mean = float(m);
      meta_.std = float(image_std(data_.train, m));
      meta_.class_names = default_class_names(meta_.classes, cfg_.data_dir);
    }
    const size_t P = net_->num_params();
    if (resuming) {
      restart_ = {ck.epochs_done,
                  ck.step_in_epoch,
                  {ck.epoch_loss_sum, ck.epoch_correct, ck.step_in_epoch},
                  {ck.params, ck.m, ck.v, ck.global_step}};
      if (ck.params.size() != P || ck.m.size() != P || ck.v.size() != P)
        throw UsageError(fmt("--resume: the checkpoint holds ", ck.params.size(), " parameters, the net has ", P));
      start_seconds_ = ck.epoch_seconds;
      history_ = ck.history;
    } else {
      restart_.state = {net_->init_params(cfg_.seed), std::vector<float>(P, 0.f), std::vector<float>(P, 0.f), 0};
    }
    print_banner(device, why, resuming ? &ck : nullptr);

    ctx_ = std::make_unique<ExecContext>(device);
    reset_device_memory_peak();  // summary.json's peak_device_bytes: this run's buffers (+ cuBLAS's workspace)
    StepSettings ss;
    ss.batch = cfg_.batch;
    ss.loss = cfg_.loss;
    ss.optim = cfg_.optim;
    ss.mean = meta_.mean;
    ss.std = meta_.std;
    ss.cuda_graph = cfg_.cuda_graph;
    step_ = std::make_unique<TrainStep>(*net_, ctx_->exec(), data_.train, data_.train_labels, ss);
    step_->set_state(restart_.state);
    ckpt_path_ = path_join(cfg_.out, "checkpoint.safetensors");
    test_eval_ = std::make_unique<Evaluator>(*net_, ctx_->exec(), data_.test, data_.test_labels, meta_.mean, meta_.std,
                                             cfg_.loss, device == Device::CUDA ? 1000 : 250);
  }

  void run() {
    for (int epoch = restart_.epoch; epoch < cfg_.epochs; ++epoch) {
      EpochMetrics em = train_epoch(epoch);
      EvalResult ev = test_eval_->run(step_->params().data(), false);
      em.test_loss = ev.loss;
      em.test_accuracy = ev.accuracy;
      history_.push_back(em);
      last_eval_ = ev;
      std::printf(
          "epoch %d/%d  train loss %.4f  train acc %.2f%%  test loss %.4f  test acc %.2f%%  %.1fs  %.0f img/s\n",
          em.epoch, cfg_.epochs, em.train_loss, 100 * em.train_accuracy, em.test_loss, 100 * em.test_accuracy,
          em.seconds, em.images_per_second);
      std::fflush(stdout);
      save_checkpoint(epoch + 1, 0, {}, 0);
      start_seconds_ = 0;
    }
  }

  void finish() {
    const StepState s = step_->state();
    if (history_.empty() || last_eval_.count == 0) {
      // Resumed a finished run: evaluate once so the report is whole.
      last_eval_ = test_eval_->run(step_->params().data(), false);
    }
    save_model(path_join(cfg_.out, "model.safetensors"), *net_, s.params, meta_);
    RunReport r;
    r.arch = net_->spec();
    r.device = device_name(ctx_->exec().device);
    r.seed = cfg_.seed;
    r.batch = cfg_.batch;
    r.limit = cfg_.limit;
    r.optimizer = optim_str(cfg_.optim);
    if (ctx_->exec().device == Device::CUDA) {
      r.device += fmt(" (", gpu_status().name, ")");
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
    for (const ParamEntry& e : net_->params())  // the first conv's filters
      if (net_->layer(e.layer).kind() == LayerKind::Conv) {
        r.conv_weight.assign(s.params.begin() + e.offset, s.params.begin() + e.offset + e.numel());
        r.conv_k = e.dims[0], r.conv_c = e.dims[1], r.conv_kh = e.dims[2], r.conv_kw = e.dims[3];
        break;
      }
    write_report(cfg_.out, r);
    std::printf(
        "test accuracy %.4f, test loss %.4f\nwrote %s/{model.safetensors, summary.json, metrics.csv, "
        "checkpoint.safetensors, loss.png, accuracy.png, confusion.png%s}\n",
        r.test_accuracy, r.test_loss, cfg_.out.c_str(), r.conv_weight.empty() ? "" : ", filters.png");
  }

 private:
  // One epoch. The step's metrics are read back without waiting (after every step where that is
  // cheap, every kPollEvery steps on the GPU) for the progress display and to notice divergence.
  EpochMetrics train_epoch(int epoch) {
    NvtxScope range("epoch");
    constexpr long long kPollEvery = 200;
    const long long steps = step_->steps_per_epoch(), first = restart_.next_batch;
    step_->begin_epoch(cfg_.seed, epoch, first, restart_.metrics);
    progress_.start(epoch + 1, cfg_.epochs, steps);
    const auto t0 = Clock::now();
    auto show = [&](const StepMetrics& m, long long done) {
      const double img_s = (done - first) * cfg_.batch / std::max(seconds_since(t0), 1e-9);
      const double eta = (steps - done) * cfg_.batch / std::max(img_s, 1e-9);
      const double seen = double(std::max<long long>(1, m.steps * cfg_.batch));
      if (m.steps > 0) progress_.update(done, m.loss_sum / seen, m.correct / seen, img_s, eta);
    };
    StepMetrics seen = restart_.metrics;
    for (long long done = first + 1; done <= steps; ++done) {
      step_->run();
      if (done < steps) {  // (the last step's figures: wait_metrics below)
        if (step_->metrics_cheap() || done % kPollEvery == 0) {
          if (step_->poll_metrics(&seen) && !std::isfinite(seen.loss_sum)) replay_divergence(epoch);
          show(seen, done);
        }
        if (cfg_.checkpoint_every > 0 && step_->global_step() % cfg_.checkpoint_every == 0) {
          const StepMetrics m = step_->wait_metrics();
          if (!std::isfinite(m.loss_sum)) replay_divergence(epoch);
          save_checkpoint(epoch, done, m, start_seconds_ + seconds_since(t0));
        }
      }
      if (after_step_) after_step_(step_->global_step());
    }
    const StepMetrics m = step_->wait_metrics();
    if (!std::isfinite(m.loss_sum)) replay_divergence(epoch);
    show(m, steps);
    progress_.end();
    const double secs = start_seconds_ + seconds_since(t0);
    const long long n = steps * cfg_.batch;
    EpochMetrics em;
    em.epoch = epoch + 1;
    em.train_loss = m.loss_sum / n;
    em.train_accuracy = m.correct / n;
    em.seconds = secs;
    em.images_per_second = n / std::max(secs, 1e-9);
    return em;
  }

  // A non-finite loss was seen: rerun from the last checkpoint in memory, one step at a time and
  // waiting for each, up to the first non-finite loss, and name the layer. Training is
  // deterministic, so the replay meets the same values.
  [[noreturn]] void replay_divergence(int epoch) {
    step_->set_state(restart_.state);
    step_->begin_epoch(cfg_.seed, epoch, restart_.next_batch, {});
    for (long long done = restart_.next_batch + 1; done <= step_->steps_per_epoch(); ++done) {
      step_->run(/*eager=*/true);
      if (!std::isfinite(step_->wait_metrics().loss_sum)) diverged(epoch, done, step_->first_nonfinite());
    }
    diverged(epoch, step_->steps_per_epoch(), "");
  }

  [[noreturn]] void diverged(int epoch, long long step, const std::string& where) {
    progress_.end();
    std::string ck = file_exists(ckpt_path_) ? fmt("; the last good checkpoint is kept in ", ckpt_path_)
                                             : "; no checkpoint was written yet";
    throw Error(fmt("training diverged in epoch ", epoch + 1, " at step ", step, ": the loss is not finite",
                    where.empty() ? "" : "; first non-finite: " + where, ". Lower --lr (now ", cfg_.optim.lr, ")", ck));
  }

  // Writes the checkpoint and keeps it as the point a divergence is replayed from.
  void save_checkpoint(int epochs_done, long long step_in_epoch, const StepMetrics& m, double secs) {
    NvtxScope range("checkpoint");
    Checkpoint c;
    c.cfg = cfg_;
    c.meta = meta_;
    c.device = device_name(ctx_->exec().device);
    c.epochs_done = epochs_done;
    c.step_in_epoch = step_in_epoch;
    c.epoch_loss_sum = m.loss_sum;
    c.epoch_correct = m.correct;
    c.epoch_seconds = secs;
    c.history = history_;
    StepState s = step_->state();
    c.global_step = s.global_step;
    c.params = s.params, c.m = s.m, c.v = s.v;
    write_checkpoint(ckpt_path_, c);
    restart_ = {epochs_done, step_in_epoch, {m.loss_sum, m.correct, step_in_epoch}, std::move(s)};
  }

  void print_banner(Device device, const std::string& why, const Checkpoint* ck) const {
    std::printf("barecnn train\n");
    std::printf("  device   : %s (%s)\n", device_name(device), why.c_str());
    if (device == Device::CPU) std::printf("  threads  : %d\n", omp_get_max_threads());
    std::printf("  data     : %s: %d training images%s, %d test images, %dx%d, %d classes\n", cfg_.data_dir.c_str(),
                data_.train.count, cfg_.limit > 0 ? fmt(" (--limit ", cfg_.limit, ")").c_str() : "", data_.test.count,
                data_.train.rows, data_.train.cols, data_.classes);
    std::printf("  normalize: (x/255 - %.4f) / %.4f\n", meta_.mean, meta_.std);
    std::printf("  net      : %s\n%s", net_->spec().c_str(), net_->summary().c_str());
    std::printf("  training : %d epochs x %lld steps of batch %d, %s, loss %s, seed %llu\n", cfg_.epochs,
                (long long)(data_.train.count / cfg_.batch), cfg_.batch, optim_str(cfg_.optim).c_str(),
                loss_name(cfg_.loss).c_str(), (unsigned long long)cfg_.seed);
    if (device == Device::CUDA)
      std::printf("  launches : %s%s\n",
                  cfg_.cuda_graph ? "the step as one CUDA Graph (captured at the second step)"
                                  : "kernel by kernel (--cuda-graph on: one CUDA Graph)",
                  cfg_.fuse ? "; each conv does the ReLU after it (--fuse on)" : "");
    std::printf("  output   : %s\n", cfg_.out.c_str());
    if (ck && ck->epochs_done == cfg_.epochs)
      std::printf("  resume   : %s has all %d epochs; writing its outputs\n", cfg_.resume.c_str(), ck->epochs_done);
    else if (ck)
      std::printf("  resume   : from %s at epoch %d, step %lld\n", cfg_.resume.c_str(), ck->epochs_done + 1,
                  ck->step_in_epoch);
    std::fflush(stdout);
  }

  TrainConfig cfg_;
  StepObserver after_step_;
  Progress progress_;
  Dataset data_;
  std::unique_ptr<Net> net_;
  ModelMeta meta_;
  std::unique_ptr<ExecContext> ctx_;
  std::unique_ptr<TrainStep> step_;
  std::unique_ptr<Evaluator> test_eval_;  // the test set, evaluated after each epoch
  RestartPoint restart_;                  // where the run starts, then its last checkpoint
  double start_seconds_ = 0;              // seconds of the current epoch before a resume
  std::vector<EpochMetrics> history_;
  EvalResult last_eval_;
  std::string ckpt_path_;
};

}  // namespace

void train(const TrainConfig& cfg, const StepObserver& after_step) {
  TrainingRun run(cfg, after_step);
  run.setup();
  run.run();
  run.finish();
}

}  // namespace barecnn
