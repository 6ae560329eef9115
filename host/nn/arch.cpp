// The arch-spec parser: "conv(32,5,pad=2) relu maxpool(2) dense(128) relu dense(10)", and the
// shape inference of a parsed spec on an input.
#include "barecnn/arch.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdlib>

#include "barecnn/error.h"
#include "barecnn/names.h"

namespace barecnn {

std::vector<std::pair<std::string, std::string>> presets() {
  return {
      // The net of the paper: one convolution, one max pooling, two dense layers.
      {"paper", "conv(32,5,pad=2) relu maxpool(2) dense(128) relu dense(10)"},
      // LeCun et al. 1998, with the 28x28 input padded to 32x32 by the first convolution.
      {"lenet5", "conv(6,5,pad=2) tanh avgpool(2) conv(16,5) tanh avgpool(2) dense(120) tanh dense(84) tanh dense(10)"},
      // Two VGG-style blocks, meant to reach >= 92% on Fashion-MNIST (see profiling/RESULTS.md for
      // what has been measured).
      {"deep",
       "conv(32,3,pad=1) relu conv(32,3,pad=1) relu maxpool(2) conv(64,3,pad=1) relu conv(64,3,pad=1) relu "
       "maxpool(2) dense(256) relu dense(10)"},
      // `deep` with batch normalization and dropout, for a recipe (preset_recipe) that reaches 94%
      // on Fashion-MNIST in 30 epochs (profiling/RESULTS.md).
      {"fashion",
       "conv(32,3,pad=1) batchnorm relu conv(32,3,pad=1) batchnorm relu maxpool(2) dropout(0.25) "
       "conv(64,3,pad=1) batchnorm relu conv(64,3,pad=1) batchnorm relu maxpool(2) dropout(0.25) "
       "dense(256) batchnorm relu dropout(0.5) dense(10)"},
  };
}

std::vector<std::pair<std::string, std::string>> preset_recipe(const std::string& preset) {
  if (lower(preset) == "fashion")
    return {
        {"--epochs", "30"},          {"--batch", "64"},          {"--optimizer", "sgd"},      {"--lr", "0.05"},
        {"--momentum", "0.9"},       {"--weight-decay", "5e-4"}, {"--lr-schedule", "cosine"}, {"--warmup-epochs", "1"},
        {"--augment", "crop:2,flip"}};
  return {};
}

std::string preset_names() {
  std::string all;
  for (auto& [name, spec] : presets()) all += (all.empty() ? "" : ", ") + name;
  return all;
}

std::string resolve_preset(const std::string& s) {
  for (auto& [name, spec] : presets())
    if (lower(s) == name) return spec;  // (any case, as layer names)
  return s;
}

namespace {

const std::vector<std::string>& layer_names() {
  static const std::vector<std::string> names = {
      "conv",    "maxpool", "avgpool", "l2pool", "flatten",    "dense", "softmax",  "identity",  "binary_step",
      "sigmoid", "tanh",    "arctan",  "relu",   "leaky_relu", "elu",   "softplus", "batchnorm", "dropout"};
  return names;
}

struct Token {
  std::string name;
  std::vector<std::string> args;  // raw, trimmed
  bool has_parens = false;
  std::string text;
  int position = 0;  // the layer's index in the net, from 0, counting the flatten inserted before
                     // the first dense layer (as the layer table and torch.nn.Sequential do)
};

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\n\r"), e = s.find_last_not_of(" \t\n\r");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

std::vector<Token> tokenize(const std::string& spec) {
  std::vector<Token> out;
  int inserted = 0;   // flattens the net will insert before this token: 1 after the first dense
  bool flat = false;  // a flatten or dense came before: no flatten is inserted any more
  size_t i = 0, n = spec.size();
  auto is_space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  while (i < n) {
    while (i < n && is_space(spec[i])) ++i;
    if (i >= n) break;
    Token t;
    size_t start = i;
    while (i < n && !is_space(spec[i]) && spec[i] != '(') {
      if (spec[i] == ')')
        throw UsageError(fmt("--arch: unexpected ')' in layer ", int(out.size()) + inserted, " of \"", spec, "\""));
      t.name += char(std::tolower(static_cast<unsigned char>(spec[i++])));
    }
    if (t.name == "dense" && !flat) inserted = 1;
    if (t.name == "dense" || t.name == "flatten") flat = true;
    t.position = int(out.size()) + inserted;
    size_t j = i;
    while (j < n && is_space(spec[j])) ++j;  // allow "conv (32,5)"
    if (j < n && spec[j] == '(') {
      i = j;
      size_t close = spec.find(')', i);
      if (close == std::string::npos)
        throw UsageError(fmt("--arch: layer ", t.position, " '", spec.substr(start), "' has no closing ')'"));
      std::string inner = spec.substr(i + 1, close - i - 1);
      if (inner.find('(') != std::string::npos)
        throw UsageError(fmt("--arch: layer ", t.position, " '", spec.substr(start, inner.find('(') + i + 1 - start),
                             "...' has no closing ')' before the next '('"));
      t.has_parens = true;
      size_t p = 0;
      while (true) {
        size_t c = inner.find(',', p);
        t.args.push_back(trim(inner.substr(p, c == std::string::npos ? std::string::npos : c - p)));
        if (c == std::string::npos) break;
        p = c + 1;
      }
      if (t.args.size() == 1 && t.args[0].empty()) t.args.clear();
      i = close + 1;
    }
    t.text = spec.substr(start, i - start);
    if (t.name.empty()) throw UsageError(fmt("--arch: layer ", t.position, " '", t.text, "' has no name"));
    out.push_back(t);
  }
  return out;
}

[[noreturn]] void bad(const Token& t, const std::string& why) {
  throw UsageError(fmt("--arch: layer ", t.position, " '", t.text, "': ", why));
}

long parse_int(const Token& t, const std::string& s, const std::string& what) {
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || errno == ERANGE) bad(t, fmt(what, " must be a whole number, got '", s, "'"));
  if (v < 1 || v > 1000000) bad(t, fmt(what, " must be between 1 and 1000000, got ", v));
  return v;
}

long parse_nonneg(const Token& t, const std::string& s, const std::string& what) {
  char* end = nullptr;
  long v = std::strtol(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0') bad(t, fmt(what, " must be a whole number, got '", s, "'"));
  if (v < 0 || v > 1000000) bad(t, fmt(what, " must be between 0 and 1000000, got ", v));
  return v;
}

float parse_float(const Token& t, const std::string& s, const std::string& what) {
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || !std::isfinite(v)) bad(t, fmt(what, " must be a finite number, got '", s, "'"));
  // The layer keeps a float: a larger value would become inf, which the spec cannot be written as.
  if (std::fabs(v) > FLT_MAX) bad(t, fmt(what, " must be at most ", FLT_MAX, " in magnitude, got '", s, "'"));
  return float(v);
}

// "5" -> 5x5, "3x5" -> 3x5
void parse_window(const Token& t, const std::string& s, int* kh, int* kw) {
  size_t x = s.find_first_of("xX");
  if (x == std::string::npos) {
    *kh = *kw = int(parse_int(t, s, "the kernel size"));
  } else {
    *kh = int(parse_int(t, trim(s.substr(0, x)), "the kernel height"));
    *kw = int(parse_int(t, trim(s.substr(x + 1)), "the kernel width"));
  }
}

// Splits args into positional ones and key=value ones; checks the keys.
void split_args(const Token& t, const std::vector<std::string>& keys, std::vector<std::string>* pos,
                std::vector<std::pair<std::string, std::string>>* kv) {
  for (auto& a : t.args) {
    if (a.empty()) bad(t, "empty argument (two commas in a row?)");
    size_t eq = a.find('=');
    if (eq == std::string::npos) {
      if (!kv->empty()) bad(t, fmt("positional argument '", a, "' after a key=value argument"));
      pos->push_back(a);
    } else {
      std::string k = trim(a.substr(0, eq)), v = trim(a.substr(eq + 1));
      if (std::find(keys.begin(), keys.end(), k) == keys.end()) {
        std::string near = nearest(k, keys);
        std::string allowed;
        for (auto& kk : keys) allowed += (allowed.empty() ? "" : ", ") + kk;
        bad(t, fmt("unknown argument '", k, "'", near.empty() ? "" : "; did you mean '" + near + "'?",
                   keys.empty() ? " (this layer takes no key=value arguments)" : " (allowed: " + allowed + ")"));
      }
      for (auto& [k2, v2] : *kv)
        if (k2 == k) bad(t, fmt("argument '", k, "' given twice"));
      kv->push_back({k, v});
    }
  }
}

}  // namespace

