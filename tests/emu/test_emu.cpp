// The emulator's own tests: each check it makes can fail. Planted faults: barrier divergence,
// shuffle misuse, memory nobody wrote (NaN), a host or freed pointer handed to a kernel, every
// launch limit, a captured launch whose by-value argument changes after the capture, unsafe calls
// during a capture, copy directions; and, in a child process (emu_faults), a missing
// __syncthreads (wrong results under every schedule; a data race under TSan) and an out-of-bounds
// global read (AddressSanitizer). Plus what must work: shuffles, barriers, cuBLAS's column-major
// GEMM with transposes and leading dimensions, events.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "launch.cuh"

namespace {

// ---- kernels -----------------------------------------------------------------------------------
__global__ void fill_kernel(float* out, float v, int n) {
  int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) out[i] = v;
}

__global__ void copy_kernel(float* out, const float* in, int n) {
  int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) out[i] = in[i];
}

// Block-wide reversal through shared memory: right only with the barrier.
__global__ void reverse_kernel(int* out, const int* in) {
  __shared__ int s[256];
  const int t = int(threadIdx.x), n = int(blockDim.x);
  s[t] = in[blockIdx.x * n + t];
  __syncthreads();
  out[blockIdx.x * n + t] = s[n - 1 - t];
}

// The same through dynamic shared memory.
__global__ void reverse_dynamic_kernel(int* out, const int* in) {
  BARECNN_DYNAMIC_SHARED(int, s);
  const int t = int(threadIdx.x), n = int(blockDim.x);
  s[t] = in[blockIdx.x * n + t];
  __syncthreads();
  out[blockIdx.x * n + t] = s[n - 1 - t];
}

__global__ void early_return_kernel(int* out) {
  if (threadIdx.x == 3) return;  // misses the barrier the others wait at
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void two_barriers_kernel(int* out) {
  if (threadIdx.x % 2) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void warp_sum_kernel(float* out, const float* in) {
  float v = in[threadIdx.x];
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  out[threadIdx.x] = v;
}

__global__ void shuffle_mask_kernel(float* out, unsigned mask, int lane_mask) {
  float v = float(threadIdx.x);
  out[threadIdx.x] = __shfl_xor_sync(mask, v, lane_mask);
}

__global__ void down_kernel(int* out) {
  int v = int(threadIdx.x);
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, v, 1);
}

__global__ void step_kernel(float* out, int step) { out[threadIdx.x] = float(step); }

__global__ void noop_kernel(float*) {}

__global__ void static_and_dynamic_kernel(float* out) {
  BARECNN_STATIC_SHARED(float, s, 8192);  // 32 KiB
  BARECNN_DYNAMIC_SHARED(float, d);
  s[threadIdx.x] = 1.0f;
  d[threadIdx.x] = 2.0f;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x] + d[threadIdx.x];
}

// ---- helpers -----------------------------------------------------------------------------------
template <typename T>
T* device(size_t n) {
  T* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, n * sizeof(T)), cudaSuccess);
  return p;
}

