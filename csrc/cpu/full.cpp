// full.cpp — fully connected layer (F6: 120->84, C5 on 5x5 inputs, the modern output layer).
//
// Layout: x[N,D], w[O,D], b[O], y[N,O], all contiguous.
// Portable trick: forward and input gradient are row-by-row dot products / axpys along D;
// one task per block of images. The weight gradient is an outer-product sum reduced in fixed
// batch slices, so it does not depend on the thread count.
//
// float32 SIMD trick: register-blocked GEMM micro-kernels on the natural layouts, no packing.
//  * forward y = x w^T: MB images x OB outputs of dot products along D (vector accumulators,
//    D tail masked), both operands streamed contiguously (x rows stay in L1, w from L2), one
//    horizontal sum per output; then bias + vector activation on the rows.
//  * backward, C[r][d] += sum_s A(s,r) B[s][d] with RB x DB vector accumulators: one
//    broadcast of A and DB contiguous loads of B per step s:
//      gx[n][d] = sum_o ga[n][o] w[o][d]  (r = image, s = output, B = w),
//      gw[o][d] = sum_n ga[n][o] x[n][d]  (r = output, s = image of the slice, B = x), added
//      into the slice's accumulator: a fixed order, so bitwise independent of the threads.
//    Gauss-Newton: w^2 (a squared copy), x^2 (squared as loaded), f'^2.
#ifndef LENET5_SIMD_ISA
#include "cpu/portable.h"
#include "support/parallel.h"
#include "support/simd.h"

namespace lenet5 {
namespace cpu {

template <class T>
void portable_full_forward(const T* x, const T* w, const T* b, T* y, FullShape s, Act act, int nthreads) {
  const int64_t D = s.D, O = s.O;
  parallel_range(s.N, 4, nthreads, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T* xn = x + n * D;
      for (int64_t o = 0; o < O; ++o) {
        const T* wo = w + o * D;
        T dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += wo[d] * xn[d];
        y[n * O + o] = act::forward(dot + b[o], act);
      }
    }
  });
}

template <class T>
void portable_full_backward(const T* gy, const T* y, const T* x, const T* w, T* gx, T* gw, T* gb,
                            FullShape s, Act act, bool gauss_newton, int nthreads) {
  const int64_t D = s.D, O = s.O;
  std::vector<T> w2;
  const T* wk = maybe_square(w, O * D, gauss_newton, w2);
  std::vector<T> grads(O * D + O);
  batch_slices<T>(s.N, O * D + O, grads.data(), nthreads, [&](int64_t begin, int64_t end, T* acc) {
    std::vector<T> ga(O), x2;
    for (int64_t n = begin; n < end; ++n) {
      act_backward(gy + n * O, y ? y + n * O : nullptr, ga.data(), O, act, gauss_newton);
      const T* xn = maybe_square(x + n * D, D, gauss_newton, x2);
      T* gxn = gx ? gx + n * D : nullptr;
      if (gxn) std::fill(gxn, gxn + D, T(0));
      for (int64_t o = 0; o < O; ++o) {
        const T g = ga[o];
        acc[O * D + o] += g;
        T* gwo = acc + o * D;
        for (int64_t d = 0; d < D; ++d) gwo[d] += g * xn[d];
        if (gxn) {
          const T* wo = wk + o * D;
          for (int64_t d = 0; d < D; ++d) gxn[d] += g * wo[d];
        }
      }
    }
  });
  std::memcpy(gw, grads.data(), sizeof(T) * O * D);
  std::memcpy(gb, grads.data() + O * D, sizeof(T) * O);
}

}  // namespace cpu
}  // namespace lenet5

#define LENET5_SIMD_SELF "cpu/full.cpp"
#include "support/simd_pass.h"

namespace lenet5 {
namespace cpu {

template <class T>
void full_forward(const T* x, const T* w, const T* b, T* y, FullShape s, Act act, int nthreads) {
  if constexpr (std::is_same<T, float>::value)
    if (LENET5_SIMD_CALL(full_forward_simd, x, w, b, y, s, act, nthreads)) return;
  portable_full_forward(x, w, b, y, s, act, nthreads);
}

template <class T>
void full_backward(const T* gy, const T* y, const T* x, const T* w, T* gx, T* gw, T* gb, FullShape s,
                   Act act, bool gauss_newton, int nthreads) {
  if constexpr (std::is_same<T, float>::value)
    if (LENET5_SIMD_CALL(full_backward_simd, gy, y, x, w, gx, gw, gb, s, act, gauss_newton, nthreads)) return;
  portable_full_backward(gy, y, x, w, gx, gw, gb, s, act, gauss_newton, nthreads);
}

LENET5_INSTANTIATE_FLOAT_DOUBLE(full_forward)
LENET5_INSTANTIATE_FLOAT_DOUBLE(full_backward)

}  // namespace cpu
}  // namespace lenet5

