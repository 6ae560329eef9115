// Threads and launch: how the emulator runs a grid.
//
// Blocks are handed out to worker threads (the calling host thread plus BARECNN_EMU_WORKERS - 1
// helpers) through an atomic counter, so different blocks run at the same time as on a device.
// A block runs on one worker, its CUDA threads as fibers: a runner fiber takes the next thread
// that has not started and runs it; when the thread reaches __syncthreads or a warp shuffle it
// parks (its fiber stays with it) and the scheduler starts another runner for the threads not
// started yet. When every thread has parked or returned, the scheduler resolves: the shuffles
// first (every lane the mask names must be at the same shuffle), else the barrier (every thread
// that has not returned must wait at the same __syncthreads, and none may have returned). Then it
// resumes the woken threads one after another, in the order the schedule gives
// (BARECNN_EMU_SCHEDULE: inorder, reverse, shuffle[:seed]), each until it parks again or returns.
//
// Static __shared__ arrays are thread_local (cuda_runtime.h): every fiber of a block runs on the
// same worker, so they share them, and a worker runs one block at a time.
//
// Under ThreadSanitizer every warp of a block has its own TSan fiber identity, and the
// emulator tells TSan exactly the ordering CUDA guarantees: launch before every thread, a barrier
// between the phases of a block, a block's end before the grid's end. A missing __syncthreads is
// then a data race that TSan reports. This file is compiled without TSan instrumentation (its
// bookkeeping is single-threaded per block and runs under the worker's own identity).
#include <cuda_runtime.h>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "internal.h"

#if defined(__SANITIZE_ADDRESS__)
#define BARECNN_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BARECNN_EMU_ASAN 1
#endif
#endif
// BARECNN_EMU_TSAN comes from CMake: this file itself is compiled without -fsanitize=thread, so
// __SANITIZE_THREAD__ is not defined here even in the TSan build.

#ifdef BARECNN_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#ifdef BARECNN_EMU_TSAN
#include <sanitizer/tsan_interface.h>
#endif

// The built-in index variables: one per worker thread, set before a CUDA thread runs or resumes.
thread_local uint3 threadIdx BARECNN_EMU_TLS = {0, 0, 0};
thread_local uint3 blockIdx BARECNN_EMU_TLS = {0, 0, 0};
thread_local dim3 blockDim BARECNN_EMU_TLS = dim3(1, 1, 1);
thread_local dim3 gridDim BARECNN_EMU_TLS = dim3(1, 1, 1);

// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores
// the stack pointer in *from_sp, and continues on to_sp (x86-64 System V).
extern "C" void barecnn_emu_switch(void** from_sp, void* to_sp);
asm(R"(
  .pushsection .text
  .globl barecnn_emu_switch
  .type barecnn_emu_switch,@function
barecnn_emu_switch:
  .cfi_startproc
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .cfi_endproc
  .size barecnn_emu_switch,.-barecnn_emu_switch
  .popsection
)");

namespace barecnn_emu {
namespace {

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "barecnn CUDA emulator: %s\n", msg.c_str());
  std::abort();
}

// ---- the schedule ------------------------------------------------------------------------------
enum class Order { kInOrder, kReverse, kShuffle };
struct Schedule {
  Order order = Order::kInOrder;
  uint64_t seed = 1;
  std::string name = "inorder";
};

const Schedule& schedule() {
  static const Schedule s = [] {
    Schedule r;
    const char* env = std::getenv("BARECNN_EMU_SCHEDULE");
    std::string v = env ? env : "";
    if (v.empty() || v == "inorder") return r;
    if (v == "reverse") {
      r.order = Order::kReverse;
      r.name = v;
      return r;
    }
    if (v.rfind("shuffle", 0) == 0) {
      r.order = Order::kShuffle;
      if (v.size() > 7) {
        char* end = nullptr;
        if (v[7] != ':' || v.size() == 8) die("BARECNN_EMU_SCHEDULE=" + v + ": expected shuffle or shuffle:<seed>");
        r.seed = std::strtoull(v.c_str() + 8, &end, 10);
        if (*end != '\0') die("BARECNN_EMU_SCHEDULE=" + v + ": the seed must be a whole number");
      }
      r.name = "shuffle:" + std::to_string(r.seed);
      return r;
    }
    die("BARECNN_EMU_SCHEDULE=" + v + ": expected inorder, reverse, shuffle or shuffle:<seed>");
  }();
  return s;
}

