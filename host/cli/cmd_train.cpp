// `barecnn train`: the options of a training run; the run itself is barecnn::train (trainer.h).
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "barecnn/arch.h"
#include "barecnn/error.h"
#include "barecnn/loss.h"
#include "barecnn/names.h"
#include "barecnn/trainer.h"
#include "commands.h"

namespace barecnn::cli {

namespace {

// "a,b,c" -> {"a", "b", "c"}; an empty name is an error.
std::vector<std::string> parse_class_names(const std::string& s) {
  std::vector<std::string> names;
  size_t start = 0;
  while (true) {
    size_t comma = s.find(',', start);
    std::string n = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (n.empty()) throw UsageError(fmt("--class-names: an empty name in '", s, "'; expected e.g. cat,dog,bird"));
    names.push_back(n);
    if (comma == std::string::npos) return names;
    start = comma + 1;
  }
}

}  // namespace

Runner add_train(CLI::App& app) {
  struct Opts {
    TrainConfig tc;
    std::string optimizer = "sgd", loss = "cross_entropy", cuda_graph = "off", fuse = "auto", seed = "1", class_names;
    std::string lr_schedule = "constant", augment = "none";
    int warmup_epochs = 0;
    double lr = 0.01, momentum = 0.9, wd = 0;
  };
  auto o = std::make_shared<Opts>();
  RunSpec& spec = o->tc.spec;
  RunOptions& opt = o->tc.opt;
  auto* train = app.add_subcommand("train", "train a net and write model, metrics, plots and a checkpoint to --out");
  train->add_option("--data", opt.data_dir,
                    "folder with the four IDX files (default: Fashion-MNIST from the Debian package; with --resume: "
                    "the run's data)");
  train
      ->add_option("--arch", spec.arch,
                   fmt("arch spec or preset (", preset_names(), "; fashion brings its training recipe: see README)"))
      ->capture_default_str();
  train->add_option("--device", opt.device, "auto, cpu or cuda")->capture_default_str();
  train->add_option("--epochs", opt.epochs, "epochs in all (with --resume: including those already done)")
      ->capture_default_str();
  train->add_option("--batch", spec.batch, "batch size")->capture_default_str();
  train->add_option("--lr", o->lr, "learning rate (default 0.01 for sgd, 0.001 for adam)")->capture_default_str();
  train
      ->add_option("--lr-schedule", o->lr_schedule,
                   "the rate over the run: constant; step:E1,E2,...:GAMMA (times GAMMA after epoch E1, again after "
                   "E2, ...: epoch E1+1 is the first at the lower rate); cosine (per step from --lr down to 0 at the "
                   "end of --epochs; cosine:E over E epochs)")
      ->capture_default_str();
  train
      ->add_option("--warmup-epochs", o->warmup_epochs,
                   "raise the rate linearly, step by step, over the first N epochs: with S steps per epoch, step k "
                   "of the first N x S runs at k/(N x S) of the schedule's rate (0: none; less than --epochs)")
      ->capture_default_str();
  train->add_option("--momentum", o->momentum, "SGD momentum (0: plain gradient descent)")->capture_default_str();
  train->add_option("--weight-decay", o->wd, "L2 weight decay")->capture_default_str();
  train->add_option("--optimizer", o->optimizer, "sgd or adam")->capture_default_str();
  train->add_option("--loss", o->loss, "cross_entropy, bce, mse, msle, l2, l1, mae, mape")->capture_default_str();
  train->add_option("--seed", o->seed, "random seed (init and data order), 0 to 2^64-1")->capture_default_str();
  train->add_option("--limit", spec.limit, "train on the first N training images (0: all)")->capture_default_str();
  train
      ->add_option("--augment", o->augment,
                   "augment each training sample in the step's gather: crop:P pads the image with P black pixels "
                   "on each side and crops a random window of the image's size (a shift of up to P pixels each "
                   "way, P from 1 to half the image side), flip mirrors it left-right with probability 1/2, "
                   "crop:P,flip does both (torchvision's RandomCrop(size, padding=P) then "
                   "RandomHorizontalFlip()); none: off. Flips suit clothes (Fashion-MNIST: a mirrored shirt is a "
                   "shirt) but not digits (MNIST: a mirrored 2 is not a 2); evaluation never augments")
      ->capture_default_str();
  train->add_option("--class-names", o->class_names,
                    "the classes' names, comma-separated, in label order (default: Fashion-MNIST's when the data "
                    "is Fashion-MNIST, else 0, 1, ...)");
  train->add_option("--threads", opt.threads, "CPU threads (0: all cores)")->capture_default_str();
  train->add_option("--out", opt.out, "output folder (default: runs/N, a new one; runs/latest links to it)");
  train->add_flag("--overwrite", opt.overwrite, "--out may hold another run's files: remove them first");
  train->add_option("--resume", opt.resume, "continue the run whose checkpoint is in this folder, with its settings");
  train->add_option("--checkpoint-every", opt.checkpoint_every, "also checkpoint every N steps (0: each epoch)")
      ->capture_default_str();
  train->add_flag("--quiet", opt.quiet, "no progress display");
  train
      ->add_option("--cuda-graph", o->cuda_graph,
                   "on: launch each GPU training step as one captured CUDA Graph (same results; NVTX ranges "
                   "per layer only at the capture), off: kernel by kernel")
      ->capture_default_str();
  train
      ->add_option("--fuse", o->fuse,
                   "on: each conv applies the ReLU that follows it in its own kernels (GPU) or loops (CPU), "
                   "and on the CPU a max pooling after that ReLU too, forward and backward (the same results to "
                   "the bit), off: every layer on its own, auto (the default): on")
      ->capture_default_str();
  train->footer(
      "Examples:\n"
      "  barecnn train                                     # paper net, 3 epochs, Fashion-MNIST\n"
      "  barecnn train --arch deep --optimizer adam --lr 0.001 --epochs 10 --out runs/deep\n"
      "  barecnn train --epochs 30 --lr 0.1 --lr-schedule step:15,25:0.1 --warmup-epochs 1\n"
      "  barecnn train --device cpu --limit 5000 --epochs 1 # a quick CPU run\n"
      "  barecnn train --arch deep --epochs 20 --augment crop:2,flip # augmented Fashion-MNIST\n"
      "  barecnn train --arch fashion                      # its recipe: 94% on Fashion-MNIST in 30 epochs\n"
      "  barecnn train --arch \"conv(16,3,pad=1) relu maxpool(2) dense(10)\" --loss mse\n"
      "  barecnn train --resume runs/deep --epochs 20      # continue a run\n"
      "Ctrl-C (or SIGTERM) stops after the current step with a checkpoint there and prints the command\n"
      "that continues the run; a second Ctrl-C stops at once.");
  return [o, train] {
    // A preset's recipe (arch.h preset_recipe): each of its flags that the command line does not
    // give takes the recipe's value, as if it had been typed. A resumed run keeps its own settings;
    // the rate and momentum are the recipe optimizer's, so another --optimizer leaves them alone.
    if (o->tc.opt.resume.empty()) {
      std::string taken;
      const bool own_optimizer = train->count("--optimizer") > 0;
      for (auto& [flag, value] : preset_recipe(o->tc.spec.arch)) {
        if (train->count(flag) > 0) continue;
        if ((flag == "--lr" || flag == "--momentum") && own_optimizer) continue;
        if (flag == "--warmup-epochs" && std::atoi(value.c_str()) >= o->tc.opt.epochs) {  // (--epochs comes first)
          taken += fmt(" (no warmup: it needs --epochs ", std::atoi(value.c_str()) + 1, " or more)");
          continue;
        }
        CLI::Option* option = train->get_option(flag);
        option->add_result(value);
        option->run_callback();  // (converts the text into the option's variable, as the parser does)
        taken += " " + flag + " " + value;
      }
      if (!taken.empty())
        std::printf("recipe: --arch %s trains with%s (a flag on the command line replaces its value)\n",
                    lower(o->tc.spec.arch).c_str(), taken.c_str());
    }
    TrainConfig tc = o->tc;
    if (!std::isfinite(o->lr) || o->lr <= 0)
      throw UsageError(fmt("--lr must be a positive finite number, got ", o->lr));
    if (!std::isfinite(o->momentum) || o->momentum < 0 || o->momentum >= 1)
      throw UsageError(fmt("--momentum must be in [0, 1), got ", o->momentum));
    if (!std::isfinite(o->wd) || o->wd < 0) throw UsageError(fmt("--weight-decay must be >= 0, got ", o->wd));
    const std::string optimizer = lower(o->optimizer);
    if (optimizer == "sgd")
      tc.spec.optim.kind = Optim::SGD;
    else if (optimizer == "adam")
      tc.spec.optim.kind = Optim::Adam;
    else
      throw UsageError(fmt("--optimizer: expected sgd or adam, got '", o->optimizer, "'"));
    check_at_least(tc.opt.epochs, 1, "--epochs");
    check_at_least(tc.spec.batch, 1, "--batch");
    check_at_least(tc.spec.limit, 0, "--limit");
    check_threads(tc.opt.threads);
    check_at_least(tc.opt.checkpoint_every, 0, "--checkpoint-every");
    tc.spec.seed = parse_seed(o->seed);
    tc.opt.device = lower(tc.opt.device);
    double lr = o->lr;
    if (tc.spec.optim.kind == Optim::Adam && train->count("--lr") == 0) lr = 0.001;  // Adam's usual step
    tc.spec.optim.lr = float(lr);
    tc.spec.optim.momentum = tc.spec.optim.kind == Optim::SGD ? float(o->momentum) : 0.f;
    tc.spec.optim.weight_decay = float(o->wd);
    tc.spec.loss = parse_loss(o->loss);
    parse_lr_schedule(o->lr_schedule, &tc.spec.optim.schedule);
    parse_augment(o->augment, &tc.spec.augment);
    if (o->warmup_epochs < 0 || o->warmup_epochs >= tc.opt.epochs)
      throw UsageError(fmt("--warmup-epochs: expected a whole number of epochs from 0 to ", tc.opt.epochs - 1,
                           " (less than --epochs ", tc.opt.epochs, "), got ", o->warmup_epochs));
    tc.spec.optim.schedule.warmup_epochs = o->warmup_epochs;
    tc.opt.cuda_graph = parse_on_off(o->cuda_graph, "--cuda-graph");
    tc.opt.fuse = parse_fuse(o->fuse);
    if (!o->class_names.empty()) tc.opt.class_names = parse_class_names(o->class_names);
    if (tc.spec.optim.kind == Optim::Adam && train->count("--momentum") > 0)
      std::printf("note: --momentum applies to sgd only; adam has its own (beta1 0.9, beta2 0.999)\n");
    for (const SpecSetting& s : spec_settings(tc.spec))
      if (!s.flag.empty() && train->count(s.flag) > 0) tc.opt.spec_flags_given.push_back(s.flag);
    // (a momentum that adam ignores is no conflict with a resumed adam run)
    if (tc.spec.optim.kind == Optim::Adam) {
      auto& g = tc.opt.spec_flags_given;
      g.erase(std::remove(g.begin(), g.end(), std::string("--momentum")), g.end());
    }
    return barecnn::train(tc);
  };
}

}  // namespace barecnn::cli
