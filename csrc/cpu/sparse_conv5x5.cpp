// sparse_conv5x5.cpp — C3: 5x5 convolution through a connection table, forward and backward.
// Also every dense 5x5 convolution on maps larger than 5x5 (conv5x5.cpp passes the full table).
//
// Layout: x[N,C,H,W], y[N,O,H-4,W-4]; the table is CSR: output map o sums kernels
// k in [offsets[o], offsets[o+1]), kernel k reads input map inputs[k]; w[K,5,5], b[O].
// For the paper's Table I, K = 60 and the layer has 60*25 + 16 = 1,516 parameters.
// Portable trick: only connected (output, input) pairs are visited — no masked dense
// convolution — each image is one task, and the planes use the loops of conv5x5_plane.h.
//
// float32 SIMD trick, "wide rows": an output map is computed at the wide positions
// p = oy*W + ox for p < (Ho-1)*W + Wo, i.e. on full input rows, so that output vector v
// (positions vL..vL+L-1) needs, for tap (ky,kx), the contiguous input x[vL + ky*W + kx ...].
// The W-Wo junk columns per row are computed and dropped (lane use Wo/W: 88% for C1, 73%
// for C3's 10-wide rows) — no transposes, any H, W >= 5, batch 1 as fast per image as any.
// Each image's input planes are first copied into a zero-padded scratch so the last vector
// may read past the plane. Micro-kernel: R <= kAcc accumulator vectors (R*L consecutive
// positions), one broadcast per tap, R FMAs with the input as memory operand; bias, the
// activation (vector tanh) and the store happen once per block.
// Backward, per batch slice, in chunks of up to 8 images:
//  * ga = gy f'(y) (vector), gb += plane sums;
//  * gw[k][tap] = sum_p gaw[o][p] x[c][p + ky*W + kx], gaw = ga on wide rows with zeroed junk
//    columns: groups of up to kAcc+1 taps held as vector accumulators over all the chunk's
//    images and positions, then one horizontal sum per tap and chunk into the slice's
//    accumulator (fixed order: bitwise independent of the thread count);
//  * gx = full correlation of ga with each kernel = the forward micro-kernel on ga padded by 4
//    zeros all round ((H+4)x(W+4) planes), kernels flipped, through the transposed table.
// Gauss-Newton: squared weights, squared inputs (in the scratch copy), f'^2.
#ifndef LENET5_SIMD_ISA
#include "cpu/conv5x5_plane.h"
#include "cpu/simd.h"

namespace lenet5 {
namespace cpu {

template <class T>
void portable_sparse_forward(const T* x, const T* w, const T* b, const int32_t* offsets,
                             const int32_t* inputs, T* y, int64_t N, int64_t C, int64_t H, int64_t W,
                             int64_t O, int act, int nthreads) {
  const int64_t in = C * H * W, plane = (H - 4) * (W - 4), out = O * plane;
  parallel_tasks(N, nthreads, [&](int64_t n) {
    const T* xn = x + n * in;
    for (int64_t o = 0; o < O; ++o) {
      T* yo = y + n * out + o * plane;
      std::fill(yo, yo + plane, b[o]);
      for (int64_t k = offsets[o]; k < offsets[o + 1]; ++k)
        plane_correlate_accumulate(xn + inputs[k] * H * W, w + k * 25, yo, H, W);
      act_forward_inplace(yo, plane, act);
    }
  });
}

template <class T>
void portable_sparse_backward(const T* gy, const T* y, const T* x, const T* w, const int32_t* offsets,
                              const int32_t* inputs, T* gx, T* gw, T* gb, int64_t N, int64_t C,
                              int64_t H, int64_t W, int64_t O, int act, bool gauss_newton,
                              int nthreads) {
  const int64_t in = C * H * W, plane = (H - 4) * (W - 4), out = O * plane;
  const int64_t K = offsets[O], nw = K * 25;
  std::vector<T> w2;
  const T* wk = maybe_square(w, nw, gauss_newton, w2);
  std::vector<T> grads(nw + O);
  batch_slices<T>(N, nw + O, grads.data(), nthreads, [&](int64_t begin, int64_t end, T* acc) {
    std::vector<T> ga(out), x2;
    for (int64_t n = begin; n < end; ++n) {
      act_backward(gy + n * out, y ? y + n * out : nullptr, ga.data(), out, act, gauss_newton);
      const T* xn = maybe_square(x + n * in, in, gauss_newton, x2);
      T* gxn = gx ? gx + n * in : nullptr;
      if (gxn) std::fill(gxn, gxn + in, T(0));
      for (int64_t o = 0; o < O; ++o) {
        const T* gao = ga.data() + o * plane;
        acc[nw + o] += plane_sum(gao, plane);
        for (int64_t k = offsets[o]; k < offsets[o + 1]; ++k)
          plane_correlate_backward(gao, xn + inputs[k] * H * W, wk + k * 25, acc + k * 25,
                                   gxn ? gxn + inputs[k] * H * W : nullptr, H, W);
      }
    }
  });
  std::memcpy(gw, grads.data(), sizeof(T) * nw);
  std::memcpy(gb, grads.data() + nw, sizeof(T) * O);
}

}  // namespace cpu
}  // namespace lenet5

