// conv5x5_core.cuh — the valid 5x5 convolution kernels shared by conv5x5.cu (dense table) and
// sparse_conv5x5.cu (CSR connection table).
//
// Layout: x[N,C,H,W], y[N,O,Ho,Wo] (Ho = H-4, Wo = W-4). A connection policy names the kernels of
// output map o, k in [begin(o), end(o)), the input map input(k) of kernel k, and the weights
// w[k*25 + ky*5 + kx]: DenseConn is k = o*C + c (w[O,C,5,5]); CsrConn is the CSR table (w[K,5,5]).
// Trick:
//  * forward: one thread per output pixel (n, oy, ox) computes OB output maps at once; the block's
//    OB x (channel chunk) x 25 weights sit in shared memory as a dense [c][tap][ob] matrix (the
//    CSR table is scattered into it, absent connections are 0 and skipped with a block-uniform
//    mask), so each 5x5 input patch is loaded once into registers and reused OB times.
//  * input gradient: one thread per input pixel computes CB input maps: it walks the (up to 25)
//    output pixels whose window covers it, rebuilds ga from gy and y, and multiplies by the
//    [o][tap][cb] weights in shared memory (squared for Gauss-Newton).
//  * weight gradient: one block per (kernel, row block of the 5x5, batch chunk); each thread
//    takes 4-pixel output row segments, so one row of 8 inputs feeds 5 taps x 4 pixels in
//    registers; fixed-order block reduction, no atomics. The bias gradient rides along in the
//    block of the output map's first kernel.
#pragma once
#include "cuda/common.cuh"

