// activation.cpp — stand-alone activations (squashing, ReLU, plain tanh), forward and backward,
// and the FMA throughput probe the benchmarks use.
//
// Layout: any contiguous array of n values. Backward uses the output y, never the input.
// Trick (float32 SIMD): straight vector loops over contiguous ranges, the tail through masked
// loads/stores; the formulas are activations.h's (a rational tanh for float32).
#ifndef LENET5_SIMD_ISA
#include "cpu/parallel.h"
#include "cpu/simd.h"

namespace lenet5 {
namespace cpu {

template <class T>
void portable_activation_forward(const T* x, T* y, int64_t n, Act act, int nthreads) {
  parallel_range(n, 1 << 14, nthreads, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) y[i] = act::forward(x[i], act);
  });
}

template <class T>
void portable_activation_backward(const T* gy, const T* y, T* gx, int64_t n, Act act, bool gauss_newton,
                                  int nthreads) {
  parallel_range(n, 1 << 14, nthreads, [&](int64_t begin, int64_t end) {
    act_backward(gy + begin, y ? y + begin : nullptr, gx + begin, end - begin, act, gauss_newton);
  });
}

}  // namespace cpu
}  // namespace lenet5

#define LENET5_SIMD_SELF "cpu/activation.cpp"
#include "cpu/simd_pass.h"

namespace lenet5 {
namespace cpu {

double fma_probe(int64_t iters, int nthreads) {
  auto run = [&]() -> double {
#if LENET5_X86_SIMD
    switch (current_isa()) {
      case Isa::kAvx512: return isa_avx512::fma_probe_simd<isa_avx512::Avx512>(iters);
      case Isa::kAvx2Wide: return isa_avx2::fma_probe_simd<isa_avx2::Avx2x2>(iters);
      case Isa::kAvx2: return isa_avx2::fma_probe_simd<isa_avx2::Avx2>(iters);
      default: break;
    }
#endif
    return 0.0;
  };
  std::vector<double> per(std::max(1, nthreads), 0.0);
  parallel_tasks(int64_t(per.size()), nthreads, [&](int64_t t) { per[t] = run(); });
  double flops = 0;
  for (double f : per) flops += f;
  return flops;
}

template <class T>
void activation_forward(const T* x, T* y, int64_t n, Act act, int nthreads) {
  if constexpr (std::is_same<T, float>::value)
    if (LENET5_SIMD_CALL(activation_forward_simd, x, y, n, act, nthreads)) return;
  portable_activation_forward(x, y, n, act, nthreads);
}

template <class T>
void activation_backward(const T* gy, const T* y, T* gx, int64_t n, Act act, bool gauss_newton, int nthreads) {
  if constexpr (std::is_same<T, float>::value)
    if (LENET5_SIMD_CALL(activation_backward_simd, gy, y, gx, n, act, gauss_newton, nthreads)) return;
  portable_activation_backward(gy, y, gx, n, act, gauss_newton, nthreads);
}

LENET5_INSTANTIATE_FLOAT_DOUBLE(activation_forward)
LENET5_INSTANTIATE_FLOAT_DOUBLE(activation_backward)

}  // namespace cpu
}  // namespace lenet5

#else  // ===== SIMD section (compiled once per ISA; V = Avx2, Avx2x2 or Avx512) =====

template <class V>
void activation_forward_simd(const float* x, float* y, int64_t n, Act act, int nthreads) {
  parallel_range(n, 1 << 14, nthreads, [&](int64_t begin, int64_t end) {
    v_act_array<V>(x + begin, y + begin, end - begin, act);
  });
}

template <class V>
void activation_backward_simd(const float* gy, const float* y, float* gx, int64_t n, Act act, bool gn,
                              int nthreads) {
  parallel_range(n, 1 << 14, nthreads, [&](int64_t begin, int64_t end) {
    v_act_back_array<V>(gy + begin, y ? y + begin : nullptr, gx + begin, end - begin, act, gn);
  });
}

// FMA throughput probe for benchmarks: kAcc independent FMA chains (all in registers), iters rounds.
template <class V>
double fma_probe_simd(int64_t iters) {
  constexpr int A = V::kAcc;
  typename V::R acc[A];
  for (int j = 0; j < A; ++j) acc[j] = V::set1(float(j));
  const typename V::R m = V::set1(0.999999f), c = V::set1(1e-7f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < A; ++j) acc[j] = V::fmadd(acc[j], m, c);
  }
  float s = 0;
  for (int j = 0; j < A; ++j) s += V::hsum(acc[j]);
  volatile float sink = s;
  (void)sink;
  return double(iters) * A * V::L * 2.0;
}

#endif
