// Single images for `predict`: PNG (libpng) and PGM (P5 binary, P2 text) files, grayscale, read
// into the IDX layout the rest of barecnn uses; validated before anything trusts them.
#pragma once

#include <string>
#include <vector>

#include "barecnn/idx.h"

namespace barecnn {

// What a file holds, by its first bytes.
enum class ImageFormat { Idx, Png, Pgm, Unknown };
ImageFormat image_format(const std::string& path);

// One grayscale image (count 1). 16-bit samples are scaled to 8 bits. A colour PNG, an
// unreadable or malformed file is a UsageError that names the file and says what it found.
IdxImages read_png_gray(const std::string& path);
IdxImages read_pgm(const std::string& path);
IdxImages parse_pgm(const std::string& bytes, const std::string& name);

// The images `predict --images` names: an IDX file, one PNG or PGM file, or a folder of them
// (its *.png and *.pgm files by name; nothing else in it). All must be rows x cols (the model's
// input); `files` gets each image's file (the IDX file's name for each of its images). `invert`:
// 255 - x, for dark-on-light images (the data sets are light-on-dark).
IdxImages read_images(const std::string& path, int rows, int cols, bool invert, std::vector<std::string>* files);

}  // namespace barecnn
