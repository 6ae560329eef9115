// CUDA side of the data pipeline: the batch gather + normalize kernel (the first op of every
// training step, reading the uint8 dataset resident on the GPU), its augmenting variant, and the
// epoch's shuffled order. CPU references: host/reference/data.cpp (gather_normalize,
// gather_normalize_augment) and host/core/rng.cpp (ref::epoch_permutation). Thrust is used in this
// file only.
#include <thrust/execution_policy.h>
#ifdef BARECNN_EMU
#include <thrust/system/cpp/execution_policy.h>
#endif
#include <thrust/sequence.h>
#include <thrust/sort.h>
#include <thrust/system_error.h>

#include <cstdint>

#include "barecnn/augment.h"
#include "barecnn/cuda_check.h"
#include "barecnn/device_buffer.h"
#include "barecnn/gpu_ops.h"
#include "barecnn/rng.h"
#include "launch.cuh"

namespace barecnn {

namespace {

constexpr int kGatherBlock = 256;
constexpr int kKeyBlock = 256;

// Block 256, grid-stride loop over the B*P output pixels of out (B, P), row-major: thread j
// computes out[b, p] = (images[idx[b], p] / 255 - mean) / std with b = j / P, p = j % P, in the
// reference's float operations and order (IEEE division: nvcc's default -prec-div=true), so the
// result is bitwise the reference's. The thread with p == 0 also writes out_labels[b] (when
// out_labels is non-null). images (num_images, P) and labels (num_images) are uint8;
// idx (B) must hold valid row numbers (the reference checks idx[b] >= 0; a kernel cannot throw).
// Consecutive threads read consecutive bytes of one image row and write consecutive floats.
// With `batch` non-null (the training step's counters), idx is advanced by *batch * B first.
__global__ void gather_normalize_kernel(float* out, int32_t* out_labels, const uint8_t* images, const uint8_t* labels,
                                        const int32_t* idx, const long long* batch, int B, int P, float mean,
                                        float std) {
  if (batch) idx += *batch * B;
  const long long total = (long long)B * P;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < total; j += stride) {
    const int b = int(j / P);
    const int p = int(j % P);
    const long long row = idx[b];
    out[j] = (float(images[row * P + p]) / 255.f - mean) / std;
    if (out_labels && p == 0) out_labels[b] = labels[row];
  }
}

// The training step's gather with augmentation (augment.h), the twin of ref::gather_normalize_augment.
// Block 256, grid-stride loop over the B*H*W output pixels as gather_normalize_kernel: thread j
// computes pixel (y, x) of sample b from source pixel augment_source(y, x, H, W, d_b) of row
// idx[b] (or a raw 0 in the padding) with the same float operations. d_b is the transform of
// sample b, augment_draw(step_draw(seed, step, kDrawAugment, b), aug), with seed and step read from
// the counters in device memory (a captured graph's replays draw each step's own). Every thread
// recomputes its sample's draw (four splitmix rounds, integer only) rather than sharing it: no
// shared memory, no barrier, and the gather stays a memory-bound pass.
__global__ void gather_augment_kernel(float* out, int32_t* out_labels, const uint8_t* images, const uint8_t* labels,
                                      const int32_t* perm, const gpu::StepCounters* c, int B, int H, int W, Augment aug,
                                      float mean, float std) {
  const int32_t* idx = perm + c->batch * B;
  const uint64_t seed = c->seed;
  const long long step = c->global_step;
  const int P = H * W;
  const long long total = (long long)B * P;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < total; j += stride) {
    const int b = int(j / P);
    const int p = int(j % P);
    const long long row = idx[b];
    const AugmentDraw d = augment_draw(step_draw(seed, step, kDrawAugment, uint64_t(b)), aug);
    const int src = augment_source(p / W, p % W, H, W, d);
    const uint8_t px = src < 0 ? uint8_t(0) : images[row * P + src];
    out[j] = (float(px) / 255.f - mean) / std;
    if (out_labels && p == 0) out_labels[b] = labels[row];
  }
}

// Block 256, grid-stride loop: keys[i] (n) = permutation_key(seed, epoch, i), the same hash the
// CPU reference evaluates (include/barecnn/rng.h, shared __host__ __device__ code).
__global__ void permutation_keys_kernel(uint64_t* keys, int n, uint64_t seed, long long epoch) {
  const long long stride = (long long)gridDim.x * blockDim.x;  // 64-bit: i + stride must not overflow
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    keys[i] = permutation_key(seed, epoch, int(i));
}

}  // namespace

