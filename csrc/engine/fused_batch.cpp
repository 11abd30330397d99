// fused_batch.cpp — the batch engine: the whole LeNet-5 (classic or modern) with the images in
// the SIMD lanes: forward (saving what backward needs) and backward (parameter gradients,
// optionally the input gradient) in one native call each, or forward, loss (MAP or
// cross-entropy, loss.h) and backward in one call, tile by tile (lenet5_batch_train: the tile's
// activations stay in a per-thread buffer, in cache, instead of going to memory and back).
// float32, CPU. Which batches it runs is Python's choice (fused.py's engine(): the larger ones,
// and every batch the per-image engine cannot run). (fused_sample.cpp is the other engine: one
// image at a time, vectorised within the image. API and what both share: engine.h.)
//
// Networks (variants, sizes and parameter layout: network.h; weights used in the model's own layout):
//   classic: C1 Cin->6, S2 (trainable 2x2 subsampling), C3 through a CSR table (16 maps, at most
//            96 kernels), S4, C5 400->120, F6 120->84, all scaled-tanh, then the Euclidean RBF
//            over fixed codes [10, 84] (out_i = sum_j (y_j - c_ij)^2).
//   modern:  C1 Cin->6 ReLU, 2x2 max-pool, C3 full 6->16 ReLU (run as the full table: kernel
//            k = 6 o + c, so its weight [16,6,5,5] is the table's [96,5,5]), max-pool, C5 ReLU,
//            F6 ReLU, output FullConnection 84->classes, identity (logits).
//
// Layout ("images in lanes"): a tile of L images (L = the vector width: 16 AVX-512, 8 AVX2,
// 4 portable) is processed together, and every activation is stored [channel][row][col][lane]:
// each multiply-add is a broadcast weight times a vector of L images. No shuffles, no
// alignment tricks, the same code for every layer shape. A tail tile (N not a multiple of L)
// has its missing lanes zero in the input and in grad_out: they reach no output and add
// exact zeros to every gradient (0 times a finite number).
//
// Saved buffer (the caller's, 64-byte aligned): a 16-float header (magic, lanes L, variant,
// in_channels, classes, N: backward checks them against its own call), then
// per tile Y1 [6][28][28], Y2 [6][14][14], Y3 [16][10][10], Y4 [400], Y5 [120], Y6 [84], each
// element a vector of L lanes (8084 L floats, a whole number of cache lines). The input is not
// saved: backward re-reads x. Its size is computed for 16 lanes, so it fits every family;
// backward refuses a buffer written at another lane count.
//
// Tricks:
//  * Register blocking. Convolutions run an output row segment of CB columns in registers: per
//    (input map, ky) the CB + 4 input vectors are loaded once and each of the 5 weights of the
//    kernel row is broadcast once for CB FMAs (C1: 14 columns, C3: 10, at 16 lanes). The input
//    gradient is the same loop on zero-padded gradient rows (4 zero columns each side), so
//    there are no edge cases; weight terms pair each gradient row with its input row, even and
//    odd rows in separate accumulators (10 FMA chains), one lane-sum per tap and tile.
//  * Fully connected weight gradients are one GEMM per layer over the whole batch: each tile
//    transposes its gradient and input rows to [image][unit] into a batch-wide rows buffer, and
//    after the tiles dW[u][j] = sum_n ga[n][u] x[n][j] runs over all N images in order, 4 units x
//    up to 4 vectors of j in registers (no horizontal sums), split between threads by columns.
//    (Per tile into per-slice accumulators, these 60,000 weights cost more to zero and add up
//    than to compute: measured 6% of a batch-256 training step.)
//  * Threads: forward over tiles; backward over a fixed partition of the tiles into slices
//    (parallel.h's batch_slices), each slice its own accumulator of the other parameters' terms,
//    tiles summed in order within a slice, slices in order; the GEMMs sum images in order:
//    bitwise identical results for any thread count.
//  * Activations from activations.h only (float32 rational tanh, ReLU with torch's NaN rule);
//    derivatives from the outputs. Max-pool backward routes to the first maximum in row-major
//    order (NaN: the first NaN; none equal: the first element), as cpu/maxpool2x2.cpp.
//  * Vectors are vec.h's generic vf<L>, instantiated inside __attribute__((target(...),
//    flatten)) entry points picked from current_isa(); kAvx2Wide runs the 16-lane code on AVX2.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
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

// =============================================================================================
// Geometry and memory layout

// (kK, kMaps1, kC3, kUnits5, ...: the geometry's short names, engine.h)
constexpr int kGP = 4;                 // zero columns each side of a padded gradient row
constexpr int kG1W = kC1 + 2 * kGP;    // padded C1 gradient row
constexpr int kG3W = kC3 + 2 * kGP;    // padded C3 gradient row
static_assert(kC1 == kIn - kK + 1 && kS2 * 2 == kC1 && kC3 == kS2 - kK + 1 && kS4 * 2 == kC3 &&
              kIn5 == kMaps3 * kS4 * kS4 && kGP == kK - 1, "the layout below is laid out for LeNet-5's sizes");

// Saved vectors per tile.
constexpr int kY1 = kMaps1 * kC1 * kC1, kY2 = kMaps1 * kS2 * kS2, kY3 = kMaps3 * kC3 * kC3;
constexpr int kTileVecs = kY1 + kY2 + kY3 + kIn5 + kUnits5 + kUnits6;
constexpr int kHeader = 16;            // floats before the first tile
constexpr int kMaxL = 16;
constexpr int32_t kMagic = 0x4C354254;

constexpr int round_up(int n, int m) { return (n + m - 1) / m * m; }

// The network as the kernels read it: weights by role (network.h), C3's table resolved
// (engine.h), and the layout of the gradient accumulators.
struct Net {
  bool classic;
  int cin, classes;
  const float* w[kRoles];  // null for the roles the variant does not have
  const float* codes;
  C3Index c3;
  // Gradient layout (floats): role r at acc_off[r]. The roles summed tile by tile come first,
  // [0, acc_tiles): each slice of the batch has an accumulator of that size. The fully connected
  // weights [U][J] (C5 seen as [120][400]) follow, [acc_tiles, acc_total), each with padded rows
  // [round_up(U, 4)][round_up(J, 16)]: they are one GEMM over the whole batch (fc_weight_terms).
  int64_t acc_off[kRoles], acc_tiles, acc_total;
  int64_t size[kRoles];
  int fc_u[kRoles], fc_j[kRoles], fc_upad[kRoles], fc_jpad[kRoles];
  // The batch's transposed rows for those GEMMs: per image, for each fully connected layer r, its
  // dE/da (upad floats) at column fc_col[r] and its input (jpad floats) at fc_col[r] + upad,
  // fc_cols floats in all (fc_rows: the rows buffer, [tiles * L][fc_cols]).
  int fc_col[kRoles], fc_cols;
};
constexpr bool is_fc_weight(int r) { return r == kC5Weight || r == kF6Weight || r == kOutWeight; }

