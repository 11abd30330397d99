// subsample2x2.cpp — S2/S4: trainable 2x2 subsampling, forward and backward.
//
// y[n,c,i,j] = act(coef[c] * s + bias[c]), s = sum of the 2x2 window x[n,c,2i:2i+2,2j:2j+2].
// Layout: x[N,C,H,W] -> y[N,C,H/2,W/2]; a trailing odd row/column is ignored (gradient 0).
// Trick: one task per image; the window sum is recomputed in backward (4 adds) instead of
// being stored, and coefficient/bias gradients go through the fixed batch slices.
// float32 SIMD: per output row, L outputs at a time from 2L inputs of rows 2i and 2i+1: add
// the rows, deinterleave even/odd columns (two shuffles + lane permutes), add: the window
// sums in order; coef*s + bias and the vector tanh, masked loads/stores for the row tail.
// Backward: ga = gy f'(y) as vectors, coef/bias gradients as vector accumulators per plane (one
// horizontal sum per plane), gx = coef*ga interleaved with itself onto both input rows.
#ifndef LENET5_SIMD_ISA
#include "cpu/portable.h"
#include "support/parallel.h"
#include "support/simd.h"

namespace lenet5 {
namespace cpu {
namespace {
template <class T> inline T window_sum(const T* x, int64_t W, int64_t i, int64_t j) {
  const T* r0 = x + 2 * i * W + 2 * j;
  return r0[0] + r0[1] + r0[W] + r0[W + 1];
}
}  // namespace

template <class T>
void portable_subsample_forward(const T* x, const T* coef, const T* bias, T* y, PoolShape s, Act act,
                                int nthreads) {
  const int64_t C = s.C, H = s.H, W = s.W, Ho = s.out_h(), Wo = s.out_w();
  parallel_tasks(s.N, nthreads, [&](int64_t n) {
    for (int64_t c = 0; c < C; ++c) {
      const T* xc = x + (n * C + c) * H * W;
      T* yc = y + (n * C + c) * Ho * Wo;
      for (int64_t i = 0; i < Ho; ++i)
        for (int64_t j = 0; j < Wo; ++j)
          yc[i * Wo + j] = act::forward(coef[c] * window_sum(xc, W, i, j) + bias[c], act);
    }
  });
}

template <class T>
void portable_subsample_backward(const T* gy, const T* y, const T* x, const T* coef, T* gx, T* gcoef,
                                 T* gbias, PoolShape s, Act act, bool gauss_newton, int nthreads) {
  const int64_t C = s.C, H = s.H, W = s.W, Ho = s.out_h(), Wo = s.out_w(), out = C * Ho * Wo;
  std::vector<T> grads(2 * C);
  batch_slices<T>(s.N, 2 * C, grads.data(), nthreads, [&](int64_t begin, int64_t end, T* acc) {
    std::vector<T> ga(out);
    for (int64_t n = begin; n < end; ++n) {
      act_backward(gy + n * out, y ? y + n * out : nullptr, ga.data(), out, act, gauss_newton);
      for (int64_t c = 0; c < C; ++c) {
        const T* xc = x + (n * C + c) * H * W;
        const T* gac = ga.data() + c * Ho * Wo;
        const T k = gauss_newton ? coef[c] * coef[c] : coef[c];
        T sc = 0, sb = 0;
        for (int64_t i = 0; i < Ho; ++i)
          for (int64_t j = 0; j < Wo; ++j) {
            const T win = window_sum(xc, W, i, j), g = gac[i * Wo + j];
            sc += g * (gauss_newton ? win * win : win);
            sb += g;
          }
        acc[c] += sc;
        acc[C + c] += sb;
        if (!gx) continue;
        T* gxc = gx + (n * C + c) * H * W;
        for (int64_t r = 0; r < H; ++r)
          for (int64_t q = 0; q < W; ++q)
            gxc[r * W + q] = (r / 2 < Ho && q / 2 < Wo) ? k * gac[(r / 2) * Wo + q / 2] : T(0);
      }
    }
  });
  std::memcpy(gcoef, grads.data(), sizeof(T) * C);
  std::memcpy(gbias, grads.data() + C, sizeof(T) * C);
}

}  // namespace cpu
}  // namespace lenet5

#define LENET5_SIMD_SELF "cpu/subsample2x2.cpp"
#include "support/simd_pass.h"

namespace lenet5 {
namespace cpu {

template <class T>
void subsample2x2_forward(const T* x, const T* coef, const T* bias, T* y, PoolShape s, Act act, int nthreads) {
  if constexpr (std::is_same<T, float>::value)
    if (LENET5_SIMD_CALL(subsample_forward_simd, x, coef, bias, y, s, act, nthreads)) return;
  portable_subsample_forward(x, coef, bias, y, s, act, nthreads);
}

template <class T>
void subsample2x2_backward(const T* gy, const T* y, const T* x, const T* coef, T* gx, T* gcoef, T* gbias,
                           PoolShape s, Act act, bool gauss_newton, int nthreads) {
  if constexpr (std::is_same<T, float>::value)
    if (LENET5_SIMD_CALL(subsample_backward_simd, gy, y, x, coef, gx, gcoef, gbias, s, act, gauss_newton,
                         nthreads))
      return;
  portable_subsample_backward(gy, y, x, coef, gx, gcoef, gbias, s, act, gauss_newton, nthreads);
}

LENET5_INSTANTIATE_FLOAT_DOUBLE(subsample2x2_forward)
LENET5_INSTANTIATE_FLOAT_DOUBLE(subsample2x2_backward)

}  // namespace cpu
}  // namespace lenet5

