// maxpool2x2.cpp — the modern variant's 2x2 max-pooling, forward and backward.
//
// Layout: x[N,C,H,W] -> y[N,C,H/2,W/2]; a trailing odd row/column is ignored.
// Trick: no index tensor is stored; backward finds the first element of each window (row-major
// order) equal to y again, and routes the gradient there, like the forward's tie-breaking.
// float32 SIMD: L outputs at a time; the two input rows' 2L values are deinterleaved into the
// window's four corners a b / c d (vectors), the max is a chain of compare+blend in the same
// order as the scalar code (so NaN and ties behave identically); backward builds the
// first-match masks a, b&~a, c&~(a|b), d&~(a|b|c) (a when nothing matches) and interleaves
// the masked gradients back onto the two rows. Row tails use masked loads/stores.
#ifndef LENET5_SIMD_ISA
#include "support/parallel.h"
#include "support/simd.h"

namespace lenet5 {
namespace cpu {

template <class T>
void portable_maxpool_forward(const T* x, T* y, PoolShape s, int nthreads) {
  const int64_t H = s.H, W = s.W, Ho = s.out_h(), Wo = s.out_w();
  parallel_tasks(s.N * s.C, nthreads, [&](int64_t p) {
    const T* xp = x + p * H * W;
    T* yp = y + p * Ho * Wo;
    for (int64_t i = 0; i < Ho; ++i)
      for (int64_t j = 0; j < Wo; ++j) {
        const T* r = xp + 2 * i * W + 2 * j;
        T m = r[0];
        for (const T v : {r[1], r[W], r[W + 1]})
          if (v > m || v != v) m = v;  // NaN propagates, like torch
        yp[i * Wo + j] = m;
      }
  });
}

template <class T>
void portable_maxpool_backward(const T* gy, const T* x, const T* y, T* gx, PoolShape s, int nthreads) {
  const int64_t H = s.H, W = s.W, Ho = s.out_h(), Wo = s.out_w();
  parallel_tasks(s.N * s.C, nthreads, [&](int64_t p) {
    const T* xp = x + p * H * W;
    T* gxp = gx + p * H * W;
    std::fill(gxp, gxp + H * W, T(0));
    for (int64_t i = 0; i < Ho; ++i)
      for (int64_t j = 0; j < Wo; ++j) {
        const int64_t at[4] = {2 * i * W + 2 * j, 2 * i * W + 2 * j + 1, (2 * i + 1) * W + 2 * j,
                               (2 * i + 1) * W + 2 * j + 1};
        const T m = y[p * Ho * Wo + i * Wo + j];
        int64_t hit = at[0];
        for (int q = 0; q < 4; ++q)
          if (xp[at[q]] == m || (m != m && xp[at[q]] != xp[at[q]])) { hit = at[q]; break; }
        gxp[hit] = gy[p * Ho * Wo + i * Wo + j];
      }
  });
}

}  // namespace cpu
}  // namespace lenet5

#define LENET5_SIMD_SELF "cpu/maxpool2x2.cpp"
#include "support/simd_pass.h"

namespace lenet5 {
namespace cpu {

template <class T>
void maxpool2x2_forward(const T* x, T* y, PoolShape s, int nthreads) {
  if constexpr (std::is_same<T, float>::value)
    if (LENET5_SIMD_CALL(maxpool_forward_simd, x, y, s, nthreads)) return;
  portable_maxpool_forward(x, y, s, nthreads);
}

template <class T>
void maxpool2x2_backward(const T* gy, const T* x, const T* y, T* gx, PoolShape s, int nthreads) {
  if constexpr (std::is_same<T, float>::value)
    if (LENET5_SIMD_CALL(maxpool_backward_simd, gy, x, y, gx, s, nthreads)) return;
  portable_maxpool_backward(gy, x, y, gx, s, nthreads);
}

LENET5_INSTANTIATE_FLOAT_DOUBLE(maxpool2x2_forward)
LENET5_INSTANTIATE_FLOAT_DOUBLE(maxpool2x2_backward)

}  // namespace cpu
}  // namespace lenet5

#else  // ===== SIMD section (compiled once per ISA; V = Avx2, Avx2x2 or Avx512) =====

