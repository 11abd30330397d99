// cuda_emu.h — an emulated CUDA device for tests: what csrc/cuda/*.cu use, for the host C++
// compiler, so the same kernels run on the CPU under the CUDA execution model. common.cuh
// includes this instead of <cuda_runtime.h> when LENET5_CUDA_EMU is defined (CMake's
// LENET5_CUDA_EMU=ON builds the test module lenet5_fast._C_cuda_emu from it); nvcc never sees it.
//
// What is emulated, and how (the runtime is cuda_emu.cpp):
//  * A launch runs the grid's blocks one after another, in a random order. The threads of a
//    block are fibers (each its own stack) on the calling thread: a thread runs until it reaches
//    __syncthreads, a warp shuffle or its end, then another runs; at every such point the next
//    thread is picked at random, so a result that depends on the order of threads or blocks
//    changes from run to run. Under ThreadSanitizer every thread is a TSan fiber and only
//    __syncthreads (and the launch itself) orders one thread's accesses before another's, as on
//    the GPU: TSan reports every pair of accesses of a block that no barrier orders (racecheck).
//    Blocks are ordered one after another, so races between blocks are not seen.
//  * __syncthreads: a barrier over the block. All threads must reach the same one (same source
//    line); a thread that returned, or waits elsewhere, fails the launch (divergent barrier).
//  * __shfl_down_sync / __shfl_xor_sync: a rendezvous of the 32 lanes of a warp, which must all
//    reach the same shuffle with the full mask 0xffffffff (all lanes of a block whose size is a
//    multiple of 32); anything else fails the launch. Shuffles order no memory, as on the GPU.
//  * Shared memory: LENET5_SHARED (common.cuh) declares it; each block gets it fresh, filled with
//    0xff bytes (NaN, -1), every array fenced by poisoned bytes, so AddressSanitizer reports an
//    out-of-bounds shared access (memcheck); more than 48 KiB of static shared memory per block
//    fails the launch. Plain `__shared__` is a compile error here.
//  * atomicOr: a relaxed atomic. __ldg: a plain load. Global memory is the CPU memory passed in.
//  * Launch limits, as the hardware checks them: 1..1024 threads per block (x, y <= 1024,
//    z <= 64), grid.x <= 2^31-1, grid.y and grid.z <= 65535, at least 1 each; otherwise the launch
//    fails with cudaErrorInvalidConfiguration. A failed launch (bad configuration, divergent
//    barrier or shuffle) is reported by cudaGetLastError, as on the GPU, and
//    cudaGetErrorString says what the emulator saw.
//  * Streams: every launch and cudaMemsetAsync runs synchronously on the calling thread.
// Not emulated: the GPU's memory model and warp scheduling (lanes of a warp do not run in lock
// step), speed, and anything nvcc's own code generation does (FMA contraction, miscompiles).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---- CUDA's keywords: plain C++ functions ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static_assert(false, "emulated CUDA: declare shared memory with LENET5_SHARED");

// ---- runtime types and calls ----
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
struct CUstream_st;
using cudaStream_t = CUstream_st*;
cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream);

namespace cuda_emu {

// The running emulated thread's coordinates (set by the scheduler before it resumes a thread).
struct Coords {
  uint3 thread, block;
  dim3 block_dim, grid_dim;
};
extern thread_local const Coords* here;

// Rendezvous and per-block state; `where` is the call's "file:line".
void syncthreads(const char* where);
enum class Shfl : int { kDown, kXor };
uint64_t shuffle(unsigned mask, uint64_t bits, Shfl kind, unsigned arg, const char* where);
void* shared(size_t bytes, const char* where);

// Runs body(args) as every thread of every block of the grid (what a launch does).
void launch(const char* kernel, dim3 grid, dim3 block, size_t dynamic_smem, void (*body)(void*), void* args);

// For the test module: the launches recorded since the last call; records the next ones when on.
struct LaunchRecord {
  std::string kernel;  // the launch site's kernel expression
  dim3 grid, block;
};
std::vector<LaunchRecord> record_launches(bool on);

template <class T> T shfl(unsigned mask, T v, Shfl kind, unsigned arg, const char* where) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffle of a value over 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = shuffle(mask, bits, kind, arg, where);
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

// kernel<<<grid, block, smem, stream>>>(args...): the arguments are converted to the kernel's
// parameter types once, as a launch does, and every thread gets its own copy.
template <class... P> struct Launcher {
  const char* kernel;
  dim3 grid, block;
  size_t smem;
  void (*fn)(P...);
  template <class... A> void operator()(A&&... a) const {
    struct Call {
      void (*fn)(P...);
      std::tuple<P...> args;
    } call{fn, std::tuple<P...>(std::forward<A>(a)...)};
    launch(
        kernel, grid, block, smem,
        [](void* c) { std::apply(static_cast<Call*>(c)->fn, static_cast<Call*>(c)->args); }, &call);
  }
};
template <class... P>
Launcher<P...> launcher(const char* kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t, void (*fn)(P...)) {
  return {kernel, grid, block, smem, fn};
}

}  // namespace cuda_emu

#define LENET5_EMU_STR2(x) #x
#define LENET5_EMU_STR(x) LENET5_EMU_STR2(x)
#define LENET5_EMU_WHERE __FILE__ ":" LENET5_EMU_STR(__LINE__)

#define threadIdx (::cuda_emu::here->thread)
#define blockIdx (::cuda_emu::here->block)
#define blockDim (::cuda_emu::here->block_dim)
#define gridDim (::cuda_emu::here->grid_dim)
#define __syncthreads() ::cuda_emu::syncthreads(LENET5_EMU_WHERE)
#define __shfl_down_sync(mask, v, delta) \
  ::cuda_emu::shfl(mask, v, ::cuda_emu::Shfl::kDown, delta, LENET5_EMU_WHERE)
#define __shfl_xor_sync(mask, v, lane_mask) \
  ::cuda_emu::shfl(mask, v, ::cuda_emu::Shfl::kXor, lane_mask, LENET5_EMU_WHERE)
template <class T> inline T __ldg(const T* p) { return *p; }
inline int atomicOr(int* p, int v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }

// What common.cuh spells with <<<...>>> and __shared__ under nvcc.
#define LENET5_LAUNCH(grid, block, smem, stream, ...) \
  ::cuda_emu::launcher(#__VA_ARGS__, grid, block, smem, stream, __VA_ARGS__)
#define LENET5_SHARED(type, name, dims) \
  auto& name = *static_cast<type(*) dims>(::cuda_emu::shared(sizeof(type dims), LENET5_EMU_WHERE))