template <typename T>
std::vector<T> to_host(const T* d, size_t n) {
  std::vector<T> h(n);
  EXPECT_EQ(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return h;
}

// A fault is sticky until cudaDeviceReset; each test that plants one cleans up after it.
struct EmuFault : ::testing::Test {
  void TearDown() override {
    cudaDeviceReset();
    (void)cudaGetLastError();
  }
};

std::string last_error_text() {
  cudaError_t e = cudaGetLastError();
  return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}

// Runs emu_faults with `env` and returns (exit status, output).
std::pair<int, std::string> run_child(const std::string& fault, const std::string& env) {
  std::string cmd = env + " " + EMU_FAULTS_EXE + " " + fault + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf{};
  while (p && fgets(buf.data(), int(buf.size()), p)) out += buf.data();
  int st = p ? pclose(p) : -1;
  int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
  return {code, out};
}

int wrong_results(const std::string& out) {
  auto at = out.find("wrong results: ");
  if (at == std::string::npos) return -1;
  return std::atoi(out.c_str() + at + 15);
}

// ---- what must work ----------------------------------------------------------------------------
TEST(EmuDevice, SaysItIsTheEmulator) {
  cudaDeviceProp p{};
  ASSERT_EQ(cudaGetDeviceProperties(&p, 0), cudaSuccess);
  EXPECT_STREQ(p.name, "barecnn CUDA emulator");
  EXPECT_EQ(p.major * 10 + p.minor, 90);
}

TEST(EmuThreads, BarrierAndSharedMemoryAcrossBlocks) {
  const int blocks = 5, n = 200;
  std::vector<int> h(blocks * n);
  for (size_t i = 0; i < h.size(); ++i) h[i] = int(i) * 7 + 1;
  int *in = device<int>(h.size()), *out = device<int>(h.size()), *out2 = device<int>(h.size());
  ASSERT_EQ(cudaMemcpy(in, h.data(), h.size() * sizeof(int), cudaMemcpyHostToDevice), cudaSuccess);
  BARECNN_LAUNCH(reverse_kernel, blocks, n, 0, 0, out, in);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  BARECNN_LAUNCH(reverse_dynamic_kernel, blocks, n, n * sizeof(int), 0, out2, in);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  auto r = to_host(out, h.size()), r2 = to_host(out2, h.size());
  for (int b = 0; b < blocks; ++b)
    for (int t = 0; t < n; ++t) {
      ASSERT_EQ(r[size_t(b * n + t)], h[size_t(b * n + n - 1 - t)]) << "block " << b << " thread " << t;
      ASSERT_EQ(r2[size_t(b * n + t)], h[size_t(b * n + n - 1 - t)]) << "block " << b << " thread " << t;
    }
  cudaFree(in);
  cudaFree(out);
  cudaFree(out2);
}

TEST(EmuThreads, WarpShufflesExchangeAmongLanes) {
  std::vector<float> h(64);
  for (int i = 0; i < 64; ++i) h[size_t(i)] = float(i);
  float *in = device<float>(64), *out = device<float>(64);
  cudaMemcpy(in, h.data(), 64 * sizeof(float), cudaMemcpyHostToDevice);
  BARECNN_LAUNCH(warp_sum_kernel, 1, 64, 0, 0, out, in);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  auto r = to_host(out, 64);
  for (int i = 0; i < 64; ++i) EXPECT_EQ(r[size_t(i)], i < 32 ? 496.0f : 1520.0f) << "lane " << i;
  int* d = device<int>(32);
  BARECNN_LAUNCH(down_kernel, 1, 32, 0, 0, d);
  auto rd = to_host(d, 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(rd[size_t(i)], i < 31 ? i + 1 : 31) << "lane " << i;
  cudaFree(in);
  cudaFree(out);
  cudaFree(d);
}

// ---- planted faults: kernels -------------------------------------------------------------------
TEST_F(EmuFault, ThreadReturningBeforeABarrierIsDivergence) {
  int* d = device<int>(64);
  BARECNN_LAUNCH(early_return_kernel, 1, 64, 0, 0, d);
  std::string e = last_error_text();
  EXPECT_NE(e.find("cudaErrorLaunchFailure"), std::string::npos) << e;
  EXPECT_NE(e.find("barrier divergence"), std::string::npos) << e;
  EXPECT_NE(e.find("early_return_kernel"), std::string::npos) << e;
  EXPECT_NE(e.find("(3,0,0) returned"), std::string::npos) << e;
  // Sticky: the next call fails too, as after a real kernel fault.
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
}

TEST_F(EmuFault, ThreadsAtDifferentBarriersIsDivergence) {
  int* d = device<int>(32);
  BARECNN_LAUNCH(two_barriers_kernel, 1, 32, 0, 0, d);
  std::string e = last_error_text();
  EXPECT_NE(e.find("barrier divergence"), std::string::npos) << e;
  EXPECT_NE(e.find("two_barriers_kernel"), std::string::npos) << e;
}

TEST_F(EmuFault, ShuffleMaskMustNameEveryLaneThatTakesPart) {
  float* d = device<float>(64);
  // Lanes 16..31 are not in the mask but shuffle with it.
  BARECNN_LAUNCH(shuffle_mask_kernel, 1, 32, 0, 0, d, 0x0000ffffu, 1);
  std::string e = last_error_text();
  EXPECT_NE(e.find("does not name the calling lane"), std::string::npos) << e;
  cudaDeviceReset();
  // A full mask in a block whose last warp has 8 lanes.
  BARECNN_LAUNCH(shuffle_mask_kernel, 1, 40, 0, 0, d, 0xffffffffu, 1);
  e = last_error_text();
  EXPECT_NE(e.find("does not have"), std::string::npos) << e;
}

TEST(EmuMemory, NeverWrittenDeviceMemoryReadsAsNaN) {
  float *in = device<float>(33), *out = device<float>(33);
  BARECNN_LAUNCH(copy_kernel, 2, 32, 0, 0, out, in, 33);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  for (float v : to_host(out, 33)) EXPECT_TRUE(std::isnan(v));
  BARECNN_LAUNCH(fill_kernel, 1, 64, 0, 0, in, 2.5f, 33);
  BARECNN_LAUNCH(copy_kernel, 2, 32, 0, 0, out, in, 33);
  for (float v : to_host(out, 33)) EXPECT_EQ(v, 2.5f);
  cudaFree(in);
  cudaFree(out);
}

TEST_F(EmuFault, HostPointerArgumentIsAnIllegalAddress) {
  std::vector<float> host(16);
  float* d = device<float>(16);
  BARECNN_LAUNCH(copy_kernel, 1, 16, 0, 0, d, host.data(), 16);
  std::string e = last_error_text();
  EXPECT_NE(e.find("cudaErrorIllegalAddress"), std::string::npos) << e;
  EXPECT_NE(e.find("copy_kernel"), std::string::npos) << e;
  EXPECT_NE(e.find("argument 2"), std::string::npos) << e;
  EXPECT_NE(e.find("host pointer"), std::string::npos) << e;
  cudaDeviceReset();
  float* gone = device<float>(16);
  cudaFree(gone);
  BARECNN_LAUNCH(copy_kernel, 1, 16, 0, 0, d, gone, 16);
  e = last_error_text();
  EXPECT_NE(e.find("freed device buffer"), std::string::npos) << e;
  cudaDeviceReset();
  cudaFree(d);
}

TEST_F(EmuFault, EveryLaunchLimitGivesTheRuntimesError) {
  float* d = device<float>(1);
  struct Case {
    const char* what;
    dim3 grid, block;
    size_t smem;
    cudaError_t want;
  };
  const Case cases[] = {
      {"1025 threads", dim3(1), dim3(1025), 0, cudaErrorInvalidConfiguration},
      {"32 x 33 threads", dim3(1), dim3(32, 33), 0, cudaErrorInvalidConfiguration},
      {"blockDim.z 65", dim3(1), dim3(1, 1, 65), 0, cudaErrorInvalidConfiguration},
      {"grid.y 65536", dim3(1, 65536), dim3(1), 0, cudaErrorInvalidConfiguration},
      {"grid.z 65536", dim3(1, 1, 65536), dim3(1), 0, cudaErrorInvalidConfiguration},
      {"grid.x 2^31", dim3(2147483648u), dim3(1), 0, cudaErrorInvalidConfiguration},
      {"empty grid", dim3(0), dim3(32), 0, cudaErrorInvalidConfiguration},
      {"empty block", dim3(1), dim3(0), 0, cudaErrorInvalidConfiguration},
      {"48 KiB + 4 of dynamic shared memory", dim3(1), dim3(1), 48 * 1024 + 4, cudaErrorInvalidValue},
  };
  for (const Case& c : cases) {
    BARECNN_LAUNCH(noop_kernel, c.grid, c.block, c.smem, 0, d);
    EXPECT_EQ(cudaGetLastError(), c.want) << c.what;
    EXPECT_EQ(cudaGetLastError(), cudaSuccess) << c.what << ": a configuration error is not sticky";
  }
  // The limits themselves are fine.
  BARECNN_LAUNCH(noop_kernel, dim3(1, 65535, 1), dim3(1), 48 * 1024, 0, d);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  BARECNN_LAUNCH(noop_kernel, 1, dim3(16, 1, 64), 0, 0, d);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  // More dynamic shared memory after opting in, up to 227 KiB.
  EXPECT_EQ(cudaFuncSetAttribute(noop_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024), cudaSuccess);
  BARECNN_LAUNCH(noop_kernel, 1, 1, 100 * 1024, 0, d);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  BARECNN_LAUNCH(noop_kernel, 1, 1, 100 * 1024 + 4, 0, d);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFuncSetAttribute(noop_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024 + 4),
            cudaErrorInvalidValue);
  cudaFree(d);
}

// Shared memory nobody wrote in this block reads as NaN, not as the previous block's values.
__global__ void unwritten_shared_kernel(float* out, int write) {
  BARECNN_STATIC_SHARED(float, s, 64);
  if (write) s[threadIdx.x] = 1.0f;
  __syncthreads();
  out[blockIdx.x * 64 + threadIdx.x] = s[threadIdx.x];
}

TEST(EmuMemory, UnwrittenSharedMemoryReadsAsNaN) {
  float* d = device<float>(64 * 3);
  BARECNN_LAUNCH(unwritten_shared_kernel, 3, 64, 0, 0, d, 1);
  for (float v : to_host(d, 64 * 3)) ASSERT_EQ(v, 1.0f);
  BARECNN_LAUNCH(unwritten_shared_kernel, 3, 64, 0, 0, d, 0);  // the same arrays, not written
  for (float v : to_host(d, 64 * 3)) ASSERT_TRUE(std::isnan(v)) << v;
  cudaFree(d);
}

TEST_F(EmuFault, StaticPlusDynamicSharedMemoryMustFitTheLimit) {
  float* d = device<float>(32);
  BARECNN_LAUNCH(static_and_dynamic_kernel, 1, 32, 16 * 1024, 0, d);  // 32 + 16 = 48 KiB: fits
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  for (float v : to_host(d, 32)) EXPECT_EQ(v, 3.0f);
  BARECNN_LAUNCH(static_and_dynamic_kernel, 1, 32, 16 * 1024 + 4, 0, d);  // 4 bytes over
  std::string e = last_error_text();
  EXPECT_NE(e.find("cudaErrorInvalidValue"), std::string::npos) << e;
  EXPECT_NE(e.find("32768 bytes of static and 16388 bytes of dynamic"), std::string::npos) << e;
  EXPECT_NE(e.find("static_and_dynamic_kernel"), std::string::npos) << e;
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << "a launch error is not sticky";
  // After opting in, up to 227 KiB in all.
  ASSERT_EQ(cudaFuncSetAttribute(static_and_dynamic_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 195 * 1024),
            cudaSuccess);
  BARECNN_LAUNCH(static_and_dynamic_kernel, 1, 32, 195 * 1024, 0, d);  // 32 + 195 = 227 KiB
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  cudaFree(d);
}

// ---- planted faults: streams, graphs, copies ---------------------------------------------------
TEST_F(EmuFault, CapturedLaunchKeepsTheByValueArgumentOfTheCapture) {
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  float* d = device<float>(4);
  int step = 1;
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  BARECNN_LAUNCH(step_kernel, 1, 4, 0, s, d, step);
  cudaGraph_t g;
  ASSERT_EQ(cudaStreamEndCapture(s, &g), cudaSuccess);
  for (float v : to_host(d, 4)) EXPECT_TRUE(std::isnan(v)) << "a captured launch must not run";
  cudaGraphExec_t x;
  ASSERT_EQ(cudaGraphInstantiate(&x, g, 0), cudaSuccess);
  for (step = 2; step <= 3; ++step) {  // the per-step value a caller might hope the graph sees
    ASSERT_EQ(cudaGraphLaunch(x, s), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    for (float v : to_host(d, 4)) EXPECT_EQ(v, 1.0f) << "replay " << step << " must see the captured step (1)";
  }
  cudaGraphExecDestroy(x);
  cudaGraphDestroy(g);
  cudaStreamDestroy(s);
  cudaFree(d);
}

TEST_F(EmuFault, UnsafeCallDuringCaptureInvalidatesIt) {
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  float* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, 64), cudaErrorStreamCaptureUnsupported);
  cudaGraph_t g = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(s, &g), cudaErrorStreamCaptureInvalidated);
  EXPECT_EQ(g, nullptr);
  cudaStreamDestroy(s);
}

