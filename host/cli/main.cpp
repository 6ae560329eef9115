// barecnn: the command line. One subcommand per job (train, eval, predict, gradcheck, bench,
// info); every failure becomes one message on stderr and exit code 1 (runtime) or 2 (usage).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <iostream>

#include "barecnn/arch.h"
#include "barecnn/error.h"
#include "barecnn/fileutil.h"
#include "barecnn/gpu.h"
#include "barecnn/gradcheck.h"
#include "barecnn/idx.h"
#include "barecnn/trainer.h"

namespace barecnn {
int bench_main(const std::string& arch, int batch, const std::string& device, int reps, const std::string& input,
               bool fuse,
               const std::string& json_path);
}

using namespace barecnn;

namespace {

// ---- info ----------------------------------------------------------------------------------------
int cmd_info() {
  std::printf("barecnn %s (%s build)\n", BARECNN_VERSION, BARECNN_BUILD_TYPE);
  std::printf("  CUDA architectures compiled in: %s\n", compiled_cuda_archs());
  const GpuStatus& g = gpu_status();
  std::printf("  CUDA runtime: %s, driver: %s\n", version_str(g.runtime_version).c_str(),
              g.driver_version ? version_str(g.driver_version).c_str() : "none");
  if (g.ok) {
    std::printf("  GPU 0: %s, compute capability %d.%d, %d SMs, %.1f GiB (%d visible)\n", g.name.c_str(), g.cc_major,
                g.cc_minor, g.sm_count, g.total_mem / 1073741824.0, g.device_count);
    if (g.emulated)
      std::printf("  (this build runs the GPU code on the CPU through the CUDA emulator in tests/emu: for\n"
                  "   testing kernels without a GPU; its timings say nothing about a GPU)\n");
  } else {
    std::printf("  GPU: none usable: %s\n", g.reason.c_str());
    std::printf("  (training runs on the CPU; --device auto picks it)\n");
  }
  std::printf("  CPU threads (OpenMP): %d\n", omp_get_max_threads());
  std::printf("  default data: %s (%s)\n", default_data_dir(),
              file_exists(path_join(default_data_dir(), "train-images-idx3-ubyte.gz")) ||
                      file_exists(path_join(default_data_dir(), "train-images-idx3-ubyte"))
                  ? "present"
                  : "missing: sudo apt-get install dataset-fashion-mnist");
  std::printf("  presets:\n");
  for (auto& [name, spec] : presets()) std::printf("    %-7s %s\n", name.c_str(), spec.c_str());
  std::printf("  losses:");
  int n = 0;
  const char* const* names = loss_names(&n);
  for (int i = 0; i < n; ++i) std::printf(" %s", names[i]);
  std::printf("\n");
  return 0;
}

// ---- gradcheck -----------------------------------------------------------------------------------
int cmd_gradcheck(const std::string& arch, const std::string& input, const std::string& loss, uint64_t seed,
                  int batch, int samples) {
  GradcheckOptions o;
  o.arch = arch;
  o.input = parse_input_dims(input, "--input");
  o.loss = parse_loss(loss);
  o.seed = seed;
  if (batch < 1) throw UsageError(fmt("--batch must be >= 1, got ", batch));
  if (samples < 1) throw UsageError(fmt("--samples must be >= 1, got ", samples));
  o.batch = batch;
  o.samples = samples;
  GradcheckResult r = run_gradcheck(o);
  std::printf("gradcheck: %s on input %s, batch %d, loss %s, seed %llu (double precision, h=%g, tol=%g)\n",
              r.arch.c_str(), dims_str(o.input).c_str(), o.batch, loss_name(o.loss).c_str(), (unsigned long long)seed,
              o.step, o.tol);
  std::printf("  loss %.6g\n", r.loss);
  std::printf("  %-12s %-14s %8s %8s %14s  %s\n", "tensor", "shape", "checked", "kinks", "worst rel err", "result");
  for (auto& t : r.tensors)
    std::printf("  %-12s %-14s %8zu %8zu %14.3e  %s%s\n", t.name.c_str(), dims_str(t.dims).c_str(), t.checked,
                t.skipped, t.worst_rel, t.pass ? "ok" : "FAIL", t.all_zero ? " (gradient is zero)" : "");
  std::printf("%s\n", r.pass ? "gradcheck passed" : "gradcheck FAILED");
  return r.pass ? 0 : 1;
}

// ---- eval ----------------------------------------------------------------------------------------
int cmd_eval(const std::string& model_path, const std::string& data_dir, const std::string& device_flag, bool as_json,
             int batch) {
  Model m = load_model(model_path);
  std::string why;
  Device dev = choose_device(device_flag, &why);
  Dataset d = load_dataset(data_dir.empty() ? default_data_dir() : data_dir, 0);
  if (d.test.rows * d.test.cols != int(dims_numel(m.meta.input)))
    throw UsageError(fmt("--data: the test images are ", d.test.rows, "x", d.test.cols, " but ", model_path,
                         " takes ", dims_str(m.meta.input)));
  check_labels(d, m.net->num_outputs());
  EvalResult r = evaluate(*m.net, m.params, d.test, d.test_labels, m.meta.mean, m.meta.std,
                          Loss::SoftmaxCrossEntropy, dev, batch, false);
  if (as_json) {
    nlohmann::json j{{"accuracy", r.accuracy}, {"loss", r.loss}, {"count", r.count}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("model %s (%s) on %s, device %s (%s)\n", model_path.c_str(), m.meta.arch.c_str(), d.dir.c_str(),
                device_name(dev), why.c_str());
    std::printf("test accuracy %.4f  test loss (cross-entropy) %.4f  count %lld\n", r.accuracy, r.loss, r.count);
  }
  return 0;
}

// ---- predict -------------------------------------------------------------------------------------
int cmd_predict(const std::string& model_path, const std::string& images_path, const std::string& output,
                const std::string& device_flag, int batch) {
  Model m = load_model(model_path);
  if (!output.empty()) {
    std::string dir = output.find('/') == std::string::npos ? "." : output.substr(0, output.rfind('/'));
    ensure_writable_dir(dir.empty() ? "/" : dir, "--output");
  }
  std::string why;
  Device dev = choose_device(device_flag, &why);
  IdxImages im = read_idx_images(images_path);
  if (im.rows * im.cols != int(dims_numel(m.meta.input)))
    throw UsageError(fmt("--images ", images_path, ": the images are ", im.rows, "x", im.cols, " but ", model_path,
                         " takes ", dims_str(m.meta.input)));
  EvalResult r = evaluate(*m.net, m.params, im, {}, m.meta.mean, m.meta.std, Loss::SoftmaxCrossEntropy, dev, batch,
                          true);
  const int K = m.net->num_outputs();
  std::string csv = "index,predicted";
  for (int k = 0; k < K; ++k) csv += ",logit_" + std::to_string(k);
  csv += "\n";
  char buf[32];
  for (long long i = 0; i < r.count; ++i) {
    csv += std::to_string(i) + "," + std::to_string(r.predicted[i]);
    for (int k = 0; k < K; ++k) {
      std::snprintf(buf, sizeof buf, ",%.9g", r.logits[size_t(i) * K + k]);
      csv += buf;
    }
    csv += "\n";
  }
  if (output.empty()) {
    std::fwrite(csv.data(), 1, csv.size(), stdout);
  } else {
    atomic_write_text(output, csv);
    std::fprintf(stderr, "wrote %lld predictions to %s\n", r.count, output.c_str());
  }
  return 0;
}

// Positive/finite checks that CLI11 cannot say in our words.
void check_lr(double lr, const char* flag) {
  if (!std::isfinite(lr) || lr <= 0) throw UsageError(fmt(flag, " must be a positive finite number, got ", lr));
}

std::string nearest_option(CLI::App* sub, const std::string& bad) {
  std::vector<std::string> names;
  for (const CLI::Option* o : sub->get_options())
    for (auto& l : o->get_lnames()) names.push_back("--" + l);
  return nearest(bad, names);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"barecnn: train convolutional networks on NVIDIA GPUs (or the CPU) from the command line"};
  app.require_subcommand(1);
  app.footer(
      "Examples:\n"
      "  barecnn train --arch paper --epochs 3            # Fashion-MNIST, GPU if present\n"
      "  barecnn eval --model runs/latest/model.safetensors\n"
      "  barecnn gradcheck --arch lenet5 --loss mse\n"
      "  barecnn info");

  // train
  TrainConfig tc;
  std::string optimizer = "sgd", loss = "cross_entropy", cuda_graph = "off", fuse = "off";
  double lr = 0.01, momentum = 0.9, wd = 0;
  auto* train = app.add_subcommand("train", "train a net and write model, metrics, plots and a checkpoint to --out");
  train->add_option("--data", tc.data_dir, "folder with the four IDX files (default: Fashion-MNIST from the Debian package)");
  train->add_option("--arch", tc.arch, "arch spec or preset (paper, lenet5, deep)")->capture_default_str();
  train->add_option("--device", tc.device, "auto, cpu or cuda")->capture_default_str();
  train->add_option("--epochs", tc.epochs, "epochs in all (with --resume: including those already done)")->capture_default_str();
  train->add_option("--batch", tc.batch, "batch size")->capture_default_str();
  train->add_option("--lr", lr, "learning rate (default 0.01 for sgd, 0.001 for adam)")->capture_default_str();
  train->add_option("--momentum", momentum, "SGD momentum (0: plain gradient descent)")->capture_default_str();
  train->add_option("--weight-decay", wd, "L2 weight decay")->capture_default_str();
  train->add_option("--optimizer", optimizer, "sgd or adam")->capture_default_str();
  train->add_option("--loss", loss, "cross_entropy, bce, mse, msle, l2, l1, mae, mape")->capture_default_str();
  train->add_option("--seed", tc.seed, "random seed (init and data order)")->capture_default_str();
  train->add_option("--limit", tc.limit, "train on the first N training images (0: all)")->capture_default_str();
  train->add_option("--threads", tc.threads, "CPU threads (0: all cores)")->capture_default_str();
  train->add_option("--out", tc.out, "output folder")->capture_default_str();
  train->add_option("--resume", tc.resume, "continue the run whose checkpoint is in this folder");
  train->add_option("--checkpoint-every", tc.checkpoint_every, "also checkpoint every N steps (0: each epoch)")->capture_default_str();
  train->add_flag("--quiet", tc.quiet, "no progress display");
  train->add_option("--cuda-graph", cuda_graph,
                    "on: launch each GPU training step as one captured CUDA Graph (same results; NVTX ranges "
                    "per layer only at the capture), off: kernel by kernel")
      ->capture_default_str();
  train->add_option("--fuse", fuse,
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

  // eval
  std::string model, data, device = "auto", images, output;
  bool as_json = false;
  int batch = 500;
  auto* eval = app.add_subcommand("eval", "accuracy and loss of a model on a test set");
  eval->add_option("--model", model, "model.safetensors written by train")->required();
  eval->add_option("--data", data, "folder with the IDX files (the t10k files are used)");
  eval->add_option("--device", device, "auto, cpu or cuda")->capture_default_str();
  eval->add_option("--batch", batch, "batch size")->capture_default_str();
  eval->add_flag("--json", as_json, "print {\"accuracy\", \"loss\", \"count\"}");
  eval->footer("Examples:\n  barecnn eval --model runs/latest/model.safetensors\n"
               "  barecnn eval --model m.safetensors --data ~/mnist --json");

  // predict
  auto* predict = app.add_subcommand("predict", "class and logits for each image of an IDX file");
  predict->add_option("--model", model, "model.safetensors written by train")->required();
  predict->add_option("--images", images, "IDX images file (.gz or plain)")->required();
  predict->add_option("--output", output, "CSV file: index,predicted,logit_0,... (default: stdout)");
  predict->add_option("--device", device, "auto, cpu or cuda")->capture_default_str();
  predict->add_option("--batch", batch, "batch size")->capture_default_str();
  predict->footer("Example:\n  barecnn predict --model runs/latest/model.safetensors "
                  "--images /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz --output predictions.csv");

  // gradcheck
  std::string gc_arch = "paper", gc_input = "1x28x28", gc_loss = "cross_entropy";
  uint64_t gc_seed = 1;
  int gc_batch = 2, gc_samples = 24;
  auto* gradcheck = app.add_subcommand("gradcheck", "compare backward with central differences in double");
  gradcheck->add_option("--arch", gc_arch, "arch spec or preset")->capture_default_str();
  gradcheck->add_option("--input", gc_input, "input shape CxHxW")->capture_default_str();
  gradcheck->add_option("--loss", gc_loss, "loss")->capture_default_str();
  gradcheck->add_option("--seed", gc_seed, "seed")->capture_default_str();
  gradcheck->add_option("--batch", gc_batch, "batch size")->capture_default_str();
  gradcheck->add_option("--samples", gc_samples, "entries checked per tensor")->capture_default_str();
  gradcheck->footer("Examples:\n  barecnn gradcheck --arch lenet5\n"
                    "  barecnn gradcheck --arch \"conv(4,3,stride=2,pad=1) elu l2pool(2) dense(5)\" --input 3x11x9 --loss bce");

  // bench
  std::string b_arch = "paper", b_device = "auto", b_input = "1x28x28", b_json, b_fuse = "off";
  int b_batch = 64, b_reps = 20;
  auto* bench = app.add_subcommand("bench", "per-layer forward/backward times, step time, images/s");
  bench->add_option("--arch", b_arch, "arch spec or preset")->capture_default_str();
  bench->add_option("--batch", b_batch, "batch size")->capture_default_str();
  bench->add_option("--device", b_device, "auto, cpu or cuda")->capture_default_str();
  bench->add_option("--reps", b_reps, "timed repetitions")->capture_default_str();
  bench->add_option("--input", b_input, "input shape CxHxW")->capture_default_str();
  bench->add_option("--json", b_json, "also write the figures (per layer, totals, peaks) as JSON to this file");
  bench->add_option("--fuse", b_fuse, "on: each conv applies the ReLU after it (GPU), as train --fuse on")
      ->capture_default_str();
  bench->footer("Examples:\n  barecnn bench --arch paper --batch 256\n"
                "  barecnn bench --arch deep --batch 1024 --json bench-deep.json");

  auto* info = app.add_subcommand("info", "build configuration, CUDA runtime, GPUs");
  info->footer("Example:\n  barecnn info        # is there a GPU this build can use, and if not, why");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ExtrasError& e) {
    std::string msg = e.what();
    // Suggest the nearest option of the subcommand that was named.
    CLI::App* sub = nullptr;
    if (argc > 1)
      for (CLI::App* s : app.get_subcommands({})) if (s->get_name() == argv[1]) sub = s;
    std::string hint;
    if (sub)
      for (int i = 2; i < argc; ++i) {
        std::string a = argv[i];
        if (a.rfind("--", 0) == 0) {
          std::string name = a.substr(0, a.find('='));
          bool known = false;
          for (const CLI::Option* o : sub->get_options())
            for (auto& l : o->get_lnames()) known |= ("--" + l) == name;
          if (!known) {
            std::string near = nearest_option(sub, name);
            hint = fmt("unknown option ", name, " for 'barecnn ", sub->get_name(), "'",
                       near.empty() ? "" : "; did you mean " + near + "?");
            break;
          }
        }
      }
    std::fprintf(stderr, "barecnn: error: %s\n", hint.empty() ? msg.c_str() : hint.c_str());
    std::fprintf(stderr, "run 'barecnn %s --help' for the options\n", sub ? sub->get_name().c_str() : "");
    return 2;
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "barecnn: error: %s\nrun 'barecnn%s --help' for the options\n", e.what(),
                 argc > 1 && argv[1][0] != '-' ? (std::string(" ") + argv[1]).c_str() : "");
    return 2;
  }