// Checks the network and resolves it (std::invalid_argument naming fn).
Net resolve(const FusedNet& b, const char* fn) {
  check_sizes(b.variant, b.in_channels, b.classes, fn);
  check_params(b, fn);
  Net n{};
  n.classic = b.variant == Variant::kClassic;
  n.cin = b.in_channels;
  n.classes = b.classes;
  n.codes = b.codes;
  n.c3 = resolve_c3(b, fn);
  const ParamOrder& order = param_order(b.variant);
  for (int p = 0; p < order.count; ++p) n.w[order.role[p]] = b.param[p];
  int64_t off = 0;
  n.fc_cols = 0;
  for (int pass = 0; pass < 2; ++pass) {  // the per-tile roles, then the fully connected weights
    if (pass == 1) n.acc_tiles = off;
    for (int r = 0; r < kRoles; ++r) {
      if (is_fc_weight(r) != (pass == 1)) continue;
      const ParamShape shape = param_shape(b.variant, Role(r), sizes_of(b, n.c3));
      n.size[r] = shape.numel();
      int64_t acc = n.size[r];
      n.fc_u[r] = n.fc_j[r] = n.fc_upad[r] = n.fc_jpad[r] = n.fc_col[r] = 0;
      if (acc > 0 && is_fc_weight(r)) {
        n.fc_u[r] = static_cast<int>(shape.dim[0]);
        n.fc_j[r] = static_cast<int>(acc / shape.dim[0]);
        n.fc_upad[r] = round_up(n.fc_u[r], 4);
        n.fc_jpad[r] = round_up(n.fc_j[r], kMaxL);
        acc = int64_t(n.fc_upad[r]) * n.fc_jpad[r];
        n.fc_col[r] = n.fc_cols;
        n.fc_cols += n.fc_upad[r] + n.fc_jpad[r];
      }
      n.acc_off[r] = off;
      off += round_up(static_cast<int>(acc), 16);
    }
  }
  n.acc_total = off;
  return n;
}

// Per-thread scratch, reused across calls (grown when needed, 64-byte aligned: parallel.h).
float* thread_buffer(int64_t floats) { return reusable_scratch<float, ScratchUse::kEngineWork>(floats); }

// =============================================================================================
// Small helpers

template <bool C> constexpr int kHidden = C ? kScaledTanh : kRelu;  // hidden layers' activation

template <int L> LENET5_INLINE vf<L> zero() { return vf<L>{}; }
template <int L> LENET5_INLINE vi<L> is_nan(const vf<L>& x) { return x != x; }
// m ? a : b lane by lane, m all ones or all zeros per lane. (Bitwise: GCC scalarizes a vector
// ?: whose condition is an OR of comparisons, measured 70% of the modern forward's time.)
template <int L> LENET5_INLINE vf<L> select(const vi<L>& m, const vf<L>& a, const vf<L>& b) {
  return reinterpret_cast<vf<L>>((m & reinterpret_cast<vi<L>>(a)) | (~m & reinterpret_cast<vi<L>>(b)));
}

// The tile's saved activations.
template <int L> struct Saved {
  float *Y1, *Y2, *Y3, *Y4, *Y5, *Y6;
  explicit Saved(float* s)
      : Y1(s), Y2(Y1 + kY1 * L), Y3(Y2 + kY2 * L), Y4(Y3 + kY3 * L), Y5(Y4 + kIn5 * L), Y6(Y5 + kUnits5 * L) {}
};

// In-register transpose of an L x L block t[row][col] -> t[col][row]: level S swaps the S bit
// of every element's row and column (two-source shuffles: L per level, log2(L) levels).
template <int L, int S, int... C>
LENET5_INLINE void swap_blocks_(vf<L>& a, vf<L>& b, std::integer_sequence<int, C...>) {
  const vf<L> na = LENET5_SHUFFLE2(L, a, b, ((C & S) == 0 ? C : L + C - S)...);
  const vf<L> nb = LENET5_SHUFFLE2(L, a, b, ((C & S) == 0 ? C + S : L + C)...);
  a = na;
  b = nb;
}
template <int L, int S = L / 2> LENET5_INLINE void transpose_block(vf<L>* t) {
  if constexpr (S >= 1) {
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i)
      if ((i & S) == 0) swap_blocks_<L, S>(t[i], t[i + S], std::make_integer_sequence<int, L>{});
    transpose_block<L, S / 2>(t);
  }
}

// A[r][lane] (R rows of L) -> T[lane][0, width) with rows `ld` floats apart (zeros in columns
// [R, width)), width >= R.
template <int L> LENET5_INLINE void transpose_rows(const float* A, int R, float* T, int width, int ld) {
  int r0 = 0;
  for (; r0 + L <= width; r0 += L) {
    vf<L> t[L];
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i) t[i] = r0 + i < R ? load<L>(A + int64_t(r0 + i) * L) : zero<L>();
    transpose_block<L>(t);
#pragma GCC unroll 16
    for (int n = 0; n < L; ++n) store<L>(T + int64_t(n) * ld + r0, t[n]);
  }
  for (int n = 0; n < L; ++n)
    for (int r = r0; r < width; ++r) T[int64_t(n) * ld + r] = r < R ? A[int64_t(r) * L + n] : 0.0f;
}

// Images [0, valid) of x[valid, cin, 32, 32] into lanes: X[cin][32][32][L], zeros in the
// missing lanes. L pixels of the L images at a time, transposed in registers.
template <int L> LENET5_INLINE void load_tile(const float* x, int cin, int valid, float* X) {
  const int64_t total = int64_t(cin) * kIn * kIn;  // a multiple of L
  for (int64_t p0 = 0; p0 < total; p0 += L) {
    vf<L> t[L];
#pragma GCC unroll 16
    for (int n = 0; n < L; ++n) t[n] = n < valid ? load<L>(x + n * total + p0) : zero<L>();
    transpose_block<L>(t);
#pragma GCC unroll 16
    for (int p = 0; p < L; ++p) store<L>(X + (p0 + p) * L, t[p]);
  }
}

