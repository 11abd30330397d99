// lenet5.h — the native API of lenet5_fast: every layer's forward and backward, CPU and CUDA.
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

namespace lenet5 {

// ---- The paper's network, declared once: every layer's size (Python reads these as
// lenet5_fast._C.geometry; the model, the fused engine and its callers use nothing else) ----
namespace geometry {
constexpr int kInput = 32;       // input maps 32x32 (MNIST's 28x28 padded by 2)
constexpr int kKernel = 5;       // every convolution is 5x5, valid
constexpr int kPool = 2;         // every subsampling is 2x2, stride 2
constexpr int kC1Maps = 6, kC1Size = kInput - kKernel + 1;    // 6 @ 28x28
constexpr int kS2Size = kC1Size / kPool;                      // 6 @ 14x14
constexpr int kC3Maps = 16, kC3Size = kS2Size - kKernel + 1;  // 16 @ 10x10
constexpr int kC3MaxKernels = kC1Maps * kC3Maps;              // a table lists each (out, in) pair once
constexpr int kS4Size = kC3Size / kPool;                      // 16 @ 5x5
constexpr int kC5Units = 120, kC5Inputs = kC3Maps * kS4Size * kS4Size;  // 400 -> 120
constexpr int kF6Units = 84;                                  // 120 -> 84 (the 7x12 code size)
constexpr int kClasses = 10;                                  // RBF units (digits)
static_assert(kS4Size == kKernel, "C5 sees 5x5 maps: it is a fully connected layer");
}  // namespace geometry

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
// C3's connection table in CSR form: output map o sums kernels k in [offsets[o], offsets[o+1]),
// kernel k reads input map inputs[k].
struct ConnTable {
  const int32_t* offsets;
  const int32_t* inputs;
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

// ---- The fused classic network, one image at a time (fused_sample.cpp), float32 only ----
// The paper's LeNet-5: C1 1->6 on 32x32, S2, C3 through a CSR table with 16 output maps and at
// most 96 kernels (inputs in [0, 6)), S4, C5 400->120, F6 120->84, all squashed, then the
// Euclidean RBF over fixed codes [10, 84]. Images x[N, 1, 32, 32]; every tensor contiguous.
enum ClassicParam : int {  // trainable tensors, in model.parameters() order
  kC1Weight, kC1Bias, kS2Coef, kS2Bias, kC3Weight, kC3Bias, kS4Coef, kS4Bias,
  kC5Weight, kC5Bias, kF6Weight, kF6Bias, kClassicParams
};
struct ClassicNet {
  float* param[kClassicParams];  // [6,1,5,5] [6] [6] [6] [K,5,5] [16] [16] [16] [120,16,5,5] [120] [84,120] [84]
  const float* codes;            // RBF weights [10, 84]
  const int32_t* c3_offsets;     // [17], rising from 0 to K
  const int32_t* c3_inputs;      // [K]
};
// Number of floats in trainable tensor `param` when C3 has c3_kernels kernels.
int64_t classic_param_size(int param, int64_t c3_kernels);
// out[N, 10] = RBF distances. Threaded over the batch; writes nothing else.
void lenet5_forward(const ClassicNet& net, const float* x, float* out, int64_t N, int nthreads);
// Autograd at small batches. lenet5_sample_forward_save is lenet5_forward that also writes each
// image's activations (what backward reads) to saved[N, lenet5_sample_saved_floats()], a
// 64-byte aligned buffer (throws std::invalid_argument otherwise). lenet5_sample_backward, with
// the same weights, WRITES to grads[p] (12 buffers shaped like the parameters) the gradient of
// sum_i sum_j grad_out[i, j] * out[i, j]: threaded over fixed slices of the batch summed in slice
// order (parallel.h's batch_slices), so bitwise the same for any nthreads. No input gradient.
int64_t lenet5_sample_saved_floats();
void lenet5_sample_forward_save(const ClassicNet& net, const float* x, float* out, float* saved,
                                int64_t N, int nthreads);
void lenet5_sample_backward(const ClassicNet& net, const float* saved, const float* grad_out, int64_t N,
                            float* const* grads, int nthreads);
// Training step in one call: per image, forward, the MAP loss against labels[N] (in [0, 10),
// else std::invalid_argument) and backward, back to back. out[N, 10] receives the outputs,
// *loss = scale * the sum of the per-sample losses (summed in image order), grads[p] are
// OVERWRITTEN with scale * d(sum of the losses)/dparam. Bitwise the same for any nthreads.
void lenet5_sample_train(const ClassicNet& net, const float* x, const int64_t* labels, int64_t N, double map_j,
                         double scale, float* out, float* loss, float* const* grads, int nthreads);
// hessian[p] = mean over the N samples of the SDLM Gauss-Newton diagonal of parameter p
// (MAP loss with constant j), as the per-op kernels compute it with gauss_newton = true.
// Bitwise independent of nthreads. Throws std::invalid_argument on a label outside [0, 10).
void lenet5_sdlm_hessian(const ClassicNet& net, const float* x, const int64_t* labels, int64_t N,
                         double map_j, float* const* hessian, int nthreads);
// One pass of per-sample SDLM: for i in [0, n), sample k = order[i]: forward, MAP loss,
// backward, then every parameter p: param[p] -= steps[p] * dE/dparam[p] (in place).
// *sum_loss = sum of the losses, *errors = samples whose argmin output != label, both taken
// before that sample's update. Single-threaded (the updates are sequential).
void lenet5_sdlm_pass(const ClassicNet& net, const float* x, const int64_t* labels, int64_t N,
                      const int64_t* order, int64_t n, double map_j, const float* const* steps,
                      double* sum_loss, int64_t* errors);

// ---- The whole network, batched, images in the SIMD lanes (fused_batch.cpp), float32 only ----
// For training at batch >= 16: a tile of L images (L = 16 AVX-512, 8 AVX2, 4 portable) runs
// together, every activation stored [channel][row][col][lane]. Images x[N, in_channels, 32, 32];
// every tensor contiguous.
//  kClassic: C1 Cin->6, S2 trainable subsampling, C3 through a CSR table (16 maps, 1..96
//            kernels, inputs in [0, 6)), S4, C5 400->120, F6 120->84, all scaled tanh; output
//            the Euclidean RBF distances to fixed codes [10, 84]: out_i = sum_j (x_j - c_ij)^2.
//  kModern:  C1 Cin->6 ReLU, 2x2 max-pool, C3 full 6->16 ReLU, max-pool, C5 400->120 ReLU,
//            F6 120->84 ReLU, output FullConnection 84->classes, identity (logits).
enum class Variant : int { kClassic = 0, kModern = 1 };
struct BatchNet {
  Variant variant;
  int in_channels;         // C1's input maps, 1..8
  int classes;             // output units: 10 for classic; modern 1..1024
  const float* param[12];  // trainable tensors in model.parameters() order:
  //   classic: c1.weight[6,Cin,5,5] c1.bias[6] s2.coef[6] s2.bias[6] c3.weight[K,5,5] c3.bias[16]
  //            s4.coef[16] s4.bias[16] c5.weight[120,16,5,5] c5.bias[120] f6.weight[84,120] f6.bias[84]
  //   modern:  c1.weight[6,Cin,5,5] c1.bias[6] c3.weight[16,6,5,5] c3.bias[16] c5.weight[120,16,5,5]
  //            c5.bias[120] f6.weight[84,120] f6.bias[84] output.weight[classes,84] output.bias[classes]
  //            (10 used, the rest null)
  const float* codes;                       // classic: RBF codes [10, 84]; modern: null
  const int32_t *c3_offsets, *c3_inputs;    // classic: CSR table ([17], [K]); modern: null
};
// Trainable tensors: 12 (classic) or 10 (modern).
int batch_net_params(const BatchNet& net);
// Floats in trainable tensor p (0 outside [0, batch_net_params)).
int64_t batch_param_size(const BatchNet& net, int p);
// Floats of the `saved` buffer lenet5_batch_forward fills for N images (any SIMD level); reads
// only the variant, in_channels and classes (no weights or table needed).
int64_t lenet5_batch_saved_floats(const BatchNet& net, int64_t N);
// out[N, classes]. When saved is not null it also receives everything backward needs (a
// 64-byte aligned buffer of lenet5_batch_saved_floats floats; std::invalid_argument otherwise).
// Threaded over tiles of L images.
void lenet5_batch_forward(const BatchNet& net, const float* x, float* out, float* saved, int64_t N,
                          int nthreads);
// grads[p] (batch_net_params buffers shaped like the parameters) are OVERWRITTEN with
// d(sum_ij grad_out[i, j] out[i, j]) / dparam; grad_x (null: not computed) [N, Cin, 32, 32]
// OVERWRITTEN with the input gradient. x and the weights are those of the forward that wrote
// `saved`, at the same SIMD level (checked: std::invalid_argument). Threaded over a fixed
// partition of the tiles into slices summed in order: bitwise identical for any nthreads.
void lenet5_batch_backward(const BatchNet& net, const float* x, const float* saved, const float* grad_out,
                           int64_t N, float* const* grads, float* grad_x, int nthreads);
// Training step in one call: per tile, forward, the variant's loss against labels[N] (in
// [0, classes), else std::invalid_argument; classic: the MAP criterion with map_j, modern:
// cross-entropy) and backward, back to back while the tile's activations are in cache (nothing
// per image goes to memory and back). out[N, classes] receives the outputs, *loss = scale * the
// sum of the per-sample losses (summed in image order); grads[p] and grad_x (null: not computed)
// are OVERWRITTEN with scale * d(sum of the losses)/d(them). Bitwise the same for any nthreads.
void lenet5_batch_train(const BatchNet& net, const float* x, const int64_t* labels, int64_t N, double map_j,
                        double scale, float* out, float* loss, float* const* grads, float* grad_x, int nthreads);

// The kernel family (portable, AVX2, AVX-512) is chosen at run time for all CPU code: cpu/simd.h.

}  // namespace cpu

#ifdef LENET5_WITH_CUDA
namespace cuda {
// The same kernels and contracts as lenet5::cpu, on device pointers: Exec is the cudaStream_t the
// kernels are launched on, asynchronously: no host synchronisation, no allocation, safe under
// CUDA graph capture. Scratch memory, where a kernel needs it, is passed in by the caller.
using Stream = void*;
using Exec = Stream;
#include "per_op_kernels.inc"
// Number of visible CUDA devices (0 when there is no driver or GPU); never throws.
int device_count();
}  // namespace cuda
#endif

}  // namespace lenet5