int worker_count() {
  static const int n = [] {
    const char* env = std::getenv("BARECNN_EMU_WORKERS");
    if (env && *env) {
      char* end = nullptr;
      long v = std::strtol(env, &end, 10);
      if (*end != '\0' || v < 1 || v > 256)
        die(std::string("BARECNN_EMU_WORKERS=") + env + ": expected a whole number from 1 to 256");
      return int(v);
    }
    // At least two, so that blocks run concurrently even on one core.
    return int(std::max(2u, std::min(4u, std::thread::hardware_concurrency())));
  }();
  return n;
}

uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// ---- fibers ------------------------------------------------------------------------------------
#if defined(BARECNN_EMU_ASAN) || defined(BARECNN_EMU_TSAN)
constexpr size_t kStackBytes = size_t(256) << 10;
#else
constexpr size_t kStackBytes = size_t(64) << 10;
#endif

struct Fiber {
  char* map = nullptr;  // guard page + stack
  size_t map_bytes = 0;
  void* sp = nullptr;
  int thread = -1;  // the CUDA thread it runs now, -1 when idle
  ~Fiber() {
    if (map) munmap(map, map_bytes);
  }
  char* stack_lo() const { return map + page(); }
  size_t stack_bytes() const { return map_bytes - page(); }
  static size_t page() { return size_t(sysconf(_SC_PAGESIZE)); }
};

enum class State { kUnstarted, kRunning, kBarrier, kShuffle, kExited };

struct CudaThread {
  State state = State::kUnstarted;
  Fiber* fiber = nullptr;
  uint3 tid{0, 0, 0};
  const char* file = "";
  int line = 0;
  uint64_t phase = 0;  // the barrier phase it parked in
  // a shuffle
  unsigned mask = 0;
  uint64_t value = 0, result = 0;
  ShuffleKind kind = ShuffleKind::kXor;
  int arg = 0, width = 32;
};

struct Block {
  const LaunchRequest* req = nullptr;
  uint3 idx{0, 0, 0};
  uint64_t linear = 0;
  int nthreads = 0;
  std::vector<CudaThread> t;
  std::vector<int> order;  // the threads in the order they start
  size_t next_unstarted = 0;
  uint64_t phase = 0;
  void* dyn_smem = nullptr;
  std::vector<const void*> static_seen;  // the static __shared__ arrays counted so far
  size_t static_bytes = 0;
  bool failed = false;
  bool config_error = false;  // a launch error (not sticky), not a fault
  cudaError_t err = cudaSuccess;
  std::string detail;
};

struct Worker {
  void* sched_sp = nullptr;
  Fiber* current = nullptr;
  Block* block = nullptr;
  std::vector<std::unique_ptr<Fiber>> fibers;
  std::vector<Fiber*> idle;
#ifdef BARECNN_EMU_ASAN
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
#endif
#ifdef BARECNN_EMU_TSAN
  void* self = nullptr;                                       // the worker's own TSan identity
  void* tsan_current = nullptr;                               // the identity in effect
  std::vector<void*> thread_fibers;                           // one identity per warp slot
  std::vector<char> warp_started;                             // per warp of the running block: has acquired block_start
  char block_start = 0, block_done = 0, barrier[2] = {0, 0};  // sync objects (their addresses)
#endif
};

thread_local Worker* tls_worker = nullptr;

Worker& worker() {
  if (!tls_worker) tls_worker = new Worker();  // lives as long as the thread (helpers never end)
  return *tls_worker;
}

