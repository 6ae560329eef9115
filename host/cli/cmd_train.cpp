// `barecnn train`: the options of a training run; the run itself is barecnn::train (trainer.h).
#include <cmath>

#include "barecnn/error.h"
#include "barecnn/loss.h"
#include "barecnn/trainer.h"
#include "commands.h"

namespace barecnn::cli {

Runner add_train(CLI::App& app) {
  struct Opts {
    TrainConfig tc;
    std::string optimizer = "sgd", loss = "cross_entropy", cuda_graph = "off", fuse = "off";
    double lr = 0.01, momentum = 0.9, wd = 0;
  };
  auto o = std::make_shared<Opts>();
  TrainConfig& tc = o->tc;
  auto* train = app.add_subcommand("train", "train a net and write model, metrics, plots and a checkpoint to --out");
  train->add_option("--data", tc.data_dir,
                    "folder with the four IDX files (default: Fashion-MNIST from the Debian package)");
  train->add_option("--arch", tc.arch, "arch spec or preset (paper, lenet5, deep)")->capture_default_str();
  train->add_option("--device", tc.device, "auto, cpu or cuda")->capture_default_str();
  train->add_option("--epochs", tc.epochs, "epochs in all (with --resume: including those already done)")
      ->capture_default_str();
  train->add_option("--batch", tc.batch, "batch size")->capture_default_str();
  train->add_option("--lr", o->lr, "learning rate (default 0.01 for sgd, 0.001 for adam)")->capture_default_str();
  train->add_option("--momentum", o->momentum, "SGD momentum (0: plain gradient descent)")->capture_default_str();
  train->add_option("--weight-decay", o->wd, "L2 weight decay")->capture_default_str();
  train->add_option("--optimizer", o->optimizer, "sgd or adam")->capture_default_str();
  train->add_option("--loss", o->loss, "cross_entropy, bce, mse, msle, l2, l1, mae, mape")->capture_default_str();
  train->add_option("--seed", tc.seed, "random seed (init and data order)")->capture_default_str();
  train->add_option("--limit", tc.limit, "train on the first N training images (0: all)")->capture_default_str();
  train->add_option("--threads", tc.threads, "CPU threads (0: all cores)")->capture_default_str();
  train->add_option("--out", tc.out, "output folder")->capture_default_str();
  train->add_option("--resume", tc.resume, "continue the run whose checkpoint is in this folder");
  train->add_option("--checkpoint-every", tc.checkpoint_every, "also checkpoint every N steps (0: each epoch)")
      ->capture_default_str();
  train->add_flag("--quiet", tc.quiet, "no progress display");
  train
      ->add_option("--cuda-graph", o->cuda_graph,
                   "on: launch each GPU training step as one captured CUDA Graph (same results; NVTX ranges "
                   "per layer only at the capture), off: kernel by kernel")
      ->capture_default_str();
  train
      ->add_option("--fuse", o->fuse,
                   "on: on the GPU each conv applies the ReLU that follows it in its own kernels, forward "
                   "and backward (same results), off: every layer on its own")
      ->capture_default_str();
  train->footer(
      "Examples:\n"
      "  barecnn train                                     # paper net, 3 epochs, Fashion-MNIST\n"
      "  barecnn train --arch deep --optimizer adam --lr 0.001 --epochs 10 --out runs/deep\n"
      "  barecnn train --device cpu --limit 5000 --epochs 1 # a quick CPU run\n"
      "  barecnn train --arch \"conv(16,3,pad=1) relu maxpool(2) dense(10)\" --loss mse\n"
      "  barecnn train --resume runs/deep --epochs 20      # continue a run");
  return [o, train] {
    TrainConfig tc = o->tc;
    if (!std::isfinite(o->lr) || o->lr <= 0)
      throw UsageError(fmt("--lr must be a positive finite number, got ", o->lr));
    if (!std::isfinite(o->momentum) || o->momentum < 0 || o->momentum >= 1)
      throw UsageError(fmt("--momentum must be in [0, 1), got ", o->momentum));
    if (!std::isfinite(o->wd) || o->wd < 0) throw UsageError(fmt("--weight-decay must be >= 0, got ", o->wd));
    if (o->optimizer == "sgd")
      tc.optim.kind = Optim::SGD;
    else if (o->optimizer == "adam")
      tc.optim.kind = Optim::Adam;
    else
      throw UsageError(fmt("--optimizer: expected sgd or adam, got '", o->optimizer, "'"));
    check_at_least(tc.epochs, 1, "--epochs");
    check_at_least(tc.batch, 1, "--batch");
    check_at_least(tc.limit, 0, "--limit");
    check_at_least(tc.threads, 0, "--threads");
    check_at_least(tc.checkpoint_every, 0, "--checkpoint-every");
    double lr = o->lr;
    if (tc.optim.kind == Optim::Adam && train->count("--lr") == 0) lr = 0.001;  // Adam's usual step
    tc.optim.lr = float(lr);
    tc.optim.momentum = tc.optim.kind == Optim::SGD ? float(o->momentum) : 0.f;
    tc.optim.weight_decay = float(o->wd);
    tc.loss = parse_loss(o->loss);
    tc.cuda_graph = parse_on_off(o->cuda_graph, "--cuda-graph");
    tc.fuse = parse_on_off(o->fuse, "--fuse");
    if (!tc.resume.empty() && train->count("--out") == 0) tc.out = "";  // default: continue in the resume folder
    barecnn::train(tc);
    return 0;
  };
}

}  // namespace barecnn::cli
