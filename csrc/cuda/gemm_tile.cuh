// gemm_tile.cuh — a small shared-memory tiled "GEMM" used by full.cu and euclidean_rbf.cu.
//
// Layout: out(m, n) = sum over k of op(a(m, k), b(k, n)), for k in the block's batch chunk.
// The operands are functors that read (and transform) row-major tensors: a loader returns the
// value at (m, k) or (k, n) and says which index is contiguous in memory (kKContig), so the tile
// loads are coalesced whichever way the tensor is stored. op is multiply-add (full layer) or
// squared difference (Euclidean RBF); the epilogue functor writes the result (bias +
// activation, routing to gw/gb, or chunk partials).
// Trick: 64x64 output tile per 256-thread block, 16-deep k slices staged in shared memory,
// 4x4 outputs per thread in registers (one shared load feeds 4 FMAs). ga = gy * f'(a) and the
// Gauss-Newton squares are applied inside the loaders, so no temporary tensor is ever written.
// The k loop of each output runs in a fixed order, so the result is deterministic.
#pragma once
#include "cuda/common.cuh"

namespace lenet5 {
namespace cuda {
namespace detail {

constexpr int kBM = 64, kBN = 64, kBK = 16, kGemmBS = 256;

struct OpMul {
  template <class T> __device__ __forceinline__ static T apply(T acc, T a, T b) { return acc + a * b; }
};
struct OpSqDiff {
  template <class T> __device__ __forceinline__ static T apply(T acc, T a, T b) {
    const T d = a - b;
    return acc + d * d;
  }
};

// Plain row-major operands and result, for the products that need no transform:
// RowLoad: A(m, k) = p[m * ld + k]; RowLoadT: B(k, n) = p[n * ld + k] (a row-major matrix read
// transposed); RowStore: out[m * ld + n] = acc.
template <class T> struct RowLoad {
  static constexpr bool kKContig = true;
  const T* p;
  int64_t ld;
  __device__ __forceinline__ T operator()(int64_t m, int64_t k) const { return __ldg(p + m * ld + k); }
};
template <class T> struct RowLoadT {
  static constexpr bool kKContig = true;
  const T* p;
  int64_t ld;
  __device__ __forceinline__ T operator()(int64_t k, int64_t n) const { return __ldg(p + n * ld + k); }
};
template <class T> struct RowStore {
  T* out;
  int64_t ld;
  __device__ __forceinline__ void operator()(int64_t m, int64_t n, int64_t, T acc) const { out[m * ld + n] = acc; }
};

// grid: x over n tiles, y over m tiles (grid-stride on both), z = batch chunk of the k range:
// chunk z covers k in [z*kper, min(K, (z+1)*kper)).
template <class T, class Op, class A, class B, class Epi>
__global__ void __launch_bounds__(kGemmBS)
gemm_tile_kernel(int64_t M, int64_t Nn, int64_t K, int64_t kper, A a, B b, Epi epi) {
  LENET5_SHARED(T, As, [kBK][kBM + 4]);
  LENET5_SHARED(T, Bs, [kBK][kBN + 4]);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t chunk = blockIdx.z;
  const int64_t k0 = chunk * kper, k1 = min64(K, k0 + kper);
  const int64_t mtiles = ceil_div(M, kBM), ntiles = ceil_div(Nn, kBN);
  for (int64_t mt = blockIdx.y; mt < mtiles; mt += gridDim.y) {
    for (int64_t nt = blockIdx.x; nt < ntiles; nt += gridDim.x) {
      const int64_t m0 = mt * kBM, n0 = nt * kBN;
      T acc[4][4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = T(0);
      for (int64_t kk = k0; kk < k1; kk += kBK) {
#pragma unroll
        for (int i = 0; i < (kBM * kBK) / kGemmBS; ++i) {
          const int e = threadIdx.x + i * kGemmBS;
          const int mm = A::kKContig ? e / kBK : e % kBM;
          const int kq = A::kKContig ? e % kBK : e / kBM;
          const int64_t m = m0 + mm, k = kk + kq;
          As[kq][mm] = (m < M && k < k1) ? a(m, k) : T(0);
        }
#pragma unroll
        for (int i = 0; i < (kBN * kBK) / kGemmBS; ++i) {
          const int e = threadIdx.x + i * kGemmBS;
          const int nn = B::kKContig ? e / kBK : e % kBN;
          const int kq = B::kKContig ? e % kBK : e / kBN;
          const int64_t n = n0 + nn, k = kk + kq;
          Bs[kq][nn] = (n < Nn && k < k1) ? b(k, n) : T(0);
        }
        __syncthreads();
        // Entries past k1 (and past M, Nn) were staged as 0 and add 0 under both ops.
#pragma unroll
        for (int kq = 0; kq < kBK; ++kq) {
          T av[4], bv[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) av[i] = As[kq][ty * 4 + i];
#pragma unroll
          for (int j = 0; j < 4; ++j) bv[j] = Bs[kq][tx * 4 + j];
#pragma unroll
          for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = Op::apply(acc[i][j], av[i], bv[j]);
        }
        __syncthreads();
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t m = m0 + ty * 4 + i;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t n = n0 + tx * 4 + j;
          if (m < M && n < Nn) epi(m, n, chunk, acc[i][j]);
        }
      }
    }
  }
}

template <class T, class Op, class A, class B, class Epi>
void gemm_tile(int64_t M, int64_t Nn, int64_t K, int64_t chunks, int64_t kper, A a, B b, Epi epi,
               cudaStream_t st, const char* what) {
  if (M <= 0 || Nn <= 0) return;
  const int64_t cap = min64(kMaxGridY, LENET5_CUDA_MAX_BLOCKS);  // the tile loops stride over the rest
  const dim3 grid(grid_blocks(Nn, kBN, cap), grid_blocks(M, kBM, cap), static_cast<unsigned>(max64(1, chunks)));
  LENET5_LAUNCH(grid, kGemmBS, 0, st, gemm_tile_kernel<T, Op, A, B, Epi>)(M, Nn, K, max64(kper, 1), a, b, epi);
  LENET5_CHECK_LAUNCH(what);
}

}  // namespace detail
}  // namespace cuda
}  // namespace lenet5
