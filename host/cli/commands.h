// The subcommands of `barecnn`, one file each (host/cli/cmd_<name>.cpp): add_<name> declares the
// command and its options on `app` and returns what runs it once the command line is parsed.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace barecnn::cli {

using Runner = std::function<int()>;

Runner add_train(CLI::App& app);
Runner add_eval(CLI::App& app);
Runner add_predict(CLI::App& app);
Runner add_gradcheck(CLI::App& app);
Runner add_bench(CLI::App& app);
Runner add_info(CLI::App& app);

// "--batch must be >= 1, got 0" unless `value` >= `min`.
void check_at_least(long long value, long long min, const char* flag);
// --threads: 0 (OpenMP's default: OMP_NUM_THREADS, else every core) to 1024.
void check_threads(long long value);
// --seed: an integer from 0 to 2^64 - 1 and nothing else (CLI11 would wrap -1 around).
uint64_t parse_seed(const std::string& value);
// --flag on|off.
bool parse_on_off(const std::string& value, const char* flag);
// --fuse auto|on|off: unset for auto (exec.h, fuse_for).
std::optional<bool> parse_fuse(const std::string& value);

}  // namespace barecnn::cli
