// fused_sample.cpp — the classic LeNet-5 one image at a time, vectorised within the image, in
// one native call: batched inference (threaded over images), the SDLM Gauss-Newton diagonal,
// a whole pass of per-sample (batch 1) SDLM updates, a forward / backward pair for autograd
// at small batches (the forward saves each image's activations in a caller buffer; the backward
// adds the parameter gradients), and forward + MAP loss + backward per image in one call
// (lenet5_sample_train). float32, CPU. (fused_batch.cpp puts images in the lanes instead;
// which batches each engine runs is Python's choice, fused.py's engine(). API: engine.h.)
//
// Network: C1 1->6 (32x32 -> 28x28), S2, C3 through a CSR table (16 output maps, at most 96
// kernels), S4, C5 (400 -> 120), F6 (120 -> 84), Euclidean RBF over the fixed [10, 84] codes;
// every layer but the RBF squashed. Sizes and parameter layout come from network.h. The weights
// are used in the model's own layout (no packing per call).
//
// File layout: geometry and memory layout; sinks (where backward puts its terms);
// small helpers; then one section per layer, forward beside backward: input, C1, S2, C3, S4,
// C5/F6, RBF + MAP loss; then a whole image; then the drivers (per-ISA entry points, public API).
//
// Memory of one image (floats; "junk" lanes are finite and never reach a result):
//   State (forward activations, all backward needs; thread-local, or the caller's saved buffer)
//     X   the image, 32 rows of 32, zero slack        Y1  C1 [6][28 rows][32 lanes] (28 real)
//     S2, Y2  S2 window sums and outputs [6][14 rows][16 lanes] (14 real)
//     Y3  C3 [16][10 rows][16 lanes] (10 real)        S4, Y4  [16][5][5] = C5's input
//     Y5 [120], Y6 [84], Out [10]
//   Work (thread-local): shifted copies of X, Y2 and C3's gradient (see below), the gradients.
// Tricks:
//  * Aligned loads only in the convolutions. A 5x5 tap (ky, kx) reads its input at column + kx;
//    an unaligned load there costs two loads on AVX-512 (it crosses a cache line almost always).
//    Instead each convolution input exists in 5 copies shifted by kx (Xs(kx), Y2s(kx): the flat
//    array from offset kx; S2 stores each output vector 5 times, at offsets -kx), so tap
//    (ky, kx) is an aligned load of copy kx at row + ky. Rows are 32 lanes (C1) or 16 (S2, C3).
//  * Row reuse across ky ("ky-reuse"): with rows of whole vectors, a shift by ky is a change of
//    register. C3 forward, per kernel and kx, loads each input row once and adds it, times the
//    kernel column's 5 weights (in registers), into the up-to-5 output rows it reaches: 14 loads
//    per 50 FMAs. The input gradient is the same gather backwards: each row of C3's gradient,
//    from copies shifted right by kx (Ga3s(kx), written by S4's backward at offsets +kx; lanes
//    10..15 are exact zeros, so the shift brings zeros in), goes to the rows r = i + ky it
//    reaches: aligned loads, FMAs into 14 register rows, no read-modify-write, no zero frame.
//    The weight terms pair each input row with the gradient rows it meets (sliding in registers),
//    even and odd rows in separate accumulators (10 FMA chains: FMA latency, not throughput, bound
//    5), one vector per tap reduced L taps at a time (hsum_rows).
//  * C5, F6, RBF are dot products against [out][in] rows, one row after another (sequential
//    weight streams; L row sums reduced at once by a shuffle tree). Backward walks the same rows
//    as axpys: the input gradient in registers (all 400 inputs of C5 at L=16: the weights stream
//    in row order), and the SDLM update w -= step * g * x fused into the same pass, so every
//    weight and step is read once (old weight first, as the math requires).
//  * The next sample's image is prefetched during the pass (samples come in random order).
//  * Squashing: activations.h's float32 formula, the same every CPU and CUDA kernel uses.
//  * Vectors are GCC/Clang generic vectors of L = 4, 8 or 16 floats (vec.h). The same templates
//    are instantiated inside __attribute__((target(...), flatten)) entry points: 16 lanes for
//    AVX-512F, 8 for AVX2+FMA, 4 portable (SSE2 / NEON / scalar), picked at run time from
//    lenet5::cpu::current_isa() (simd.h); kAvx2Wide runs the 16-lane code compiled for AVX2.
//    No intrinsics, no -march. FMAs come from contraction of a*b+c (GNU mode, CMake's default).
//  * One backward, three sinks (Mode): kUpdate steps every weight in place as soon as nothing
//    needs its old value (the SDLM pass), kGaussNewton propagates SDLM's h (squared weights and
//    inputs, f'^2: LeCun et al. 1998, appendix C, as the per-op kernels with gauss_newton) into
//    accumulators, kGradient adds dE/dw to accumulators (autograd).
//
// SDLM per sample: MAP loss E = y_c + log(e^-j + sum e^-y_i); backward; w_k -= step_k dE/dw_k.
// Gauss-Newton: h_y = q(1-q) at the RBF, 4(x-w)^2 through it plus 2, then as above.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/loss.h"
#include "support/parallel.h"
#include "support/simd.h"
#include "support/vec.h"

