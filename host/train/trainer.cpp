// The training run: set-up, the epoch loop, the outputs. The step itself is TrainStep (step.h),
// evaluation is evaluator.h, the progress display progress.h, the files checkpoint.h, model_io.h
// and report.h, the checks before a run and the stop signals run_setup.h.
#include "barecnn/trainer.h"

#include <omp.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "barecnn/checkpoint.h"
#include "barecnn/cuda_check.h"
#include "barecnn/error.h"
#include "barecnn/evaluator.h"
#include "barecnn/fileutil.h"
#include "barecnn/idx.h"
#include "barecnn/names.h"
#include "barecnn/nvtx.h"
#include "barecnn/report.h"
#include "barecnn/step.h"
#include "progress.h"
#include "run_setup.h"

namespace barecnn {

namespace {

namespace fs = std::filesystem;

constexpr int kEvalBatch = 250;  // test images per evaluation batch, both devices

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string optim_str(const OptimConfig& o) {
  std::string lr = fmt("lr ", o.lr);
  if (o.schedule.kind != LrScheduleKind::Constant) lr += " " + lr_schedule_str(o.schedule);
  const int w = o.schedule.warmup_epochs;
  if (w > 0) lr += fmt(" after ", w, " warmup epoch", w == 1 ? "" : "s");
  if (o.kind == Optim::Adam)
    return fmt("adam (", lr, ", betas ", o.beta1, "/", o.beta2, ", weight decay ", o.weight_decay, ")");
  return fmt("sgd (", lr, ", momentum ", o.momentum, ", weight decay ", o.weight_decay, ")");
}

// The run stopped by a signal after a checkpoint; unwinds to train().
struct Stopped {
  int signal;
};

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
      : spec_(cfg.spec), opt_(cfg.opt), after_step_(after_step), progress_(cfg.opt.quiet) {}