TEST_F(EmuFault, CopyDirectionIsChecked) {
  float* d = device<float>(8);
  std::vector<float> h(8, 1.0f), h2(8);
  EXPECT_EQ(cudaMemcpy(h2.data(), h.data(), 32, cudaMemcpyHostToDevice), cudaErrorInvalidMemcpyDirection);
  EXPECT_EQ(cudaMemcpy(d, h.data(), 32, cudaMemcpyDeviceToHost), cudaErrorInvalidMemcpyDirection);
  EXPECT_EQ(cudaMemcpy(d, h.data(), 36, cudaMemcpyHostToDevice), cudaErrorInvalidValue) << "runs past the end";
  EXPECT_EQ(cudaMemcpy(d, h.data(), 32, cudaMemcpyHostToDevice), cudaSuccess);
  cudaFree(d);
}

TEST(EmuEvents, ElapsedTimeIsMeasuredAndDisableTimingRefusesIt) {
  cudaEvent_t a, b, c;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  cudaEventCreateWithFlags(&c, cudaEventDisableTiming);
  cudaEventRecord(a, 0);
  cudaEventRecord(b, 0);
  cudaEventRecord(c, 0);
  float ms = -1;
  EXPECT_EQ(cudaEventElapsedTime(&ms, a, b), cudaSuccess);
  EXPECT_GE(ms, 0.0f);
  EXPECT_NE(cudaEventElapsedTime(&ms, a, c), cudaSuccess);
  (void)cudaGetLastError();
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaEventDestroy(c);
}

