// maxpool2x2.cu — the modern variant's 2x2 max-pooling, forward and backward, on the GPU.
//
// Layout: x[N,C,H,W] -> y[N,C,H/2,W/2]; a trailing odd row/column is ignored (gradient 0).
// Trick: no index tensor is stored. Forward scans each window in row-major order keeping the
// first maximum (NaN propagates, like torch and the CPU kernel); backward has one thread per
// window that finds the first element equal to y again (a NaN y matches the first NaN), writes
// gy there and 0 to the other three, and the windows on the last row/column also zero the
// ignored odd row/column, so gx is fully written without a memset. The Gauss-Newton pass routes
// the same way, so the same kernel serves both.
#include "cuda/common.cuh"

namespace lenet5 {
namespace cuda {
namespace detail {
namespace {

constexpr int kPoolBS = 256;

template <class T>
__global__ void __launch_bounds__(kPoolBS)
maxpool_forward_kernel(const T* __restrict__ x, T* __restrict__ y, PoolShape s) {
  const int64_t H = s.H, W = s.W, Ho = s.out_h(), Wo = s.out_w(), P = Ho * Wo, total = s.N * s.C * P;
  for (int64_t q = blockIdx.x * int64_t(kPoolBS) + threadIdx.x; q < total; q += int64_t(gridDim.x) * kPoolBS) {
    const int64_t plane = q / P, p = q - plane * P;
    const int64_t i = p / Wo, j = p - i * Wo;
    const T* r = x + plane * H * W + 2 * i * W + 2 * j;
    const T v[3] = {__ldg(r + 1), __ldg(r + W), __ldg(r + W + 1)};
    T m = __ldg(r);
#pragma unroll
    for (int t = 0; t < 3; ++t)
      if (v[t] > m || v[t] != v[t]) m = v[t];
    y[q] = m;
  }
}

// One thread per window.
template <class T>
__global__ void __launch_bounds__(kPoolBS)
maxpool_backward_kernel(const T* __restrict__ gy, const T* __restrict__ x, const T* __restrict__ y,
                        T* __restrict__ gx, PoolShape s) {
  const int64_t H = s.H, W = s.W, Ho = s.out_h(), Wo = s.out_w(), P = Ho * Wo, total = s.N * s.C * P;
  const bool odd_h = H & 1, odd_w = W & 1;
  for (int64_t q = blockIdx.x * int64_t(kPoolBS) + threadIdx.x; q < total; q += int64_t(gridDim.x) * kPoolBS) {
    const int64_t plane = q / P, p = q - plane * P;
    const int64_t i = p / Wo, j = p - i * Wo;
    const int64_t off = plane * H * W + 2 * i * W + 2 * j;
    const T* r = x + off;
    const T v[4] = {__ldg(r), __ldg(r + 1), __ldg(r + W), __ldg(r + W + 1)};
    const T m = __ldg(y + q);
    const bool m_nan = m != m;
    int hit = 0;
#pragma unroll
    for (int t = 3; t >= 0; --t)  // backwards, so the first match in row-major order wins
      if (v[t] == m || (m_nan && v[t] != v[t])) hit = t;
    const T g = __ldg(gy + q);
    T* o = gx + off;
    o[0] = hit == 0 ? g : T(0);
    o[1] = hit == 1 ? g : T(0);
    o[W] = hit == 2 ? g : T(0);
    o[W + 1] = hit == 3 ? g : T(0);
    const bool last_col = odd_w && j == Wo - 1, last_row = odd_h && i == Ho - 1;
    if (last_col) {
      o[2] = T(0);
      o[W + 2] = T(0);
    }
    if (last_row) {
      o[2 * W] = T(0);
      o[2 * W + 1] = T(0);
      if (last_col) o[2 * W + 2] = T(0);
    }
  }
}

}  // namespace
}  // namespace detail

template <class T>
void maxpool2x2_forward(const T* x, T* y, PoolShape s, Stream stream) {
  using namespace detail;
  const int64_t total = s.N * s.C * s.out_h() * s.out_w();
  if (total <= 0) return;
  LENET5_LAUNCH(grid_blocks(total, kPoolBS), kPoolBS, 0, as_stream(stream), maxpool_forward_kernel<T>)(x, y, s);
  LENET5_CHECK_LAUNCH("maxpool2x2 forward");
}

template <class T>
void maxpool2x2_backward(const T* gy, const T* x, const T* y, T* gx, PoolShape s, Stream stream) {
  using namespace detail;
  const cudaStream_t st = as_stream(stream);
  const int64_t total = s.N * s.C * s.out_h() * s.out_w();
  if (total <= 0) return zero_async(gx, s.N * s.C * s.H * s.W, st, "maxpool2x2 backward");
  LENET5_LAUNCH(grid_blocks(total, kPoolBS), kPoolBS, 0, st, maxpool_backward_kernel<T>)(gy, x, y, gx, s);
  LENET5_CHECK_LAUNCH("maxpool2x2 backward");
}

LENET5_INSTANTIATE_FLOAT_DOUBLE(maxpool2x2_forward)
LENET5_INSTANTIATE_FLOAT_DOUBLE(maxpool2x2_backward)

}  // namespace cuda
}  // namespace lenet5
