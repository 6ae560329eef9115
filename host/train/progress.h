// The training progress display: a bar redrawn in place on a terminal (stderr), plain lines every
// tenth of an epoch otherwise (stdout), nothing when quiet.
#pragma once

#include <chrono>
#include <string>

namespace barecnn {

std::string hms(double seconds);  // "1:05", "1:02:03"; "--:--" when unknown

class Progress {
 public:
  explicit Progress(bool quiet);
  ~Progress() { end(); }  // (a run that throws leaves no half-drawn bar before its error)
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  void start(int epoch, int epochs, long long steps);
  // Called with the latest known figures; cheap when nothing is due.
  void update(long long step, double loss, double acc, double img_s, double eta);
  void end();  // clears the bar; harmless when there is none

 private:
  using Clock = std::chrono::steady_clock;
  bool quiet_, tty_;
  int epoch_ = 0, epochs_ = 0;
  long long steps_ = 0, next_line_ = 0;
  Clock::time_point last_draw_;
};

}  // namespace barecnn
