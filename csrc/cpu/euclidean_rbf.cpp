// euclidean_rbf.cpp — the output layer: Euclidean RBF units, forward and backward.
//
// y[n,i] = sum_j (x[n,j] - w[i,j])^2, x[N,D] (F6 outputs), w[M,D] (the digit codes), y[N,M].
// Trick: M and D are tiny (10 x 84): one task per block of images, the difference vector is
// formed once per (n, i) and reused for both gradients. The w gradient (only when w is
// trainable) goes through the fixed batch slices.
// float32 SIMD: vectors along D (84 = 5 full AVX2 vectors + a masked tail), 4 units per step
// sharing each x vector, one horizontal sum per output; backward accumulates gx along D in
// registers over the M units and gw rows in the slice's accumulator.
#ifndef LENET5_SIMD_ISA
#include "support/parallel.h"
#include "support/simd.h"

namespace lenet5 {
namespace cpu {

template <class T>
void portable_rbf_forward(const T* x, const T* w, T* y, FullShape s, int nthreads) {
  const int64_t D = s.D, M = s.O;
  parallel_range(s.N, 16, nthreads, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      for (int64_t i = 0; i < M; ++i) {
        const T* xn = x + n * D;
        const T* wi = w + i * D;
        T sum = 0;
        for (int64_t j = 0; j < D; ++j) {
          const T d = xn[j] - wi[j];
          sum += d * d;
        }
        y[n * M + i] = sum;
      }
  });
}

// dy/dx = 2(x - w), dy/dw = -2(x - w); Gauss-Newton: (2(x - w))^2 for both.
template <class T>
void portable_rbf_backward(const T* gy, const T* x, const T* w, T* gx, T* gw, FullShape s, bool gauss_newton,
                           int nthreads) {
  const int64_t D = s.D, M = s.O;
  std::vector<T> grads(gw ? M * D : 0);
  batch_slices<T>(s.N, gw ? M * D : 0, grads.data(), nthreads, [&](int64_t begin, int64_t end, T* acc) {
    for (int64_t n = begin; n < end; ++n) {
      const T* xn = x + n * D;
      T* gxn = gx ? gx + n * D : nullptr;
      if (gxn) std::fill(gxn, gxn + D, T(0));
      for (int64_t i = 0; i < M; ++i) {
        const T g = gy[n * M + i];
        const T* wi = w + i * D;
        for (int64_t j = 0; j < D; ++j) {
          const T d = T(2) * (xn[j] - wi[j]);
          if (gauss_newton) {
            if (gxn) gxn[j] += g * d * d;
            if (acc) acc[i * D + j] += g * d * d;
          } else {
            if (gxn) gxn[j] += g * d;
            if (acc) acc[i * D + j] -= g * d;
          }
        }
      }
    }
  });
  if (gw) std::memcpy(gw, grads.data(), sizeof(T) * M * D);
}

}  // namespace cpu
}  // namespace lenet5

#define LENET5_SIMD_SELF "cpu/euclidean_rbf.cpp"
#include "support/simd_pass.h"

namespace lenet5 {
namespace cpu {

template <class T>
void euclidean_rbf_forward(const T* x, const T* w, T* y, FullShape s, int nthreads) {
  if constexpr (std::is_same<T, float>::value)
    if (LENET5_SIMD_CALL(rbf_forward_simd, x, w, y, s, nthreads)) return;
  portable_rbf_forward(x, w, y, s, nthreads);
}

template <class T>
void euclidean_rbf_backward(const T* gy, const T* x, const T* w, T* gx, T* gw, FullShape s, bool gauss_newton,
                            int nthreads) {
  if constexpr (std::is_same<T, float>::value)
    if (LENET5_SIMD_CALL(rbf_backward_simd, gy, x, w, gx, gw, s, gauss_newton, nthreads)) return;
  portable_rbf_backward(gy, x, w, gx, gw, s, gauss_newton, nthreads);
}

LENET5_INSTANTIATE_FLOAT_DOUBLE(euclidean_rbf_forward)
LENET5_INSTANTIATE_FLOAT_DOUBLE(euclidean_rbf_backward)

}  // namespace cpu
}  // namespace lenet5

