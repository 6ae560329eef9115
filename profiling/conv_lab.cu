// Convolution kernel lab: barecnn's three convolution kernels (forward, input gradient, weight
// gradient), in the three implementations (ConvImpl::Simple, ::Tiled and ::Fast), against cuDNN's fastest
// algorithm for the same shapes and the same data, on every conv layer shape of the preset nets.
//
//   build-x/profiling/barecnn_conv_lab [--batch 64,256,1024] [--shape paper,lenet5,deep.2]
//       [--op forward,bwd_input,bwd_weight] [--reps 20] [--warmup 3] [--no-bias]
//       [--deterministic] [--workspace-mib 1024] [--json FILE]
//
// cuDNN runs twice per op, each time with the fastest algorithm cudnnFind*AlgorithmEx measured
// on these very tensors:
//   - "cuDNN FP32": math type CUDNN_FMA_MATH on the convolution descriptor. cuDNN then only
//     considers kernels that use FMA instructions: true FP32, no TF32 tensor cores. The algorithm
//     kept must report mathType CUDNN_FMA_MATH (the check PyTorch makes when allow_tf32 is off).
//   - "cuDNN TF32": math type CUDNN_DEFAULT_MATH, cuDNN's default, which on Ampere and newer
//     GPUs lets FP32 convolutions run on TF32 tensor cores (10-bit mantissa inputs, FP32
//     accumulation). Whether the fastest algorithm uses them shows in its math type and in the
//     larger difference from barecnn. NVIDIA_TF32_OVERRIDE=0 in the environment turns TF32 off in
//     every NVIDIA library, and with it this column becomes FP32: the lab says so when it is set.
// As PyTorch does, the descriptor's math type is set before the search (so the search considers
// the kernels that math type allows) and set again to the math type of the algorithm picked,
// which is what cuDNN runs.
//
// Bias: barecnn fuses it (the forward kernel adds it, the weight-gradient kernel also produces
// dbias). cuDNN's legacy convolution calls do not, so its forward is timed as
// cudnnConvolutionForward + cudnnAddTensor and its weight gradient as
// cudnnConvolutionBackwardFilter + cudnnConvolutionBackwardBias, both inside the timed region.
// --no-bias drops the bias on both sides. The FLOP count is the convolution's alone:
// 2 * N * K * OH * OW * C * kh * kw for each of the three ops.
//
// Timing: CUDA events on one stream, around each call, after --warmup calls; the median (and
// fastest) of --reps calls. When the first call takes over 50 ms (the Simple kernels at batch
// 1024) it is the only warm-up and fewer calls are timed (at least 3, about a second's worth),
// so a whole sweep stays within a few minutes.
//
// Sanity check: every output is compared with cuDNN FP32's, as max |out - cudnn| / max |cudnn|
// over the tensor (relative to the tensor's largest value, which stays meaningful where single
// entries are near 0). FP32 against FP32 differs only in summation order: ~1e-6..1e-5. A
// difference over 1e-3 (FP32) or 5e-2 (TF32) is flagged with '!' and makes the exit code 1.
//
// Without a usable GPU it prints one line and exits with 2. cuDNN is linked into this program
// only; profiling/find_cudnn.sh prints the folder to put on LD_LIBRARY_PATH where cuDNN is not in
// the loader's path (e.g. only PyTorch's copy under site-packages).
#include <cuda_runtime.h>
#include <cudnn.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "barecnn/cuda_check.h"
#include "barecnn/device_buffer.h"
#include "barecnn/error.h"
#include "barecnn/fileutil.h"
#include "barecnn/gpu.h"
#include "barecnn/gpu_ops.h"
#include "barecnn/rng.h"
#include "barecnn/shape.h"

using namespace barecnn;
using json = nlohmann::json;

namespace {

// What the lab is doing, appended to cuDNN errors ("deep.2 N=256 bwd_weight, cuDNN TF32").
std::string g_context;

[[noreturn]] void throw_cudnn_error(cudnnStatus_t st, const char* expr, const char* file, int line) {
  char last[1024] = {0};
  cudnnGetLastErrorString(last, sizeof(last));
  std::string msg =
      fmt("cuDNN error ", cudnnGetErrorString(st), " (", int(st), ") in `", expr, "` at ", file, ":", line);
  if (last[0]) msg += fmt(": ", last);
  if (!g_context.empty()) msg += fmt(" [", g_context, "]");
  if (st == CUDNN_STATUS_SUBLIBRARY_LOADING_FAILED || st == CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH)
    msg += "; put the folder that profiling/find_cudnn.sh prints on LD_LIBRARY_PATH";
  throw Error(msg);
}

}  // namespace