namespace lenet5 {
namespace cuda {
namespace detail {

struct DenseConn {
  static constexpr bool kDense = true;
  int C;
  __device__ __forceinline__ int64_t begin(int o) const { return int64_t(o) * C; }
  __device__ __forceinline__ int64_t end(int o) const { return int64_t(o + 1) * C; }
  __device__ __forceinline__ int input(int64_t k) const { return int(k % C); }
};

struct CsrConn {
  static constexpr bool kDense = false;
  const int32_t* offsets;
  const int32_t* inputs;
  __device__ __forceinline__ int64_t begin(int o) const { return __ldg(offsets + o); }
  __device__ __forceinline__ int64_t end(int o) const { return __ldg(offsets + o + 1); }
  __device__ __forceinline__ int input(int64_t k) const { return __ldg(inputs + k); }
};

constexpr int kConvBS = 256;            // threads per block, all conv kernels
constexpr int kConvWBytes = 24 * 1024;  // shared memory for one staged weight chunk

// Maps per thread (OB or CB) for n maps: the smallest of 1, 2, 4, 6, 8 that covers n (8 above).
inline int conv_group(int64_t n) { return n >= 7 ? 8 : n >= 5 ? 6 : n >= 3 ? 4 : n >= 2 ? 2 : 1; }

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------
template <class T, int OB> struct FwdChunk {
  static constexpr int CC = kConvWBytes / (int(sizeof(T)) * 25 * OB);  // channels per chunk
};

// ws[(cl*25 + t)*OB + ob] = weights from input channel c0+cl to output map o0+ob (0 if none);
// cmask[cl] = bit ob set when that connection exists (sparse only). Ends with __syncthreads.
template <class T, int OB, class Conn>
__device__ __forceinline__ void conv5_stage_fwd(T* ws, int* cmask, const T* __restrict__ w, const Conn& conn,
                                                int o0, int O, int C, int c0, int cc) {
  const int n = OB * cc * 25;
  if (Conn::kDense) {
    // e = (ob, cl, t) with t fastest: consecutive threads read consecutive weights of map o.
    for (int e = threadIdx.x; e < n; e += kConvBS) {
      const int ob = e / (cc * 25), r = e - ob * cc * 25;
      const int o = o0 + ob;
      ws[r * OB + ob] = o < O ? __ldg(w + (int64_t(o) * C + c0) * 25 + r) : T(0);
    }
  } else {
    for (int e = threadIdx.x; e < n; e += kConvBS) ws[e] = T(0);
    for (int e = threadIdx.x; e < cc; e += kConvBS) cmask[e] = 0;
    __syncthreads();
    // One thread per (ob, tap) walks map o's kernels in table order: no write conflicts.
    for (int e = threadIdx.x; e < OB * 25; e += kConvBS) {
      const int ob = e / 25, t = e - ob * 25, o = o0 + ob;
      if (o >= O) continue;
      const int64_t ke = conn.end(o);
      for (int64_t k = conn.begin(o); k < ke; ++k) {
        const int cl = conn.input(k) - c0;
        if (cl < 0 || cl >= cc) continue;
        ws[(cl * 25 + t) * OB + ob] += __ldg(w + k * 25 + t);
        if (t == 0) atomicOr(&cmask[cl], 1 << ob);
      }
    }
  }
  __syncthreads();
}

template <class T, int OB, class Conn>
__global__ void __launch_bounds__(kConvBS)
conv5_forward_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                     T* __restrict__ y, Conn conn, ConvShape s, int act) {
  constexpr int CC = FwdChunk<T, OB>::CC;
  const int64_t N = s.N;
  const int C = int(s.C), H = int(s.H), W = int(s.W), O = int(s.O);
  LENET5_SHARED(T, ws, [CC * 25 * OB]);
  LENET5_SHARED(int, cmask, [Conn::kDense ? 1 : CC]);
  const int o0 = blockIdx.y * OB;
  const int Ho = H - 4, Wo = W - 4;
  const int64_t P = int64_t(Ho) * Wo, HW = int64_t(H) * W, total = N * P;
  const bool resident = C <= CC;  // all weights of this map group fit: stage them once
  if (resident) conv5_stage_fwd<T, OB>(ws, cmask, w, conn, o0, O, C, 0, C);

  T bias[OB];
#pragma unroll
  for (int ob = 0; ob < OB; ++ob) bias[ob] = o0 + ob < O ? __ldg(b + o0 + ob) : T(0);

  // Block-uniform loop (every thread reaches the __syncthreads of the staging).
  for (int64_t base = int64_t(blockIdx.x) * kConvBS; base < total; base += int64_t(gridDim.x) * kConvBS) {
    const int64_t q = base + threadIdx.x;
    const bool valid = q < total;
    const int64_t qq = valid ? q : total - 1;
    const int64_t n = qq / P, p = qq - n * P;
    const int oy = int(p / Wo), ox = int(p - int64_t(oy) * Wo);
    const T* xn = x + n * C * HW + int64_t(oy) * W + ox;
    T acc[OB];
#pragma unroll
    for (int ob = 0; ob < OB; ++ob) acc[ob] = bias[ob];
    for (int c0 = 0; c0 < C; c0 += CC) {
      const int cc = C - c0 < CC ? C - c0 : CC;
      if (!resident) {
        __syncthreads();
        conv5_stage_fwd<T, OB>(ws, cmask, w, conn, o0, O, C, c0, cc);
      }
      if (valid) {
        for (int cl = 0; cl < cc; ++cl) {
          const int m = Conn::kDense ? -1 : cmask[cl];
          if (m == 0) continue;  // block-uniform: no output map of this group reads channel cl
          const T* xp = xn + int64_t(c0 + cl) * HW;
          T xv[25];
#pragma unroll
          for (int ky = 0; ky < 5; ++ky)
#pragma unroll
            for (int kx = 0; kx < 5; ++kx) xv[ky * 5 + kx] = __ldg(xp + ky * W + kx);
          const T* wp = ws + cl * 25 * OB;
#pragma unroll
          for (int ob = 0; ob < OB; ++ob) {
            if (!Conn::kDense && !((m >> ob) & 1)) continue;
#pragma unroll
            for (int t = 0; t < 25; ++t) acc[ob] += wp[t * OB + ob] * xv[t];
          }
        }
      }
    }
    if (valid) {
#pragma unroll
      for (int ob = 0; ob < OB; ++ob)
        if (o0 + ob < O) y[(n * O + o0 + ob) * P + p] = act::forward(acc[ob], act);
    }
  }
}

template <class T, int OB, class Conn>
void conv5_forward_launch(const T* x, const T* w, const T* b, T* y, Conn conn, const ConvShape& s, int act,
                          cudaStream_t st) {
  const int64_t total = s.N * s.out_h() * s.out_w();
  const dim3 grid(grid_blocks(total, kConvBS), static_cast<unsigned>(ceil_div(s.O, OB)));
  LENET5_LAUNCH(grid, kConvBS, 0, st, conv5_forward_kernel<T, OB, Conn>)(x, w, b, y, conn, s, act);
  LENET5_CHECK_LAUNCH("conv5x5 forward");
}

template <class T, class Conn>
void conv5_forward(const T* x, const T* w, const T* b, T* y, Conn conn, const ConvShape& s, int act,
                   cudaStream_t st) {
  if (s.N <= 0 || s.O <= 0 || s.H < 5 || s.W < 5) return;
  switch (conv_group(s.O)) {
    case 1: return conv5_forward_launch<T, 1>(x, w, b, y, conn, s, act, st);
    case 2: return conv5_forward_launch<T, 2>(x, w, b, y, conn, s, act, st);
    case 4: return conv5_forward_launch<T, 4>(x, w, b, y, conn, s, act, st);
    case 6: return conv5_forward_launch<T, 6>(x, w, b, y, conn, s, act, st);
    default: return conv5_forward_launch<T, 8>(x, w, b, y, conn, s, act, st);
  }
}

// ---------------------------------------------------------------------------------------------
// Input gradient
// ---------------------------------------------------------------------------------------------
template <class T, int CB> struct DataChunk {
  static constexpr int OC = kConvWBytes / (int(sizeof(T)) * 25 * CB);  // output maps per chunk
};

// wd[(ol*25 + t)*CB + cb] = sum of (squared, for Gauss-Newton) weights of the kernels from input
// map c0+cb to output map o0+ol; omask[ol] = 1 when map o0+ol reads any of the CB input maps
// (sparse only). Ends with __syncthreads.
template <class T, int CB, class Conn>
__device__ __forceinline__ void conv5_stage_data(T* wd, int* omask, const T* __restrict__ w, const Conn& conn,
                                                 int c0, int C, int o0, int oc, bool gn) {
  const int n = oc * CB * 25;
  if (Conn::kDense) {
    // e = (ol, cb, t) with t fastest: w[o, c0+cb, t] is contiguous over (cb, t).
    for (int e = threadIdx.x; e < n; e += kConvBS) {
      const int ol = e / (CB * 25), r = e - ol * CB * 25, cb = r / 25, t = r - cb * 25;
      wd[(ol * 25 + t) * CB + cb] =
          c0 + cb < C ? sq_if(__ldg(w + (int64_t(o0 + ol) * C + c0) * 25 + r), gn) : T(0);
    }
  } else {
    for (int e = threadIdx.x; e < n; e += kConvBS) wd[e] = T(0);
    __syncthreads();
    // One thread per (ol, tap) walks map o's kernels in table order: no write conflicts.
    for (int e = threadIdx.x; e < oc * 25; e += kConvBS) {
      const int ol = e / 25, t = e - ol * 25, o = o0 + ol;
      int any = 0;
      const int64_t ke = conn.end(o);
      for (int64_t k = conn.begin(o); k < ke; ++k) {
        const int cb = conn.input(k) - c0;
        if (cb < 0 || cb >= CB) continue;
        wd[(ol * 25 + t) * CB + cb] += sq_if(__ldg(w + k * 25 + t), gn);
        any = 1;
      }
      if (t == 0) omask[ol] = any;
    }
  }
  __syncthreads();
}

template <class T, int CB, class Conn>
__global__ void __launch_bounds__(kConvBS)
conv5_backward_data_kernel(const T* __restrict__ gy, const T* __restrict__ y, const T* __restrict__ w,
                           T* __restrict__ gx, Conn conn, ConvShape s, int act, bool gn) {
  constexpr int OC = DataChunk<T, CB>::OC;
  const int64_t N = s.N;
  const int C = int(s.C), H = int(s.H), W = int(s.W), O = int(s.O);
  LENET5_SHARED(T, wd, [OC * 25 * CB]);
  LENET5_SHARED(int, omask, [Conn::kDense ? 1 : OC]);
  const int c0 = blockIdx.y * CB;
  const int Ho = H - 4, Wo = W - 4;
  const int64_t P = int64_t(Ho) * Wo, HW = int64_t(H) * W, total = N * HW;
  const bool resident = O <= OC;
  if (resident) conv5_stage_data<T, CB>(wd, omask, w, conn, c0, C, 0, O, gn);

  for (int64_t base = int64_t(blockIdx.x) * kConvBS; base < total; base += int64_t(gridDim.x) * kConvBS) {
    const int64_t q = base + threadIdx.x;
    const bool valid = q < total;
    const int64_t qq = valid ? q : total - 1;
    const int64_t n = qq / HW, r = qq - n * HW;
    const int ih = int(r / W), iw = int(r - int64_t(ih) * W);
    // Taps whose output pixel (ih - ky, iw - kx) exists, as bit masks over ky and kx. All 25 taps
    // are walked unrolled in every thread (invalid ones predicated off), so a warp never diverges
    // at the borders and every shared weight read is a broadcast.
    unsigned kyv = 0, kxv = 0;
#pragma unroll
    for (int t = 0; t < 5; ++t) {
      kyv |= (ih - t >= 0 && ih - t < Ho) ? 1u << t : 0u;
      kxv |= (iw - t >= 0 && iw - t < Wo) ? 1u << t : 0u;
    }
    T acc[CB];
#pragma unroll
    for (int cb = 0; cb < CB; ++cb) acc[cb] = T(0);
    for (int o0 = 0; o0 < O; o0 += OC) {
      const int oc = O - o0 < OC ? O - o0 : OC;
      if (!resident) {
        __syncthreads();
        conv5_stage_data<T, CB>(wd, omask, w, conn, c0, C, o0, oc, gn);
      }
      if (valid) {
        for (int ol = 0; ol < oc; ++ol) {
          if (!Conn::kDense && !omask[ol]) continue;  // block-uniform
          const int64_t gbase = (n * O + o0 + ol) * P + int64_t(ih) * Wo + iw;  // index of (oy,ox) = (ih,iw)
          const T* wo = wd + ol * 25 * CB;
#pragma unroll
          for (int ky = 0; ky < 5; ++ky) {
#pragma unroll
            for (int kx = 0; kx < 5; ++kx) {
              if (((kyv >> ky) & (kxv >> kx) & 1u) == 0) continue;
              const T g = grad_pre(gy, y, gbase - int64_t(ky) * Wo - kx, act, gn);
              const T* wp = wo + (ky * 5 + kx) * CB;
#pragma unroll
              for (int cb = 0; cb < CB; ++cb) acc[cb] += g * wp[cb];
            }
          }
        }
      }
    }
    if (valid) {
#pragma unroll
      for (int cb = 0; cb < CB; ++cb)
        if (c0 + cb < C) gx[(n * C + c0 + cb) * HW + r] = acc[cb];
    }
  }
}

template <class T, int CB, class Conn>
void conv5_backward_data_launch(const T* gy, const T* y, const T* w, T* gx, Conn conn, const ConvShape& s,
                                int act, bool gn, cudaStream_t st) {
  const int64_t total = s.N * s.H * s.W;
  const dim3 grid(grid_blocks(total, kConvBS), static_cast<unsigned>(ceil_div(s.C, CB)));
  LENET5_LAUNCH(grid, kConvBS, 0, st, conv5_backward_data_kernel<T, CB, Conn>)(gy, y, w, gx, conn, s, act, gn);
  LENET5_CHECK_LAUNCH("conv5x5 backward (input gradient)");
}

template <class T, class Conn>
void conv5_backward_data(const T* gy, const T* y, const T* w, T* gx, Conn conn, const ConvShape& s, int act,
                         bool gn, cudaStream_t st) {
  if (s.N <= 0 || s.C <= 0 || s.H <= 0 || s.W <= 0) return;
  switch (conv_group(s.C)) {
    case 1: return conv5_backward_data_launch<T, 1>(gy, y, w, gx, conn, s, act, gn, st);
    case 2: return conv5_backward_data_launch<T, 2>(gy, y, w, gx, conn, s, act, gn, st);
    case 4: return conv5_backward_data_launch<T, 4>(gy, y, w, gx, conn, s, act, gn, st);
    case 6: return conv5_backward_data_launch<T, 6>(gy, y, w, gx, conn, s, act, gn, st);
    default: return conv5_backward_data_launch<T, 8>(gy, y, w, gx, conn, s, act, gn, st);
  }
}

// ---------------------------------------------------------------------------------------------
// Weight and bias gradients
// ---------------------------------------------------------------------------------------------
// Block (o, slot s, row block kyb, chunk) handles kernels k = begin(o) + s + j*S of map o, rows
// [kyb*KR, kyb*KR + KR) of the 5x5, over the images of its batch chunk; block (o, 0, 0, chunk)
// also sums the bias gradient of map o. Results go to gw_out[chunk*gw_cs + k*25 + tap] and
// gb_out[chunk*gb_cs + o].
template <class T, int KR, class Conn>
__global__ void __launch_bounds__(kConvBS)
conv5_backward_filter_kernel(const T* __restrict__ gy, const T* __restrict__ y, const T* __restrict__ x,
                             T* __restrict__ gw_out, T* __restrict__ gb_out, int64_t gw_cs, int64_t gb_cs,
                             Conn conn, int64_t S, int64_t per, ConvShape shape, int act, bool gn) {
  const int64_t N = shape.N;
  const int C = int(shape.C), H = int(shape.H), W = int(shape.W), O = int(shape.O);
  constexpr int KB = 5 / KR;       // row blocks per kernel
  constexpr int NV = KR * 5 + 1;   // taps of this row block + the bias
  LENET5_SHARED(T, red, [(kConvBS / 32) * NV]);
  int64_t bx = blockIdx.x;
  const int kyb = int(bx % KB);
  bx /= KB;
  const int64_t s = bx % S;
  const int o = int(bx / S);
  const int64_t chunk = blockIdx.y;
  const int64_t n0 = chunk * per, n1 = min64(N, n0 + per);
  const int Ho = H - 4, Wo = W - 4;
  const int64_t P = int64_t(Ho) * Wo, HW = int64_t(H) * W;
  const int nseg = (Wo + 3) / 4;
  const int64_t per_img = int64_t(Ho) * nseg;
  const int64_t items = n1 > n0 ? (n1 - n0) * per_img : 0;

  const int64_t kb = conn.begin(o), ke = conn.end(o), nk = ke - kb;
  const bool do_bias = s == 0 && kyb == 0;
  int64_t njobs = nk > s ? ceil_div(nk - s, S) : 0;
  if (do_bias && njobs == 0) njobs = 1;  // a map with no kernels still has a bias
  for (int64_t j = 0; j < njobs; ++j) {
    const int64_t k = kb + s + j * S;
    const bool has_k = k < ke, bias_now = do_bias && j == 0;
    const int c = has_k ? conn.input(k) : 0;
    T acc[NV];
#pragma unroll
    for (int v = 0; v < NV; ++v) acc[v] = T(0);
    for (int64_t it = threadIdx.x; it < items; it += kConvBS) {
      const int64_t nl = it / per_img, r = it - nl * per_img;
      const int oy = int(r / nseg), ox0 = int(r - int64_t(oy) * nseg) * 4;
      const int64_t n = n0 + nl;
      const int64_t gi = (n * O + o) * P + int64_t(oy) * Wo + ox0;
      T ga[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) ga[i] = ox0 + i < Wo ? grad_pre(gy, y, gi + i, act, gn) : T(0);
      if (bias_now) acc[NV - 1] += ((ga[0] + ga[1]) + ga[2]) + ga[3];
      if (has_k) {
        const T* xr = x + (n * C + c) * HW + int64_t(oy + kyb * KR) * W + ox0;
#pragma unroll
        for (int kr = 0; kr < KR; ++kr) {
          T xv[8];
#pragma unroll
          for (int i = 0; i < 8; ++i) xv[i] = ox0 + i < W ? sq_if(__ldg(xr + kr * W + i), gn) : T(0);
#pragma unroll
          for (int kx = 0; kx < 5; ++kx)
            acc[kr * 5 + kx] += ga[0] * xv[kx] + ga[1] * xv[kx + 1] + ga[2] * xv[kx + 2] + ga[3] * xv[kx + 3];
        }
      }
    }
    const T tot = block_reduce<NV, kConvBS>(acc, red);
    if (threadIdx.x < KR * 5) {
      if (has_k) gw_out[chunk * gw_cs + k * 25 + kyb * KR * 5 + threadIdx.x] = tot;
    } else if (threadIdx.x == NV - 1 && bias_now) {
      gb_out[chunk * gb_cs + o] = tot;
    }
  }
}

// gw[K,25] and gb[O]. S: kernel slots per output map (C for the dense table, where each block has
// exactly one kernel). scratch (scratch_elems values, may be null) lets the batch be cut into
// chunks whose partials are then summed in order; K is the kernel count (needed for that layout).
template <class T, class Conn>
void conv5_backward_filter(const T* gy, const T* y, const T* x, T* gw, T* gb, Conn conn, int64_t S,
                           int64_t K, const ConvShape& shape, int act, bool gn, T* scratch,
                           int64_t scratch_elems, cudaStream_t st) {
  const int64_t N = shape.N, O = shape.O;
  if (O <= 0) return;
  S = max64(1, S);
  const int64_t Ho = max64(shape.out_h(), 0), Wo = max64(shape.out_w(), 0);
  const int64_t per_img = Ho * ceil_div(Wo, 4);
  const ChunkPlan plan = plan_chunks(N, O * S, per_img, scratch ? scratch_elems : 0, K * 25 + O);
  // Few kernels (C1: 6): split each 5x5 into its 5 rows, 5x more blocks.
  const bool split_rows = O * S * plan.chunks < 256;
  const int64_t KB = split_rows ? 5 : 1;
  const dim3 grid(static_cast<unsigned>(O * S * KB), static_cast<unsigned>(plan.chunks));
  T* gw_out = gw;
  T* gb_out = gb;
  int64_t gw_cs = 0, gb_cs = 0;
  if (plan.chunks > 1) {
    gw_out = scratch;
    gw_cs = K * 25;
    gb_out = scratch + plan.chunks * K * 25;
    gb_cs = O;
  }
  if (split_rows)
    LENET5_LAUNCH(grid, kConvBS, 0, st, conv5_backward_filter_kernel<T, 1, Conn>)(
        gy, y, x, gw_out, gb_out, gw_cs, gb_cs, conn, S, plan.per, shape, act, gn);
  else
    LENET5_LAUNCH(grid, kConvBS, 0, st, conv5_backward_filter_kernel<T, 5, Conn>)(
        gy, y, x, gw_out, gb_out, gw_cs, gb_cs, conn, S, plan.per, shape, act, gn);
  LENET5_CHECK_LAUNCH("conv5x5 backward (weight gradient)");
  if (plan.chunks > 1) {
    sum_chunks(gw_out, plan.chunks, gw_cs, gw, K * 25, st);
    sum_chunks(gb_out, plan.chunks, gb_cs, gb, O, st);
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace lenet5