void fiber_entry();

// A fresh stack whose first switch lands in fiber_entry.
void reset_fiber(Fiber* f) {
#ifdef BARECNN_EMU_ASAN
  __asan_unpoison_memory_region(f->stack_lo(), f->stack_bytes());
#endif
  uintptr_t top = (uintptr_t(f->map) + f->map_bytes) & ~uintptr_t(15);
  void** ret = reinterpret_cast<void**>(top - 16);  // 16-aligned: fiber_entry starts as if called
  ret[1] = nullptr;                                 // its return address: none
  ret[0] = reinterpret_cast<void*>(&fiber_entry);
  uint64_t* frame = reinterpret_cast<uint64_t*>(ret) - 7;  // control words, r15..r12, rbx, rbp
  for (int i = 0; i < 7; ++i) frame[i] = 0;
  uint32_t mxcsr = 0x1F80;  // default MXCSR: all exceptions masked, round to nearest
  uint16_t fpcw = 0x037F;   // default x87 control word
  std::memcpy(frame, &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(frame) + 4, &fpcw, 2);
  f->sp = frame;
  f->thread = -1;
}

Fiber* get_fiber(Worker& w) {
  if (!w.idle.empty()) {
    Fiber* f = w.idle.back();
    w.idle.pop_back();
    return f;
  }
  auto f = std::make_unique<Fiber>();
  f->map_bytes = kStackBytes + Fiber::page();
  void* m = mmap(nullptr, f->map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) die("cannot map a fiber stack");
  f->map = static_cast<char*>(m);
  mprotect(f->map, Fiber::page(), PROT_NONE);  // a stack overflow faults instead of corrupting
  reset_fiber(f.get());
  w.fibers.push_back(std::move(f));
  return w.fibers.back().get();
}

// scheduler -> fiber
void resume(Worker& w, Fiber* f) {
  w.current = f;
#ifdef BARECNN_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f->stack_lo(), f->stack_bytes());
#endif
  barecnn_emu_switch(&w.sched_sp, f->sp);
#ifdef BARECNN_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  w.current = nullptr;
}

// fiber -> scheduler
void yield_to_scheduler(Worker& w, Fiber* f) {
#ifdef BARECNN_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, w.sched_bottom, w.sched_size);
#endif
  barecnn_emu_switch(&f->sp, w.sched_sp);
#ifdef BARECNN_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, &w.sched_bottom, &w.sched_size);
#endif
}

void set_builtins(const Block& b, int t) {
  threadIdx = b.t[size_t(t)].tid;
  blockIdx = b.idx;
  blockDim = dim3(b.req->block);
  gridDim = dim3(b.req->grid);
}

#ifdef BARECNN_EMU_TSAN
// One TSan identity per warp, not per thread: TSan keeps a few hundred thread slots, and with one
// per CUDA thread (up to 1024 a block, per worker) it would keep recycling them, which is slow and
// forgets the history a race report needs. So TSan sees races between warps, the usual missing
// __syncthreads; races between the lanes of one warp are left to the schedules.
void* tsan_identity(Worker& w, int t) {
  const size_t warp = size_t(t) / 32;
  if (w.thread_fibers.size() <= warp) w.thread_fibers.resize(warp + 1, nullptr);
  if (!w.thread_fibers[warp]) {
    w.thread_fibers[warp] = __tsan_create_fiber(0);
    static const char* const kNames[] = {"CUDA warp 0", "CUDA warp 1", "CUDA warp 2", "CUDA warp 3",
                                         "CUDA warp 4", "CUDA warp 5", "CUDA warp 6", "CUDA warp 7"};
    __tsan_set_fiber_name(w.thread_fibers[warp], warp < 8 ? kNames[warp] : "CUDA warp 8+");
  }
  return w.thread_fibers[warp];
}