// Names the failing call, its file and line, cuDNN's own last message and what the lab was doing.
#define CUDNN_CHECK(expr)                                                                                           \
  do {                                                                                                              \
    cudnnStatus_t barecnn_cudnn_st_ = (expr);                                                                       \
    if (barecnn_cudnn_st_ != CUDNN_STATUS_SUCCESS) throw_cudnn_error(barecnn_cudnn_st_, #expr, __FILE__, __LINE__); \
  } while (0)

namespace {

// ---- RAII owners for cuDNN objects and CUDA events (destructors never throw) ----

template <typename T, cudnnStatus_t (*Create)(T*), cudnnStatus_t (*Destroy)(T)>
class CudnnObject {
 public:
  CudnnObject() { CUDNN_CHECK(Create(&p_)); }
  ~CudnnObject() {
    if (p_) Destroy(p_);
  }
  CudnnObject(const CudnnObject&) = delete;
  CudnnObject& operator=(const CudnnObject&) = delete;
  T get() const { return p_; }

 private:
  T p_ = nullptr;
};
using CudnnHandle = CudnnObject<cudnnHandle_t, cudnnCreate, cudnnDestroy>;
using TensorDesc = CudnnObject<cudnnTensorDescriptor_t, cudnnCreateTensorDescriptor, cudnnDestroyTensorDescriptor>;
using FilterDesc = CudnnObject<cudnnFilterDescriptor_t, cudnnCreateFilterDescriptor, cudnnDestroyFilterDescriptor>;
using ConvDesc =
    CudnnObject<cudnnConvolutionDescriptor_t, cudnnCreateConvolutionDescriptor, cudnnDestroyConvolutionDescriptor>;

class CudaEvent {
 public:
  CudaEvent() { CUDA_CHECK(cudaEventCreate(&e_)); }
  ~CudaEvent() {
    if (e_) CUDA_CHECK_NOTHROW(cudaEventDestroy(e_));
  }
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  CudaEvent(CudaEvent&& o) noexcept : e_(o.e_) { o.e_ = nullptr; }
  cudaEvent_t get() const { return e_; }

 private:
  cudaEvent_t e_ = nullptr;
};

// ---- options ----

enum class Op : int { Forward, BwdInput, BwdWeight };
const char* op_name(Op op) {
  switch (op) {
    case Op::Forward:
      return "forward";
    case Op::BwdInput:
      return "bwd_input";
    case Op::BwdWeight:
      return "bwd_weight";
  }
  return "?";
}

struct Options {
  std::vector<int> batches = {64, 256, 1024};
  std::vector<std::string> shapes;  // empty: all
  std::vector<Op> ops = {Op::Forward, Op::BwdInput, Op::BwdWeight};
  int reps = 20, warmup = 3;
  bool bias = true, deterministic = false;
  size_t workspace_cap = size_t(1024) << 20;  // bytes
  std::string json_path;
};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(',', start);
    if (end == std::string::npos) end = s.size();
    if (end > start) out.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

int parse_positive(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || x < 1 || x > (1 << 30))
    throw UsageError(fmt(flag, " needs a positive integer, got \"", v, "\""));
  return int(x);
}

const char* kUsage =
    "usage: barecnn_conv_lab [--batch 64,256,1024] [--shape paper,lenet5,deep.2,...] "
    "[--op forward,bwd_input,bwd_weight] [--reps 20] [--warmup 3] [--no-bias] [--deterministic] "
    "[--workspace-mib 1024] [--json FILE]";

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError("" + a + " needs a value\n" + kUsage);
      return argv[++i];
    };
    if (a == "--batch") {
      o.batches.clear();
      for (auto& b : split_list(value())) o.batches.push_back(parse_positive("--batch", b));
      if (o.batches.empty()) throw UsageError("--batch needs at least one batch size, e.g. --batch 64,256");
    } else if (a == "--shape") {
      o.shapes = split_list(value());
    } else if (a == "--op") {
      o.ops.clear();
      for (auto& s : split_list(value())) {
        if (s == "forward")
          o.ops.push_back(Op::Forward);
        else if (s == "bwd_input")
          o.ops.push_back(Op::BwdInput);
        else if (s == "bwd_weight")
          o.ops.push_back(Op::BwdWeight);
        else
          throw UsageError("--op takes forward, bwd_input, bwd_weight (comma-separated), got \"" + s + "\"");
      }
    } else if (a == "--reps") {
      o.reps = parse_positive("--reps", value());
    } else if (a == "--warmup") {
      o.warmup = parse_positive("--warmup", value());
    } else if (a == "--no-bias") {
      o.bias = false;
    } else if (a == "--deterministic") {
      o.deterministic = true;
    } else if (a == "--workspace-mib") {
      o.workspace_cap = size_t(parse_positive("--workspace-mib", value())) << 20;
    } else if (a == "--json") {
      o.json_path = value();
    } else if (a == "--help" || a == "-h") {
      std::printf("%s\n", kUsage);
      std::exit(0);
    } else {
      throw UsageError("unknown option " + a + "\n" + kUsage);
    }
  }
  return o;
}

// ---- the conv layer shapes of the presets (host/nn/arch.cpp), each at 1x28x28 input ----

struct ConvLayer {
  std::string id;    // "deep.2": preset, then the conv layer's 1-based index in it
  std::string spec;  // the layer as the arch spec writes it
  int C, H, W, K, k, pad;
};

const std::vector<ConvLayer>& preset_convs() {
  static const std::vector<ConvLayer> v = {
      {"paper.1", "conv(32,5,pad=2)", 1, 28, 28, 32, 5, 2}, {"lenet5.1", "conv(6,5,pad=2)", 1, 28, 28, 6, 5, 2},
      {"lenet5.2", "conv(16,5)", 6, 14, 14, 16, 5, 0},      {"deep.1", "conv(32,3,pad=1)", 1, 28, 28, 32, 3, 1},
      {"deep.2", "conv(32,3,pad=1)", 32, 28, 28, 32, 3, 1}, {"deep.3", "conv(64,3,pad=1)", 32, 14, 14, 64, 3, 1},
      {"deep.4", "conv(64,3,pad=1)", 64, 14, 14, 64, 3, 1},
  };
  return v;
}

