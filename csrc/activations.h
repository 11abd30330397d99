// activations.h — every per-element formula of the network, written once: the activations
// (identity, the paper's squashing, ReLU, plain tanh), their derivatives from the output, and
// the Gauss-Newton factor. Used by the portable CPU loops, the CPU SIMD kernels, both fused
// CPU engines and the CUDA kernels alike.
//
// Layout: scalar templates, instantiated for float, double, SIMD vectors of float (GCC/Clang
// vector extensions, which __m256 and __m512 are) and CUDA device code (LENET5_HD marks every
// function __host__ __device__ under nvcc). Only operators, ?: and constants are used, so
// the same text serves every target.
//
// Trick: float32 tanh is a rational function, x P(x^2) / Q(x^2) with Eigen's [13/6]
// coefficients on |x| < 9 (beyond, tanh(x) rounds to +-1 in float: the result is exactly +-A);
// for the squashing A tanh(S a) the constants A and S are folded into the coefficients, so f(a)
// costs 10 FMAs, two multiplies, a division, two compares and two selects. Measured error against float64 1.7159 tanh(2a/3): about
// 1.5e-7 relative (tests/test_simd.py bounds it at 1e-6 for every kernel family). float64 uses
// the C library's tanh. NaN stays NaN, +-inf gives +-A.
//
// Derivatives are computed from the output y, so no pre-activation is ever stored:
//   squashing f'(a) = S A - (S / A) y^2;  tanh: 1 - y^2;  ReLU: 0 where y <= 0, else 1;  identity: 1.
// ReLU follows torch for NaN: relu(NaN) = NaN and its gradient passes (NaN <= 0 is false).
// Gauss-Newton mode (SDLM, lenet5.h) uses f'(a)^2.
#pragma once
#include <cmath>
#include <type_traits>
#include <utility>

#if defined(__CUDACC__)
#define LENET5_HD __host__ __device__ __forceinline__
#define LENET5_CONSTEXPR __host__ __device__ constexpr
#else
#define LENET5_HD inline __attribute__((always_inline))
#define LENET5_CONSTEXPR constexpr
// Vector types pass between always-inlined functions only; GCC's ABI notes do not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace lenet5 {

// Activation codes, as the ops take them, and their names (Python: lenet5_fast._C.activations,
// from which lenet5_fast.ops.Act and ACTIVATIONS are built).
enum Act : int { kIdentity = 0, kScaledTanh = 1, kRelu = 2, kPlainTanh = 3 };
constexpr int kNumActivations = 4;
constexpr const char* activation_name(Act a) {
  return a == kIdentity ? "identity" : a == kScaledTanh ? "scaled_tanh" : a == kRelu ? "relu" : "plain_tanh";
}
constexpr double kTanhA = 1.7159;     // squashing amplitude A
constexpr double kTanhS = 2.0 / 3.0;  // squashing slope S

