// A whole training run, as the CLI's `train` does it.
#pragma once

#include <functional>

#include "barecnn/run_spec.h"

namespace barecnn {

// Called after every optimizer step with the number of steps so far (tests stop a run there, as
// if it were killed, by throwing, or raise a signal there).
using StepObserver = std::function<void(long long global_step)>;

// Runs a whole training: prints the configuration, progress and the results; writes the model,
// summary.json, metrics.csv and the plots into the output folder after every epoch, and the
// checkpoint. SIGINT or SIGTERM during training stop it after the current step with a checkpoint
// there and the command that continues it; the return value is then 128 + the signal's number
// (130, 143), else 0. Throws Error/UsageError on failure.
int train(const TrainConfig& cfg, const StepObserver& after_step = {});

}  // namespace barecnn