// Takes on the identity of thread t's warp (switching only when it changes: consecutive threads
// are mostly of one warp), which sees what happened before the block started.
void tsan_enter(Worker& w, int t) {
  void* id = tsan_identity(w, t);
  if (w.tsan_current != id) {
    __tsan_switch_to_fiber(id, __tsan_switch_to_fiber_no_sync);
    w.tsan_current = id;
  }
  const size_t warp = size_t(t) / 32;
  if (!w.warp_started[warp]) {
    __tsan_acquire(&w.block_start);
    w.warp_started[warp] = 1;
  }
}

// Back to the worker's own identity (the scheduler's).
void tsan_leave(Worker& w) {
  if (w.tsan_current != w.self) {
    __tsan_switch_to_fiber(w.self, __tsan_switch_to_fiber_no_sync);
    w.tsan_current = w.self;
  }
}

// The end of a block: everything each warp did happens before it.
void tsan_block_end(Worker& w) {
  for (size_t warp = 0; warp < w.warp_started.size(); ++warp) {
    if (!w.warp_started[warp]) continue;
    __tsan_switch_to_fiber(w.thread_fibers[warp], __tsan_switch_to_fiber_no_sync);
    __tsan_release(&w.block_done);
  }
  __tsan_switch_to_fiber(w.self, __tsan_switch_to_fiber_no_sync);
  w.tsan_current = w.self;
  __tsan_acquire(&w.block_done);
}
#endif

// Thrown out of a kernel's frames (on its fiber) when the block cannot run at all.
struct BlockAbort {};

void run_thread(Worker& w, Block& b, int t, Fiber* f) {
  CudaThread& ct = b.t[size_t(t)];
  ct.state = State::kRunning;
  ct.fiber = f;
  f->thread = t;
  set_builtins(b, t);
#ifdef BARECNN_EMU_TSAN
  tsan_enter(w, t);
#endif
  try {
    b.req->thread_body();
  } catch (const BlockAbort&) {
    // static_shared found the block cannot run: the thread ends here.
  }
  ct.state = State::kExited;
  f->thread = -1;
}

void fiber_entry() {
  Worker& w = worker();
#ifdef BARECNN_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &w.sched_bottom, &w.sched_size);
#endif
  for (;;) {
    Fiber* f = w.current;
    Block& b = *w.block;
    while (b.next_unstarted < b.order.size() && !b.failed) {
      int t = b.order[b.next_unstarted++];
      run_thread(w, b, t, f);
    }
#ifdef BARECNN_EMU_TSAN
    tsan_leave(w);
#endif
    yield_to_scheduler(w, f);  // idle; resumed for the next block
  }
}

// Parks the calling CUDA thread until the scheduler wakes it.
void park(State why, const char* file, int line) {
  Worker* wp = tls_worker;
  if (!wp || !wp->current || !wp->block || wp->current->thread < 0)
    die(std::string(why == State::kBarrier ? "__syncthreads" : "a warp shuffle") + " at " + file + ":" +
        std::to_string(line) + " called outside a kernel");
  Worker& w = *wp;
  Fiber* f = w.current;
  Block& b = *w.block;
  const int t = f->thread;
  CudaThread& ct = b.t[size_t(t)];
  ct.state = why;
  ct.file = file;
  ct.line = line;
  ct.phase = b.phase;
#ifdef BARECNN_EMU_TSAN
  if (why == State::kBarrier) __tsan_release(&w.barrier[ct.phase & 1]);
  tsan_leave(w);
#endif
  yield_to_scheduler(w, f);
#ifdef BARECNN_EMU_TSAN
  tsan_enter(w, t);
  if (why == State::kBarrier) __tsan_acquire(&w.barrier[ct.phase & 1]);
#endif
  set_builtins(b, t);
}

std::string tid_str(uint3 v) {
  return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}

std::string site(const CudaThread& ct) {
  std::string f = ct.file;
  size_t slash = f.rfind('/');
  if (slash != std::string::npos) f = f.substr(slash + 1);
  return f + ":" + std::to_string(ct.line);
}