#else  // ===== SIMD section (compiled once per ISA; V = Avx2, Avx2x2 or Avx512) =====

// y[m][o] = b[o] + dot(x[m], w[o]) for MB rows of x and OB rows of w.
template <class V, int MB, int OB>
void dot_block(const float* x, const float* w, const float* b, int64_t D, float* y, int64_t O) {
  constexpr int L = V::L;
  typename V::R acc[MB][OB];
#pragma GCC unroll 8
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 8
    for (int o = 0; o < OB; ++o) acc[m][o] = V::zero();
  int64_t d = 0;
  for (; d + L <= D; d += L) {
    typename V::R xv[MB];
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) xv[m] = V::load(x + m * D + d);
#pragma GCC unroll 8
    for (int o = 0; o < OB; ++o) {
      const typename V::R wv = V::load(w + o * D + d);
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m) acc[m][o] = V::fmadd(xv[m], wv, acc[m][o]);
    }
  }
  if (d < D) {
    const int n = int(D - d);
    typename V::R xv[MB];
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) xv[m] = V::loadn(x + m * D + d, n);
#pragma GCC unroll 8
    for (int o = 0; o < OB; ++o) {
      const typename V::R wv = V::loadn(w + o * D + d, n);
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m) acc[m][o] = V::fmadd(xv[m], wv, acc[m][o]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 8
    for (int o = 0; o < OB; ++o) y[m * O + o] = V::hsum(acc[m][o]) + b[o];
}

template <class V, int MB, int OB>
void dot_block_o(int ob, const float* x, const float* w, const float* b, int64_t D, float* y, int64_t O) {
  if (ob == OB) return dot_block<V, MB, OB>(x, w, b, D, y, O);
  if constexpr (OB > 1) dot_block_o<V, MB, OB - 1>(ob, x, w, b, D, y, O);
}
template <class V, int MB, int OB>
void dot_block_mo(int mb, int ob, const float* x, const float* w, const float* b, int64_t D, float* y,
                  int64_t O) {
  if (mb == MB) return dot_block_o<V, MB, OB>(ob, x, w, b, D, y, O);
  if constexpr (MB > 1) dot_block_mo<V, MB - 1, OB>(mb, ob, x, w, b, D, y, O);
}

template <class V> struct FullTiling {  // register blocking per vector type
  static constexpr int MB = V::kAcc >= 24 ? 4 : V::kAcc >= 12 ? 3 : 2;  // forward images
  static constexpr int OB = V::kAcc / MB;                                // forward outputs
  static constexpr int RB = V::kAcc >= 24 ? 8 : V::kAcc >= 12 ? 6 : 3;   // backward rows
  static constexpr int DB = 2;                                           // backward d vectors
};

template <class V>
void full_forward_simd(const float* x, const float* w, const float* b, float* y, FullShape s, Act act,
                       int nthreads) {
  constexpr int MB = FullTiling<V>::MB, OB = FullTiling<V>::OB;
  const int64_t N = s.N, D = s.D, O = s.O;
  const int64_t nblocks = (N + MB - 1) / MB;
  parallel_range(nblocks, 1, nthreads, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t n0 = blk * MB;
      const int mb = int(std::min<int64_t>(MB, N - n0));
      for (int64_t o0 = 0; o0 < O; o0 += OB) {
        const int ob = int(std::min<int64_t>(OB, O - o0));
        dot_block_mo<V, MB, OB>(mb, ob, x + n0 * D, w + o0 * D, b + o0, D, y + n0 * O + o0, O);
      }
      v_act_array<V>(y + n0 * O, y + n0 * O, mb * O, act);
    }
  });
}

// C[r][0:dn] (+)= sum_{s<S} A[s*as + r*ar] * B[s*bs + 0:dn] for RB rows, dn <= DB*L columns.
template <class V, int RB, int DB, bool FULL>
void gemm_block(const float* A, int64_t as, int64_t ar, const float* B, int64_t bs, int64_t S, int dn,
                bool squareB, float* C, int64_t cs, bool accumulate) {
  constexpr int L = V::L;
  typename V::R acc[RB][DB];
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < DB; ++j) acc[r][j] = V::zero();
  int cnt[DB];