  try {
    if (*info) return cmd_info();
    if (*gradcheck) return cmd_gradcheck(gc_arch, gc_input, gc_loss, gc_seed, gc_batch, gc_samples);
    if (*eval) {
      if (batch < 1) throw UsageError(fmt("--batch must be >= 1, got ", batch));
      return cmd_eval(model, data, device, as_json, batch);
    }
    if (*predict) {
      if (batch < 1) throw UsageError(fmt("--batch must be >= 1, got ", batch));
      return cmd_predict(model, images, output, device, batch);
    }
    if (*bench) {
      if (b_fuse != "on" && b_fuse != "off") throw UsageError(fmt("--fuse: expected on or off, got '", b_fuse, "'"));
      return bench_main(b_arch, b_batch, b_device, b_reps, b_input, b_fuse == "on", b_json);
    }
    if (*train) {
      check_lr(lr, "--lr");
      if (!std::isfinite(momentum) || momentum < 0 || momentum >= 1)
        throw UsageError(fmt("--momentum must be in [0, 1), got ", momentum));
      if (!std::isfinite(wd) || wd < 0) throw UsageError(fmt("--weight-decay must be >= 0, got ", wd));
      if (optimizer == "sgd") tc.optim.kind = Optim::SGD;
      else if (optimizer == "adam") tc.optim.kind = Optim::Adam;
      else throw UsageError(fmt("--optimizer: expected sgd or adam, got '", optimizer, "'"));
      if (tc.epochs < 1) throw UsageError(fmt("--epochs must be >= 1, got ", tc.epochs));
      if (tc.batch < 1) throw UsageError(fmt("--batch must be >= 1, got ", tc.batch));
      if (tc.limit < 0) throw UsageError(fmt("--limit must be >= 0, got ", tc.limit));
      if (tc.threads < 0) throw UsageError(fmt("--threads must be >= 0, got ", tc.threads));
      if (tc.checkpoint_every < 0) throw UsageError(fmt("--checkpoint-every must be >= 0, got ", tc.checkpoint_every));
      if (tc.optim.kind == Optim::Adam && train->count("--lr") == 0) lr = 0.001;  // Adam's usual step
      tc.optim.lr = float(lr);
      tc.optim.momentum = tc.optim.kind == Optim::SGD ? float(momentum) : 0.f;
      tc.optim.weight_decay = float(wd);
      tc.loss = parse_loss(loss);
      if (cuda_graph != "on" && cuda_graph != "off")
        throw UsageError(fmt("--cuda-graph: expected on or off, got '", cuda_graph, "'"));
      tc.cuda_graph = cuda_graph == "on";
      if (fuse != "on" && fuse != "off") throw UsageError(fmt("--fuse: expected on or off, got '", fuse, "'"));
      tc.fuse = fuse == "on";
      if (!tc.resume.empty() && train->count("--out") == 0) tc.out = "";  // default: continue in the resume folder
      barecnn::train(tc);
      return 0;
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "\nbarecnn: error: %s\n", e.what());
    return e.exit_code();
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "\nbarecnn: error: out of host memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\nbarecnn: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
