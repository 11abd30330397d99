// faults.cpp — kernels with one deliberate fault each: the emulated device's negative controls.
// tests/test_cuda_emu.py checks that each fault the emulator itself catches fails its launch, and
// .ci/sanitize that AddressSanitizer and ThreadSanitizer report the ones they are there for
// (an out-of-bounds shared or global access, a missing __syncthreads).
#include <memory>
#include <stdexcept>
#include <string>

#include "cuda/common.cuh"

namespace cuda_emu {
namespace {

constexpr int kBS = 64;

// Each thread writes its slot and reads its neighbour's: correct only with the barrier.
__global__ void neighbour_kernel(float* out, bool barrier) {
  LENET5_SHARED(float, s, [kBS]);
  s[threadIdx.x] = float(threadIdx.x);
  if (barrier) __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % kBS];
}
// Thread kBS-1 writes one past the end of the shared array (through a pointer, as the kernels
// index their tiles, so that only AddressSanitizer can see it).
__global__ void shared_oob_kernel(float* out) {
  LENET5_SHARED(float, s, [kBS]);
  float* p = s;
  p[threadIdx.x + 1] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}
// Thread kBS-1 reads one past the end of `in` (kBS floats).
__global__ void global_oob_kernel(const float* in, float* out) { out[threadIdx.x] = in[threadIdx.x + 1]; }
// Half the block waits at a barrier the other half never reaches.
__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < kBS / 2) __syncthreads();
  out[threadIdx.x] = 0.0f;
}
// Odd and even threads wait at two different barriers.
__global__ void two_barriers_kernel(float* out) {
  if (threadIdx.x & 1)
    __syncthreads();
  else
    __syncthreads();
  out[threadIdx.x] = 0.0f;
}
// A full-mask shuffle: wrong in a block whose size is not a multiple of 32, or with half a mask.
__global__ void shuffle_kernel(float* out, unsigned mask) {
  out[threadIdx.x] = __shfl_down_sync(mask, float(threadIdx.x), 1);
}
// 2 x 32 KiB of static shared memory: more than the 48 KiB a block may have.
__global__ void big_shared_kernel(float* out) {
  LENET5_SHARED(float, a, [8192]);
  LENET5_SHARED(float, b, [8192]);
  a[threadIdx.x] = b[threadIdx.x] = 0.0f;
  out[threadIdx.x] = a[threadIdx.x] + b[threadIdx.x];
}
__global__ void nothing_kernel(float*) {}

}  // namespace

void run_fault(const std::string& name) {
  std::unique_ptr<float[]> in(new float[kBS]()), out(new float[kBS]());
  float* o = out.get();
  cudaStream_t st = nullptr;
  if (name == "missing_barrier") {
    LENET5_LAUNCH(1, kBS, 0, st, neighbour_kernel)(o, false);
  } else if (name == "with_barrier") {
    LENET5_LAUNCH(1, kBS, 0, st, neighbour_kernel)(o, true);
    for (int t = 0; t < kBS; ++t)
      if (o[t] != float((t + 1) % kBS)) throw std::logic_error("neighbour_kernel computed a wrong value");
  } else if (name == "shared_oob") {
    LENET5_LAUNCH(1, kBS, 0, st, shared_oob_kernel)(o);
  } else if (name == "global_oob") {
    LENET5_LAUNCH(1, kBS, 0, st, global_oob_kernel)(in.get(), o);
  } else if (name == "divergent_barrier") {
    LENET5_LAUNCH(1, kBS, 0, st, divergent_barrier_kernel)(o);
  } else if (name == "two_barriers") {
    LENET5_LAUNCH(1, kBS, 0, st, two_barriers_kernel)(o);
  } else if (name == "partial_warp_shuffle") {
    LENET5_LAUNCH(1, 48, 0, st, shuffle_kernel)(o, 0xffffffffu);
  } else if (name == "partial_mask_shuffle") {
    LENET5_LAUNCH(1, kBS, 0, st, shuffle_kernel)(o, 0x0000ffffu);
  } else if (name == "big_shared") {
    LENET5_LAUNCH(1, kBS, 0, st, big_shared_kernel)(o);
  } else if (name == "block_too_big") {
    LENET5_LAUNCH(1, 1025, 0, st, nothing_kernel)(o);
  } else if (name == "grid_y_too_big") {
    LENET5_LAUNCH(dim3(1, 65536), kBS, 0, st, nothing_kernel)(o);
  } else if (name == "grid_z_too_big") {
    LENET5_LAUNCH(dim3(1, 1, 65536), kBS, 0, st, nothing_kernel)(o);
  } else if (name == "block_z_too_big") {
    LENET5_LAUNCH(1, dim3(1, 1, 65), 0, st, nothing_kernel)(o);
  } else {
    throw std::invalid_argument("no fault named " + name);
  }
  LENET5_CHECK_LAUNCH(name.c_str());
}

}  // namespace cuda_emu