namespace lenet5 {
namespace cpu {
namespace {
using namespace vec;
using namespace engine;
using Table = C3Index;  // C3's table, resolved (conn_table.h)

// =============================================================================================
// Geometry and memory layout

// (kK, kMaps1, kC3, kUnits5, ...: the geometry's short names, engine.h)
constexpr int kInSize = kIn * kIn;                        // floats of one image
constexpr int kRow = 16;                                  // lanes of an S2 or C3 row
constexpr int kC1Map = kC1 * kIn;                         // C1 map: kC1 rows of kIn lanes
constexpr int kS2Map = kS2 * kRow;                        // S2 map: kS2 rows of kRow lanes
constexpr int kC3Map = kC3 * kRow;                        // C3 map: kC3 rows of kRow lanes
constexpr int kS4Map = kS4 * kS4;                         // S4 map, compact (C5's input order)
constexpr int kS2All = kMaps1 * kS2Map, kC3All = kMaps3 * kC3Map;
constexpr int kPad = 32;   // finite slack after arrays read at an offset (< kK) or by wide tails
// n floats and the slack, rounded up to whole cache lines (so every array starts 64-byte aligned)
constexpr int padded(int n) { return (n + kPad + 15) / 16 * 16; }
static_assert(kC1 <= kIn && kIn == 2 * kRow && kS2 <= kRow && kC3 <= kRow &&
              kC1 == 2 * kS2 && kC3 == 2 * kS4 && kS2 == kC3 + kK - 1 && kIn == kC1 + kK - 1,
              "the layout below is laid out for the paper's map sizes");

constexpr int kParams = kClassicOrder.count;  // classic: a parameter's index is its role (network.h)

// Forward activations of one image: everything backward reads. Lives in Scratch, or in the
// caller's buffer (lenet5_sample_forward_save), so it holds no pointers.
struct alignas(64) State {
  float X[padded(kInSize)];
  float Y1[kMaps1 * kC1Map];
  float S2[kS2All], Y2[padded(kS2All)];
  float Y3[padded(kC3All)];
  float S4[padded(kIn5)], Y4[padded(kIn5)];
  float Y5[padded(kUnits5)], Y6[padded(kUnits6)], Out[padded(kClasses)];
};
static_assert(sizeof(State) % 64 == 0, "saved states are packed back to back");

// Everything else one image needs (thread-local).
struct alignas(64) Work {
  // Shifted copies, kRow floats of slack in front: Xs(kx)[i] = X[i + kx] and Y2s(kx)[i] =
  // Y2[i + kx] (squared in Gauss-Newton backward), Ga3s(kx)[i] = ga3[i - kx] (C3's gradient
  // after f'; Ga3s(0) is ga3 itself).
  float Xsf[kK][kRow + padded(kInSize)], Y2sf[kK][kRow + padded(kS2All)], Ga3sf[kK][kRow + padded(kC3All)];
  float Rbf[padded(kClasses)];     // dE/dy (or h) at the RBF outputs
  float G6[padded(kUnits6)], Ga6[padded(kUnits6)], G5[padded(kUnits5)], Ga5[padded(kUnits5)];
  float Y5sq[padded(kUnits5)], Y4sq[padded(kIn5)];
  float G4[padded(kIn5)], Ga4[padded(kIn5)];
  float Gx2[padded(kS2All)], Ga2[padded(kS2All)], Ga1[kMaps1 * kC1Map];
  // per-image parameter terms (L floats of slack: the reducer stores whole vectors)
  float Gw1[padded(kMaps1 * kTaps)], Gw3[padded(kMaxKernels3 * kTaps)];
  float Gb1[padded(kMaps1)], Gs2c[padded(kMaps1)], Gs2b[padded(kMaps1)];
  float Gb3[padded(kMaps3)], Gs4c[padded(kMaps3)], Gs4b[padded(kMaps3)];
  float* Xs(int kx) { return Xsf[kx] + kRow; }
  float* Y2s(int kx) { return Y2sf[kx] + kRow; }
  float* Ga3s(int kx) { return Ga3sf[kx] + kRow; }
  const float* Xs(int kx) const { return Xsf[kx] + kRow; }
  const float* Y2s(int kx) const { return Y2sf[kx] + kRow; }
  const float* Ga3s(int kx) const { return Ga3sf[kx] + kRow; }
};

struct Scratch {
  State state;
  Work work;
};
Scratch& thread_scratch() {
  // One per thread, zeroed once: pads stay zero (or finite) forever.
  thread_local std::unique_ptr<Scratch> s(new Scratch());
  return *s;
}

// =============================================================================================
// Sinks: what a backward pass does with each parameter's terms

enum class Mode { kUpdate, kGaussNewton, kGradient };
// Gauss-Newton terms square the weights and inputs they pass through, and f'.
template <Mode M> constexpr bool kSq = M == Mode::kGaussNewton;

struct Sink {
  float* dst[kParams];         // the weights (kUpdate) or accumulators (+=)
  const float* step[kParams];  // kUpdate: per-weight step sizes
};
template <Mode M> LENET5_INLINE void sink_scalar(const Sink& s, int param, int i, float term) {
  if constexpr (M == Mode::kUpdate) s.dst[param][i] -= s.step[param][i] * term;
  else s.dst[param][i] += term;
}
template <int L, Mode M> LENET5_INLINE void sink_vec(float* dst, const float* step, const vf<L>& term) {
  if constexpr (M == Mode::kUpdate) store<L>(dst, load<L>(dst) - load<L>(step) * term);
  else store<L>(dst, load<L>(dst) + term);
}
// n contiguous terms, LS lanes at a time.
template <int LS, Mode M> LENET5_INLINE void sink_array(const Sink& s, int param, const float* term, int n) {
  float* d = s.dst[param];
  const float* st = s.step[param];
  int i = 0;
  for (; i + LS <= n; i += LS) sink_vec<LS, M>(d + i, M == Mode::kUpdate ? st + i : nullptr, load<LS>(term + i));
  for (; i < n; ++i) sink_scalar<M>(s, param, i, term[i]);
}

// =============================================================================================
// Small helpers

template <int L> LENET5_INLINE vf<L> squash(const vf<L>& a) { return act::forward<kScaledTanh>(a); }
// f'(a) (f'(a)^2 for Gauss-Newton) from the output y.
template <int L, bool Sq> LENET5_INLINE vf<L> dsquash(const vf<L>& y) { return act::grad_factor<kScaledTanh, Sq>(y); }

// y[0:n] = f(y[0:n] + b[0:n]), n a multiple of LS.
template <int LS> LENET5_INLINE void bias_squash(float* y, const float* b, int n) {
  for (int i = 0; i < n; i += LS) store<LS>(y + i, squash<LS>(load<LS>(y + i) + load<LS>(b + i)));
}
template <int L> LENET5_INLINE void square_into(float* dst, const float* src, int n) {
  for (int i = 0; i < n; i += L) {
    const vf<L> v = load<L>(src + i);
    store<L>(dst + i, v * v);
  }
}
// dst(kx)[i] = src[i + kx] (squared when Sq), i in [0, N), N a multiple of L, kx in [0, kK);
// src has kK - 1 floats of slack.
template <int L, bool Sq, int N, class Dst> LENET5_INLINE void shifted_copies(Dst dst, const float* src) {
  static_assert(N % L == 0, "shifted_copies: size");
  for (int kx = 0; kx < kK; ++kx)
    for (int i = 0; i < N; i += L) {
      const vf<L> v = load<L>(src + kx + i);
      store<L>(dst(kx) + i, Sq ? v * v : v);
    }
}

// Collects vectors and reduces them L at a time (drain after a batch of pushes, finish at the
// end); the sums land contiguously in out, which needs L floats of slack.
template <int L> struct Reducer {
  vf<L> rows[L + 32];
  int n = 0;
  float* out;
  explicit Reducer(float* o) : out(o) {}
  LENET5_INLINE void push(const vf<L>& v) { rows[n++] = v; }
  LENET5_INLINE vf<L>* take(int count) {  // the next count rows, to be filled (count <= 32)
    vf<L>* r = rows + n;
    n += count;
    return r;
  }
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

// Weight terms of one 5x5 kernel: term[ky * 5 + kx] = sum over the output rows r and their lanes
// of ga[r] * xs[kx][r + ky] (xs: the input's kx-shifted copies, rows of Stride lanes). Per kx and
// vector column, each input row is loaded once and meets the (up to 5) gradient rows it pairs
// with, which stay in registers while the rows advance: about 2 loads per 5 FMAs. Even and odd
// gradient rows go to separate accumulators (10 independent FMA chains, not 5: FMA latency).
template <int L, int Rows, int Stride>
LENET5_INLINE void conv_weight_terms(const float* ga, const float* const* xs, vf<L>* term) {
  constexpr int NV = Stride / L;
  // Whether all gradient rows fit in registers beside the accumulators (else they are reloaded
  // per kx: the barrier keeps the compiler from hoisting Rows loads out of the kx loop).
  constexpr bool kKeepRows = Rows + 2 * kK + 1 <= (L == 16 ? 32 : 16);
  for (int v = 0; v < NV; ++v) {
    for (int kx = 0; kx < kK; ++kx) {
      if constexpr (!kKeepRows) asm volatile("" ::: "memory");
      vf<L> acc[2][kK], g[Rows];
#pragma GCC unroll 5
      for (int ky = 0; ky < kK; ++ky) acc[0][ky] = acc[1][ky] = vf<L>{};
#pragma GCC unroll 32
      for (int q = 0; q < Rows + kK - 1; ++q) {
        if (q < Rows) g[q] = load<L>(ga + q * Stride + v * L);
        const vf<L> x = load<L>(xs[kx] + q * Stride + v * L);
#pragma GCC unroll 5
        for (int ky = 0; ky < kK; ++ky)
          if (q - ky >= 0 && q - ky < Rows) acc[(q - ky) & 1][ky] += g[q - ky] * x;
      }
#pragma GCC unroll 5
      for (int ky = 0; ky < kK; ++ky) {
        const vf<L> sum = acc[0][ky] + acc[1][ky];
        term[ky * kK + kx] = v == 0 ? sum : term[ky * kK + kx] + sum;
      }
    }
  }
}

// =============================================================================================
// Input: the image, and its kx-shifted copies for C1

LENET5_INLINE void load_image(State& s, const float* x) { std::memcpy(s.X, x, sizeof(float) * kInSize); }
LENET5_INLINE void prefetch_image(const float* x) {
  constexpr int kLine = 64 / sizeof(float);  // floats per cache line
  for (int i = 0; i < kInSize; i += kLine) __builtin_prefetch(x + i);
}

// =============================================================================================
// C1: 6 maps of 28x28 = 5x5 convolution of the image, squashed. Rows of kIn lanes (28 real).

template <int L> LENET5_INLINE void c1_forward(const FusedNet& net, const Work& w, State& s) {
  constexpr int NV = kIn / L;                             // vectors per C1 row
  constexpr int MG = L == 16 ? 6 : (L == 8 ? 3 : 1);      // maps per register block
  static_assert(kMaps1 % MG == 0, "C1 map blocks");
  const float* wt = net.param[kC1Weight];
  const float* b = net.param[kC1Bias];
  for (int oy = 0; oy < kC1; ++oy) {
    for (int m0 = 0; m0 < kMaps1; m0 += MG) {
      vf<L> acc[MG][NV];
#pragma GCC unroll 8
      for (int m = 0; m < MG; ++m)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[m][v] = splat<L>(b[m0 + m]);
      for (int ky = 0; ky < kK; ++ky) {
#pragma GCC unroll 5
        for (int kx = 0; kx < kK; ++kx) {
          const float* xr = w.Xs(kx) + (oy + ky) * kIn;
          vf<L> xv[NV];
#pragma GCC unroll 8
          for (int v = 0; v < NV; ++v) xv[v] = load<L>(xr + v * L);
#pragma GCC unroll 8
          for (int m = 0; m < MG; ++m) {
            const float wv = wt[(m0 + m) * kTaps + ky * kK + kx];
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) acc[m][v] += wv * xv[v];
          }
        }
      }
#pragma GCC unroll 8
      for (int m = 0; m < MG; ++m)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) store<L>(s.Y1 + (m0 + m) * kC1Map + oy * kIn + v * L, squash<L>(acc[m][v]));
    }
  }
}

// C1 backward from Ga1 = dE/da1 (junk lanes zero): weight and bias terms (C1's input needs none).
template <int L, Mode M> LENET5_INLINE void c1_backward(const Sink& sink, Work& w) {
  const float* xs[kK];
  for (int kx = 0; kx < kK; ++kx) xs[kx] = w.Xs(kx);
  {
    Reducer<L> red(w.Gw1);
    for (int m = 0; m < kMaps1; ++m) {
      conv_weight_terms<L, kC1, kIn>(w.Ga1 + m * kC1Map, xs, red.take(kTaps));
      red.drain();
    }
    red.finish();
  }
  {
    Reducer<L> red(w.Gb1);
    for (int m = 0; m < kMaps1; ++m) {
      vf<L> acc = {};
      for (int i = 0; i < kC1Map; i += L) acc += load<L>(w.Ga1 + m * kC1Map + i);
      red.push(acc);
    }
    red.finish();
  }
  sink_array<4, M>(sink, kC1Weight, w.Gw1, kMaps1 * kTaps);
  for (int m = 0; m < kMaps1; ++m) sink_scalar<M>(sink, kC1Bias, m, w.Gb1[m]);
}

// =============================================================================================
// S2 and S4: 2x2 window sums (kept for backward), coefficient, bias, squashing

// in: maps of in_map floats, rows of in_stride; out: rows of out_w floats (out_map per map).
// Chunks * 2L input lanes per row pair; junk tail lanes spill into the next row, rewritten next.
// store_y(at, y) stores the outputs at flat offset at.
template <int L, int Rows, int Chunks, class StoreY>
LENET5_INLINE void subsample_forward(const float* in, int in_map, int in_stride, const float* coef,
                                     const float* bias, int maps, float* S, int out_map, int out_w,
                                     StoreY store_y) {
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
        const int at = m * out_map + i * out_w + L * ch;
        store<L>(S + at, sum);
        store_y(at, squash<L>(c * sum + b));
      }
    }
  }
}

