// conv5x5.cpp — valid 5x5 convolution (C1: 1->6 maps, C5: 16->120 maps, modern C3: 6->16).
//
// Layout: x[N,C,H,W], w[O,C,5,5], b[O], y[N,O,H-4,W-4], all contiguous.
// Trick: no loops of its own. A dense convolution is the sparse one of sparse_conv5x5.cpp with
// the full table (kernel k = o*C + c reads input c, which is exactly the [O,C,5,5] layout), and
// when the input is exactly 5x5 (C5) it is a fully connected layer over C*25 inputs (full.cpp).
#include "support/parallel.h"

namespace lenet5 {
namespace cpu {
namespace {
// The full table of O output maps over C inputs, in CSR form (storage in offsets, inputs).
ConnTable full_table(const ConvShape& s, std::vector<int32_t>& offsets, std::vector<int32_t>& inputs) {
  offsets.resize(s.O + 1);
  inputs.resize(s.O * s.C);
  lenet5::full_table(s.O, s.C, offsets.data(), inputs.data());  // conn_table.h
  return ConnTable{offsets.data(), inputs.data()};
}
// C5: a 5x5 input is a fully connected layer over its C*25 values.
FullShape as_full(const ConvShape& s) { return FullShape{s.N, s.C * 25, s.O}; }
}  // namespace

template <class T>
void conv5x5_forward(const T* x, const T* w, const T* b, T* y, ConvShape s, Act act, int nthreads) {
  if (s.H == 5 && s.W == 5) return full_forward(x, w, b, y, as_full(s), act, nthreads);
  std::vector<int32_t> offsets, inputs;
  sparse_conv5x5_forward(x, w, b, full_table(s, offsets, inputs), y, s, act, nthreads);
}

template <class T>
void conv5x5_backward(const T* gy, const T* y, const T* x, const T* w, T* gx, T* gw, T* gb, ConvShape s,
                      Act act, bool gauss_newton, int nthreads) {
  if (s.H == 5 && s.W == 5)
    return full_backward(gy, y, x, w, gx, gw, gb, as_full(s), act, gauss_newton, nthreads);
  std::vector<int32_t> offsets, inputs;
  sparse_conv5x5_backward(gy, y, x, w, full_table(s, offsets, inputs), gx, gw, gb, s, act, gauss_newton,
                          nthreads);
}

LENET5_INSTANTIATE_FLOAT_DOUBLE(conv5x5_forward)
LENET5_INSTANTIATE_FLOAT_DOUBLE(conv5x5_backward)

}  // namespace cpu
}  // namespace lenet5
