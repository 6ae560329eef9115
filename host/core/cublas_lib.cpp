// cuBLAS opened at the first call (include/barecnn/cublas_lib.h).
#include "barecnn/cublas_lib.h"

#include "barecnn/error.h"

#ifndef BARECNN_EMU
#include <dlfcn.h>

#include <atomic>
#include <type_traits>
#endif

namespace barecnn::cublas {

namespace {

// The functions barecnn calls, and where they came from.
struct Api {
  decltype(&cublasCreate) create;
  decltype(&cublasDestroy) destroy;
  decltype(&cublasSetStream) set_stream;
  decltype(&cublasSetMathMode) set_math_mode;
  decltype(&cublasSetWorkspace) set_workspace;
  decltype(&cublasSgemm) sgemm;
  std::string path;
};

}  // namespace

#ifdef BARECNN_EMU

namespace {
Api open_api() {
  return {&cublasCreate,       &cublasDestroy, &cublasSetStream, &cublasSetMathMode,
          &cublasSetWorkspace, &cublasSgemm,   "the emulator"};
}
}  // namespace
bool loaded() { return true; }

#else

// cublas_v2.h maps each name to its versioned symbol (cublasCreate -> cublasCreate_v2): the
// symbol looked up is the macro's expansion, so it is the one the header declares.
#define BARECNN_STR(x) BARECNN_STR2(x)
#define BARECNN_STR2(x) #x

namespace {
std::atomic<bool> g_loaded{false};
}  // namespace

// The soname of the toolkit this was built with. External, so the string stays in the executable,
// where profiling/device_env.sh reads which cuBLAS a GPU machine must provide.
extern const char kCublasSoname[];
const char kCublasSoname[] = "libcublas.so." BARECNN_STR(CUBLAS_VER_MAJOR);

namespace {

// kCublasSoname, found as the loader finds any library (this executable's RUNPATH holds the
// toolkit's lib folder), else in the toolkit's lib folder of this build.
Api open_api() {
  const std::string soname = kCublasSoname;
  Api api;
  void* h = nullptr;
  std::string why;
  for (const std::string& path : {soname, std::string(BARECNN_CUDA_LIB_DIR) + "/" + soname}) {
    if ((h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL))) {
      api.path = path;
      break;
    }
    const char* e = dlerror();
    why += fmt(why.empty() ? "" : "; ", e ? e : path + ": not found");
  }
  if (!h) throw Error(fmt("cannot open cuBLAS (", soname, ", part of the CUDA ", CUBLAS_VER_MAJOR, " toolkit): ", why));
  auto get = [&](auto& fn, const char* name) {
    dlerror();
    void* p = dlsym(h, name);
    if (!p) {
      const char* e = dlerror();
      std::string msg = fmt("cuBLAS at ", api.path, " has no ", name, ": ", e ? e : "null symbol");
      dlclose(h);
      throw Error(msg);
    }
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)> >(p);
  };
  get(api.create, BARECNN_STR(cublasCreate));
  get(api.destroy, BARECNN_STR(cublasDestroy));
  get(api.set_stream, BARECNN_STR(cublasSetStream));
  get(api.set_math_mode, BARECNN_STR(cublasSetMathMode));
  get(api.set_workspace, BARECNN_STR(cublasSetWorkspace));
  get(api.sgemm, BARECNN_STR(cublasSgemm));
  g_loaded = true;
  return api;  // the handle stays open for the life of the process
}

}  // namespace

bool loaded() { return g_loaded; }

#endif

namespace {
const Api& api() {
  static const Api a = open_api();  // a failed open throws, and the next call tries again
  return a;
}
}  // namespace

cublasStatus_t create(cublasHandle_t* handle) { return api().create(handle); }
cublasStatus_t destroy(cublasHandle_t handle) { return api().destroy(handle); }
cublasStatus_t set_stream(cublasHandle_t handle, cudaStream_t stream) { return api().set_stream(handle, stream); }
cublasStatus_t set_math_mode(cublasHandle_t handle, cublasMath_t mode) { return api().set_math_mode(handle, mode); }
cublasStatus_t set_workspace(cublasHandle_t handle, void* ptr, size_t bytes) {
  return api().set_workspace(handle, ptr, bytes);
}
cublasStatus_t sgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                     const float* alpha, const float* A, int lda, const float* B, int ldb, const float* beta, float* C,
                     int ldc) {
  return api().sgemm(handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}
std::string library() { return api().path; }

}  // namespace barecnn::cublas