// Y2, and its kx-shifted copies for C3 (each output vector stored 5 times, at offsets -kx).
template <int L> LENET5_INLINE void s2_forward(const FusedNet& net, State& s, Work& w) {
  subsample_forward<L, kS2, kIn / (2 * L)>(s.Y1, kC1Map, kIn, net.param[kS2Coef], net.param[kS2Bias],
                                           kMaps1, s.S2, kS2Map, kRow, [&](int at, const vf<L>& y) {
    store<L>(s.Y2 + at, y);
#pragma GCC unroll 5
    for (int kx = 0; kx < kK; ++kx) store<L>(w.Y2s(kx) + at - kx, y);
  });
}

// S2 backward from Gx2 = dE/dY2: ga2 = g f'(y2) (junk lanes zeroed), coefficient and bias terms,
// and Ga1 = coef * ga2 upsampled 2x2 * f'(y1) (junk lanes 28..31 come out zero).
template <int L, Mode M>
LENET5_INLINE void s2_backward(const FusedNet& net, const Sink& sink, const State& s, Work& w) {
  constexpr bool Sq = kSq<M>;
  constexpr int NR = kRow / L;
  const float* coef = net.param[kS2Coef];
  Reducer<L> rc(w.Gs2c), rb(w.Gs2b);
  for (int c = 0; c < kMaps1; ++c) {
    vf<L> ac = {}, ab = {};
    for (int r = 0; r < kS2; ++r) {
#pragma GCC unroll 4
      for (int v = 0; v < NR; ++v) {
        const int q = c * kS2Map + r * kRow + v * L;
        const vf<L> ga = keep_first<L>(load<L>(w.Gx2 + q) * dsquash<L, Sq>(load<L>(s.Y2 + q)), kS2 - v * L);
        store<L>(w.Ga2 + q, ga);
        const vf<L> sv = load<L>(s.S2 + q);
        ac += ga * (Sq ? sv * sv : sv);
        ab += ga;
      }
    }
    rc.push(ac);
    rb.push(ab);
  }
  rc.finish();
  rb.finish();
  constexpr int NV = kIn / L;
  for (int c = 0; c < kMaps1; ++c) {
    const float kc = Sq ? coef[c] * coef[c] : coef[c];
    for (int i = 0; i < kS2; ++i) {
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        const vf<L> e = kc * dup_lo<L>(load<L>(w.Ga2 + c * kS2Map + i * kRow + v * L / 2));
#pragma GCC unroll 2
        for (int a = 0; a < 2; ++a) {
          const int p = c * kC1Map + (2 * i + a) * kIn + v * L;
          store<L>(w.Ga1 + p, e * dsquash<L, Sq>(load<L>(s.Y1 + p)));
        }
      }
    }
  }
  for (int c = 0; c < kMaps1; ++c) {
    sink_scalar<M>(sink, kS2Coef, c, w.Gs2c[c]);
    sink_scalar<M>(sink, kS2Bias, c, w.Gs2b[c]);
  }
}