#else  // ===== SIMD section (compiled once per ISA; V = Avx2, Avx2x2 or Avx512) =====

// y[i] = sum_j (x[j] - w[i][j])^2 for IB units i.
template <class V, int IB>
LENET5_AI void rbf_units(const float* x, const float* w, int64_t D, float* y) {
  constexpr int L = V::L;
  typename V::R acc[IB];
#pragma GCC unroll 4
  for (int q = 0; q < IB; ++q) acc[q] = V::zero();
  for (int64_t d = 0; d < D; d += L) {
    const int n = int(std::min<int64_t>(L, D - d));
    const typename V::R xv = n == L ? V::load(x + d) : V::loadn(x + d, n);
#pragma GCC unroll 4
    for (int q = 0; q < IB; ++q) {
      const typename V::R diff = V::sub(xv, n == L ? V::load(w + q * D + d) : V::loadn(w + q * D + d, n));
      acc[q] = V::fmadd(diff, diff, acc[q]);
    }
  }
#pragma GCC unroll 4
  for (int q = 0; q < IB; ++q) y[q] = V::hsum(acc[q]);
}

template <class V>
void rbf_forward_simd(const float* x, const float* w, float* y, FullShape s, int nthreads) {
  const int64_t D = s.D, M = s.O;
  parallel_range(s.N, 16, nthreads, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      int64_t i = 0;
      for (; i + 4 <= M; i += 4) rbf_units<V, 4>(x + n * D, w + i * D, D, y + n * M + i);
      for (; i < M; ++i) rbf_units<V, 1>(x + n * D, w + i * D, D, y + n * M + i);
    }
  });
}

// dy/dx = 2(x - w), dy/dw = -2(x - w); Gauss-Newton: (2(x - w))^2 for both.
template <class V>
void rbf_backward_simd(const float* gy, const float* x, const float* w, float* gx, float* gw, FullShape s,
                       bool gn, int nthreads) {
  constexpr int L = V::L;
  const int64_t D = s.D, M = s.O;
  std::vector<float> grads(gw ? M * D : 0);
  batch_slices<float>(s.N, gw ? M * D : 0, grads.data(), nthreads, [&](int64_t begin, int64_t end, float* acc) {
    for (int64_t n = begin; n < end; ++n) {
      const float* xn = x + n * D;
      for (int64_t d = 0; d < D; d += L) {
        const int cnt = int(std::min<int64_t>(L, D - d));
        const bool full = cnt == L;
        const typename V::R xv = full ? V::load(xn + d) : V::loadn(xn + d, cnt);
        typename V::R gxv = V::zero();
        for (int64_t i = 0; i < M; ++i) {
          const typename V::R g = V::set1(gy[n * M + i]);
          const float* wi = w + i * D + d;
          const typename V::R dv = V::mul(V::set1(2.0f), V::sub(xv, full ? V::load(wi) : V::loadn(wi, cnt)));
          typename V::R t = V::mul(g, dv);  // g d
          if (gn) t = V::mul(t, dv);         // g d^2
          gxv = V::add(gxv, t);
          if (acc) {
            float* a = acc + i * D + d;
            const typename V::R av = full ? V::load(a) : V::loadn(a, cnt);
            const typename V::R nv = gn ? V::add(av, t) : V::sub(av, t);
            if (full) V::store(a, nv); else V::storen(a, cnt, nv);
          }
        }
        if (gx) {
          if (full) V::store(gx + n * D + d, gxv); else V::storen(gx + n * D + d, cnt, gxv);
        }
      }
    }
  });
  if (gw) std::memcpy(gw, grads.data(), sizeof(float) * M * D);
}

#endif