  // Everything that can fail on user input fails here, before any training and before anything in
  // the output folder changes.
  void setup() {
    Checkpoint ck;
    const bool resuming = !opt_.resume.empty();
    LrSchedule& sched = spec_.optim.schedule;
    if (sched.kind == LrScheduleKind::Cosine && sched.epochs == 0) sched.epochs = opt_.epochs;  // over this run
    if (!resuming && (sched.warmup_epochs < 0 || sched.warmup_epochs >= opt_.epochs))
      throw UsageError(fmt("--warmup-epochs: expected a whole number of epochs from 0 to ", opt_.epochs - 1,
                           " (less than --epochs ", opt_.epochs, "), got ", sched.warmup_epochs));
    if (resuming) {
      ck = read_resume_checkpoint(opt_, spec_);
      spec_ = ck.spec;  // (its arch: the model's canonical spec, the metadata's "arch")
      if (opt_.out.empty()) opt_.out = opt_.resume;
      if (opt_.data_dir.empty()) opt_.data_dir = ck.meta.data.dir.empty() ? default_data_dir() : ck.meta.data.dir;
    }
    if (opt_.epochs < 1) throw UsageError(fmt("--epochs must be >= 1, got ", opt_.epochs));
    const LrSchedule& runs = spec_.optim.schedule;
    if (runs.kind == LrScheduleKind::Cosine && opt_.epochs > runs.epochs)
      throw UsageError(fmt("--epochs ", opt_.epochs, ": the rate schedule ", lr_schedule_str(runs),
                           " reaches 0 after epoch ", runs.epochs, "; train at most ", runs.epochs,
                           " epochs in all (a resumed run keeps its schedule), or give --lr-schedule cosine:",
                           opt_.epochs, " to a new run"));
    if (spec_.batch < 1) throw UsageError(fmt("--batch must be >= 1, got ", spec_.batch));
    if (!(spec_.optim.lr > 0) || !std::isfinite(spec_.optim.lr))
      throw UsageError(fmt("--lr must be a positive finite number, got ", spec_.optim.lr));
    if (opt_.threads > 0) omp_set_num_threads(opt_.threads);

    std::string latest_note;
    if (opt_.out.empty()) opt_.out = new_run_folder(&latest_note);
    ensure_writable_dir(opt_.out, resuming ? "--out (or --resume)" : "--out");
    std::error_code ec;
    const bool in_place = resuming && fs::equivalent(opt_.out, opt_.resume, ec);
    const std::vector<std::string> others = in_place ? std::vector<std::string>{} : run_files_in(opt_.out);
    if (!others.empty() && !opt_.overwrite) {
      std::string list;
      for (const std::string& f : others) list += (list.empty() ? "" : ", ") + f;
      throw UsageError(fmt("--out ", opt_.out, " holds the files of another run (", list,
                           "); pass another --out, --resume ", opt_.out, " to continue that run, or --overwrite to ",
                           "replace its files"));
    }
    remove_stale_temp_files(opt_.out);

    std::string why;
    const Device device = choose_device(opt_.device, &why);
    if (resuming && ck.device != device_name(device))
      std::printf(
          "note: the checkpoint was trained on %s and continues on %s; the weights will not be bitwise "
          "those of an uninterrupted run\n",
          ck.device.c_str(), device_name(device));
    if (opt_.data_dir.empty()) opt_.data_dir = default_data_dir();
    data_ = load_dataset(opt_.data_dir, spec_.limit);
    if (resuming) check_same_data(ck.meta.data, data_, opt_);
    check_augment_fits(spec_.augment, data_.train.rows, data_.train.cols);
    const Dims input{1, data_.train.rows, data_.train.cols};
    net_ = std::make_unique<Net>(spec_.arch, input);
    net_->set_fusion(fuse_for(opt_.fuse));
    // A net that does not end with one output per class is an arch mistake; where a label is
    // beyond the net's outputs the message says where (a stray label is a data mistake).
    net_->check_classes(data_.classes, "the data in " + opt_.data_dir + first_label_beyond(data_, net_->num_outputs()));
    spec_.arch = net_->spec();
    const Layer& last = net_->layer(net_->num_layers() - 1);
    if (last.kind() == LayerKind::Softmax &&
        (spec_.loss == Loss::SoftmaxCrossEntropy || spec_.loss == Loss::BinaryCrossEntropy))
      std::printf(
          "warning: the net ends with softmax and --loss %s takes logits (it applies its own %s), so it sees "
          "squashed values and learns slowly; drop the last softmax (predict reports probabilities anyway)\n",
          loss_name(spec_.loss).c_str(), spec_.loss == Loss::SoftmaxCrossEntropy ? "softmax" : "sigmoid");
    if (data_.train.count < spec_.batch) {
      std::printf("note: --batch %d is larger than the %d training images; using batch %d\n", spec_.batch,
                  data_.train.count, data_.train.count);
      spec_.batch = data_.train.count;
    }
    net_->check_train_batch(spec_.batch);  // (batchnorm over features needs two samples)
    if (resuming) {
      meta_ = ck.meta;
      meta_.data.dir = opt_.data_dir;  // (where the same data is now)
      if (meta_.arch != net_->spec())
        throw UsageError(fmt("--resume: the checkpoint's net '", meta_.arch, "' differs from '", net_->spec(), "'"));
      if (!opt_.class_names.empty() && opt_.class_names != meta_.class_names)
        std::printf("note: --class-names is ignored; the run keeps the class names it started with\n");
    } else {
      meta_.arch = net_->spec();
      meta_.input = input;
      meta_.classes = net_->num_outputs();
      const double m = image_mean(data_.train);
      meta_.mean = float(m);
      meta_.std = float(image_std(data_.train, m));
      meta_.class_names = choose_class_names(opt_, data_, net_->num_outputs());
      meta_.data = {opt_.data_dir, data_.train_fingerprint, data_.test_fingerprint};
    }
    const size_t P = net_->num_params();
    if (resuming) {
      restart_ = {ck.epochs_done,
                  ck.step_in_epoch,
                  {ck.epoch_loss_sum, ck.epoch_correct, ck.step_in_epoch},
                  {ck.params, ck.m, ck.v, ck.global_step}};
      if (ck.params.size() != net_->state_size() || ck.m.size() != P || ck.v.size() != P)
        throw UsageError(
            fmt("--resume: the checkpoint holds ", ck.params.size(), " values, the net has ", net_->state_size()));
      start_seconds_ = ck.epoch_seconds;
      history_ = ck.history;
      for (EpochMetrics& e : history_)
        if (e.lr == 0) e.lr = epoch_lr(e.epoch - 1);  // (records from before the rate was recorded)
      ckpt_is_ours_ = in_place;
    } else {
      restart_.state = {net_->init_params(spec_.seed), std::vector<float>(P, 0.f), std::vector<float>(P, 0.f), 0};
    }
    if (!others.empty()) {  // --overwrite: the other run's files go, now that nothing can fail on input
      for (const std::string& f : others) fs::remove(path_join(opt_.out, f));
      std::printf("note: --overwrite removed %zu files of an earlier run from %s\n", others.size(), opt_.out.c_str());
    }
    print_banner(device, why, latest_note, resuming ? &ck : nullptr);

    ctx_ = std::make_unique<ExecContext>(device);
    reset_device_memory_peak();  // summary.json's peak_device_bytes: this run's buffers (+ cuBLAS's workspace)
    StepSettings ss;
    ss.batch = spec_.batch;
    ss.loss = spec_.loss;
    ss.optim = spec_.optim;
    ss.mean = meta_.mean;
    ss.std = meta_.std;
    ss.cuda_graph = opt_.cuda_graph;
    ss.augment = spec_.augment;
    step_ = std::make_unique<TrainStep>(*net_, ctx_->exec(), data_.train, data_.train_labels, ss);
    step_->set_state(restart_.state);
    ckpt_path_ = path_join(opt_.out, "checkpoint.safetensors");
    // 250 test images a batch on either device: the evaluator's activations (forward only) sit
    // beside the training step's buffers, and at 1000 on the GPU they were most of the run's peak
    // memory (an H200, 2026-12-04: deep at batch 64 held 1418 MiB, PyTorch 623; RESULTS.md).
    test_eval_ = std::make_unique<Evaluator>(*net_, ctx_->exec(), data_.test, data_.test_labels, meta_.mean, meta_.std,
                                             spec_.loss, kEvalBatch);
  }

