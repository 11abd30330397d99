// common.cuh — device helpers shared by the lenet5_fast CUDA kernels.
//
// Layout: every tensor is dense row-major (NCHW), as in lenet5.h; indices into whole tensors are
// int64_t, indices inside one 5x5 kernel or one thread's tile are int.
// Trick: the activation is fused everywhere. Forward applies it in the epilogue; backward rebuilds
// ga = gy * f'(a) from y on the fly (grad_pre), so no pre-activation and no ga buffer is ever
// stored. Weight gradients are reduced deterministically: each block sums a fixed set of work
// items in a fixed per-thread order and then reduces across the block in a fixed tree
// (block_reduce); when the batch is cut into chunks (see plan_chunks) the chunk partials are
// summed in chunk order by sum_chunks. No atomics, no allocation, no host synchronisation.
#pragma once
#if defined(LENET5_CUDA_EMU)
#include "cuda_emu/cuda_emu.h"  // the emulated device (tests): its own LENET5_LAUNCH, LENET5_SHARED
#else
#include <cuda_runtime.h>
// kernel<<<grid, block, smem, stream>>>(args), written LENET5_LAUNCH(grid, block, smem, stream,
// kernel)(args) so that the emulated device (cuda_emu/cuda_emu.h) can run the same launch.
#define LENET5_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
// A block's shared array: LENET5_SHARED(float, tile, [16][68]) is
// `__shared__ __align__(16) float tile[16][68]`.
#define LENET5_SHARED(type, name, dims) __shared__ __align__(16) type name dims
#endif

#include <cstdint>
#include <stdexcept>
#include <string>

#include "lenet5.h"

// Grid-stride loops cover whatever the grid does not; this caps the number of blocks per launch.
#ifndef LENET5_CUDA_MAX_BLOCKS
#define LENET5_CUDA_MAX_BLOCKS (1 << 20)
#endif
// Batch chunking of weight gradients (see plan_chunks); overridable so tests reach every path.
#ifndef LENET5_CUDA_TARGET_BLOCKS
#define LENET5_CUDA_TARGET_BLOCKS 1024
#endif
#ifndef LENET5_CUDA_MIN_CHUNK_ITEMS
#define LENET5_CUDA_MIN_CHUNK_ITEMS 16384
#endif

namespace lenet5 {
namespace cuda {
namespace detail {

inline cudaStream_t as_stream(Stream s) { return static_cast<cudaStream_t>(s); }

// Throws (the bindings turn it into a Python exception) if the last launch failed.
inline void check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("lenet5_fast CUDA kernel ") + what + " failed: " +
                             cudaGetErrorString(e));
}
#define LENET5_CHECK_LAUNCH(what) ::lenet5::cuda::detail::check_launch(what)

// Zeroes n values at p on the stream (never the default stream: graph-capture safe).
template <class T> inline void zero_async(T* p, int64_t n, cudaStream_t st, const char* what) {
  if (n <= 0) return;
  const cudaError_t e = cudaMemsetAsync(p, 0, sizeof(T) * static_cast<size_t>(n), st);
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("lenet5_fast CUDA memset in ") + what + " failed: " +
                             cudaGetErrorString(e));
}

// ---- small integer helpers (host and device) ----
__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Blocks for `items` work items at `per_block` items per block, at least 1, at most `cap`
// (grid-stride loops do the rest).
inline unsigned grid_blocks(int64_t items, int64_t per_block, int64_t cap = LENET5_CUDA_MAX_BLOCKS) {
  return static_cast<unsigned>(max64(1, min64(ceil_div(items, per_block), cap)));
}
constexpr int64_t kMaxGridY = 65535;  // grid.y and grid.z limit

// ---- activations: the formulas of activations.h, shared with the CPU kernels ----
// ga = gy * f'(a) (gauss_newton: gy * f'(a)^2) at flat index i; y is not read for identity.
template <class T>
__device__ __forceinline__ T grad_pre(const T* __restrict__ gy, const T* __restrict__ y, int64_t i,
                                      int act, bool gn) {
  const T g = __ldg(gy + i);
  if (act == kIdentity) return g;
  return act::backward(g, __ldg(y + i), act, gn);
}
template <class T> __device__ __forceinline__ T sq_if(T v, bool gn) { return gn ? v * v : v; }

// ---- deterministic block reduction ----
// Sums v[0..NV) over the block (blockDim.x == BS, a multiple of 32): warp shuffles, then the
// warp partials in warp order. red: __shared__ T[(BS/32) * NV]. Returns, in thread t < NV, the
// total of value t (other threads get 0). Ends with a __syncthreads, so red can be reused.
template <int NV, int BS, class T>
__device__ __forceinline__ T block_reduce(T (&v)[NV], T* red) {
  static_assert(BS % 32 == 0, "block size must be a multiple of 32");
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    T s = v[i];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) red[warp * NV + i] = s;
  }
  __syncthreads();
  T total = T(0);
  if (threadIdx.x < NV) {
#pragma unroll
    for (int w = 0; w < BS / 32; ++w) total += red[w * NV + threadIdx.x];
  }
  __syncthreads();
  return total;
}

// ---- batch chunking for weight gradients ----
// A weight-gradient kernel gets `blocks` blocks per chunk of the batch. With one chunk the blocks
// write the gradient directly; with more, each chunk writes partials into caller-provided scratch
// (`scratch_elems` available, `per_chunk` needed per chunk) and sum_chunks adds them in order.
// The plan depends only on the problem size (never on the GPU), so results are reproducible.
struct ChunkPlan {
  int64_t chunks = 1;  // number of batch chunks (grid.y or grid.z)
  int64_t per = 0;     // images per chunk (the last one may have fewer)
};
constexpr int64_t kTargetBlocks = LENET5_CUDA_TARGET_BLOCKS;        // fills any current GPU a few times
constexpr int64_t kMinItemsPerChunk = LENET5_CUDA_MIN_CHUNK_ITEMS;  // least work per block and chunk
inline ChunkPlan plan_chunks(int64_t N, int64_t blocks, int64_t items_per_image, int64_t scratch_elems,
                             int64_t per_chunk) {
  ChunkPlan p;
  p.per = max64(N, 1);
  if (N < 2 || scratch_elems <= 0 || per_chunk <= 0) return p;
  int64_t want = ceil_div(kTargetBlocks, max64(1, blocks));
  want = min64(want, (N * max64(1, items_per_image)) / kMinItemsPerChunk);
  want = min64(want, N);
  want = min64(want, scratch_elems / per_chunk);
  want = min64(want, kMaxGridY);
  if (want < 2) return p;
  p.per = ceil_div(N, want);
  p.chunks = ceil_div(N, p.per);
  return p;
}

// out[i] = sum over c in [0, chunks) of part[c * stride + i], in chunk order.
template <class T>
__global__ void sum_chunks_kernel(const T* __restrict__ part, int64_t chunks, int64_t stride,
                                  T* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    T s = part[i];
    for (int64_t c = 1; c < chunks; ++c) s += part[c * stride + i];
    out[i] = s;
  }
}
template <class T>
inline void sum_chunks(const T* part, int64_t chunks, int64_t stride, T* out, int64_t n, cudaStream_t st) {
  if (n <= 0) return;
  LENET5_LAUNCH(grid_blocks(n, 256), 256, 0, st, sum_chunks_kernel<T>)(part, chunks, stride, out, n);
  LENET5_CHECK_LAUNCH("sum_chunks");
}

}  // namespace detail
}  // namespace cuda
}  // namespace lenet5