// acc[c] += sum_kx w[kx] * x[c + kx], c < CB (x: CB + 4 vectors of an input row).
template <int L, int CB> LENET5_INLINE void row_taps(vf<L>* acc, const float* x, const float* w) {
  vf<L> xv[CB + kK - 1];
#pragma GCC unroll 32
  for (int i = 0; i < CB + kK - 1; ++i) xv[i] = load<L>(x + i * L);
#pragma GCC unroll 5
  for (int kx = 0; kx < kK; ++kx) {
    const vf<L> wv = splat<L>(w[kx]);
#pragma GCC unroll 32
    for (int c = 0; c < CB; ++c) acc[c] += wv * xv[c + kx];
  }
}
// RB output rows at once: acc[j][c] += sum_kx w[kx] * x[j][c + kx], x[j] = x + j * stride, the
// rows one weight row meets (each broadcast weight feeds RB x CB FMA chains).
template <int L, int CB, int RB>
LENET5_INLINE void rows_taps(vf<L> (*acc)[CB], const float* x, int stride, const float* w) {
  if constexpr (RB == 1) {
    row_taps<L, CB>(acc[0], x, w);
  } else {
#pragma GCC unroll 5
    for (int kx = 0; kx < kK; ++kx) {
      const vf<L> wv = splat<L>(w[kx]);
#pragma GCC unroll 4
      for (int j = 0; j < RB; ++j)
#pragma GCC unroll 32
        for (int c = 0; c < CB; ++c) acc[j][c] += wv * load<L>(x + j * stride + (c + kx) * L);
    }
  }
}
// The input gradient's mirror image: acc[c] += sum_kx w[kx] * g[c + 4 - kx], g: CB + 4 vectors of
// a zero-padded gradient row (g[i] is output column C0 + i - 4, zero outside [0, W)); taps that
// would meet the zero columns are skipped at compile time.
template <int L, int CB, int C0, int W> LENET5_INLINE void row_taps_back(vf<L>* acc, const float* g, const float* w) {
  vf<L> gv[CB + kK - 1];
#pragma GCC unroll 32
  for (int i = 0; i < CB + kK - 1; ++i)
    if (C0 + i - (kK - 1) >= 0 && C0 + i - (kK - 1) < W) gv[i] = load<L>(g + i * L);
#pragma GCC unroll 5
  for (int kx = 0; kx < kK; ++kx) {
    const vf<L> wv = splat<L>(w[kx]);
#pragma GCC unroll 32
    for (int c = 0; c < CB; ++c)
      if (C0 + c - kx >= 0 && C0 + c - kx < W) acc[c] += wv * gv[c + kK - 1 - kx];
  }
}
// Weight terms of one kernel row ky: acc[r & 1][kx] += sum_c g[r][c] * x[r + ky][c + kx] over
// the OW columns of one output row r.
template <int L, int OW> LENET5_INLINE void row_weight_terms(vf<L>* acc, const float* g, const float* x) {
#pragma GCC unroll 32
  for (int c = 0; c < OW; ++c) {
    const vf<L> gv = load<L>(g + c * L);
#pragma GCC unroll 5
    for (int kx = 0; kx < kK; ++kx) acc[kx] += gv * load<L>(x + (c + kx) * L);
  }
}

// =============================================================================================
// Convolutions (C1 and C3): y[o][r][c] = act(b[o] + sum over kernels k of o, ky, kx of
// w[k][ky][kx] x[in(k)][r + ky][c + kx]). C1 is the dense case (kernel (o, c) = o Cin + c).

template <int L, int ACT, int H, int CB, int RB, class KernelsOf>
LENET5_INLINE void conv_forward(const float* X, int out_maps, const float* w, const float* b,
                                KernelsOf kernels_of, float* Y) {
  constexpr int W = H - kK + 1, IW = H;
  static_assert(W % CB == 0 && W % RB == 0, "column and row blocks");
  for (int o = 0; o < out_maps; ++o) {
    int k0, k1;
    kernels_of(o, k0, k1);
    for (int r = 0; r < W; r += RB)
      for (int c0 = 0; c0 < W; c0 += CB) {
        vf<L> acc[RB][CB];
#pragma GCC unroll 4
        for (int j = 0; j < RB; ++j)
#pragma GCC unroll 32
          for (int c = 0; c < CB; ++c) acc[j][c] = splat<L>(b[o]);
        for (int k = k0; k < k1; ++k) {
          const float* xm = X + int64_t(kernels_of.input(k)) * H * IW * L;
#pragma GCC unroll 5
          for (int ky = 0; ky < kK; ++ky)
            rows_taps<L, CB, RB>(acc, xm + ((r + ky) * IW + c0) * L, IW * L, w + (k * kK + ky) * kK);
        }
#pragma GCC unroll 4
        for (int j = 0; j < RB; ++j)
#pragma GCC unroll 32
          for (int c = 0; c < CB; ++c)
            store<L>(Y + ((o * W + r + j) * W + c0 + c) * L, act::forward<ACT>(acc[j][c]));
      }
  }
}

// Kernel lists: C1 (dense, cin inputs per map) and C3 (the table).
struct DenseKernels {
  int cin;
  LENET5_INLINE void operator()(int o, int& k0, int& k1) const { k0 = o * cin; k1 = k0 + cin; }
  LENET5_INLINE int input(int k) const { return k % cin; }
};
struct TableKernels {
  const C3Index* t;
  LENET5_INLINE void operator()(int o, int& k0, int& k1) const { k0 = t->offsets[o]; k1 = t->offsets[o + 1]; }
  LENET5_INLINE int input(int k) const { return t->inputs[k]; }
};

// Weight and bias terms of a convolution from Gp = dE/da, padded rows [out][W][W + 8] (columns
// shifted by 4): dw[k][ky][kx] += lane sums of sum_{r,c} g[r][c] x[in(k)][r + ky][c + kx].
template <int L, int H, class KernelsOf>
LENET5_INLINE void conv_param_terms(const float* X, int out_maps, const float* Gp, KernelsOf kernels_of,
                                    float* dw, float* db) {
  constexpr int W = H - kK + 1, GW = W + 2 * kGP;
  for (int o = 0; o < out_maps; ++o) {
    const float* g = Gp + int64_t(o) * W * GW * L;
    vf<L> bs = zero<L>();
    for (int r = 0; r < W; ++r)
      for (int c = 0; c < W; ++c) bs += load<L>(g + (r * GW + kGP + c) * L);
    db[o] += hsum<L>(bs);
    int k0, k1;
    kernels_of(o, k0, k1);
    for (int k = k0; k < k1; ++k) {
      const float* xm = X + int64_t(kernels_of.input(k)) * H * H * L;
      for (int ky = 0; ky < kK; ++ky) {
        vf<L> acc[2][kK];
#pragma GCC unroll 5
        for (int kx = 0; kx < kK; ++kx) acc[0][kx] = acc[1][kx] = zero<L>();
        for (int r = 0; r < W; r += 2) {
          row_weight_terms<L, W>(acc[0], g + (r * GW + kGP) * L, xm + (r + ky) * H * L);
          row_weight_terms<L, W>(acc[1], g + ((r + 1) * GW + kGP) * L, xm + (r + 1 + ky) * H * L);
        }
#pragma GCC unroll 5
        for (int kx = 0; kx < kK; ++kx) dw[(k * kK + ky) * kK + kx] += hsum<L>(acc[0][kx] + acc[1][kx]);
      }
    }
  }
}

