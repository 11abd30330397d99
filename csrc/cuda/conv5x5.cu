// conv5x5.cu — valid 5x5 convolution (C1: 1->6 maps, C5: 16->120, modern C3: 6->16), forward and
// backward, on the GPU.
//
// Layout: x[N,C,H,W], w[O,C,5,5], b[O], y[N,O,H-4,W-4], all contiguous.
// Trick: the kernels live in conv5x5_core.cuh and are shared with the sparse convolution: the
// dense layer is the full connection table (kernel k = o*C + c reads input c, exactly the
// [O,C,5,5] layout) as a compile-time policy, so the table costs nothing. When the input is
// exactly 5x5 (C5) the layer is a fully connected one over C*25 inputs and goes to full.cu's
// GEMM. The weight-gradient pass may cut the batch into chunks whose partials borrow gx's memory
// (it runs before gx is written); see conv5x5_core.cuh.
#include "cuda/conv5x5_core.cuh"

namespace lenet5 {
namespace cuda {

template <class T>
void conv5x5_forward(const T* x, const T* w, const T* b, T* y, ConvShape s, Act act, Stream stream) {
  if (s.H == 5 && s.W == 5) return full_forward<T>(x, w, b, y, FullShape{s.N, s.C * 25, s.O}, act, stream);
  detail::conv5_forward<T>(x, w, b, y, detail::DenseConn{int(s.C)}, s, act, detail::as_stream(stream));
}

template <class T>
void conv5x5_backward(const T* gy, const T* y, const T* x, const T* w, T* gx, T* gw, T* gb, ConvShape s,
                      Act act, bool gauss_newton, Stream stream) {
  if (s.H == 5 && s.W == 5)
    return full_backward<T>(gy, y, x, w, gx, gw, gb, FullShape{s.N, s.C * 25, s.O}, act, gauss_newton, stream);
  const cudaStream_t st = detail::as_stream(stream);
  const detail::DenseConn conn{int(s.C)};
  // Weight/bias gradients first: they may use gx as scratch.
  detail::conv5_backward_filter<T>(gy, y, x, gw, gb, conn, s.C, s.O * s.C, s, act, gauss_newton, gx,
                                   gx ? s.N * s.C * s.H * s.W : 0, st);
  if (gx) detail::conv5_backward_data<T>(gy, y, w, gx, conn, s, act, gauss_newton, st);
}

LENET5_INSTANTIATE_FLOAT_DOUBLE(conv5x5_forward)
LENET5_INSTANTIATE_FLOAT_DOUBLE(conv5x5_backward)

}  // namespace cuda
}  // namespace lenet5