std::vector<LayerDesc> parse_arch(const std::string& spec_in) {
  std::string spec = resolve_preset(spec_in);
  std::vector<Token> tokens = tokenize(spec);
  if (tokens.empty())
    throw UsageError(
        "--arch: the spec is empty; give layers such as \"conv(32,5,pad=2) relu maxpool(2) dense(10)\" "
        "or a preset (" +
        preset_names() + ")");
  std::vector<LayerDesc> out;
  for (const Token& t : tokens) {
    LayerDesc d;
    d.text = t.text;
    std::vector<std::string> pos;
    std::vector<std::pair<std::string, std::string>> kv;
    const std::string& n = t.name;
    if (n == "conv") {
      d.kind = LayerKind::Conv;
      split_args(t, {"stride", "pad"}, &pos, &kv);
      if (pos.size() != 2)
        bad(t, fmt("expected conv(out_channels, kernel[, stride=S][, pad=P]), got ", pos.size(), " positional argument",
                   pos.size() == 1 ? "" : "s"));
      d.out = int(parse_int(t, pos[0], "the number of output channels"));
      parse_window(t, pos[1], &d.kh, &d.kw);
      d.stride = 1;
      for (auto& [k, v] : kv) {
        if (k == "stride") d.stride = int(parse_int(t, v, "stride"));
        if (k == "pad") d.pad = int(parse_nonneg(t, v, "pad"));
      }
    } else if (n == "maxpool" || n == "avgpool" || n == "l2pool") {
      d.kind = n == "maxpool" ? LayerKind::MaxPool : n == "avgpool" ? LayerKind::AvgPool : LayerKind::L2Pool;
      split_args(t, {"stride"}, &pos, &kv);
      if (pos.size() != 1)
        bad(t, fmt("expected ", n, "(window[, stride=S]), got ", pos.size(), " positional arguments"));
      parse_window(t, pos[0], &d.kh, &d.kw);
      d.stride = d.kh == d.kw ? d.kh : 0;
      for (auto& [k, v] : kv)
        if (k == "stride") d.stride = int(parse_int(t, v, "stride"));
      if (d.stride == 0) bad(t, "a rectangular window needs an explicit stride=S");
    } else if (n == "dense") {
      d.kind = LayerKind::Dense;
      split_args(t, {}, &pos, &kv);
      if (pos.size() != 1) bad(t, fmt("expected dense(units), got ", pos.size(), " arguments"));
      d.out = int(parse_int(t, pos[0], "the number of units"));
    } else if (n == "flatten" || n == "softmax" || n == "identity" || n == "binary_step" || n == "sigmoid" ||
               n == "tanh" || n == "arctan" || n == "relu" || n == "softplus") {
      if (t.has_parens && !t.args.empty()) bad(t, fmt("'", n, "' takes no arguments"));
      if (n == "flatten")
        d.kind = LayerKind::Flatten;
      else if (n == "softmax")
        d.kind = LayerKind::Softmax;
      else {
        d.kind = LayerKind::Activation;
        d.act.kind = n == "identity"      ? Act::Identity
                     : n == "binary_step" ? Act::BinaryStep
                     : n == "sigmoid"     ? Act::Sigmoid
                     : n == "tanh"        ? Act::Tanh
                     : n == "arctan"      ? Act::Arctan
                     : n == "relu"        ? Act::Relu
                                          : Act::Softplus;
      }
    } else if (n == "batchnorm") {
      if (t.has_parens && !t.args.empty())
        bad(t, "'batchnorm' takes no arguments (momentum 0.1 and eps 1e-5, as PyTorch's defaults)");
      d.kind = LayerKind::BatchNorm;
    } else if (n == "dropout") {
      d.kind = LayerKind::Dropout;
      d.p = 0.5f;  // (PyTorch's default)
      split_args(t, {}, &pos, &kv);
      if (pos.size() > 1) bad(t, fmt("expected dropout(p), got ", pos.size(), " arguments"));
      if (pos.size() == 1) {
        d.p = parse_float(t, pos[0], "the dropout probability p");
        if (!(d.p >= 0.f && d.p < 1.f))
          bad(t, fmt("the dropout probability p must be in [0, 1) (0 keeps everything), got ", pos[0]));
      }
    } else if (n == "leaky_relu" || n == "elu") {
      d.kind = LayerKind::Activation;
      d.act.kind = n == "elu" ? Act::Elu : Act::LeakyRelu;
      d.act.alpha = n == "elu" ? 1.0f : 0.01f;
      split_args(t, {}, &pos, &kv);
      if (pos.size() > 1) bad(t, fmt("expected ", n, "(alpha), got ", pos.size(), " arguments"));
      if (pos.size() == 1) d.act.alpha = parse_float(t, pos[0], "alpha");
    } else {
      std::vector<std::string> names = layer_names();
      if (tokens.size() == 1 && !t.has_parens)  // (a lone word may be a misspelt preset)
        for (auto& [preset, spec_of] : presets()) names.push_back(preset);
      std::string near = nearest(n, names);
      std::string all;
      for (auto& l : layer_names()) all += (all.empty() ? "" : ", ") + l;
      throw UsageError(fmt("--arch: layer ", t.position, ": unknown layer '", n, "'",
                           near.empty() ? "" : "; did you mean '" + near + "'?", " (layers: ", all,
                           "; presets: ", preset_names(), ")"));
    }
    if (t.has_parens && d.kind != LayerKind::Conv && d.kind != LayerKind::Dense && d.kind != LayerKind::MaxPool &&
        d.kind != LayerKind::AvgPool && d.kind != LayerKind::L2Pool && d.kind != LayerKind::Dropout &&
        !(d.kind == LayerKind::Activation && (d.act.kind == Act::LeakyRelu || d.act.kind == Act::Elu)) &&
        !t.args.empty())
      bad(t, "takes no arguments");
    out.push_back(d);
  }
  return out;
}

