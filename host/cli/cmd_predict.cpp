// `barecnn predict`: the class, its name and probability, and the logits of each image of an IDX
// file, a PNG or PGM file, or a folder of them, as CSV.
#include <cstdio>
#include <filesystem>

#include "barecnn/error.h"
#include "barecnn/evaluator.h"
#include "barecnn/fileutil.h"
#include "barecnn/idx.h"
#include "barecnn/image.h"
#include "barecnn/model_io.h"
#include "barecnn/ref_ops.h"
#include "commands.h"

namespace barecnn::cli {

namespace {

// A CSV field: quoted when it holds a comma, a quote or a line break (RFC 4180).
std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

int cmd_predict(const std::string& model_path, const std::string& images_path, const std::string& output,
                const std::string& device_flag, int batch, bool invert) {
  Model m = load_model(model_path);
  if (!output.empty()) {
    std::string dir = output.find('/') == std::string::npos ? "." : output.substr(0, output.rfind('/'));
    ensure_writable_dir(dir.empty() ? "/" : dir, "--output");
  }
  std::string why;
  Device dev = choose_device(device_flag, &why);
  if (m.meta.input[0] != 1)
    throw UsageError(fmt(model_path, " takes ", dims_str(m.meta.input), " inputs; predict reads grayscale images"));
  std::string path = images_path;
  if (path.empty()) {  // the test images of the model's own data
    if (m.meta.data.dir.empty())
      throw UsageError(fmt(model_path, " does not record the data it was trained on; pass --images FILE|FOLDER"));
    path = load_test_set(m.meta.data.dir).test_images_path;
    std::fprintf(stderr, "note: predicting the test images of the model's data, %s\n", path.c_str());
  }
  std::vector<std::string> files;
  IdxImages im = read_images(path, int(m.meta.input[1]), int(m.meta.input[2]), invert, &files);
  std::error_code ec;
  const bool one_file = !std::filesystem::is_directory(path, ec);  // (else a column names each file)
  EvalResult r =
      evaluate(*m.net, m.params, im, {}, m.meta.mean, m.meta.std, Loss::SoftmaxCrossEntropy, dev, batch, true);
  const int K = m.net->num_outputs();
  std::string csv = one_file ? "index,predicted,class,probability" : "index,file,predicted,class,probability";
  for (int k = 0; k < K; ++k) csv += ",logit_" + std::to_string(k);
  csv += "\n";
  // The softmax of each row's logits, by the reference in double.
  std::vector<double> z(r.logits.begin(), r.logits.end()), prob(z.size());
  ref::softmax_forward(prob.data(), z.data(), int(r.count), K);
  char buf[32];
  for (long long i = 0; i < r.count; ++i) {
    const int p = r.predicted[i];
    std::snprintf(buf, sizeof buf, ",%.6f", prob[size_t(i) * K + p]);
    csv += std::to_string(i) + (one_file ? "" : "," + csv_field(files[size_t(i)])) + "," + std::to_string(p) + "," +
           csv_field(m.meta.class_names[p]) + buf;
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

}  // namespace

Runner add_predict(CLI::App& app) {
  struct Opts {
    std::string model, images, output, device = "auto";
    int batch = 500;
    bool invert = false;
  };
  auto o = std::make_shared<Opts>();
  auto* predict = app.add_subcommand("predict", "class, probability and logits of each image (IDX, PNG or PGM)");
  predict->add_option("--model", o->model, "model.safetensors (or checkpoint.safetensors) written by train")
      ->required();
  predict->add_option("--images", o->images,
                      "an IDX images file (.gz or plain), a PNG or PGM image, or a folder of PNG/PGM images; "
                      "grayscale, of the model's input size (default: the test images of the model's data)");
  predict->add_flag("--invert", o->invert,
                    "255 - pixel: for dark drawings on a light background (the data sets are light on dark)");
  predict->add_option(
      "--output", o->output,
      "CSV file: index,[file,]predicted,class,probability,logit_0,... (default: stdout; file: for images "
      "from a folder)");
  predict->add_option("--device", o->device, "auto, cpu or cuda")->capture_default_str();
  predict->add_option("--batch", o->batch, "batch size")->capture_default_str();
  predict->footer(
      "Examples:\n  barecnn predict --model runs/latest/model.safetensors "
      "--images /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz --output predictions.csv\n"
      "  barecnn predict --model runs/latest/model.safetensors --images shirt.png\n"
      "  barecnn predict --model runs/latest/model.safetensors --images photos/ --invert  # dark on light");
  return [o] {
    check_at_least(o->batch, 1, "--batch");
    return cmd_predict(o->model, o->images, o->output, o->device, o->batch, o->invert);
  };
}

}  // namespace barecnn::cli