// "--shape deep" selects deep.1..deep.4; "--shape deep.2" only that layer.
std::vector<ConvLayer> select_shapes(const Options& o) {
  if (o.shapes.empty()) return preset_convs();
  std::vector<ConvLayer> out;
  for (const std::string& want : o.shapes) {
    size_t before = out.size();
    for (const ConvLayer& L : preset_convs()) {
      bool match = L.id == want || L.id.compare(0, want.size() + 1, want + ".") == 0;
      bool already = std::any_of(out.begin(), out.end(), [&](const ConvLayer& x) { return x.id == L.id; });
      if (match && !already) out.push_back(L);
    }
    if (out.size() == before) {
      std::string ids;
      for (const ConvLayer& L : preset_convs()) ids += " " + L.id;
      throw UsageError("--shape \"" + want + "\" matches no layer; the layers are" + ids +
                       " (a preset name selects all of its layers)");
    }
  }
  return out;
}

// ---- timing ----

struct Timing {
  double median_ms = 0, min_ms = 0;
  int reps = 0;
};

// Events recorded between back-to-back calls, one synchronization at the end: the GPU time of each
// call, launch gaps included where the host cannot keep the queue full (cuDNN's host-side work
// counts, as it does in a training step).
Timing time_calls(cudaStream_t stream, const Options& o, const std::function<void()>& fn) {
  // The first warm-up call, timed alone, sizes the rest: the Simple weight gradient takes
  // seconds at batch 1024, where one warm-up call and 3 timed ones are enough.
  CudaEvent a, b;
  CUDA_CHECK(cudaEventRecord(a.get(), stream));
  fn();
  CUDA_CHECK(cudaEventRecord(b.get(), stream));
  CUDA_CHECK(cudaEventSynchronize(b.get()));
  float one_ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&one_ms, a.get(), b.get()));
  int reps = o.reps;
  if (one_ms > 50.f) {
    reps = std::min(o.reps, std::max(3, int(1000.f / one_ms)));
  } else {
    for (int i = 1; i < o.warmup; i++) fn();
  }

  std::vector<CudaEvent> ev;
  ev.reserve(reps + 1);
  for (int r = 0; r <= reps; r++) ev.emplace_back();
  CUDA_CHECK(cudaEventRecord(ev[0].get(), stream));
  for (int r = 0; r < reps; r++) {
    fn();
    CUDA_CHECK(cudaEventRecord(ev[r + 1].get(), stream));
  }
  CUDA_CHECK(cudaEventSynchronize(ev[reps].get()));
  std::vector<float> t(reps);
  for (int r = 0; r < reps; r++) CUDA_CHECK(cudaEventElapsedTime(&t[r], ev[r].get(), ev[r + 1].get()));
  std::sort(t.begin(), t.end());
  return {t[reps / 2], t[0], reps};
}

// ---- comparison ----

// max |a - ref| / max |ref|: NaN when either holds a NaN or an infinity (also what an output that
// was never written holds: every output is filled with NaN before each run).
double max_rel_diff(const std::vector<float>& a, const std::vector<float>& ref) {
  BARECNN_ASSERT(a.size() == ref.size(), "compare ", a.size(), " with ", ref.size(), " values");
  double max_ref = 0, max_diff = 0;
  for (size_t i = 0; i < a.size(); i++) {
    if (!std::isfinite(a[i]) || !std::isfinite(ref[i])) return NAN;
    max_ref = std::max(max_ref, std::fabs(double(ref[i])));
    max_diff = std::max(max_diff, std::fabs(double(a[i]) - double(ref[i])));
  }
  return max_ref > 0 ? max_diff / max_ref : max_diff;
}

// The op's result(s), read back after a run: forward y; bwd_input dx; bwd_weight dw then db.
using Result = std::vector<std::vector<float>>;
// NaN also when `ref` is missing (its cuDNN run failed).
double max_rel_diff(const Result& a, const Result& ref) {
  if (ref.empty() || a.size() != ref.size()) return NAN;
  double d = 0;
  for (size_t i = 0; i < a.size(); i++) {
    double di = max_rel_diff(a[i], ref[i]);
    if (std::isnan(di)) return NAN;
    d = std::max(d, di);
  }
  return d;
}

// ---- cuDNN ----

const char* fwd_algo_name(int a) {
  switch (a) {
    case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM:
      return "implicit_gemm";
    case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM:
      return "precomp_gemm";
    case CUDNN_CONVOLUTION_FWD_ALGO_GEMM:
      return "gemm";
    case CUDNN_CONVOLUTION_FWD_ALGO_DIRECT:
      return "direct";
    case CUDNN_CONVOLUTION_FWD_ALGO_FFT:
      return "fft";
    case CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING:
      return "fft_tiling";
    case CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD:
      return "winograd";
    case CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED:
      return "winograd_nf";
    default:
      return "?";
  }
}
const char* bwd_data_algo_name(int a) {
  switch (a) {
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_0:
      return "algo_0";
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_1:
      return "algo_1";
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT:
      return "fft";
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING:
      return "fft_tiling";
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD:
      return "winograd";
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED:
      return "winograd_nf";
    default:
      return "?";
  }
}
const char* bwd_filter_algo_name(int a) {
  switch (a) {
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0:
      return "algo_0";
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1:
      return "algo_1";
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT:
      return "fft";
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3:
      return "algo_3";
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED:
      return "winograd_nf";
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING:
      return "fft_tiling";
    default:
      return "?";
  }
}
const char* math_name(cudnnMathType_t m) {
  switch (m) {
    case CUDNN_DEFAULT_MATH:
      return "default";
    case CUDNN_TENSOR_OP_MATH:
      return "tensor_op";
    case CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION:
      return "tensor_op_conv";
    case CUDNN_FMA_MATH:
      return "fma";
  }
  return "?";
}

