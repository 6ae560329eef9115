// The CPU's measured peaks, the roofline `barecnn bench --device cpu` holds each layer to
// (include/barecnn/peak.h): FP32 FMA throughput in vector registers and memory copy bandwidth, per
// number of OpenMP threads. The twin of kernels/peak.cu: each probe does nothing but the one
// thing, on every thread at once, timed between two barriers after a warm-up, best of a few.
//
// ISA: the FMA loop is written three times with intrinsics, in functions compiled for AVX-512F,
// for AVX2+FMA and for baseline x86-64 (target attributes, not -march: the binary runs on any
// x86-64), and the widest one the CPU supports is chosen at run time. Intrinsics rather than
// vector extensions, so that the instruction counted is the instruction run, whatever
// -ffp-contract says.
#include <immintrin.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "barecnn/error.h"
#include "barecnn/peak.h"

namespace barecnn::cpu {

namespace {

// Timed runs; the best one counts. More than the GPU's 5: on a shared machine a run is slowed
// whenever another process takes one of the cores, and each run is short (a few ms).
constexpr int kPeakRuns = 10;

// ---- FP32 FMA throughput -------------------------------------------------------------------------

// Independent FMA chains per thread: a core keeps (FMA latency) x (FMA pipes) FMAs in flight, at
// most 4 cycles x 2 pipes on today's x86 cores, so 8 chains would do; 12 leave room and still fit
// the 16 vector registers of AVX2 with a and b (the 32 of AVX-512 easily).
constexpr int kChains = 12;
constexpr long kFmaIters = 1 << 20;  // per thread and run: ~4 ms on one Zen 4 core with AVX-512

// Each function runs kChains chains of x = x * a + b for `iters` steps and returns the sum of all
// lanes, so the compiler cannot drop the work; a and b are arguments (nothing folds at compile
// time) and a = 1 - b keeps every chain finite (its fixed point is 1).
[[gnu::target("avx512f")]] float fma_chains_avx512(long iters, float a_, float b_) {
  const __m512 a = _mm512_set1_ps(a_), b = _mm512_set1_ps(b_);
  __m512 x[kChains];
  for (int c = 0; c < kChains; c++) x[c] = _mm512_set1_ps(1e-3f * float(c));
  for (long i = 0; i < iters; i++) {
#pragma GCC unroll 12
    for (int c = 0; c < kChains; c++) x[c] = _mm512_fmadd_ps(x[c], a, b);
  }
  __m512 s = x[0];
  for (int c = 1; c < kChains; c++) s = _mm512_add_ps(s, x[c]);
  alignas(64) float lanes[16];  // (not _mm512_reduce_add_ps: g++ 12 warns inside its own header)
  _mm512_store_ps(lanes, s);
  float t = 0.f;
  for (float v : lanes) t += v;
  return t;
}

[[gnu::target("avx2,fma")]] float fma_chains_avx2(long iters, float a_, float b_) {
  const __m256 a = _mm256_set1_ps(a_), b = _mm256_set1_ps(b_);
  __m256 x[kChains];
  for (int c = 0; c < kChains; c++) x[c] = _mm256_set1_ps(1e-3f * float(c));
  for (long i = 0; i < iters; i++) {
#pragma GCC unroll 12
    for (int c = 0; c < kChains; c++) x[c] = _mm256_fmadd_ps(x[c], a, b);
  }
  __m256 s = x[0];
  for (int c = 1; c < kChains; c++) s = _mm256_add_ps(s, x[c]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, s);
  float t = 0.f;
  for (float v : lanes) t += v;
  return t;
}

// Baseline x86-64 has no FMA: a multiply and an add, counted as 2 FLOPs, as an FMA is.
float fma_chains_sse2(long iters, float a_, float b_) {
  const __m128 a = _mm_set1_ps(a_), b = _mm_set1_ps(b_);
  __m128 x[kChains];
  for (int c = 0; c < kChains; c++) x[c] = _mm_set1_ps(1e-3f * float(c));
  for (long i = 0; i < iters; i++) {
#pragma GCC unroll 12
    for (int c = 0; c < kChains; c++) x[c] = _mm_add_ps(_mm_mul_ps(x[c], a), b);
  }
  __m128 s = x[0];
  for (int c = 1; c < kChains; c++) s = _mm_add_ps(s, x[c]);
  alignas(16) float lanes[4];
  _mm_store_ps(lanes, s);
  return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
}

enum class Isa { Sse2, Avx2Fma, Avx512f };

Isa detect_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return Isa::Avx512f;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2Fma;
  return Isa::Sse2;
}

int lanes(Isa isa) { return isa == Isa::Avx512f ? 16 : isa == Isa::Avx2Fma ? 8 : 4; }

float fma_chains(Isa isa, long iters, float a, float b) {
  switch (isa) {
    case Isa::Avx512f:
      return fma_chains_avx512(iters, a, b);
    case Isa::Avx2Fma:
      return fma_chains_avx2(iters, a, b);
    default:
      return fma_chains_sse2(iters, a, b);
  }
}

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Runs work(thread, team) on `threads` OpenMP threads once untimed, then kPeakRuns times, each
// timed from a barrier before the work to a barrier after it (the slowest thread counts). Returns
// the shortest time in seconds and, in *team, the number of threads OpenMP gave.
template <typename F>
double best_seconds(int threads, int* team, F work) {
  double best = 0;
  for (int r = 0; r <= kPeakRuns; r++) {
    double t0 = 0, t1 = 0;
#pragma omp parallel num_threads(threads)
    {
#pragma omp barrier
#pragma omp master
      t0 = now_s();
#pragma omp barrier
      work(omp_get_thread_num(), omp_get_num_threads());
#pragma omp barrier
#pragma omp master
      {
        t1 = now_s();
        *team = omp_get_num_threads();
      }
    }
    if (r == 1 || (r > 1 && t1 - t0 < best)) best = t1 - t0;  // r == 0 warms up
  }
  BARECNN_ASSERT(best > 0, "a CPU peak probe took no measurable time");
  return best;
}

volatile float g_sink;  // the chains' sums end here, so the work cannot be dropped

double fma_peak(int threads) {
  const Isa isa = detect_isa();
  const float b = 1e-4f, a = 1.f - b;
  int team = threads;
  std::vector<float> sums(size_t(threads), 0.f);  // one per thread: no shared write
  double s = best_seconds(threads, &team, [&](int t, int) { sums[size_t(t)] = fma_chains(isa, kFmaIters, a, b); });
  float total = 0.f;
  for (float v : sums) total += v;
  g_sink = total;
  return 2.0 * kChains * lanes(isa) * double(kFmaIters) * team / s;
}

// ---- memory bandwidth ----------------------------------------------------------------------------

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

double bandwidth_peak(int threads) {
  // Each buffer 4x the last-level cache (32 MiB assumed where the OS does not say), at least
  // 128 MiB, at most a quarter of the free memory.
  long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
  if (llc <= 0) llc = sysconf(_SC_LEVEL2_CACHE_SIZE);
  if (llc <= 0) llc = 32L << 20;
  size_t bytes = std::max<size_t>(size_t(128) << 20, 4 * size_t(llc));
  long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) bytes = std::min(bytes, size_t(pages) * size_t(page) / 8);
  bytes = bytes / 4096 * 4096;
  BARECNN_ASSERT(bytes >= 4096, "no memory free for the CPU bandwidth probe");
  std::unique_ptr<char, FreeDeleter> src(static_cast<char*>(std::aligned_alloc(4096, bytes)));
  std::unique_ptr<char, FreeDeleter> dst(static_cast<char*>(std::aligned_alloc(4096, bytes)));
  if (!src || !dst) throw Error(fmt("CPU bandwidth probe: cannot allocate 2 x ", bytes >> 20, " MiB"));
  // Thread t copies bytes [lo, hi) of its own slice, 4 KiB aligned; the same slice is the one it
  // touched first (so on a NUMA machine its pages are local to it).
  auto slice = [bytes](int t, int team, size_t* lo, size_t* hi) {
    size_t pages4k = bytes / 4096;
    *lo = pages4k * size_t(t) / size_t(team) * 4096;
    *hi = pages4k * size_t(t + 1) / size_t(team) * 4096;
  };
#pragma omp parallel num_threads(threads)
  {
    size_t lo, hi;
    slice(omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
    std::memset(src.get() + lo, 1, hi - lo);  // pages touched, contents defined
    std::memset(dst.get() + lo, 0, hi - lo);
  }
  int team = threads;
  double s = best_seconds(threads, &team, [&](int t, int n) {
    size_t lo, hi;
    slice(t, n, &lo, &hi);
    std::memcpy(dst.get() + lo, src.get() + lo, hi - lo);
  });
  return 2.0 * double(bytes) / s;  // each byte read once and written once
}

// Measured once per thread count, then cached. A failed measurement throws and is retried on the
// next call.
double cached(std::map<int, double>& cache, int threads, double (*measure)(int)) {
  static std::mutex m;
  BARECNN_ASSERT(threads >= 1, "CPU peak probe: threads must be >= 1, got ", threads);
  std::lock_guard<std::mutex> lock(m);
  auto it = cache.find(threads);
  if (it != cache.end()) return it->second;
  double v = measure(threads);
  BARECNN_ASSERT(std::isfinite(v) && v > 0, "CPU peak probe: measured ", v);
  return cache[threads] = v;
}

}  // namespace

const char* peak_isa() {
  switch (detect_isa()) {
    case Isa::Avx512f:
      return "avx512f";
    case Isa::Avx2Fma:
      return "avx2+fma";
    default:
      return "sse2";
  }
}

double measure_peak_fp32_flops(int threads) {
  static std::map<int, double> cache;
  return cached(cache, threads, fma_peak);
}

double measure_peak_bandwidth(int threads) {
  static std::map<int, double> cache;
  return cached(cache, threads, bandwidth_peak);
}

}  // namespace barecnn::cpu