#define LENET5_SIMD_SELF "cpu/sparse_conv5x5.cpp"
#include "cpu/simd_pass.h"

namespace lenet5 {
namespace cpu {
namespace {
bool simd_forward(const float* x, const float* w, const float* b, const int32_t* offsets,
                  const int32_t* inputs, float* y, int64_t N, int64_t C, int64_t H, int64_t W,
                  int64_t O, int act, int nthreads) {
  LENET5_SIMD_CALL(sparse_forward_simd, x, w, b, offsets, inputs, y, N, C, H, W, O, act, nthreads);
}
bool simd_backward(const float* gy, const float* y, const float* x, const float* w,
                   const int32_t* offsets, const int32_t* inputs, float* gx, float* gw, float* gb,
                   int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int act, bool gn,
                   int nthreads) {
  LENET5_SIMD_CALL(sparse_backward_simd, gy, y, x, w, offsets, inputs, gx, gw, gb, N, C, H, W, O,
                   act, gn, nthreads);
}
}  // namespace

template <class T>
void sparse_conv5x5_forward(const T* x, const T* w, const T* b, const int32_t* offsets,
                            const int32_t* inputs, T* y, int64_t N, int64_t C, int64_t H, int64_t W,
                            int64_t O, int act, int nthreads) {
  if constexpr (std::is_same<T, float>::value)
    if (simd_forward(x, w, b, offsets, inputs, y, N, C, H, W, O, act, nthreads)) return;
  portable_sparse_forward(x, w, b, offsets, inputs, y, N, C, H, W, O, act, nthreads);
}

template <class T>
void sparse_conv5x5_backward(const T* gy, const T* y, const T* x, const T* w, const int32_t* offsets,
                             const int32_t* inputs, T* gx, T* gw, T* gb, int64_t N, int64_t C,
                             int64_t H, int64_t W, int64_t O, int act, bool gauss_newton,
                             int nthreads) {
  if constexpr (std::is_same<T, float>::value)
    if (simd_backward(gy, y, x, w, offsets, inputs, gx, gw, gb, N, C, H, W, O, act, gauss_newton,
                      nthreads))
      return;
  portable_sparse_backward(gy, y, x, w, offsets, inputs, gx, gw, gb, N, C, H, W, O, act,
                           gauss_newton, nthreads);
}

#define LENET5_INSTANTIATE(T)                                                                    \
  template void sparse_conv5x5_forward<T>(const T*, const T*, const T*, const int32_t*,          \
                                          const int32_t*, T*, int64_t, int64_t, int64_t, int64_t, \
                                          int64_t, int, int);                                     \
  template void sparse_conv5x5_backward<T>(const T*, const T*, const T*, const T*, const int32_t*, \
                                           const int32_t*, T*, T*, T*, int64_t, int64_t, int64_t, \
                                           int64_t, int64_t, int, bool, int);
LENET5_INSTANTIATE(float)
LENET5_INSTANTIATE(double)
#undef LENET5_INSTANTIATE

}  // namespace cpu
}  // namespace lenet5