// Input gradient of a convolution: gx[c][q][col] = sum over kernels k reading c, ky, kx of
// w[k][ky][kx] g[out(k)][q - ky][col - kx] (Gp's zero columns cover the column edges). RB rows
// q.. of CB columns from C0 at once (RB x CB FMA chains; a row's terms in the same order).
template <int L, int H, int CB, int RB, int C0, class InputsOf>
LENET5_INLINE void conv_input_grad_block(const float* Gp, int c, int q, const float* w, InputsOf inputs_of, float* GX) {
  constexpr int W = H - kK + 1, GW = W + 2 * kGP;
  vf<L> acc[RB][CB];
#pragma GCC unroll 4
  for (int j = 0; j < RB; ++j)
#pragma GCC unroll 32
    for (int i = 0; i < CB; ++i) acc[j][i] = zero<L>();
  const int nk = inputs_of.count(c);
  for (int jk = 0; jk < nk; ++jk) {
    const int k = inputs_of.kernel(c, jk), o = inputs_of.output(k);
    const float* g = Gp + int64_t(o) * W * GW * L;
#pragma GCC unroll 5
    for (int ky = 0; ky < kK; ++ky)
#pragma GCC unroll 4
      for (int j = 0; j < RB; ++j) {
        const int gr = q + j - ky;  // the gradient row this kernel row meets
        if (gr >= 0 && gr < W) row_taps_back<L, CB, C0, W>(acc[j], g + (gr * GW + C0) * L, w + (k * kK + ky) * kK);
      }
  }
#pragma GCC unroll 4
  for (int j = 0; j < RB; ++j)
#pragma GCC unroll 32
    for (int i = 0; i < CB; ++i) store<L>(GX + ((c * H + q + j) * H + C0 + i) * L, acc[j][i]);
}
template <int L, int H, int CB, int RB, class InputsOf, int... B>
LENET5_INLINE void conv_input_grad_(const float* Gp, int in_maps, const float* w, InputsOf inputs_of, float* GX,
                                    std::integer_sequence<int, B...>) {
  for (int c = 0; c < in_maps; ++c)
    for (int q = 0; q < H; q += RB) (conv_input_grad_block<L, H, CB, RB, B * CB>(Gp, c, q, w, inputs_of, GX), ...);
}
template <int L, int H, int CB, int RB, class InputsOf>
LENET5_INLINE void conv_input_grad(const float* Gp, int in_maps, const float* w, InputsOf inputs_of, float* GX) {
  static_assert(H % CB == 0 && H % RB == 0, "column and row blocks");
  conv_input_grad_<L, H, CB, RB>(Gp, in_maps, w, inputs_of, GX, std::make_integer_sequence<int, H / CB>{});
}
struct DenseInputs {  // C1: kernel (o, c) = o cin + c
  int cin;
  LENET5_INLINE int count(int) const { return kMaps1; }
  LENET5_INLINE int kernel(int c, int j) const { return j * cin + c; }
  LENET5_INLINE int output(int k) const { return k / cin; }
};
struct TableInputs {
  const C3Index* t;
  LENET5_INLINE int count(int c) const { return t->by_input_begin[c + 1] - t->by_input_begin[c]; }
  LENET5_INLINE int kernel(int c, int j) const { return t->by_input[t->by_input_begin[c] + j]; }
  LENET5_INLINE int output(int k) const { return t->out_of[k]; }
};

// =============================================================================================
// Pooling: 2x2 windows of Y[M][H][H] into Z[M][H/2][H/2].
// Classic: z = squash(coef s + bias), s the window sum. Modern: the max (NaN propagates).

template <int L, bool C, int H>
LENET5_INLINE void pool_forward(const float* Y, int M, const float* coef, const float* bias, float* Z) {
  constexpr int P = H / 2;
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < P; ++r)
      for (int c = 0; c < P; ++c) {
        const float* p = Y + ((m * H + 2 * r) * H + 2 * c) * L;
        const vf<L> a = load<L>(p), b = load<L>(p + L), cc = load<L>(p + H * L), d = load<L>(p + H * L + L);
        vf<L> z;
        if constexpr (C) {
          z = act::forward<kScaledTanh>(coef[m] * (a + b + cc + d) + bias[m]);
        } else {
          z = a;
          z = select<L>((b > z) | is_nan<L>(b), b, z);
          z = select<L>((cc > z) | is_nan<L>(cc), cc, z);
          z = select<L>((d > z) | is_nan<L>(d), d, z);
        }
        store<L>(Z + ((m * P + r) * P + c) * L, z);
      }
}

// From GZ = dE/dZ: classic: gs = GZ f'(Z), coefficient and bias terms, dE/dY = coef gs at the
// four corners; modern: dE/dY = GZ at the window's first maximum. Then ga = dE/dY f'(Y) into
// Gp, rows of W + 8 with 4 zero columns each side.
template <int L, bool C, int H>
LENET5_INLINE void pool_backward(const float* GZ, const float* Z, const float* Y, int M, const float* coef,
                                 float* dcoef, float* dbias, float* Gp) {
  constexpr int P = H / 2, GW = H + 2 * kGP;
  constexpr int ACT = kHidden<C>;
  for (int m = 0; m < M; ++m) {
    vf<L> sc = zero<L>(), sb = zero<L>();
    for (int r = 0; r < P; ++r) {
      float* g0 = Gp + (int64_t(m * H + 2 * r) * GW) * L;
      float* g1 = g0 + GW * L;
#pragma GCC unroll 4
      for (int i = 0; i < kGP; ++i) {
        store<L>(g0 + i * L, zero<L>());
        store<L>(g1 + i * L, zero<L>());
        store<L>(g0 + (kGP + H + i) * L, zero<L>());
        store<L>(g1 + (kGP + H + i) * L, zero<L>());
      }
      for (int c = 0; c < P; ++c) {
        const float* p = Y + ((m * H + 2 * r) * H + 2 * c) * L;
        const vf<L> a = load<L>(p), b = load<L>(p + L), cc = load<L>(p + H * L), d = load<L>(p + H * L + L);
        const int zi = ((m * P + r) * P + c) * L;
        const vf<L> gz = load<L>(GZ + zi), z = load<L>(Z + zi);
        vf<L> ga, gb, gc, gd;
        if constexpr (C) {
          const vf<L> gs = gz * act::derivative<kScaledTanh>(z);
          sc += gs * (a + b + cc + d);
          sb += gs;
          ga = gb = gc = gd = coef[m] * gs;
        } else {
          const vi<L> zn = is_nan<L>(z);
          const vi<L> ea = (a == z) | (is_nan<L>(a) & zn), eb = (b == z) | (is_nan<L>(b) & zn),
                      ec = (cc == z) | (is_nan<L>(cc) & zn), ed = (d == z) | (is_nan<L>(d) & zn);
          const vi<L> hb = eb & ~ea, hc = ec & ~(ea | eb), hd = ed & ~(ea | eb | ec);
          const vi<L> ha = ~(hb | hc | hd);  // a: the first match, or nothing matched
          const vi<L> gi = reinterpret_cast<vi<L>>(gz);
          ga = reinterpret_cast<vf<L>>(ha & gi);
          gb = reinterpret_cast<vf<L>>(hb & gi);
          gc = reinterpret_cast<vf<L>>(hc & gi);
          gd = reinterpret_cast<vf<L>>(hd & gi);
        }
        const int ci = (kGP + 2 * c) * L;
        store<L>(g0 + ci, ga * act::derivative<ACT>(a));
        store<L>(g0 + ci + L, gb * act::derivative<ACT>(b));
        store<L>(g1 + ci, gc * act::derivative<ACT>(cc));
        store<L>(g1 + ci + L, gd * act::derivative<ACT>(d));
      }
    }
    if constexpr (C) {
      dcoef[m] += hsum<L>(sc);
      dbias[m] += hsum<L>(sb);
    }
  }
}