void thread_order(Block& b, uint64_t phase, std::vector<int>& out) {
  out.resize(size_t(b.nthreads));
  for (int i = 0; i < b.nthreads; ++i) out[size_t(i)] = i;
  const Schedule& s = schedule();
  if (s.order == Order::kReverse) {
    std::reverse(out.begin(), out.end());
  } else if (s.order == Order::kShuffle) {
    std::mt19937_64 rng(mix(s.seed ^ mix(b.linear * 1000003ULL + phase)));
    std::shuffle(out.begin(), out.end(), rng);
  }
}

bool block_error(Block& b, cudaError_t err, const std::string& what) {
  b.failed = true;
  b.err = err;
  b.detail = "kernel " + std::string(b.req->name) + ", block " + tid_str(b.idx) + ": " + what;
  return false;
}

// Every thread has parked or returned: which to wake. False (and b.failed) on a misuse.
bool resolve(Block& b, std::vector<int>& woken) {
  woken.clear();
  const int n = b.nthreads;
  bool any_shuffle = false;
  int first_barrier = -1, first_exited = -1, waiting = 0;
  for (int i = 0; i < n; ++i) {
    const CudaThread& ct = b.t[size_t(i)];
    if (ct.state == State::kShuffle) any_shuffle = true;
    if (ct.state == State::kBarrier) {
      ++waiting;
      if (first_barrier < 0) first_barrier = i;
    }
    if (ct.state == State::kExited && first_exited < 0) first_exited = i;
  }
  if (any_shuffle) {
    for (int i = 0; i < n; ++i) {
      CudaThread& ct = b.t[size_t(i)];
      if (ct.state != State::kShuffle) continue;
      const int lane = i % 32, warp_base = i - lane;
      const int lanes_here = std::min(32, n - warp_base);
      // Built only for an error message: this loop runs for every lane at every shuffle.
      auto who = [&] { return "thread " + tid_str(ct.tid) + " (lane " + std::to_string(lane) + ") at " + site(ct); };
      if (!(ct.mask >> lane & 1u))
        return block_error(b, cudaErrorLaunchFailure, who() + ": the shuffle mask does not name the calling lane");
      if (ct.width < 1 || ct.width > 32 || (ct.width & (ct.width - 1)))
        return block_error(
            b, cudaErrorLaunchFailure,
            who() + ": shuffle width " + std::to_string(ct.width) + " is not a power of two from 1 to 32");
      for (int j = 0; j < 32; ++j) {
        if (!(ct.mask >> j & 1u)) continue;
        if (j >= lanes_here)
          return block_error(b, cudaErrorLaunchFailure,
                             who() + ": the shuffle mask names lane " + std::to_string(j) +
                                 ", which this block's last warp does not have");
        const CudaThread& o = b.t[size_t(warp_base + j)];
        auto other = [j] { return "lane " + std::to_string(j); };
        if (o.state == State::kExited)
          return block_error(b, cudaErrorLaunchFailure,
                             who() + ": the shuffle mask names " + other() + ", which has returned");
        if (o.state == State::kBarrier)
          return block_error(
              b, cudaErrorLaunchFailure,
              who() + ": the shuffle mask names " + other() + ", which waits at __syncthreads() at " + site(o));
        if (o.mask != ct.mask || o.file != ct.file || o.line != ct.line || o.kind != ct.kind || o.width != ct.width)
          return block_error(b, cudaErrorLaunchFailure,
                             who() + ": " + other() + " is at a different shuffle (" + site(o) + ", mask " +
                                 std::to_string(o.mask) + " vs " + std::to_string(ct.mask) + ")");
      }
    }
    for (int i = 0; i < n; ++i) {
      CudaThread& ct = b.t[size_t(i)];
      if (ct.state != State::kShuffle) continue;
      const int lane = i % 32, warp_base = i - lane;
      const int seg = lane & ~(ct.width - 1);
      int src = lane;
      switch (ct.kind) {
        case ShuffleKind::kXor:
          src = lane ^ ct.arg;
          if (src >= seg + ct.width) src = lane;
          break;
        case ShuffleKind::kDown:
          src = lane + ct.arg;
          if (src >= seg + ct.width) src = lane;
          break;
        case ShuffleKind::kUp:
          src = lane - ct.arg;
          if (src < seg) src = lane;
          break;
        case ShuffleKind::kIdx:
          src = seg + ((ct.arg % ct.width) + ct.width) % ct.width;
          break;
      }
      if (src < 0 || src >= 32 || !(ct.mask >> src & 1u))
        return block_error(b, cudaErrorLaunchFailure,
                           "thread " + tid_str(ct.tid) + " at " + site(ct) + " reads lane " + std::to_string(src) +
                               ", which the shuffle mask does not name");
      ct.result = b.t[size_t(warp_base + src)].value;
    }
    std::vector<int> order;
    thread_order(b, b.phase * 2 + 1, order);
    for (int i : order)
      if (b.t[size_t(i)].state == State::kShuffle) woken.push_back(i);
    return true;
  }
  if (waiting == 0) return true;  // all returned
  const CudaThread& w0 = b.t[size_t(first_barrier)];
  if (first_exited >= 0)
    return block_error(b, cudaErrorLaunchFailure,
                       "barrier divergence: thread " + tid_str(b.t[size_t(first_exited)].tid) + " returned while " +
                           std::to_string(waiting) + " thread(s) wait at __syncthreads() at " + site(w0) + " (thread " +
                           tid_str(w0.tid) + ")");
  for (int i = 0; i < n; ++i) {
    const CudaThread& ct = b.t[size_t(i)];
    if (ct.file != w0.file || ct.line != w0.line)
      return block_error(b, cudaErrorLaunchFailure,
                         "barrier divergence: thread " + tid_str(w0.tid) + " waits at __syncthreads() at " + site(w0) +
                             ", thread " + tid_str(ct.tid) + " at " + site(ct));
  }
  ++b.phase;
  std::vector<int> order;
  thread_order(b, b.phase * 2, order);
  woken = order;
  return true;
}