#pragma GCC unroll 4
  for (int j = 0; j < DB; ++j) cnt[j] = std::max(0, std::min(L, dn - j * L));
  for (int64_t s = 0; s < S; ++s) {
    typename V::R bv[DB];
    const float* bsrc = B + s * bs;
#pragma GCC unroll 4
    for (int j = 0; j < DB; ++j) {
      bv[j] = FULL ? V::load(bsrc + j * L) : V::loadn(bsrc + j * L, cnt[j]);
      if (squareB) bv[j] = V::mul(bv[j], bv[j]);
    }
    const float* asrc = A + s * as;
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) {
      const typename V::R av = V::set1(asrc[r * ar]);
#pragma GCC unroll 4
      for (int j = 0; j < DB; ++j) acc[r][j] = V::fmadd(av, bv[j], acc[r][j]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < DB; ++j) {
      float* c = C + r * cs + j * L;
      if (FULL) {
        V::store(c, accumulate ? V::add(V::load(c), acc[r][j]) : acc[r][j]);
      } else if (cnt[j] > 0) {
        V::storen(c, cnt[j], accumulate ? V::add(V::loadn(c, cnt[j]), acc[r][j]) : acc[r][j]);
      }
    }
}

template <class V, int RB, int DB>
void gemm_rows(int rb, const float* A, int64_t as, int64_t ar, const float* B, int64_t bs, int64_t S,
               int dn, bool squareB, float* C, int64_t cs, bool accumulate) {
  if (rb == RB) {
    if (dn == DB * V::L) return gemm_block<V, RB, DB, true>(A, as, ar, B, bs, S, dn, squareB, C, cs, accumulate);
    return gemm_block<V, RB, DB, false>(A, as, ar, B, bs, S, dn, squareB, C, cs, accumulate);
  }
  if constexpr (RB > 1) gemm_rows<V, RB - 1, DB>(rb, A, as, ar, B, bs, S, dn, squareB, C, cs, accumulate);
}

// C[R x D] (+)= A^T B over S steps, A(s, r) = A[s*as + r*ar], B[s][d] = B[s*bs + d].
template <class V>
void gemm(const float* A, int64_t as, int64_t ar, int64_t R, const float* B, int64_t bs, int64_t S,
          int64_t D, bool squareB, float* C, int64_t cs, bool accumulate) {
  constexpr int RB = FullTiling<V>::RB, DB = FullTiling<V>::DB, DW = DB * V::L;
  for (int64_t r0 = 0; r0 < R; r0 += RB) {
    const int rb = int(std::min<int64_t>(RB, R - r0));
    for (int64_t d0 = 0; d0 < D; d0 += DW) {
      const int dn = int(std::min<int64_t>(DW, D - d0));
      gemm_rows<V, RB, DB>(rb, A + r0 * ar, as, ar, B + d0, bs, S, dn, squareB, C + r0 * cs + d0, cs, accumulate);
    }
  }
}

template <class V>
void full_backward_simd(const float* gy, const float* y, const float* x, const float* w, float* gx,
                        float* gw, float* gb, FullShape s, Act act, bool gn, int nthreads) {
  constexpr int L = V::L;
  const int64_t N = s.N, D = s.D, O = s.O;
  std::vector<float> w2;
  const float* wk = w;
  if (gn) {
    w2.resize(O * D);
    copy_square<V>(w, w2.data(), O * D);
    wk = w2.data();
  }
  std::vector<float> ga(N * O);
  std::vector<float> grads(O * D + O);
  batch_slices<float>(N, O * D + O, grads.data(), nthreads, [&](int64_t begin, int64_t end, float* acc) {
    const int64_t m = end - begin;
    float* gas = ga.data() + begin * O;
    v_act_back_array<V>(gy + begin * O, y ? y + begin * O : nullptr, gas, m * O, act, gn);
    // gb[o] += sum_n ga[n][o]
    for (int64_t o0 = 0; o0 < O; o0 += L) {
      const int cnt = int(std::min<int64_t>(L, O - o0));
      typename V::R sum = V::zero();
      for (int64_t n = 0; n < m; ++n) sum = V::add(sum, V::loadn(gas + n * O + o0, cnt));
      float* a = acc + O * D + o0;
      V::storen(a, cnt, V::add(V::loadn(a, cnt), sum));
    }
    // gw[o][d] += sum_n ga[n][o] x[n][d]: rows r = o, steps s = n
    gemm<V>(gas, O, 1, O, x + begin * D, D, m, D, gn, acc, D, true);
    // gx[n][d] = sum_o ga[n][o] wk[o][d]: rows r = n, steps s = o
    if (gx) gemm<V>(gas, 1, O, m, wk, D, O, D, false, gx + begin * D, D, false);
  });
  std::memcpy(gw, grads.data(), sizeof(float) * O * D);
  std::memcpy(gb, grads.data() + O * D, sizeof(float) * O);
}

#endif