// ---- cuBLAS ------------------------------------------------------------------------------------
TEST(EmuCublas, SgemmIsColumnMajorWithTransposesAndLeadingDimensions) {
  cublasHandle_t h;
  ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  const int m = 5, n = 3, k = 7;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      // Stored column-major: A is (ta ? k x m : m x k) with lda = rows + 2, likewise B; C has ldc = m + 1.
      const int ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
      const int lda = ar + 2, ldb = br + 2, ldc = m + 1;
      std::vector<float> A(size_t(lda * ac)), B(size_t(ldb * bc)), C(size_t(ldc * n), 0.5f);
      for (size_t i = 0; i < A.size(); ++i) A[i] = float(int(i % 11) - 5) * 0.25f;
      for (size_t i = 0; i < B.size(); ++i) B[i] = float(int(i % 7) - 3) * 0.5f;
      float *dA = device<float>(A.size()), *dB = device<float>(B.size()), *dC = device<float>(C.size());
      cudaMemcpy(dA, A.data(), A.size() * 4, cudaMemcpyHostToDevice);
      cudaMemcpy(dB, B.data(), B.size() * 4, cudaMemcpyHostToDevice);
      cudaMemcpy(dC, C.data(), C.size() * 4, cudaMemcpyHostToDevice);
      const float alpha = 1.5f, beta = 0.25f;
      ASSERT_EQ(cublasSgemm(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &alpha, dA, lda,
                            dB, ldb, &beta, dC, ldc),
                CUBLAS_STATUS_SUCCESS);
      auto got = to_host(dC, C.size());
      for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) {
          double s = 0;
          for (int p = 0; p < k; ++p) {
            double a = ta ? A[size_t(p + i * lda)] : A[size_t(i + p * lda)];
            double b = tb ? B[size_t(j + p * ldb)] : B[size_t(p + j * ldb)];
            s += a * b;
          }
          double want = alpha * s + beta * 0.5;
          EXPECT_NEAR(got[size_t(i + j * ldc)], want, 1e-5 + 1e-5 * std::fabs(want)) << "ta=" << ta << " tb=" << tb;
        }
      // The padding rows of C are not touched.
      EXPECT_EQ(got[size_t(m)], 0.5f);
      cudaFree(dA);
      cudaFree(dB);
      cudaFree(dC);
    }
  // A leading dimension smaller than the rows is refused, as by cuBLAS.
  const float one = 1.0f;
  float* d = device<float>(64);
  EXPECT_EQ(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, d, 3, d, 4, &one, d, 4),
            CUBLAS_STATUS_INVALID_VALUE);
  cudaFree(d);
  cublasDestroy(h);
}

