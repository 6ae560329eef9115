// `barecnn eval`: accuracy and loss of a model on the test set of a data folder.
#include <nlohmann/json.hpp>

#include <cstdio>

#include "barecnn/error.h"
#include "barecnn/evaluator.h"
#include "barecnn/idx.h"
#include "barecnn/trainer.h"
#include "commands.h"

namespace barecnn::cli {

namespace {

int cmd_eval(const std::string& model_path, const std::string& data_dir, const std::string& device_flag, bool as_json,
             int batch) {
  Model m = load_model(model_path);
  std::string why;
  Device dev = choose_device(device_flag, &why);
  Dataset d = load_dataset(data_dir.empty() ? default_data_dir() : data_dir, 0);
  if (d.test.rows * d.test.cols != int(dims_numel(m.meta.input)))
    throw UsageError(fmt("--data: the test images are ", d.test.rows, "x", d.test.cols, " but ", model_path, " takes ",
                         dims_str(m.meta.input)));
  check_labels(d, m.net->num_outputs());
  EvalResult r = evaluate(*m.net, m.params, d.test, d.test_labels, m.meta.mean, m.meta.std, Loss::SoftmaxCrossEntropy,
                          dev, batch, false);
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

}  // namespace

Runner add_eval(CLI::App& app) {
  struct Opts {
    std::string model, data, device = "auto";
    bool json = false;
    int batch = 500;
  };
  auto o = std::make_shared<Opts>();
  auto* eval = app.add_subcommand("eval", "accuracy and loss of a model on a test set");
  eval->add_option("--model", o->model, "model.safetensors written by train")->required();
  eval->add_option("--data", o->data, "folder with the IDX files (the t10k files are used)");
  eval->add_option("--device", o->device, "auto, cpu or cuda")->capture_default_str();
  eval->add_option("--batch", o->batch, "batch size")->capture_default_str();
  eval->add_flag("--json", o->json, "print {\"accuracy\", \"loss\", \"count\"}");
  eval->footer(
      "Examples:\n  barecnn eval --model runs/latest/model.safetensors\n"
      "  barecnn eval --model m.safetensors --data ~/mnist --json");
  return [o] {
    check_at_least(o->batch, 1, "--batch");
    return cmd_eval(o->model, o->data, o->device, o->json, o->batch);
  };
}

}  // namespace barecnn::cli
