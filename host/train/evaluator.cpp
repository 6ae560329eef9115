// Evaluation (include/barecnn/evaluator.h).
#include "barecnn/evaluator.h"

#include <algorithm>

#include "barecnn/error.h"
#include "barecnn/nvtx.h"

namespace barecnn {

Evaluator::Evaluator(const Net& net, const Exec& ex, const IdxImages& images, const std::vector<uint8_t>& labels,
                     float mean, float std, Loss loss, int batch)
    : net_(net),
      ex_(ex),
      images_(images),
      has_labels_(!labels.empty()),
      mean_(mean),
      std_(std),
      loss_(loss),
      batch_(batch) {
  const int n = images.count, P = images.rows * images.cols;  // IDX images: 1 channel
  if (P != int(dims_numel(net.input_dims())))
    throw UsageError(
        fmt("the images are ", images.rows, "x", images.cols, " but the net takes ", dims_str(net.input_dims())));
  const Device d = ex_.device;
  d_images_.reset({n, P}, d);
  d_images_.copy_from_host(images.pixels);
  d_labels_.reset({n}, d);
  d_labels_.copy_from_host(has_labels_ ? labels : std::vector<uint8_t>(n, 0));
  for (TensorI* t : {&idx_, &labels_, &correct_}) t->reset({batch_}, d);
  lossv_.reset({batch_}, d);
}

EvalResult Evaluator::run(const float* params, bool keep_logits) {
  NvtxScope range("evaluate");
  const int K = net_.num_outputs(), n = images_.count, P = images_.rows * images_.cols;
  EvalResult r;
  r.count = n;
  r.confusion.assign(size_t(K) * K, 0);
  if (keep_logits) r.logits.resize(size_t(n) * K);
  r.predicted.resize(n);
  std::vector<int32_t> idx(batch_, 0);
  double loss_sum = 0;
  long long correct_sum = 0;
  for (int start = 0; start < n; start += batch_) {
    const int B = std::min(batch_, n - start);
    net_.prepare(st_, B, ex_.device, /*for_backward=*/false);
    for (int b = 0; b < B; ++b) idx[b] = start + b;
    idx_.copy_from_host(idx);
    op::gather_normalize(ex_, st_.act[0].data(), labels_.data(), d_images_.data(), d_labels_.data(), idx_.data(), B, P,
                         mean_, std_);
    net_.forward(st_, params, ex_);
    op::loss_forward_backward(ex_, lossv_.data(), nullptr, correct_.data(), st_.act.back().data(), labels_.data(), B, K,
                              loss_, 1.f / B);
    const std::vector<float> logits = st_.act.back().to_host();  // waits for the batch
    // The last batch may be smaller than the buffers: copy its B entries only.
    const std::vector<float> lossv = lossv_.to_host(B);
    const std::vector<int32_t> correct = correct_.to_host(B), lab = labels_.to_host(B);
    for (int b = 0; b < B; ++b) {
      const float* row = logits.data() + size_t(b) * K;
      int pred = int(std::max_element(row, row + K) - row);  // first index on ties, as the loss kernel
      r.predicted[start + b] = pred;
      if (keep_logits) std::copy(row, row + K, r.logits.begin() + size_t(start + b) * K);
      if (has_labels_) {
        loss_sum += lossv[b];
        correct_sum += correct[b];
        r.confusion[size_t(lab[b]) * K + pred]++;
      }
    }
  }
  if (has_labels_ && n > 0) {
    r.loss = loss_sum / n;
    r.accuracy = double(correct_sum) / n;
  }
  return r;
}

EvalResult evaluate(const Net& net, const std::vector<float>& params, const IdxImages& images,
                    const std::vector<uint8_t>& labels, float mean, float std, Loss loss, Device device, int batch,
                    bool keep_logits) {
  ExecContext ctx(device);
  Evaluator ev(net, ctx.exec(), images, labels, mean, std, loss, batch);
  Tensor p({int(params.size())}, device);
  p.copy_from_host(params);
  return ev.run(p.data(), keep_logits);
}

}  // namespace barecnn
