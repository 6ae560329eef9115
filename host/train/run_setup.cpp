// The trainer's checks before a run (resume, data, output folder, class names) and the signals
// that stop it.
#include "run_setup.h"

#include <algorithm>
#include <cctype>
#include <filesystem>

#include "barecnn/error.h"
#include "barecnn/fileutil.h"
#include "barecnn/net.h"
#include "barecnn/report.h"

namespace barecnn {

namespace fs = std::filesystem;

namespace {

bool given(const RunOptions& opt, const std::string& flag) {
  return std::count(opt.spec_flags_given.begin(), opt.spec_flags_given.end(), flag) > 0;
}

}  // namespace

Checkpoint read_resume_checkpoint(const RunOptions& opt, const RunSpec& asked) {
  const std::string path = path_join(opt.resume, "checkpoint.safetensors");
  if (!file_exists(path)) {
    std::string what = file_exists(path_join(opt.resume, "model.safetensors"))
                           ? "; it holds a model but no checkpoint, so the run cannot continue"
                           : "; pass the --out folder of the run to continue (it has one after the first epoch, "
                             "or after a stop by Ctrl-C)";
    throw UsageError(fmt("--resume ", opt.resume, ": no checkpoint.safetensors in that folder", what));
  }
  Checkpoint ck = read_checkpoint(path);
  if (ck.epochs_done > opt.epochs || (ck.epochs_done == opt.epochs && ck.step_in_epoch > 0))
    throw UsageError(fmt("--resume ", opt.resume, ": the run already has ", ck.epochs_done,
                         " epochs; pass --epochs N with N > ", ck.epochs_done, " to train more"));
  // (epochs_done == epochs: the run was stopped after its last checkpoint; only the outputs
  // remain to be written.)
  RunSpec flags = asked;
  if (given(opt, "--arch")) {
    try {
      flags.arch = Net(flags.arch, ck.meta.input).spec();  // the canonical form, as saved
    } catch (const UsageError&) {}
  }
  const std::vector<SpecSetting> theirs = spec_settings(ck.spec), ours = spec_settings(flags);
  std::string conflicts;
  for (size_t i = 0; i < theirs.size(); ++i)
    if (!theirs[i].flag.empty() && given(opt, theirs[i].flag) && theirs[i].value != ours[i].value)
      conflicts += fmt("\n  ", theirs[i].flag, " ", ours[i].value, " (the run's: ", theirs[i].value, ")");
  if (!conflicts.empty())
    throw UsageError(fmt("--resume ", opt.resume,
                         " continues that run with its own settings, and these flags differ from them:", conflicts,
                         "\nleave them out to continue the run, or start a new run in another --out folder"));
  return ck;
}

void check_same_data(const DataRecord& saved, const Dataset& data, const RunOptions& opt) {
  if (!saved.train_fingerprint.empty() && saved.train_fingerprint != data.train_fingerprint)
    throw UsageError(fmt("--data ", opt.data_dir, ": its training files are not those the run in ", opt.resume,
                         " trained on (fingerprint ", data.train_fingerprint, ", the run's ", saved.train_fingerprint,
                         ", from ", saved.dir, "); a resumed run continues on its own data"));
  if (!saved.test_fingerprint.empty() && saved.test_fingerprint != data.test_fingerprint)
    throw UsageError(fmt("--data ", opt.data_dir, ": its test files are not those of the run in ", opt.resume,
                         " (fingerprint ", data.test_fingerprint, ", the run's ", saved.test_fingerprint, ", from ",
                         saved.dir, "); a resumed run continues on its own data"));
}

std::vector<std::string> run_files_in(const std::string& dir) {
  std::vector<std::string> found;
  for (const std::string& f : run_file_names())
    if (file_exists(path_join(dir, f))) found.push_back(f);
  return found;
}

std::string new_run_folder(std::string* note) {
  const fs::path root = "runs";
  std::error_code ec;
  long long n = 0;
  if (fs::is_directory(root, ec))
    for (const auto& e : fs::directory_iterator(root, ec)) {
      const std::string name = e.path().filename().string();
      if (!name.empty() && name.size() < 12 && std::all_of(name.begin(), name.end(), ::isdigit))
        n = std::max(n, std::stoll(name));
    }
  const std::string name = std::to_string(n + 1);
  const std::string dir = (root / name).string();
  ensure_writable_dir(dir, "--out");
  const fs::path latest = root / "latest", tmp = root / ".latest.tmp";
  if (fs::is_symlink(latest, ec) || !fs::exists(latest, ec)) {
    fs::remove(tmp, ec);
    fs::create_directory_symlink(name, tmp, ec);
    if (!ec) fs::rename(tmp, latest, ec);
    *note = ec ? "" : " (runs/latest links to it)";
  } else {
    *note = " (runs/latest is not a link; left as it is)";
  }
  return dir;
}

std::string first_label_beyond(const Dataset& d, int n) {
  std::string file;
  size_t i = 0;
  int label = 0;
  return first_label_at_least(d, n, &file, &i, &label) ? fmt(" (", file, " has label ", label, " at index ", i, ")")
                                                       : "";
}

std::vector<std::string> choose_class_names(const RunOptions& opt, const Dataset& d, int classes) {
  if (!opt.class_names.empty()) {
    if (int(opt.class_names.size()) != classes)
      throw UsageError(
          fmt("--class-names: ", opt.class_names.size(), " names given but the data has ", classes, " classes"));
    return opt.class_names;
  }
  const KnownData* known = known_data(d.train_fingerprint, d.test_fingerprint);
  if (known && int(known->class_names.size()) == classes) return known->class_names;
  std::vector<std::string> names;
  for (int k = 0; k < classes; ++k) names.push_back(std::to_string(k));
  return names;
}

std::string resume_command(const RunOptions& opt) {
  std::string cmd = fmt("barecnn train --resume ", opt.out, " --epochs ", opt.epochs);
  if (opt.device != "auto") cmd += " --device " + opt.device;
  if (opt.threads > 0) cmd += fmt(" --threads ", opt.threads);
  if (opt.checkpoint_every > 0) cmd += fmt(" --checkpoint-every ", opt.checkpoint_every);
  if (opt.cuda_graph) cmd += " --cuda-graph on";
  if (opt.fuse) cmd += *opt.fuse ? " --fuse on" : " --fuse off";
  if (opt.quiet) cmd += " --quiet";
  return cmd;
}

volatile sig_atomic_t StopSignals::received_ = 0;

StopSignals::StopSignals() {
  received_ = 0;
  struct sigaction sa {};
  sa.sa_handler = [](int sig) { received_ = sig; };
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND | SA_RESTART;
  sigaction(SIGINT, &sa, &old_int_);
  sigaction(SIGTERM, &sa, &old_term_);
}

StopSignals::~StopSignals() {
  sigaction(SIGINT, &old_int_, nullptr);
  sigaction(SIGTERM, &old_term_, nullptr);
}

}  // namespace barecnn