#else  // ===== SIMD section (compiled once per ISA; V = Avx2, Avx2x2 or Avx512) =====

// R output vectors from v0 on, over a list of nk (input plane, 5x5 kernel) pairs whose planes
// have row stride Wx: out[p] = act(bias + sum_k sum_taps kern[k][tap] plane[k][p + ky*Wx + kx]).
template <class V, int R>
void conv_block(const float* const* planes, const float* const* kernels, int64_t nk, int64_t Wx,
                int64_t v0, float bias, int act, float* out) {
  constexpr int L = V::L;
  typename V::R acc[R];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) acc[r] = V::set1(bias);
  for (int64_t k = 0; k < nk; ++k) {
    const float* xk = planes[k] + v0 * L;
    const float* wk = kernels[k];
    for (int ky = 0; ky < 5; ++ky) {
      const float* xr = xk + ky * Wx;
#pragma GCC unroll 5
      for (int kx = 0; kx < 5; ++kx) {
        const typename V::R wv = V::set1(wk[ky * 5 + kx]);
#pragma GCC unroll 32
        for (int r = 0; r < R; ++r) acc[r] = V::fmadd(wv, V::load(xr + kx + r * L), acc[r]);
      }
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) V::store(out + (v0 + r) * L, v_act<V>(acc[r], act));
}

template <class V, int R = 1>
void conv_block_n(int n, const float* const* planes, const float* const* kernels, int64_t nk,
                  int64_t Wx, int64_t v0, float bias, int act, float* out) {
  if constexpr (R <= V::kAcc) {
    if (n == R) return conv_block<V, R>(planes, kernels, nk, Wx, v0, bias, act, out);
    conv_block_n<V, R + 1>(n, planes, kernels, nk, Wx, v0, bias, act, out);
  }
}

// nv output vectors (wide positions 0 .. nv*L-1) in blocks of at most kAcc, split evenly.
template <class V>
void conv_wide(const float* const* planes, const float* const* kernels, int64_t nk, int64_t Wx,
               int64_t nv, float bias, int act, float* out) {
  const int64_t nb = (nv + V::kAcc - 1) / V::kAcc;
  int64_t v0 = 0;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t rem = nv - v0, left = nb - b, R = (rem + left - 1) / left;
    conv_block_n<V>(int(R), planes, kernels, nk, Wx, v0, bias, act, out);
    v0 += R;
  }
}

// Rows 0..rows-1 of width `width` from a wide buffer of row stride `stride` into dst.
inline void compact_rows(const float* wide, int64_t stride, float* dst, int64_t rows, int64_t width) {
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * width, wide + r * stride, sizeof(float) * width);
}

// Copies n values, squared when gn.
template <class V> inline void copy_maybe_square(const float* src, float* dst, int64_t n, bool gn) {
  if (gn) copy_square<V>(src, dst, n);
  else std::memcpy(dst, src, sizeof(float) * n);
}

inline int64_t round_up(int64_t a, int64_t m) { return (a + m - 1) / m * m; }

