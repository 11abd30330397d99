// sparse_conv5x5.cu — C3: 5x5 convolution through a connection table, forward and backward, on
// the GPU.
//
// Layout: x[N,C,H,W], y[N,O,H-4,W-4]; the table is CSR on the device: output map o sums kernels
// k in [offsets[o], offsets[o+1]), kernel k reads input map inputs[k]; w[K,5,5], b[O].
// Trick: the kernels live in conv5x5_core.cuh (shared with the dense convolution). Each block
// reads the table itself (no host copy, so no synchronisation) and scatters its kernels into a
// dense weight tile in shared memory with a block-uniform connection mask: forward loads each
// input patch once per group of 8 output maps and skips absent connections; the weight gradient
// has one block per (output map, kernel slot, 5x5 row), blocks with no kernel exit at once.
// K is only known on the device, so the weight gradient is reduced in a single pass over the
// batch (no chunk partials, whose layout would need K on the host).
#include "cuda/conv5x5_core.cuh"

namespace lenet5 {
namespace cuda {

template <class T>
void sparse_conv5x5_forward(const T* x, const T* w, const T* b, ConnTable table, T* y, ConvShape s, Act act,
                            Stream stream) {
  detail::conv5_forward<T>(x, w, b, y, detail::CsrConn{table.offsets, table.inputs}, s, act,
                           detail::as_stream(stream));
}

template <class T>
void sparse_conv5x5_backward(const T* gy, const T* y, const T* x, const T* w, ConnTable table, T* gx, T* gw,
                             T* gb, ConvShape s, Act act, bool gauss_newton, Stream stream) {
  const cudaStream_t st = detail::as_stream(stream);
  const detail::CsrConn conn{table.offsets, table.inputs};
  // Kernel slots per output map: the fan-in without duplicate connections is at most C; maps
  // with more kernels than slots loop over them.
  const int64_t slots = detail::min64(detail::max64(s.C, 1), 64);
  detail::conv5_backward_filter<T>(gy, y, x, gw, gb, conn, slots, 0, s, act, gauss_newton,
                                   static_cast<T*>(nullptr), 0, st);
  if (gx) detail::conv5_backward_data<T>(gy, y, w, gx, conn, s, act, gauss_newton, st);
}

LENET5_INSTANTIATE_FLOAT_DOUBLE(sparse_conv5x5_forward)
LENET5_INSTANTIATE_FLOAT_DOUBLE(sparse_conv5x5_backward)

}  // namespace cuda
}  // namespace lenet5
