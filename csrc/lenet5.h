// lenet5.h — the native API of lenet5_fast: every layer's forward and backward, CPU and CUDA.
// (The network's sizes and parameter layout: network.h; the two fused CPU engines that run the
// whole network in one call: engine/engine.h.)
//
// Conventions shared by every kernel:
//  * Tensors are dense, contiguous, row-major (NCHW for maps). Python checks dtype, device and
//    shape, makes strided inputs contiguous and answers empty batches itself (N >= 1 here)
//    before a pointer gets here; kernels trust their arguments. Sizes come as one struct per
//    op shape (ConvShape, PoolShape, FullShape below).
//  * T is float or double (double exists so every op can be gradchecked in float64).
//  * `act` (an Act) fuses an activation into the op's output: y = act(a), a the op's pre-activation
//    (codes and formulas in activations.h). Backward needs only y (f'(a) is a function of
//    y for every activation), so no pre-activation is ever stored.
//  * Backward with gauss_newton = true propagates the diagonal Gauss-Newton terms of SDLM
//    instead of gradients (LeCun et al. 1998, appendix C): the incoming "gradient" is
//    d2E/dy2, activations contribute f'(a)^2, and every weight and input enters squared.
//  * A null gradient pointer (gx, gw) means "not needed": that work is skipped.
//  * Weight and bias gradients are reduced over the batch in a fixed order that does not
//    depend on the thread count, so results are bitwise reproducible for any nthreads.
#pragma once
#include <cstdint>

#include "activations.h"  // the activation codes (Act) and every per-element formula
#include "conn_table.h"   // ConnTable: C3's connection table
#include "network.h"      // the network's sizes and parameter layout

namespace lenet5 {

// ---- The sizes of a per-op call: one struct per op shape, built once by the bindings from the
// tensors' shapes, and read by name (s.H, s.W) everywhere below: never a list of loose integers
// in which a swapped H and W would compile. ----
struct ConvShape {  // valid 5x5 convolution: x[N,C,H,W] -> y[N,O,H-4,W-4]
  int64_t N, C, H, W, O;
  LENET5_CONSTEXPR int64_t out_h() const { return H - 4; }
  LENET5_CONSTEXPR int64_t out_w() const { return W - 4; }
};
struct PoolShape {  // 2x2 windows, stride 2: x[N,C,H,W] -> y[N,C,H/2,W/2] (odd row/column ignored)
  int64_t N, C, H, W;
  LENET5_CONSTEXPR int64_t out_h() const { return H / 2; }
  LENET5_CONSTEXPR int64_t out_w() const { return W / 2; }
};
struct FullShape {  // x[N,D] against O rows w[O,D] -> y[N,O] (fully connected, Euclidean RBF)
  int64_t N, D, O;
};
// Explicit float and double instantiations of a kernel declared in this header (written once,
// in the file that defines it).
#define LENET5_INSTANTIATE_FLOAT_DOUBLE(fn) \
  template decltype(fn<float>) fn<float>;   \
  template decltype(fn<double>) fn<double>;

namespace cpu {

// The per-op kernels (per_op_kernels.inc, shared with namespace cuda): the last argument, Exec,
// is the number of threads here.
using Exec = int;
#include "per_op_kernels.inc"

// The kernel family (portable, AVX2, AVX-512) is chosen at run time for all CPU code: support/simd.h.

}  // namespace cpu

#ifdef LENET5_WITH_CUDA
namespace cuda {
// The same kernels and contracts as lenet5::cpu, on device pointers: Exec is the cudaStream_t the
// kernels are launched on, asynchronously: no host synchronisation, no allocation, safe under
// CUDA graph capture. Scratch memory, where a kernel needs it, is passed in by the caller.
using Stream = void*;
using Exec = Stream;
#include "per_op_kernels.inc"
}  // namespace cuda
#endif

}  // namespace lenet5
