// euclidean_rbf.cu — the Euclidean RBF output layer, forward and backward, on the GPU.
//
// Layout: x[N,D] (F6 outputs), w[M,D] (the digit codes), y[N,M] with y[n,i] = sum_j (x[n,j]-w[i,j])^2.
// Trick: forward is the tiled GEMM of gemm_tile.cuh with a squared-difference "multiply".
// Backward forms d = 2(x - w) exactly like the CPU kernel (same operations, same order):
// gx has one thread per (n, j) walking the M units; gw has one thread per (i, j) walking its
// batch chunk (coalesced over j, gy[n,i] broadcast), and for big batches the chunk partials
// borrow gx's memory (before gx is written) and are summed in chunk order: deterministic.
#include "cuda/gemm_tile.cuh"

namespace lenet5 {
namespace cuda {
namespace detail {
namespace {

constexpr int kRbfBS = 256;

// gx[n,j] = sum_i gy[n,i] d (Gauss-Newton: gy d^2), d = 2 (x[n,j] - w[i,j]).
template <class T>
__global__ void __launch_bounds__(kRbfBS)
rbf_backward_input_kernel(const T* __restrict__ gy, const T* __restrict__ x, const T* __restrict__ w,
                          T* __restrict__ gx, FullShape s, bool gn) {
  const int64_t D = s.D, M = s.O, total = s.N * D;
  for (int64_t q = blockIdx.x * int64_t(kRbfBS) + threadIdx.x; q < total; q += int64_t(gridDim.x) * kRbfBS) {
    const int64_t n = q / D, j = q - n * D;
    const T xv = x[q];
    const T* gyn = gy + n * M;
    T s = T(0);
    for (int64_t i = 0; i < M; ++i) {
      const T g = __ldg(gyn + i);
      const T d = T(2) * (xv - __ldg(w + i * D + j));
      s += gn ? g * d * d : g * d;
    }
    gx[q] = s;
  }
}

// gw[i,j] = -sum_n gy[n,i] d (Gauss-Newton: +sum gy d^2) over the images of chunk blockIdx.y,
// written to out[chunk*cs + i*D + j].
template <class T>
__global__ void __launch_bounds__(kRbfBS)
rbf_backward_weight_kernel(const T* __restrict__ gy, const T* __restrict__ x, const T* __restrict__ w,
                           T* __restrict__ out, int64_t cs, int64_t per, FullShape s, bool gn) {
  const int64_t D = s.D, M = s.O, total = M * D;
  const int64_t chunk = blockIdx.y;
  const int64_t n0 = chunk * per, n1 = min64(s.N, n0 + per);
  for (int64_t q = blockIdx.x * int64_t(kRbfBS) + threadIdx.x; q < total; q += int64_t(gridDim.x) * kRbfBS) {
    const int64_t i = q / D, j = q - i * D;
    const T wv = w[q];
    T s = T(0);
    for (int64_t n = n0; n < n1; ++n) {
      const T g = __ldg(gy + n * M + i);
      const T d = T(2) * (__ldg(x + n * D + j) - wv);
      if (gn)
        s += g * d * d;
      else
        s -= g * d;
    }
    out[chunk * cs + q] = s;
  }
}

}  // namespace
}  // namespace detail

template <class T>
void euclidean_rbf_forward(const T* x, const T* w, T* y, FullShape s, Stream stream) {
  using namespace detail;
  const int64_t N = s.N, D = s.D, M = s.O;
  if (N <= 0 || M <= 0) return;
  gemm_tile<T, OpSqDiff>(N, M, D, 1, D, RowLoad<T>{x, D}, RowLoadT<T>{w, D}, RowStore<T>{y, M}, as_stream(stream),
                         "euclidean_rbf forward");
}

template <class T>
void euclidean_rbf_backward(const T* gy, const T* x, const T* w, T* gx, T* gw, FullShape s, bool gauss_newton,
                            Stream stream) {
  using namespace detail;
  const cudaStream_t st = as_stream(stream);
  const int64_t N = s.N, D = s.D, M = s.O;
  // 1) gw, possibly in batch chunks whose partials borrow gx.
  if (gw && M > 0 && D > 0) {
    const int64_t total = M * D;
    const int64_t blocks = ceil_div(total, kRbfBS);
    const ChunkPlan plan = plan_chunks(N, blocks, kRbfBS, gx ? N * D : 0, total);
    T* out = plan.chunks > 1 ? gx : gw;
    const dim3 grid(grid_blocks(total, kRbfBS), static_cast<unsigned>(plan.chunks));
    LENET5_LAUNCH(grid, kRbfBS, 0, st, rbf_backward_weight_kernel<T>)(gy, x, w, out, plan.chunks > 1 ? total : 0,
                                                                      plan.per, s, gauss_newton);
    LENET5_CHECK_LAUNCH("euclidean_rbf backward (weight gradient)");
    if (plan.chunks > 1) sum_chunks(out, plan.chunks, total, gw, total, st);
  }
  // 2) gx (overwrites the partials).
  if (gx && N > 0 && D > 0) {
    const int64_t total = N * D;
    LENET5_LAUNCH(grid_blocks(total, kRbfBS), kRbfBS, 0, st, rbf_backward_input_kernel<T>)(gy, x, w, gx, s,
                                                                                           gauss_newton);
    LENET5_CHECK_LAUNCH("euclidean_rbf backward (input gradient)");
  }
}

LENET5_INSTANTIATE_FLOAT_DOUBLE(euclidean_rbf_forward)
LENET5_INSTANTIATE_FLOAT_DOUBLE(euclidean_rbf_backward)

}  // namespace cuda
}  // namespace lenet5