// =============================================================================================
// C3: 16 maps of 10x10, output map o sums its table's kernels over their input maps, squashed.
// Rows of kRow lanes (10 real). Taps read Y2s(kx) at row + ky: aligned.

// Output rows [R0, R0 + RB) of map o. Per kernel and kx, each input row of the kx-shifted copy is
// loaded once and feeds the (up to 5) output rows it reaches (ky = row - output row), with the
// kernel column's 5 weights in registers: 14 loads per 50 FMAs instead of one load per FMA.
template <int L, int R0>
LENET5_INLINE void c3_forward_rows(const FusedNet& net, const Table& t, const Work& w, State& s, int o) {
  constexpr int NV = kRow / L, RB = std::min(L == 16 ? kC3 : (L == 8 ? 5 : 2), kC3 - R0);
  const float* w3 = net.param[kC3Weight];
  vf<L> acc[RB][NV];
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = splat<L>(net.param[kC3Bias][o]);
  for (int k = t.offsets[o]; k < t.offsets[o + 1]; ++k) {
    const float* wk = w3 + k * kTaps;
    for (int kx = 0; kx < kK; ++kx) {
      const float* src = w.Y2s(kx) + t.inputs[k] * kS2Map;
      vf<L> wv[kK];
#pragma GCC unroll 5
      for (int ky = 0; ky < kK; ++ky) wv[ky] = splat<L>(wk[ky * kK + kx]);
#pragma GCC unroll 16
      for (int q = R0; q < R0 + RB + kK - 1; ++q)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
          const vf<L> x = load<L>(src + q * kRow + v * L);
#pragma GCC unroll 5
          for (int ky = 0; ky < kK; ++ky)
            if (q - ky >= R0 && q - ky < R0 + RB) acc[q - ky - R0][v] += wv[ky] * x;
        }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      store<L>(s.Y3 + o * kC3Map + (R0 + r) * kRow + v * L, squash<L>(acc[r][v]));
  if constexpr (R0 + RB < kC3) c3_forward_rows<L, R0 + RB>(net, t, w, s, o);
}

template <int L> LENET5_INLINE void c3_forward(const FusedNet& net, const Table& t, const Work& w, State& s) {
  for (int o = 0; o < kMaps3; ++o) c3_forward_rows<L, 0>(net, t, w, s, o);
}

// dE/dY2 for input map c, rows [R0, R0 + RB): a gather over the kernels reading c. Tap (ky, kx)
// adds w * ga3s[kx] row i to row i + ky; per kernel and kx each gradient row is loaded once and
// feeds the (up to 5) rows it reaches, the 5 weights (squared for Gauss-Newton) in registers.
template <int L, bool Sq, int R0>
LENET5_INLINE void c3_input_rows(const FusedNet& net, const Table& t, Work& w, int c) {
  constexpr int NV = kRow / L, RB = std::min(L == 16 ? kS2 : (L == 8 ? 4 : 2), kS2 - R0);
  constexpr int I0 = std::max(0, R0 - kK + 1), I1 = std::min(kC3, R0 + RB);  // rows that reach
  vf<L> acc[RB][NV];
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = vf<L>{};
  for (int j = t.by_input_begin[c]; j < t.by_input_begin[c + 1]; ++j) {
    const int k = t.by_input[j];
    const float* wk = net.param[kC3Weight] + k * kTaps;
    const int o = t.out_of[k];
    for (int kx = 0; kx < kK; ++kx) {
      const float* src = w.Ga3s(kx) + o * kC3Map;
      vf<L> wv[kK];
#pragma GCC unroll 5
      for (int ky = 0; ky < kK; ++ky) {
        const float x = wk[ky * kK + kx];
        wv[ky] = splat<L>(Sq ? x * x : x);
      }
#pragma GCC unroll 16
      for (int i = I0; i < I1; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
          const vf<L> g = load<L>(src + i * kRow + v * L);
#pragma GCC unroll 5
          for (int ky = 0; ky < kK; ++ky)
            if (i + ky >= R0 && i + ky < R0 + RB) acc[i + ky - R0][v] += wv[ky] * g;
        }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) store<L>(w.Gx2 + c * kS2Map + (R0 + r) * kRow + v * L, acc[r][v]);
  if constexpr (R0 + RB < kS2) c3_input_rows<L, Sq, R0 + RB>(net, t, w, c);
}

// C3 backward from Ga3 = dE/da3 (junk lanes exact zeros): bias and weight terms, dE/dY2 with
// the old weights, then the weights' sink.
template <int L, Mode M>
LENET5_INLINE void c3_backward(const FusedNet& net, const Table& t, const Sink& sink, const State& s, Work& w) {
  constexpr bool Sq = kSq<M>;
  const float* ga3 = w.Ga3s(0);
  {
    Reducer<L> red(w.Gb3);
    for (int o = 0; o < kMaps3; ++o) {
      vf<L> acc = {};
      for (int i = 0; i < kC3Map; i += L) acc += load<L>(ga3 + o * kC3Map + i);
      red.push(acc);
    }
    red.finish();
  }
  // weight terms against Y2's shifted copies (squared for Gauss-Newton)
  if constexpr (Sq) shifted_copies<L, true, kS2All>([&](int kx) { return w.Y2s(kx); }, s.Y2);
  {
    Reducer<L> red(w.Gw3);
    for (int k = 0; k < t.K; ++k) {
      const float* xs[kK];
      for (int kx = 0; kx < kK; ++kx) xs[kx] = w.Y2s(kx) + t.inputs[k] * kS2Map;
      conv_weight_terms<L, kC3, kRow>(ga3 + t.out_of[k] * kC3Map, xs, red.take(kTaps));
      red.drain();
    }
    red.finish();
  }
  for (int c = 0; c < kMaps1; ++c) c3_input_rows<L, Sq, 0>(net, t, w, c);
  sink_array<4, M>(sink, kC3Weight, w.Gw3, t.K * kTaps);
  sink_array<4, M>(sink, kC3Bias, w.Gb3, kMaps3);
}

// =============================================================================================
// S4: 2x2 window sums of C3's rows into C5's compact input

template <int L> LENET5_INLINE void s4_forward(const FusedNet& net, State& s) {
  subsample_forward<L, kS4, (kC3 + 2 * L - 1) / (2 * L)>(
      s.Y3, kC3Map, kRow, net.param[kS4Coef], net.param[kS4Bias], kMaps3, s.S4, kS4Map, kS4,
      [&](int at, const vf<L>& y) { store<L>(s.Y4 + at, y); });
}

// S4 backward from G4 = dE/dY4: ga4 = g f'(y4), coefficient and bias terms, and C3's gradient
// ga3 = coef * ga4 upsampled 2x2 * f'(y3), junk lanes exact zeros, into Ga3s(kx) at offsets +kx
// (the first kx floats of each copy are never written: zeros).
template <int L, Mode M>
LENET5_INLINE void s4_backward(const FusedNet& net, const Sink& sink, const State& s, Work& w) {
  constexpr bool Sq = kSq<M>;
  static_assert(kIn5 % L == 0, "S4 backward: C5 inputs in whole vectors");
  for (int i = 0; i < kIn5; i += L) {
    const vf<L> ga = load<L>(w.G4 + i) * dsquash<L, Sq>(load<L>(s.Y4 + i));
    store<L>(w.Ga4 + i, ga);
    const vf<L> sv = load<L>(s.S4 + i);
    store<L>(w.G4 + i, ga * (Sq ? sv * sv : sv));   // G4 is free now: the coefficient terms
  }
  const float* coef = net.param[kS4Coef];
  constexpr int NR = kRow / L;
  for (int o = 0; o < kMaps3; ++o) {
    float sc = 0, sb = 0;
    for (int k = 0; k < kS4Map; ++k) {
      sc += w.G4[o * kS4Map + k];
      sb += w.Ga4[o * kS4Map + k];
    }
    w.Gs4c[o] = sc;
    w.Gs4b[o] = sb;
    const float kc = Sq ? coef[o] * coef[o] : coef[o];
    for (int i = 0; i < kS4; ++i) {
      vf<L> e[NR];
#pragma GCC unroll 4
      for (int v = 0; v < NR; ++v)
        e[v] = kc * keep_first<L>(dup_lo<L>(load<L>(w.Ga4 + o * kS4Map + i * kS4 + v * L / 2)), kC3 - v * L);
#pragma GCC unroll 2
      for (int a = 0; a < 2; ++a)
#pragma GCC unroll 4
        for (int v = 0; v < NR; ++v) {
          const int p = o * kC3Map + (2 * i + a) * kRow + v * L;
          const vf<L> ga = e[v] * dsquash<L, Sq>(load<L>(s.Y3 + p));
#pragma GCC unroll 5
          for (int kx = 0; kx < kK; ++kx) store<L>(w.Ga3s(kx) + p + kx, ga);  // and shifted copies
        }
    }
  }
  for (int o = 0; o < kMaps3; ++o) {
    sink_scalar<M>(sink, kS4Coef, o, w.Gs4c[o]);
    sink_scalar<M>(sink, kS4Bias, o, w.Gs4b[o]);
  }
}

// =============================================================================================
// C5 and F6: fully connected layers against [out][in] weight rows

// y[0:O] = W x for W [O, D]: each row one accumulator over x in order, Rows (1 or 2) rows at a
// time (sequential weight streams), L row sums reduced at once. y needs L floats of slack.
// Measured: C5 (weights from L2) at 8 lanes runs faster two rows at a time (two FMA chains), at
// 16 lanes one (two 512-bit streams ran at half the speed); F6 (40 KB) one.
template <int L, int O, int D, int Rows = 1> LENET5_INLINE void fc_forward(const float* w, const float* x, float* y) {
  static_assert(D % L == 0, "fc_forward: D must be a multiple of L");
  for (int o0 = 0; o0 < O; o0 += L) {
    const int R = std::min(L, O - o0);
    vf<L> acc[L];
#pragma GCC unroll 16
    for (int r = 0; r < L; ++r) acc[r] = vf<L>{};
    for (int r = 0; r < R; r += Rows) {
      const float* wr = w + (o0 + r) * D;
      if (Rows == 2 && r + 1 < R) {
#pragma GCC unroll 25
        for (int i = 0; i < D; i += L) {
          const vf<L> xv = load<L>(x + i);
          acc[r] += load<L>(wr + i) * xv;
          acc[r + 1] += load<L>(wr + D + i) * xv;
        }
      } else {
#pragma GCC unroll 25
        for (int i = 0; i < D; i += L) acc[r] += load<L>(wr + i) * load<L>(x + i);
      }
    }
    store<L>(y + o0, hsum_rows<L>(acc));
  }
}

// Backward after ga = g * f'(a) is known, input columns [i0, i0 + NB*L): gx = W^T ga (W squared
// for Gauss-Newton) in registers, and the weight term ga_o * x_i (x squared) sunk into the
// same row slice while it is loaded: w - step * term (kUpdate; old w read first) or dst + term.
template <int L, Mode M, int NB, int O, int D>
LENET5_INLINE void fc_backward_block(const float* w, float* dst, const float* step, const float* ga,
                                     const float* xin, float* gx, int i0) {
  constexpr bool Sq = kSq<M>;
  vf<L> acc[NB];
#pragma GCC unroll 32
  for (int v = 0; v < NB; ++v) acc[v] = vf<L>{};
  for (int o = 0; o < O; ++o) {
    const float g = ga[o];
    const float* wr = w + o * D + i0;
    float* dr = dst + o * D + i0;
#pragma GCC unroll 32
    for (int v = 0; v < NB; ++v) {
      const vf<L> wv = load<L>(wr + v * L);
      acc[v] += g * (Sq ? wv * wv : wv);
      const vf<L> term = g * load<L>(xin + i0 + v * L);
      if constexpr (M == Mode::kUpdate) store<L>(dr + v * L, wv - load<L>(step + o * D + i0 + v * L) * term);
      else store<L>(dr + v * L, load<L>(dr + v * L) + term);
    }
  }
#pragma GCC unroll 32
  for (int v = 0; v < NB; ++v) store<L>(gx + i0 + v * L, acc[v]);
}
template <int L, Mode M, int O, int D, int V0, int NVLeft, int MaxNB>
LENET5_INLINE void fc_backward_blocks(const float* w, float* dst, const float* step, const float* ga,
                                      const float* xin, float* gx) {
  if constexpr (NVLeft > 0) {
    constexpr int NB = NVLeft > MaxNB ? (NVLeft > 2 * MaxNB ? MaxNB : (NVLeft + 1) / 2) : NVLeft;
    fc_backward_block<L, M, NB, O, D>(w, dst, step, ga, xin, gx, V0 * L);
    fc_backward_blocks<L, M, O, D, V0 + NB, NVLeft - NB, MaxNB>(w, dst, step, ga, xin, gx);
  }
}
// g = dE/dy, y the layer's output, xin its input (squared for Gauss-Newton): ga, gx = dE/dx,
// and the weight and bias terms into the sink.
template <int L, Mode M, int O, int D>
LENET5_INLINE void fc_backward(const Sink& sink, int pw, int pb, const float* w, const float* g,
                               const float* y, const float* xin, float* ga, float* gx) {
  constexpr int LA = 4;  // O = 120 or 84: multiples of 4
  static_assert(O % LA == 0 && D % L == 0, "fc_backward: sizes");
  for (int o = 0; o < O; o += LA) store<LA>(ga + o, load<LA>(g + o) * dsquash<LA, kSq<M>>(load<LA>(y + o)));
  // 16 lanes: a whole 400-wide row of C5 in 25 registers, so the weights stream in row order
  // (measured faster than two column blocks of 13 and 12 despite a few reloads)
  constexpr int MaxNB = L == 16 ? kIn5 / L : 10;
  fc_backward_blocks<L, M, O, D, 0, D / L, MaxNB>(w, sink.dst[pw], sink.step[pw], ga, xin, gx);
  sink_array<LA, M>(sink, pb, ga, O);
}

// =============================================================================================
// RBF output layer and the MAP loss

template <int L> LENET5_INLINE void rbf_forward(const FusedNet& net, State& s) {
  // y_i = sum_j (x_j - c_ij)^2 over 84 = 21 x 4 lanes; rows in groups of 4.
  static_assert(kUnits6 % 4 == 0, "RBF: 4-lane rows");
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

// RBF backward from w.Rbf = dE/dy: G6_j = sum_i g_i 2 (x_j - c_ij)  |  Gauss-Newton (h_i in
// w.Rbf): sum_i h_i 4 (x_j - c_ij)^2 + 2.
template <bool Sq> LENET5_INLINE void rbf_backward(const FusedNet& net, const State& s, Work& w) {
  for (int j = 0; j < kUnits6; j += 4) {
    const vf<4> x = load<4>(s.Y6 + j);
    vf<4> acc = {};
    for (int i = 0; i < kClasses; ++i) {
      const vf<4> d = 2.0f * (x - load<4>(net.codes + i * kUnits6 + j));
      acc += w.Rbf[i] * (Sq ? d * d : d);
    }
    store<4>(w.G6 + j, Sq ? acc + 2.0f : acc);
  }
}

// =============================================================================================
// One image: forward from s.X, backward from w.Rbf

template <int L> LENET5_INLINE void forward_image(const FusedNet& net, const Table& t, State& s, Work& w) {
  constexpr int L8 = L < 8 ? L : 8;
  shifted_copies<L, false, kInSize>([&](int kx) { return w.Xs(kx); }, s.X);
  c1_forward<L>(net, w, s);
  s2_forward<L>(net, s, w);
  c3_forward<L>(net, t, w, s);
  s4_forward<L>(net, s);
  fc_forward<L, kUnits5, kIn5, L < 16 ? 2 : 1>(net.param[kC5Weight], s.Y4, s.Y5);
  bias_squash<L8>(s.Y5, net.param[kC5Bias], kUnits5);
  fc_forward<L8, kUnits6, kUnits5>(net.param[kF6Weight], s.Y5, s.Y6);
  bias_squash<4>(s.Y6, net.param[kF6Bias], kUnits6);
  rbf_forward<L>(net, s);
}

// Needs w.Xs and w.Y2s as forward_image left them (or rebuilt from a saved State).
template <int L, Mode M>
LENET5_INLINE void backward_image(const FusedNet& net, const Table& t, const Sink& sink, const State& s, Work& w) {
  constexpr bool Sq = kSq<M>;
  constexpr int L8 = L < 8 ? L : 8;
  rbf_backward<Sq>(net, s, w);
  if (Sq) square_into<L8>(w.Y5sq, s.Y5, kUnits5);
  fc_backward<L8, M, kUnits6, kUnits5>(sink, kF6Weight, kF6Bias, net.param[kF6Weight], w.G6, s.Y6,
                                       Sq ? w.Y5sq : s.Y5, w.Ga6, w.G5);
  if (Sq) square_into<L>(w.Y4sq, s.Y4, kIn5);
  fc_backward<L, M, kUnits5, kIn5>(sink, kC5Weight, kC5Bias, net.param[kC5Weight], w.G5, s.Y5,
                                   Sq ? w.Y4sq : s.Y4, w.Ga5, w.G4);
  s4_backward<L, M>(net, sink, s, w);
  c3_backward<L, M>(net, t, sink, s, w);
  s2_backward<L, M>(net, sink, s, w);
  if (Sq) shifted_copies<L, true, kInSize>([&](int kx) { return w.Xs(kx); }, s.X);
  c1_backward<L, M>(sink, w);
}

// =============================================================================================
// Drivers: the templates above inlined (flatten) into functions compiled for each instruction
// set; the public functions below pick one table by current_isa().

struct Kernels {
  // out[i] for images [0, n); saved (when not null): n States back to back
  void (*forward)(const FusedNet&, const Table&, const float* x, float* out, State* saved, int64_t n);
  void (*backward)(const FusedNet&, const Table&, const State* saved, const float* grad_out,
                   int64_t n, const Sink& acc);
  void (*hessian)(const FusedNet&, const Table&, const float* x, const int64_t* labels,
                  int64_t begin, int64_t end, double map_j, const Sink& acc);
  void (*pass)(const FusedNet&, const Table&, const float* x, const int64_t* labels,
               const int64_t* order, int64_t n, double map_j, const Sink& sink, double* loss,
               int64_t* errors);
  void (*train)(const FusedNet&, const Table&, const float* x, const int64_t* labels, int64_t begin,
                int64_t end, double map_j, double scale, float* out, double* losses, const Sink& acc);
};

// The slack of a State the caller allocated: kernels read parts of it (so it must be finite),
// and a saved state is then the same bytes whatever the buffer held.
void clear_slack(State& s) {
  const auto clear = [](float* a, int n) { std::fill(a + n, a + padded(n), 0.0f); };
  clear(s.X, kInSize);
  clear(s.Y2, kS2All);
  clear(s.Y3, kC3All);
  clear(s.S4, kIn5);
  clear(s.Y4, kIn5);
  clear(s.Y5, kUnits5);
  clear(s.Y6, kUnits6);
  clear(s.Out, kClasses);
  std::fill(s.Out + padded(kClasses), reinterpret_cast<float*>(&s + 1), 0.0f);  // the struct's tail
}

template <int L> LENET5_INLINE void forward_images(const FusedNet& net, const Table& t, const float* x,
                                                   float* out, State* saved, int64_t n) {
  Scratch& sc = thread_scratch();
  for (int64_t i = 0; i < n; ++i) {
    State& s = saved ? saved[i] : sc.state;
    if (saved) clear_slack(s);
    load_image(s, x + i * kInSize);
    forward_image<L>(net, t, s, sc.work);
    std::memcpy(out + i * kClasses, s.Out, sizeof(float) * kClasses);
  }
}
template <int L> LENET5_INLINE void backward_images(const FusedNet& net, const Table& t, const State* saved,
                                                    const float* grad_out, int64_t n, const Sink& acc) {
  Work& w = thread_scratch().work;
  for (int64_t i = 0; i < n; ++i) {
    const State& s = saved[i];
    shifted_copies<L, false, kInSize>([&](int kx) { return w.Xs(kx); }, s.X);
    shifted_copies<L, false, kS2All>([&](int kx) { return w.Y2s(kx); }, s.Y2);
    std::memcpy(w.Rbf, grad_out + i * kClasses, sizeof(float) * kClasses);
    backward_image<L, Mode::kGradient>(net, t, acc, s, w);
  }
}
template <int L> LENET5_INLINE void hessian_images(const FusedNet& net, const Table& t, const float* x,
                                                   const int64_t* labels, int64_t begin, int64_t end,
                                                   double map_j, const Sink& acc) {
  Scratch& sc = thread_scratch();
  for (int64_t i = begin; i < end; ++i) {
    load_image(sc.state, x + i * kInSize);
    forward_image<L>(net, t, sc.state, sc.work);
    map_loss(sc.state.Out, kClasses, static_cast<int>(labels[i]), map_j, 1.0, true, sc.work.Rbf);
    backward_image<L, Mode::kGaussNewton>(net, t, acc, sc.state, sc.work);
  }
}
template <int L> LENET5_INLINE void pass_images(const FusedNet& net, const Table& t, const float* x,
                                                const int64_t* labels, const int64_t* order, int64_t n,
                                                double map_j, const Sink& sink, double* loss, int64_t* errors) {
  Scratch& sc = thread_scratch();
  double sum = 0;
  int64_t wrong = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = order[i];
    if (i + 1 < n) prefetch_image(x + order[i + 1] * kInSize);   // a random image: from memory
    load_image(sc.state, x + k * kInSize);
    forward_image<L>(net, t, sc.state, sc.work);
    const LossOut r = map_loss(sc.state.Out, kClasses, static_cast<int>(labels[k]), map_j, 1.0, false, sc.work.Rbf);
    sum += r.loss;
    wrong += r.error;
    backward_image<L, Mode::kUpdate>(net, t, sink, sc.state, sc.work);
  }
  *loss = sum;
  *errors = wrong;
}

// Forward, MAP loss and backward of images [begin, end), one after the other: outputs, each
// image's loss, and scale * dE/dw added to acc.
template <int L> LENET5_INLINE void train_images(const FusedNet& net, const Table& t, const float* x,
                                                 const int64_t* labels, int64_t begin, int64_t end, double map_j,
                                                 double scale, float* out, double* losses, const Sink& acc) {
  Scratch& sc = thread_scratch();
  for (int64_t i = begin; i < end; ++i) {
    load_image(sc.state, x + i * kInSize);
    forward_image<L>(net, t, sc.state, sc.work);
    std::memcpy(out + i * kClasses, sc.state.Out, sizeof(float) * kClasses);
    losses[i] = map_loss(sc.state.Out, kClasses, static_cast<int>(labels[i]), map_j, scale, false, sc.work.Rbf).loss;
    backward_image<L, Mode::kGradient>(net, t, acc, sc.state, sc.work);
  }
}

#define LENET5_SAMPLE_KERNELS(NAME, L, ATTR)                                                      \
  ATTR void NAME##_forward(const FusedNet& net, const Table& t, const float* x, float* out,      \
                           State* saved, int64_t n) {                                            \
    forward_images<L>(net, t, x, out, saved, n);                                                 \
  }                                                                                              \
  ATTR void NAME##_backward(const FusedNet& net, const Table& t, const State* saved,            \
                            const float* grad_out, int64_t n, const Sink& acc) {                 \
    backward_images<L>(net, t, saved, grad_out, n, acc);                                         \
  }                                                                                              \
  ATTR void NAME##_hessian(const FusedNet& net, const Table& t, const float* x,                 \
                           const int64_t* labels, int64_t begin, int64_t end, double map_j,      \
                           const Sink& acc) {                                                    \
    hessian_images<L>(net, t, x, labels, begin, end, map_j, acc);                                \
  }                                                                                              \
  ATTR void NAME##_pass(const FusedNet& net, const Table& t, const float* x,                    \
                        const int64_t* labels, const int64_t* order, int64_t n, double map_j,     \
                        const Sink& sink, double* loss, int64_t* errors) {                       \
    pass_images<L>(net, t, x, labels, order, n, map_j, sink, loss, errors);                      \
  }                                                                                              \
  ATTR void NAME##_train(const FusedNet& net, const Table& t, const float* x, const int64_t* labels, \
                         int64_t begin, int64_t end, double map_j, double scale, float* out,          \
                         double* losses, const Sink& acc) {                                           \
    train_images<L>(net, t, x, labels, begin, end, map_j, scale, out, losses, acc);                   \
  }                                                                                              \
  const Kernels NAME##_kernels = {NAME##_forward, NAME##_backward, NAME##_hessian, NAME##_pass, NAME##_train};