namespace gpu {

namespace {

void launch_gather_normalize(float* out, int32_t* out_labels, const uint8_t* images, const uint8_t* labels,
                             const int32_t* idx, const long long* batch, int B, int P, float mean, float std,
                             cudaStream_t stream) {
  BARECNN_ASSERT(B >= 0 && P >= 0, "gather_normalize: B = ", B, ", P = ", P);
  BARECNN_ASSERT(std != 0.f, "gather_normalize: std must be nonzero");
  BARECNN_ASSERT(out_labels == nullptr || labels != nullptr, "gather_normalize: labels wanted but none given");
  if (B == 0) return;
  // Labels are written by the thread of pixel 0 of each sample, so an image needs a pixel.
  BARECNN_ASSERT(P >= 1, "gather_normalize: images of ", P, " pixels");
  BARECNN_ASSERT(out != nullptr && images != nullptr && idx != nullptr, "gather_normalize: null pointer");
  const long long total = (long long)B * P;
  BARECNN_LAUNCH(gather_normalize_kernel, grid_for(total, kGatherBlock), kGatherBlock, 0, stream, out, out_labels,
                 images, labels, idx, batch, B, P, mean, std);
  CUDA_CHECK_LAUNCH("gather_normalize", fmt("B=", B, " P=", P));
}

}  // namespace

// out (B, P) = (images[idx[b]] / 255 - mean) / std; out_labels (B) = labels[idx[b]], or null
void gather_normalize(float* out, int32_t* out_labels, const uint8_t* images, const uint8_t* labels, const int32_t* idx,
                      int B, int P, float mean, float std, cudaStream_t stream) {
  NvtxRange range("gather_normalize");
  launch_gather_normalize(out, out_labels, images, labels, idx, nullptr, B, P, mean, std, stream);
}

// The same with idx = perm + c->batch * B, read on the device (the caller keeps the batch in range);
// images (num_images, H, W). Augmentation off: exactly the plain gather's kernel.
void gather_normalize_batch(float* out, int32_t* out_labels, const uint8_t* images, const uint8_t* labels,
                            const int32_t* perm, const StepCounters* c, int B, int H, int W, const Augment& aug,
                            float mean, float std, cudaStream_t stream) {
  NvtxRange range("gather_normalize");
  BARECNN_ASSERT(c != nullptr, "gather_normalize_batch: no step counters");
  BARECNN_ASSERT(H >= 1 && W >= 1, "gather_normalize_batch: images of ", H, "x", W);
  if (!aug.on())
    return launch_gather_normalize(out, out_labels, images, labels, perm, &c->batch, B, H * W, mean, std, stream);
  BARECNN_ASSERT(B >= 0 && aug.pad >= 0, "gather_normalize_batch: B = ", B, ", pad = ", aug.pad);
  BARECNN_ASSERT(std != 0.f, "gather_normalize_batch: std must be nonzero");
  BARECNN_ASSERT(out_labels == nullptr || labels != nullptr, "gather_normalize_batch: labels wanted but none given");
  if (B == 0) return;
  BARECNN_ASSERT(out != nullptr && images != nullptr && perm != nullptr, "gather_normalize_batch: null pointer");
  const long long total = (long long)B * H * W;
  BARECNN_LAUNCH(gather_augment_kernel, grid_for(total, kGatherBlock), kGatherBlock, 0, stream, out, out_labels, images,
                 labels, perm, c, B, H, W, aug, mean, std);
  CUDA_CHECK_LAUNCH("gather_normalize_batch (augment)", fmt("B=", B, " H=", H, " W=", W, " pad=", aug.pad));
}

// idx (n) = the permutation of 0..n-1 that sorts the samples by (permutation_key(seed, epoch, i), i)
void epoch_permutation(int32_t* idx, int n, uint64_t seed, long long epoch, cudaStream_t stream) {
  NvtxRange range("epoch_permutation");
  BARECNN_ASSERT(n >= 0, "epoch_permutation: n = ", n);
  if (n == 0) return;
  BARECNN_ASSERT(idx != nullptr, "epoch_permutation: idx is null");
  DeviceBuffer<uint64_t> keys(size_t(n), "epoch permutation keys");  // (n)
  BARECNN_LAUNCH(permutation_keys_kernel, grid_for(n, kKeyBlock), kKeyBlock, 0, stream, keys.data(), n, seed, epoch);
  CUDA_CHECK_LAUNCH("epoch_permutation (keys)", fmt("n=", n));
  try {
    // idx = 0..n-1, then a stable sort by key: equal keys keep ascending i, which is exactly the
    // reference's (key, i) order. Thrust's sort returns only once `stream` has finished it, so
    // `keys` may be freed when this function returns. Runs once per epoch, outside the captured
    // training step (it allocates).
#ifdef BARECNN_EMU
    // The emulator's device memory is host memory: Thrust's own CPU (cpp) backend sorts it, in
    // order, which is what stream order asks for (the emulator runs every stream synchronously).
    auto policy = thrust::cpp::par;
#else
    auto policy = thrust::cuda::par.on(stream);
#endif
    thrust::sequence(policy, idx, idx + n, int32_t(0));
    thrust::stable_sort_by_key(policy, keys.data(), keys.data() + n, idx);
  } catch (const thrust::system_error& e) {
    throw Error(fmt("epoch_permutation: Thrust failed for n=", n, ": ", e.what()));
  } catch (const std::bad_alloc&) {
    // Thrust's temporary storage comes from the GPU: this is device memory, not host memory.
    throw Error(fmt("out of GPU memory in epoch_permutation (Thrust sort of ", n, " keys); lower --batch"));
  }
}

}  // namespace gpu
}  // namespace barecnn
