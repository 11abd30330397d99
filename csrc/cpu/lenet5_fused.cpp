// lenet5_fused.cpp — the classic LeNet-5 in one native call: batched forward, the SDLM
// Gauss-Newton diagonal, and a whole pass of per-sample (batch 1) SDLM updates. float32, CPU.
//
// Network: C1 1->6 (32x32 -> 28x28), S2, C3 through a CSR table (16 output maps, at most 96
// kernels), S4, C5 (400 -> 120), F6 (120 -> 84), Euclidean RBF over the fixed [10, 84] codes;
// every layer but the RBF squashed by f(a) = 1.7159 tanh(2a/3). The weights are used in the
// model's own layout (no packing per call), and every intermediate lives in a thread-local,
// zero-initialised, 64-byte aligned Scratch: no tensors, no allocation per image.
//
// Layout of one image in Scratch (floats; "junk" lanes are finite and never reach a result):
//   X   input copied into rows of 32 + zero tail        C1 output row = 32 lanes (28 + 4 junk)
//   Y1  C1 maps [6][28][32]                              S2 pairs rows, pair-sums lanes (shuffle)
//   Y2  S2 maps, flat rows: q = 14*r + s, map stride 208
//   Y3  C3 maps, flat rows: p = 14*oy + ox (ox < 10 real, 10..13 junk), map stride 160
//   Y4  S4 = [16][5][5] = C5 input;  Y5 C5 [120];  Y6 F6 [84];  Out RBF [10]
// Tricks:
//  * "Flat rows": with row stride 14, every 5x5 tap of C3 (forward and weight gradient) is one
//    contiguous, unaligned vector load at offset 14*ky + kx; 136 lanes cover all 100 outputs.
//  * C3's input gradient is a gather, not a scatter: dE/dY2[q] = sum w * ga3[q - 14*ky - kx] over
//    a zero-framed ga3 (64 zeros before each map, junk columns zeroed), so it is pure
//    load + FMA into registers, no read-modify-write.
//  * C5, F6, RBF are dot products against [out][in] rows: one x load feeds L rows, and L
//    accumulators are reduced at once by a shuffle tree (hsum_rows). Backward walks the same
//    rows as axpys: input gradient in registers, and the weight update w -= step * g * x fused
//    into the same pass, reading every weight once (old value first, as the math requires).
//  * Weight gradients of the convolutions accumulate one vector per tap, reduced L at a time.
//  * Squashing: activations.h's float32 formula (a rational tanh with 2/3 and 1.7159 folded
//    into its coefficients), the same every CPU and CUDA kernel uses.
//  * Vectors are GCC/Clang generic vectors of L = 4, 8 or 16 floats. The same templates are
//    instantiated inside __attribute__((target(...), flatten)) entry points: 16 lanes for
//    AVX-512F, 8 for AVX2+FMA, 4 portable (SSE2 / NEON / scalar), picked at run time from
//    lenet5::cpu::current_isa() (simd.h). No intrinsics, no -march. FMAs come from contraction of a*b+c
//    (GNU mode, the default in CMake). set_wide_emulation(true) runs the 16-lane code
//    compiled for AVX2, so machines without AVX-512 still test the AVX-512 path's logic.
//
// SDLM (LeCun et al. 1998, appendix C): per sample, MAP loss E = y_c + log(e^-j + sum e^-y_i);
// backward; w_k -= step_k * dE/dw_k. Gauss-Newton mode propagates h instead of gradients:
// h_y = q(1-q) at the RBF, 4(x-w)^2 through it plus 2, f'^2 through squashings, weights and
// inputs squared, exactly as the per-op kernels do with gauss_newton = true.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cpu/parallel.h"
#include "cpu/simd.h"
#include "cpu/vec.h"
#include "lenet5.h"