enum class Precision : int { FP32, TF32 };
const char* precision_name(Precision p) { return p == Precision::FP32 ? "cuDNN FP32" : "cuDNN TF32"; }
cudnnMathType_t search_math(Precision p) { return p == Precision::FP32 ? CUDNN_FMA_MATH : CUDNN_DEFAULT_MATH; }

// The algorithm a search picked.
struct Choice {
  int algo = -1;
  std::string algo_name;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
  size_t workspace = 0;  // bytes the run is given (what the algorithm needs)
  bool deterministic = true;
  float search_ms = 0;  // the time cudnnFind measured for it
  std::string label() const {
    // "precomp_gemm/fma 1.2M nd"
    std::string s = fmt(algo_name, "/", math_name(math));
    char ws[32];
    std::snprintf(ws, sizeof(ws), " %.1fM", workspace / 1048576.0);
    s += ws;
    if (!deterministic) s += " nd";
    return s;
  }
};

// Results come sorted by the time cudnnFind measured; the first that ran, that is true FP32 when
// FP32 is asked for, and deterministic when --deterministic is given, wins.
template <typename Perf>
Choice pick(const std::vector<Perf>& perf, int returned, Precision p, const Options& o, const char* (*name)(int)) {
  std::string seen;
  for (int i = 0; i < returned; i++) {
    const Perf& r = perf[i];
    seen += fmt(" ", name(int(r.algo)), "/", math_name(r.mathType), "=", cudnnGetErrorString(r.status));
    if (r.status != CUDNN_STATUS_SUCCESS) continue;
    if (p == Precision::FP32 && r.mathType != CUDNN_FMA_MATH) continue;
    if (o.deterministic && r.determinism != CUDNN_DETERMINISTIC) continue;
    Choice c;
    c.algo = int(r.algo);
    c.algo_name = name(int(r.algo));
    c.math = r.mathType;
    c.workspace = r.memory;
    c.deterministic = r.determinism == CUDNN_DETERMINISTIC;
    c.search_ms = r.time;
    return c;
  }
  throw Error(fmt("no usable cuDNN algorithm [", g_context, "]; cudnnFind returned:", seen.empty() ? " nothing" : seen,
                  o.deterministic ? " (--deterministic is on: try without it)" : "",
                  "; a larger --workspace-mib may help"));
}

// Everything one layer shape at one batch size needs, on the device, for both libraries.
struct Problem {
  Conv2dShape s;
  bool bias = true;
  DeviceBuffer<float> x, w, b, dy;      // inputs: (N, C, H, W), (K, C, kh, kw), (K), (N, K, OH, OW)
  DeviceBuffer<float> y, dx, dw, db;    // outputs, shared by all runs (refilled with NaN before each)
  DeviceBuffer<float> wgrad_workspace;  // barecnn's two-stage weight-gradient reduction
  // cuDNN's view of the same memory: NCHW tensors, KCRS filters, cross-correlation (barecnn's
  // convolution does not flip the kernel, docs/MATH.md), stride and zero padding as barecnn's.
  TensorDesc x_desc, y_desc, b_desc;
  FilterDesc w_desc;
  ConvDesc conv_desc;
};

