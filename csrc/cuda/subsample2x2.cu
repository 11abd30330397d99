// subsample2x2.cu — S2/S4: trainable 2x2 subsampling, forward and backward, on the GPU.
//
// Layout: x[N,C,H,W] -> y[N,C,H/2,W/2], y[n,c,i,j] = act(coef[c] * s + bias[c]) with s the sum of the
// 2x2 window x[n,c,2i:2i+2,2j:2j+2] (summed in row-major order, like the CPU kernel); a trailing
// odd row/column is ignored and gets gradient 0.
// Trick: one thread per output (forward) or per window (input gradient: the thread writes its 4
// inputs, and the windows on the last row/column also zero the ignored odd row/column, so gx is
// fully written without a memset). ga is rebuilt from y, the window sum recomputed from x. The
// coefficient/bias gradients use one block per (channel, batch chunk) with a fixed-order block
// reduction; for big batches the chunk partials borrow gx's memory before gx is written and are
// summed in chunk order.
#include "cuda/common.cuh"

namespace lenet5 {
namespace cuda {
namespace detail {
namespace {

constexpr int kSubBS = 256;

template <class T> __device__ __forceinline__ T window_sum(const T* r0, int64_t W) {
  return __ldg(r0) + __ldg(r0 + 1) + __ldg(r0 + W) + __ldg(r0 + W + 1);
}

template <class T>
__global__ void __launch_bounds__(kSubBS)
subsample_forward_kernel(const T* __restrict__ x, const T* __restrict__ coef, const T* __restrict__ bias,
                         T* __restrict__ y, PoolShape s, int act) {
  const int64_t C = s.C, H = s.H, W = s.W, Ho = s.out_h(), Wo = s.out_w(), P = Ho * Wo, total = s.N * C * P;
  for (int64_t q = blockIdx.x * int64_t(kSubBS) + threadIdx.x; q < total; q += int64_t(gridDim.x) * kSubBS) {
    const int64_t plane = q / P, p = q - plane * P;
    const int64_t i = p / Wo, j = p - i * Wo;
    const int64_t c = plane % C;
    const T s = window_sum(x + plane * H * W + 2 * i * W + 2 * j, W);
    y[q] = act::forward(__ldg(coef + c) * s + __ldg(bias + c), act);
  }
}

// One thread per window (plane, i, j).
template <class T>
__global__ void __launch_bounds__(kSubBS)
subsample_backward_input_kernel(const T* __restrict__ gy, const T* __restrict__ y, const T* __restrict__ coef,
                                T* __restrict__ gx, PoolShape s, int act, bool gn) {
  const int64_t C = s.C, H = s.H, W = s.W, Ho = s.out_h(), Wo = s.out_w(), P = Ho * Wo, total = s.N * C * P;
  const bool odd_h = H & 1, odd_w = W & 1;
  for (int64_t q = blockIdx.x * int64_t(kSubBS) + threadIdx.x; q < total; q += int64_t(gridDim.x) * kSubBS) {
    const int64_t plane = q / P, p = q - plane * P;
    const int64_t i = p / Wo, j = p - i * Wo;
    const T k = sq_if(__ldg(coef + plane % C), gn);
    const T v = k * grad_pre(gy, y, q, act, gn);
    T* g = gx + plane * H * W + 2 * i * W + 2 * j;
    g[0] = v;
    g[1] = v;
    g[W] = v;
    g[W + 1] = v;
    const bool last_col = odd_w && j == Wo - 1, last_row = odd_h && i == Ho - 1;
    if (last_col) {
      g[2] = T(0);
      g[W + 2] = T(0);
    }
    if (last_row) {
      g[2 * W] = T(0);
      g[2 * W + 1] = T(0);
      if (last_col) g[2 * W + 2] = T(0);
    }
  }
}

// Block (c, chunk): gcoef = sum ga * s (Gauss-Newton: ga * s^2), gbias = sum ga over the chunk's
// images, to gc_out[chunk*cs + c] and gb_out[chunk*cs + c].
template <class T>
__global__ void __launch_bounds__(kSubBS)
subsample_backward_param_kernel(const T* __restrict__ gy, const T* __restrict__ y, const T* __restrict__ x,
                                T* __restrict__ gc_out, T* __restrict__ gb_out, int64_t cs, int64_t per,
                                PoolShape s, int act, bool gn) {
  LENET5_SHARED(T, red, [(kSubBS / 32) * 2]);
  const int64_t C = s.C, H = s.H, W = s.W, Ho = s.out_h(), Wo = s.out_w(), P = Ho * Wo;
  const int64_t c = blockIdx.x, chunk = blockIdx.y;
  const int64_t n0 = chunk * per, n1 = min64(s.N, n0 + per);
  const int64_t items = n1 > n0 ? (n1 - n0) * P : 0;
  T acc[2] = {T(0), T(0)};
  for (int64_t it = threadIdx.x; it < items; it += kSubBS) {
    const int64_t nl = it / P, p = it - nl * P;
    const int64_t i = p / Wo, j = p - i * Wo;
    const int64_t plane = (n0 + nl) * C + c;
    const T g = grad_pre(gy, y, plane * P + p, act, gn);
    const T s = window_sum(x + plane * H * W + 2 * i * W + 2 * j, W);
    acc[0] += g * (gn ? s * s : s);
    acc[1] += g;
  }
  const T tot = block_reduce<2, kSubBS>(acc, red);
  if (threadIdx.x == 0) gc_out[chunk * cs + c] = tot;
  if (threadIdx.x == 1) gb_out[chunk * cs + c] = tot;
}

}  // namespace
}  // namespace detail

template <class T>
void subsample2x2_forward(const T* x, const T* coef, const T* bias, T* y, PoolShape s, Act act, Stream stream) {
  using namespace detail;
  const int64_t total = s.N * s.C * s.out_h() * s.out_w();
  if (total <= 0) return;
  LENET5_LAUNCH(grid_blocks(total, kSubBS), kSubBS, 0, as_stream(stream), subsample_forward_kernel<T>)(x, coef, bias,
                                                                                                       y, s, act);
  LENET5_CHECK_LAUNCH("subsample2x2 forward");
}

template <class T>
void subsample2x2_backward(const T* gy, const T* y, const T* x, const T* coef, T* gx, T* gcoef, T* gbias,
                           PoolShape s, Act act, bool gauss_newton, Stream stream) {
  using namespace detail;
  const cudaStream_t st = as_stream(stream);
  const int64_t N = s.N, C = s.C;
  if (C <= 0) return;
  const int64_t P = s.out_h() * s.out_w();
  // 1) coefficient and bias gradients, possibly in batch chunks whose partials borrow gx.
  const ChunkPlan plan = plan_chunks(N, C, P, gx ? N * C * s.H * s.W : 0, 2 * C);
  T* gc_out = gcoef;
  T* gb_out = gbias;
  int64_t cs = 0;
  if (plan.chunks > 1) {
    gc_out = gx;
    gb_out = gx + C;
    cs = 2 * C;
  }
  const dim3 grid(static_cast<unsigned>(C), static_cast<unsigned>(plan.chunks));
  LENET5_LAUNCH(grid, kSubBS, 0, st, subsample_backward_param_kernel<T>)(gy, y, x, gc_out, gb_out, cs, plan.per, s, act,
                                                                         gauss_newton);
  LENET5_CHECK_LAUNCH("subsample2x2 backward (coefficient gradient)");
  if (plan.chunks > 1) {
    sum_chunks(gc_out, plan.chunks, cs, gcoef, C, st);
    sum_chunks(gb_out, plan.chunks, cs, gbias, C, st);
  }
  // 2) gx (overwrites the partials).
  if (!gx || N <= 0) return;
  const int64_t total = N * C * P;
  if (total <= 0) return zero_async(gx, N * C * s.H * s.W, st, "subsample2x2 backward");
  LENET5_LAUNCH(grid_blocks(total, kSubBS), kSubBS, 0, st, subsample_backward_input_kernel<T>)(gy, y, coef, gx, s, act,
                                                                                               gauss_newton);
  LENET5_CHECK_LAUNCH("subsample2x2 backward (input gradient)");
}

LENET5_INSTANTIATE_FLOAT_DOUBLE(subsample2x2_forward)
LENET5_INSTANTIATE_FLOAT_DOUBLE(subsample2x2_backward)

}  // namespace cuda
}  // namespace lenet5