namespace lenet5 {
namespace cpu {
namespace {
using namespace vec;

// ---------------------------------------------------------------------------------------------
// Geometry and scratch layout

constexpr int kMaps1 = geometry::kC1Maps, kMaps3 = geometry::kC3Maps, kUnits5 = geometry::kC5Units,
              kUnits6 = geometry::kF6Units, kClasses = geometry::kClasses;
constexpr int kMaxKernels3 = geometry::kC3MaxKernels;
constexpr int kIn5 = geometry::kC5Inputs;        // 400 C5 inputs
static_assert(geometry::kInput == 32 && geometry::kC1Size == 28 && geometry::kS2Size == 14 &&
              geometry::kC3Size == 10 && geometry::kS4Size == 5,
              "the scratch layout below is laid out for the paper's map sizes");
constexpr int kXSize = 32 * 32 + 64;             // input rows + zero tail for the 32-lane C1 rows
constexpr int kY1Map = 28 * 32;                  // C1 map: 28 rows of 32 lanes
constexpr int kY2Map = 208;                      // S2 map: 196 flat + room for vector tails
constexpr int kY3Map = 160;                      // C3 map: 140 flat (10 rows of 14) + tails
constexpr int kGa3Front = 64;                    // zeros before each C3 gradient map (>= 60)
constexpr int kGa3Map = 272;                     // 64 + 208: the gather reads [4, 272)
constexpr int kY4Size = kIn5 + 16;

constexpr size_t kParamSize[kClassicParams] = {150, 6, 6, 6, 0 /* 25 K */, 16, 16, 16,
                                               kUnits5 * kIn5, kUnits5, kUnits6 * kUnits5, kUnits6};

struct alignas(64) Scratch {
  // forward
  float X[kXSize], Xsq[kXSize];
  float Y1[kMaps1 * kY1Map];
  float S2[kMaps1 * kY2Map], Y2[kMaps1 * kY2Map], Y2sq[kMaps1 * kY2Map];
  float Y3[kMaps3 * kY3Map];
  float S4[kY4Size], Y4[kY4Size], Y4sq[kY4Size];
  float Y5[128], Y5sq[128], Y6[96], Out[16];
  // backward (gradients, or Gauss-Newton terms)
  float G6[96], Ga6[96], G5[128], Ga5[128], G4[kY4Size], Ga4[kY4Size];
  float Ga3[kMaps3 * kGa3Map], Gx2[kMaps1 * kY2Map], Ga2[kMaps1 * kY2Map], Ga1[kMaps1 * kY1Map];
  float Gw1[kMaps1 * 25 + 16], Gw3[kMaxKernels3 * 25 + 16];
  float Gb1[16], Gs2c[16], Gs2b[16], Gb3[32], Gs4c[32], Gs4b[32], Rbf[16];
};

Scratch& thread_scratch() {
  // One per thread, zeroed once: the pad regions stay zero (or finite) forever.
  thread_local std::unique_ptr<Scratch> s(new Scratch());
  return *s;
}

// The C3 connection table in the forms the kernels walk.
struct Table {
  const int32_t* offsets;  // [17]
  const int32_t* inputs;   // [K]
  int K;
  int out_of[kMaxKernels3];                       // kernel -> output map
  int by_input[kMaps1][kMaxKernels3], n_by_input[kMaps1];  // input map -> kernels
};

Table make_table(const ClassicNet& net) {
  Table t;
  t.offsets = net.c3_offsets;
  t.inputs = net.c3_inputs;
  if (!t.offsets || !t.inputs) throw std::invalid_argument("lenet5_fused: missing C3 table");
  t.K = t.offsets[kMaps3];
  if (t.offsets[0] != 0 || t.K < 1 || t.K > kMaxKernels3)
    throw std::invalid_argument("lenet5_fused: C3 table offsets must rise from 0 to K in [1, 96]");
  std::fill(t.n_by_input, t.n_by_input + kMaps1, 0);
  for (int o = 0; o < kMaps3; ++o) {
    if (t.offsets[o + 1] < t.offsets[o])
      throw std::invalid_argument("lenet5_fused: C3 table offsets must not decrease");
    for (int k = t.offsets[o]; k < t.offsets[o + 1]; ++k) {
      const int c = t.inputs[k];
      if (c < 0 || c >= kMaps1) throw std::invalid_argument("lenet5_fused: C3 table input out of [0, 6)");
      t.out_of[k] = o;
      t.by_input[c][t.n_by_input[c]++] = k;
    }
  }
  return t;
}

// ---- the squashing and its derivative (activations.h) ----
template <int L> LENET5_INLINE vf<L> squash(const vf<L>& a) { return act::forward<kScaledTanh>(a); }
// f'(a) (or f'(a)^2 for Gauss-Newton) from the output y.
template <int L, bool GN> LENET5_INLINE vf<L> dsquash(const vf<L>& y) { return act::grad_factor<kScaledTanh, GN>(y); }

// ---------------------------------------------------------------------------------------------
// Small helpers

// Collects vectors and reduces them L at a time (drain after a batch of pushes, finish at the
// end); the sums land contiguously in out, which needs L floats of slack.
template <int L> struct Reducer {
  vf<L> rows[L + 32];
  int n = 0;
  float* out;
  explicit Reducer(float* o) : out(o) {}
  LENET5_INLINE void push(const vf<L>& v) { rows[n++] = v; }
  LENET5_INLINE void drain() {
    int i = 0;
    for (; i + L <= n; i += L, out += L) store<L>(out, hsum_rows<L>(rows + i));
    for (int j = i; j < n; ++j) rows[j - i] = rows[j];
    n -= i;
  }
  LENET5_INLINE void finish() {
    drain();
    if (n == 0) return;
    for (int i = n; i < L; ++i) rows[i] = vf<L>{};
    store<L>(out, hsum_rows<L>(rows));
    out += n;
    n = 0;
  }
};

// The trainable tensors a backward pass writes: weights updated in place (SDLM step), or
// Gauss-Newton accumulators.
struct Sink {
  float* dst[kClassicParams];
  const float* step[kClassicParams];  // null for Gauss-Newton accumulation
};
template <bool GN> LENET5_INLINE void sink_scalar(const Sink& s, int param, int i, float term) {
  if (GN) s.dst[param][i] += term;
  else s.dst[param][i] -= s.step[param][i] * term;
}
template <int L, bool GN>
LENET5_INLINE void sink_vec(float* dst, const float* step, const vf<L>& term) {
  if (GN) store<L>(dst, load<L>(dst) + term);
  else store<L>(dst, load<L>(dst) - load<L>(step) * term);
}
// n contiguous terms (n a multiple of 4), LS lanes at a time.
template <int LS, bool GN> LENET5_INLINE void sink_array(const Sink& s, int param, const float* term, int n) {
  float* d = s.dst[param];
  const float* st = GN ? nullptr : s.step[param];
  int i = 0;
  for (; i + LS <= n; i += LS) sink_vec<LS, GN>(d + i, GN ? nullptr : st + i, load<LS>(term + i));
  for (; i < n; ++i) {
    if (GN) d[i] += term[i];
    else d[i] -= st[i] * term[i];
  }
}

// y[0:n] = f(y[0:n] + b[0:n]) in LS-lane vectors (n a multiple of LS).
template <int LS> LENET5_INLINE void bias_squash(float* y, const float* b, int n) {
  for (int i = 0; i < n; i += LS) store<LS>(y + i, squash<LS>(load<LS>(y + i) + load<LS>(b + i)));
}

// ---------------------------------------------------------------------------------------------
// Forward, one image (X already filled). Layers in order; backward follows below.

template <int L> LENET5_INLINE void c1_forward(const ClassicNet& net, Scratch& s) {
  constexpr int NV = 32 / L;                              // vectors per C1 row
  constexpr int MG = L == 16 ? 6 : (L == 8 ? 3 : 1);      // maps per register block
  const float* w = net.param[kC1Weight];
  const float* b = net.param[kC1Bias];
  for (int oy = 0; oy < 28; ++oy) {
    for (int m0 = 0; m0 < kMaps1; m0 += MG) {
      vf<L> acc[MG][NV];
#pragma GCC unroll 8
      for (int m = 0; m < MG; ++m)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[m][v] = splat<L>(b[m0 + m]);
      for (int ky = 0; ky < 5; ++ky) {
        const float* xr = s.X + (oy + ky) * 32;
#pragma GCC unroll 5
        for (int kx = 0; kx < 5; ++kx) {
          vf<L> xv[NV];
#pragma GCC unroll 8
          for (int v = 0; v < NV; ++v) xv[v] = load<L>(xr + kx + v * L);
#pragma GCC unroll 8
          for (int m = 0; m < MG; ++m) {
            const float wv = w[(m0 + m) * 25 + ky * 5 + kx];
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) acc[m][v] += wv * xv[v];
          }
        }
      }
#pragma GCC unroll 8
      for (int m = 0; m < MG; ++m)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) store<L>(s.Y1 + (m0 + m) * kY1Map + oy * 32 + v * L, squash<L>(acc[m][v]));
    }
  }
}

// S2 and S4: 2x2 window sums (kept for backward), coefficient, bias, squashing.
// in: rows of stride in_stride; out: rows of out_w values (flat, stride out_w, in out_stride maps).
template <int L, int Rows, int Chunks>
LENET5_INLINE void subsample_forward(const float* in, int in_map, int in_stride, const float* coef,
                                     const float* bias, int maps, float* S, float* Y, int out_map,
                                     int out_w) {
  for (int m = 0; m < maps; ++m) {
    const float c = coef[m], b = bias[m];
    for (int i = 0; i < Rows; ++i) {
      const float* r0 = in + m * in_map + 2 * i * in_stride;
      const float* r1 = r0 + in_stride;
#pragma GCC unroll 4
      for (int ch = 0; ch < Chunks; ++ch) {
        const vf<L> a = load<L>(r0 + 2 * L * ch) + load<L>(r1 + 2 * L * ch);
        const vf<L> e = load<L>(r0 + 2 * L * ch + L) + load<L>(r1 + 2 * L * ch + L);
        const vf<L> sum = pairsum<L>(a, e);
        const int at = m * out_map + i * out_w + L * ch;   // junk tail lanes spill into the
        store<L>(S + at, sum);                               // next row, rewritten next
        store<L>(Y + at, squash<L>(c * sum + b));
      }
    }
  }
}

// C3, output map o, vectors [V0, V0 + NV) of the flat 136-lane output.
template <int L, int NV>
LENET5_INLINE void c3_forward_chunk(const ClassicNet& net, const Table& t, Scratch& s, int o, int p0) {
  const float* w3 = net.param[kC3Weight];
  vf<L> acc[NV];
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) acc[v] = splat<L>(net.param[kC3Bias][o]);
  for (int k = t.offsets[o]; k < t.offsets[o + 1]; ++k) {
    const float* base = s.Y2 + t.inputs[k] * kY2Map + p0;
    const float* wk = w3 + k * 25;
    for (int ky = 0; ky < 5; ++ky) {
#pragma GCC unroll 5
      for (int kx = 0; kx < 5; ++kx) {
        const float wv = wk[ky * 5 + kx];
        const float* src = base + ky * 14 + kx;
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) acc[v] += wv * load<L>(src + v * L);
      }
    }
  }
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) store<L>(s.Y3 + o * kY3Map + p0 + v * L, squash<L>(acc[v]));
}
// Splits NVLeft vectors into register blocks of at most 9.
template <int NVLeft> constexpr int block_of() { return NVLeft > 18 ? 9 : (NVLeft > 9 ? (NVLeft + 1) / 2 : NVLeft); }