void setup_cudnn(Problem& P) {
  const Conv2dShape& s = P.s;
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(P.x_desc.get(), CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, s.N, s.C, s.H, s.W));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(P.y_desc.get(), CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, s.N, s.K, s.OH, s.OW));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(P.b_desc.get(), CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, s.K, 1, 1));
  CUDNN_CHECK(cudnnSetFilter4dDescriptor(P.w_desc.get(), CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, s.K, s.C, s.kh, s.kw));
  CUDNN_CHECK(cudnnSetConvolution2dDescriptor(P.conv_desc.get(), s.ph, s.pw, s.sh, s.sw, /*dilation*/ 1, 1,
                                              CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  int n = 0, k = 0, oh = 0, ow = 0;
  CUDNN_CHECK(
      cudnnGetConvolution2dForwardOutputDim(P.conv_desc.get(), P.x_desc.get(), P.w_desc.get(), &n, &k, &oh, &ow));
  BARECNN_ASSERT(n == s.N && k == s.K && oh == s.OH && ow == s.OW, "cuDNN's output shape ", n, "x", k, "x", oh, "x", ow,
                 " differs from barecnn's for ", s.str());
}

// The search's own workspace: the most any algorithm asks for (those that cannot run here fail
// the size query and are skipped), capped by --workspace-mib; algorithms needing more are left
// out of the search.
template <typename SizeFn>
size_t search_workspace(int algo_count, const Options& o, SizeFn size_of) {
  size_t most = 0;
  for (int a = 0; a < algo_count; a++) {
    size_t bytes = 0;
    if (size_of(a, &bytes) == CUDNN_STATUS_SUCCESS) most = std::max(most, bytes);
  }
  return std::min(most, o.workspace_cap);
}

Choice find_algo(cudnnHandle_t h, Problem& P, Op op, Precision prec, const Options& o) {
  cudnnConvolutionDescriptor_t conv = P.conv_desc.get();
  CUDNN_CHECK(cudnnSetConvolutionMathType(conv, search_math(prec)));
  Choice c;
  if (op == Op::Forward) {
    size_t ws_bytes = search_workspace(CUDNN_CONVOLUTION_FWD_ALGO_COUNT, o, [&](int a, size_t* bytes) {
      return cudnnGetConvolutionForwardWorkspaceSize(h, P.x_desc.get(), P.w_desc.get(), conv, P.y_desc.get(),
                                                     cudnnConvolutionFwdAlgo_t(a), bytes);
    });
    DeviceBuffer<unsigned char> ws(ws_bytes, "cuDNN search workspace");
    int max_count = 0, returned = 0;
    CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(h, &max_count));
    std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(std::max(max_count, 1));
    CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(h, P.x_desc.get(), P.x.data(), P.w_desc.get(), P.w.data(), conv,
                                                       P.y_desc.get(), P.y.data(), int(perf.size()), &returned,
                                                       perf.data(), ws.data(), ws.bytes()));
    c = pick(perf, returned, prec, o, fwd_algo_name);
  } else if (op == Op::BwdInput) {
    size_t ws_bytes = search_workspace(CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, o, [&](int a, size_t* bytes) {
      return cudnnGetConvolutionBackwardDataWorkspaceSize(h, P.w_desc.get(), P.y_desc.get(), conv, P.x_desc.get(),
                                                          cudnnConvolutionBwdDataAlgo_t(a), bytes);
    });
    DeviceBuffer<unsigned char> ws(ws_bytes, "cuDNN search workspace");
    int max_count = 0, returned = 0;
    CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(h, &max_count));
    std::vector<cudnnConvolutionBwdDataAlgoPerf_t> perf(std::max(max_count, 1));
    CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(h, P.w_desc.get(), P.w.data(), P.y_desc.get(), P.dy.data(),
                                                            conv, P.x_desc.get(), P.dx.data(), int(perf.size()),
                                                            &returned, perf.data(), ws.data(), ws.bytes()));
    c = pick(perf, returned, prec, o, bwd_data_algo_name);
  } else {
    size_t ws_bytes = search_workspace(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, o, [&](int a, size_t* bytes) {
      return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, P.x_desc.get(), P.y_desc.get(), conv, P.w_desc.get(),
                                                            cudnnConvolutionBwdFilterAlgo_t(a), bytes);
    });
    DeviceBuffer<unsigned char> ws(ws_bytes, "cuDNN search workspace");
    int max_count = 0, returned = 0;
    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(h, &max_count));
    std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> perf(std::max(max_count, 1));
    CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(
        h, P.x_desc.get(), P.x.data(), P.y_desc.get(), P.dy.data(), conv, P.w_desc.get(), P.dw.data(), int(perf.size()),
        &returned, perf.data(), ws.data(), ws.bytes()));
    c = pick(perf, returned, prec, o, bwd_filter_algo_name);
  }
  // Run with the math type the search measured the algorithm with (see the note at the top), and
  // give it at least what the size query says it needs for that math type.
  CUDNN_CHECK(cudnnSetConvolutionMathType(conv, c.math));
  size_t need = 0;
  cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
  if (op == Op::Forward)
    st = cudnnGetConvolutionForwardWorkspaceSize(h, P.x_desc.get(), P.w_desc.get(), conv, P.y_desc.get(),
                                                 cudnnConvolutionFwdAlgo_t(c.algo), &need);
  else if (op == Op::BwdInput)
    st = cudnnGetConvolutionBackwardDataWorkspaceSize(h, P.w_desc.get(), P.y_desc.get(), conv, P.x_desc.get(),
                                                      cudnnConvolutionBwdDataAlgo_t(c.algo), &need);
  else
    st = cudnnGetConvolutionBackwardFilterWorkspaceSize(h, P.x_desc.get(), P.y_desc.get(), conv, P.w_desc.get(),
                                                        cudnnConvolutionBwdFilterAlgo_t(c.algo), &need);
  if (st == CUDNN_STATUS_SUCCESS) c.workspace = std::max(c.workspace, need);
  return c;
}

// One run of the op by cuDNN with the chosen algorithm (descriptor math type already set).
void cudnn_run(cudnnHandle_t h, Problem& P, Op op, const Choice& c, DeviceBuffer<unsigned char>& ws) {
  const float one = 1.f, zero = 0.f;  // alpha, beta: host pointers (cuDNN's default)
  cudnnConvolutionDescriptor_t conv = P.conv_desc.get();
  if (op == Op::Forward) {
    // y = conv(x, w), then y += b broadcast over (N, OH, OW)
    CUDNN_CHECK(cudnnConvolutionForward(h, &one, P.x_desc.get(), P.x.data(), P.w_desc.get(), P.w.data(), conv,
                                        cudnnConvolutionFwdAlgo_t(c.algo), ws.data(), ws.bytes(), &zero, P.y_desc.get(),
                                        P.y.data()));
    if (P.bias) CUDNN_CHECK(cudnnAddTensor(h, &one, P.b_desc.get(), P.b.data(), &one, P.y_desc.get(), P.y.data()));
  } else if (op == Op::BwdInput) {
    CUDNN_CHECK(cudnnConvolutionBackwardData(h, &one, P.w_desc.get(), P.w.data(), P.y_desc.get(), P.dy.data(), conv,
                                             cudnnConvolutionBwdDataAlgo_t(c.algo), ws.data(), ws.bytes(), &zero,
                                             P.x_desc.get(), P.dx.data()));
  } else {
    CUDNN_CHECK(cudnnConvolutionBackwardFilter(h, &one, P.x_desc.get(), P.x.data(), P.y_desc.get(), P.dy.data(), conv,
                                               cudnnConvolutionBwdFilterAlgo_t(c.algo), ws.data(), ws.bytes(), &zero,
                                               P.w_desc.get(), P.dw.data()));
    if (P.bias)
      CUDNN_CHECK(
          cudnnConvolutionBackwardBias(h, &one, P.y_desc.get(), P.dy.data(), &zero, P.b_desc.get(), P.db.data()));
  }
}

