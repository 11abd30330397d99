// full.cu — fully connected layer (F6, the modern output layer, and C5 on 5x5 inputs), forward and
// backward, on the GPU.
//
// Layout: x[N,D], w[O,D], b[O], y[N,O], all contiguous.
// Trick: all three products are the tiled GEMM of gemm_tile.cuh with loaders that read the
// tensors in place: forward y = act(x w^T + b); input gradient gx = ga w (w squared for
// Gauss-Newton); weight gradient [gw | gb] = ga^T [x | 1], the bias being one extra column of
// ones, so gw and gb come out of the same pass. ga = gy * f'(a) is rebuilt from y inside the
// loaders. The weight gradient reduces over the batch (the GEMM's k), which for big batches is
// cut into chunks whose partials go to gx's memory (before gx is computed) and are then summed in
// chunk order: deterministic, no atomics, no allocation.
#include "cuda/gemm_tile.cuh"

namespace lenet5 {
namespace cuda {
namespace detail {
namespace {

// forward: A(m = image, k = d) = x[m, k] (RowLoad), B(k = d, n = o) = w[n, k] (RowLoadT), then
// bias + activation:
template <class T> struct EpiForward {
  T* y;
  const T* b;
  int64_t O;
  int act;
  __device__ __forceinline__ void operator()(int64_t m, int64_t n, int64_t, T acc) const {
    y[m * O + n] = act::forward(acc + __ldg(b + n), act);
  }
};

// input gradient: A(m = image, k = o) = ga[m, k]
template <class T> struct LoadGaRows {
  static constexpr bool kKContig = true;
  const T* gy;
  const T* y;
  int64_t O;
  int act;
  bool gn;
  __device__ __forceinline__ T operator()(int64_t m, int64_t k) const { return grad_pre(gy, y, m * O + k, act, gn); }
};
// input gradient: B(k = o, n = d) = w[k, n] (squared for Gauss-Newton)
template <class T> struct LoadW {
  static constexpr bool kKContig = false;
  const T* w;
  int64_t D;
  bool gn;
  __device__ __forceinline__ T operator()(int64_t k, int64_t n) const { return sq_if(__ldg(w + k * D + n), gn); }
};
// weight gradient: A(m = o, k = image) = ga[k, m]
template <class T> struct LoadGaCols {
  static constexpr bool kKContig = false;
  const T* gy;
  const T* y;
  int64_t O;
  int act;
  bool gn;
  __device__ __forceinline__ T operator()(int64_t m, int64_t k) const { return grad_pre(gy, y, k * O + m, act, gn); }
};
// weight gradient: B(k = image, n = d) = x[k, n] (squared for Gauss-Newton), 1 in column D (bias)
template <class T> struct LoadXOne {
  static constexpr bool kKContig = false;
  const T* x;
  int64_t D;
  bool gn;
  __device__ __forceinline__ T operator()(int64_t k, int64_t n) const {
    return n < D ? sq_if(__ldg(x + k * D + n), gn) : T(1);
  }
};
// (m = o, n = d) goes to gw[chunk*cs + o*D + d], column n = D to gb[chunk*cs + o].
template <class T> struct EpiWeights {
  T* gw;
  T* gb;
  int64_t D, cs;
  __device__ __forceinline__ void operator()(int64_t m, int64_t n, int64_t chunk, T acc) const {
    if (n < D)
      gw[chunk * cs + m * D + n] = acc;
    else
      gb[chunk * cs + m] = acc;
  }
};

}  // namespace
}  // namespace detail

template <class T>
void full_forward(const T* x, const T* w, const T* b, T* y, FullShape s, Act act, Stream stream) {
  using namespace detail;
  const int64_t N = s.N, D = s.D, O = s.O;
  if (N <= 0 || O <= 0) return;
  gemm_tile<T, OpMul>(N, O, D, 1, D, RowLoad<T>{x, D}, RowLoadT<T>{w, D}, EpiForward<T>{y, b, O, act},
                      as_stream(stream), "full forward");
}

template <class T>
void full_backward(const T* gy, const T* y, const T* x, const T* w, T* gx, T* gw, T* gb, FullShape s, Act act,
                   bool gauss_newton, Stream stream) {
  using namespace detail;
  const int64_t N = s.N, D = s.D, O = s.O;
  const cudaStream_t st = as_stream(stream);
  if (O <= 0) {
    if (gx) zero_async(gx, N * D, st, "full backward");
    return;
  }
  const bool gn = gauss_newton;
  // 1) [gw | gb] = ga^T [x | 1]: reduction over the batch, in chunks whose partials borrow gx.
  const int64_t per_chunk = O * D + O;
  const int64_t blocks = ceil_div(O, kBM) * ceil_div(D + 1, kBN);
  const ChunkPlan plan = plan_chunks(N, blocks, 64, gx ? N * D : 0, per_chunk);
  if (plan.chunks > 1) {
    gemm_tile<T, OpMul>(O, D + 1, N, plan.chunks, plan.per, LoadGaCols<T>{gy, y, O, act, gn},
                        LoadXOne<T>{x, D, gn}, EpiWeights<T>{gx, gx + O * D, D, per_chunk}, st,
                        "full backward (weight gradient)");
    sum_chunks(gx, plan.chunks, per_chunk, gw, O * D, st);
    sum_chunks(gx + O * D, plan.chunks, per_chunk, gb, O, st);
  } else {
    gemm_tile<T, OpMul>(O, D + 1, N, 1, N, LoadGaCols<T>{gy, y, O, act, gn}, LoadXOne<T>{x, D, gn},
                        EpiWeights<T>{gw, gb, D, 0}, st, "full backward (weight gradient)");
  }
  // 2) gx = ga w (overwrites the partials).
  if (gx && N > 0 && D > 0)
    gemm_tile<T, OpMul>(N, D, O, 1, O, LoadGaRows<T>{gy, y, O, act, gn}, LoadW<T>{w, D, gn},
                        RowStore<T>{gx, D}, st, "full backward (input gradient)");
}

LENET5_INSTANTIATE_FLOAT_DOUBLE(full_forward)
LENET5_INSTANTIATE_FLOAT_DOUBLE(full_backward)

}  // namespace cuda
}  // namespace lenet5
