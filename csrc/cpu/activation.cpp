// activation.cpp — stand-alone squashing (scaled tanh) and ReLU, forward and backward, plus the
// run-time SIMD level switch shared by all float32 kernels.
//
// Layout: any contiguous array of n values. Backward uses the output y, never the input.
#include "cpu/parallel.h"

namespace lenet5 {
namespace cpu {

template <class T>
void activation_forward(const T* x, T* y, int64_t n, int act, int nthreads) {
  parallel_range(n, 1 << 14, nthreads, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) y[i] = act_forward(x[i], act);
  });
}

template <class T>
void activation_backward(const T* gy, const T* y, T* gx, int64_t n, int act, bool gauss_newton,
                         int nthreads) {
  parallel_range(n, 1 << 14, nthreads, [&](int64_t begin, int64_t end) {
    act_backward(gy + begin, y ? y + begin : nullptr, gx + begin, end - begin, act, gauss_newton);
  });
}

#define LENET5_INSTANTIATE(T)                                                          \
  template void activation_forward<T>(const T*, T*, int64_t, int, int);                \
  template void activation_backward<T>(const T*, const T*, T*, int64_t, int, bool, int);
LENET5_INSTANTIATE(float)
LENET5_INSTANTIATE(double)
#undef LENET5_INSTANTIATE

// ---- SIMD level: the portable kernels are the only level so far ----
namespace {
int g_forced_level = -1;
int best_level() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
  return 0;
}
}  // namespace
int simd_level() {
  const int best = best_level();
  return g_forced_level < 0 ? best : std::min(best, g_forced_level);
}
void set_simd_level(int level) { g_forced_level = level; }

}  // namespace cpu
}  // namespace lenet5