// One run of the op by barecnn, with the kernels of `impl`.
void barecnn_run(Problem& P, Op op, gpu::ConvImpl impl, cudaStream_t stream) {
  if (op == Op::Forward)
    gpu::conv2d_forward(P.y.data(), P.x.data(), P.w.data(), P.bias ? P.b.data() : nullptr, P.s, impl, stream);
  else if (op == Op::BwdInput)
    gpu::conv2d_backward_input(P.dx.data(), P.dy.data(), P.w.data(), P.s, impl, stream);
  else
    gpu::conv2d_backward_weight(P.dw.data(), P.bias ? P.db.data() : nullptr, P.dy.data(), P.x.data(), P.s,
                                P.wgrad_workspace.data(), impl, stream);
}

// Fills the op's outputs with NaN (all bits set), so a run that leaves an entry unwritten shows
// as a NaN difference instead of passing on the previous run's values.
void poison_outputs(Problem& P, Op op, cudaStream_t stream) {
  auto fill = [&](DeviceBuffer<float>& buf) {
    if (!buf.empty()) CUDA_CHECK(cudaMemsetAsync(buf.data(), 0xFF, buf.bytes(), stream));
  };
  if (op == Op::Forward)
    fill(P.y);
  else if (op == Op::BwdInput)
    fill(P.dx);
  else {
    fill(P.dw);
    if (P.bias) fill(P.db);
  }
}

Result read_outputs(Problem& P, Op op, cudaStream_t stream) {
  CUDA_CHECK(cudaStreamSynchronize(stream));
  if (op == Op::Forward) return {P.y.to_host()};
  if (op == Op::BwdInput) return {P.dx.to_host()};
  if (P.bias) return {P.dw.to_host(), P.db.to_host()};
  return {P.dw.to_host()};
}