LENET5_ENGINE_KERNEL_SETS(LENET5_SAMPLE_KERNELS)  // one set per kernel family (vec.h)
#undef LENET5_SAMPLE_KERNELS

const Kernels& pick_kernels() { return LENET5_ENGINE_PICK(current_isa()); }

// Checks the network (the classic variant, one input channel, every tensor there) and resolves
// C3's table (std::invalid_argument naming fn).
Table resolve(const FusedNet& net, const char* fn) {
  check_sizes(net.variant, net.in_channels, net.classes, fn);
  if (net.variant != Variant::kClassic || net.in_channels != 1)
    fail(fn, "the per-image engine runs the classic variant with one input channel");
  check_params(net, fn);
  return resolve_c3(net, fn);
}
// Where each parameter's floats start in one buffer of all of them (offset[kParams]: the total).
void param_offsets(const FusedNet& net, const Table& t, int64_t* offset) {
  offset[0] = 0;
  for (int p = 0; p < kParams; ++p) offset[p + 1] = offset[p] + param_numel(net.variant, Role(p), sizes_of(net, t));
}
State* saved_states(const float* saved, const char* fn) {
  if (!saved || reinterpret_cast<uintptr_t>(saved) % alignof(State) != 0)
    throw std::invalid_argument(std::string(fn) + ": the saved-state buffer must be " +
                                std::to_string(alignof(State)) + "-byte aligned");
  return reinterpret_cast<State*>(const_cast<float*>(saved));
}
// Runs k.forward over [0, N) in contiguous ranges, a few per thread so uneven progress balances.
void forward_threaded(const FusedNet& net, const float* x, float* out, State* saved, int64_t N, int nthreads,
                      const char* fn) {
  const Table t = resolve(net, fn);
  const Kernels& k = pick_kernels();
  if (N <= 0) return;
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nthreads, N)));
  const int64_t ntasks = threads == 1 ? 1 : std::min<int64_t>(N, threads * 4);
  parallel_tasks(ntasks, threads, [&](int64_t task) {
    const int64_t b = N * task / ntasks, e = N * (task + 1) / ntasks;
    k.forward(net, t, x + b * kInSize, out + b * kClasses, saved ? saved + b : nullptr, e - b);
  });
}

}  // namespace