static std::string window_str(int kh, int kw) { return kh == kw ? std::to_string(kh) : fmt(kh, "x", kw); }

std::string layer_desc_str(const LayerDesc& d) {
  switch (d.kind) {
    case LayerKind::Conv: {
      std::string s = fmt("conv(", d.out, ",", window_str(d.kh, d.kw));
      if (d.stride != 1) s += fmt(",stride=", d.stride);
      if (d.pad != 0) s += fmt(",pad=", d.pad);
      return s + ")";
    }
    case LayerKind::MaxPool:
    case LayerKind::AvgPool:
    case LayerKind::L2Pool: {
      const char* n = d.kind == LayerKind::MaxPool ? "maxpool" : d.kind == LayerKind::AvgPool ? "avgpool" : "l2pool";
      std::string s = fmt(n, "(", window_str(d.kh, d.kw));
      if (!(d.kh == d.kw && d.stride == d.kh)) s += fmt(",stride=", d.stride);
      return s + ")";
    }
    case LayerKind::Flatten:
      return "flatten";
    case LayerKind::Dense:
      return fmt("dense(", d.out, ")");
    case LayerKind::Softmax:
      return "softmax";
    case LayerKind::Activation:
      return activation_name(d.act);
    case LayerKind::BatchNorm:
      return "batchnorm";
    case LayerKind::Dropout:
      return fmt("dropout(", shortest_float(d.p), ")");
  }
  return "?";
}