template <class V>
void sparse_forward_simd(const float* x, const float* w, const float* b, const int32_t* offsets,
                         const int32_t* inputs, float* y, int64_t N, int64_t C, int64_t H, int64_t W,
                         int64_t O, int act, int nthreads) {
  constexpr int L = V::L;
  const int64_t Ho = H - 4, Wo = W - 4, HW = H * W;
  const int64_t P = (Ho - 1) * W + Wo, nv = (P + L - 1) / L;
  const int64_t HWp = round_up(HW + L, 16);  // zero pad: the last vector reads past the plane
  const int64_t K = offsets[O];
  parallel_range(N, 1, nthreads, [&](int64_t begin, int64_t end) {
    std::vector<float> xs(C * HWp, 0.0f), yw(nv * L);
    std::vector<const float*> planes(K), kernels(K);
    for (int64_t k = 0; k < K; ++k) {
      planes[k] = xs.data() + inputs[k] * HWp;
      kernels[k] = w + k * 25;
    }
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t c = 0; c < C; ++c) std::memcpy(xs.data() + c * HWp, x + (n * C + c) * HW, sizeof(float) * HW);
      for (int64_t o = 0; o < O; ++o) {
        conv_wide<V>(planes.data() + offsets[o], kernels.data() + offsets[o], offsets[o + 1] - offsets[o],
                     W, nv, b[o], act, yw.data());
        compact_rows(yw.data(), W, y + (n * O + o) * Ho * Wo, Ho, Wo);
      }
    }
  });
}

// acc[tap] += sum over the chunk's images i and vectors v of g[i][v] * x[i][v + ky*W + kx] for
// taps T0 .. T0+NT-1, held in NT vector accumulators; one horizontal sum per tap at the end.
template <class V, int T0, int NT>
void gw_taps(const float* const* g, const float* const* xs, int64_t nimg, int64_t nv, int64_t W, float* acc) {
  constexpr int L = V::L;
  typename V::R a[NT];
#pragma GCC unroll 32
  for (int j = 0; j < NT; ++j) a[j] = V::zero();
  for (int64_t i = 0; i < nimg; ++i) {
    const float* gi = g[i];
    const float* xi = xs[i];
    for (int64_t v = 0; v < nv; ++v) {
      const typename V::R gv = V::load(gi + v * L);
      const float* xv = xi + v * L;
#pragma GCC unroll 32
      for (int j = 0; j < NT; ++j) {
        const int t = T0 + j;
        a[j] = V::fmadd(gv, V::load(xv + (t / 5) * W + t % 5), a[j]);
      }
    }
  }
#pragma GCC unroll 32
  for (int j = 0; j < NT; ++j) acc[T0 + j] += V::hsum(a[j]);
}

template <class V, int NG, int G = 0>
void gw_groups(const float* const* g, const float* const* xs, int64_t nimg, int64_t nv, int64_t W, float* acc) {
  if constexpr (G < NG) {
    constexpr int T0 = 25 * G / NG, T1 = 25 * (G + 1) / NG;
    gw_taps<V, T0, T1 - T0>(g, xs, nimg, nv, W, acc);
    gw_groups<V, NG, G + 1>(g, xs, nimg, nv, W, acc);
  }
}

