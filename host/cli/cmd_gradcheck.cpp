// `barecnn gradcheck`: backward against central differences in double, tensor by tensor.
#include <cstdio>

#include "barecnn/error.h"
#include "barecnn/gradcheck.h"
#include "barecnn/loss.h"
#include "commands.h"

namespace barecnn::cli {

namespace {

int cmd_gradcheck(const std::string& arch, const std::string& input, const std::string& loss, uint64_t seed, int batch,
                  int samples) {
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

}  // namespace

Runner add_gradcheck(CLI::App& app) {
  struct Opts {
    std::string arch = "paper", input = "1x28x28", loss = "cross_entropy";
    std::string seed = "1";
    int batch = 2, samples = 24;
  };
  auto o = std::make_shared<Opts>();
  auto* gradcheck = app.add_subcommand("gradcheck", "compare backward with central differences in double");
  gradcheck->add_option("--arch", o->arch, "arch spec or preset")->capture_default_str();
  gradcheck->add_option("--input", o->input, "input shape CxHxW")->capture_default_str();
  gradcheck->add_option("--loss", o->loss, "loss")->capture_default_str();
  gradcheck->add_option("--seed", o->seed, "seed")->capture_default_str();
  gradcheck->add_option("--batch", o->batch, "batch size")->capture_default_str();
  gradcheck->add_option("--samples", o->samples, "entries checked per tensor")->capture_default_str();
  gradcheck->footer(
      "Examples:\n  barecnn gradcheck --arch lenet5\n"
      "  barecnn gradcheck --arch \"conv(4,3,stride=2,pad=1) elu l2pool(2) dense(5)\" --input 3x11x9 --loss bce");
  return [o] { return cmd_gradcheck(o->arch, o->input, o->loss, parse_seed(o->seed), o->batch, o->samples); };
}

}  // namespace barecnn::cli
