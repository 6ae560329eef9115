// cuBLAS is opened at its first call (include/barecnn/cublas_lib.h), not when the process starts:
// no GPU is needed to open it, so this runs on any machine with the toolkit. (Not built against the
// emulator, whose cuBLAS is linked.)
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <string>

#include "barecnn/cublas_lib.h"

using namespace barecnn;

// The first test of the executable: nothing before it has called cuBLAS.
TEST(CublasLib, OpensOnTheFirstCallOnly) {
  const std::string soname = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
  EXPECT_FALSE(cublas::loaded());
  EXPECT_EQ(dlopen(soname.c_str(), RTLD_LAZY | RTLD_NOLOAD), nullptr) << soname << " is in the process at start";
  const std::string path = cublas::library();  // opens it, and finds every function barecnn calls
  EXPECT_NE(path.find(soname), std::string::npos) << path;
  EXPECT_TRUE(cublas::loaded());
  void* h = dlopen(path.c_str(), RTLD_LAZY | RTLD_NOLOAD);
  EXPECT_NE(h, nullptr) << path << " is not in the process after cublas::library()";
  if (h) dlclose(h);                   // the reference RTLD_NOLOAD took
  EXPECT_EQ(cublas::library(), path);  // opened once
}
