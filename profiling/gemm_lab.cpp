// GEMM lab: barecnn's hand-written SGEMM (host/cpu/sgemm.h) against OpenBLAS's cblas_sgemm on
// every GEMM call the fast CPU ops make for the preset nets (paper, lenet5, deep; input 1x28x28),
// with the same operands, transposes and leading dimensions. OpenBLAS is a yardstick only: it is
// linked into this one executable (built where CMake finds it).
//
//   build-x/profiling/barecnn_gemm_lab [--batch 64] [--reps 41] [--threads 2] [--isa avx512|avx2|generic]
//                                      [--shape paper,deep.conv2,...] [--min-sample-ms 0.3]
//   OPENBLAS_CORETYPE=Haswell build-x/profiling/barecnn_gemm_lab ...   (OpenBLAS's AVX2 kernels)
//
// The calls are those of host/cpu/conv2d.cpp and host/cpu/dense.cpp (the work partition is copied
// below from those files; keep the two in step). Two tables:
//
//   one call, 1 thread   each distinct call shape of each op, ours (sgemm_nn / sgemm_nt) and
//                        cblas_sgemm with openblas_set_num_threads(1): the comparison that
//                        matters, since each op runs one GEMM per OpenMP thread on its own part
//                        of the output. A sample repeats the call until it lasts --min-sample-ms
//                        (operands stay in the caches, as the im2col block a conv just wrote
//                        does); the two are interleaved sample by sample, the first of each pair
//                        alternating; the median of --reps samples is quoted.
//   the op, N threads    all the GEMM calls the op makes for the batch, in an OpenMP loop of
//                        --threads threads (schedule(dynamic), as the ops), each thread on its own
//                        operands; ours and OpenBLAS (1 thread per call) interleaved; median.
//                        The im2col copies, bias fills and reductions of the ops are not in it.
//
// Each call's output is checked against OpenBLAS's (max |ours - blas| / max |blas| < 1e-4), which
// also checks that the lab maps each call onto cblas correctly. GFLOP/s = 2 M N K / time.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "barecnn/cpu_ops.h"
#include "barecnn/error.h"
#include "barecnn/rng.h"
#include "barecnn/shape.h"

// OpenBLAS's own functions (declared in its cblas.h; repeated so that another cblas.h also works).
extern "C" {
void openblas_set_num_threads(int);
char* openblas_get_corename(void);
char* openblas_get_config(void);
}

using namespace barecnn;
// The library's compiled kernels (cpu_ops.h: a copy compiled here from sgemm.h could differ).
using cpu::detail::gemm_nn;
using cpu::detail::gemm_nt;