namespace {

// "layer 3 conv(32,7)": how every message names a layer (Layer::label).
std::string layer_label(int index, const LayerDesc& d) { return fmt("layer ", index, " ", layer_desc_str(d)); }

// One layer's output dims for one sample of `in`, or a UsageError naming it.
Dims infer_out(int index, const LayerDesc& d, const Dims& in) {
  const std::string label = layer_label(index, d);
  const bool image = d.kind == LayerKind::Conv || d.kind == LayerKind::MaxPool || d.kind == LayerKind::AvgPool ||
                     d.kind == LayerKind::L2Pool;
  if (image && in.size() != 3)
    throw UsageError(fmt(label, ": needs a CxHxW input but gets a flat vector of ", dims_str(in),
                         " values; put it before the first dense/flatten layer"));
  switch (d.kind) {
    case LayerKind::Conv: {
      Conv2dShape s = make_conv2d_shape(1, in[0], in[1], in[2], d.out, d.kh, d.kw, d.stride, d.pad, label);
      if (s.OH < 1 || s.OW < 1) throw UsageError(fmt(label, ": output size ", s.OH, "x", s.OW, " is not positive"));
      return {d.out, s.OH, s.OW};
    }
    case LayerKind::MaxPool:
    case LayerKind::AvgPool:
    case LayerKind::L2Pool: {
      Pool2dShape s = make_pool2d_shape(1, in[0], in[1], in[2], d.kh, d.kw, d.stride, label);
      return {in[0], s.OH, s.OW};
    }
    case LayerKind::Flatten:
      return {int(dims_numel(in))};
    case LayerKind::Dense:
      if (in.size() != 1)
        throw UsageError(fmt(label, ": needs a flat input, gets ", dims_str(in),
                             " (a flatten is inserted automatically before the first dense layer)"));
      return {d.out};
    case LayerKind::Softmax:
      if (in.size() != 1)
        throw UsageError(fmt(label, ": softmax works on a flat vector of features but gets ", dims_str(in),
                             "; put it after a dense layer"));
      return in;
    case LayerKind::Activation:
    case LayerKind::BatchNorm:  // per channel of an image (BatchNorm2d), per feature of a vector (BatchNorm1d)
    case LayerKind::Dropout:
      return in;
  }
  return in;
}

LayerDesc flatten_desc() {
  LayerDesc d;
  d.kind = LayerKind::Flatten;
  d.text = "flatten";
  return d;
}

}  // namespace