template <int L, int V0, int NVLeft>
LENET5_INLINE void c3_forward_map(const ClassicNet& net, const Table& t, Scratch& s, int o) {
  if constexpr (NVLeft > 0) {
    constexpr int NV = block_of<NVLeft>();
    c3_forward_chunk<L, NV>(net, t, s, o, V0 * L);
    c3_forward_map<L, V0 + NV, NVLeft - NV>(net, t, s, o);
  }
}
template <int L> constexpr int c3_vectors() { return (136 + L - 1) / L; }   // 9, 17, 34

// Dot products of R rows w[r*D : r*D + D] with x; lanes [0, R) of the result.
template <int L, int R, int D>
LENET5_INLINE vf<L> dot_rows(const float* w, const float* x) {
  static_assert(D % L == 0 && R <= L, "dot_rows: D must be a multiple of L");
  vf<L> acc[L];
#pragma GCC unroll 16
  for (int r = 0; r < L; ++r) acc[r] = vf<L>{};
  for (int i = 0; i < D; i += L) {
    const vf<L> xv = load<L>(x + i);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r] += load<L>(w + r * D + i) * xv;
  }
  return hsum_rows<L>(acc);
}
// y[0:O] = W x for W [O, D] (y needs L slack).
template <int L, int O, int D> LENET5_INLINE void matvec(const float* w, const float* x, float* y) {
  int o = 0;
  for (; o + L <= O; o += L) store<L>(y + o, dot_rows<L, L, D>(w + o * D, x));
  if constexpr (O % L != 0) store<L>(y + o, dot_rows<L, O % L, D>(w + o * D, x));
}

