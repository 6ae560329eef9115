// PNG charts with cairo: training curves, the first conv layer's filters, the confusion matrix.
// Each is written atomically (temp file, then rename).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace barecnn {

struct Series {
  std::string name;
  std::vector<double> x, y;
};

// A line chart with labelled axes, ticks, a title and a legend.
void plot_curves(const std::string& path, const std::string& title, const std::string& xlabel,
                 const std::string& ylabel, const std::vector<Series>& series);
// A grid of the K filters of a conv weight (K, C, kh, kw); each filter's channels side by side,
// each normalized to its own range, with the filter index under it.
void plot_filters(const std::string& path, const float* weight, int K, int C, int kh, int kw, const std::string& title);
// counts (K, K): row = true class, column = predicted; cells shaded by row-normalized rate with
// the count written inside; labelled axes.
void plot_confusion(const std::string& path, const std::vector<int64_t>& counts, int K,
                    const std::vector<std::string>& class_names, const std::string& title);

}  // namespace barecnn
