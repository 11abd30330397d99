// vec.h — the fused engines' vector toolkit: GCC/Clang generic vectors of L floats (L = 4, 8
// or 16), loads and stores at any alignment, broadcasts, lane shuffles and horizontal sums.
//
// Layout: vf<L> is a value type with the usual operators (a * b + c contracts to an FMA where
// the target has one); nothing here names an instruction set. The engine instantiates its
// templates inside functions compiled with __attribute__((target(...))) (see simd.h's
// selector), so the same text becomes AVX-512, AVX2 or portable (SSE2/NEON/scalar) code.
// Trick: hsum_rows reduces L vectors at once with a transpose-and-add tree of L - 1 shuffle
// pairs, none crossing 128-bit blocks until the last log2(L/4) levels.
// (The per-op kernels use simd_vec.h's intrinsic wrappers instead.)
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>

// Vectors pass between always-inlined helpers only; GCC's ABI notes do not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace lenet5 {
namespace cpu {
namespace vec {


template <int L> struct VecT {
  typedef float F __attribute__((vector_size(4 * L)));
  typedef int32_t I __attribute__((vector_size(4 * L)));
  typedef float FU __attribute__((vector_size(4 * L), aligned(4), may_alias));
};
template <int L> using vf = typename VecT<L>::F;
template <int L> using vi = typename VecT<L>::I;

#define LENET5_INLINE inline __attribute__((always_inline))

template <int L> LENET5_INLINE vf<L> load(const float* p) {
  return *reinterpret_cast<const typename VecT<L>::FU*>(p);
}
template <int L> LENET5_INLINE void store(float* p, const vf<L>& v) {
  *reinterpret_cast<typename VecT<L>::FU*>(p) = v;
}
// A register holding x in every lane. (Written as a sum on purpose: a plain broadcast lets GCC
// fold it into every FMA that uses it as an {1toN} memory operand, one load per FMA instead of
// one per weight, measured 25-40% slower in the convolutions.)
template <int L> LENET5_INLINE vf<L> splat(float x) { return vf<L>{} + x; }

// [a0+a1, a2+a3, ..., b0+b1, b2+b3, ...]
template <int L, int... I>
LENET5_INLINE vf<L> pairsum_(const vf<L>& a, const vf<L>& b, std::integer_sequence<int, I...>) {
#if defined(__clang__)
  return __builtin_shufflevector(a, b, (2 * I)...) + __builtin_shufflevector(a, b, (2 * I + 1)...);
#else
  return __builtin_shuffle(a, b, vi<L>{(2 * I)...}) + __builtin_shuffle(a, b, vi<L>{(2 * I + 1)...});
#endif
}
template <int L> LENET5_INLINE vf<L> pairsum(const vf<L>& a, const vf<L>& b) {
  return pairsum_<L>(a, b, std::make_integer_sequence<int, L>{});
}
// [a0, a0, a1, a1, ...]: upsampling by 2 for the subsampling layers' backward.
template <int L, int... I> LENET5_INLINE vf<L> dup_lo_(const vf<L>& a, std::integer_sequence<int, I...>) {
#if defined(__clang__)
  return __builtin_shufflevector(a, a, (I / 2)...);
#else
  return __builtin_shuffle(a, vi<L>{(I / 2)...});
#endif
}
template <int L> LENET5_INLINE vf<L> dup_lo(const vf<L>& a) {
  return dup_lo_<L>(a, std::make_integer_sequence<int, L>{});
}
#if defined(__clang__)
#define LENET5_SHUFFLE2(L, a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define LENET5_SHUFFLE2(L, a, b, ...) __builtin_shuffle(a, b, vi<L>{__VA_ARGS__})
#endif
// Within each 128-bit block of 4 lanes: [a0+a1, a2+a3, b0+b1, b2+b3] (vshufps + add).
template <int L, int... K>
LENET5_INLINE vf<L> inlane_pairsum_(const vf<L>& a, const vf<L>& b, std::integer_sequence<int, K...>) {
  return LENET5_SHUFFLE2(L, a, b, ((K % 4 < 2 ? 0 : L) + K / 4 * 4 + 2 * (K % 2))...) +
         LENET5_SHUFFLE2(L, a, b, ((K % 4 < 2 ? 0 : L) + K / 4 * 4 + 2 * (K % 2) + 1)...);
}
// Across 128-bit blocks: block i of the result = sum of blocks 2i, 2i+1 of a (first half) or b.
template <int L, int... K>
LENET5_INLINE vf<L> block_pairsum_(const vf<L>& a, const vf<L>& b, std::integer_sequence<int, K...>) {
  constexpr int H = L / 8;  // result blocks that come from a
  return LENET5_SHUFFLE2(L, a, b, ((K / 4 < H ? 0 : L) + 4 * (2 * ((K / 4) % H)) + K % 4)...) +
         LENET5_SHUFFLE2(L, a, b, ((K / 4 < H ? 0 : L) + 4 * (2 * ((K / 4) % H) + 1) + K % 4)...);
}
// Lane j of the result = sum of the lanes of r[j]: two in-block pairing levels, then pairing
// of 128-bit blocks (a transpose-and-add tree of L - 1 shuffle pairs, none crossing lanes
// until the last log2(L/4) levels).
template <int L> LENET5_INLINE vf<L> hsum_rows(const vf<L>* r) {
  vf<L> t[L];
#pragma GCC unroll 16
  for (int i = 0; i < L; ++i) t[i] = r[i];
  int n = L;
#pragma GCC unroll 2
  for (int level = 0; level < 2; ++level, n /= 2) {
#pragma GCC unroll 8
    for (int i = 0; i < n / 2; ++i)
      t[i] = inlane_pairsum_<L>(t[2 * i], t[2 * i + 1], std::make_integer_sequence<int, L>{});
  }
  if constexpr (L >= 8) {
#pragma GCC unroll 2
    for (; n > 1; n /= 2) {
#pragma GCC unroll 2
      for (int i = 0; i < n / 2; ++i)
        t[i] = block_pairsum_<L>(t[2 * i], t[2 * i + 1], std::make_integer_sequence<int, L>{});
    }
  }
  return t[0];
}
template <int L> LENET5_INLINE float hsum(const vf<L>& v) {
  vf<L> t = v;
#pragma GCC unroll 5
  for (int n = L; n > 1; n /= 2) t = pairsum<L>(t, t);
  return t[0];
}

// Lanes [0, n) kept, the rest exactly 0 (bitwise, so junk lanes never leak, even as NaN).
alignas(64) constexpr int32_t kLaneMask[64] = {
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1};
template <int L> LENET5_INLINE vf<L> keep_first(const vf<L>& x, int n) {
  n = std::min(32, std::max(0, n));
  vi<L> m;
  std::memcpy(&m, kLaneMask + 32 - n, sizeof(m));
  return reinterpret_cast<vf<L>>(reinterpret_cast<vi<L>>(x) & m);
}

}  // namespace vec
}  // namespace cpu
}  // namespace lenet5

