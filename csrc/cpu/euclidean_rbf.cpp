// euclidean_rbf.cpp — the output layer: Euclidean RBF units, forward and backward.
//
// y[n,i] = sum_j (x[n,j] - w[i,j])^2, x[N,D] (F6 outputs), w[M,D] (the digit codes), y[N,M].
// Trick: M and D are tiny (10 x 84): one task per block of images, the difference vector is
// formed once per (n, i) and reused for both gradients. The w gradient (only when w is
// trainable) goes through the fixed batch slices.
#include "cpu/parallel.h"

namespace lenet5 {
namespace cpu {

template <class T>
void euclidean_rbf_forward(const T* x, const T* w, T* y, int64_t N, int64_t D, int64_t M,
                           int nthreads) {
  parallel_range(N, 16, nthreads, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      for (int64_t i = 0; i < M; ++i) {
        const T* xn = x + n * D;
        const T* wi = w + i * D;
        T s = 0;
        for (int64_t j = 0; j < D; ++j) {
          const T d = xn[j] - wi[j];
          s += d * d;
        }
        y[n * M + i] = s;
      }
  });
}

// dy/dx = 2(x - w), dy/dw = -2(x - w); Gauss-Newton: (2(x - w))^2 for both.
template <class T>
void euclidean_rbf_backward(const T* gy, const T* x, const T* w, T* gx, T* gw, int64_t N, int64_t D,
                            int64_t M, bool gauss_newton, int nthreads) {
  std::vector<T> grads(gw ? M * D : 0);
  batch_slices<T>(N, gw ? M * D : 0, grads.data(), nthreads, [&](int64_t begin, int64_t end, T* acc) {
    for (int64_t n = begin; n < end; ++n) {
      const T* xn = x + n * D;
      T* gxn = gx ? gx + n * D : nullptr;
      if (gxn) std::fill(gxn, gxn + D, T(0));
      for (int64_t i = 0; i < M; ++i) {
        const T g = gy[n * M + i];
        const T* wi = w + i * D;
        for (int64_t j = 0; j < D; ++j) {
          const T d = T(2) * (xn[j] - wi[j]);
          if (gauss_newton) {
            if (gxn) gxn[j] += g * d * d;
            if (acc) acc[i * D + j] += g * d * d;
          } else {
            if (gxn) gxn[j] += g * d;
            if (acc) acc[i * D + j] -= g * d;
          }
        }
      }
    }
  });
  if (gw) std::memcpy(gw, grads.data(), sizeof(T) * M * D);
}

#define LENET5_INSTANTIATE(T)                                                                    \
  template void euclidean_rbf_forward<T>(const T*, const T*, T*, int64_t, int64_t, int64_t, int); \
  template void euclidean_rbf_backward<T>(const T*, const T*, const T*, T*, T*, int64_t, int64_t, \
                                          int64_t, bool, int);
LENET5_INSTANTIATE(float)
LENET5_INSTANTIATE(double)
#undef LENET5_INSTANTIATE

}  // namespace cpu
}  // namespace lenet5