std::vector<float> random_floats(size_t n, uint64_t seed, float scale) {
  Rng r(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = float(r.uniform(-scale, scale));
  return v;
}

// ---- one row of the table ----

struct Row {
  std::string shape, spec;
  int batch = 0;
  Op op = Op::Forward;
  double flops = 0;
  Timing simple, tiled, fast, cudnn[2];
  bool gemm = false;  // Fast ran the implicit-GEMM kernel (else the tiled one)
  Choice choice[2];
  bool cudnn_ok[2] = {true, true};  // false: that cuDNN run failed (cudnn_error says why)
  std::string cudnn_error[2];
  double diff_simple = 0, diff_tiled = 0, diff_fast = 0;  // vs cuDNN FP32
  double diff_tf32 = 0;                                   // fast vs cuDNN TF32
  bool flagged_fp32 = false, flagged_tf32 = false;
};

constexpr double kFp32Tolerance = 1e-3, kTf32Tolerance = 5e-2;

double gflops(double flops, double ms) { return ms > 0 ? flops / (ms * 1e6) : 0; }

void print_header() {
  std::printf("%-9s %5s %-10s | %9s %9s %9s %-5s | %9s %-26s | %9s %-26s | %6s | %6s %6s %6s %6s | %8s %8s\n", "shape",
              "N", "op", "simple ms", "tiled ms", "fast ms", "fast=", "FP32 ms", "cuDNN FP32 algo", "TF32 ms",
              "cuDNN TF32 algo", "fst/32", "GF/s:s", "fast", "FP32", "TF32", "diff32", "diff-tf");
}

std::string num(const char* f, double x, bool ok = true) {
  if (!ok) return "n/a";
  char buf[32];
  std::snprintf(buf, sizeof(buf), f, x);
  return buf;
}

void print_row(const Row& r) {
  // A diff is "n/a" when its cuDNN reference failed, "NaN!" when an output held NaN or inf.
  auto d = [](double x, bool ref_ok, bool flag) {
    if (!ref_ok) return std::string("n/a");
    if (std::isnan(x)) return std::string("NaN!");
    return num("%.1e", x) + (flag ? "!" : "");
  };
  const bool ok32 = r.cudnn_ok[0], oktf = r.cudnn_ok[1];
  const double worst = std::isnan(r.diff_simple) || std::isnan(r.diff_tiled) || std::isnan(r.diff_fast)
                           ? NAN
                           : std::max({r.diff_simple, r.diff_tiled, r.diff_fast});
  std::printf("%-9s %5d %-10s | %9.3f %9.3f %9.3f %-5s | %9s %-26s | %9s %-26s | %6s | %6.0f %6.0f %6s %6s | %8s %8s\n",
              r.shape.c_str(), r.batch, op_name(r.op), r.simple.median_ms, r.tiled.median_ms, r.fast.median_ms,
              r.gemm ? "gemm" : "tiled", num("%.3f", r.cudnn[0].median_ms, ok32).c_str(),
              ok32 ? r.choice[0].label().c_str() : "(failed)", num("%.3f", r.cudnn[1].median_ms, oktf).c_str(),
              oktf ? r.choice[1].label().c_str() : "(failed)",
              num("%.2f", r.fast.median_ms / r.cudnn[0].median_ms, ok32).c_str(), gflops(r.flops, r.simple.median_ms),
              gflops(r.flops, r.fast.median_ms), num("%.0f", gflops(r.flops, r.cudnn[0].median_ms), ok32).c_str(),
              num("%.0f", gflops(r.flops, r.cudnn[1].median_ms), oktf).c_str(), d(worst, ok32, r.flagged_fp32).c_str(),
              d(r.diff_tf32, oktf, r.flagged_tf32).c_str());
  std::fflush(stdout);
}

json timing_json(const Timing& t, double flops) {
  return {{"median_ms", t.median_ms}, {"min_ms", t.min_ms}, {"reps", t.reps}, {"gflops", gflops(flops, t.median_ms)}};
}

json row_json(const Row& r) {
  // Values that do not exist (a failed cuDNN run, a NaN output) are written as null.
  auto value = [](double x, bool ok) { return ok && std::isfinite(x) ? json(x) : json(nullptr); };
  json j = {{"shape", r.shape},
            {"layer", r.spec},
            {"batch", r.batch},
            {"op", op_name(r.op)},
            {"flops", r.flops},
            {"barecnn_simple", timing_json(r.simple, r.flops)},
            {"barecnn_tiled", timing_json(r.tiled, r.flops)},
            {"barecnn_fast", timing_json(r.fast, r.flops)},
            {"fast_kernel", r.gemm ? "implicit GEMM" : "tiled"},
            {"fast_over_cudnn_fp32", value(r.fast.median_ms / r.cudnn[0].median_ms, r.cudnn_ok[0])},
            {"max_rel_diff_simple_vs_cudnn_fp32", value(r.diff_simple, r.cudnn_ok[0])},
            {"max_rel_diff_tiled_vs_cudnn_fp32", value(r.diff_tiled, r.cudnn_ok[0])},
            {"max_rel_diff_fast_vs_cudnn_fp32", value(r.diff_fast, r.cudnn_ok[0])},
            {"max_rel_diff_fast_vs_cudnn_tf32", value(r.diff_tf32, r.cudnn_ok[1])}};
  for (int p = 0; p < 2; p++) {
    const char* key = p == 0 ? "cudnn_fp32" : "cudnn_tf32";
    if (!r.cudnn_ok[p]) {
      j[key] = {{"error", r.cudnn_error[p]}};
      continue;
    }
    json c = timing_json(r.cudnn[p], r.flops);
    c["algo"] = r.choice[p].algo_name;
    c["math_type"] = math_name(r.choice[p].math);
    c["workspace_bytes"] = r.choice[p].workspace;
    c["deterministic"] = r.choice[p].deterministic;
    c["find_ms"] = r.choice[p].search_ms;
    j[key] = c;
  }
  return j;
}

// All ops of one layer shape at one batch size.
std::vector<Row> run_problem(cudnnHandle_t h, cudaStream_t stream, const ConvLayer& L, int N, const Options& o) {
  Problem P;
  P.s = make_conv2d_shape(N, L.C, L.H, L.W, L.K, L.k, L.k, /*stride*/ 1, L.pad, L.spec);
  P.bias = o.bias;
  const Conv2dShape& s = P.s;
  // Same seeded data for both libraries. Weights scaled as a fan-in initialization would, so
  // outputs are O(1) like a trained net's.
  const float wscale = 1.f / std::sqrt(float(s.C * s.kh * s.kw));
  P.x.copy_from_host(random_floats(s.in_numel(), 1, 1.f));
  P.w.copy_from_host(random_floats(s.weight_numel(), 2, wscale));
  P.b.copy_from_host(random_floats(s.K, 3, 0.1f));
  P.dy.copy_from_host(random_floats(s.out_numel(), 4, 1.f));
  P.y.resize(s.out_numel(), "y");
  P.dx.resize(s.in_numel(), "dx");
  P.dw.resize(s.weight_numel(), "dw");
  P.db.resize(s.K, "db");
  P.wgrad_workspace.resize(gpu::conv2d_backward_weight_workspace(s), "conv2d_backward_weight workspace");
  setup_cudnn(P);

  std::vector<Row> rows;
  for (Op op : o.ops) {
    Row r;
    r.shape = L.id;
    r.spec = L.spec;
    r.batch = N;
    r.op = op;
    r.flops = 2.0 * s.N * s.K * s.OH * s.OW * double(s.C) * s.kh * s.kw;
    const std::string where = fmt(L.id, " ", L.spec, " N=", N, " ", op_name(op));

    // cuDNN FP32 first: the reference for every comparison. A cuDNN failure (no algorithm that
    // fits the rules, a library that does not load) costs its columns, not the sweep.
    Result results[2];
    for (int p = 0; p < 2; p++) {
      const Precision prec = Precision(p);
      g_context = fmt(where, ", ", precision_name(prec));
      try {
        r.choice[p] = find_algo(h, P, op, prec, o);
        DeviceBuffer<unsigned char> ws(r.choice[p].workspace, "cuDNN workspace");
        poison_outputs(P, op, stream);
        r.cudnn[p] = time_calls(stream, o, [&] { cudnn_run(h, P, op, r.choice[p], ws); });
        results[p] = read_outputs(P, op, stream);
      } catch (const Error& e) {
        r.cudnn_ok[p] = false;
        r.cudnn_error[p] = e.what();
        std::fprintf(stderr, "barecnn_conv_lab: %s failed: %s\n", precision_name(prec), e.what());
      }
    }
    g_context = fmt(where, ", barecnn");
    poison_outputs(P, op, stream);
    r.simple = time_calls(stream, o, [&] { barecnn_run(P, op, gpu::ConvImpl::Simple, stream); });
    Result simple = read_outputs(P, op, stream);
    r.diff_simple = max_rel_diff(simple, results[0]);
    poison_outputs(P, op, stream);
    r.tiled = time_calls(stream, o, [&] { barecnn_run(P, op, gpu::ConvImpl::Tiled, stream); });
    r.diff_tiled = max_rel_diff(read_outputs(P, op, stream), results[0]);
    poison_outputs(P, op, stream);
    r.gemm = gpu::conv2d_uses_gemm(P.s, op == Op::Forward    ? gpu::ConvOp::Forward
                                        : op == Op::BwdInput ? gpu::ConvOp::BackwardInput
                                                             : gpu::ConvOp::BackwardWeight);
    r.fast = time_calls(stream, o, [&] { barecnn_run(P, op, gpu::ConvImpl::Fast, stream); });
    Result fast = read_outputs(P, op, stream);
    r.diff_fast = max_rel_diff(fast, results[0]);
    r.diff_tf32 = max_rel_diff(fast, results[1]);
    r.flagged_fp32 = r.cudnn_ok[0] && !(r.diff_simple <= kFp32Tolerance && r.diff_tiled <= kFp32Tolerance &&
                                        r.diff_fast <= kFp32Tolerance);
    r.flagged_tf32 = r.cudnn_ok[1] && !(r.diff_tf32 <= kTf32Tolerance);
    g_context.clear();
    print_row(r);
    rows.push_back(r);
  }
  return rows;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Options o = parse(argc, argv);
    std::vector<ConvLayer> layers = select_shapes(o);
    const GpuStatus& g = gpu_status();
    if (!g.ok) {
      std::fprintf(stderr, "barecnn_conv_lab: no usable GPU: %s\n", g.reason.c_str());
      return 2;
    }
    // The cuDNN found at run time (LD_LIBRARY_PATH) may not be the one compiled against: only its
    // major version must match, and its sub-libraries must load.
    const size_t cudnn_rt = cudnnGetVersion();
    if (cudnn_rt / 10000 != CUDNN_MAJOR)
      throw Error(fmt("cuDNN ", cudnn_rt, " was loaded, but this lab was built against cuDNN ", CUDNN_VERSION,
                      ": put the folder of a cuDNN ", CUDNN_MAJOR, " (profiling/find_cudnn.sh) on LD_LIBRARY_PATH"));
    CUDNN_CHECK(cudnnCnnVersionCheck());

    GpuContext ctx;
    CudnnHandle handle;
    CUDNN_CHECK(cudnnSetStream(handle.get(), ctx.stream()));

    const char* tf32_env = std::getenv("NVIDIA_TF32_OVERRIDE");
    std::printf(
        "barecnn conv lab: %s (sm_%d%d), driver %s, runtime %s; cuDNN %zu (built with %d, its CUDA runtime %zu)\n",
        g.name.c_str(), g.cc_major, g.cc_minor, version_str(g.driver_version).c_str(),
        version_str(g.runtime_version).c_str(), cudnn_rt, CUDNN_VERSION, cudnnGetCudartVersion());
    std::printf(
        "median of up to %d runs after %d warm-up; bias %s; cuDNN algorithms: the fastest from "
        "cudnnFind*AlgorithmEx%s, search workspace up to %zu MiB\n",
        o.reps, o.warmup,
        o.bias ? "on (cuDNN: +AddTensor in forward, +BackwardBias in bwd_weight, timed with the conv)" : "off",
        o.deterministic ? ", deterministic only" : "", o.workspace_cap >> 20);
    std::printf(
        "FP32 = CUDNN_FMA_MATH (no TF32); TF32 = CUDNN_DEFAULT_MATH (TF32 tensor cores allowed)%s\n",
        tf32_env ? fmt("; NVIDIA_TF32_OVERRIDE=", tf32_env, " is set (0 makes the TF32 columns FP32)").c_str() : "");
    std::printf(
        "GF/s = 2*N*K*OH*OW*C*kh*kw / time; diff = max|x - cuDNN| / max|cuDNN| (diff32: worst of simple and "
        "tiled and fast vs FP32; diff-tf: fast vs TF32; fast=: the kernel Fast ran); algo: name/math type, workspace "
        "MiB, nd = non-deterministic\n\n");
    print_header();

    json rows = json::array();
    int flagged = 0, failed = 0;
    for (int N : o.batches)
      for (const ConvLayer& L : layers)
        for (const Row& r : run_problem(handle.get(), ctx.stream(), L, N, o)) {
          rows.push_back(row_json(r));
          flagged += r.flagged_fp32 || r.flagged_tf32;
          failed += !r.cudnn_ok[0] + !r.cudnn_ok[1];
        }

    if (!o.json_path.empty()) {
      json doc = {{"device", g.name},
                  {"compute_capability", fmt(g.cc_major, ".", g.cc_minor)},
                  {"driver", version_str(g.driver_version)},
                  {"cuda_runtime", version_str(g.runtime_version)},
                  {"cudnn_version", cudnn_rt},
                  {"cudnn_built_with", CUDNN_VERSION},
                  {"nvidia_tf32_override", tf32_env ? json(tf32_env) : json(nullptr)},
                  {"reps", o.reps},
                  {"warmup", o.warmup},
                  {"bias", o.bias},
                  {"deterministic_only", o.deterministic},
                  {"fp32_tolerance", kFp32Tolerance},
                  {"tf32_tolerance", kTf32Tolerance},
                  {"rows", rows}};
      atomic_write_text(o.json_path, doc.dump(2) + "\n");
      std::printf("\nwrote %s\n", o.json_path.c_str());
    }
    if (flagged)
      std::fprintf(stderr,
                   "barecnn_conv_lab: %d row(s) marked '!': barecnn and cuDNN disagree beyond %.0e (FP32) / %.0e "
                   "(TF32) relative, or an output held NaN\n",
                   flagged, kFp32Tolerance, kTf32Tolerance);
    if (failed) std::fprintf(stderr, "barecnn_conv_lab: %d cuDNN run(s) failed (messages above)\n", failed);
    return flagged || failed ? 1 : 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "barecnn_conv_lab: %s\n", e.what());
    return e.exit_code();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "barecnn_conv_lab: %s\n", e.what());
    return 1;
  }
}