// =============================================================================================
// Fully connected layers: Y[u] = act(b[u] + sum_j W[u][j] X[j]), W [U][J].

template <int L, int ACT, int UB>
LENET5_INLINE void fc_rows(const float* W, const float* b, int J, const float* X, float* Y, int u0) {
  vf<L> acc[UB];
#pragma GCC unroll 8
  for (int k = 0; k < UB; ++k) acc[k] = splat<L>(b[u0 + k]);
  const float* w = W + int64_t(u0) * J;
  for (int j = 0; j < J; ++j) {
    const vf<L> x = load<L>(X + j * L);
#pragma GCC unroll 8
    for (int k = 0; k < UB; ++k) acc[k] += w[k * J + j] * x;
  }
#pragma GCC unroll 8
  for (int k = 0; k < UB; ++k) store<L>(Y + (u0 + k) * L, act::forward<ACT>(acc[k]));
}
template <int L, int ACT>
LENET5_INLINE void fc_forward(const float* W, const float* b, int U, int J, const float* X, float* Y) {
  int u = 0;
  for (; u + 8 <= U; u += 8) fc_rows<L, ACT, 8>(W, b, J, X, Y, u);
  for (; u + 4 <= U; u += 4) fc_rows<L, ACT, 4>(W, b, J, X, Y, u);
  for (; u < U; ++u) fc_rows<L, ACT, 1>(W, b, J, X, Y, u);
}

// GX[j] = sum_u W[u][j] G[u] (G = dE/da [U][L]).
template <int L, int JB>
LENET5_INLINE void fc_input_cols(const float* W, int U, int J, const float* G, float* GX, int j0) {
  vf<L> acc[JB];
#pragma GCC unroll 8
  for (int k = 0; k < JB; ++k) acc[k] = zero<L>();
  for (int u = 0; u < U; ++u) {
    const vf<L> g = load<L>(G + u * L);
    const float* w = W + int64_t(u) * J + j0;
#pragma GCC unroll 8
    for (int k = 0; k < JB; ++k) acc[k] += w[k] * g;
  }
#pragma GCC unroll 8
  for (int k = 0; k < JB; ++k) store<L>(GX + (j0 + k) * L, acc[k]);
}
template <int L> LENET5_INLINE void fc_input_grad(const float* W, int U, int J, const float* G, float* GX) {
  int j = 0;
  for (; j + 8 <= J; j += 8) fc_input_cols<L, 8>(W, U, J, G, GX, j);
  for (; j + 4 <= J; j += 4) fc_input_cols<L, 4>(W, U, J, G, GX, j);
  for (; j < J; ++j) fc_input_cols<L, 1>(W, U, J, G, GX, j);
}

// dW[u][j] = sum_{n < rows} GT[n][u] XT[n][j] for 4 units from u0 and JB vectors of j from j0
// (n in order: the same sum for any split of the work).
template <int L, int JB>
LENET5_INLINE void lane_gemm_block(float* dW, int ldw, const float* GT, int ldg, const float* XT, int ldx,
                                   int64_t rows, int u0, int j0) {
  vf<L> acc[4][JB];
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k)
#pragma GCC unroll 4
    for (int v = 0; v < JB; ++v) acc[k][v] = zero<L>();
#pragma GCC unroll 2
  for (int64_t n = 0; n < rows; ++n) {
    vf<L> x[JB];
#pragma GCC unroll 4
    for (int v = 0; v < JB; ++v) x[v] = load<L>(XT + n * ldx + j0 + v * L);
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      const vf<L> g = splat<L>(GT[n * ldg + u0 + k]);
#pragma GCC unroll 4
      for (int v = 0; v < JB; ++v) acc[k][v] += g * x[v];
    }
  }
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k)
#pragma GCC unroll 4
    for (int v = 0; v < JB; ++v) store<L>(dW + int64_t(u0 + k) * ldw + j0 + v * L, acc[k][v]);
}

// Backward of a fully connected layer r from G = dE/da [U][L] and its input X [J][L]: the bias
// terms into the accumulator, G and X transposed into the tile's rows of the batch's rows buffer
// (row = image, pitch fc_cols; the weight terms are one GEMM over the batch: fc_weight_terms),
// GX = W^T G if wanted.
template <int L>
LENET5_INLINE void fc_backward(const Net& n, int r, int U, int J, const float* G, const float* X, float* db,
                               float* rows, float* GX) {
  for (int u = 0; u < U; ++u) db[u] += hsum<L>(load<L>(G + u * L));
  float* GT = rows + n.fc_col[r];
  transpose_rows<L>(G, U, GT, n.fc_upad[r], n.fc_cols);
  transpose_rows<L>(X, J, GT + n.fc_upad[r], n.fc_jpad[r], n.fc_cols);
  if (GX) fc_input_grad<L>(n.w[r], U, J, G, GX);
}

// Weight terms of the fully connected layer r over the batch's first `images` rows: vectors
// [v0, v1) of its padded input, every unit, into dW (padded [upad][jpad]).
template <int L>
LENET5_INLINE void fc_weight_terms(const Net& n, int r, const float* rows, int64_t images, int v0, int v1, float* dW) {
  constexpr int JB = L == 16 ? 4 : 2;
  const float* GT = rows + n.fc_col[r];
  const float* XT = GT + n.fc_upad[r];
  const int ld = n.fc_cols, jpad = n.fc_jpad[r];
  int v = v0;
  for (; v + JB <= v1; v += JB)
    for (int u0 = 0; u0 < n.fc_upad[r]; u0 += 4) lane_gemm_block<L, JB>(dW, jpad, GT, ld, XT, ld, images, u0, v * L);
  for (; v < v1; ++v)
    for (int u0 = 0; u0 < n.fc_upad[r]; u0 += 4) lane_gemm_block<L, 1>(dW, jpad, GT, ld, XT, ld, images, u0, v * L);
}

// G[u] *= f'(Y[u]) in place.
template <int L, int ACT> LENET5_INLINE void times_derivative(float* G, const float* Y, int U) {
  for (int u = 0; u < U; ++u) store<L>(G + u * L, load<L>(G + u * L) * act::derivative<ACT>(load<L>(Y + u * L)));
}

// =============================================================================================
// One tile, forward and backward

