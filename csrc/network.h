// network.h — the LeNet-5 networks declared once: every layer's size (geometry), the variants
// the fused engines run, and each variant's trainable tensors (role, name, shape) in
// model.parameters() order, derived from the geometry. Both engines, the bindings and Python
// (lenet5_fast._C.geometry, _C.param_layout) read these; nothing else restates them.
#pragma once
#include <cstdint>

namespace lenet5 {

// ---- Every layer's size (Python: lenet5_fast._C.geometry) ----
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
// What the fused engines take beyond the paper's sizes.
constexpr int kMaxInChannels = 8;   // C1's input maps: 1..8
constexpr int kMaxClasses = 1024;   // the modern variant's output units: 1..1024
}  // namespace geometry

// ---- The variants the fused engines run (Python: lenet5_fast._C.variants) ----
//  kClassic: C1, S2 (trainable 2x2 subsampling), C3 through a connection table (16 maps, 1..96
//            kernels), S4, C5, F6, all scaled tanh; output: Euclidean RBF over fixed codes [10, 84].
//  kModern:  C1 ReLU, 2x2 max-pool, C3 full 6->16 ReLU, max-pool, C5 ReLU, F6 ReLU; output: a
//            fully connected layer 84 -> classes, identity (logits).
enum class Variant : int { kClassic = 0, kModern = 1 };
constexpr int kNumVariants = 2;
constexpr const char* variant_name(Variant v) { return v == Variant::kClassic ? "classic" : "modern"; }

// ---- The trainable tensors (Python: lenet5_fast._C.param_layout) ----
// Every trainable tensor either variant has, by role.
enum Role : int {
  kC1Weight, kC1Bias, kS2Coef, kS2Bias, kC3Weight, kC3Bias, kS4Coef, kS4Bias,
  kC5Weight, kC5Bias, kF6Weight, kF6Bias, kOutWeight, kOutBias, kRoles
};
constexpr const char* role_name(Role r) {  // the model's state_dict key
  constexpr const char* names[kRoles] = {"c1.weight", "c1.bias", "s2.coef", "s2.bias", "c3.weight", "c3.bias",
                                         "s4.coef", "s4.bias", "c5.weight", "c5.bias", "f6.weight", "f6.bias",
                                         "output.weight", "output.bias"};
  return names[r];
}

// A variant's trainable tensors in model.parameters() order (the classic RBF codes are fixed:
// a buffer, not a parameter).
constexpr int kMaxParams = 12;
struct ParamOrder {
  int count;
  Role role[kMaxParams];
};
constexpr ParamOrder kClassicOrder = {12, {kC1Weight, kC1Bias, kS2Coef, kS2Bias, kC3Weight, kC3Bias, kS4Coef,
                                           kS4Bias, kC5Weight, kC5Bias, kF6Weight, kF6Bias}};
constexpr ParamOrder kModernOrder = {10, {kC1Weight, kC1Bias, kC3Weight, kC3Bias, kC5Weight, kC5Bias, kF6Weight,
                                          kF6Bias, kOutWeight, kOutBias}};
constexpr const ParamOrder& param_order(Variant v) { return v == Variant::kClassic ? kClassicOrder : kModernOrder; }
// The classic order is the role order: a classic parameter's index is its role.
static_assert(kClassicOrder.role[kF6Bias] == kF6Bias && kClassicOrder.count == kF6Bias + 1, "classic order");

// The sizes a variant leaves free.
struct NetSizes {
  int in_channels;  // C1's input maps
  int c3_kernels;   // classic: the table's kernels K (C3's weight is [K, 5, 5]); modern: unused
  int classes;      // modern: output units; classic: geometry::kClasses
};

struct ParamShape {
  int rank;           // 0: the variant has no tensor of this role
  int64_t dim[4];
  constexpr int64_t numel() const {
    int64_t n = rank ? 1 : 0;
    for (int i = 0; i < rank; ++i) n *= dim[i];
    return n;
  }
};

// The shape of the tensor with role r in variant v.
constexpr ParamShape param_shape(Variant v, Role r, NetSizes s) {
  using namespace geometry;
  const bool classic = v == Variant::kClassic;
  switch (r) {
    case kC1Weight: return {4, {kC1Maps, s.in_channels, kKernel, kKernel}};
    case kC1Bias: return {1, {kC1Maps}};
    case kS2Coef: case kS2Bias: return classic ? ParamShape{1, {kC1Maps}} : ParamShape{0, {}};
    case kC3Weight:  // classic: one kernel per table entry; modern: the full table, [16, 6, 5, 5]
      return classic ? ParamShape{3, {s.c3_kernels, kKernel, kKernel}}
                     : ParamShape{4, {kC3Maps, kC1Maps, kKernel, kKernel}};
    case kC3Bias: return {1, {kC3Maps}};
    case kS4Coef: case kS4Bias: return classic ? ParamShape{1, {kC3Maps}} : ParamShape{0, {}};
    case kC5Weight: return {4, {kC5Units, kC3Maps, kKernel, kKernel}};
    case kC5Bias: return {1, {kC5Units}};
    case kF6Weight: return {2, {kF6Units, kC5Units}};
    case kF6Bias: return {1, {kF6Units}};
    case kOutWeight: return classic ? ParamShape{0, {}} : ParamShape{2, {s.classes, kF6Units}};
    case kOutBias: return classic ? ParamShape{0, {}} : ParamShape{1, {s.classes}};
    default: return {0, {}};
  }
}
constexpr int64_t param_numel(Variant v, Role r, NetSizes s) { return param_shape(v, r, s).numel(); }

}  // namespace lenet5
