// barecnn: the command line. One subcommand per job, one file each (commands.h); every failure
// becomes one message on stderr and exit code 1 (runtime) or 2 (usage).
#include <CLI/CLI.hpp>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <vector>

#include "barecnn/arch.h"
#include "barecnn/error.h"
#include "barecnn/names.h"
#include "barecnn/version.h"
#include "commands.h"

using namespace barecnn;

namespace barecnn::cli {

void check_at_least(long long value, long long min, const char* flag) {
  if (value < min) throw UsageError(fmt(flag, " must be >= ", min, ", got ", value));
}

void check_threads(long long value) {
  check_at_least(value, 0, "--threads");
  if (value > 1024) throw UsageError(fmt("--threads must be from 0 to 1024, got ", value));
}

uint64_t parse_seed(const std::string& s) {
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (s.empty() || !std::isdigit(static_cast<unsigned char>(s[0])) || *end != '\0' || errno == ERANGE)
    throw UsageError(fmt("--seed must be an integer from 0 to 18446744073709551615, got '", s, "'"));
  return v;
}

bool parse_on_off(const std::string& value, const char* flag) {
  if (value != "on" && value != "off") throw UsageError(fmt(flag, ": expected on or off, got '", value, "'"));
  return value == "on";
}

std::optional<bool> parse_fuse(const std::string& value) {
  if (value == "auto") return std::nullopt;
  if (value != "on" && value != "off") throw UsageError(fmt("--fuse: expected auto, on or off, got '", value, "'"));
  return value == "on";
}

}  // namespace barecnn::cli

namespace {

std::string nearest_option(CLI::App* sub, const std::string& bad) {
  std::vector<std::string> names;
  for (const CLI::Option* o : sub->get_options())
    for (auto& l : o->get_lnames()) names.push_back("--" + l);
  return nearest(bad, names);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"barecnn: train convolutional networks on NVIDIA GPUs (or the CPU) from the command line"};
  app.set_version_flag("--version,-V", std::string("barecnn ") + barecnn_version_string() + " (" + BARECNN_BUILD_TYPE +
                                           " build, CUDA architectures " + BARECNN_CUDA_ARCHS + ")\n");
  app.require_subcommand(0, 1);
  app.footer(
      "Examples:\n"
      "  barecnn train --arch paper --epochs 3            # Fashion-MNIST, GPU if present\n"
      "  barecnn eval --model runs/latest/model.safetensors\n"
      "  barecnn gradcheck --arch lenet5 --loss mse\n"
      "  barecnn info");
  const std::vector<std::pair<CLI::App*, cli::Runner>> commands = [&app] {
    std::vector<std::pair<CLI::App*, cli::Runner>> c;
    for (auto add :
         {cli::add_train, cli::add_eval, cli::add_predict, cli::add_gradcheck, cli::add_bench, cli::add_info}) {
      cli::Runner run = add(app);
      c.emplace_back(app.get_subcommands({}).back(), std::move(run));
    }
    return c;
  }();

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ExtrasError& e) {
    std::string msg = e.what();
    // Suggest the nearest option of the subcommand that was named.
    CLI::App* sub = nullptr;
    if (argc > 1)
      for (CLI::App* s : app.get_subcommands({}))
        if (s->get_name() == argv[1]) sub = s;
    std::string hint;
    if (!sub && argc > 1 && argv[1][0] != '-') {
      std::vector<std::string> names;
      for (CLI::App* s : app.get_subcommands({})) names.push_back(s->get_name());
      std::string near = nearest(argv[1], names);
      hint = fmt("unknown command '", argv[1], "'", near.empty() ? "" : "; did you mean '" + near + "'?");
    }
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
    if (sub)
      std::fprintf(stderr, "run 'barecnn %s --help' for the options\n", sub->get_name().c_str());
    else
      std::fprintf(stderr, "run 'barecnn --help' for the commands\n");
    return 2;
  } catch (const CLI::ParseError& e) {
    std::string msg = e.what();
    // "--epochs: At Most 1 required but received 2": a flag given twice.
    const size_t at_most = msg.find(": At Most 1 required but received ");
    if (at_most != std::string::npos)
      msg = fmt(msg.substr(0, at_most), " is given ", msg.substr(msg.rfind(' ') + 1), " times; give it once");
    std::fprintf(stderr, "barecnn: error: %s\nrun 'barecnn%s --help' for the options\n", msg.c_str(),
                 argc > 1 && argv[1][0] != '-' ? (std::string(" ") + argv[1]).c_str() : "");
    return 2;
  }

  try {
    for (const auto& [sub, run] : commands)
      if (sub->parsed()) return run();
    // `barecnn` alone: the list of commands.
    std::printf("%s", app.help().c_str());
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "barecnn: error: %s\n", e.what());
    return e.exit_code();
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "barecnn: error: out of host memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "barecnn: error: %s\n", e.what());
    return 1;
  }
}