namespace {

// One GEMM call as the ops make it.
//   nn: C (M, N) = start + A (M, K) B (K, N); A(i, k) = A[i*rsa + k*csa] (csa == 1: row-major,
//       rsa == 1: A^T stored row-major), B row-major (ldb); start = C (accumulate), row_init[i]
//       (row_init), else 0.
//   nt: C (M, N) (+)= A (M, K) B (N, K)^T, A and B row-major along K (lda = rsa, ldb).
struct Call {
  bool nt = false;
  int M = 0, N = 0, K = 0;
  long rsa = 0, csa = 1, ldb = 0, ldc = 0;
  bool accumulate = false, row_init = false;
  double flops() const { return 2.0 * M * N * K; }
  auto key() const { return std::make_tuple(nt, M, N, K, rsa, csa, ldb, ldc); }
  std::string str() const {
    char b[160];
    if (nt)
      std::snprintf(b, sizeof b, "nt %dx%dx%d lda=%ld ldb=%ld%s", M, N, K, rsa, ldb, accumulate ? " +=" : "");
    else
      std::snprintf(b, sizeof b, "nn %dx%dx%d %s ldb=%ld%s", M, N, K, csa == 1 ? "A" : "A^T", ldb,
                    row_init     ? " +bias"
                    : accumulate ? " +="
                                 : "");
    return b;
  }
  // Floats each operand spans.
  size_t a_size() const {
    return nt ? size_t(M - 1) * rsa + K : csa == 1 ? size_t(M - 1) * rsa + K : size_t(K - 1) * csa + M;
  }
  size_t b_size() const { return nt ? size_t(N - 1) * ldb + K : size_t(K - 1) * ldb + N; }
  size_t c_size() const { return size_t(M - 1) * ldc + N; }
};

struct Op {
  std::string net, layer, op;
  std::vector<Call> calls;  // every call the op makes for the batch
};

int ceil_div(int a, int b) { return (a + b - 1) / b; }

// ---- the calls of host/cpu/conv2d.cpp (its pixel_block, item and group partitions) ----

int pixel_block(int pixels, long long rows, int N) {
  constexpr long long kL2Floats = 64 * 1024;
  long long pb = pixels;
  if (pb * rows > kL2Floats) pb = std::max(64LL, kL2Floats / rows / 16 * 16);
  int want = N > 0 ? ceil_div(8, N) : 1;
  if (want > 1) pb = std::min(pb, std::max(64LL, (long long)ceil_div(ceil_div(pixels, want), 16) * 16));
  return int(std::min<long long>(pb, pixels));
}

// conv2d.cpp's wide_row_block: result rows per item of the stride-1 "wide rows" GEMMs.
int wide_row_block(int Ho, int Wp, int Cs, int M, int kh, int N) {
  constexpr long long kL2Floats = 64 * 1024;
  long long rb = Ho;
  while (rb > 4 && ((long long)Cs * (rb + kh - 1) * Wp > kL2Floats || (long long)M * rb * Wp > kL2Floats))
    rb = (rb + 1) / 2;
  int want = N > 0 ? ceil_div(8, N) : 1;
  if (want > 1) rb = std::min<long long>(rb, std::max(1, ceil_div(Ho, want)));
  return int(std::max(1LL, rb));
}

struct ConvLayer {
  std::string net, name;
  int C, H, W, K, k, pad;
  bool first;  // the net's first layer: training computes no input gradient
};

std::vector<Op> conv_ops(const ConvLayer& L, int N) {
  Conv2dShape s = make_conv2d_shape(N, L.C, L.H, L.W, L.K, L.k, L.k, 1, L.pad, L.name);
  const int P = s.OH * s.OW, Q = s.H * s.W, KK = s.kh * s.kw, CKK = s.C * KK, KKK = s.K * KK;
  const bool pointwise = s.kh == 1 && s.kw == 1 && s.ph == 0 && s.pw == 0;
  const std::string layer = L.name + " " + std::to_string(L.C) + "x" + std::to_string(L.H) + "x" + std::to_string(L.W);
  std::vector<Op> ops;
  // The stride-1 GEMMs over padded "wide" rows (conv2d.cpp): per (image, block of rb result rows),
  // ncols = (rb - 1) * Wp + Wo columns; B's rows are pointers into padded planes there, a
  // row-major (rows, ncols) matrix here (the same packing work), C a (M, ncols) buffer.
  auto wide_calls = [&](Op& op, int M, int R, int Ho, int Wo, int Cs, bool bias) {
    const int Wp = Wo + s.kw - 1, rb = wide_row_block(Ho, Wp, Cs, M, s.kh, N), nb = ceil_div(Ho, rb);
    for (int item = 0; item < N * nb; item++) {
      const int y0 = item % nb * rb, rows = std::min(Ho, y0 + rb) - y0, ncols = (rows - 1) * Wp + Wo;
      op.calls.push_back({false, M, ncols, R, R, 1, ncols, ncols, false, bias});
    }
  };
  {  // forward: out_n (K, P) = W (K, CKK) col (CKK, P) + bias
    Op op{L.net, layer, "forward", {}};
    if (pointwise) {
      const int pb = pixel_block(P, CKK, N), nb = ceil_div(P, pb);
      for (int item = 0; item < N * nb; item++) {
        int p0 = item % nb * pb, np = std::min(P, p0 + pb) - p0;
        op.calls.push_back({false, s.K, np, CKK, CKK, 1, P, P, false, true});
      }
    } else {
      wide_calls(op, s.K, CKK, s.OH, s.OW, s.C, true);
    }
    ops.push_back(op);
  }
  if (!L.first) {  // backward_input
    Op op{L.net, layer, "backward_input", {}};
    const bool scatter = !pointwise && s.C < s.K;  // (stride 1 in every preset)
    if (scatter) {
      constexpr long long kL2Floats = 64 * 1024;
      int cb = int(std::max(1LL, std::min<long long>(s.C, kL2Floats / ((long long)KK * P))));
      if (N * ceil_div(s.C, cb) < 8) cb = std::max(1, std::min(cb, ceil_div(s.C, ceil_div(8, N))));
      const int nb = ceil_div(s.C, cb);
      for (int item = 0; item < N * nb; item++) {
        int c0 = item % nb * cb, nc = std::min(cb, s.C - c0);
        op.calls.push_back({false, nc * KK, P, s.K, 1, CKK, P, P, false, false});  // W^T (nc*KK, K) dout_n (K, P)
      }
    } else if (pointwise) {
      const int qb = pixel_block(Q, KKK, N), nb = ceil_div(Q, qb);
      for (int item = 0; item < N * nb; item++) {
        int q0 = item % nb * qb, nq = std::min(Q, q0 + qb) - q0;
        op.calls.push_back({false, s.C, nq, KKK, KKK, 1, P, Q, false, false});  // Wt dout_n
      }
    } else {
      wide_calls(op, s.C, KKK, s.H, s.W, s.K, false);  // Wt dcol
    }
    ops.push_back(op);
  }
  {  // backward_weight: dW (K, CKK) += dout (K, width) col (CKK, width)^T, per group of images
    Op op{L.net, layer, "backward_weight", {}};
    constexpr int kMaxGroups = 16, kCatPixels = 2048;
    constexpr long long kMaxColFloats = 1LL << 20;
    const int G = ceil_div(N, kMaxGroups), ngroups = ceil_div(N, G);
    const int seg = pointwise ? P : int(std::min<long long>(P, std::max(64LL, kMaxColFloats / CKK)));
    int cat = 1;
    if (!pointwise && seg == P)
      cat = int(std::max(1LL, std::min<long long>({ceil_div(kCatPixels, P), G, kMaxColFloats / ((long long)CKK * P)})));
    for (int g = 0; g < ngroups; g++) {
      bool first = true;
      const int n_end = std::min(N, g * G + G);
      for (int n0 = g * G; n0 < n_end; n0 += cat) {
        const int nc = std::min(cat, n_end - n0);
        if (nc > 1) {
          const int width = nc * P;
          op.calls.push_back({true, s.K, CKK, width, width, 1, width, CKK, !first, false});
          first = false;
          continue;
        }
        for (int p0 = 0; p0 < P; p0 += seg) {
          int np = std::min(P, p0 + seg) - p0;
          op.calls.push_back({true, s.K, CKK, np, P, 1, pointwise ? P : np, CKK, !first, false});
          first = false;
        }
      }
    }
    ops.push_back(op);
  }
  return ops;
}

// ---- the calls of host/cpu/dense.cpp (64 x 64 forward blocks, 64 x 256 backward blocks) ----

struct DenseLayer {
  std::string net, name;
  int IN, OUT;
};

std::vector<Op> dense_ops(const DenseLayer& L, int N) {
  constexpr int kRowBlock = 64, kColBlockFwd = 64, kColBlockBwd = 256;
  const std::string layer = L.name + " " + std::to_string(L.IN) + "->" + std::to_string(L.OUT);
  std::vector<Op> ops;
  Op fwd{L.net, layer, "forward", {}}, bin{L.net, layer, "backward_input", {}}, bw{L.net, layer, "backward_weight", {}};
  for (int n0 = 0; n0 < N; n0 += kRowBlock)
    for (int o0 = 0; o0 < L.OUT; o0 += kColBlockFwd)  // out block (nn, no) += inp block W block^T
      fwd.calls.push_back({true, std::min(kRowBlock, N - n0), std::min(kColBlockFwd, L.OUT - o0), L.IN, L.IN, 1, L.IN,
                           L.OUT, true, false});
  for (int n0 = 0; n0 < N; n0 += kRowBlock)
    for (int i0 = 0; i0 < L.IN; i0 += kColBlockBwd)  // dinp block = dout rows (nn, OUT) W (OUT, ni)
      bin.calls.push_back({false, std::min(kRowBlock, N - n0), std::min(kColBlockBwd, L.IN - i0), L.OUT, L.OUT, 1, L.IN,
                           L.IN, false, false});
  for (int o0 = 0; o0 < L.OUT; o0 += kRowBlock)
    for (int i0 = 0; i0 < L.IN; i0 += kColBlockBwd)  // dW block = dout^T (no, N) inp (N, ni)
      bw.calls.push_back({false, std::min(kRowBlock, L.OUT - o0), std::min(kColBlockBwd, L.IN - i0), N, 1, L.OUT, L.IN,
                          L.IN, false, false});
  return {fwd, bin, bw};
}

// ---- running one call ----

// The operands of one call (and the bias for row_init), random.
struct Operands {
  std::vector<float> a, b, c, bias;
  Operands() = default;
  explicit Operands(const Call& c_, uint64_t seed) {
    Rng r(seed);
    auto fill = [&](std::vector<float>& v, size_t n, float scale) {
      v.resize(n);
      for (auto& x : v) x = float(r.uniform(-scale, scale));
    };
    fill(a, c_.a_size(), 1.f);
    fill(b, c_.b_size(), 1.f);
    fill(c, c_.c_size(), 1.f);
    fill(bias, size_t(c_.M), 1.f);
  }
};

void run_ours(const Call& c, Operands& o) {
  if (c.nt)
    gemm_nt(c.M, c.N, c.K, o.a.data(), c.rsa, o.b.data(), c.ldb, o.c.data(), c.ldc, c.accumulate);
  else
    gemm_nn(c.M, c.N, c.K, o.a.data(), c.rsa, c.csa, o.b.data(), c.ldb, o.c.data(), c.ldc,
            c.row_init ? o.bias.data() : nullptr, c.accumulate);
}

// The same product through cblas_sgemm (row-major). A bias start is a fill of C, then beta = 1:
// what the op would have to do with cblas, so it is timed with it.
void run_blas(const Call& c, Operands& o) {
  float beta = c.accumulate ? 1.f : 0.f;
  if (c.row_init) {
    for (int i = 0; i < c.M; i++) std::fill(o.c.data() + i * c.ldc, o.c.data() + i * c.ldc + c.N, o.bias[size_t(i)]);
    beta = 1.f;
  }
  if (c.nt) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c.M, c.N, c.K, 1.f, o.a.data(), int(c.rsa), o.b.data(),
                int(c.ldb), beta, o.c.data(), int(c.ldc));
  } else {
    const bool at = c.csa != 1;  // A stored transposed: A(i, k) = A[k*csa + i]
    cblas_sgemm(CblasRowMajor, at ? CblasTrans : CblasNoTrans, CblasNoTrans, c.M, c.N, c.K, 1.f, o.a.data(),
                int(at ? c.csa : c.rsa), o.b.data(), int(c.ldb), beta, o.c.data(), int(c.ldc));
  }
}