// Throws away the fibers of a block that failed: their threads never resume.
void abandon(Worker& w, Block& b) {
  for (CudaThread& ct : b.t) {
    if (ct.state == State::kBarrier || ct.state == State::kShuffle) {
      reset_fiber(ct.fiber);
      w.idle.push_back(ct.fiber);
#ifdef BARECNN_EMU_TSAN
      // Its identity has frames that will never return: start the slot afresh.
      const size_t slot = size_t(&ct - b.t.data()) / 32;             // its warp's identity
      if (slot < w.thread_fibers.size() && w.thread_fibers[slot]) {  // (tsan_block_end released it)
        __tsan_destroy_fiber(w.thread_fibers[slot]);
        w.thread_fibers[slot] = nullptr;
      }
#endif
    }
  }
}

void run_block(Worker& w, Block& b) {
  const uint3 bd = b.req->block;
  b.nthreads = int(bd.x * bd.y * bd.z);
  b.t.assign(size_t(b.nthreads), CudaThread{});
  for (int i = 0; i < b.nthreads; ++i) {
    unsigned u = unsigned(i);
    b.t[size_t(i)].tid = uint3{u % bd.x, (u / bd.x) % bd.y, u / (bd.x * bd.y)};
  }
  thread_order(b, 0, b.order);
  b.next_unstarted = 0;
  b.static_seen.clear();
  b.static_bytes = 0;
  if (b.req->dynamic_smem > 0) {
    b.dyn_smem = std::malloc(b.req->dynamic_smem);
    if (!b.dyn_smem) die("out of host memory for a block's shared memory");
    std::memset(b.dyn_smem, 0xFF, b.req->dynamic_smem);  // NaN: shared memory starts undefined
  }
  w.block = &b;
#ifdef BARECNN_EMU_TSAN
  w.warp_started.assign(size_t(b.nthreads + 31) / 32, 0);
  if (w.thread_fibers.size() < w.warp_started.size()) w.thread_fibers.resize(w.warp_started.size(), nullptr);
  __tsan_release(&w.block_start);
#endif
  std::vector<int> woken;
  for (;;) {
    while (b.next_unstarted < b.order.size() && !b.failed) {
      Fiber* f = get_fiber(w);
      resume(w, f);
      if (f->thread < 0) w.idle.push_back(f);
    }
    if (b.failed || !resolve(b, woken)) break;
    if (woken.empty()) break;  // every thread returned
    for (int t : woken) {
      Fiber* f = b.t[size_t(t)].fiber;
      resume(w, f);
      if (f->thread < 0) w.idle.push_back(f);
    }
  }
#ifdef BARECNN_EMU_TSAN
  tsan_block_end(w);
#endif
  if (b.failed) abandon(w, b);
  w.block = nullptr;
  std::free(b.dyn_smem);
  b.dyn_smem = nullptr;
}

