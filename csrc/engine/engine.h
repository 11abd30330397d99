// engine.h — the two fused engines: their API (bindings.cpp calls it) and what they share.
//
// The whole network runs in one native call, float32, CPU:
//  * fused_sample.cpp, the per-image engine: the classic network with one input channel, one
//    image at a time, vectorised within the image: inference, the autograd pair and the
//    training step (forward, loss, backward) at small batches, SDLM's Gauss-Newton diagonal and
//    a whole per-sample SDLM pass.
//  * fused_batch.cpp, the batch engine: classic and modern, 1..8 input channels, a tile of
//    images in the SIMD lanes: inference, the autograd pair (with the input gradient) and the
//    training step.
// The losses both compute at the end of a training step: loss.h.
// Which engine runs a batch is Python's choice (lenet5_fast/fused.py). Both take the network as
// FusedNet (its variants and parameter layout: network.h), check it, and resolve C3's table with
// conn_table.h (resolve_c3, C3Index). Images x[N, in_channels, 32, 32]; every tensor contiguous.
#pragma once
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "lenet5.h"

namespace lenet5 {
namespace cpu {

// The network as both engines take it.
struct FusedNet {
  Variant variant;
  int in_channels;           // C1's input maps, 1..geometry::kMaxInChannels
  int classes;               // classic: geometry::kClasses; modern: 1..geometry::kMaxClasses
  float* param[kMaxParams];  // the trainable tensors in param_order(variant) (network.h)
  const float* codes;        // classic: the RBF codes [10, 84]; modern: null
  ConnTable c3;              // classic: C3's table (16 maps, 1..96 kernels); modern: null
};

// ---- The per-image engine (fused_sample.cpp): classic, one input channel ----
// out[N, 10] = RBF distances. Threaded over the batch; writes nothing else.
void lenet5_forward(const FusedNet& net, const float* x, float* out, int64_t N, int nthreads);
// Autograd at small batches. lenet5_sample_forward_save is lenet5_forward that also writes each
// image's activations (what backward reads) to saved[N, lenet5_sample_saved_floats()], a
// 64-byte aligned buffer (throws std::invalid_argument otherwise). lenet5_sample_backward, with
// the same weights, WRITES to grads[p] (12 buffers shaped like the parameters) the gradient of
// sum_i sum_j grad_out[i, j] * out[i, j]: threaded over fixed slices of the batch summed in slice
// order (support/parallel.h's batch_slices), so bitwise the same for any nthreads. No input gradient.
int64_t lenet5_sample_saved_floats();
void lenet5_sample_forward_save(const FusedNet& net, const float* x, float* out, float* saved, int64_t N,
                                int nthreads);
void lenet5_sample_backward(const FusedNet& net, const float* saved, const float* grad_out, int64_t N,
                            float* const* grads, int nthreads);
// Training step in one call: per image, forward, the MAP loss against labels[N] (in [0, 10),
// else std::invalid_argument) and backward, back to back. out[N, 10] receives the outputs,
// *loss = scale * the sum of the per-sample losses (summed in image order), grads[p] are
// OVERWRITTEN with scale * d(sum of the losses)/dparam. Bitwise the same for any nthreads.
void lenet5_sample_train(const FusedNet& net, const float* x, const int64_t* labels, int64_t N, double map_j,
                         double scale, float* out, float* loss, float* const* grads, int nthreads);
// hessian[p] = mean over the N samples of the SDLM Gauss-Newton diagonal of parameter p
// (MAP loss with constant j), as the per-op kernels compute it with gauss_newton = true.
// Bitwise independent of nthreads. Throws std::invalid_argument on a label outside [0, 10).
void lenet5_sdlm_hessian(const FusedNet& net, const float* x, const int64_t* labels, int64_t N, double map_j,
                         float* const* hessian, int nthreads);
// One pass of per-sample SDLM: for i in [0, n), sample k = order[i]: forward, MAP loss,
// backward, then every parameter p: param[p] -= steps[p] * dE/dparam[p] (in place).
// *sum_loss = sum of the losses, *errors = samples whose argmin output != label, both taken
// before that sample's update. Single-threaded (the updates are sequential).
void lenet5_sdlm_pass(const FusedNet& net, const float* x, const int64_t* labels, int64_t N, const int64_t* order,
                      int64_t n, double map_j, const float* const* steps, double* sum_loss, int64_t* errors);

// ---- The batch engine (fused_batch.cpp): classic and modern, images in the SIMD lanes ----
// A tile of L images (L = 16 AVX-512, 8 AVX2, 4 portable) runs together, every activation
// stored [channel][row][col][lane].
// Floats of the `saved` buffer lenet5_batch_forward fills for N images at any SIMD level: it
// depends on the sizes only (std::invalid_argument for sizes the engine does not take).
int64_t lenet5_batch_saved_floats(Variant variant, int in_channels, int classes, int64_t N);
// out[N, classes]. When saved is not null it also receives everything backward needs (a
// 64-byte aligned buffer of lenet5_batch_saved_floats floats; std::invalid_argument otherwise).
// Threaded over tiles of L images.
void lenet5_batch_forward(const FusedNet& net, const float* x, float* out, float* saved, int64_t N, int nthreads);
// grads[p] (one buffer per parameter, shaped like it) are OVERWRITTEN with
// d(sum_ij grad_out[i, j] out[i, j]) / dparam; grad_x (null: not computed) [N, Cin, 32, 32]
// OVERWRITTEN with the input gradient. x and the weights are those of the forward that wrote
// `saved`, at the same SIMD level (checked: std::invalid_argument). Threaded over a fixed
// partition of the tiles into slices summed in order: bitwise identical for any nthreads.
void lenet5_batch_backward(const FusedNet& net, const float* x, const float* saved, const float* grad_out,
                           int64_t N, float* const* grads, float* grad_x, int nthreads);
// Training step in one call: per tile, forward, the variant's loss against labels[N] (in
// [0, classes), else std::invalid_argument; classic: the MAP criterion with map_j, modern:
// cross-entropy) and backward, back to back while the tile's activations are in cache (nothing
// per image goes to memory and back). out[N, classes] receives the outputs, *loss = scale * the
// sum of the per-sample losses (summed in image order); grads[p] and grad_x (null: not computed)
// are OVERWRITTEN with scale * d(sum of the losses)/d(them). Bitwise the same for any nthreads.
void lenet5_batch_train(const FusedNet& net, const float* x, const int64_t* labels, int64_t N, double map_j,
                        double scale, float* out, float* loss, float* const* grads, float* grad_x, int nthreads);

// ---- Shared by the two engines (not part of the API) ----
namespace engine {

// The geometry under the short names both engines use.
constexpr int kK = geometry::kKernel, kTaps = kK * kK;
constexpr int kIn = geometry::kInput;
constexpr int kMaps1 = geometry::kC1Maps, kMaps3 = geometry::kC3Maps, kMaxKernels3 = geometry::kC3MaxKernels;
constexpr int kC1 = geometry::kC1Size, kS2 = geometry::kS2Size, kC3 = geometry::kC3Size, kS4 = geometry::kS4Size;
constexpr int kIn5 = geometry::kC5Inputs, kUnits5 = geometry::kC5Units, kUnits6 = geometry::kF6Units;
constexpr int kClasses = geometry::kClasses;

[[noreturn]] inline void fail(const std::string& fn, const std::string& what) {
  throw std::invalid_argument(fn + ": " + what);
}

// Checks the variant, in_channels and classes (all the saved buffers' sizes depend on).
inline void check_sizes(Variant variant, int in_channels, int classes, const char* fn) {
  const int v = static_cast<int>(variant);
  if (v < 0 || v >= kNumVariants) fail(fn, "variant must be 0 (classic) or 1 (modern), got " + std::to_string(v));
  if (in_channels < 1 || in_channels > geometry::kMaxInChannels)
    fail(fn, "in_channels must be in [1, " + std::to_string(geometry::kMaxInChannels) + "], got " +
                 std::to_string(in_channels));
  if (variant == Variant::kClassic && classes != kClasses)
    fail(fn, "the classic variant has " + std::to_string(kClasses) + " classes, got " + std::to_string(classes));
  if (variant == Variant::kModern && (classes < 1 || classes > geometry::kMaxClasses))
    fail(fn, "classes must be in [1, " + std::to_string(geometry::kMaxClasses) + "], got " + std::to_string(classes));
}

// Checks that every parameter of the variant (and the classic RBF codes) is there.
inline void check_params(const FusedNet& net, const char* fn) {
  for (int p = 0; p < param_order(net.variant).count; ++p)
    if (!net.param[p]) fail(fn, "missing parameter " + std::to_string(p));
  if (net.variant == Variant::kClassic && !net.codes) fail(fn, "missing RBF codes");
}

// Checks that there is one buffer per parameter of the variant (gradients, steps).
template <class Buffer> void check_buffers(const FusedNet& net, Buffer const* buffers, const char* what, const char* fn) {
  for (int p = 0; p < param_order(net.variant).count; ++p)
    if (!buffers[p]) fail(fn, std::string("missing ") + what + " " + std::to_string(p));
}

// Checks that labels[0, n) are classes in [0, classes).
inline void check_labels(const int64_t* labels, int64_t n, int classes, const char* fn) {
  for (int64_t i = 0; i < n; ++i)
    if (labels[i] < 0 || labels[i] >= classes)
      fail(fn, "label " + std::to_string(labels[i]) + " at index " + std::to_string(i) + " is outside [0, " +
                   std::to_string(classes) + ")");
}

// C3's table, checked and resolved (conn_table.h's resolve_c3).
inline C3Index resolve_c3(const FusedNet& net, const char* fn) { return ::lenet5::resolve_c3(net.variant, net.c3, fn); }

// The free sizes of a checked network (network.h's NetSizes), for param_shape / param_numel.
inline NetSizes sizes_of(const FusedNet& net, const C3Index& t) { return NetSizes{net.in_channels, t.K, net.classes}; }

}  // namespace engine
}  // namespace cpu
}  // namespace lenet5