template <int L> LENET5_INLINE void rbf_forward(const ClassicNet& net, Scratch& s) {
  // y_i = sum_j (x_j - c_ij)^2 over 84 = 21 x 4 lanes; rows in groups of 4.
  for (int i0 = 0; i0 < kClasses; i0 += 4) {
    vf<4> acc[4] = {};
    const int R = std::min(4, kClasses - i0);
    for (int j = 0; j < kUnits6; j += 4) {
      const vf<4> x = load<4>(s.Y6 + j);
      for (int r = 0; r < R; ++r) {
        const vf<4> d = x - load<4>(net.codes + (i0 + r) * kUnits6 + j);
        acc[r] += d * d;
      }
    }
    store<4>(s.Out + i0, hsum_rows<4>(acc));
  }
}

template <int L> LENET5_INLINE void forward_image(const ClassicNet& net, const Table& t, Scratch& s) {
  constexpr int L8 = L < 8 ? L : 8;
  c1_forward<L>(net, s);
  subsample_forward<L, 14, 32 / (2 * L)>(s.Y1, kY1Map, 32, net.param[kS2Coef], net.param[kS2Bias],
                                         kMaps1, s.S2, s.Y2, kY2Map, 14);
  for (int o = 0; o < kMaps3; ++o) c3_forward_map<L, 0, c3_vectors<L>()>(net, t, s, o);
  subsample_forward<L, 5, (10 + 2 * L - 1) / (2 * L)>(s.Y3, kY3Map, 14, net.param[kS4Coef],
                                                      net.param[kS4Bias], kMaps3, s.S4, s.Y4, 25, 5);
  matvec<L, kUnits5, kIn5>(net.param[kC5Weight], s.Y4, s.Y5);
  bias_squash<L8>(s.Y5, net.param[kC5Bias], kUnits5);
  matvec<L8, kUnits6, kUnits5>(net.param[kF6Weight], s.Y5, s.Y6);
  bias_squash<4>(s.Y6, net.param[kF6Bias], kUnits6);
  rbf_forward<L>(net, s);
}

LENET5_INLINE void load_image(Scratch& s, const float* x) { std::memcpy(s.X, x, sizeof(float) * 1024); }

// ---------------------------------------------------------------------------------------------
// Loss at the RBF outputs: MAP criterion, its gradient (or Gauss-Newton h), training error.

struct LossOut {
  double loss;
  bool error;
};
LENET5_INLINE LossOut map_loss_grad(const float* y, int label, double j, bool gauss_newton, float* g) {
  double m = -j;
  for (int i = 0; i < kClasses; ++i) m = std::max(m, -static_cast<double>(y[i]));
  double e[kClasses], z = std::exp(-j - m);
  for (int i = 0; i < kClasses; ++i) z += (e[i] = std::exp(-static_cast<double>(y[i]) - m));
  int best = 0;
  for (int i = 1; i < kClasses; ++i)
    if (y[i] < y[best]) best = i;
  for (int i = 0; i < kClasses; ++i) {
    const double q = e[i] / z;
    g[i] = static_cast<float>(gauss_newton ? q * (1.0 - q) : (i == label ? 1.0 : 0.0) - q);
  }
  return {static_cast<double>(y[label]) + m + std::log(z), best != label};
}

// ---------------------------------------------------------------------------------------------
// Backward, one image, from the RBF down to C1. GN = false: gradients, and every weight is
// updated in place (w -= step * g) as soon as nothing else needs its old value. GN = true:
// Gauss-Newton terms, added to the accumulators in sink.dst.

// RBF: G6_j = sum_i g_i 2 (x_j - c_ij)   |  GN: sum_i h_i 4 (x_j - c_ij)^2 + 2.
template <bool GN> LENET5_INLINE void rbf_backward(const ClassicNet& net, Scratch& s) {
  for (int j = 0; j < kUnits6; j += 4) {
    const vf<4> x = load<4>(s.Y6 + j);
    vf<4> acc = {};
    for (int i = 0; i < kClasses; ++i) {
      const vf<4> d = 2.0f * (x - load<4>(net.codes + i * kUnits6 + j));
      acc += s.Rbf[i] * (GN ? d * d : d);
    }
    store<4>(s.G6 + j, GN ? acc + 2.0f : acc);
  }
}

// Fully connected layer (C5, F6) after ga = g * f'(a) is known: gx = W^T ga (W squared for GN)
// in registers, NB vectors of x at a time, and the weight term ga_o * x_i (x squared for GN)
// sunk into the same row slice while it is loaded.
template <int L, bool GN, int NB, int O, int D>
LENET5_INLINE void full_backward_block(const float* w, float* dst, const float* step,
                                       const float* ga, const float* xin, float* gx, int i0) {
  vf<L> acc[NB];
#pragma GCC unroll 16
  for (int v = 0; v < NB; ++v) acc[v] = vf<L>{};
  for (int o = 0; o < O; ++o) {
    const float g = ga[o];
    const float* wr = w + o * D + i0;
    float* dr = dst + o * D + i0;
    const float* sr = GN ? nullptr : step + o * D + i0;
#pragma GCC unroll 16
    for (int v = 0; v < NB; ++v) {
      const vf<L> wv = load<L>(wr + v * L);
      acc[v] += g * (GN ? wv * wv : wv);
      const vf<L> term = g * load<L>(xin + i0 + v * L);
      if (GN) store<L>(dr + v * L, load<L>(dr + v * L) + term);
      else store<L>(dr + v * L, wv - load<L>(sr + v * L) * term);
    }
  }
#pragma GCC unroll 16
  for (int v = 0; v < NB; ++v) store<L>(gx + i0 + v * L, acc[v]);
}
template <int L, bool GN, int O, int D, int V0, int NVLeft, int MaxNB>
LENET5_INLINE void full_backward_blocks(const float* w, float* dst, const float* step,
                                        const float* ga, const float* xin, float* gx) {
  if constexpr (NVLeft > 0) {
    constexpr int NB = NVLeft > MaxNB ? (NVLeft > 2 * MaxNB ? MaxNB : (NVLeft + 1) / 2) : NVLeft;
    full_backward_block<L, GN, NB, O, D>(w, dst, step, ga, xin, gx, V0 * L);
    full_backward_blocks<L, GN, O, D, V0 + NB, NVLeft - NB, MaxNB>(w, dst, step, ga, xin, gx);
  }
}
template <int L, bool GN, int O, int D>
LENET5_INLINE void full_backward(const Sink& sink, int pw, int pb, const float* w, const float* g,
                                 const float* y, const float* xin, float* ga, float* gx) {
  constexpr int LA = 4;  // O = 120 or 84: multiples of 4
  for (int o = 0; o < O; o += LA) store<LA>(ga + o, load<LA>(g + o) * dsquash<LA, GN>(load<LA>(y + o)));
  constexpr int MaxNB = L == 16 ? 13 : 10;
  full_backward_blocks<L, GN, O, D, 0, D / L, MaxNB>(w, sink.dst[pw], sink.step[pw], ga, xin, gx);
  sink_array<LA, GN>(sink, pb, ga, O);
}

