// full.cpp — fully connected layer (F6: 120->84, C5 on 5x5 inputs, the modern output layer).
//
// Layout: x[N,D], w[O,D], b[O], y[N,O], all contiguous.
// Trick: forward and input gradient are row-by-row dot products / axpys along D (contiguous in
// both x and w, so they vectorise); one task per block of images. The weight gradient is an
// outer-product sum reduced in fixed batch slices, so it does not depend on the thread count.
#include "cpu/parallel.h"

namespace lenet5 {
namespace cpu {

template <class T>
void full_forward(const T* x, const T* w, const T* b, T* y, int64_t N, int64_t D, int64_t O, int act,
                  int nthreads) {
  parallel_range(N, 4, nthreads, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T* xn = x + n * D;
      for (int64_t o = 0; o < O; ++o) {
        const T* wo = w + o * D;
        T s = 0;
        for (int64_t d = 0; d < D; ++d) s += wo[d] * xn[d];
        y[n * O + o] = act_forward(s + b[o], act);
      }
    }
  });
}

template <class T>
void full_backward(const T* gy, const T* y, const T* x, const T* w, T* gx, T* gw, T* gb, int64_t N,
                   int64_t D, int64_t O, int act, bool gauss_newton, int nthreads) {
  std::vector<T> w2;
  const T* wk = maybe_square(w, O * D, gauss_newton, w2);
  std::vector<T> grads(O * D + O);
  batch_slices<T>(N, O * D + O, grads.data(), nthreads, [&](int64_t begin, int64_t end, T* acc) {
    std::vector<T> ga(O), x2;
    for (int64_t n = begin; n < end; ++n) {
      act_backward(gy + n * O, y ? y + n * O : nullptr, ga.data(), O, act, gauss_newton);
      const T* xn = maybe_square(x + n * D, D, gauss_newton, x2);
      T* gxn = gx ? gx + n * D : nullptr;
      if (gxn) std::fill(gxn, gxn + D, T(0));
      for (int64_t o = 0; o < O; ++o) {
        const T g = ga[o];
        acc[O * D + o] += g;
        T* gwo = acc + o * D;
        for (int64_t d = 0; d < D; ++d) gwo[d] += g * xn[d];
        if (gxn) {
          const T* wo = wk + o * D;
          for (int64_t d = 0; d < D; ++d) gxn[d] += g * wo[d];
        }
      }
    }
  });
  std::memcpy(gw, grads.data(), sizeof(T) * O * D);
  std::memcpy(gb, grads.data() + O * D, sizeof(T) * O);
}

#define LENET5_INSTANTIATE(T)                                                                      \
  template void full_forward<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, int,   \
                                int);                                                              \
  template void full_backward<T>(const T*, const T*, const T*, const T*, T*, T*, T*, int64_t,       \
                                 int64_t, int64_t, int, bool, int);
LENET5_INSTANTIATE(float)
LENET5_INSTANTIATE(double)
#undef LENET5_INSTANTIATE

}  // namespace cpu
}  // namespace lenet5
