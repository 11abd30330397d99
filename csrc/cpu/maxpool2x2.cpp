// maxpool2x2.cpp — the modern variant's 2x2 max-pooling, forward and backward.
//
// Layout: x[N,C,H,W] -> y[N,C,H/2,W/2]; a trailing odd row/column is ignored.
// Trick: no index tensor is stored; backward finds the first element of each window (row-major
// order) equal to y again, and routes the gradient there, like the forward's tie-breaking.
#include "cpu/parallel.h"

namespace lenet5 {
namespace cpu {

template <class T>
void maxpool2x2_forward(const T* x, T* y, int64_t N, int64_t C, int64_t H, int64_t W, int nthreads) {
  const int64_t Ho = H / 2, Wo = W / 2;
  parallel_tasks(N * C, nthreads, [&](int64_t p) {
    const T* xp = x + p * H * W;
    T* yp = y + p * Ho * Wo;
    for (int64_t i = 0; i < Ho; ++i)
      for (int64_t j = 0; j < Wo; ++j) {
        const T* r = xp + 2 * i * W + 2 * j;
        T m = r[0];
        for (const T v : {r[1], r[W], r[W + 1]})
          if (v > m || v != v) m = v;  // NaN propagates, like torch
        yp[i * Wo + j] = m;
      }
  });
}

template <class T>
void maxpool2x2_backward(const T* gy, const T* x, const T* y, T* gx, int64_t N, int64_t C, int64_t H,
                         int64_t W, int nthreads) {
  const int64_t Ho = H / 2, Wo = W / 2;
  parallel_tasks(N * C, nthreads, [&](int64_t p) {
    const T* xp = x + p * H * W;
    T* gxp = gx + p * H * W;
    std::fill(gxp, gxp + H * W, T(0));
    for (int64_t i = 0; i < Ho; ++i)
      for (int64_t j = 0; j < Wo; ++j) {
        const int64_t at[4] = {2 * i * W + 2 * j, 2 * i * W + 2 * j + 1, (2 * i + 1) * W + 2 * j,
                               (2 * i + 1) * W + 2 * j + 1};
        const T m = y[p * Ho * Wo + i * Wo + j];
        int64_t hit = at[0];
        for (int q = 0; q < 4; ++q)
          if (xp[at[q]] == m || (m != m && xp[at[q]] != xp[at[q]])) { hit = at[q]; break; }
        gxp[hit] = gy[p * Ho * Wo + i * Wo + j];
      }
  });
}

#define LENET5_INSTANTIATE(T)                                                                   \
  template void maxpool2x2_forward<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t, int);   \
  template void maxpool2x2_backward<T>(const T*, const T*, const T*, T*, int64_t, int64_t,      \
                                       int64_t, int64_t, int);
LENET5_INSTANTIATE(float)
LENET5_INSTANTIATE(double)
#undef LENET5_INSTANTIATE

}  // namespace cpu
}  // namespace lenet5