template <int L, bool C>
LENET5_INLINE void forward_tile(const Net& n, const float* x, int valid, float* out, float* saved, float* X) {
  const Saved<L> s(saved);
  constexpr int ACT = kHidden<C>;
  load_tile<L>(x, n.cin, valid, X);
  // Output blocks of RB rows x CB columns in registers: enough independent FMA chains to cover
  // the FMA latency on both ports (16 lanes: 14 and 10 chains; 8 lanes: 2 rows x 7 and 2 x 5).
  constexpr int CB1 = L == 16 ? 14 : 7, CB3 = L == 16 ? 10 : 5, RB = L == 16 ? 1 : 2;
  conv_forward<L, ACT, kIn, CB1, RB>(X, kMaps1, n.w[kC1Weight], n.w[kC1Bias], DenseKernels{n.cin}, s.Y1);
  pool_forward<L, C, kC1>(s.Y1, kMaps1, n.w[kS2Coef], n.w[kS2Bias], s.Y2);
  conv_forward<L, ACT, kS2, CB3, RB>(s.Y2, kMaps3, n.w[kC3Weight], n.w[kC3Bias], TableKernels{&n.c3}, s.Y3);
  pool_forward<L, C, kC3>(s.Y3, kMaps3, n.w[kS4Coef], n.w[kS4Bias], s.Y4);
  fc_forward<L, ACT>(n.w[kC5Weight], n.w[kC5Bias], kUnits5, kIn5, s.Y4, s.Y5);
  fc_forward<L, ACT>(n.w[kF6Weight], n.w[kF6Bias], kUnits6, kUnits5, s.Y5, s.Y6);
  alignas(64) float o[kMaxL];
  for (int i = 0; i < n.classes; ++i) {
    vf<L> y;
    if constexpr (C) {
      vf<L> acc[2] = {zero<L>(), zero<L>()};
      const float* c = n.codes + i * kUnits6;
      for (int j = 0; j < kUnits6; ++j) {
        const vf<L> d = load<L>(s.Y6 + j * L) - c[j];
        acc[j & 1] += d * d;
      }
      y = acc[0] + acc[1];
    } else {
      vf<L> acc = splat<L>(n.w[kOutBias][i]);
      const float* w = n.w[kOutWeight] + int64_t(i) * kUnits6;
      for (int j = 0; j < kUnits6; ++j) acc += w[j] * load<L>(s.Y6 + j * L);
      y = acc;
    }
    store<L>(o, y);
    for (int k = 0; k < valid; ++k) out[int64_t(k) * n.classes + i] = o[k];
  }
}

// Backward scratch of one thread (vectors of L floats unless said).
template <int L> struct Work {
  float *X, *GO, *G6, *G5, *G4, *G3p, *G2, *G1p, *GX;
  static int64_t floats(const Net& n) {
    return int64_t(L) * (2 * n.cin * kIn * kIn + n.classes + kUnits6 + kUnits5 + kIn5 + kMaps3 * kC3 * kG3W + kY2 +
                         kMaps1 * kC1 * kG1W + 64);
  }
  Work(const Net& n, float* p) {
    auto take = [&](int64_t vecs) {
      float* r = p;
      p += round_up(static_cast<int>(vecs * L), 16);
      return r;
    };
    X = take(n.cin * kIn * kIn);
    GX = take(n.cin * kIn * kIn);
    GO = take(n.classes);
    G6 = take(kUnits6);
    G5 = take(kUnits5);
    G4 = take(kIn5);
    G3p = take(kMaps3 * kC3 * kG3W);
    G2 = take(kY2);
    G1p = take(kMaps1 * kC1 * kG1W);
  }
};

// dE/dout of the tile's images (rows of `classes`) into lanes w.GO (missing lanes: 0).
template <int L> LENET5_INLINE void grad_out_to_lanes(const Net& n, const float* grad_out, int valid, Work<L>& w) {
  for (int i = 0; i < n.classes; ++i) {
    alignas(64) float g[kMaxL] = {};
    for (int k = 0; k < valid; ++k) g[k] = grad_out[int64_t(k) * n.classes + i];
    store<L>(w.GO + i * L, load<L>(g));
  }
}

// From w.GO = dE/dout (lanes) and w.X = the tile's input (load_tile): the terms of every
// parameter but the fully connected weights into acc, the tile's transposed rows for those into
// rows (the tile's L rows of the batch's rows buffer), the input gradient into grad_x when wanted.
template <int L, bool C>
LENET5_INLINE void backward_tile(const Net& n, int valid, const float* saved, float* acc, float* rows, float* grad_x,
                                 Work<L>& w) {
  const Saved<L> s(const_cast<float*>(saved));
  constexpr int ACT = kHidden<C>;
  float* A[kRoles];
  for (int r = 0; r < kRoles; ++r) A[r] = is_fc_weight(r) ? nullptr : acc + n.acc_off[r];
  // output layer -> G6 = dE/dY6
  if constexpr (C) {
    for (int j = 0; j < kUnits6; ++j) {
      const vf<L> y = load<L>(s.Y6 + j * L);
      vf<L> a = zero<L>();
      for (int i = 0; i < kClasses; ++i) a += load<L>(w.GO + i * L) * (y - n.codes[i * kUnits6 + j]);
      store<L>(w.G6 + j * L, a + a);
    }
  } else {
    fc_backward<L>(n, kOutWeight, n.classes, kUnits6, w.GO, s.Y6, A[kOutBias], rows, w.G6);
  }
  times_derivative<L, ACT>(w.G6, s.Y6, kUnits6);
  fc_backward<L>(n, kF6Weight, kUnits6, kUnits5, w.G6, s.Y5, A[kF6Bias], rows, w.G5);
  times_derivative<L, ACT>(w.G5, s.Y5, kUnits5);
  fc_backward<L>(n, kC5Weight, kUnits5, kIn5, w.G5, s.Y4, A[kC5Bias], rows, w.G4);
  pool_backward<L, C, kC3>(w.G4, s.Y4, s.Y3, kMaps3, n.w[kS4Coef], A[kS4Coef], A[kS4Bias], w.G3p);
  conv_param_terms<L, kS2>(s.Y2, kMaps3, w.G3p, TableKernels{&n.c3}, A[kC3Weight], A[kC3Bias]);
  constexpr int CB2 = L == 16 ? 14 : 7, CBX = L == 16 ? 16 : 8, RB2 = L == 16 ? 1 : 2;
  conv_input_grad<L, kS2, CB2, RB2>(w.G3p, kMaps1, n.w[kC3Weight], TableInputs{&n.c3}, w.G2);
  pool_backward<L, C, kC1>(w.G2, s.Y2, s.Y1, kMaps1, n.w[kS2Coef], A[kS2Coef], A[kS2Bias], w.G1p);
  conv_param_terms<L, kIn>(w.X, kMaps1, w.G1p, DenseKernels{n.cin}, A[kC1Weight], A[kC1Bias]);
  if (grad_x) {
    conv_input_grad<L, kIn, CBX, 1>(w.G1p, n.cin, n.w[kC1Weight], DenseInputs{n.cin}, w.GX);
    constexpr int P = kIn * kIn;
    const int total = n.cin * P;
    for (int k = 0; k < valid; ++k) {
      float* d = grad_x + int64_t(k) * total;
      for (int p = 0; p < total; ++p) d[p] = w.GX[int64_t(p) * L + k];
    }
  }
}

