// What the trainer checks and prepares before a run, and the signals that stop it: the resume
// checkpoint and the flags and data that would make it another run, the output folder (one run
// per folder, runs/N by default), the class names. Private to host/train.
#pragma once

#include <signal.h>

#include <string>
#include <vector>

#include "barecnn/checkpoint.h"
#include "barecnn/idx.h"
#include "barecnn/run_spec.h"

namespace barecnn {

// The checkpoint in opt.resume, refused (UsageError) when it is not there, when it already has
// more epochs than opt.epochs, or when a spec flag the command line gave (opt.spec_flags_given)
// differs from the run's own value (each conflict listed); `asked` holds the flags' values.
Checkpoint read_resume_checkpoint(const RunOptions& opt, const RunSpec& asked);
// A resumed run trains on the data it started with, wherever that folder is now: UsageError when
// the fingerprints recorded in `saved` (if any) differ from those of `data`.
void check_same_data(const DataRecord& saved, const Dataset& data, const RunOptions& opt);

// The files of a run (report.h's run_file_names) found in `dir`.
std::vector<std::string> run_files_in(const std::string& dir);
// runs/N, N one more than the largest number among runs/'s folders, created; runs/latest becomes
// a link to it (unless it is something other than a link, which stays as it is). `note` says
// which.
std::string new_run_folder(std::string* note);

// " (FILE has label 7 at index 17)" for the first label of `d` >= n, else "".
std::string first_label_beyond(const Dataset& d, int n);
// --class-names (UsageError unless there are `classes` of them), else those of a data set known
// by its fingerprints, else "0".."K-1".
std::vector<std::string> choose_class_names(const RunOptions& opt, const Dataset& d, int classes);

// The command that continues the run in opt.out with the same options.
std::string resume_command(const RunOptions& opt);

// SIGINT and SIGTERM while a run trains: the first asks the run to stop after the current step
// (the handler only records it); the handler then resets itself, so a second one ends the process
// at once. The previous handlers come back when the run ends.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  int received() const { return received_; }  // the signal's number, 0 while none came

 private:
  static volatile sig_atomic_t received_;
  struct sigaction old_int_ {
  }, old_term_{};
};

}  // namespace barecnn
