// subsample2x2.cpp — S2/S4: trainable 2x2 subsampling, forward and backward.
//
// y[n,c,i,j] = act(coef[c] * s + bias[c]), s = sum of the 2x2 window x[n,c,2i:2i+2,2j:2j+2].
// Layout: x[N,C,H,W] -> y[N,C,H/2,W/2]; a trailing odd row/column is ignored (gradient 0).
// Trick: one task per image; the window sum is recomputed in backward (4 adds) instead of
// being stored, and coefficient/bias gradients go through the fixed batch slices.
#include "cpu/parallel.h"

namespace lenet5 {
namespace cpu {
namespace {
template <class T> inline T window_sum(const T* x, int64_t W, int64_t i, int64_t j) {
  const T* r0 = x + 2 * i * W + 2 * j;
  return r0[0] + r0[1] + r0[W] + r0[W + 1];
}
}  // namespace

template <class T>
void subsample2x2_forward(const T* x, const T* coef, const T* bias, T* y, int64_t N, int64_t C,
                          int64_t H, int64_t W, int act, int nthreads) {
  const int64_t Ho = H / 2, Wo = W / 2;
  parallel_tasks(N, nthreads, [&](int64_t n) {
    for (int64_t c = 0; c < C; ++c) {
      const T* xc = x + (n * C + c) * H * W;
      T* yc = y + (n * C + c) * Ho * Wo;
      for (int64_t i = 0; i < Ho; ++i)
        for (int64_t j = 0; j < Wo; ++j)
          yc[i * Wo + j] = act_forward(coef[c] * window_sum(xc, W, i, j) + bias[c], act);
    }
  });
}

template <class T>
void subsample2x2_backward(const T* gy, const T* y, const T* x, const T* coef, T* gx, T* gcoef,
                           T* gbias, int64_t N, int64_t C, int64_t H, int64_t W, int act,
                           bool gauss_newton, int nthreads) {
  const int64_t Ho = H / 2, Wo = W / 2, out = C * Ho * Wo;
  std::vector<T> grads(2 * C);
  batch_slices<T>(N, 2 * C, grads.data(), nthreads, [&](int64_t begin, int64_t end, T* acc) {
    std::vector<T> ga(out);
    for (int64_t n = begin; n < end; ++n) {
      act_backward(gy + n * out, y ? y + n * out : nullptr, ga.data(), out, act, gauss_newton);
      for (int64_t c = 0; c < C; ++c) {
        const T* xc = x + (n * C + c) * H * W;
        const T* gac = ga.data() + c * Ho * Wo;
        const T k = gauss_newton ? coef[c] * coef[c] : coef[c];
        T sc = 0, sb = 0;
        for (int64_t i = 0; i < Ho; ++i)
          for (int64_t j = 0; j < Wo; ++j) {
            const T s = window_sum(xc, W, i, j), g = gac[i * Wo + j];
            sc += g * (gauss_newton ? s * s : s);
            sb += g;
          }
        acc[c] += sc;
        acc[C + c] += sb;
        if (!gx) continue;
        T* gxc = gx + (n * C + c) * H * W;
        for (int64_t r = 0; r < H; ++r)
          for (int64_t q = 0; q < W; ++q)
            gxc[r * W + q] = (r / 2 < Ho && q / 2 < Wo) ? k * gac[(r / 2) * Wo + q / 2] : T(0);
      }
    }
  });
  std::memcpy(gcoef, grads.data(), sizeof(T) * C);
  std::memcpy(gbias, grads.data() + C, sizeof(T) * C);
}

#define LENET5_INSTANTIATE(T)                                                                    \
  template void subsample2x2_forward<T>(const T*, const T*, const T*, T*, int64_t, int64_t,      \
                                        int64_t, int64_t, int, int);                             \
  template void subsample2x2_backward<T>(const T*, const T*, const T*, const T*, T*, T*, T*,     \
                                         int64_t, int64_t, int64_t, int64_t, int, bool, int);
LENET5_INSTANTIATE(float)
LENET5_INSTANTIATE(double)
#undef LENET5_INSTANTIATE

}  // namespace cpu
}  // namespace lenet5
