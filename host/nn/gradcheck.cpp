#include "barecnn/gradcheck.h"
#include "barecnn/gradcheck_criterion.h"

#include <algorithm>
#include <cmath>

#include "barecnn/error.h"
#include "barecnn/net.h"
#include "barecnn/ref_ops.h"
#include "barecnn/rng.h"

namespace barecnn {

Dims parse_input_dims(const std::string& s, const std::string& flag) {
  Dims d;
  size_t p = 0;
  while (true) {
    size_t x = s.find_first_of("xX", p);
    std::string part = s.substr(p, x == std::string::npos ? std::string::npos : x - p);
    char* end = nullptr;
    long v = std::strtol(part.c_str(), &end, 10);
    if (part.empty() || *end != '\0' || v < 1 || v > 65536)
      throw UsageError(fmt(flag, ": expected CxHxW with positive whole numbers (e.g. 1x28x28), got '", s, "'"));
    d.push_back(int(v));
    if (x == std::string::npos) break;
    p = x + 1;
  }
  if (d.size() != 3) throw UsageError(fmt(flag, ": expected three sizes CxHxW (e.g. 3x32x32), got '", s, "'"));
  return d;
}

namespace {

// Mean loss of the batch for the given parameters and input, in double, on the CPU.
struct Objective {
  const Net& net;
  NetState<double>& st;
  const std::vector<int32_t>& labels;
  Loss loss;
  int K;
  const gpu::StepCounters* counters;  // dropout's fixed mask

  double operator()(const std::vector<double>& params, const std::vector<double>& x) {
    std::copy(x.begin(), x.end(), st.act[0].data());
    // Training mode (batchnorm on the batch's statistics, dropout with one fixed mask); the
    // running statistics are not updated.
    net.forward(st, params.data(), Exec::cpu(), RunMode<double>::train(nullptr, counters));
    std::vector<double> l(st.N);
    ref::loss_forward_backward<double>(l.data(), nullptr, nullptr, st.act.back().data(), labels.data(), st.N, K, loss,
                                       1.0 / st.N);
    double s = 0;
    for (double v : l) s += v;
    return s / st.N;
  }
};

}  // namespace

GradcheckResult run_gradcheck(const GradcheckOptions& opt) {
  Net net(opt.arch, opt.input);
  const int N = opt.batch, K = net.num_outputs();
  GradcheckResult res;
  res.arch = net.spec();

  // Random parameters: the net's own init, with biases made non-zero so every path is generic.
  std::vector<float> pf = net.init_params(opt.seed);
  std::vector<double> params(pf.begin(), pf.end());
  Rng rng(mix64(opt.seed) + 17);
  for (auto& e : net.params())
    if (e.name.size() > 5 && e.name.compare(e.name.size() - 5, 5, ".bias") == 0)
      for (size_t i = 0; i < e.numel(); ++i) params[e.offset + i] = rng.uniform(-0.1, 0.1);

  NetState<double> st;
  net.check_train_batch(N);
  net.prepare(st, N, Device::CPU);
  std::vector<double> x(st.act[0].numel());
  for (auto& v : x) v = rng.uniform(-1, 1);
  std::vector<int32_t> labels(N);
  for (auto& l : labels) l = int32_t(rng.next_u64() % K);

  gpu::StepCounters counters;  // the step whose dropout mask every evaluation uses
  counters.seed = opt.seed;
  counters.global_step = 1;
  Objective f{net, st, labels, opt.loss, K, &counters};
  res.loss = f(params, x);

  // Analytic gradients: forward (done above), loss gradient, backward with the input gradient.
  std::vector<double> lvec(N);
  ref::loss_forward_backward<double>(lvec.data(), st.dact.back().data(), nullptr, st.act.back().data(), labels.data(),
                                     N, K, opt.loss, 1.0 / N);
  std::vector<double> grads(net.num_params());
  net.backward(st, params.data(), grads.data(), Exec::cpu(), /*need_input_grad=*/true);
  std::vector<double> dx(st.dact[0].data(), st.dact[0].data() + st.dact[0].numel());
  if (!net.params().empty())
    for (size_t i = 0; i < net.params()[0].numel(); ++i) grads[i] *= opt.corrupt;

  // One tensor: sample entries, compare with central differences.
  auto check = [&](const std::string& name, const Dims& dims, std::vector<double>& v, size_t offset, size_t n,
                   const std::vector<double>& analytic, size_t aoffset, bool is_input) {
    GradcheckTensor t;
    t.name = name;
    t.dims = dims;
    std::vector<size_t> idx;
    if (n <= size_t(opt.samples)) {
      for (size_t i = 0; i < n; ++i) idx.push_back(i);
    } else {
      // always include the largest analytic entry, then random distinct ones
      size_t big = 0;
      for (size_t i = 1; i < n; ++i)
        if (std::fabs(analytic[aoffset + i]) > std::fabs(analytic[aoffset + big])) big = i;
      idx.push_back(big);
      while (idx.size() < size_t(opt.samples)) {
        size_t i = rng.next_u64() % n;
        if (std::find(idx.begin(), idx.end(), i) == idx.end()) idx.push_back(i);
      }
    }
    bool any_nonzero = false;
    size_t fails = 0;
    auto eval = [&]() { return is_input ? f(params, v) : f(v, x); };
    for (size_t i : idx) {
      double& xi = v[offset + i];
      const double x0 = xi, h = opt.step;
      xi = x0 + h;
      const double fp = eval();
      xi = x0 - h;
      const double fm = eval();
      xi = x0;
      const double a = analytic[aoffset + i];
      const GradEntry e = check_grad_entry(a, fp, fm, eval(), h, opt.tol);
      if (a != 0 || e.numeric != 0) any_nonzero = true;
      if (e.verdict == GradVerdict::Kink) {
        ++t.skipped;
        continue;
      }
      ++t.checked;
      t.worst_rel = std::max(t.worst_rel, e.rel);
      if (e.verdict == GradVerdict::Fail) ++fails;
    }
    t.all_zero = !any_nonzero;
    // Pass: every smooth entry within tolerance, and kinks no more than a quarter of the sample.
    t.pass = fails == 0 && t.checked > 0 && t.skipped * 4 <= idx.size();
    return t;
  };

  for (auto& e : net.params())
    res.tensors.push_back(check(e.name, e.dims, params, e.offset, e.numel(), grads, e.offset, false));
  Dims in_dims{N};
  in_dims.insert(in_dims.end(), opt.input.begin(), opt.input.end());
  res.tensors.push_back(check("input", in_dims, x, 0, x.size(), dx, 0, true));

  res.pass = std::all_of(res.tensors.begin(), res.tensors.end(), [](auto& t) { return t.pass; });
  return res;
}

}  // namespace barecnn
