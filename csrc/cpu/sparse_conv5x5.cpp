// sparse_conv5x5.cpp — C3: 5x5 convolution through a connection table, forward and backward.
//
// Layout: x[N,C,H,W], y[N,O,H-4,W-4]; the table is CSR: output map o sums kernels
// k in [offsets[o], offsets[o+1]), kernel k reads input map inputs[k]; w[K,5,5], b[O].
// For the paper's Table I, K = 60 and the layer has 60*25 + 16 = 1,516 parameters.
// Trick: only connected (output, input) pairs are visited — no masked dense convolution —
// each image is one task, and the planes use the shared loops of conv5x5_plane.h.
#include "cpu/conv5x5_plane.h"

namespace lenet5 {
namespace cpu {

template <class T>
void sparse_conv5x5_forward(const T* x, const T* w, const T* b, const int32_t* offsets,
                            const int32_t* inputs, T* y, int64_t N, int64_t C, int64_t H, int64_t W,
                            int64_t O, int act, int nthreads) {
  const int64_t in = C * H * W, plane = (H - 4) * (W - 4), out = O * plane;
  parallel_tasks(N, nthreads, [&](int64_t n) {
    const T* xn = x + n * in;
    for (int64_t o = 0; o < O; ++o) {
      T* yo = y + n * out + o * plane;
      std::fill(yo, yo + plane, b[o]);
      for (int64_t k = offsets[o]; k < offsets[o + 1]; ++k)
        plane_correlate_accumulate(xn + inputs[k] * H * W, w + k * 25, yo, H, W);
      act_forward_inplace(yo, plane, act);
    }
  });
}

template <class T>
void sparse_conv5x5_backward(const T* gy, const T* y, const T* x, const T* w, const int32_t* offsets,
                             const int32_t* inputs, T* gx, T* gw, T* gb, int64_t N, int64_t C,
                             int64_t H, int64_t W, int64_t O, int act, bool gauss_newton,
                             int nthreads) {
  const int64_t in = C * H * W, plane = (H - 4) * (W - 4), out = O * plane;
  const int64_t K = offsets[O], nw = K * 25;
  std::vector<T> w2;
  const T* wk = maybe_square(w, nw, gauss_newton, w2);
  std::vector<T> grads(nw + O);
  batch_slices<T>(N, nw + O, grads.data(), nthreads, [&](int64_t begin, int64_t end, T* acc) {
    std::vector<T> ga(out), x2;
    for (int64_t n = begin; n < end; ++n) {
      act_backward(gy + n * out, y ? y + n * out : nullptr, ga.data(), out, act, gauss_newton);
      const T* xn = maybe_square(x + n * in, in, gauss_newton, x2);
      T* gxn = gx ? gx + n * in : nullptr;
      if (gxn) std::fill(gxn, gxn + in, T(0));
      for (int64_t o = 0; o < O; ++o) {
        const T* gao = ga.data() + o * plane;
        acc[nw + o] += plane_sum(gao, plane);
        for (int64_t k = offsets[o]; k < offsets[o + 1]; ++k)
          plane_correlate_backward(gao, xn + inputs[k] * H * W, wk + k * 25, acc + k * 25,
                                   gxn ? gxn + inputs[k] * H * W : nullptr, H, W);
      }
    }
  });
  std::memcpy(gw, grads.data(), sizeof(T) * nw);
  std::memcpy(gb, grads.data() + nw, sizeof(T) * O);
}

#define LENET5_INSTANTIATE(T)                                                                    \
  template void sparse_conv5x5_forward<T>(const T*, const T*, const T*, const int32_t*,          \
                                          const int32_t*, T*, int64_t, int64_t, int64_t, int64_t, \
                                          int64_t, int, int);                                     \
  template void sparse_conv5x5_backward<T>(const T*, const T*, const T*, const T*, const int32_t*, \
                                           const int32_t*, T*, T*, T*, int64_t, int64_t, int64_t, \
                                           int64_t, int64_t, int, bool, int);
LENET5_INSTANTIATE(float)
LENET5_INSTANTIATE(double)
#undef LENET5_INSTANTIATE

}  // namespace cpu
}  // namespace lenet5
