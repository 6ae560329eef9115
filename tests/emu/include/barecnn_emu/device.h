// The device side of the emulator: __syncthreads, the warp shuffles, dynamic shared memory and the
// launch helper behind BARECNN_LAUNCH (kernels/launch.cuh). Included by cuda_runtime.h.
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace barecnn_emu {

// Block-wide barrier. Hands control to the block's scheduler until every thread of the block has
// reached this same barrier (file:line names it in a divergence error).
void syncthreads(const char* file, int line);

enum class ShuffleKind : int { kXor = 0, kDown = 1, kUp = 2, kIdx = 3 };
// One warp shuffle: this lane offers `value` (its bits) and receives the bits offered by the lane
// that `kind`/`arg`/`width` select. Every lane named in `mask` must take part, at the same site.
uint64_t shuffle(unsigned mask, uint64_t value, ShuffleKind kind, int arg, int width, const char* file, int line);

template <typename T>
T shuffle_as(unsigned mask, T v, ShuffleKind kind, int arg, int width, const char* file, int line) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = shuffle(mask, bits, kind, arg, width, file, line);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// The dynamic shared memory of the running block: exactly the bytes the launch asked for (a heap
// block, so AddressSanitizer catches an overrun), filled with a NaN pattern at block start.
void* dynamic_shared();
// A static __shared__ array of the running kernel (BARECNN_STATIC_SHARED): counted and filled with
// a NaN pattern once per block (by the first thread to reach its declaration), and the block fails
// (cudaErrorInvalidValue, as the launch would) when static plus dynamic shared memory exceed the
// limit for the kernel.
void static_shared(const void* array, size_t bytes);

// ---- launches ----------------------------------------------------------------------------------
struct PointerArg {
  int index;        // 0-based position in the kernel's parameter list
  const void* ptr;  // as passed
};

struct LaunchRequest {
  const char* name = "";       // the kernel's name as written at the launch site
  const void* func = nullptr;  // its address (cudaFuncSetAttribute)
  uint3 grid{1, 1, 1}, block{1, 1, 1};
  size_t dynamic_smem = 0;
  size_t smem_limit = 0;  // static + dynamic shared memory allowed (set by the launch checks)
  cudaStream_t stream = nullptr;
  std::vector<PointerArg> pointers;
  // Runs one CUDA thread (the built-in index variables already set). Holds the arguments as they
  // were at the launch: a captured launch replays with these.
  std::function<void()> thread_body;
};

// Checks the configuration (errors through cudaGetLastError, as the runtime reports them), then
// runs the grid in stream order, or records it when the stream is being captured.
void submit_launch(LaunchRequest req);

template <typename T>
void note_pointer(std::vector<PointerArg>& out, int index, const T& v) {
  if constexpr (std::is_pointer<T>::value) out.push_back(PointerArg{index, static_cast<const void*>(v)});
}

template <typename... P, typename... A>
void launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
            A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "launch: wrong number of kernel arguments");
  // The arguments converted to the parameter types once, here, as the runtime copies them into
  // the launch's parameter buffer.
  auto frozen = std::make_shared<std::tuple<std::decay_t<P>...>>(std::forward<A>(args)...);
  LaunchRequest req;
  req.name = name;
  req.func = reinterpret_cast<const void*>(kernel);
  req.grid = grid;
  req.block = block;
  req.dynamic_smem = smem;
  req.stream = stream;
  std::apply(
      [&req](const auto&... a) {
        int i = 0;
        (note_pointer(req.pointers, i++, a), ...);
      },
      *frozen);
  req.thread_body = [kernel, frozen]() { std::apply(kernel, *frozen); };
  submit_launch(std::move(req));
}

// The shuffles take the call site along (a mismatch error names it); the width defaults to 32.
struct ShuffleSite {
  const char* file;
  int line;
  template <typename T>
  T xor_(unsigned mask, T v, int lane_mask, int width = 32) const {
    return shuffle_as(mask, v, ShuffleKind::kXor, lane_mask, width, file, line);
  }
  template <typename T>
  T down(unsigned mask, T v, unsigned delta, int width = 32) const {
    return shuffle_as(mask, v, ShuffleKind::kDown, int(delta), width, file, line);
  }
  template <typename T>
  T up(unsigned mask, T v, unsigned delta, int width = 32) const {
    return shuffle_as(mask, v, ShuffleKind::kUp, int(delta), width, file, line);
  }
  template <typename T>
  T idx(unsigned mask, T v, int src_lane, int width = 32) const {
    return shuffle_as(mask, v, ShuffleKind::kIdx, src_lane, width, file, line);
  }
};

}  // namespace barecnn_emu

#define __syncthreads() ::barecnn_emu::syncthreads(__FILE__, __LINE__)
#define __shfl_xor_sync(...) ::barecnn_emu::ShuffleSite{__FILE__, __LINE__}.xor_(__VA_ARGS__)
#define __shfl_down_sync(...) ::barecnn_emu::ShuffleSite{__FILE__, __LINE__}.down(__VA_ARGS__)
#define __shfl_up_sync(...) ::barecnn_emu::ShuffleSite{__FILE__, __LINE__}.up(__VA_ARGS__)
#define __shfl_sync(...) ::barecnn_emu::ShuffleSite{__FILE__, __LINE__}.idx(__VA_ARGS__)
