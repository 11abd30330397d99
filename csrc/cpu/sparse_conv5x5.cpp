// sparse_conv5x5.cpp — C3: 5x5 convolution through a connection table, forward and backward.
// Also every dense 5x5 convolution on maps larger than 5x5 (conv5x5.cpp passes the full table).
//
// Layout: x[N,C,H,W], y[N,O,H-4,W-4]; the table is CSR: output map o sums kernels
// k in [offsets[o], offsets[o+1]), kernel k reads input map inputs[k]; w[K,5,5], b[O].
// For the paper's Table I, K = 60 and the layer has 60*25 + 16 = 1,516 parameters.
// Portable trick: only connected (output, input) pairs are visited — no masked dense
// convolution — each image is one task, and the planes use the loops of conv5x5_plane.h.
//
// float32 SIMD trick: vectors along output rows (ceil(Wo/L) vectors per row: 28 = 3.5 AVX2
// vectors for C1, 10 -> 2 for C3), no transposes, any H, W >= 5, batch 1 as fast per image as
// any batch. Each image's input planes are first copied into a zero-padded scratch so junk
// lanes may read past a row or plane. Forward tile: RI output rows x RC vectors of
// accumulators; for each kernel column kx the 5 weights sit in registers and each input vector
// loaded (row j) feeds every output row i = j - ky it touches: ~0.5 loads per FMA, which is
// what lets Zen 3 / Intel cores approach 2 FMAs per cycle (one load per FMA caps at ~1). Bias,
// activation (vector tanh) and the store happen once per tile; a partial last vector is stored
// whole when its junk lanes land on rows written later (no masked stores in the steady state).
// Backward, per batch slice, in chunks of up to 8 images:
//  * ga = gy f'(y) (vector), gb += plane sums;
//  * gw[k][ky][kx] = sum ga[o][i][col] x[c][i+ky][col+kx]: ga on rows of whole vectors (junk
//    lanes zero, rows padded to the tile height), GRI ga vectors in registers, 5 x GKX
//    accumulators (kernel columns kx .. kx+GKX-1) over all the chunk's images, then one
//    horizontal sum per tap and chunk into the slice's accumulator (fixed order: bitwise
//    independent of the thread count);
//  * gx = full correlation of ga with each kernel = the forward tile on ga padded by 4 zeros
//    all round ((H+4)x(W+4) planes), kernels flipped, through the transposed table.
// Gauss-Newton: squared weights, squared inputs (in the scratch copy), f'^2.
#ifndef LENET5_SIMD_ISA
#include "cpu/conv5x5_plane.h"
#include "support/simd.h"