// =============================================================================================
// Drivers: per-ISA entry points over a range of tiles

template <int L> LENET5_INLINE void forward_tiles(const Net& n, const float* x, float* out, float* saved,
                                                  int64_t N, int64_t t0, int64_t t1) {
  const int64_t img = int64_t(n.cin) * kIn * kIn;
  float* X = thread_buffer(int64_t(L) * (img + (saved ? 0 : kTileVecs)));
  float* own = X + L * img;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t base = t * L;
    const int valid = static_cast<int>(std::min<int64_t>(L, N - base));
    float* s = saved ? saved + kHeader + t * int64_t(kTileVecs) * L : own;
    if (n.classic) forward_tile<L, true>(n, x + base * img, valid, out + base * n.classes, s, X);
    else forward_tile<L, false>(n, x + base * img, valid, out + base * n.classes, s, X);
  }
}
template <int L> LENET5_INLINE void backward_tiles(const Net& n, const float* x, const float* saved,
                                                   const float* grad_out, int64_t N, int64_t t0, int64_t t1,
                                                   float* acc, float* rows, float* grad_x) {
  const int64_t img = int64_t(n.cin) * kIn * kIn;
  Work<L> w(n, thread_buffer(Work<L>::floats(n)));
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t base = t * L;
    const int valid = static_cast<int>(std::min<int64_t>(L, N - base));
    const float* s = saved + kHeader + t * int64_t(kTileVecs) * L;
    float* gx = grad_x ? grad_x + base * img : nullptr;
    grad_out_to_lanes<L>(n, grad_out + base * n.classes, valid, w);
    load_tile<L>(x + base * img, n.cin, valid, w.X);
    float* r = rows + base * n.fc_cols;
    if (n.classic) backward_tile<L, true>(n, valid, s, acc, r, gx, w);
    else backward_tile<L, false>(n, valid, s, acc, r, gx, w);
  }
}

// Forward, loss and backward of tiles [t0, t1), each tile's three back to back while its
// activations are in cache (a per-thread tile of saved activations, never the caller's memory):
// outputs into out, each image's loss into losses, scale * dE/dw added to acc (and the rows of the
// fully connected weights' terms into rows, as backward_tiles).
template <int L> LENET5_INLINE void train_tiles(const Net& n, const float* x, const int64_t* labels, double map_j,
                                                double scale, float* out, double* losses, int64_t N, int64_t t0,
                                                int64_t t1, float* acc, float* rows, float* grad_x) {
  const int64_t img = int64_t(n.cin) * kIn * kIn;
  const int64_t work = (Work<L>::floats(n) + 15) / 16 * 16;  // the saved tile after it, 64-byte aligned
  float* buf = thread_buffer(work + int64_t(kTileVecs) * L);
  Work<L> w(n, buf);
  float* s = buf + work;
  alignas(64) float g[geometry::kMaxClasses];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t base = t * L;
    const int valid = static_cast<int>(std::min<int64_t>(L, N - base));
    float* o = out + base * n.classes;
    if (n.classic) forward_tile<L, true>(n, x + base * img, valid, o, s, w.X);
    else forward_tile<L, false>(n, x + base * img, valid, o, s, w.X);
    for (int k = 0; k < valid; ++k) {
      const float* y = o + int64_t(k) * n.classes;
      const int c = static_cast<int>(labels[base + k]);
      losses[base + k] = (n.classic ? map_loss(y, n.classes, c, map_j, scale, false, g)
                                    : cross_entropy(y, n.classes, c, scale, g)).loss;
      for (int i = 0; i < n.classes; ++i) w.GO[i * L + k] = g[i];
    }
    for (int i = 0; i < n.classes; ++i)
      for (int k = valid; k < L; ++k) w.GO[i * L + k] = 0.0f;
    float* gx = grad_x ? grad_x + base * img : nullptr;
    float* r = rows + base * n.fc_cols;
    if (n.classic) backward_tile<L, true>(n, valid, s, acc, r, gx, w);
    else backward_tile<L, false>(n, valid, s, acc, r, gx, w);
  }
}

struct Kernels {
  void (*forward)(const Net&, const float*, float*, float*, int64_t, int64_t, int64_t);
  void (*backward)(const Net&, const float*, const float*, const float*, int64_t, int64_t, int64_t, float*, float*,
                   float*);
  void (*train)(const Net&, const float*, const int64_t*, double, double, float*, double*, int64_t, int64_t, int64_t,
                float*, float*, float*);
  void (*fc_weights)(const Net&, int, const float*, int64_t, int, int, float*);
  int lanes;
};

#define LENET5_BATCH_KERNELS(NAME, L, ATTR)                                                        \
  ATTR void NAME##_forward(const Net& n, const float* x, float* out, float* saved, int64_t N,      \
                           int64_t t0, int64_t t1) {                                             \
    forward_tiles<L>(n, x, out, saved, N, t0, t1);                                                \
  }                                                                                              \
  ATTR void NAME##_backward(const Net& n, const float* x, const float* saved, const float* go,     \
                            int64_t N, int64_t t0, int64_t t1, float* acc, float* rows, float* gx) { \
    backward_tiles<L>(n, x, saved, go, N, t0, t1, acc, rows, gx);                                 \
  }                                                                                              \
  ATTR void NAME##_train(const Net& n, const float* x, const int64_t* labels, double map_j, double scale, \
                         float* out, double* losses, int64_t N, int64_t t0, int64_t t1, float* acc,     \
                         float* rows, float* gx) {                                               \
    train_tiles<L>(n, x, labels, map_j, scale, out, losses, N, t0, t1, acc, rows, gx);            \
  }                                                                                              \
  ATTR void NAME##_fc_weights(const Net& n, int r, const float* rows, int64_t images, int v0, int v1, \
                              float* dW) {                                                       \
    fc_weight_terms<L>(n, r, rows, images, v0, v1, dW);                                           \
  }                                                                                              \
  const Kernels NAME##_kernels = {NAME##_forward, NAME##_backward, NAME##_train, NAME##_fc_weights, L};

// (DQ, in the AVX-512 set, materialises the max-pool's comparison masks as vectors; without it
// GCC compares lane by lane.)
LENET5_ENGINE_KERNEL_SETS(LENET5_BATCH_KERNELS)  // one set per kernel family (vec.h)
#undef LENET5_BATCH_KERNELS

const Kernels& pick_kernels() { return LENET5_ENGINE_PICK(current_isa()); }

void check_aligned(const float* saved, const char* fn) {
  if (!saved || reinterpret_cast<uintptr_t>(saved) % 64 != 0)
    fail(fn, "the saved buffer must be a 64-byte aligned, non-null pointer");
}

struct Header {
  int32_t magic, lanes, variant, cin, classes, pad;
  int64_t N;
};
static_assert(sizeof(Header) <= kHeader * sizeof(float), "header");

