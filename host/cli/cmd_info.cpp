// `barecnn info`: the build, the CUDA runtime and driver, the GPU (or why there is none), the data.
#include <omp.h>

#include <cstdio>

#include "barecnn/arch.h"
#include "barecnn/cublas_lib.h"
#include "barecnn/error.h"
#include "barecnn/fileutil.h"
#include "barecnn/gpu.h"
#include "barecnn/idx.h"
#include "barecnn/loss.h"
#include "barecnn/version.h"
#include "commands.h"

namespace barecnn::cli {

namespace {

int cmd_info() {
  std::printf("barecnn %s (%s build)\n", barecnn_version_string().c_str(), BARECNN_BUILD_TYPE);
  std::printf("  CUDA architectures compiled in: %s\n", compiled_cuda_archs());
  const GpuStatus& g = gpu_status();
  std::printf("  CUDA runtime: %s, driver: %s\n", version_str(g.runtime_version).c_str(),
              g.driver_version ? version_str(g.driver_version).c_str() : "none");
  if (g.ok) {
    std::printf("  GPU 0: %s, compute capability %d.%d, %d SMs, %.1f GiB (%d visible)\n", g.name.c_str(), g.cc_major,
                g.cc_minor, g.sm_count, g.total_mem / 1073741824.0, g.device_count);
    if (g.emulated)
      std::printf(
          "  (this build runs the GPU code on the CPU through the CUDA emulator in tests/emu: for\n"
          "   testing kernels without a GPU; its timings say nothing about a GPU)\n");
    // Opened here, as the first GPU run would (cublas_lib.h), so that a missing or broken cuBLAS
    // shows up before a run needs it.
    try {
      std::printf("  cuBLAS: %s\n", cublas::library().c_str());
    } catch (const Error& e) {
      std::printf("  cuBLAS: cannot be opened: %s\n  (GPU runs need it for the dense layers)\n", e.what());
    }
  } else {
    std::printf("  GPU: none usable: %s\n", g.reason.c_str());
    std::printf("  (training runs on the CPU; --device auto picks it)\n");
    std::printf("  cuBLAS: not opened (only a GPU run opens it)\n");
  }
  std::printf("  CPU threads (OpenMP): %d\n", omp_get_max_threads());
  std::printf("  default data: %s (%s)\n", default_data_dir(),
              file_exists(path_join(default_data_dir(), "train-images-idx3-ubyte.gz")) ||
                      file_exists(path_join(default_data_dir(), "train-images-idx3-ubyte"))
                  ? "present"
                  : "missing: sudo apt-get install dataset-fashion-mnist");
  std::printf("  presets:\n");
  for (auto& [name, spec] : presets()) {
    std::printf("    %-7s %s\n", name.c_str(), spec.c_str());
    std::string recipe;
    for (auto& [flag, value] : preset_recipe(name)) recipe += " " + flag + " " + value;
    if (!recipe.empty())
      std::printf("            train --arch %s brings its recipe:%s\n", name.c_str(), recipe.c_str());
  }
  std::printf("  losses:");
  int n = 0;
  const char* const* names = loss_names(&n);
  for (int i = 0; i < n; ++i) std::printf(" %s", names[i]);
  std::printf("\n");
  return 0;
}

}  // namespace

Runner add_info(CLI::App& app) {
  auto* info = app.add_subcommand("info", "build configuration, CUDA runtime, GPUs");
  info->footer("Example:\n  barecnn info        # is there a GPU this build can use, and if not, why");
  return cmd_info;
}

}  // namespace barecnn::cli