  // The epochs; after each the checkpoint, then the model and the records. Returns the exit status.
  int run() {
    StopSignals signals;
    signals_ = &signals;
    try {
      for (int epoch = restart_.epoch; epoch < opt_.epochs; ++epoch) {
        EpochMetrics em = train_epoch(epoch);
        EvalResult ev = test_eval_->run(step_->params().data(), false);
        em.test_loss = ev.loss;
        em.test_accuracy = ev.accuracy;
        history_.push_back(em);
        last_eval_ = ev;
        std::printf(
            "epoch %d/%d  train loss %.4f  train acc %.2f%%  test loss %.4f  test acc %.2f%%  %.1fs  %.0f img/s\n",
            em.epoch, opt_.epochs, em.train_loss, 100 * em.train_accuracy, em.test_loss, 100 * em.test_accuracy,
            em.seconds, em.images_per_second);
        if (!chance_noted_) {
          const std::string note = chance_note(em, net_->num_outputs(), spec_.loss);
          if (!note.empty()) std::printf("%s\n", note.c_str());
          chance_noted_ = !note.empty();
        }
        std::fflush(stdout);
        save_checkpoint(epoch + 1, 0, {}, 0);
        start_seconds_ = 0;
        write_outputs();
      }
    } catch (const Stopped& s) {
      signals_ = nullptr;
      return 128 + s.signal;
    }
    signals_ = nullptr;
    if (history_.empty() || last_eval_.count == 0) {
      // Resumed a finished run: evaluate once so the records are whole.
      last_eval_ = test_eval_->run(step_->params().data(), false);
      write_outputs();
    }
    std::printf("test accuracy %.4f, test loss (%s) %.4f\nwrote %s/{%s}\n", last_eval_.accuracy,
                loss_name(spec_.loss).c_str(), last_eval_.loss, opt_.out.c_str(), written_.c_str());
    return 0;
  }

 private:
  // The learning rate epoch `epoch` (0-based) records: the rate of its last step (lr_at, the
  // value the optimizer used), the float as its shortest decimal (0.01, not 0.009999999776).
  double epoch_lr(int epoch) const {
    const long long spe = data_.train.count / spec_.batch;  // (TrainStep::steps_per_epoch)
    return std::stod(shortest_float(lr_at(spec_.optim, (epoch + 1) * spe, spe)));
  }