// ---- in a child process: the schedule and the sanitizers ---------------------------------------
TEST(EmuSchedule, MissingBarrierGivesWrongResultsUnderEverySchedule) {
#ifdef BARECNN_EMU_TSAN_BUILD
  // Under ThreadSanitizer the missing barrier is a reported data race.
  auto [code, out] = run_child("race", "BARECNN_EMU_SCHEDULE=inorder");
  EXPECT_NE(code, 0) << out;
  EXPECT_NE(out.find("ThreadSanitizer: data race"), std::string::npos) << out;
  auto [code_ok, out_ok] = run_child("race-fixed", "BARECNN_EMU_SCHEDULE=shuffle:3");
  EXPECT_EQ(code_ok, 0) << out_ok;
  EXPECT_EQ(out_ok.find("ThreadSanitizer"), std::string::npos) << out_ok;
  EXPECT_EQ(wrong_results(out_ok), 0) << out_ok;
#else
  for (const char* s : {"inorder", "reverse", "shuffle:1", "shuffle:2"}) {
    auto [code, out] = run_child("race", std::string("BARECNN_EMU_SCHEDULE=") + s);
    EXPECT_EQ(code, 0) << s << ": " << out;
    EXPECT_GT(wrong_results(out), 0) << s << ": " << out;
    auto [code_ok, out_ok] = run_child("race-fixed", std::string("BARECNN_EMU_SCHEDULE=") + s);
    EXPECT_EQ(code_ok, 0) << s << ": " << out_ok;
    EXPECT_EQ(wrong_results(out_ok), 0) << s << ": " << out_ok;
  }
#endif
}

#ifndef BARECNN_EMU_TSAN_BUILD
TEST(EmuMemory, OutOfBoundsGlobalReadIsCaughtByAddressSanitizer) {
  auto [code, out] = run_child("oob", "ASAN_OPTIONS=abort_on_error=1:detect_leaks=0");
  EXPECT_NE(code, 0) << out;
  EXPECT_NE(out.find("AddressSanitizer: heap-buffer-overflow"), std::string::npos) << out;
  EXPECT_NE(out.find("read_past_end_kernel"), std::string::npos) << out;
}
#endif

TEST(EmuSchedule, BadScheduleIsRefusedWithAMessage) {
  auto [code, out] = run_child("race-fixed", "BARECNN_EMU_SCHEDULE=sideways");
  EXPECT_NE(code, 0) << out;
  EXPECT_NE(out.find("BARECNN_EMU_SCHEDULE=sideways"), std::string::npos) << out;
}

}  // namespace
