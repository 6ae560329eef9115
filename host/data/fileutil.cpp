// Files that are never half-written, and the small file helpers around them.
//
// atomic_write_file writes to a temporary file next to the target, flushes it to the disk, renames
// it over the target and syncs the folder. A crash or a full disk at any point leaves either the
// old file or the new one, never a mix; a reader never sees a partial file.
#include "barecnn/fileutil.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "barecnn/error.h"

namespace fs = std::filesystem;

namespace barecnn {

namespace {

// Distinguishes temp files of several writers in one process (threads, or one file written twice).
std::atomic<unsigned long> g_tmp_counter{0};

std::string parent_dir(const std::string& path) {
  fs::path parent = fs::path(path).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

// Temp file in the same folder as `path`, so that the final rename stays within one filesystem
// (rename across filesystems is not atomic, and fails with EXDEV). Hidden, and named after its
// target and writer, so a leftover from a crash is easy to recognise.
std::string temp_path_for(const std::string& path) {
  fs::path p(path);
  std::string name = "." + p.filename().string() + ".tmp." + std::to_string(::getpid()) + "." +
                     std::to_string(g_tmp_counter.fetch_add(1));
  return (p.parent_path() / name).string();
}

// Closes the descriptor and removes the temp file unless released: every failure path cleans up.
struct TempFile {
  std::string path;
  int fd = -1;
  bool keep = false;
  ~TempFile() {
    if (fd >= 0) ::close(fd);
    if (!keep) ::unlink(path.c_str());
  }
};

[[noreturn]] void throw_write_error(const std::string& path, const std::string& what, int err) {
  throw UsageError(fmt("cannot write ", path, ": ", what, " (", std::strerror(err), ")"));
}

}  // namespace

void atomic_write_file(const std::string& path, const void* data, size_t n) {
  if (path.empty()) throw UsageError("cannot write a file with an empty name");
  TempFile tmp;
  tmp.path = temp_path_for(path);
  // O_EXCL: never follow or reuse something that already sits at the temp name.
  tmp.fd = ::open(tmp.path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (tmp.fd < 0) {
    int err = errno;
    tmp.keep = true;  // nothing was created
    throw_write_error(path, "cannot create a temporary file in " + parent_dir(path), err);
  }

  const char* p = static_cast<const char*>(data);
  size_t left = n;
  while (left > 0) {
    ssize_t w = ::write(tmp.fd, p, left);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw_write_error(path, fmt("writing ", n, " bytes failed"), errno);
    }
    p += w;
    left -= size_t(w);
  }
  // The data must be on the disk before the rename makes it visible under the final name.
  if (::fsync(tmp.fd) != 0) throw_write_error(path, "fsync failed", errno);
  int fd = tmp.fd;
  tmp.fd = -1;
  if (::close(fd) != 0) throw_write_error(path, "close failed", errno);

  if (::rename(tmp.path.c_str(), path.c_str()) != 0)
    throw_write_error(path, "cannot rename the temporary file over it", errno);
  tmp.keep = true;  // it is the target now

  // Make the rename itself durable. Some filesystems cannot fsync a folder (EINVAL); the file is
  // already complete and in place then, so only a real I/O error is reported.
  int dfd = ::open(parent_dir(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    int rc = ::fsync(dfd);
    int err = errno;
    ::close(dfd);
    if (rc != 0 && err != EINVAL && err != ENOTSUP) throw_write_error(path, "fsync of the folder failed", err);
  }
}

void atomic_write_text(const std::string& path, const std::string& text) {
  atomic_write_file(path, text.data(), text.size());
}

std::string read_file(const std::string& path, const std::string& what) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) throw UsageError(fmt(what, " ", path, ": is a folder, not a file"));
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw UsageError(fmt(what, " ", path, ": cannot open (", std::strerror(errno), ")"));
  std::string out;
  char buf[1 << 16];
  for (;;) {
    size_t got = std::fread(buf, 1, sizeof(buf), f);
    out.append(buf, got);
    if (got < sizeof(buf)) break;
  }
  bool failed = std::ferror(f) != 0;
  int err = errno;
  std::fclose(f);
  if (failed) throw UsageError(fmt(what, " ", path, ": read error (", std::strerror(err), ")"));
  return out;
}

bool file_exists(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

void ensure_writable_dir(const std::string& dir, const std::string& flag) {
  if (dir.empty()) throw UsageError(fmt(flag, ": the folder name is empty; choose a writable folder"));
  std::error_code ec;
  if (fs::exists(dir, ec) && !fs::is_directory(dir, ec))
    throw UsageError(fmt(flag, " ", dir, ": exists but is not a folder; choose a writable folder"));
  fs::create_directories(dir, ec);
  if (ec)
    throw UsageError(fmt(flag, " ", dir, ": cannot create the folder (", ec.message(), "); choose a writable folder"));
  if (!fs::is_directory(dir, ec))
    throw UsageError(fmt(flag, " ", dir, ": exists but is not a folder; choose a writable folder"));

  // Permission bits do not tell the whole story (read-only mounts, ACLs, root): try it.
  std::string probe = path_join(dir, fmt(".barecnn-probe.", ::getpid(), ".", g_tmp_counter.fetch_add(1)));
  int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0)
    throw UsageError(
        fmt(flag, " ", dir, ": cannot create files there (", std::strerror(errno), "); choose a writable folder"));
  ::close(fd);
  ::unlink(probe.c_str());
}

std::string path_join(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  return (fs::path(a) / b).string();
}

}  // namespace barecnn

namespace barecnn {

// A process killed while writing leaves ".<name>.tmp.<pid>.<n>"; the next run in the folder
// removes those whose writer is gone.
int remove_stale_temp_files(const std::string& dir) {
  namespace fs = std::filesystem;
  int removed = 0;
  std::error_code ec;
  for (auto& e : fs::directory_iterator(dir, ec)) {
    std::string name = e.path().filename().string();
    size_t at = name.rfind(".tmp.");
    if (name.empty() || name[0] != '.' || at == std::string::npos) continue;
    long pid = std::strtol(name.c_str() + at + 5, nullptr, 10);
    if (pid <= 0 || (::kill(pid_t(pid), 0) != 0 && errno == ESRCH)) {
      fs::remove(e.path(), ec);
      removed += !ec;
    }
  }
  return removed;
}

}  // namespace barecnn
