// PNG and PGM images for predict.
#include "barecnn/image.h"

#include <png.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "barecnn/error.h"
#include "barecnn/fileutil.h"
#include "barecnn/names.h"

namespace barecnn {

namespace fs = std::filesystem;

namespace {

// The first `n` bytes of a file (fewer if it is shorter).
std::string file_head(const std::string& path, size_t n) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw UsageError(fmt(path, ": cannot open (", std::strerror(errno), ")"));
  std::string s(n, '\0');
  f.read(&s[0], std::streamsize(n));
  s.resize(size_t(f.gcount()));
  return s;
}

IdxImages one_image(int rows, int cols) {
  IdxImages im;
  im.count = 1, im.rows = rows, im.cols = cols;
  im.pixels.assign(size_t(rows) * cols, 0);
  return im;
}

}  // namespace

ImageFormat image_format(const std::string& path) {
  const std::string head = file_head(path, 8);
  static const unsigned char png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (head.size() >= 8 && std::memcmp(head.data(), png_magic, 8) == 0) return ImageFormat::Png;
  if (head.size() >= 2 && head[0] == 'P' && (head[1] == '5' || head[1] == '2')) return ImageFormat::Pgm;
  const bool gz = head.size() >= 2 && uint8_t(head[0]) == 0x1f && uint8_t(head[1]) == 0x8b;
  if (gz || (head.size() >= 4 && head[0] == 0 && head[1] == 0 && head[2] == 8)) return ImageFormat::Idx;
  return ImageFormat::Unknown;
}

IdxImages read_png_gray(const std::string& path) {
  const std::string bytes = read_file(path, "PNG image");
  png_image img;
  std::memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&img, bytes.data(), bytes.size()))
    throw UsageError(fmt(path, ": not a readable PNG (", img.message, ")"));
  if (img.format & PNG_FORMAT_FLAG_COLOR) {
    png_image_free(&img);
    throw UsageError(fmt(path,
                         ": a colour PNG; barecnn's models take grayscale images (convert it, e.g. with "
                         "ImageMagick: convert IN.png -colorspace Gray OUT.png)"));
  }
  // Gray (a palette of grays, 16-bit and alpha included) to 8-bit gray; alpha composited on black.
  img.format = PNG_FORMAT_GRAY;
  if (img.width == 0 || img.height == 0 || img.width > 1u << 14 || img.height > 1u << 14) {
    png_image_free(&img);
    throw UsageError(fmt(path, ": a PNG of ", img.width, "x", img.height, " pixels; expected at most 16384x16384"));
  }
  IdxImages im = one_image(int(img.height), int(img.width));
  png_color black{0, 0, 0};
  if (!png_image_finish_read(&img, &black, im.pixels.data(), 0, nullptr))
    throw UsageError(fmt(path, ": a damaged PNG (", img.message, ")"));
  return im;
}

IdxImages parse_pgm(const std::string& bytes, const std::string& name) {
  size_t at = 2;
  // The next header number, after white space and # comments.
  auto number = [&](const char* what) {
    while (at < bytes.size()) {
      if (bytes[at] == '#')
        while (at < bytes.size() && bytes[at] != '\n') ++at;
      else if (std::isspace(static_cast<unsigned char>(bytes[at])))
        ++at;
      else
        break;
    }
    long long v = 0;
    size_t digits = 0;
    while (at < bytes.size() && std::isdigit(static_cast<unsigned char>(bytes[at])) && digits < 9)
      v = v * 10 + (bytes[at++] - '0'), ++digits;
    if (digits == 0) throw UsageError(fmt(name, ": the PGM header has no ", what, " (a number) at byte ", at));
    return v;
  };
  if (bytes.size() < 2 || bytes[0] != 'P' || (bytes[1] != '5' && bytes[1] != '2'))
    throw UsageError(fmt(name, ": not a PGM file (expected \"P5\" or \"P2\" first)"));
  const bool text = bytes[1] == '2';
  const long long w = number("width"), h = number("height"), maxval = number("maximum value");
  if (w < 1 || h < 1 || w > 16384 || h > 16384)
    throw UsageError(fmt(name, ": a PGM of ", w, "x", h, " pixels; expected 1x1 to 16384x16384"));
  if (maxval < 1 || maxval > 65535)
    throw UsageError(fmt(name, ": PGM maximum value ", maxval, "; expected 1 to 65535"));
  IdxImages im = one_image(int(h), int(w));
  const size_t n = size_t(w) * size_t(h), sample = maxval > 255 ? 2 : 1;
  auto to8 = [&](long long v) {
    if (v > maxval) throw UsageError(fmt(name, ": a PGM sample of ", v, " above the maximum value ", maxval));
    return uint8_t((v * 255 + maxval / 2) / maxval);
  };
  if (text) {
    for (size_t i = 0; i < n; ++i) im.pixels[i] = to8(number("sample"));
  } else {
    ++at;  // the one white-space byte after the maximum value
    if (at > bytes.size() || bytes.size() - at < n * sample)
      throw UsageError(fmt(name, ": truncated: ", w, "x", h, " samples of ", sample, " byte(s) need ", n * sample,
                           " bytes after the header, the file has ", at > bytes.size() ? 0 : bytes.size() - at));
    const auto* p = reinterpret_cast<const uint8_t*>(bytes.data()) + at;
    for (size_t i = 0; i < n; ++i) im.pixels[i] = to8(sample == 1 ? p[i] : (p[2 * i] << 8) | p[2 * i + 1]);
  }
  return im;
}

IdxImages read_pgm(const std::string& path) { return parse_pgm(read_file(path, "PGM image"), path); }

IdxImages read_images(const std::string& path, int rows, int cols, bool invert, std::vector<std::string>* files) {
  std::error_code ec;
  std::vector<std::string> paths;
  if (fs::is_directory(path, ec)) {
    for (const auto& e : fs::directory_iterator(path, ec))
      if (const std::string ext = lower(e.path().extension().string());
          e.is_regular_file(ec) && (ext == ".png" || ext == ".pgm"))
        paths.push_back(e.path().string());
    std::sort(paths.begin(), paths.end());
    if (paths.empty()) throw UsageError(fmt("--images ", path, ": a folder with no .png or .pgm files"));
  } else {
    paths.push_back(path);
  }
  IdxImages all;
  all.rows = rows, all.cols = cols;
  files->clear();
  for (const std::string& p : paths) {
    IdxImages im;
    switch (image_format(p)) {
      case ImageFormat::Png:
        im = read_png_gray(p);
        break;
      case ImageFormat::Pgm:
        im = read_pgm(p);
        break;
      case ImageFormat::Idx:
        if (paths.size() > 1) throw UsageError(fmt(p, ": an IDX file among images; pass it on its own"));
        im = read_idx_images(p);
        break;
      case ImageFormat::Unknown:
        throw UsageError(fmt(p, ": neither an IDX file nor a PNG or PGM image"));
    }
    if (im.rows != rows || im.cols != cols)
      throw UsageError(fmt(p, ": the image", im.count > 1 ? "s are " : " is ", im.cols, "x", im.rows,
                           " pixels (width x height) but the model takes ", cols, "x", rows, "; resize it first"));
    all.count += im.count;
    all.pixels.insert(all.pixels.end(), im.pixels.begin(), im.pixels.end());
    files->insert(files->end(), size_t(im.count), fs::path(p).filename().string());
  }
  if (invert)
    for (uint8_t& v : all.pixels) v = uint8_t(255 - v);
  return all;
}

}  // namespace barecnn
