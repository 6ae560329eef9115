// The training progress display (progress.h).
#include "progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "barecnn/error.h"

namespace barecnn {

std::string hms(double s) {
  if (!std::isfinite(s) || s < 0) return "--:--";
  long t = long(s + 0.5);
  return t >= 3600 ? fmt(t / 3600, ":", (t / 60 % 60) / 10, (t / 60 % 60) % 10, ":", (t % 60) / 10, t % 10)
                   : fmt(t / 60, ":", (t % 60) / 10, t % 10);
}

Progress::Progress(bool quiet) : quiet_(quiet), tty_(isatty(STDERR_FILENO) != 0) {}

void Progress::start(int epoch, int epochs, long long steps) {
  epoch_ = epoch, epochs_ = epochs, steps_ = steps, next_line_ = 0;
  last_draw_ = Clock::now() - std::chrono::seconds(1);
}

void Progress::update(long long step, double loss, double acc, double img_s, double eta) {
  if (quiet_) return;
  if (tty_) {
    if (std::chrono::duration<double>(Clock::now() - last_draw_).count() < 0.2 && step < steps_) return;
    last_draw_ = Clock::now();
    int width = 28, filled = steps_ ? int(width * step / steps_) : width;
    std::string bar(filled, '#');
    bar += std::string(width - filled, '.');
    std::fprintf(stderr, "\r  epoch %d/%d [%s] %3d%%  loss %.4f  acc %5.1f%%  %7.0f img/s  ETA %s   ", epoch_, epochs_,
                 bar.c_str(), steps_ ? int(100 * step / steps_) : 100, loss, 100 * acc, img_s, hms(eta).c_str());
    std::fflush(stderr);
  } else if (step >= next_line_) {
    next_line_ = step + std::max<long long>(1, steps_ / 10);
    if (step == 0) return;
    std::printf("  epoch %d/%d step %lld/%lld  loss %.4f  acc %.2f%%  %.0f img/s  ETA %s\n", epoch_, epochs_, step,
                steps_, loss, 100 * acc, img_s, hms(eta).c_str());
    std::fflush(stdout);
  }
}

void Progress::end() {
  if (!quiet_ && tty_) std::fprintf(stderr, "\r%120s\r", "");
}

}  // namespace barecnn