namespace lenet5 {
namespace cpu {

template <class T>
void portable_sparse_forward(const T* x, const T* w, const T* b, ConnTable t, T* y, ConvShape s, Act act,
                             int nthreads) {
  const int64_t C = s.C, H = s.H, W = s.W, O = s.O;
  const int32_t *offsets = t.offsets, *inputs = t.inputs;
  const int64_t in = C * H * W, plane = s.out_h() * s.out_w(), out = O * plane;
  parallel_tasks(s.N, nthreads, [&](int64_t n) {
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
void portable_sparse_backward(const T* gy, const T* y, const T* x, const T* w, ConnTable t, T* gx, T* gw,
                              T* gb, ConvShape s, Act act, bool gauss_newton, int nthreads) {
  const int64_t C = s.C, H = s.H, W = s.W, O = s.O;
  const int32_t *offsets = t.offsets, *inputs = t.inputs;
  const int64_t in = C * H * W, plane = s.out_h() * s.out_w(), out = O * plane;
  const int64_t K = offsets[O], nw = K * 25;
  std::vector<T> w2;
  const T* wk = maybe_square(w, nw, gauss_newton, w2);
  std::vector<T> grads(nw + O);
  batch_slices<T>(s.N, nw + O, grads.data(), nthreads, [&](int64_t begin, int64_t end, T* acc) {
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
#include "support/simd_pass.h"

namespace lenet5 {
namespace cpu {

template <class T>
void sparse_conv5x5_forward(const T* x, const T* w, const T* b, ConnTable table, T* y, ConvShape s, Act act,
                            int nthreads) {
  if constexpr (std::is_same<T, float>::value)
    if (LENET5_SIMD_CALL(sparse_forward_simd, x, w, b, table, y, s, act, nthreads)) return;
  portable_sparse_forward(x, w, b, table, y, s, act, nthreads);
}

template <class T>
void sparse_conv5x5_backward(const T* gy, const T* y, const T* x, const T* w, ConnTable table, T* gx, T* gw,
                             T* gb, ConvShape s, Act act, bool gauss_newton, int nthreads) {
  if constexpr (std::is_same<T, float>::value)
    if (LENET5_SIMD_CALL(sparse_backward_simd, gy, y, x, w, table, gx, gw, gb, s, act, gauss_newton, nthreads))
      return;
  portable_sparse_backward(gy, y, x, w, table, gx, gw, gb, s, act, gauss_newton, nthreads);
}

LENET5_INSTANTIATE_FLOAT_DOUBLE(sparse_conv5x5_forward)
LENET5_INSTANTIATE_FLOAT_DOUBLE(sparse_conv5x5_backward)

}  // namespace cpu
}  // namespace lenet5

#else  // ===== SIMD section (compiled once per ISA; V = Avx2, Avx2x2 or Avx512) =====

// Register blocking per vector type: forward tiles of RI output rows x RC vectors, the 5
// weights of one kernel column kx in registers; weight-gradient tiles of GRI gradient rows in
// registers and GKX kernel columns (5 accumulators each) at a time.
template <class V> struct ConvTiling {
  static constexpr int RI = V::L == 8 ? 4 : (V::kAcc >= 24 ? 8 : 2);
  static constexpr int RC = V::kAcc >= 24 ? 2 : (V::kAcc >= 12 ? 2 : 1);
  static constexpr int GRI = V::kAcc >= 24 ? 8 : (V::kAcc >= 12 ? 4 : 2);
  static constexpr int GKX = V::kAcc >= 24 ? 3 : (V::kAcc >= 12 ? 2 : 1);
};

inline int64_t round_up(int64_t a, int64_t m) { return (a + m - 1) / m * m; }

// Output rows oy0 .. oy0+RI-1, columns c0 .. c0+RC*L-1 (clipped to Wo) of
// act(bias + sum_k correlate(plane[k], kernel[k])), planes of row stride Wx, into y (row stride
// Wo, Ho rows). Each input vector loaded (row j, column kx) feeds the up-to-5 output rows
// i = j - ky it touches, with the 5 weights of column kx held in registers: about 0.5 loads
// per FMA. A partial last vector is stored whole (its junk lanes spill onto later rows, which
// are written later: see conv_plane's order) unless it would cross the plane's end.
template <class V, int RI, int RC>
void conv_tile(const float* const* planes, const float* const* kernels, int64_t nk, int64_t Wx,
               int64_t oy0, int64_t c0, float bias, int act, float* y, int64_t Ho, int64_t Wo) {
  constexpr int L = V::L;
  using R = typename V::R;
  R acc[RI][RC];
#pragma GCC unroll 16
  for (int i = 0; i < RI; ++i)
#pragma GCC unroll 4
    for (int r = 0; r < RC; ++r) acc[i][r] = V::set1(bias);
  for (int64_t k = 0; k < nk; ++k) {
    const float* x = planes[k] + oy0 * Wx + c0;
    const float* w = kernels[k];
#pragma GCC unroll 1
    for (int kx = 0; kx < 5; ++kx) {
      R wv[5];
#pragma GCC unroll 5
      for (int ky = 0; ky < 5; ++ky) wv[ky] = V::set1(w[ky * 5 + kx]);
#pragma GCC unroll 4
      for (int r = 0; r < RC; ++r) {
#pragma GCC unroll 20
        for (int j = 0; j < RI + 4; ++j) {
          const R xv = V::load(x + j * Wx + r * L + kx);
#pragma GCC unroll 5
          for (int ky = 0; ky < 5; ++ky) {
            const int i = j - ky;
            if (i >= 0 && i < RI) acc[i][r] = V::fmadd(wv[ky], xv, acc[i][r]);
          }
        }
      }
    }
  }
  const int64_t plane_end = Ho * Wo;
#pragma GCC unroll 16
  for (int i = 0; i < RI; ++i) {
    const int64_t row = (oy0 + i) * Wo + c0;
#pragma GCC unroll 4
    for (int r = 0; r < RC; ++r) {
      const int64_t valid = Wo - c0 - r * L;
      if (valid <= 0) break;
      const R v = v_act<V>(acc[i][r], act);
      if (row + r * L + L <= plane_end) V::store(y + row + r * L, v);  // junk lanes land on later rows
      else V::storen(y + row + r * L, int(std::min<int64_t>(valid, L)), v);
    }
  }
}

template <class V, int RI, int RC>
void conv_tile_c(int rc, const float* const* planes, const float* const* kernels, int64_t nk,
                 int64_t Wx, int64_t oy0, int64_t c0, float bias, int act, float* y, int64_t Ho, int64_t Wo) {
  if (rc == RC) return conv_tile<V, RI, RC>(planes, kernels, nk, Wx, oy0, c0, bias, act, y, Ho, Wo);
  if constexpr (RC > 1) conv_tile_c<V, RI, RC - 1>(rc, planes, kernels, nk, Wx, oy0, c0, bias, act, y, Ho, Wo);
}
template <class V, int RI, int RC>
void conv_tile_rc(int ri, int rc, const float* const* planes, const float* const* kernels, int64_t nk,
                  int64_t Wx, int64_t oy0, int64_t c0, float bias, int act, float* y, int64_t Ho, int64_t Wo) {
  if (ri == RI) return conv_tile_c<V, RI, RC>(rc, planes, kernels, nk, Wx, oy0, c0, bias, act, y, Ho, Wo);
  if constexpr (RI > 1) conv_tile_rc<V, RI - 1, RC>(ri, rc, planes, kernels, nk, Wx, oy0, c0, bias, act, y, Ho, Wo);
}

// One output plane y[Ho, Wo] (compact) from planes of row stride Wx (each readable up to
// (Ho+3)*Wx + RCt*L + 3 floats: callers pad). Row blocks top to bottom; within a block the
// column groups from last to first, so a junk spill always lands on something written later.
template <class V>
void conv_plane(const float* const* planes, const float* const* kernels, int64_t nk, int64_t Wx,
                float bias, int act, float* y, int64_t Ho, int64_t Wo) {
  constexpr int L = V::L, RI = ConvTiling<V>::RI, RC = ConvTiling<V>::RC;
  const int64_t nvec = (Wo + L - 1) / L, ngroups = (nvec + RC - 1) / RC;
  for (int64_t oy0 = 0; oy0 < Ho; oy0 += RI) {
    const int ri = int(std::min<int64_t>(RI, Ho - oy0));
    for (int64_t g = ngroups - 1; g >= 0; --g) {
      const int64_t v0 = g * RC;
      const int rc = int(std::min<int64_t>(RC, nvec - v0));
      conv_tile_rc<V, RI, RC>(ri, rc, planes, kernels, nk, Wx, oy0, v0 * L, bias, act, y, Ho, Wo);
    }
  }
}

template <class V>
void sparse_forward_simd(const float* x, const float* w, const float* b, ConnTable t, float* y, ConvShape s,
                         Act act, int nthreads) {
  constexpr int L = V::L;
  const int64_t C = s.C, H = s.H, W = s.W, O = s.O;
  const int32_t *offsets = t.offsets, *inputs = t.inputs;
  const int64_t Ho = s.out_h(), Wo = s.out_w(), HW = H * W;
  const int64_t HWp = round_up(HW + 2 * L, 16);  // zero pad: junk lanes read past the plane
  const int64_t K = offsets[O];
  parallel_range(s.N, 1, nthreads, [&](int64_t begin, int64_t end) {
    std::vector<float> xs(C * HWp + 16, 0.0f);
    float* xa = xs.data() + ((16 - (reinterpret_cast<uintptr_t>(xs.data()) / 4) % 16) % 16);  // 64-byte aligned
    std::vector<const float*> planes(K), kernels(K);
    for (int64_t k = 0; k < K; ++k) {
      planes[k] = xa + inputs[k] * HWp;
      kernels[k] = w + k * 25;
    }
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t c = 0; c < C; ++c) std::memcpy(xa + c * HWp, x + (n * C + c) * HW, sizeof(float) * HW);
      for (int64_t o = 0; o < O; ++o)
        conv_plane<V>(planes.data() + offsets[o], kernels.data() + offsets[o], offsets[o + 1] - offsets[o],
                      W, b[o], act, y + (n * O + o) * Ho * Wo, Ho, Wo);
    }
  });
}

// acc[ky*5 + kx] += sum over the images, row blocks and column vectors of g[i][col] *
// x[i+ky][col+kx] for kx in KX0 .. KX0+NKX-1: RI gradient vectors in registers, each loaded
// input vector feeding the (i, ky) pairs with i + ky = j: about 0.5 loads per FMA, 5*NKX
// accumulators, one horizontal sum each at the end.
template <class V, int RI, int KX0, int NKX>
void gw_tile(const float* const* g, const float* const* xs, int64_t nimg, int64_t rows, int64_t nvec,
             int64_t gstride, int64_t W, float* acc) {
  constexpr int L = V::L;
  using R = typename V::R;
  R a[5][NKX];
#pragma GCC unroll 5
  for (int ky = 0; ky < 5; ++ky)
#pragma GCC unroll 5
    for (int q = 0; q < NKX; ++q) a[ky][q] = V::zero();
  for (int64_t n = 0; n < nimg; ++n) {
    for (int64_t i0 = 0; i0 < rows; i0 += RI) {
      for (int64_t c = 0; c < nvec; ++c) {
        const float* gp = g[n] + i0 * gstride + c * L;
        const float* xp = xs[n] + i0 * W + c * L + KX0;
        R gv[RI];
#pragma GCC unroll 16
        for (int i = 0; i < RI; ++i) gv[i] = V::load(gp + i * gstride);
#pragma GCC unroll 20
        for (int j = 0; j < RI + 4; ++j) {
#pragma GCC unroll 5
          for (int q = 0; q < NKX; ++q) {
            const R xv = V::load(xp + j * W + q);
#pragma GCC unroll 5
            for (int ky = 0; ky < 5; ++ky) {
              const int i = j - ky;
              if (i >= 0 && i < RI) a[ky][q] = V::fmadd(gv[i], xv, a[ky][q]);
            }
          }
        }
      }
    }
  }
#pragma GCC unroll 5
  for (int ky = 0; ky < 5; ++ky)
#pragma GCC unroll 5
    for (int q = 0; q < NKX; ++q) acc[ky * 5 + KX0 + q] += V::hsum(a[ky][q]);
}

template <class V, int KX0 = 0>
void gw_kernel(const float* const* g, const float* const* xs, int64_t nimg, int64_t rows, int64_t nvec,
               int64_t gstride, int64_t W, float* acc) {
  if constexpr (KX0 < 5) {
    constexpr int G = ConvTiling<V>::GKX, NKX = KX0 + G <= 5 ? G : 5 - KX0;
    gw_tile<V, ConvTiling<V>::GRI, KX0, NKX>(g, xs, nimg, rows, nvec, gstride, W, acc);
    gw_kernel<V, KX0 + NKX>(g, xs, nimg, rows, nvec, gstride, W, acc);
  }
}

template <class V>
void sparse_backward_simd(const float* gy, const float* y, const float* x, const float* w, ConnTable t,
                          float* gx, float* gw, float* gb, ConvShape s, Act act, bool gn, int nthreads) {
  constexpr int L = V::L, GRI = ConvTiling<V>::GRI;
  constexpr int64_t kChunk = 8;
  const int64_t C = s.C, H = s.H, W = s.W, O = s.O;
  const int32_t *offsets = t.offsets, *inputs = t.inputs;
  const int64_t Ho = s.out_h(), Wo = s.out_w(), HW = H * W, plane = Ho * Wo, out = O * plane;
  // gw operands: ga on rows of nvec vectors (junk lanes zero), Ho padded to a multiple of GRI
  // with zero rows; x copies with 4 + the padding rows, plus a vector of slack.
  const int64_t nvec = (Wo + L - 1) / L, gstride = nvec * L, rows = round_up(Ho, GRI);
  const int64_t gplane = round_up(rows * gstride, 16), HWp = round_up((rows + 4) * W + 2 * L, 16);
  // gx: full correlation = valid correlation of ga padded to (H+4)x(W+4) with flipped kernels.
  const int64_t Wg = W + 4, HWg = round_up((H + 4) * Wg + 2 * L, 16);
  const int64_t K = offsets[O], nw = K * 25;
  std::vector<float> wk(w, w + nw);
  if (gn) for (auto& v : wk) v *= v;
  // owner[k]: the output map kernel k feeds; t_k[t_off[c] .. t_off[c + 1]): the kernels reading
  // input c (conn_table.h; the table was checked in Python, _validate.table_contents)
  std::vector<int32_t> owner(K), t_off(C + 1), t_k(K);
  invert_table(t, O, C, owner.data(), t_off.data(), t_k.data());
  std::vector<float> wflip;
  if (gx) {
    wflip.resize(nw);
    for (int64_t k = 0; k < K; ++k)
      for (int t = 0; t < 25; ++t) wflip[k * 25 + t] = wk[k * 25 + 24 - t];
  }
  std::vector<float> grads(nw + O);
  batch_slices<float>(s.N, nw + O, grads.data(), nthreads, [&](int64_t begin, int64_t end, float* acc) {
    const int64_t cn = std::min<int64_t>(kChunk, end - begin);
    std::vector<float> ga(out), gar(cn * O * gplane, 0.0f), xs(cn * C * HWp, 0.0f);
    std::vector<float> gap(gx ? O * HWg : 0, 0.0f);
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
        float* gri = gar.data() + i * O * gplane;
        for (int64_t o = 0; o < O; ++o) {
          const float* gao = ga.data() + o * plane;
          acc[nw + o] += v_sum<V>(gao, plane);
          float* dst = gri + o * gplane;
          for (int64_t r = 0; r < Ho; ++r) std::memcpy(dst + r * gstride, gao + r * Wo, sizeof(float) * Wo);
        }
        float* xsi = xs.data() + i * C * HWp;
        for (int64_t c = 0; c < C; ++c) copy_maybe_square<V>(x + (n * C + c) * HW, xsi + c * HWp, HW, gn);
        if (!gx) continue;
        for (int64_t o = 0; o < O; ++o) {
          float* gp = gap.data() + o * HWg;
          const float* gao = ga.data() + o * plane;
          for (int64_t r = 0; r < Ho; ++r) std::memcpy(gp + (r + 4) * Wg + 4, gao + r * Wo, sizeof(float) * Wo);
        }
        for (int64_t c = 0; c < C; ++c) {
          float* gxc = gx + (n * C + c) * HW;
          const int64_t nk = t_off[c + 1] - t_off[c];
          if (nk == 0) std::fill(gxc, gxc + HW, 0.0f);
          else conv_plane<V>(planes.data() + t_off[c], kernels.data() + t_off[c], nk, Wg, 0.0f, kIdentity, gxc, H, W);
        }
      }
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t i = 0; i < m; ++i) {
          gptr[i] = gar.data() + (i * O + owner[k]) * gplane;
          xptr[i] = xs.data() + (i * C + inputs[k]) * HWp;
        }
        gw_kernel<V>(gptr.data(), xptr.data(), m, rows, nvec, gstride, W, acc + k * 25);
      }
    }
  });
  std::memcpy(gw, grads.data(), sizeof(float) * nw);
  std::memcpy(gb, grads.data() + nw, sizeof(float) * O);
}

#endif
