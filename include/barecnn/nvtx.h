// An NVTX range for the host code's phases (Nsight Systems shows them over the kernels).
#pragma once

#include <nvtx3/nvToolsExt.h>

#include <string>

namespace barecnn {

class NvtxScope {
 public:
  explicit NvtxScope(const char* name) { nvtxRangePushA(name); }
  explicit NvtxScope(const std::string& name) { nvtxRangePushA(name.c_str()); }
  ~NvtxScope() { nvtxRangePop(); }
  NvtxScope(const NvtxScope&) = delete;
  NvtxScope& operator=(const NvtxScope&) = delete;
};

}  // namespace barecnn