std::vector<ArchLayer> resolve_arch(const std::string& spec, const Dims& input) {
  if (input.size() != 3 || input[0] < 1 || input[1] < 1 || input[2] < 1)
    throw UsageError(fmt("input shape must be CxHxW with positive sizes, got ", dims_str(input)));
  if (dims_numel(input) > size_t(INT32_MAX))
    throw UsageError(fmt("input shape ", dims_str(input), " has more than ", INT32_MAX, " values per image"));
  std::vector<ArchLayer> layers;
  Dims cur = input;
  auto add = [&](const LayerDesc& d) {
    Dims out = infer_out(int(layers.size()), d, cur);
    layers.push_back({d, cur, out});
    cur = std::move(out);
  };
  for (const LayerDesc& d : parse_arch(spec)) {
    // A dense layer after an image gets a flatten first; it counts as a layer, as an explicit
    // nn.Flatten would in PyTorch, so parameter names match torch.nn.Sequential.
    if (d.kind == LayerKind::Dense && cur.size() == 3) add(flatten_desc());
    add(d);
  }
  // The logits must be a flat vector per sample, one value per class.
  if (cur.size() != 1) add(flatten_desc());
  return layers;
}

std::string arch_spec(const std::vector<ArchLayer>& layers) {
  std::string s;
  for (const ArchLayer& l : layers) s += (s.empty() ? "" : " ") + layer_desc_str(l.desc);
  return s;
}

}  // namespace barecnn
