// PNG charts drawn with cairo: training curves, first-layer filters, the confusion matrix.
//
// Text goes through cairo's toy text API with the "sans" face (fontconfig picks the font), so
// the labels are real, antialiased glyphs. Each chart is drawn on an image surface, encoded to PNG
// in memory and written with atomic_write_file: a reader never sees half a PNG.
#include "barecnn/plots.h"

#include <cairo.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include "barecnn/error.h"
#include "barecnn/fileutil.h"

namespace barecnn {

namespace {

// A surface and its context, released on every path.
class Canvas {
 public:
  Canvas(const std::string& path, int w, int h) : path_(path), w_(w), h_(h) {
    surface_ = cairo_image_surface_create(CAIRO_FORMAT_ARGB32, w, h);
    cr_ = cairo_create(surface_);
    check("creating a ", w, "x", h, " image");
    // Opaque white background: viewers that show transparency as black would hide black text.
    cairo_set_source_rgb(cr_, 1, 1, 1);
    cairo_paint(cr_);
    cairo_select_font_face(cr_, "sans", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  }
  ~Canvas() {
    cairo_destroy(cr_);
    cairo_surface_destroy(surface_);
  }
  Canvas(const Canvas&) = delete;
  Canvas& operator=(const Canvas&) = delete;

  cairo_t* cr() { return cr_; }
  int width() const { return w_; }
  int height() const { return h_; }

  template <typename... Args>
  void check(const Args&... what) {
    cairo_status_t st = cairo_surface_status(surface_);
    if (st == CAIRO_STATUS_SUCCESS) st = cairo_status(cr_);
    if (st != CAIRO_STATUS_SUCCESS)
      throw Error(
          fmt("cannot draw chart ", path_, ": cairo failed ", fmt(what...), " (", cairo_status_to_string(st), ")"));
  }

  // Encodes to PNG in memory, then writes atomically (temp file in the same folder, rename).
  void save() {
    check("drawing");
    cairo_surface_flush(surface_);
    std::vector<unsigned char> png;
    auto append = [](void* closure, const unsigned char* data, unsigned int n) -> cairo_status_t {
      auto* out = static_cast<std::vector<unsigned char>*>(closure);
      out->insert(out->end(), data, data + n);
      return CAIRO_STATUS_SUCCESS;
    };
    cairo_status_t st = cairo_surface_write_to_png_stream(surface_, append, &png);
    if (st != CAIRO_STATUS_SUCCESS)
      throw Error(fmt("cannot write chart ", path_, ": PNG encoding failed (", cairo_status_to_string(st), ")"));
    atomic_write_file(path_, png.data(), png.size());
  }

 private:
  std::string path_;
  int w_, h_;
  cairo_surface_t* surface_ = nullptr;
  cairo_t* cr_ = nullptr;
};

struct Rgb {
  double r, g, b;
};

// matplotlib's "tab10": distinct, readable on white, and familiar.
const Rgb kPalette[10] = {{0.122, 0.467, 0.706}, {1.000, 0.498, 0.055}, {0.173, 0.627, 0.173}, {0.839, 0.153, 0.157},
                          {0.580, 0.404, 0.741}, {0.549, 0.337, 0.294}, {0.890, 0.467, 0.761}, {0.498, 0.498, 0.498},
                          {0.737, 0.741, 0.133}, {0.090, 0.745, 0.812}};

void set_rgb(cairo_t* cr, Rgb c) { cairo_set_source_rgb(cr, c.r, c.g, c.b); }

void set_font(cairo_t* cr, double size, bool bold = false) {
  cairo_select_font_face(cr, "sans", CAIRO_FONT_SLANT_NORMAL, bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr, size);
}

double text_width(cairo_t* cr, const std::string& s) {
  cairo_text_extents_t e;
  cairo_text_extents(cr, s.c_str(), &e);
  return e.x_advance;
}

// Draws `s` with its anchor at (x, y): ax = 0 left, 0.5 centre, 1 right; ay likewise from the top
// of capital letters (0) to the baseline (1), so rows of labels line up whatever their glyphs.
void draw_text(cairo_t* cr, const std::string& s, double x, double y, double ax, double ay, double angle = 0) {
  cairo_font_extents_t fe;
  cairo_font_extents(cr, &fe);
  double cap = fe.ascent * 0.72;  // about the height of a capital letter
  cairo_save(cr);
  cairo_translate(cr, x, y);
  cairo_rotate(cr, angle);
  cairo_move_to(cr, -ax * text_width(cr, s), cap * (1 - ay));
  cairo_show_text(cr, s.c_str());
  cairo_restore(cr);
}

// Tick positions for [lo, hi]: a step of 1, 2, 2.5 or 5 times a power of ten giving about
// `target` ticks. `integer` keeps steps >= 1 (epochs are whole numbers).
std::vector<double> nice_ticks(double lo, double hi, int target, bool integer, double* step_out) {
  double raw = (hi - lo) / std::max(1, target);
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  if (integer) step = std::max(1.0, std::round(step));
  *step_out = step;
  std::vector<double> ticks;
  for (double t = std::ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step)
    ticks.push_back(std::fabs(t) < step * 1e-9 ? 0.0 : t);  // no "-0"
  return ticks;
}

std::string tick_label(double v, double step) {
  char buf[64];
  double a = std::fabs(v);
  if (a != 0 && (a >= 1e6 || a < 1e-4)) {
    std::snprintf(buf, sizeof(buf), "%.3g", v);
  } else {
    // Enough decimals to tell neighbouring ticks apart (2.5 steps need one more).
    int dec = std::max(0, -int(std::floor(std::log10(step) + 1e-9)));
    double mant = step / std::pow(10.0, std::floor(std::log10(step) + 1e-9));
    if (std::fabs(mant - 2.5) < 1e-6) ++dec;
    std::snprintf(buf, sizeof(buf), "%.*f", dec, v);
  }
  return buf;
}

}  // namespace

void plot_curves(const std::string& path, const std::string& title, const std::string& xlabel,
                 const std::string& ylabel, const std::vector<Series>& series) {
  // --- data range over the finite points --------------------------------------------------------
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  bool x_integer = true;
  size_t npoints = 0;
  for (const Series& s : series)
    for (size_t i = 0; i < std::min(s.x.size(), s.y.size()); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      xmin = std::min(xmin, s.x[i]);
      xmax = std::max(xmax, s.x[i]);
      ymin = std::min(ymin, s.y[i]);
      ymax = std::max(ymax, s.y[i]);
      if (s.x[i] != std::round(s.x[i])) x_integer = false;
      ++npoints;
    }
  if (npoints == 0) {
    xmin = 0, xmax = 1, ymin = 0, ymax = 1;
  }
  // A single value on an axis still needs a range to draw it in.
  if (xmax - xmin <= 0) {
    double pad = x_integer ? 1.0 : (xmin == 0 ? 1.0 : std::fabs(xmin) * 0.1);
    xmin -= pad, xmax += pad;
  }
  if (ymax - ymin <= 0) {
    double pad = ymin == 0 ? 1.0 : std::fabs(ymin) * 0.1;
    ymin -= pad, ymax += pad;
  }
  // Margins inside the frame, so that markers at the extremes are not cut by it.
  double xpad = (xmax - xmin) * 0.03, ypad = (ymax - ymin) * 0.06;
  xmin -= xpad, xmax += xpad, ymin -= ypad, ymax += ypad;

  double xstep, ystep;
  std::vector<double> xt = nice_ticks(xmin, xmax, 8, x_integer, &xstep);
  std::vector<double> yt = nice_ticks(ymin, ymax, 6, false, &ystep);

  // --- layout: measure the text first, then place the frame -------------------------------------
  const int W = 900, H = 540;
  Canvas canvas(path, W, H);
  cairo_t* cr = canvas.cr();
  const double tick_font = 13, label_font = 15, title_font = 19, legend_font = 14;

  set_font(cr, tick_font);
  double ytick_w = 0;
  for (double t : yt) ytick_w = std::max(ytick_w, text_width(cr, tick_label(t, ystep)));
  set_font(cr, legend_font);
  double legend_w = 0;
  for (const Series& s : series) legend_w = std::max(legend_w, text_width(cr, s.name));
  legend_w += 44;  // line sample and padding

  double left = 22 + label_font + 12 + ytick_w + 10;
  double right = W - 20 - (series.empty() ? 0 : legend_w + 20);
  double top = 20 + title_font + 20;
  double bottom = H - (18 + label_font + 12 + tick_font + 10);
  auto px = [&](double x) { return left + (x - xmin) / (xmax - xmin) * (right - left); };
  auto py = [&](double y) { return bottom - (y - ymin) / (ymax - ymin) * (bottom - top); };

  // --- title, grid, axes, ticks, labels ---------------------------------------------------------
  // A long title (a whole arch spec) shrinks to fit the canvas and is centred on it.
  double tf = title_font;
  set_font(cr, tf, true);
  while (tf > 9 && text_width(cr, title) > W - 30) set_font(cr, tf -= 1, true);
  cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
  double tw = text_width(cr, title);
  draw_text(cr, title, std::clamp((left + right) / 2, tw / 2 + 15, W - tw / 2 - 15), 20, 0.5, 0);

  cairo_set_line_width(cr, 1);
  cairo_set_source_rgb(cr, 0.88, 0.88, 0.88);
  for (double t : xt) {
    double x = std::round(px(t)) + 0.5;  // half-pixel: crisp 1-px lines
    cairo_move_to(cr, x, top);
    cairo_line_to(cr, x, bottom);
  }
  for (double t : yt) {
    double y = std::round(py(t)) + 0.5;
    cairo_move_to(cr, left, y);
    cairo_line_to(cr, right, y);
  }
  cairo_stroke(cr);

  cairo_set_source_rgb(cr, 0.25, 0.25, 0.25);
  cairo_rectangle(cr, std::round(left) + 0.5, std::round(top) + 0.5, std::round(right - left),
                  std::round(bottom - top));
  cairo_stroke(cr);

  set_font(cr, tick_font);
  for (double t : xt) {
    double x = std::round(px(t)) + 0.5;
    cairo_move_to(cr, x, bottom);
    cairo_line_to(cr, x, bottom + 5);
    cairo_stroke(cr);
    draw_text(cr, tick_label(t, xstep), x, bottom + 10, 0.5, 0);
  }
  for (double t : yt) {
    double y = std::round(py(t)) + 0.5;
    cairo_move_to(cr, left - 5, y);
    cairo_line_to(cr, left, y);
    cairo_stroke(cr);
    draw_text(cr, tick_label(t, ystep), left - 9, y, 1, 0.5);
  }
  set_font(cr, label_font);
  cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
  draw_text(cr, xlabel, (left + right) / 2, H - 18, 0.5, 1);
  draw_text(cr, ylabel, 22, (top + bottom) / 2, 0.5, 1, -M_PI / 2);

  // --- the series: lines broken at non-finite values, a marker on every point ------------------
  cairo_save(cr);
  cairo_rectangle(cr, left, top, right - left, bottom - top);
  cairo_clip(cr);
  cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
  for (size_t si = 0; si < series.size(); ++si) {
    const Series& s = series[si];
    size_t n = std::min(s.x.size(), s.y.size());
    set_rgb(cr, kPalette[si % 10]);
    cairo_set_line_width(cr, 2.2);
    bool pen_down = false;
    for (size_t i = 0; i < n; ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) {
        pen_down = false;
        continue;
      }
      if (pen_down)
        cairo_line_to(cr, px(s.x[i]), py(s.y[i]));
      else
        cairo_move_to(cr, px(s.x[i]), py(s.y[i]));
      pen_down = true;
    }
    cairo_stroke(cr);
    for (size_t i = 0; i < n; ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      cairo_new_sub_path(cr);
      cairo_arc(cr, px(s.x[i]), py(s.y[i]), 4, 0, 2 * M_PI);
    }
    cairo_fill(cr);
  }
  cairo_restore(cr);