  // One epoch. The step's metrics are read back without waiting (after every step where that is
  // cheap, every kPollEvery steps on the GPU) for the progress display and to notice divergence.
  EpochMetrics train_epoch(int epoch) {
    NvtxScope range("epoch");
    constexpr long long kPollEvery = 200;
    const long long steps = step_->steps_per_epoch(), first = restart_.next_batch;
    step_->begin_epoch(spec_.seed, epoch, first, restart_.metrics);
    progress_.start(epoch + 1, opt_.epochs, steps);
    const auto t0 = Clock::now();
    auto show = [&](const StepMetrics& m, long long done) {
      const double img_s = (done - first) * spec_.batch / std::max(seconds_since(t0), 1e-9);
      const double eta = (steps - done) * spec_.batch / std::max(img_s, 1e-9);
      const double seen = double(std::max<long long>(1, m.steps * spec_.batch));
      if (m.steps > 0) progress_.update(done, m.loss_sum / seen, m.correct / seen, img_s, eta);
    };
    StepMetrics seen = restart_.metrics;
    for (long long done = first + 1; done <= steps; ++done) {
      if (signals_->received()) stop(epoch, done - 1, start_seconds_ + seconds_since(t0));
      step_->run();
      if (done < steps) {  // (the last step's figures: wait_metrics below)
        if (step_->metrics_cheap() || done % kPollEvery == 0) {
          if (step_->poll_metrics(&seen) && !std::isfinite(seen.loss_sum)) replay_divergence(epoch);
          show(seen, done);
        }
        if (opt_.checkpoint_every > 0 && step_->global_step() % opt_.checkpoint_every == 0) {
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
    const long long n = steps * spec_.batch;
    EpochMetrics em;
    em.epoch = epoch + 1;
    em.train_loss = m.loss_sum / n;
    em.train_accuracy = m.correct / n;
    em.seconds = secs;
    em.images_per_second = n / std::max(secs, 1e-9);
    em.lr = epoch_lr(epoch);
    return em;
  }

  // A signal asked the run to stop, `done` steps into the epoch: checkpoint there (unless the last
  // checkpoint is there already), say how to continue, and unwind.
  [[noreturn]] void stop(int epoch, long long done, double secs) {
    progress_.end();
    if (!ckpt_is_ours_ || restart_.epoch != epoch || restart_.next_batch != done) {
      const StepMetrics m = step_->wait_metrics();
      if (!std::isfinite(m.loss_sum)) replay_divergence(epoch);
      save_checkpoint(epoch, done, m, secs);
    }
    const int sig = signals_->received();
    const std::string cmd = resume_command(opt_);
    std::printf("stopped by %s in epoch %d after step %lld of %lld; the checkpoint is %s\ncontinue with: %s\n",
                sig == SIGINT ? "SIGINT (Ctrl-C)" : "SIGTERM", epoch + 1, done, step_->steps_per_epoch(),
                ckpt_path_.c_str(), cmd.c_str());
    std::fflush(stdout);
    throw Stopped{sig};
  }

  // A non-finite loss was seen: rerun from the last checkpoint in memory, one step at a time and
  // waiting for each, up to the first non-finite loss, and name the layer. Training is
  // deterministic, so the replay meets the same values.
  [[noreturn]] void replay_divergence(int epoch) {
    step_->set_state(restart_.state);
    step_->begin_epoch(spec_.seed, epoch, restart_.next_batch, {});
    for (long long done = restart_.next_batch + 1; done <= step_->steps_per_epoch(); ++done) {
      step_->run(/*eager=*/true);
      if (!std::isfinite(step_->wait_metrics().loss_sum)) diverged(epoch, done, step_->first_nonfinite());
    }
    diverged(epoch, step_->steps_per_epoch(), "");
  }

  [[noreturn]] void diverged(int epoch, long long step, const std::string& where) {
    progress_.end();
    std::string ck =
        ckpt_is_ours_ ? fmt("; the last good checkpoint is kept in ", ckpt_path_) : "; no checkpoint was written yet";
    throw Error(fmt("training diverged in epoch ", epoch + 1, " at step ", step, ": the loss is not finite",
                    where.empty() ? "" : "; first non-finite: " + where, ". Lower --lr (now ", spec_.optim.lr, ")",
                    ck));
  }

  // Writes the checkpoint and keeps it as the point a divergence is replayed from.
  void save_checkpoint(int epochs_done, long long step_in_epoch, const StepMetrics& m, double secs) {
    NvtxScope range("checkpoint");
    Checkpoint c;
    c.spec = spec_;
    c.meta = meta_;
    c.device = device_name(ctx_->exec().device);
    c.epochs_asked = opt_.epochs;
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
    ckpt_is_ours_ = true;
    restart_ = {epochs_done, step_in_epoch, {m.loss_sum, m.correct, step_in_epoch}, std::move(s)};
  }

  // The model and the records of the epochs done so far.
  void write_outputs() {
    NvtxScope range("outputs");
    const StepState& s = restart_.state;  // (written at the end of the epoch)
    save_model(path_join(opt_.out, "model.safetensors"), *net_, s.params, meta_);
    RunReport r;
    r.spec = spec_;
    r.device = device_name(ctx_->exec().device);
    r.epochs_asked = opt_.epochs;
    r.completed = int(history_.size()) >= opt_.epochs;
    r.fuse = net_->fusion();
    if (ctx_->exec().device == Device::CUDA) {
      r.device += fmt(" (", gpu_status().name, ")");
      r.cuda_graph = opt_.cuda_graph;
      r.peak_device_bytes = (long long)device_memory_stats().peak;
    }
    r.test_accuracy = last_eval_.accuracy;
    r.test_loss = last_eval_.loss;
    r.epochs = history_;
    r.confusion = last_eval_.confusion;
    r.classes = net_->num_outputs();
    r.class_names = meta_.class_names;
    r.data = meta_.data;
    for (const ParamEntry& e : net_->params())  // the first conv's filters
      if (net_->layer(e.layer).kind() == LayerKind::Conv) {
        r.conv_weight.assign(s.params.begin() + e.offset, s.params.begin() + e.offset + e.numel());
        r.conv_k = e.dims[0], r.conv_c = e.dims[1], r.conv_kh = e.dims[2], r.conv_kw = e.dims[3];
        break;
      }
    write_report(opt_.out, r);
    written_ = fmt("model.safetensors, summary.json, metrics.csv, checkpoint.safetensors, loss.png, accuracy.png, ",
                   "confusion.png", r.conv_weight.empty() ? "" : ", filters.png");
  }

  void print_banner(Device device, const std::string& why, const std::string& latest_note, const Checkpoint* ck) const {
    std::printf("barecnn train\n");
    std::printf("  device   : %s (%s)\n", device_name(device), why.c_str());
    if (device == Device::CPU) std::printf("  threads  : %d\n", omp_get_max_threads());
    const KnownData* known = known_data(data_.train_fingerprint, data_.test_fingerprint);
    std::printf("  data     : %s%s: %d training images%s, %d test images, %dx%d, %d classes\n", opt_.data_dir.c_str(),
                known ? fmt(" (", known->name, ")").c_str() : "", data_.train.count,
                spec_.limit > 0 ? fmt(" (--limit ", spec_.limit, ")").c_str() : "", data_.test.count, data_.train.rows,
                data_.train.cols, data_.classes);
    std::printf("  normalize: (x/255 - %.4f) / %.4f\n", meta_.mean, meta_.std);
    std::printf("  net      : %s\n%s", net_->spec().c_str(), net_->summary().c_str());
    std::printf("  training : %d epochs x %lld steps of batch %d, %s, loss %s, seed %llu, augment %s\n", opt_.epochs,
                (long long)(data_.train.count / spec_.batch), spec_.batch, optim_str(spec_.optim).c_str(),
                loss_name(spec_.loss).c_str(), (unsigned long long)spec_.seed, augment_str(spec_.augment).c_str());
    if (device == Device::CUDA && opt_.threads > 0)
      std::printf("note: --threads applies to the CPU; this run trains on the GPU\n");
    if (device == Device::CUDA)
      std::printf("  launches : %s%s\n",
                  opt_.cuda_graph ? "the step as one CUDA Graph (captured at the second step)"
                                  : "kernel by kernel (--cuda-graph on: one CUDA Graph)",
                  net_->fusion() ? "; each conv does the ReLU after it (--fuse off: layer by layer)" : "");
    else if (opt_.cuda_graph)
      std::printf("note: --cuda-graph applies only on the GPU; the CPU runs the step layer by layer\n");
    if (device == Device::CPU && net_->fusion())
      std::printf("  fusion   : a conv followed by relu applies it in its own loops (--fuse off: layer by layer)\n");
    std::printf("  output   : %s%s\n", opt_.out.c_str(), latest_note.c_str());
    if (ck && ck->epochs_done == opt_.epochs)
      std::printf("  resume   : %s has all %d epochs; writing its outputs\n", opt_.resume.c_str(), ck->epochs_done);
    else if (ck)
      std::printf("  resume   : from %s at epoch %d, step %lld\n", opt_.resume.c_str(), ck->epochs_done + 1,
                  ck->step_in_epoch);
    std::fflush(stdout);
  }

  RunSpec spec_;
  RunOptions opt_;
  StepObserver after_step_;
  Progress progress_;
  Dataset data_;
  std::unique_ptr<Net> net_;
  ModelMeta meta_;
  std::unique_ptr<ExecContext> ctx_;
  std::unique_ptr<TrainStep> step_;
  std::unique_ptr<Evaluator> test_eval_;  // the test set, evaluated after each epoch
  bool chance_noted_ = false;             // chance_note printed (once a run)
  RestartPoint restart_;                  // where the run starts, then its last checkpoint
  double start_seconds_ = 0;              // seconds of the current epoch before a resume
  std::vector<EpochMetrics> history_;
  EvalResult last_eval_;
  std::string ckpt_path_;
  bool ckpt_is_ours_ = false;             // the checkpoint in the output folder is this run's
  const StopSignals* signals_ = nullptr;  // while run() trains
  std::string written_;                   // the files write_outputs wrote
};

}  // namespace

int train(const TrainConfig& cfg, const StepObserver& after_step) {
  TrainingRun run(cfg, after_step);
  run.setup();
  return run.run();
}

}  // namespace barecnn
