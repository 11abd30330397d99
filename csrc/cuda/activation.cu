// activation.cu — stand-alone activations (scaled tanh, ReLU, plain tanh), forward and backward,
// on the GPU.
//
// Layout: any contiguous array of n values (x and y may be the same array). Backward uses the
// output y only (never the input), and does not read y at all for the identity.
// Trick: nothing beyond a grid-stride loop: these are bandwidth-bound and every other op already
// fuses its activation, so this is only used where an activation stands alone.
#include "cuda/common.cuh"

namespace lenet5 {
namespace cuda {
namespace detail {
namespace {

constexpr int kActBS = 256;

template <class T>
__global__ void __launch_bounds__(kActBS) activation_forward_kernel(const T* x, T* y, int64_t n, int act) {
  for (int64_t i = blockIdx.x * int64_t(kActBS) + threadIdx.x; i < n; i += int64_t(gridDim.x) * kActBS)
    y[i] = act::forward(x[i], act);
}

template <class T>
__global__ void __launch_bounds__(kActBS)
activation_backward_kernel(const T* __restrict__ gy, const T* __restrict__ y, T* __restrict__ gx, int64_t n,
                           int act, bool gn) {
  for (int64_t i = blockIdx.x * int64_t(kActBS) + threadIdx.x; i < n; i += int64_t(gridDim.x) * kActBS)
    gx[i] = grad_pre(gy, y, i, act, gn);
}

}  // namespace
}  // namespace detail

template <class T>
void activation_forward(const T* x, T* y, int64_t n, Act act, Stream s) {
  using namespace detail;
  if (n <= 0) return;
  LENET5_LAUNCH(grid_blocks(n, kActBS), kActBS, 0, as_stream(s), activation_forward_kernel<T>)(x, y, n, act);
  LENET5_CHECK_LAUNCH("activation forward");
}

template <class T>
void activation_backward(const T* gy, const T* y, T* gx, int64_t n, Act act, bool gauss_newton, Stream s) {
  using namespace detail;
  if (n <= 0) return;
  LENET5_LAUNCH(grid_blocks(n, kActBS), kActBS, 0, as_stream(s), activation_backward_kernel<T>)(gy, y, gx, n, act,
                                                                                                gauss_newton);
  LENET5_CHECK_LAUNCH("activation backward");
}

LENET5_INSTANTIATE_FLOAT_DOUBLE(activation_forward)
LENET5_INSTANTIATE_FLOAT_DOUBLE(activation_backward)

}  // namespace cuda
}  // namespace lenet5