void lenet5_forward(const FusedNet& net, const float* x, float* out, int64_t N, int nthreads) {
  forward_threaded(net, x, out, nullptr, N, nthreads, "lenet5_forward");
}

int64_t lenet5_sample_saved_floats() { return static_cast<int64_t>(sizeof(State) / sizeof(float)); }

void lenet5_sample_forward_save(const FusedNet& net, const float* x, float* out, float* saved,
                                int64_t N, int nthreads) {
  const char* fn = "lenet5_sample_forward_save";
  forward_threaded(net, x, out, saved_states(saved, fn), N, nthreads, fn);
}

void lenet5_sample_backward(const FusedNet& net, const float* saved, const float* grad_out, int64_t N,
                            float* const* grads, int nthreads) {
  const char* fn = "lenet5_sample_backward";
  const Table t = resolve(net, fn);
  const State* states = saved_states(saved, fn);
  check_buffers(net, grads, "gradient buffer", fn);
  int64_t offset[kParams + 1];
  param_offsets(net, t, offset);
  const int64_t total = offset[kParams];
  if (N <= 0) {
    for (int p = 0; p < kParams; ++p) std::fill(grads[p], grads[p] + offset[p + 1] - offset[p], 0.0f);
    return;
  }
  const Kernels& k = pick_kernels();
  // Fixed slices summed in slice order: the result does not depend on the thread count.
  // (The sum's buffer is kept between calls: a batch-1 backward is ~10 us, a fresh 240 KB
  // buffer would add its page faults.)
  float* sum = reusable_scratch<float, ScratchUse::kReduceResult>(total);
  // A slice has at least 4 images: one image's backward (~25 us) is about what adding up one
  // slice's 60,000 sums costs.
  batch_slices<float>(N, total, sum, nthreads, [&](int64_t begin, int64_t end, float* acc) {
    Sink s{};
    for (int p = 0; p < kParams; ++p) s.dst[p] = acc + offset[p];
    k.backward(net, t, states + begin, grad_out + begin * kClasses, end - begin, s);
  }, 4);
  for (int p = 0; p < kParams; ++p)
    std::memcpy(grads[p], sum + offset[p], sizeof(float) * (offset[p + 1] - offset[p]));
}

