// conv5x5.cpp — valid 5x5 convolution (C1: 1->6 maps, C5: 16->120 maps, modern C3: 6->16).
//
// Layout: x[N,C,H,W], w[O,C,5,5], b[O], y[N,O,H-4,W-4], all contiguous.
// Trick: no loops of its own. A dense convolution is the sparse one of sparse_conv5x5.cpp with
// the full table (kernel k = o*C + c reads input c, which is exactly the [O,C,5,5] layout), and
// when the input is exactly 5x5 (C5) it is a fully connected layer over C*25 inputs (full.cpp).
#include "cpu/parallel.h"

namespace lenet5 {
namespace cpu {
namespace {
void full_table(int64_t O, int64_t C, std::vector<int32_t>& offsets, std::vector<int32_t>& inputs) {
  offsets.resize(O + 1);
  inputs.resize(O * C);
  for (int64_t o = 0; o <= O; ++o) offsets[o] = static_cast<int32_t>(o * C);
  for (int64_t k = 0; k < O * C; ++k) inputs[k] = static_cast<int32_t>(k % C);
}
}  // namespace

template <class T>
void conv5x5_forward(const T* x, const T* w, const T* b, T* y, int64_t N, int64_t C, int64_t H,
                     int64_t W, int64_t O, int act, int nthreads) {
  if (H == 5 && W == 5) return full_forward(x, w, b, y, N, C * 25, O, act, nthreads);
  std::vector<int32_t> offsets, inputs;
  full_table(O, C, offsets, inputs);
  sparse_conv5x5_forward(x, w, b, offsets.data(), inputs.data(), y, N, C, H, W, O, act, nthreads);
}

template <class T>
void conv5x5_backward(const T* gy, const T* y, const T* x, const T* w, T* gx, T* gw, T* gb,
                      int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int act,
                      bool gauss_newton, int nthreads) {
  if (H == 5 && W == 5)
    return full_backward(gy, y, x, w, gx, gw, gb, N, C * 25, O, act, gauss_newton, nthreads);
  std::vector<int32_t> offsets, inputs;
  full_table(O, C, offsets, inputs);
  sparse_conv5x5_backward(gy, y, x, w, offsets.data(), inputs.data(), gx, gw, gb, N, C, H, W, O,
                          act, gauss_newton, nthreads);
}

#define LENET5_INSTANTIATE(T)                                                                  \
  template void conv5x5_forward<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, \
                                   int64_t, int64_t, int, int);                                \
  template void conv5x5_backward<T>(const T*, const T*, const T*, const T*, T*, T*, T*, int64_t, \
                                    int64_t, int64_t, int64_t, int64_t, int, bool, int);
LENET5_INSTANTIATE(float)
LENET5_INSTANTIATE(double)
#undef LENET5_INSTANTIATE

}  // namespace cpu
}  // namespace lenet5