// The window corners a = x[2i][2j], b = x[2i][2j+1], c = x[2i+1][2j], d = x[2i+1][2j+1] for
// outputs j .. j+n-1.
template <class V>
LENET5_AI void corners(const float* r0, const float* r1, int64_t j, int n, typename V::R& a,
                       typename V::R& b, typename V::R& c, typename V::R& d) {
  constexpr int L = V::L;
  const int n0 = std::min(2 * n, L), n1 = std::max(0, 2 * n - L);
  const bool full = n == L;
  V::deinterleave(full ? V::load(r0 + 2 * j) : V::loadn(r0 + 2 * j, n0),
                  full ? V::load(r0 + 2 * j + L) : V::loadn(r0 + 2 * j + L, n1), a, b);
  V::deinterleave(full ? V::load(r1 + 2 * j) : V::loadn(r1 + 2 * j, n0),
                  full ? V::load(r1 + 2 * j + L) : V::loadn(r1 + 2 * j + L, n1), c, d);
}

template <class V>
void maxpool_forward_simd(const float* x, float* y, PoolShape s, int nthreads) {
  constexpr int L = V::L;
  const int64_t H = s.H, W = s.W, Ho = s.out_h(), Wo = s.out_w();
  parallel_range(s.N * s.C, 8, nthreads, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const float* xp = x + p * H * W;
      float* yp = y + p * Ho * Wo;
      for (int64_t i = 0; i < Ho; ++i)
        for (int64_t j = 0; j < Wo; j += L) {
          const int n = int(std::min<int64_t>(L, Wo - j));
          typename V::R a, b, c, d;
          corners<V>(xp + 2 * i * W, xp + (2 * i + 1) * W, j, n, a, b, c, d);
          typename V::R m = a;
          for (const typename V::R v : {b, c, d}) m = V::select(V::mor(V::gt(v, m), V::isnan(v)), v, m);
          if (n == L) V::store(yp + i * Wo + j, m);
          else V::storen(yp + i * Wo + j, n, m);
        }
    }
  });
}

template <class V>
void maxpool_backward_simd(const float* gy, const float* x, const float* y, float* gx, PoolShape s,
                           int nthreads) {
  constexpr int L = V::L;
  const int64_t H = s.H, W = s.W, Ho = s.out_h(), Wo = s.out_w();
  parallel_range(s.N * s.C, 8, nthreads, [&](int64_t begin, int64_t end) {
    const typename V::M all = V::eq(V::zero(), V::zero());
    for (int64_t p = begin; p < end; ++p) {
      const float* xp = x + p * H * W;
      const float* yp = y + p * Ho * Wo;
      const float* gyp = gy + p * Ho * Wo;
      float* gxp = gx + p * H * W;
      for (int64_t i = 0; i < Ho; ++i) {
        for (int64_t j = 0; j < Wo; j += L) {
          const int n = int(std::min<int64_t>(L, Wo - j));
          const bool full = n == L;
          typename V::R a, b, c, d;
          corners<V>(xp + 2 * i * W, xp + (2 * i + 1) * W, j, n, a, b, c, d);
          const typename V::R m = full ? V::load(yp + i * Wo + j) : V::loadn(yp + i * Wo + j, n);
          const typename V::R g = full ? V::load(gyp + i * Wo + j) : V::loadn(gyp + i * Wo + j, n);
          const typename V::M mnan = V::isnan(m);
          auto hit = [&](typename V::R v) { return V::mor(V::eq(v, m), V::mand(mnan, V::isnan(v))); };
          const typename V::M ha = hit(a), hb = hit(b), hc = hit(c), hd = hit(d);
          const typename V::M ab = V::mor(ha, hb), abc = V::mor(ab, hc);
          const typename V::M sa = V::mor(ha, V::mandnot(V::mor(abc, hd), all));
          const typename V::M sb = V::mandnot(ha, hb), sc = V::mandnot(ab, hc), sd = V::mandnot(abc, hd);
          typename V::R lo, hi;
          float* q0 = gxp + 2 * i * W + 2 * j;
          const int n0 = std::min(2 * n, L), n1 = std::max(0, 2 * n - L);
          V::interleave(V::maskz(sa, g), V::maskz(sb, g), lo, hi);
          if (full) { V::store(q0, lo); V::store(q0 + L, hi); }
          else { V::storen(q0, n0, lo); V::storen(q0 + L, n1, hi); }
          V::interleave(V::maskz(sc, g), V::maskz(sd, g), lo, hi);
          if (full) { V::store(q0 + W, lo); V::store(q0 + W + L, hi); }
          else { V::storen(q0 + W, n0, lo); V::storen(q0 + W + L, n1, hi); }
        }
        if (W & 1) gxp[2 * i * W + W - 1] = gxp[(2 * i + 1) * W + W - 1] = 0.0f;
      }
      if (H & 1) std::fill(gxp + (H - 1) * W, gxp + H * W, 0.0f);
    }
  });
}

#endif
