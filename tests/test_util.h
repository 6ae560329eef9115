// Shared test helpers: tolerance comparison with a readable report, central-difference gradient
// checks in double, random inputs without ties or kinks. The GPU gate is in test_gpu.h.
#pragma once

#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "barecnn/error.h"
#include "barecnn/gradcheck_criterion.h"
#include "barecnn/rng.h"
#include "barecnn/shape.h"

namespace barecnn::test {

// The shapes of the op tests (named "test conv" / "test pool" in messages), through the
// geometry's validating constructors: one stride and padding for both axes, or one per axis.
inline Conv2dShape conv_shape(int N, int C, int H, int W, int K, int kh, int kw, int stride, int pad) {
  return make_conv2d_shape(N, C, H, W, K, kh, kw, stride, pad, "test conv");
}
inline Conv2dShape conv_shape(int N, int C, int H, int W, int K, int kh, int kw, int sh, int sw, int ph, int pw) {
  return make_conv2d_shape(N, C, H, W, K, kh, kw, sh, sw, ph, pw, "test conv");
}
inline Pool2dShape pool_shape(int N, int C, int H, int W, int kh, int kw, int stride) {
  return make_pool2d_shape(N, C, H, W, kh, kw, stride, "test pool");
}
inline Pool2dShape pool_shape(int N, int C, int H, int W, int kh, int kw, int sh, int sw) {
  return make_pool2d_shape(N, C, H, W, kh, kw, sh, sw, "test pool");
}

// Under ThreadSanitizer (the emu-tsan preset: the GPU tests on the CUDA emulator) a kernel runs
// about a hundred times slower than in a plain build. The few tests with the largest shapes use a
// smaller batch there that still takes the same code paths (each use says why it still does).
#if defined(__SANITIZE_THREAD__)
constexpr bool kThreadSanitizer = true;
#else
constexpr bool kThreadSanitizer = false;
#endif

// |ref - out| <= atol + rtol*|ref| for every element; on failure reports the worst element and
// the first few mismatches.
template <typename A, typename B>
::testing::AssertionResult all_close(const std::vector<A>& ref, const std::vector<B>& out, double atol, double rtol) {
  if (ref.size() != out.size())
    return ::testing::AssertionFailure() << "size " << out.size() << " != reference size " << ref.size();
  size_t bad = 0, worst = 0;
  double worst_excess = -1;
  std::ostringstream first;
  for (size_t i = 0; i < ref.size(); ++i) {
    double r = double(ref[i]), o = double(out[i]);
    double err = std::fabs(r - o), lim = atol + rtol * std::fabs(r);
    bool ok = err <= lim && std::isfinite(o) == std::isfinite(r);
    double excess = std::isfinite(err) ? err - lim : INFINITY;
    if (excess > worst_excess) {
      worst_excess = excess;
      worst = i;
    }
    if (!ok) {
      if (bad < 5) first << "\n  [" << i << "] ref " << r << " got " << o << " (|diff| " << err << " > " << lim << ")";
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << ref.size() << " elements differ (atol " << atol << ", rtol "
                                       << rtol << "); worst at [" << worst << "]: ref " << double(ref[worst]) << " got "
                                       << double(out[worst]) << "; first mismatches:" << first.str();
}

// Uniform values in [lo, hi).
inline std::vector<double> random_vec(size_t n, uint64_t seed, double lo = -1, double hi = 1) {
  Rng r(seed);
  std::vector<double> v(n);
  for (auto& x : v) x = r.uniform(lo, hi);
  return v;
}
// Values in [lo, hi) with no two closer than `gap` (no ties for max-pool) and none within `gap`
// of zero (away from ReLU-like kinks): a shuffled, jittered ladder.
inline std::vector<double> tie_free_vec(size_t n, uint64_t seed, double lo = -1, double hi = 1) {
  Rng r(seed);
  std::vector<double> v(n);
  double step = (hi - lo) / double(n + 1);
  for (size_t i = 0; i < n; ++i) {
    double x = lo + step * (double(i) + 0.75 + 0.2 * r.uniform());
    if (std::fabs(x) < 0.3 * step) x += 0.5 * step;
    v[i] = x;
  }
  for (size_t i = n; i > 1; --i) std::swap(v[i - 1], v[r.next_u64() % i]);
  return v;
}
template <typename T>
std::vector<T> cast_vec(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// Central-difference gradient check of a scalar function f(x) against an analytic gradient, with
// the criterion of `barecnn gradcheck` (gradcheck_criterion.h). The op tests use inputs without
// ties or kinks, so here an entry at a kink fails too. `indices` limits the checked entries
// (empty = all). Also fails if the analytic gradient is all zero (unless allow_zero).
inline ::testing::AssertionResult gradcheck(const std::function<double(const std::vector<double>&)>& f,
                                            std::vector<double> x, const std::vector<double>& analytic, double h = 1e-6,
                                            double tol = 1e-6, std::vector<size_t> indices = {},
                                            bool allow_zero = false) {
  if (analytic.size() != x.size())
    return ::testing::AssertionFailure() << "analytic gradient has " << analytic.size() << " entries, x has "
                                         << x.size();
  if (indices.empty())
    for (size_t i = 0; i < x.size(); ++i) indices.push_back(i);
  double worst = 0;
  size_t worst_i = 0, nonzero = 0;
  std::ostringstream msg;
  int bad = 0;
  const double f0 = f(x);
  for (size_t i : indices) {
    double x0 = x[i];
    x[i] = x0 + h;
    double fp = f(x);
    x[i] = x0 - h;
    double fm = f(x);
    x[i] = x0;
    const double a = analytic[i];
    const GradEntry e = check_grad_entry(a, fp, fm, f0, h, tol);
    if (a != 0) ++nonzero;
    if (e.rel > worst) {
      worst = e.rel;
      worst_i = i;
    }
    if (e.verdict != GradVerdict::Pass) {
      if (bad < 5)
        msg << "\n  [" << i << "] analytic " << a << " numeric " << e.numeric << " rel " << e.rel
            << (e.verdict == GradVerdict::Kink ? " (at a kink)" : "");
      ++bad;
    }
  }
  if (bad)
    return ::testing::AssertionFailure() << bad << " of " << indices.size() << " entries fail (tol " << tol
                                         << "), worst rel " << worst << " at [" << worst_i << "]:" << msg.str();
  if (!allow_zero && nonzero == 0) return ::testing::AssertionFailure() << "the analytic gradient is all zero";
  return ::testing::AssertionSuccess();
}

// A fresh, empty folder under the test build's tmp directory, private to this process: ctest
// runs the cases of one executable as parallel processes, each with its own suite set-up.
inline std::string fresh_dir(const std::string& name) {
  std::string d = std::string(BARECNN_TEST_TMP) + "/" + std::to_string(::getpid()) + "/" + name;
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

// The barecnn executable the CLI tests run: $BARECNN_EXE when set (a build carried to another
// machine, e.g. build-pack/ on the GPU machine, where the build folder's path does not exist),
// else the one this build made.
inline std::string barecnn_exe() {
  const char* e = std::getenv("BARECNN_EXE");
  return e != nullptr && *e != '\0' ? std::string(e) : std::string(BARECNN_EXE);
}

// A whole file as bytes, and bytes as a whole file.
inline std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}
inline void spit(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

// The message of the UsageError that f() throws; says so when it throws nothing or another type.
template <typename F>
std::string usage_error_message(F&& f) {
  try {
    f();
  } catch (const UsageError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("WRONG EXCEPTION TYPE: ") + e.what();
  }
  return "NO EXCEPTION";
}

// A shell command's exit status (128 + signal when killed) and its stdout and stderr together.
struct CommandResult {
  int rc = -1;
  std::string out;
};
inline CommandResult run_command(const std::string& cmd) {
  CommandResult r;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int st = pclose(p);
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

// A train() observer that stops the run after `steps` optimizer steps, as if it were killed.
inline std::function<void(long long)> stop_after(long long steps) {
  return [steps](long long done) {
    if (done >= steps) throw Error(fmt("stopped after ", done, " steps (test::stop_after)"));
  };
}

}  // namespace barecnn::test