namespace act {

// Eigen's rational tanh: tanh(x) ~ x (a0 + a1 x^2 + ... + a6 x^12) / (b0 + b1 x^2 + b2 x^4 + b3 x^6).
LENET5_CONSTEXPR double tanh_num(int k) {
  return k == 0 ? 4.89352455891786e-03 : k == 1 ? 6.37261928875436e-04 : k == 2 ? 1.48572235717979e-05
       : k == 3 ? 5.12229709037114e-08 : k == 4 ? -8.60467152213735e-11 : k == 5 ? 2.00018790482477e-13
       : -2.76076847742355e-16;
}
LENET5_CONSTEXPR double tanh_den(int k) {
  return k == 0 ? 4.89352518554385e-03 : k == 1 ? 2.26843463243900e-03 : k == 2 ? 1.18534705686654e-04
       : 1.19825839466702e-06;
}
LENET5_CONSTEXPR double ipow(double x, int n) { return n == 0 ? 1.0 : x * ipow(x, n - 1); }

// A and S of the two tanh-shaped activations.
template <int ACT> struct TanhShape;
template <> struct TanhShape<kScaledTanh> { static constexpr double A = kTanhA, S = kTanhS; };
template <> struct TanhShape<kPlainTanh> { static constexpr double A = 1.0, S = 1.0; };

// A tanh(S a) in float arithmetic (T = float or a vector of floats): the rational tanh with A
// and S folded into its coefficients on |S a| < 9, exactly +-A beyond (tanh(9) rounds to 1).
template <int ACT, class T> LENET5_HD T rational_tanh(T a) {
  constexpr double A = TanhShape<ACT>::A, S = TanhShape<ACT>::S;
  constexpr float p0 = float(A * tanh_num(0) * S), p1 = float(A * tanh_num(1) * ipow(S, 3)),
                  p2 = float(A * tanh_num(2) * ipow(S, 5)), p3 = float(A * tanh_num(3) * ipow(S, 7)),
                  p4 = float(A * tanh_num(4) * ipow(S, 9)), p5 = float(A * tanh_num(5) * ipow(S, 11)),
                  p6 = float(A * tanh_num(6) * ipow(S, 13));
  constexpr float q0 = float(tanh_den(0)), q1 = float(tanh_den(1) * ipow(S, 2)),
                  q2 = float(tanh_den(2) * ipow(S, 4)), q3 = float(tanh_den(3) * ipow(S, 6));
  constexpr float edge = float(9.0 / S), amp = float(A);
  const T hi = T{} + edge, lo = T{} - edge;
  const auto above = a >= hi, below = a <= lo;  // saturated: exactly +-A (NaN is neither)
  const T v = a * a;
  T p = v * p6 + p5;
  p = p * v + p4;
  p = p * v + p3;
  p = p * v + p2;
  p = p * v + p1;
  p = p * v + p0;
  T q = v * q3 + q2;
  q = q * v + q1;
  q = q * v + q0;
  T r = (p * a) / q;  // garbage (inf, NaN) only where it is replaced next
  r = above ? T{} + amp : r;
  return below ? T{} - amp : r;
}

// A tanh(S a): float (and float vectors) through the rational function, double through libm.
template <int ACT, class T> LENET5_HD T tanh_shaped(T a) { return rational_tanh<ACT>(a); }
template <int ACT> LENET5_HD double tanh_shaped(double a) {
  return TanhShape<ACT>::A * ::tanh(TanhShape<ACT>::S * a);
}

// The scalar type behind T (float for a vector of floats).
template <class T> struct Elem { using type = typename std::decay<decltype(std::declval<T>()[0])>::type; };
template <> struct Elem<float> { using type = float; };
template <> struct Elem<double> { using type = double; };

// ---- y = f(a), the activation as a compile-time choice ----
template <int ACT, class T> LENET5_HD T forward(T a) {
  if constexpr (ACT == kScaledTanh || ACT == kPlainTanh) return tanh_shaped<ACT>(a);
  else if constexpr (ACT == kRelu) return a <= T{} ? T{} : a;  // NaN <= 0 is false: NaN stays NaN
  else return a;
}

// ---- f'(a) from y = f(a) ----
template <int ACT, class T> LENET5_HD T derivative(T y) {
  using E = typename Elem<T>::type;
  if constexpr (ACT == kScaledTanh) return E(kTanhS * kTanhA) - E(kTanhS / kTanhA) * (y * y);
  else if constexpr (ACT == kPlainTanh) return E(1) - y * y;
  else if constexpr (ACT == kRelu) return y <= T{} ? T{} : T{} + E(1);  // NaN passes, like torch
  else return T{} + E(1);
}

// ---- the factor backward multiplies the incoming term by: f'(a), or f'(a)^2 (Gauss-Newton) ----
template <int ACT, bool GN, class T> LENET5_HD T grad_factor(T y) {
  const T d = derivative<ACT>(y);
  return GN ? d * d : d;
}

// ---- the same with the activation chosen at run time (code as the ops take it) ----
template <class T> LENET5_HD T forward(T a, int act) {
  switch (act) {
    case kScaledTanh: return forward<kScaledTanh>(a);
    case kPlainTanh: return forward<kPlainTanh>(a);
    case kRelu: return forward<kRelu>(a);
    default: return a;
  }
}
template <class T> LENET5_HD T derivative(T y, int act) {
  switch (act) {
    case kScaledTanh: return derivative<kScaledTanh>(y);
    case kPlainTanh: return derivative<kPlainTanh>(y);
    case kRelu: return derivative<kRelu>(y);
    default: return derivative<kIdentity>(y);
  }
}
// gy * f'(a), or gy * f'(a)^2 when gauss_newton. For the identity, y is not read.
template <class T> LENET5_HD T backward(T gy, T y, int act, bool gauss_newton) {
  if (act == kIdentity) return gy;
  const T d = derivative(y, act);
  return gy * (gauss_newton ? d * d : d);
}

}  // namespace act
}  // namespace lenet5