// Subsampling backward (S4 into C3's zero-framed gradient maps, S2 into C1's rows):
// ga = g f'(y) (squared for GN), coefficient term sum ga * s (s^2), bias term sum ga, and the
// gradient of the layer below, coef (coef^2) * ga upsampled 2x2 times the lower squashing's f'.
template <int L, bool GN> LENET5_INLINE void s4_backward(const ClassicNet& net, const Sink& sink, Scratch& s) {
  for (int i = 0; i < kIn5; i += L) {   // 400 = multiple of 4, 8, 16
    const vf<L> ga = load<L>(s.G4 + i) * dsquash<L, GN>(load<L>(s.Y4 + i));
    store<L>(s.Ga4 + i, ga);
    const vf<L> sv = load<L>(s.S4 + i);
    store<L>(s.G4 + i, ga * (GN ? sv * sv : sv));   // G4 is free now: reuse for the coef terms
  }
  const float* coef = net.param[kS4Coef];
  constexpr int NR = (14 + L - 1) / L;                 // vectors per 14-wide flat row
  for (int o = 0; o < kMaps3; ++o) {
    float sc = 0, sb = 0;
    for (int k = 0; k < 25; ++k) {
      sc += s.G4[o * 25 + k];
      sb += s.Ga4[o * 25 + k];
    }
    s.Gs4c[o] = sc;
    s.Gs4b[o] = sb;
    const float kc = GN ? coef[o] * coef[o] : coef[o];
    float* ga3 = s.Ga3 + o * kGa3Map + kGa3Front;
    const float* y3 = s.Y3 + o * kY3Map;
    for (int i = 0; i < 5; ++i) {
      vf<L> e[NR];
#pragma GCC unroll 4
      for (int v = 0; v < NR; ++v)
        e[v] = kc * keep_first<L>(dup_lo<L>(load<L>(s.Ga4 + o * 25 + i * 5 + v * L / 2)), 10 - v * L);
      // rows in ascending order: each row's last vector spills zeros into the next row
#pragma GCC unroll 2
      for (int a = 0; a < 2; ++a)
#pragma GCC unroll 4
        for (int v = 0; v < NR; ++v) {
          const int p = (2 * i + a) * 14 + v * L;
          store<L>(ga3 + p, e[v] * dsquash<L, GN>(load<L>(y3 + p)));
        }
    }
  }
  for (int o = 0; o < kMaps3; ++o) {
    sink_scalar<GN>(sink, kS4Coef, o, s.Gs4c[o]);
    sink_scalar<GN>(sink, kS4Bias, o, s.Gs4b[o]);
  }
}

// C3 weight terms for kernel k: sum_p ga3[p] * y2[c][p + 14 ky + kx] (y2^2 for GN), taps
// [KY0, KY0 + NKY) rows, pushed to the reducer in tap order.
template <int L, int KY0, int NKY>
LENET5_INLINE void c3_weight_taps(const float* ga, const float* xb, Reducer<L>& red) {
  constexpr int T = NKY * 5;
  vf<L> acc[T];
#pragma GCC unroll 25
  for (int t = 0; t < T; ++t) acc[t] = vf<L>{};
  for (int v = 0; v < c3_vectors<L>(); ++v) {
    const vf<L> g = load<L>(ga + v * L);
#pragma GCC unroll 25
    for (int t = 0; t < T; ++t) acc[t] += g * load<L>(xb + (KY0 + t / 5) * 14 + t % 5 + v * L);
  }
#pragma GCC unroll 25
  for (int t = 0; t < T; ++t) red.push(acc[t]);
  red.drain();
}

// dE/dY2 for input map c, vectors [q0, q0 + NV): gather over the kernels reading c.
template <int L, bool GN, int NV>
LENET5_INLINE void c3_input_chunk(const ClassicNet& net, const Table& t, Scratch& s, int c, int q0) {
  vf<L> acc[NV];
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) acc[v] = vf<L>{};
  for (int n = 0; n < t.n_by_input[c]; ++n) {
    const int k = t.by_input[c][n];
    const float* ga = s.Ga3 + t.out_of[k] * kGa3Map + kGa3Front + q0;
    const float* wk = net.param[kC3Weight] + k * 25;
    for (int ky = 0; ky < 5; ++ky) {
#pragma GCC unroll 5
      for (int kx = 0; kx < 5; ++kx) {
        const float wv = GN ? wk[ky * 5 + kx] * wk[ky * 5 + kx] : wk[ky * 5 + kx];
        const float* src = ga - ky * 14 - kx;
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) acc[v] += wv * load<L>(src + v * L);
      }
    }
  }
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) store<L>(s.Gx2 + c * kY2Map + q0 + v * L, acc[v]);
}
template <int L, bool GN, int V0, int NVLeft>
LENET5_INLINE void c3_input_map(const ClassicNet& net, const Table& t, Scratch& s, int c) {
  if constexpr (NVLeft > 0) {
    constexpr int NV = block_of<NVLeft>();
    c3_input_chunk<L, GN, NV>(net, t, s, c, V0 * L);
    c3_input_map<L, GN, V0 + NV, NVLeft - NV>(net, t, s, c);
  }
}
template <int L> constexpr int s2_vectors() { return (196 + L - 1) / L; }  // 13, 25, 49