// max |ours - blas| / max |blas| over C, from the same start.
double check(const Call& c) {
  Operands ours(c, 1), blas(c, 1);
  run_ours(c, ours);
  run_blas(c, blas);
  double diff = 0, mag = 0;
  for (int i = 0; i < c.M; i++)
    for (int j = 0; j < c.N; j++) {
      size_t e = size_t(i) * c.ldc + j;
      diff = std::max(diff, double(std::fabs(ours.c[e] - blas.c[e])));
      mag = std::max(mag, double(std::fabs(blas.c[e])));
    }
  return mag > 0 ? diff / mag : diff;
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median ms per call of a and of b, interleaved sample by sample (the first of each pair
// alternating), each sample `inner` calls long.
std::pair<double, double> time_pair(const std::function<void()>& a, const std::function<void()>& b, int reps,
                                    int inner) {
  std::vector<double> ta, tb;
  auto sample = [&](const std::function<void()>& f) {
    double t0 = now_ms();
    for (int i = 0; i < inner; i++) f();
    return (now_ms() - t0) / inner;
  };
  a(), b();  // warm-up
  for (int r = 0; r < reps; r++) {
    if (r % 2 == 0) {
      ta.push_back(sample(a));
      tb.push_back(sample(b));
    } else {
      tb.push_back(sample(b));
      ta.push_back(sample(a));
    }
  }
  return {median(ta), median(tb)};
}

// Calls per sample so that one sample lasts about min_ms (from a quick estimate).
int inner_for(const std::function<void()>& f, double min_ms) {
  f();
  double t0 = now_ms();
  int n = 0;
  do {
    f();
    n++;
  } while (now_ms() - t0 < 2.0 && n < 1000);
  double per = (now_ms() - t0) / n;
  return std::max(1, int(std::ceil(min_ms / std::max(per, 1e-6))));
}

struct Options {
  int batch = 64, reps = 41, threads = 2;
  double min_sample_ms = 0.3;
  std::string isa, shapes;
};

bool selected(const Options& o, const std::string& net, const std::string& tag) {
  if (o.shapes.empty()) return true;
  size_t p = 0;
  while (p <= o.shapes.size()) {
    size_t q = o.shapes.find(',', p);
    std::string t = o.shapes.substr(p, q == std::string::npos ? std::string::npos : q - p);
    if (t == net || t == tag) return true;
    if (q == std::string::npos) break;
    p = q + 1;
  }
  return false;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError("gemm_lab: " + a + " needs a value");
      return argv[++i];
    };
    if (a == "--batch")
      o.batch = std::atoi(value().c_str());
    else if (a == "--reps")
      o.reps = std::atoi(value().c_str());
    else if (a == "--threads")
      o.threads = std::atoi(value().c_str());
    else if (a == "--isa")
      o.isa = value();
    else if (a == "--shape")
      o.shapes = value();
    else if (a == "--min-sample-ms")
      o.min_sample_ms = std::atof(value().c_str());
    else
      throw UsageError("gemm_lab: unknown option " + a +
                       " (options: --batch N --reps N --threads N --isa avx512|avx2|generic --shape NET|NET.LAYER,... "
                       "--min-sample-ms X)");
  }
  if (o.batch < 1 || o.reps < 1 || o.threads < 1 || !(o.min_sample_ms > 0))
    throw UsageError("gemm_lab: --batch, --reps, --threads, --min-sample-ms must be positive");
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Options o = parse(argc, argv);
    if (o.isa == "generic")
      cpu::set_cpu_isa(cpu::CpuIsa::Generic);
    else if (o.isa == "avx2")
      cpu::set_cpu_isa(cpu::CpuIsa::Avx2);
    else if (o.isa == "avx512")
      cpu::set_cpu_isa(cpu::CpuIsa::Avx512);
    else if (!o.isa.empty())
      throw UsageError("gemm_lab: --isa must be avx512, avx2 or generic, got " + o.isa);
    openblas_set_num_threads(1);
    const char* coretype = std::getenv("OPENBLAS_CORETYPE");
    std::printf(
        "barecnn gemm lab: batch %d; ours: isa %s; OpenBLAS: core %s (%s)%s%s; median of %d samples >= %.2f ms\n",
        o.batch, cpu::cpu_isa_name(cpu::cpu_isa()), openblas_get_corename(), openblas_get_config(),
        coretype ? ", OPENBLAS_CORETYPE=" : "", coretype ? coretype : "", o.reps, o.min_sample_ms);

    const std::vector<ConvLayer> convs = {
        {"paper", "conv(32,5,pad=2)", 1, 28, 28, 32, 5, 2, true},
        {"lenet5", "conv(6,5,pad=2)", 1, 28, 28, 6, 5, 2, true},
        {"lenet5", "conv(16,5)", 6, 14, 14, 16, 5, 0, false},
        {"deep", "conv(32,3,pad=1)", 1, 28, 28, 32, 3, 1, true},
        {"deep", "conv(32,3,pad=1)", 32, 28, 28, 32, 3, 1, false},
        {"deep", "conv(64,3,pad=1)", 32, 14, 14, 64, 3, 1, false},
        {"deep", "conv(64,3,pad=1)", 64, 14, 14, 64, 3, 1, false},
    };
    const std::vector<DenseLayer> denses = {
        {"paper", "dense(128)", 6272, 128}, {"paper", "dense(10)", 128, 10}, {"lenet5", "dense(120)", 400, 120},
        {"lenet5", "dense(84)", 120, 84},   {"lenet5", "dense(10)", 84, 10}, {"deep", "dense(256)", 3136, 256},
        {"deep", "dense(10)", 256, 10},
    };
    std::vector<Op> ops;
    std::map<std::string, int> layer_no;
    auto add = [&](const std::string& net, std::vector<Op> v) {
      std::string tag = net + "." + std::to_string(++layer_no[net]);
      if (!selected(o, net, tag)) return;
      for (auto& op : v) {
        op.net = tag;
        ops.push_back(op);
      }
    };
    for (auto& L : convs) add(L.net, conv_ops(L, o.batch));
    for (auto& L : denses) add(L.net, dense_ops(L, o.batch));

    // ---- one call, one thread ----
    std::printf("\none call, 1 thread (GFLOP/s; ratio = ours / OpenBLAS, > 1: ours faster)\n");
    std::printf("%-9s %-26s %-15s %-40s %5s %9s %9s %9s %6s %8s\n", "net", "layer", "op", "call", "count", "ours ms",
                "ours GF/s", "blas GF/s", "ratio", "rel diff");
    double sum_ours = 0, sum_blas = 0, sum_flops = 0;  // over every call of every op, each once
    double worst = 0;
    for (const Op& op : ops) {
      std::map<decltype(op.calls[0].key()), std::pair<Call, int>> distinct;
      for (const Call& c : op.calls) {
        auto it = distinct.find(c.key());
        if (it == distinct.end())
          distinct.emplace(c.key(), std::make_pair(c, 1));
        else
          it->second.second++;
      }
      for (auto& [key, cc] : distinct) {
        const Call& c = cc.first;
        const int count = cc.second;
        double diff = check(c);
        worst = std::max(worst, diff);
        Operands x(c, 2), y(c, 2);
        std::function<void()> fo = [&] { run_ours(c, x); }, fb = [&] { run_blas(c, y); };
        int inner = inner_for(fo, o.min_sample_ms);
        auto [to, tb] = time_pair(fo, fb, o.reps, inner);
        std::printf("%-9s %-26s %-15s %-40s %5d %9.4f %9.1f %9.1f %6.2f %8.1e%s\n", op.net.c_str(), op.layer.c_str(),
                    op.op.c_str(), c.str().c_str(), count, to, c.flops() / (to * 1e6), c.flops() / (tb * 1e6), tb / to,
                    diff, diff > 1e-4 ? " !" : "");
        sum_ours += count * to, sum_blas += count * tb, sum_flops += count * c.flops();
        std::fflush(stdout);
      }
    }
    std::printf(
        "all calls of all ops once, 1 thread: ours %.2f ms (%.1f GFLOP/s), OpenBLAS %.2f ms (%.1f GFLOP/s), "
        "ratio %.2f\n",
        sum_ours, sum_flops / (sum_ours * 1e6), sum_blas, sum_flops / (sum_blas * 1e6), sum_blas / sum_ours);

    // ---- the op's calls on `threads` threads ----
    std::printf("\neach op's GEMM calls on %d threads, as the op splits them (GFLOP/s; ratio = ours / OpenBLAS)\n",
                o.threads);
    std::printf("%-9s %-26s %-15s %6s %9s %9s %9s %9s %6s\n", "net", "layer", "op", "calls", "ours ms", "ours GF/s",
                "blas ms", "blas GF/s", "ratio");
    double tot_ours = 0, tot_blas = 0, tot_flops = 0;
    for (const Op& op : ops) {
      // Each thread's own operands for every distinct call of the op.
      std::vector<std::map<decltype(op.calls[0].key()), Operands>> per_thread(size_t(o.threads));
      for (auto& m : per_thread)
        for (const Call& c : op.calls)
          if (!m.count(c.key())) m.emplace(c.key(), Operands(c, 3));
      auto all = [&](bool ours) {
#pragma omp parallel for schedule(dynamic) num_threads(o.threads)
        for (size_t i = 0; i < op.calls.size(); i++) {
          const Call& c = op.calls[i];
          Operands& x = per_thread[size_t(omp_get_thread_num())].at(c.key());
          if (ours)
            run_ours(c, x);
          else
            run_blas(c, x);
        }
      };
      std::function<void()> fo = [&] { all(true); }, fb = [&] { all(false); };
      int inner = inner_for(fo, o.min_sample_ms);
      auto [to, tb] = time_pair(fo, fb, o.reps, inner);
      double flops = 0;
      for (const Call& c : op.calls) flops += c.flops();
      std::printf("%-9s %-26s %-15s %6zu %9.4f %9.1f %9.4f %9.1f %6.2f\n", op.net.c_str(), op.layer.c_str(),
                  op.op.c_str(), op.calls.size(), to, flops / (to * 1e6), tb, flops / (tb * 1e6), tb / to);
      tot_ours += to, tot_blas += tb, tot_flops += flops;
      std::fflush(stdout);
    }
    std::printf("all ops, %d threads: ours %.2f ms (%.1f GFLOP/s), OpenBLAS %.2f ms (%.1f GFLOP/s), ratio %.2f\n",
                o.threads, tot_ours, tot_flops / (tot_ours * 1e6), tot_blas, tot_flops / (tot_blas * 1e6),
                tot_blas / tot_ours);
    if (worst > 1e-4) {
      std::printf("a call's output differs from OpenBLAS's by %.1e (marked !)\n", worst);
      return 1;
    }
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return e.exit_code();
  }
}
