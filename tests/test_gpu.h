// The GPU gate of the *Gpu* tests (test_util.h stays free of CUDA headers for the CPU tests).
#pragma once

#include <gtest/gtest.h>

#include "barecnn/gpu.h"

// Skips the test (with the reason) where no GPU works. Use at the top of every *Gpu* test.
#define BARECNN_REQUIRE_GPU()                                                 \
  do {                                                                        \
    if (!::barecnn::gpu_available())                                          \
      GTEST_SKIP() << "no usable GPU: " << ::barecnn::gpu_status().reason;    \
  } while (0)