void lenet5_sample_train(const FusedNet& net, const float* x, const int64_t* labels, int64_t N, double map_j,
                         double scale, float* out, float* loss, float* const* grads, int nthreads) {
  const char* fn = "lenet5_sample_train";
  const Table t = resolve(net, fn);
  check_labels(labels, N, kClasses, fn);
  check_buffers(net, grads, "gradient buffer", fn);
  int64_t offset[kParams + 1];
  param_offsets(net, t, offset);
  const int64_t total = offset[kParams];
  float* sum = reusable_scratch<float, ScratchUse::kReduceResult>(total);
  std::vector<double> losses(std::max<int64_t>(N, 0));
  if (N > 0) {
    const Kernels& k = pick_kernels();
    batch_slices<float>(N, total, sum, nthreads, [&](int64_t begin, int64_t end, float* acc) {
      Sink s{};
      for (int p = 0; p < kParams; ++p) s.dst[p] = acc + offset[p];
      k.train(net, t, x, labels, begin, end, map_j, scale, out, losses.data(), s);
    }, 4);
  } else {
    std::fill(sum, sum + total, 0.0f);
  }
  for (int p = 0; p < kParams; ++p)
    std::memcpy(grads[p], sum + offset[p], sizeof(float) * (offset[p + 1] - offset[p]));
  double total_loss = 0;
  for (double l : losses) total_loss += l;  // in image order: the same for any thread count
  *loss = static_cast<float>(scale * total_loss);
}

