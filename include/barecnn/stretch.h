// How `barecnn bench` times one layer's calls: back-to-back stretches of them, lengthened until one
// lasts long enough that the shared CPU's interruptions average out (cmd_bench.cpp). Kept apart
// from the clock so that tests can drive it with a made-up one (test_bench.cpp).
#pragma once

#include <algorithm>
#include <cmath>

namespace barecnn {

struct Stretch {
  double ms_per_call = 0;  // the mean over the last stretch
  long long calls = 0;     // how many calls the last stretch made
};

// time_calls(n) runs n calls back to back and returns the milliseconds they took. Times `reps`
// calls; where those take under min_ms, a longer stretch timed afresh (at least twice the calls,
// and as many as should fill 1.25 x min_ms at the rate just seen), until a stretch lasts min_ms or
// makes max_calls calls. Only the last stretch counts. A first stretch of min_ms or more (slow
// calls, or a thread descheduled on a busy host) ends it at once: calls == reps then.
template <class TimeCalls>
Stretch time_stretch(long long reps, double min_ms, long long max_calls, TimeCalls&& time_calls) {
  long long n = std::max(reps, 1LL);
  for (;;) {
    const double ms = time_calls(n);
    if (ms >= min_ms || n >= max_calls) return {ms / double(n), n};
    const double want = double(n) * min_ms * 1.25 / std::max(ms, 1e-4);
    n = std::min(max_calls, std::max(2 * n, (long long)std::ceil(want)));
  }
}

}  // namespace barecnn