template <int L, bool GN> LENET5_INLINE void c3_backward(const ClassicNet& net, const Table& t, const Sink& sink, Scratch& s) {
  // bias terms
  {
    Reducer<L> red(s.Gb3);
    for (int o = 0; o < kMaps3; ++o) {
      const float* ga = s.Ga3 + o * kGa3Map + kGa3Front;
      vf<L> acc = {};
      for (int v = 0; v < c3_vectors<L>(); ++v) acc += load<L>(ga + v * L);
      red.push(acc);
    }
    red.finish();
  }
  // weight terms, into Gw3 (weights are still needed by the input gradient)
  {
    Reducer<L> red(s.Gw3);
    const float* y2 = GN ? s.Y2sq : s.Y2;
    for (int k = 0; k < t.K; ++k) {
      const float* ga = s.Ga3 + t.out_of[k] * kGa3Map + kGa3Front;
      const float* xb = y2 + t.inputs[k] * kY2Map;
      if constexpr (L == 16) {
        c3_weight_taps<L, 0, 5>(ga, xb, red);
      } else {
        c3_weight_taps<L, 0, 2>(ga, xb, red);
        c3_weight_taps<L, 2, 2>(ga, xb, red);
        c3_weight_taps<L, 4, 1>(ga, xb, red);
      }
    }
    red.finish();
  }
  // input gradient with the old weights, then the update
  for (int c = 0; c < kMaps1; ++c) c3_input_map<L, GN, 0, s2_vectors<L>()>(net, t, s, c);
  sink_array<4, GN>(sink, kC3Weight, s.Gw3, t.K * 25);
  sink_array<4, GN>(sink, kC3Bias, s.Gb3, kMaps3);
}

template <int L, bool GN> LENET5_INLINE void s2_backward(const ClassicNet& net, const Sink& sink, Scratch& s) {
  const float* coef = net.param[kS2Coef];
  Reducer<L> rc(s.Gs2c), rb(s.Gs2b);
  for (int c = 0; c < kMaps1; ++c) {
    vf<L> ac = {}, ab = {};
    for (int v = 0; v < s2_vectors<L>(); ++v) {
      const int q = c * kY2Map + v * L;
      const vf<L> ga = keep_first<L>(load<L>(s.Gx2 + q) * dsquash<L, GN>(load<L>(s.Y2 + q)), 196 - v * L);
      store<L>(s.Ga2 + q, ga);
      const vf<L> sv = load<L>(s.S2 + q);
      ac += ga * (GN ? sv * sv : sv);
      ab += ga;
    }
    rc.push(ac);
    rb.push(ab);
  }
  rc.finish();
  rb.finish();
  // dE/da1 = coef * ga2 upsampled * f'(y1), junk columns zeroed
  constexpr int NV = 32 / L;
  for (int c = 0; c < kMaps1; ++c) {
    const float kc = GN ? coef[c] * coef[c] : coef[c];
    for (int i = 0; i < 14; ++i) {
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        const vf<L> e = kc * keep_first<L>(dup_lo<L>(load<L>(s.Ga2 + c * kY2Map + i * 14 + v * L / 2)), 28 - v * L);
#pragma GCC unroll 2
        for (int a = 0; a < 2; ++a) {
          const int p = c * kY1Map + (2 * i + a) * 32 + v * L;
          store<L>(s.Ga1 + p, e * dsquash<L, GN>(load<L>(s.Y1 + p)));
        }
      }
    }
  }
  for (int c = 0; c < kMaps1; ++c) {
    sink_scalar<GN>(sink, kS2Coef, c, s.Gs2c[c]);
    sink_scalar<GN>(sink, kS2Bias, c, s.Gs2b[c]);
  }
}

// C1 weight terms: sum over the 28 rows of ga1 * x (x^2 for GN) per tap.
template <int L, int KY0, int NKY>
LENET5_INLINE void c1_weight_taps(const float* ga, const float* xb, Reducer<L>& red) {
  constexpr int T = NKY * 5, NV = 32 / L;
  vf<L> acc[T];
#pragma GCC unroll 25
  for (int t = 0; t < T; ++t) acc[t] = vf<L>{};
  for (int r = 0; r < 28; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const vf<L> g = load<L>(ga + r * 32 + v * L);
#pragma GCC unroll 25
      for (int t = 0; t < T; ++t) acc[t] += g * load<L>(xb + (r + KY0 + t / 5) * 32 + t % 5 + v * L);
    }
  }
#pragma GCC unroll 25
  for (int t = 0; t < T; ++t) red.push(acc[t]);
  red.drain();
}