// ---- grids on the workers ----------------------------------------------------------------------
struct GridRun {
  const LaunchRequest* req = nullptr;
  uint64_t nblocks = 0;
  uint64_t perm_a = 1, perm_c = 0;  // block i runs block (a*i + c) mod n (shuffle), reversed, or i
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  cudaError_t err = cudaSuccess;
  std::string detail;
  bool config_error = false;
  char tsan_start = 0, tsan_done = 0;
};

uint64_t block_at(const GridRun& g, uint64_t i) {
  switch (schedule().order) {
    case Order::kReverse:
      return g.nblocks - 1 - i;
    case Order::kShuffle:
      return uint64_t(((unsigned __int128)g.perm_a * i + g.perm_c) % g.nblocks);
    default:
      return i;
  }
}

void run_blocks(GridRun& g) {
  Worker& w = worker();
#ifdef BARECNN_EMU_TSAN
  if (!w.self) w.self = w.tsan_current = __tsan_get_current_fiber();
  __tsan_acquire(&g.tsan_start);
#endif
  const uint3 gd = g.req->grid;
  Block b;
  b.req = g.req;
  for (;;) {
    if (g.failed.load(std::memory_order_relaxed)) break;
    uint64_t i = g.next.fetch_add(1, std::memory_order_relaxed);
    if (i >= g.nblocks) break;
    const uint64_t lin = block_at(g, i);
    b.linear = lin;
    b.idx = uint3{unsigned(lin % gd.x), unsigned(lin / gd.x % gd.y), unsigned(lin / (uint64_t(gd.x) * gd.y))};
    b.phase = 0;
    b.failed = false;
    b.config_error = false;
    run_block(w, b);
    if (b.failed) {
      std::lock_guard<std::mutex> lock(g.mu);
      if (g.err == cudaSuccess) {
        g.err = b.err;
        g.detail = b.detail;
        g.config_error = b.config_error;
      }
      g.failed.store(true);
    }
  }
#ifdef BARECNN_EMU_TSAN
  __tsan_release(&g.tsan_done);
#endif
}

// The helper threads wait here for a grid.
struct Pool {
  std::mutex mu;
  std::condition_variable wake, done;
  GridRun* grid = nullptr;
  uint64_t generation = 0;
  int busy = 0;
  int helpers = 0;
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: the helpers outlive main's statics
  return *p;
}

void helper_main() {
  Pool& p = pool();
  uint64_t seen = 0;
  std::unique_lock<std::mutex> lock(p.mu);
  for (;;) {
    p.wake.wait(lock, [&] { return p.generation != seen; });
    seen = p.generation;
    GridRun* g = p.grid;
    if (!g) continue;  // woke after that grid had finished without it
    ++p.busy;
    lock.unlock();
    run_blocks(*g);
    lock.lock();
    if (--p.busy == 0) p.done.notify_all();
  }
}

std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

}  // namespace