void lenet5_sdlm_hessian(const FusedNet& net, const float* x, const int64_t* labels, int64_t N,
                         double map_j, float* const* hessian, int nthreads) {
  const char* fn = "lenet5_sdlm_hessian";
  const Table t = resolve(net, fn);
  if (N <= 0) fail(fn, "no samples");
  check_labels(labels, N, kClasses, fn);
  const Kernels& k = pick_kernels();
  int64_t offset[kParams + 1];
  param_offsets(net, t, offset);
  const int64_t total = offset[kParams];
  std::vector<float> sum(total);
  // Fixed slices summed in slice order: the result does not depend on the thread count.
  batch_slices<float>(N, total, sum.data(), nthreads, [&](int64_t begin, int64_t end, float* acc) {
    Sink s{};
    for (int p = 0; p < kParams; ++p) s.dst[p] = acc + offset[p];
    k.hessian(net, t, x, labels, begin, end, map_j, s);
  });
  const float inv = static_cast<float>(1.0 / static_cast<double>(N));
  for (int p = 0; p < kParams; ++p)
    for (int64_t i = 0; i < offset[p + 1] - offset[p]; ++i) hessian[p][i] = sum[offset[p] + i] * inv;
}

void lenet5_sdlm_pass(const FusedNet& net, const float* x, const int64_t* labels, int64_t N,
                      const int64_t* order, int64_t n, double map_j, const float* const* steps,
                      double* sum_loss, int64_t* errors) {
  const char* fn = "lenet5_sdlm_pass";
  const Table t = resolve(net, fn);
  check_labels(labels, N, kClasses, fn);
  for (int64_t i = 0; i < n; ++i)
    if (order[i] < 0 || order[i] >= N)
      fail(fn, "order[" + std::to_string(i) + "] = " + std::to_string(order[i]) + " is outside [0, " +
                   std::to_string(N) + ")");
  check_buffers(net, steps, "step tensor", fn);
  Sink s{};
  for (int p = 0; p < kParams; ++p) {
    s.dst[p] = net.param[p];
    s.step[p] = steps[p];
  }
  *sum_loss = 0;
  *errors = 0;
  if (n <= 0) return;
  pick_kernels().pass(net, t, x, labels, order, n, map_j, s, sum_loss, errors);
}

}  // namespace cpu
}  // namespace lenet5
