// `barecnn eval`: accuracy and loss of a model on the test set of a data folder.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>

#include "barecnn/error.h"
#include "barecnn/evaluator.h"
#include "barecnn/idx.h"
#include "barecnn/model_io.h"
#include "commands.h"

namespace barecnn::cli {

namespace {

int cmd_eval(const std::string& model_path, const std::string& data_flag, const std::string& device_flag, bool as_json,
             int batch) {
  Model m = load_model(model_path);
  std::string why;
  Device dev = choose_device(device_flag, &why);
  const DataRecord& trained = m.meta.data;
  // The model's own test set unless --data names another.
  std::string dir = data_flag;
  if (dir.empty() && !trained.dir.empty()) {
    std::error_code ec;
    if (!std::filesystem::is_directory(trained.dir, ec))
      throw UsageError(fmt(model_path, " was trained on the data in ", trained.dir,
                           ", which is not there any more; pass --data DIR, a folder with its t10k files"));
    dir = trained.dir;
  }
  if (dir.empty()) {
    dir = default_data_dir();
    std::fprintf(stderr, "note: %s does not record its data; evaluating on %s\n", model_path.c_str(), dir.c_str());
  }
  Dataset d = load_test_set(dir);
  if (d.test.rows * d.test.cols != int(dims_numel(m.meta.input)))
    throw UsageError(fmt("--data ", dir, ": the test images are ", d.test.rows, "x", d.test.cols, " but ", model_path,
                         " takes ", dims_str(m.meta.input)));
  if (!trained.test_fingerprint.empty() && d.test_fingerprint != trained.test_fingerprint)
    std::fprintf(stderr,
                 "note: the test files in %s are not those %s was trained with (from %s); the figures are for "
                 "these\n",
                 dir.c_str(), model_path.c_str(), trained.dir.c_str());
  if (d.classes != m.net->num_outputs())
    std::fprintf(stderr, "note: the test labels in %s have %d classes, the model %d\n", dir.c_str(), d.classes,
                 m.net->num_outputs());
  check_labels(d, m.net->num_outputs());
  EvalResult r = evaluate(*m.net, m.params, d.test, d.test_labels, m.meta.mean, m.meta.std, Loss::SoftmaxCrossEntropy,
                          dev, batch, false);
  if (as_json) {
    nlohmann::json j{{"accuracy", r.accuracy}, {"loss", r.loss}, {"loss_name", "cross_entropy"},
                     {"count", r.count},       {"data", d.dir},  {"test_fingerprint", d.test_fingerprint}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("model %s (%s) on the test set of %s, device %s (%s)\n", model_path.c_str(), m.meta.arch.c_str(),
                d.dir.c_str(), device_name(dev), why.c_str());
    std::printf("test accuracy %.4f  test loss (cross_entropy) %.4f  count %lld\n", r.accuracy, r.loss, r.count);
  }
  return 0;
}

}  // namespace

Runner add_eval(CLI::App& app) {
  struct Opts {
    std::string model, data, device = "auto";
    bool json = false;
    int batch = 500;
  };
  auto o = std::make_shared<Opts>();
  auto* eval = app.add_subcommand("eval", "accuracy and loss of a model on a test set");
  eval->add_option("--model", o->model, "model.safetensors (or checkpoint.safetensors) written by train")->required();
  eval->add_option("--data", o->data, "folder with the t10k IDX files (default: the data the model was trained on)");
  eval->add_option("--device", o->device, "auto, cpu or cuda")->capture_default_str();
  eval->add_option("--batch", o->batch, "batch size")->capture_default_str();
  eval->add_flag("--json", o->json,
                 "print {\"accuracy\", \"loss\", \"loss_name\", \"count\", \"data\", \"test_fingerprint\"}");
  eval->footer(
      "Examples:\n  barecnn eval --model runs/latest/model.safetensors\n"
      "  barecnn eval --model m.safetensors --data ~/mnist --json");
  return [o] {
    check_at_least(o->batch, 1, "--batch");
    return cmd_eval(o->model, o->data, o->device, o->json, o->batch);
  };
}

}  // namespace barecnn::cli
