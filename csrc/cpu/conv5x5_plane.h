// conv5x5_plane.h — one 5x5 kernel against one input plane: the inner loops of the portable
// sparse convolution (sparse_conv5x5.cpp), which also runs the dense ones (conv5x5.cpp).
//
// Layout: an input plane x[H,W], an output plane y[H-4,W-4], a kernel k[5,5].
// Trick: for each (output row, ky, kx) the innermost loop runs along the output row, contiguous
// in both x and y, so the compiler vectorises it and the 5 input rows stay in L1.
#pragma once
#include "cpu/portable.h"
#include "support/parallel.h"

namespace lenet5 {
namespace cpu {

// y[oy,ox] += sum_{ky,kx} k[ky,kx] * x[oy+ky, ox+kx]
template <class T>
inline void plane_correlate_accumulate(const T* x, const T* k, T* y, int64_t H, int64_t W) {
  const int64_t Ho = H - 4, Wo = W - 4;
  for (int64_t oy = 0; oy < Ho; ++oy) {
    T* row = y + oy * Wo;
    for (int64_t ky = 0; ky < 5; ++ky) {
      const T* xr = x + (oy + ky) * W;
      for (int64_t kx = 0; kx < 5; ++kx) {
        const T kv = k[ky * 5 + kx];
        const T* xs = xr + kx;
        for (int64_t ox = 0; ox < Wo; ++ox) row[ox] += kv * xs[ox];
      }
    }
  }
}

// Backward of plane_correlate_accumulate for output gradient g[H-4,W-4]:
// gk[ky,kx] += sum g[oy,ox] x[oy+ky,ox+kx];  gx[iy,ix] += sum k[ky,kx] g[iy-ky,ix-kx] (if gx).
template <class T>
inline void plane_correlate_backward(const T* g, const T* x, const T* k, T* gk, T* gx, int64_t H,
                                     int64_t W) {
  const int64_t Ho = H - 4, Wo = W - 4;
  for (int64_t ky = 0; ky < 5; ++ky) {
    for (int64_t kx = 0; kx < 5; ++kx) {
      T s = 0;
      for (int64_t oy = 0; oy < Ho; ++oy) {
        const T* xs = x + (oy + ky) * W + kx;
        const T* gr = g + oy * Wo;
        for (int64_t ox = 0; ox < Wo; ++ox) s += gr[ox] * xs[ox];
      }
      gk[ky * 5 + kx] += s;
      if (gx) {
        const T kv = k[ky * 5 + kx];
        for (int64_t oy = 0; oy < Ho; ++oy) {
          T* gxs = gx + (oy + ky) * W + kx;
          const T* gr = g + oy * Wo;
          for (int64_t ox = 0; ox < Wo; ++ox) gxs[ox] += kv * gr[ox];
        }
      }
    }
  }
}

template <class T> inline T plane_sum(const T* g, int64_t n) {
  T s = 0;
  for (int64_t i = 0; i < n; ++i) s += g[i];
  return s;
}

}  // namespace cpu
}  // namespace lenet5
