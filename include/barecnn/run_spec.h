// What a training run is (RunSpec: the settings that decide its numbers, saved in its checkpoint)
// apart from how this process runs it (RunOptions: the command line's other options). Resuming
// takes the checkpoint's RunSpec; a flag that would change it is an error.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "barecnn/augment.h"
#include "barecnn/loss.h"
#include "barecnn/optim.h"

namespace barecnn {

struct RunSpec {
  std::string arch = "paper";  // the canonical spec once the net is built
  int batch = 64;
  OptimConfig optim;  // (the CLI's defaults: sgd, lr 0.01, momentum 0.9); with the rate schedule
  Loss loss = Loss::SoftmaxCrossEntropy;
  uint64_t seed = 1;
  long long limit = 0;  // first N training images (0: all)
  Augment augment;      // the training step's crop and flip (off: none)
};

// One setting of a RunSpec: its key in the checkpoint's metadata and in summary.json, the flag
// that sets it ("" when none does), and its value as text that reads back to the same value
// (floats as the shortest decimal that does).
struct SpecSetting {
  enum Kind { Text, Integer, Number };
  std::string key, flag, value;
  Kind kind = Text;
};

// The table every reader and writer of a RunSpec goes through: the checkpoint, the resume check,
// summary.json and the banner.
std::vector<SpecSetting> spec_settings(const RunSpec& s);
// Back from the table's keys (the checkpoint's metadata); a missing or malformed value is a
// UsageError naming `file` and the key.
RunSpec spec_from_settings(const std::map<std::string, std::string>& values, const std::string& file);

// --lr-schedule: "constant", "step:E1,E2,...:GAMMA" (increasing epochs >= 1, GAMMA > 0) or
// "cosine[:E]" (E >= 1: the epochs it anneals over; without: 0, the run's epochs). Anything else is a
// UsageError naming the flag, what it expects and what it found. The warmup is left as it is.
void parse_lr_schedule(const std::string& text, LrSchedule* s);
// The schedule as that text (the shortest that reads back; without the warmup).
std::string lr_schedule_str(const LrSchedule& s);

// --augment: "none", or a comma-separated list of "crop:P" (P a whole number >= 1: zero padding of
// P pixels, then a random crop of the image's size) and "flip" (a random horizontal flip), each at
// most once, in any order. Anything else is a UsageError naming the flag, what it expects and what
// it found. Whether P fits the images (2P <= rows and cols) is checked once the data is loaded
// (check_augment_fits).
void parse_augment(const std::string& text, Augment* out);
// The setting as canonical text that reads back to it: "none", "crop:P", "flip" or "crop:P,flip".
std::string augment_str(const Augment& a);
// A UsageError naming --augment unless the crop's padding is at most half the images' rows and cols.
void check_augment_fits(const Augment& a, int rows, int cols);

// How this process runs the training; nothing here changes a number of the result.
struct RunOptions {
  std::string data_dir;                  // empty: the checkpoint's data on resume, else default_data_dir()
  std::string device = "auto";           // auto | cpu | cuda
  int epochs = 3;                        // epochs in all (with a resume: including those done)
  int threads = 0;                       // CPU threads (0: OpenMP default)
  std::string out;                       // empty: runs/N, a new numbered folder (or the --resume folder)
  std::string resume;                    // folder holding checkpoint.safetensors
  long long checkpoint_every = 0;        // steps between mid-epoch checkpoints (0: end of epoch only)
  bool quiet = false;                    // no progress display
  bool cuda_graph = false;               // GPU: replay the training step as a captured CUDA Graph
  std::optional<bool> fuse;              // each conv applies the plain ReLU after it; unset: auto (fuse_for)
  bool overwrite = false;                // clear another run's files out of `out` first
  std::vector<std::string> class_names;  // --class-names (empty: recognised data, else "0".."K-1")
  // The RunSpec flags the command line set ("--lr", ...): a resume checks each against the
  // checkpoint and refuses one that differs.
  std::vector<std::string> spec_flags_given;
};

struct TrainConfig {
  RunSpec spec;
  RunOptions opt;
};

}  // namespace barecnn