template <int L, bool GN> LENET5_INLINE void c1_backward(const Sink& sink, Scratch& s) {
  const float* xb = GN ? s.Xsq : s.X;
  {
    Reducer<L> red(s.Gw1);
    for (int m = 0; m < kMaps1; ++m) {
      const float* ga = s.Ga1 + m * kY1Map;
      if constexpr (L == 16) {
        c1_weight_taps<L, 0, 5>(ga, xb, red);
      } else {
        c1_weight_taps<L, 0, 2>(ga, xb, red);
        c1_weight_taps<L, 2, 2>(ga, xb, red);
        c1_weight_taps<L, 4, 1>(ga, xb, red);
      }
    }
    red.finish();
  }
  {
    Reducer<L> red(s.Gb1);
    for (int m = 0; m < kMaps1; ++m) {
      vf<L> acc = {};
      for (int i = 0; i < kY1Map; i += L) acc += load<L>(s.Ga1 + m * kY1Map + i);
      red.push(acc);
    }
    red.finish();
  }
  sink_array<4, GN>(sink, kC1Weight, s.Gw1, kMaps1 * 25);
  for (int m = 0; m < kMaps1; ++m) sink_scalar<GN>(sink, kC1Bias, m, s.Gb1[m]);
}

template <int L> LENET5_INLINE void square_into(float* dst, const float* src, int n) {
  for (int i = 0; i < n; i += L) {
    const vf<L> v = load<L>(src + i);
    store<L>(dst + i, v * v);
  }
}

// s.Rbf holds dE/dy (or h_y) at the RBF outputs.
template <int L, bool GN>
LENET5_INLINE void backward_image(const ClassicNet& net, const Table& t, const Sink& sink, Scratch& s) {
  constexpr int L8 = L < 8 ? L : 8;
  rbf_backward<GN>(net, s);
  if (GN) square_into<L8>(s.Y5sq, s.Y5, 120);
  full_backward<L8, GN, kUnits6, kUnits5>(sink, kF6Weight, kF6Bias, net.param[kF6Weight], s.G6,
                                          s.Y6, GN ? s.Y5sq : s.Y5, s.Ga6, s.G5);
  if (GN) square_into<L>(s.Y4sq, s.Y4, kIn5);
  full_backward<L, GN, kUnits5, kIn5>(sink, kC5Weight, kC5Bias, net.param[kC5Weight], s.G5, s.Y5,
                                      GN ? s.Y4sq : s.Y4, s.Ga5, s.G4);
  s4_backward<L, GN>(net, sink, s);
  if (GN) square_into<L>(s.Y2sq, s.Y2, kMaps1 * kY2Map);
  c3_backward<L, GN>(net, t, sink, s);
  s2_backward<L, GN>(net, sink, s);
  if (GN) square_into<L>(s.Xsq, s.X, 1024 + 32);
  c1_backward<L, GN>(sink, s);
}

// ---------------------------------------------------------------------------------------------
// Per-ISA entry points: the templates above, inlined (flatten) into functions compiled for
// each instruction set. The drivers below pick one table by current_isa().

struct Kernels {
  void (*forward)(const ClassicNet&, const Table&, Scratch&, const float* x, float* out, int64_t n);
  void (*hessian)(const ClassicNet&, const Table&, Scratch&, const float* x, const int64_t* labels,
                  int64_t begin, int64_t end, double map_j, const Sink& acc);
  void (*pass)(const ClassicNet&, const Table&, Scratch&, const float* x, const int64_t* labels,
               const int64_t* order, int64_t n, double map_j, const Sink& sink, double* loss,
               int64_t* errors);
};

template <int L> LENET5_INLINE void forward_images(const ClassicNet& net, const Table& t, Scratch& s,
                                                   const float* x, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    load_image(s, x + i * 1024);
    forward_image<L>(net, t, s);
    std::memcpy(out + i * kClasses, s.Out, sizeof(float) * kClasses);
  }
}
template <int L> LENET5_INLINE void hessian_images(const ClassicNet& net, const Table& t, Scratch& s,
                                                   const float* x, const int64_t* labels, int64_t begin,
                                                   int64_t end, double map_j, const Sink& acc) {
  for (int64_t i = begin; i < end; ++i) {
    load_image(s, x + i * 1024);
    forward_image<L>(net, t, s);
    map_loss_grad(s.Out, static_cast<int>(labels[i]), map_j, true, s.Rbf);
    backward_image<L, true>(net, t, acc, s);
  }
}
template <int L> LENET5_INLINE void pass_images(const ClassicNet& net, const Table& t, Scratch& s,
                                                const float* x, const int64_t* labels,
                                                const int64_t* order, int64_t n, double map_j,
                                                const Sink& sink, double* loss, int64_t* errors) {
  double sum = 0;
  int64_t wrong = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = order[i];
    load_image(s, x + k * 1024);
    forward_image<L>(net, t, s);
    const LossOut r = map_loss_grad(s.Out, static_cast<int>(labels[k]), map_j, false, s.Rbf);
    sum += r.loss;
    wrong += r.error;
    backward_image<L, false>(net, t, sink, s);
  }
  *loss = sum;
  *errors = wrong;
}

#define LENET5_FUSED_KERNELS(NAME, L, ATTR)                                                       \
  ATTR void NAME##_forward(const ClassicNet& net, const Table& t, Scratch& s, const float* x,      \
                           float* out, int64_t n) {                                              \
    forward_images<L>(net, t, s, x, out, n);                                                     \
  }                                                                                              \
  ATTR void NAME##_hessian(const ClassicNet& net, const Table& t, Scratch& s, const float* x,      \
                           const int64_t* labels, int64_t begin, int64_t end, double map_j,      \
                           const Sink& acc) {                                                    \
    hessian_images<L>(net, t, s, x, labels, begin, end, map_j, acc);                             \
  }                                                                                              \
  ATTR void NAME##_pass(const ClassicNet& net, const Table& t, Scratch& s, const float* x,         \
                        const int64_t* labels, const int64_t* order, int64_t n, double map_j,     \
                        const Sink& sink, double* loss, int64_t* errors) {                       \
    pass_images<L>(net, t, s, x, labels, order, n, map_j, sink, loss, errors);                   \
  }                                                                                              \
  const Kernels NAME##_kernels = {NAME##_forward, NAME##_hessian, NAME##_pass};