// The reduced accumulators (padded fully connected rows) into the caller's gradient buffers.
void write_grads(const Net& n, const float* sum, float* const* grads) {
  const ParamOrder& order = param_order(n.classic ? Variant::kClassic : Variant::kModern);
  for (int p = 0; p < order.count; ++p) {
    const int r = order.role[p];
    const float* a = sum + n.acc_off[r];
    if (n.fc_jpad[r]) {
      const int J = n.fc_j[r];
      for (int u = 0; u < n.fc_u[r]; ++u)
        std::memcpy(grads[p] + int64_t(u) * J, a + int64_t(u) * n.fc_jpad[r], sizeof(float) * J);
    } else {
      std::memcpy(grads[p], a, sizeof(float) * n.size[r]);
    }
  }
}

// The parameter gradients of a batch into sum (acc_total floats, Net's layout): tiles(t0, t1,
// acc, rows) runs tiles [t0, t1), adding the per-tile terms to acc and writing the tiles' rows of
// the fully connected weights' GEMMs into rows; batch_slices sums the per-tile terms slice by
// slice into sum[0, acc_tiles); then each GEMM runs over all the batch's rows in image order,
// split into tasks by vectors of its inputs. Bitwise the same for any nthreads.
template <class Tiles>
void batch_gradients(const Net& n, const Kernels& k, int64_t N, int nthreads, float* sum, Tiles&& tiles) {
  if (N == 0) {  // no images: zero gradients
    std::fill(sum, sum + n.acc_total, 0.0f);
    return;
  }
  const int L = k.lanes;
  const int64_t ntiles = (N + L - 1) / L;
  float* rows = reusable_scratch<float, ScratchUse::kEngineRows>(ntiles * L * n.fc_cols);
  batch_slices<float>(ntiles, n.acc_tiles, sum, nthreads,
                      [&](int64_t t0, int64_t t1, float* acc) { tiles(t0, t1, acc, rows); });
  struct Task {
    int r, v0, v1;
  };
  std::vector<Task> tasks;
  const int chunk = L == 16 ? 8 : 4;  // vectors of the input per task: a few tens of microseconds
  for (int r : {kC5Weight, kF6Weight, kOutWeight})
    for (int v = 0; v < n.fc_jpad[r] / L; v += chunk) tasks.push_back({r, v, std::min(n.fc_jpad[r] / L, v + chunk)});
  parallel_tasks(static_cast<int64_t>(tasks.size()), nthreads, [&](int64_t i) {
    const Task& t = tasks[i];
    k.fc_weights(n, t.r, rows, N, t.v0, t.v1, sum + n.acc_off[t.r]);
  });
}

}  // namespace

int64_t lenet5_batch_saved_floats(Variant variant, int in_channels, int classes, int64_t N) {
  const char* fn = "lenet5_batch_saved_floats";
  check_sizes(variant, in_channels, classes, fn);  // the size depends on nothing else
  if (N < 0) fail(fn, "N must be >= 0");
  return kHeader + (N + kMaxL - 1) / kMaxL * kMaxL * int64_t(kTileVecs);
}

void lenet5_batch_forward(const FusedNet& net, const float* x, float* out, float* saved, int64_t N, int nthreads) {
  const char* fn = "lenet5_batch_forward";
  const Net n = resolve(net, fn);
  if (saved) check_aligned(saved, fn);
  if (N < 0) fail(fn, "N must be >= 0");
  const Kernels& k = pick_kernels();
  const int L = k.lanes;
  if (saved) {
    Header h{kMagic, L, static_cast<int32_t>(net.variant), n.cin, n.classes, 0, N};
    std::memset(saved, 0, sizeof(float) * kHeader);
    std::memcpy(saved, &h, sizeof(h));
  }
  if (N == 0) return;
  const int64_t ntiles = (N + L - 1) / L;
  if (saved) {  // the buffer is sized for 16 lanes: zero what fewer lanes leave unwritten (no garbage in an output)
    const int64_t used = kHeader + ntiles * L * int64_t(kTileVecs);
    const int64_t size = lenet5_batch_saved_floats(net.variant, net.in_channels, net.classes, N);
    std::memset(saved + used, 0, sizeof(float) * (size - used));
  }
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nthreads, ntiles)));
  parallel_tasks(ntiles, threads, [&](int64_t t) { k.forward(n, x, out, saved, N, t, t + 1); });
}

void lenet5_batch_backward(const FusedNet& net, const float* x, const float* saved, const float* grad_out,
                           int64_t N, float* const* grads, float* grad_x, int nthreads) {
  const char* fn = "lenet5_batch_backward";
  const Net n = resolve(net, fn);
  check_aligned(saved, fn);
  if (N < 0) fail(fn, "N must be >= 0");
  check_buffers(net, grads, "gradient buffer", fn);
  const Kernels& k = pick_kernels();
  const int L = k.lanes;
  Header h;
  std::memcpy(&h, saved, sizeof(h));
  if (h.magic != kMagic || h.N != N || h.variant != static_cast<int32_t>(net.variant) || h.cin != n.cin ||
      h.classes != n.classes)
    fail(fn, "the saved buffer was not written by lenet5_batch_forward for this network and N");
  if (h.lanes != L)
    fail(fn, "the saved buffer was written with " + std::to_string(h.lanes) + " lanes, the current SIMD level uses " +
                std::to_string(L));
  float* sum = reusable_scratch<float, ScratchUse::kReduceResult>(n.acc_total);  // no fresh buffer per call
  batch_gradients(n, k, N, std::max(1, nthreads), sum, [&](int64_t t0, int64_t t1, float* acc, float* rows) {
    k.backward(n, x, saved, grad_out, N, t0, t1, acc, rows, grad_x);
  });
  write_grads(n, sum, grads);
}

void lenet5_batch_train(const FusedNet& net, const float* x, const int64_t* labels, int64_t N, double map_j,
                        double scale, float* out, float* loss, float* const* grads, float* grad_x, int nthreads) {
  const char* fn = "lenet5_batch_train";
  const Net n = resolve(net, fn);
  if (N < 0) fail(fn, "N must be >= 0");
  check_buffers(net, grads, "gradient buffer", fn);
  check_labels(labels, N, n.classes, fn);
  const Kernels& k = pick_kernels();
  float* sum = reusable_scratch<float, ScratchUse::kReduceResult>(n.acc_total);
  std::vector<double> losses(N);
  batch_gradients(n, k, N, std::max(1, nthreads), sum, [&](int64_t t0, int64_t t1, float* acc, float* rows) {
    k.train(n, x, labels, map_j, scale, out, losses.data(), N, t0, t1, acc, rows, grad_x);
  });
  write_grads(n, sum, grads);
  double total_loss = 0;
  for (double l : losses) total_loss += l;  // in image order: the same for any thread count
  *loss = static_cast<float>(scale * total_loss);
}

}  // namespace cpu
}  // namespace lenet5