template <class V>
void sparse_backward_simd(const float* gy, const float* y, const float* x, const float* w,
                          const int32_t* offsets, const int32_t* inputs, float* gx, float* gw,
                          float* gb, int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int act,
                          bool gn, int nthreads) {
  constexpr int L = V::L;
  constexpr int64_t kChunk = 8;
  constexpr int NG = (25 + V::kAcc) / (V::kAcc + 1);  // tap groups of at most kAcc + 1
  const int64_t Ho = H - 4, Wo = W - 4, HW = H * W, plane = Ho * Wo, out = O * plane;
  const int64_t P = (Ho - 1) * W + Wo, nv = (P + L - 1) / L;
  const int64_t HWp = round_up(HW + L, 16);
  const int64_t gaw_stride = round_up(nv * L, 16);
  // gx: full correlation = valid correlation of ga padded to (H+4)x(W+4) with flipped kernels.
  const int64_t Wg = W + 4, Hg = H + 4, HWg = round_up(Hg * Wg + L, 16);
  const int64_t Pg = (H - 1) * Wg + W, nvg = (Pg + L - 1) / L;
  const int64_t K = offsets[O], nw = K * 25;
  std::vector<float> wk(w, w + nw);
  if (gn) for (auto& v : wk) v *= v;
  std::vector<int32_t> owner(K), t_off(C + 1, 0), t_k(K);  // owner map of each kernel; transposed table
  for (int64_t o = 0; o < O; ++o)
    for (int64_t k = offsets[o]; k < offsets[o + 1]; ++k) owner[k] = int32_t(o);
  std::vector<float> wflip;
  if (gx) {
    wflip.resize(nw);
    for (int64_t k = 0; k < K; ++k)
      for (int t = 0; t < 25; ++t) wflip[k * 25 + t] = wk[k * 25 + 24 - t];
    for (int64_t k = 0; k < K; ++k) ++t_off[inputs[k] + 1];
    for (int64_t c = 0; c < C; ++c) t_off[c + 1] += t_off[c];
    std::vector<int32_t> fill(t_off.begin(), t_off.end() - 1);
    for (int64_t k = 0; k < K; ++k) t_k[fill[inputs[k]]++] = int32_t(k);
  }
  std::vector<float> grads(nw + O);
  batch_slices<float>(N, nw + O, grads.data(), nthreads, [&](int64_t begin, int64_t end, float* acc) {
    const int64_t cn = std::min<int64_t>(kChunk, end - begin);
    std::vector<float> ga(out), gaw(cn * O * gaw_stride, 0.0f), xs(cn * C * HWp, 0.0f);
    std::vector<float> gap(gx ? O * HWg : 0, 0.0f), gxw(gx ? nvg * L : 0);
    std::vector<const float*> gptr(cn), xptr(cn), planes(gx ? K : 0), kernels(gx ? K : 0);
    for (int64_t j = 0; j < (gx ? K : 0); ++j) {
      const int64_t k = t_k[j];
      planes[j] = gap.data() + owner[k] * HWg;
      kernels[j] = wflip.data() + k * 25;
    }
    for (int64_t n0 = begin; n0 < end; n0 += kChunk) {
      const int64_t m = std::min<int64_t>(kChunk, end - n0);
      for (int64_t i = 0; i < m; ++i) {
        const int64_t n = n0 + i;
        v_act_back_array<V>(gy + n * out, y ? y + n * out : nullptr, ga.data(), out, act, gn);
        float* gwi = gaw.data() + i * O * gaw_stride;
        for (int64_t o = 0; o < O; ++o) {
          const float* gao = ga.data() + o * plane;
          acc[nw + o] += v_sum<V>(gao, plane);
          float* dst = gwi + o * gaw_stride;
          for (int64_t r = 0; r < Ho; ++r) std::memcpy(dst + r * W, gao + r * Wo, sizeof(float) * Wo);
        }
        float* xsi = xs.data() + i * C * HWp;
        for (int64_t c = 0; c < C; ++c) copy_maybe_square<V>(x + (n * C + c) * HW, xsi + c * HWp, HW, gn);
        if (!gx) continue;
        // gx for image n
        for (int64_t o = 0; o < O; ++o) {
          float* gp = gap.data() + o * HWg;
          const float* gao = ga.data() + o * plane;
          for (int64_t r = 0; r < Ho; ++r) std::memcpy(gp + (r + 4) * Wg + 4, gao + r * Wo, sizeof(float) * Wo);
        }
        for (int64_t c = 0; c < C; ++c) {
          float* gxc = gx + (n * C + c) * HW;
          const int64_t nk = t_off[c + 1] - t_off[c];
          if (nk == 0) { std::fill(gxc, gxc + HW, 0.0f); continue; }
          conv_wide<V>(planes.data() + t_off[c], kernels.data() + t_off[c], nk, Wg, nvg, 0.0f, kIdentity, gxw.data());
          compact_rows(gxw.data(), Wg, gxc, H, W);
        }
      }
      // gw over the chunk
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t i = 0; i < m; ++i) {
          gptr[i] = gaw.data() + (i * O + owner[k]) * gaw_stride;
          xptr[i] = xs.data() + (i * C + inputs[k]) * HWp;
        }
        gw_groups<V, NG>(gptr.data(), xptr.data(), m, nv, W, acc + k * 25);
      }
    }
  });
  std::memcpy(gw, grads.data(), sizeof(float) * nw);
  std::memcpy(gb, grads.data() + nw, sizeof(float) * O);
}

#endif