// GCC's predictive commoning turns the overlapping tap loads of the unrolled convolution loops
// into long chains of spilled registers; it is off for these functions.
#if defined(__clang__)
#define LENET5_FUSED_OPT
#else
#define LENET5_FUSED_OPT optimize("no-predictive-commoning"),
#endif
LENET5_FUSED_KERNELS(portable, 4, __attribute__((LENET5_FUSED_OPT flatten)))
#if defined(__x86_64__) || defined(__i386__)
LENET5_FUSED_KERNELS(avx2, 8, __attribute__((target("avx2,fma"), LENET5_FUSED_OPT flatten)))
LENET5_FUSED_KERNELS(avx2_wide, 16, __attribute__((target("avx2,fma"), LENET5_FUSED_OPT flatten)))
LENET5_FUSED_KERNELS(avx512, 16, __attribute__((target("avx512f,avx2,fma"), LENET5_FUSED_OPT flatten)))
#endif
#undef LENET5_FUSED_KERNELS

const Kernels& pick_kernels() {
  switch (current_isa()) {
#if defined(__x86_64__) || defined(__i386__)
    case Isa::kAvx512: return avx512_kernels;
    case Isa::kAvx2Wide: return avx2_wide_kernels;
    case Isa::kAvx2: return avx2_kernels;
#endif
    default: return portable_kernels;
  }
}

void check_net(const ClassicNet& net) {
  for (int p = 0; p < kClassicParams; ++p)
    if (!net.param[p]) throw std::invalid_argument("lenet5_fused: missing parameter " + std::to_string(p));
  if (!net.codes) throw std::invalid_argument("lenet5_fused: missing RBF codes");
}
void check_labels(const int64_t* labels, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (labels[i] < 0 || labels[i] >= kClasses)
      throw std::invalid_argument("lenet5_fused: label " + std::to_string(labels[i]) + " at index " +
                                  std::to_string(i) + " is outside [0, 10)");
}

}  // namespace

int64_t classic_param_size(int param, int64_t c3_kernels) {
  if (param < 0 || param >= kClassicParams) return 0;
  return param == kC3Weight ? 25 * c3_kernels : static_cast<int64_t>(kParamSize[param]);
}

void lenet5_forward(const ClassicNet& net, const float* x, float* out, int64_t N, int nthreads) {
  check_net(net);
  const Table t = make_table(net);
  const Kernels& k = pick_kernels();
  if (N <= 0) return;
  // Contiguous ranges of images, a few per thread so uneven progress balances out.
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nthreads, N)));
  const int64_t ntasks = threads == 1 ? 1 : std::min<int64_t>(N, threads * 4);
  parallel_tasks(ntasks, threads, [&](int64_t task) {
    const int64_t b = N * task / ntasks, e = N * (task + 1) / ntasks;
    k.forward(net, t, thread_scratch(), x + b * 1024, out + b * kClasses, e - b);
  });
}

void lenet5_sdlm_hessian(const ClassicNet& net, const float* x, const int64_t* labels, int64_t N,
                         double map_j, float* const* hessian, int nthreads) {
  check_net(net);
  const Table t = make_table(net);
  if (N <= 0) throw std::invalid_argument("lenet5_sdlm_hessian: no samples");
  check_labels(labels, N);
  const Kernels& k = pick_kernels();
  int64_t offset[kClassicParams + 1] = {0};
  for (int p = 0; p < kClassicParams; ++p) offset[p + 1] = offset[p] + classic_param_size(p, t.K);
  const int64_t total = offset[kClassicParams];
  std::vector<float> sum(total);
  // Fixed slices summed in slice order: the result does not depend on the thread count.
  batch_slices<float>(N, total, sum.data(), nthreads, [&](int64_t begin, int64_t end, float* acc) {
    Sink s{};
    for (int p = 0; p < kClassicParams; ++p) s.dst[p] = acc + offset[p];
    k.hessian(net, t, thread_scratch(), x, labels, begin, end, map_j, s);
  });
  const float inv = static_cast<float>(1.0 / static_cast<double>(N));
  for (int p = 0; p < kClassicParams; ++p)
    for (int64_t i = 0; i < offset[p + 1] - offset[p]; ++i) hessian[p][i] = sum[offset[p] + i] * inv;
}

void lenet5_sdlm_pass(const ClassicNet& net, const float* x, const int64_t* labels, int64_t N,
                      const int64_t* order, int64_t n, double map_j, const float* const* steps,
                      double* sum_loss, int64_t* errors) {
  check_net(net);
  const Table t = make_table(net);
  check_labels(labels, N);
  for (int64_t i = 0; i < n; ++i)
    if (order[i] < 0 || order[i] >= N)
      throw std::invalid_argument("lenet5_sdlm_pass: order[" + std::to_string(i) + "] = " +
                                  std::to_string(order[i]) + " is outside [0, " + std::to_string(N) + ")");
  for (int p = 0; p < kClassicParams; ++p)
    if (!steps[p]) throw std::invalid_argument("lenet5_sdlm_pass: missing step tensor " + std::to_string(p));
  Sink s{};
  for (int p = 0; p < kClassicParams; ++p) {
    s.dst[p] = net.param[p];
    s.step[p] = steps[p];
  }
  *sum_loss = 0;
  *errors = 0;
  if (n <= 0) return;
  pick_kernels().pass(net, t, thread_scratch(), x, labels, order, n, map_j, s, sum_loss, errors);
}

}  // namespace cpu
}  // namespace lenet5