// ---- An engine's entry points, one set per kernel family ----
// The engine writes KERNELS(NAME, L, ATTR): functions with attributes ATTR that instantiate its
// templates at L lanes, collected as `const Kernels NAME##_kernels`. LENET5_ENGINE_KERNEL_SETS
// makes the sets portable (4 lanes), avx2 (8), avx2_wide (the 16-lane code on AVX2 registers)
// and avx512 (16; current_isa() picks it only with F, BW, VL and DQ, so they may all be used),
// and LENET5_ENGINE_PICK(isa) is the set for simd.h's current_isa(). GCC's predictive commoning
// turns the overlapping loads of unrolled convolution loops into long chains of spilled
// registers; it is off for these functions.
#if defined(__clang__)
#define LENET5_ENGINE_OPT
#else
#define LENET5_ENGINE_OPT optimize("no-predictive-commoning"),
#endif
#if defined(__x86_64__) || defined(__i386__)
#define LENET5_ENGINE_KERNEL_SETS(KERNELS)                                                      \
  KERNELS(portable, 4, __attribute__((LENET5_ENGINE_OPT flatten)))                              \
  KERNELS(avx2, 8, __attribute__((target("avx2,fma"), LENET5_ENGINE_OPT flatten)))              \
  KERNELS(avx2_wide, 16, __attribute__((target("avx2,fma"), LENET5_ENGINE_OPT flatten)))        \
  KERNELS(avx512, 16,                                                                           \
          __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"), LENET5_ENGINE_OPT flatten)))
#define LENET5_ENGINE_PICK(isa)                                   \
  ((isa) == ::lenet5::cpu::Isa::kAvx512     ? avx512_kernels    \
   : (isa) == ::lenet5::cpu::Isa::kAvx2Wide ? avx2_wide_kernels \
   : (isa) == ::lenet5::cpu::Isa::kAvx2     ? avx2_kernels      \
                                            : portable_kernels)
#else
#define LENET5_ENGINE_KERNEL_SETS(KERNELS) KERNELS(portable, 4, __attribute__((LENET5_ENGINE_OPT flatten)))
#define LENET5_ENGINE_PICK(isa) portable_kernels
#endif