#else  // ===== SIMD section (compiled once per ISA; V = Avx2, Avx2x2 or Avx512) =====

// Window sums of outputs j .. j+n-1 (n <= L) of output row i: rows r0, r1 of the input.
template <class V>
LENET5_AI typename V::R window_sums(const float* r0, const float* r1, int64_t j, int n) {
  constexpr int L = V::L;
  typename V::R a, b, e, o;
  if (n == L) {
    a = V::add(V::load(r0 + 2 * j), V::load(r1 + 2 * j));
    b = V::add(V::load(r0 + 2 * j + L), V::load(r1 + 2 * j + L));
  } else {
    const int n0 = std::min(2 * n, L), n1 = std::max(0, 2 * n - L);
    a = V::add(V::loadn(r0 + 2 * j, n0), V::loadn(r1 + 2 * j, n0));
    b = V::add(V::loadn(r0 + 2 * j + L, n1), V::loadn(r1 + 2 * j + L, n1));
  }
  V::deinterleave(a, b, e, o);
  return V::add(e, o);
}

template <class V>
void subsample_forward_simd(const float* x, const float* coef, const float* bias, float* y, PoolShape s,
                            Act act, int nthreads) {
  constexpr int L = V::L;
  const int64_t C = s.C, H = s.H, W = s.W, Ho = s.out_h(), Wo = s.out_w();
  parallel_range(s.N * C, 8, nthreads, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % C;
      const typename V::R k = V::set1(coef[c]), b = V::set1(bias[c]);
      const float* xp = x + p * H * W;
      float* yp = y + p * Ho * Wo;
      for (int64_t i = 0; i < Ho; ++i) {
        const float* r0 = xp + 2 * i * W;
        for (int64_t j = 0; j < Wo; j += L) {
          const int n = int(std::min<int64_t>(L, Wo - j));
          const typename V::R v = v_act<V>(V::fmadd(k, window_sums<V>(r0, r0 + W, j, n), b), act);
          if (n == L) V::store(yp + i * Wo + j, v);
          else V::storen(yp + i * Wo + j, n, v);
        }
      }
    }
  });
}

template <class V>
void subsample_backward_simd(const float* gy, const float* y, const float* x, const float* coef,
                             float* gx, float* gcoef, float* gbias, PoolShape s, Act act, bool gn,
                             int nthreads) {
  constexpr int L = V::L;
  const int64_t C = s.C, H = s.H, W = s.W, Ho = s.out_h(), Wo = s.out_w();
  std::vector<float> grads(2 * C);
  batch_slices<float>(s.N, 2 * C, grads.data(), nthreads, [&](int64_t begin, int64_t end, float* acc) {
    for (int64_t n = begin; n < end; ++n)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t p = n * C + c;
        const float* xp = x + p * H * W;
        const float* gyp = gy + p * Ho * Wo;
        const float* yp = y ? y + p * Ho * Wo : nullptr;
        float* gxp = gx ? gx + p * H * W : nullptr;
        const typename V::R k = V::set1(gn ? coef[c] * coef[c] : coef[c]);
        typename V::R sc = V::zero(), sb = V::zero();
        for (int64_t i = 0; i < Ho; ++i) {
          const float* r0 = xp + 2 * i * W;
          for (int64_t j = 0; j < Wo; j += L) {
            const int n = int(std::min<int64_t>(L, Wo - j));
            const int64_t at = i * Wo + j;
            typename V::R g = n == L ? V::load(gyp + at) : V::loadn(gyp + at, n);
            if (act != kIdentity) g = v_act_back<V>(g, n == L ? V::load(yp + at) : V::loadn(yp + at, n), act, gn);
            const typename V::R win = window_sums<V>(r0, r0 + W, j, n);
            sc = V::fmadd(g, gn ? V::mul(win, win) : win, sc);
            sb = V::add(sb, g);
            if (!gxp) continue;
            const typename V::R g2 = V::mul(k, g);
            typename V::R lo, hi;
            V::interleave(g2, g2, lo, hi);
            float* q0 = gxp + 2 * i * W + 2 * j;
            if (n == L) {
              V::store(q0, lo); V::store(q0 + L, hi);
              V::store(q0 + W, lo); V::store(q0 + W + L, hi);
            } else {
              const int n0 = std::min(2 * n, L), n1 = std::max(0, 2 * n - L);
              V::storen(q0, n0, lo); V::storen(q0 + L, n1, hi);
              V::storen(q0 + W, n0, lo); V::storen(q0 + W + L, n1, hi);
            }
          }
          if (gxp && (W & 1)) gxp[2 * i * W + W - 1] = gxp[(2 * i + 1) * W + W - 1] = 0.0f;
        }
        if (gxp && (H & 1)) std::fill(gxp + (H - 1) * W, gxp + H * W, 0.0f);
        acc[c] += V::hsum(sc);
        acc[C + c] += V::hsum(sb);
      }
  });
  std::memcpy(gcoef, grads.data(), sizeof(float) * C);
  std::memcpy(gbias, grads.data() + C, sizeof(float) * C);
}

#endif
