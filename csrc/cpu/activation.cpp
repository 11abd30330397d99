// activation.cpp — stand-alone activations (squashing, ReLU, plain tanh), forward and backward,
// and the FMA throughput probe the benchmarks use.
//
// Layout: any contiguous array of n values. Backward uses the output y, never the input.
// Trick (float32 SIMD): straight vector loops over contiguous ranges, the tail through masked
// loads/stores; the formulas are activations.h's (a rational tanh for float32).
#ifndef LENET5_SIMD_ISA
#include <stdexcept>
#include <string>
#include <utility>

#include "cpu/portable.h"
#include "support/parallel.h"
#include "support/simd.h"

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

// The FMA probe's chain counts (each level offers those that fit its registers).
#define LENET5_FMA_PROBE_COUNTS(X) X(1) X(2) X(4) X(6) X(8) X(10) X(12) X(14) X(16) X(20) X(24) X(28) X(30)

#define LENET5_SIMD_SELF "cpu/activation.cpp"
#include "support/simd_pass.h"

namespace lenet5 {
namespace cpu {

std::vector<int> fma_probe_counts() {
  std::vector<int> out;
#if LENET5_X86_SIMD
  int max = 0;
  switch (current_isa()) {
    case Isa::kAvx512: max = isa_avx512::fma_probe_max_chains<isa_avx512::Avx512>(); break;
    case Isa::kAvx2Wide: max = isa_avx2::fma_probe_max_chains<isa_avx2::Avx2x2>(); break;
    case Isa::kAvx2: max = isa_avx2::fma_probe_max_chains<isa_avx2::Avx2>(); break;
    default: break;
  }
#define LENET5_PROBE_COUNT(A) if (A <= max) out.push_back(A);
  LENET5_FMA_PROBE_COUNTS(LENET5_PROBE_COUNT)
#undef LENET5_PROBE_COUNT
#endif
  return out;
}

double fma_probe(int64_t iters, int nthreads, int accumulators) {
  double (*run)(int64_t) = nullptr;  // one thread's probe at the current level
#if LENET5_X86_SIMD
  switch (current_isa()) {
    case Isa::kAvx512: run = isa_avx512::fma_probe_pick<isa_avx512::Avx512>(accumulators); break;
    case Isa::kAvx2Wide: run = isa_avx2::fma_probe_pick<isa_avx2::Avx2x2>(accumulators); break;
    case Isa::kAvx2: run = isa_avx2::fma_probe_pick<isa_avx2::Avx2>(accumulators); break;
    default: return 0.0;
  }
  if (!run) {
    std::string valid;
    for (int a : fma_probe_counts()) valid += (valid.empty() ? "" : ", ") + std::to_string(a);
    throw std::invalid_argument("fma_probe: " + std::to_string(accumulators) + " accumulators at level " +
                                isa_name(current_isa()) + ": 0 (the level's default) or one of " + valid);
  }
#else
  return 0.0;
#endif
  std::vector<double> per(std::max(1, nthreads), 0.0);
  parallel_tasks(int64_t(per.size()), nthreads, [&](int64_t t) { per[t] = run(iters); });
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

// FMA throughput probe for benchmarks: A independent chains acc = acc * m + c, iters rounds.
// Saturating the FMA units takes latency x ports chains (Zen 3: 4 cycles x 2 pipes = 8; Intel
// with two 512-bit ports: 4 x 2 = 8), and every chain must live in a register: the chains are
// A separate variables expanded from a parameter pack (no array, which GCC keeps on the stack
// when a loop over it is not fully unrolled: the old 24-accumulator AVX-512 probe loaded and
// stored every accumulator each round and measured below AVX2). The counts offered stop where
// the registers run out (16 ymm, 32 zmm, two of them for m and c); objdump shows each
// instantiation's loop as A register-to-register FMAs and a counter.
template <class V, int... I>
double fma_probe_chains(int64_t iters, std::integer_sequence<int, I...>) {
  using R = typename V::R;
  alignas(64) float lanes[V::L];  // every lane its own value (Avx2x2: or GCC merges its two halves)
  for (int k = 0; k < V::L; ++k) lanes[k] = 1.0f + 0.01f * float(k);
  const R start = V::load(lanes);
  R acc[sizeof...(I)] = {V::add(start, V::set1(float(I)))...};
  const R m = V::set1(0.999999f), c = V::set1(1e-7f);
  for (int64_t i = 0; i < iters; ++i) ((acc[I] = V::fmadd(acc[I], m, c)), ...);
  float s = 0;
  ((s += V::hsum(acc[I])), ...);
  volatile float sink = s;
  (void)sink;
  return double(iters) * sizeof...(I) * V::L * 2.0;
}
template <class V, int A> double fma_probe_simd(int64_t iters) {
  return fma_probe_chains<V>(iters, std::make_integer_sequence<int, A>{});
}

// The probe with `accumulators` chains at vector type V (0: V::kAcc), or null when that many
// do not fit V's registers next to m and c.
template <class V> constexpr int fma_probe_max_chains() { return V::kRegisters / V::kRegsPerValue - 2; }
template <class V> double (*fma_probe_pick(int accumulators))(int64_t) {
  constexpr int kMax = fma_probe_max_chains<V>();
  if (accumulators == 0) accumulators = V::kAcc;
  switch (accumulators) {
#define LENET5_PROBE_CASE(A) \
  case A: return A <= kMax ? &fma_probe_simd<V, (A <= kMax ? A : 1)> : nullptr;
    LENET5_FMA_PROBE_COUNTS(LENET5_PROBE_CASE)
#undef LENET5_PROBE_CASE
    default: return nullptr;
  }
}

#endif
