// Files that are never half-written: every output goes to a temporary file in the same folder,
// is flushed and fsynced, then renamed over the target.
#pragma once

#include <string>

namespace barecnn {

void atomic_write_file(const std::string& path, const void* data, size_t n);
void atomic_write_text(const std::string& path, const std::string& text);
// Whole file; throws UsageError naming `path` (and what it was: "model file") when unreadable.
std::string read_file(const std::string& path, const std::string& what);
bool file_exists(const std::string& path);
// Creates `dir` (and parents) if needed and checks a file can be created in it; throws
// UsageError naming `flag` ("--out") and the folder otherwise.
void ensure_writable_dir(const std::string& dir, const std::string& flag);
std::string path_join(const std::string& a, const std::string& b);
// Removes temp files left in `dir` by writers that were killed (their pid is gone); returns how many.
int remove_stale_temp_files(const std::string& dir);

}  // namespace barecnn
