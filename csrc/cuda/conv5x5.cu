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
void conv5x5_forward(const T* x, const T* w, const T* b, T* y, int64_t N, int64_t C, int64_t H, int64_t W,
                     int64_t O, int act, Stream s) {
  if (H == 5 && W == 5) return full_forward<T>(x, w, b, y, N, C * 25, O, act, s);
  detail::conv5_forward<T>(x, w, b, y, detail::DenseConn{int(C)}, N, C, H, W, O, act, detail::as_stream(s));
}

template <class T>
void conv5x5_backward(const T* gy, const T* y, const T* x, const T* w, T* gx, T* gw, T* gb, int64_t N,
                      int64_t C, int64_t H, int64_t W, int64_t O, int act, bool gauss_newton, Stream s) {
  if (H == 5 && W == 5) return full_backward<T>(gy, y, x, w, gx, gw, gb, N, C * 25, O, act, gauss_newton, s);
  const cudaStream_t st = detail::as_stream(s);
  const detail::DenseConn conn{int(C)};
  // Weight/bias gradients first: they may use gx as scratch.
  detail::conv5_backward_filter<T>(gy, y, x, gw, gb, conn, C, O * C, N, C, H, W, O, act, gauss_newton, gx,
                                   gx ? N * C * H * W : 0, st);
  if (gx) detail::conv5_backward_data<T>(gy, y, w, gx, conn, N, C, H, W, O, act, gauss_newton, st);
}

#define LENET5_INSTANTIATE(T)                                                                         \
  template void conv5x5_forward<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t, \
                                   int64_t, int, Stream);                                             \
  template void conv5x5_backward<T>(const T*, const T*, const T*, const T*, T*, T*, T*, int64_t, int64_t, \
                                    int64_t, int64_t, int64_t, int, bool, Stream);
LENET5_INSTANTIATE(float)
LENET5_INSTANTIATE(double)
#undef LENET5_INSTANTIATE

}  // namespace cuda
}  // namespace lenet5