cudaError_t run_grid(const LaunchRequest& req) {
  std::lock_guard<std::mutex> one_grid_at_a_time(launch_mutex());
  GridRun g;
  g.req = &req;
  g.nblocks = uint64_t(req.grid.x) * req.grid.y * req.grid.z;
  if (schedule().order == Order::kShuffle && g.nblocks > 1) {
    std::mt19937_64 rng(mix(schedule().seed ^ g.nblocks));
    g.perm_c = rng() % g.nblocks;
    do {
      g.perm_a = (rng() % g.nblocks) | 1;
    } while (std::gcd(g.perm_a, g.nblocks) != 1);
  }
#ifdef BARECNN_EMU_TSAN
  __tsan_release(&g.tsan_start);
#endif
  Pool& p = pool();
  const int helpers = g.nblocks > 1 ? worker_count() - 1 : 0;
  if (helpers > 0) {
    std::lock_guard<std::mutex> lock(p.mu);
    while (p.helpers < helpers) {
      std::thread(helper_main).detach();
      ++p.helpers;
    }
    p.grid = &g;
    ++p.generation;
    p.wake.notify_all();
  }
  run_blocks(g);
  if (helpers > 0) {
    std::unique_lock<std::mutex> lock(p.mu);
    // Every helper woken for this generation must have finished with g before it goes away.
    p.done.wait(lock, [&] { return p.busy == 0; });
    // A helper that has not woken yet must not touch g once this returns.
    p.grid = nullptr;
  }
#ifdef BARECNN_EMU_TSAN
  __tsan_acquire(&g.tsan_done);
#endif
  if (g.err != cudaSuccess) return g.config_error ? fail(g.err, g.detail) : fault(g.err, g.detail);
  return cudaSuccess;
}

const char* schedule_name() { return schedule().name.c_str(); }

void syncthreads(const char* file, int line) { park(State::kBarrier, file, line); }

uint64_t shuffle(unsigned mask, uint64_t value, ShuffleKind kind, int arg, int width, const char* file, int line) {
  Worker* w = tls_worker;
  if (w && w->current && w->block && w->current->thread >= 0) {
    CudaThread& ct = w->block->t[size_t(w->current->thread)];
    ct.mask = mask;
    ct.value = value;
    ct.kind = kind;
    ct.arg = arg;
    ct.width = width;
  }
  park(State::kShuffle, file, line);
  return w->block->t[size_t(w->current->thread)].result;
}

void static_shared(const void* array, size_t bytes) {
  Worker* w = tls_worker;
  if (!w || !w->block) die("a static __shared__ array used outside a kernel");
  Block& b = *w->block;
  if (b.failed) throw BlockAbort{};
  for (const void* p : b.static_seen)
    if (p == array) return;
  b.static_seen.push_back(array);
  b.static_bytes += bytes;
  // Shared memory starts undefined: NaN for this block, not what the previous block on this worker
  // left. Byte by byte through a volatile pointer, not memset: under TSan an intercepted memset
  // would count as a write by this thread's warp, and the other warps' first writes as races.
  volatile unsigned char* p = static_cast<volatile unsigned char*>(const_cast<void*>(array));
  for (size_t i = 0; i < bytes; ++i) p[i] = 0xFF;
  if (b.static_bytes + b.req->dynamic_smem > b.req->smem_limit) {
    block_error(b, cudaErrorInvalidValue,
                std::to_string(b.static_bytes) + " bytes of static and " + std::to_string(b.req->dynamic_smem) +
                    " bytes of dynamic shared memory; " + std::to_string(b.req->smem_limit) + " allowed" +
                    (b.req->smem_limit < kMaxSmemPerBlockOptin
                         ? " (more needs cudaFuncSetAttribute(MaxDynamicSharedMemorySize), up to 227 KiB)"
                         : ""));
    b.config_error = true;
    throw BlockAbort{};
  }
}

void* dynamic_shared() {
  Worker* w = tls_worker;
  if (!w || !w->block) die("dynamic shared memory used outside a kernel");
  return w->block->dyn_smem;
}

}  // namespace barecnn_emu