  // --- legend, right of the frame (never over the data) ----------------------------------------
  if (!series.empty()) {
    set_font(cr, legend_font);
    double lx = right + 20, ly = top, row = legend_font + 12;
    double lh = row * double(series.size()) + 10;
    cairo_set_source_rgb(cr, 0.7, 0.7, 0.7);
    cairo_set_line_width(cr, 1);
    cairo_rectangle(cr, std::round(lx) + 0.5, std::round(ly) + 0.5, std::round(legend_w), std::round(lh));
    cairo_stroke(cr);
    for (size_t si = 0; si < series.size(); ++si) {
      double cy = ly + 5 + row * (double(si) + 0.5);
      set_rgb(cr, kPalette[si % 10]);
      cairo_set_line_width(cr, 2.2);
      cairo_move_to(cr, lx + 8, cy);
      cairo_line_to(cr, lx + 30, cy);
      cairo_stroke(cr);
      cairo_arc(cr, lx + 19, cy, 4, 0, 2 * M_PI);
      cairo_fill(cr);
      cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
      draw_text(cr, series[si].name, lx + 36, cy, 0, 0.5);
    }
  }
  if (npoints == 0) {
    set_font(cr, label_font);
    cairo_set_source_rgb(cr, 0.4, 0.4, 0.4);
    draw_text(cr, "no data", (left + right) / 2, (top + bottom) / 2, 0.5, 0.5);
  }
  canvas.save();
}

void plot_filters(const std::string& path, const float* weight, int K, int C, int kh, int kw,
                  const std::string& title) {
  BARECNN_ASSERT(K > 0 && C > 0 && kh > 0 && kw > 0, "plot_filters ", path, ": shape ", K, "x", C, "x", kh, "x", kw);
  // Pixels per weight: 24 for small kernels, smaller for big ones or many channels, so that
  // one filter stays about 120-600 px wide.
  int scale = std::clamp(120 / std::max(kh, kw), 4, 24);
  scale = std::max(2, std::min(scale, 600 / (C * kw)));
  const int chan_gap = 3, gap = 14, label_h = 20, margin = 20, title_h = 44;
  int fw = C * kw * scale + (C - 1) * chan_gap;  // one filter, channels side by side
  int fh = kh * scale;
  // Columns: about as wide as tall overall, at most 16.
  int cols = int(std::lround(std::sqrt(double(K) * (fh + label_h + gap) / double(fw + gap))));
  cols = std::clamp(cols, 1, std::min(K, 16));
  int rows = (K + cols - 1) / cols;
  int W = std::max(2 * margin + cols * fw + (cols - 1) * gap, 320);
  int H = title_h + margin / 2 + rows * (fh + label_h) + (rows - 1) * gap + margin;

  Canvas canvas(path, W, H);
  cairo_t* cr = canvas.cr();
  set_font(cr, 17, true);
  cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
  draw_text(cr, title, W / 2.0, 16, 0.5, 0);

  int x0 = (W - (cols * fw + (cols - 1) * gap)) / 2;
  cairo_set_antialias(cr, CAIRO_ANTIALIAS_NONE);  // hard-edged squares: nearest neighbour
  for (int k = 0; k < K; ++k) {
    const float* f = weight + size_t(k) * C * kh * kw;  // (C, kh, kw)
    size_t n = size_t(C) * kh * kw;
    // Each filter to its own range: black = its most negative weight, white = its most positive.
    float lo = f[0], hi = f[0];
    for (size_t i = 0; i < n; ++i) {
      lo = std::min(lo, f[i]);
      hi = std::max(hi, f[i]);
    }
    int gx = x0 + (k % cols) * (fw + gap);
    int gy = title_h + margin / 2 + (k / cols) * (fh + label_h + gap);
    for (int c = 0; c < C; ++c)
      for (int i = 0; i < kh; ++i)
        for (int j = 0; j < kw; ++j) {
          float v = f[(size_t(c) * kh + i) * kw + j];
          double g = hi > lo ? (v - lo) / double(hi - lo) : 0.5;
          if (!std::isfinite(g)) g = 0.5;
          cairo_set_source_rgb(cr, g, g, g);
          cairo_rectangle(cr, gx + c * (kw * scale + chan_gap) + j * scale, gy + i * scale, scale, scale);
          cairo_fill(cr);
        }
    // A thin frame, so that a filter with white edges still shows where it ends.
    cairo_set_source_rgb(cr, 0.6, 0.6, 0.6);
    cairo_set_line_width(cr, 1);
    for (int c = 0; c < C; ++c) {
      cairo_rectangle(cr, gx + c * (kw * scale + chan_gap) - 0.5, gy - 0.5, kw * scale + 1, fh + 1);
      cairo_stroke(cr);
    }
    cairo_set_antialias(cr, CAIRO_ANTIALIAS_DEFAULT);
    set_font(cr, 12);
    cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
    draw_text(cr, std::to_string(k), gx + fw / 2.0, gy + fh + 5, 0.5, 0);
    cairo_set_antialias(cr, CAIRO_ANTIALIAS_NONE);
  }
  canvas.save();
}

void plot_confusion(const std::string& path, const std::vector<int64_t>& counts, int K,
                    const std::vector<std::string>& class_names, const std::string& title) {
  BARECNN_ASSERT(K > 0 && counts.size() == size_t(K) * K, "plot_confusion ", path, ": ", counts.size(), " counts for ",
                 K, " classes");
  std::vector<std::string> names(K);
  for (int i = 0; i < K; ++i)
    names[i] = size_t(i) < class_names.size() && !class_names[i].empty() ? class_names[i] : std::to_string(i);

  int cell = std::clamp(560 / K, 18, 60);
  double count_font = std::clamp(cell * 0.28, 7.0, 15.0);
  double name_font = std::clamp(cell * 0.26, 8.0, 14.0);
  const double axis_font = 15, title_font = 18;

  // Measure the class names to size the margins. Column names are rotated by 45 degrees when
  // they do not fit under their cell.
  double name_w = 0, count_w = 0;
  {
    cairo_surface_t* s = cairo_image_surface_create(CAIRO_FORMAT_ARGB32, 1, 1);
    cairo_t* m = cairo_create(s);
    set_font(m, name_font);
    for (const auto& n : names) name_w = std::max(name_w, text_width(m, n));
    set_font(m, count_font);
    for (int64_t c : counts) count_w = std::max(count_w, text_width(m, std::to_string(c)));
    cairo_destroy(m);
    cairo_surface_destroy(s);
  }
  // Counts wider than the cell (huge test sets): shrink their font.
  if (count_w > cell - 4) count_font *= (cell - 4) / count_w;
  bool rotate = name_w > cell - 4;
  double col_names_h = rotate ? name_w * std::sqrt(0.5) + name_font + 8 : name_font + 10;

  double grid = double(cell) * K;
  double left = 20 + axis_font + 14 + name_w + 10;
  double top = 20 + title_font + 22;
  int W = int(std::ceil(left + grid + std::max(30.0, rotate ? name_font : 0.0)));
  int H = int(std::ceil(top + grid + 8 + col_names_h + 12 + axis_font + 16));
  // The title may be wider than the matrix.
  W = std::max(W, 360);

  Canvas canvas(path, W, H);
  cairo_t* cr = canvas.cr();
  set_font(cr, title_font, true);
  double title_w = text_width(cr, title);
  cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
  double tx = std::clamp(left + grid / 2, title_w / 2 + 10, W - title_w / 2 - 10);
  draw_text(cr, title, tx, 20, 0.5, 0);

  for (int i = 0; i < K; ++i) {
    int64_t row_total = 0;
    for (int j = 0; j < K; ++j) row_total += std::max<int64_t>(0, counts[size_t(i) * K + j]);
    for (int j = 0; j < K; ++j) {
      int64_t c = counts[size_t(i) * K + j];
      double rate = row_total > 0 ? double(std::max<int64_t>(0, c)) / double(row_total) : 0.0;
      // White to matplotlib's darkest "Blues" (#08306b).
      double r = 1 + (0.031 - 1) * rate, g = 1 + (0.188 - 1) * rate, b = 1 + (0.420 - 1) * rate;
      double x = left + j * cell, y = top + i * cell;
      cairo_set_source_rgb(cr, r, g, b);
      cairo_rectangle(cr, x, y, cell, cell);
      cairo_fill(cr);
      set_font(cr, count_font);
      if (rate > 0.45)
        cairo_set_source_rgb(cr, 1, 1, 1);
      else
        cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
      draw_text(cr, std::to_string(c), x + cell / 2.0, y + cell / 2.0, 0.5, 0.5);
    }
  }
  // Cell borders and the frame.
  cairo_set_source_rgb(cr, 0.8, 0.8, 0.8);
  cairo_set_line_width(cr, 1);
  for (int i = 1; i < K; ++i) {
    cairo_move_to(cr, left + i * cell, top);
    cairo_line_to(cr, left + i * cell, top + grid);
    cairo_move_to(cr, left, top + i * cell);
    cairo_line_to(cr, left + grid, top + i * cell);
  }
  cairo_stroke(cr);
  cairo_set_source_rgb(cr, 0.25, 0.25, 0.25);
  cairo_rectangle(cr, left, top, grid, grid);
  cairo_stroke(cr);

  // Class names: rows (true class) on the left, columns (predicted class) below.
  set_font(cr, name_font);
  cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
  for (int i = 0; i < K; ++i) draw_text(cr, names[i], left - 8, top + (i + 0.5) * cell, 1, 0.5);
  for (int j = 0; j < K; ++j) {
    double cx = left + (j + 0.5) * cell, y = top + grid + 8;
    if (rotate)
      draw_text(cr, names[j], cx + name_font * 0.35, y, 1, 0, -M_PI / 4);
    else
      draw_text(cr, names[j], cx, y, 0.5, 0);
  }
  set_font(cr, axis_font);
  draw_text(cr, "predicted class", left + grid / 2, top + grid + 8 + col_names_h + 12, 0.5, 0);
  draw_text(cr, "true class", 20, top + grid / 2, 0.5, 1, -M_PI / 2);
  canvas.save();
}

}  // namespace barecnn
