// simd_vec.h — the vector types the SIMD sections are written against, and shared helpers
// (activations through activations.h, horizontal sums). Included by simd_pass.h inside a target region
// and an ISA namespace, once per ISA (no include guard on purpose).
//
// A vector type V provides: R (register), M (lane mask), L (lanes), kAcc (how many R a
// micro-kernel may keep as accumulators without spilling), kRegisters (vector registers of the
// ISA) and kRegsPerValue (registers one R takes), and static always-inline
// primitives: zero set1 load store loadn storen (first n lanes; masked, never touching memory
// past them) add sub mul fmadd(a,b,c)=a*b+c gt eq isnan mor mand mandnot select(m,b,a)=m?b:a
// maskz(m,a)=m?a:0 hsum
// deinterleave(a,b -> even,odd) interleave(e,o -> lo,hi) map(f, a) map2(f, a, b) (f applied to
// each native register).
//
// Types: LENET5_SIMD_ISA 1 -> Avx2 (8 lanes) and Avx2x2 (16 lanes on two AVX2 registers, the
// test stand-in for Avx512); LENET5_SIMD_ISA 2 -> Avx512 (16 lanes).

#define LENET5_AI inline __attribute__((always_inline))

#if LENET5_SIMD_ISA == 1

alignas(64) static const int32_t kAvx2TailMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

struct Avx2 {
  using R = __m256;
  using M = __m256;
  static constexpr int L = 8;
  static constexpr int kAcc = 12;
  static constexpr int kRegisters = 16, kRegsPerValue = 1;
  static LENET5_AI R zero() { return _mm256_setzero_ps(); }
  static LENET5_AI R set1(float a) { return _mm256_set1_ps(a); }
  static LENET5_AI R load(const float* p) { return _mm256_loadu_ps(p); }
  static LENET5_AI void store(float* p, R v) { _mm256_storeu_ps(p, v); }
  static LENET5_AI __m256i tail(int n) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kAvx2TailMask + 8 - n));
  }
  static LENET5_AI R loadn(const float* p, int n) { return _mm256_maskload_ps(p, tail(n)); }
  static LENET5_AI void storen(float* p, int n, R v) { _mm256_maskstore_ps(p, tail(n), v); }
  static LENET5_AI R add(R a, R b) { return _mm256_add_ps(a, b); }
  static LENET5_AI R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static LENET5_AI R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static LENET5_AI R fmadd(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static LENET5_AI M gt(R a, R b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static LENET5_AI M eq(R a, R b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  static LENET5_AI M isnan(R a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
  static LENET5_AI M mor(M a, M b) { return _mm256_or_ps(a, b); }
  static LENET5_AI M mand(M a, M b) { return _mm256_and_ps(a, b); }
  static LENET5_AI M mandnot(M a, M b) { return _mm256_andnot_ps(a, b); }  // ~a & b
  static LENET5_AI R select(M m, R b, R a) { return _mm256_blendv_ps(a, b, m); }
  static LENET5_AI R maskz(M m, R a) { return _mm256_and_ps(m, a); }
  static LENET5_AI float hsum(R v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static LENET5_AI void deinterleave(R a, R b, R& even, R& odd) {
    const R e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));  // a0 a2 b0 b2 | a4 a6 b4 b6
    const R o = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
    even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0)));
    odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), _MM_SHUFFLE(3, 1, 2, 0)));
  }
  template <class F> static LENET5_AI R map(F f, R a) { return f(a); }
  template <class F> static LENET5_AI R map2(F f, R a, R b) { return f(a, b); }
  static LENET5_AI void interleave(R e, R o, R& lo, R& hi) {
    const R l = _mm256_unpacklo_ps(e, o), h = _mm256_unpackhi_ps(e, o);
    lo = _mm256_permute2f128_ps(l, h, 0x20);
    hi = _mm256_permute2f128_ps(l, h, 0x31);
  }
};

// 16 lanes as two AVX2 registers: lanes 0-7 in a, 8-15 in b.
struct Avx2x2 {
  struct R { __m256 a, b; };
  using M = R;
  static constexpr int L = 16;
  static constexpr int kAcc = 6;
  static constexpr int kRegisters = 16, kRegsPerValue = 2;
  using H = Avx2;
  static LENET5_AI R zero() { return {H::zero(), H::zero()}; }
  static LENET5_AI R set1(float v) { return {H::set1(v), H::set1(v)}; }
  static LENET5_AI R load(const float* p) { return {H::load(p), H::load(p + 8)}; }
  static LENET5_AI void store(float* p, R v) { H::store(p, v.a); H::store(p + 8, v.b); }
  static LENET5_AI R loadn(const float* p, int n) {
    return {H::loadn(p, n < 8 ? n : 8), H::loadn(p + 8, n > 8 ? n - 8 : 0)};
  }
  static LENET5_AI void storen(float* p, int n, R v) {
    H::storen(p, n < 8 ? n : 8, v.a);
    H::storen(p + 8, n > 8 ? n - 8 : 0, v.b);
  }
#define LENET5_X2_BIN(name) \
  static LENET5_AI R name(R x, R y) { return {H::name(x.a, y.a), H::name(x.b, y.b)}; }
#define LENET5_X2_UN(name) \
  static LENET5_AI R name(R x) { return {H::name(x.a), H::name(x.b)}; }
  LENET5_X2_BIN(add) LENET5_X2_BIN(sub) LENET5_X2_BIN(mul)
  LENET5_X2_BIN(gt) LENET5_X2_BIN(eq) LENET5_X2_BIN(mor) LENET5_X2_BIN(mand) LENET5_X2_BIN(mandnot)
  LENET5_X2_BIN(maskz)
  LENET5_X2_UN(isnan)
#undef LENET5_X2_BIN
#undef LENET5_X2_UN
  static LENET5_AI R fmadd(R x, R y, R z) { return {H::fmadd(x.a, y.a, z.a), H::fmadd(x.b, y.b, z.b)}; }
  static LENET5_AI R select(M m, R y, R x) { return {H::select(m.a, y.a, x.a), H::select(m.b, y.b, x.b)}; }
  static LENET5_AI float hsum(R v) { return H::hsum(H::add(v.a, v.b)); }
  static LENET5_AI void deinterleave(R x, R y, R& even, R& odd) {
    H::deinterleave(x.a, x.b, even.a, odd.a);
    H::deinterleave(y.a, y.b, even.b, odd.b);
  }
  template <class F> static LENET5_AI R map(F f, R x) { return {f(x.a), f(x.b)}; }
  template <class F> static LENET5_AI R map2(F f, R x, R y) { return {f(x.a, y.a), f(x.b, y.b)}; }
  static LENET5_AI void interleave(R e, R o, R& lo, R& hi) {
    H::interleave(e.a, o.a, lo.a, lo.b);
    H::interleave(e.b, o.b, hi.a, hi.b);
  }
};

#elif LENET5_SIMD_ISA == 2

alignas(64) static const int32_t kAvx512Even[16] = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
alignas(64) static const int32_t kAvx512Odd[16] = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
alignas(64) static const int32_t kAvx512Lo[16] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23};
alignas(64) static const int32_t kAvx512Hi[16] = {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};

struct Avx512 {
  using R = __m512;
  using M = __mmask16;
  static constexpr int L = 16;
  static constexpr int kAcc = 24;
  static constexpr int kRegisters = 32, kRegsPerValue = 1;
  static LENET5_AI R zero() { return _mm512_setzero_ps(); }
  static LENET5_AI R set1(float a) { return _mm512_set1_ps(a); }
  static LENET5_AI R load(const float* p) { return _mm512_loadu_ps(p); }
  static LENET5_AI void store(float* p, R v) { _mm512_storeu_ps(p, v); }
  static LENET5_AI M tail(int n) { return static_cast<M>((1u << n) - 1u); }
  static LENET5_AI R loadn(const float* p, int n) { return _mm512_maskz_loadu_ps(tail(n), p); }
  static LENET5_AI void storen(float* p, int n, R v) { _mm512_mask_storeu_ps(p, tail(n), v); }
  static LENET5_AI R add(R a, R b) { return _mm512_add_ps(a, b); }
  static LENET5_AI R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static LENET5_AI R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static LENET5_AI R fmadd(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static LENET5_AI M gt(R a, R b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static LENET5_AI M eq(R a, R b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static LENET5_AI M isnan(R a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
  static LENET5_AI M mor(M a, M b) { return static_cast<M>(a | b); }
  static LENET5_AI M mand(M a, M b) { return static_cast<M>(a & b); }
  static LENET5_AI M mandnot(M a, M b) { return static_cast<M>(~a & b); }
  static LENET5_AI R select(M m, R b, R a) { return _mm512_mask_blend_ps(m, a, b); }
  static LENET5_AI R maskz(M m, R a) { return _mm512_maskz_mov_ps(m, a); }
  static LENET5_AI float hsum(R v) {
    const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v),
                                    _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static LENET5_AI __m512i idx(const int32_t* t) { return _mm512_loadu_si512(t); }
  static LENET5_AI void deinterleave(R a, R b, R& even, R& odd) {
    even = _mm512_permutex2var_ps(a, idx(kAvx512Even), b);
    odd = _mm512_permutex2var_ps(a, idx(kAvx512Odd), b);
  }
  template <class F> static LENET5_AI R map(F f, R a) { return f(a); }
  template <class F> static LENET5_AI R map2(F f, R a, R b) { return f(a, b); }
  static LENET5_AI void interleave(R e, R o, R& lo, R& hi) {
    lo = _mm512_permutex2var_ps(e, idx(kAvx512Lo), o);
    hi = _mm512_permutex2var_ps(e, idx(kAvx512Hi), o);
  }
};

#endif

// ---- shared helpers, generic in V ----

// The activation formulas of activations.h on a vector: act::forward / act::backward take any
// type with float operators, which Avx2::R and Avx512::R (__m256, __m512) are; V::map applies
// them to each register of a multi-register type (Avx2x2).
template <class V> LENET5_AI typename V::R v_act(typename V::R a, int act) {
  return V::map([act](auto r) { return act::forward(r, act); }, a);
}

// gy * f'(a) (or gy * f'(a)^2 for Gauss-Newton) from the output y.
template <class V> LENET5_AI typename V::R v_act_back(typename V::R gy, typename V::R y, int act, bool gn) {
  if (act == kIdentity) return gy;
  return V::map2([act, gn](auto g, auto yy) { return act::backward(g, yy, act, gn); }, gy, y);
}

// out[i] = act(in[i]) over n values (in may equal out).
template <class V> inline void v_act_array(const float* in, float* out, int64_t n, int act) {
  constexpr int L = V::L;
  int64_t i = 0;
  if (act == kScaledTanh) {  // four independent vectors per step: tanh is a long dependency chain
    for (; i + 4 * L <= n; i += 4 * L) {
      typename V::R v[4];
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) v[j] = v_act<V>(V::load(in + i + j * L), kScaledTanh);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) V::store(out + i + j * L, v[j]);
    }
  }
  for (; i + L <= n; i += L) V::store(out + i, v_act<V>(V::load(in + i), act));
  if (i < n) V::storen(out + i, int(n - i), v_act<V>(V::loadn(in + i, int(n - i)), act));
}

// ga[i] = gy[i] f'(y[i]) (squared for Gauss-Newton) over n values; y unused for identity.
template <class V> inline void v_act_back_array(const float* gy, const float* y, float* ga, int64_t n,
                                                int act, bool gn) {
  constexpr int L = V::L;
  if (act == kIdentity) {
    if (ga != gy) std::memcpy(ga, gy, sizeof(float) * n);
    return;
  }
  int64_t i = 0;
  for (; i + L <= n; i += L) V::store(ga + i, v_act_back<V>(V::load(gy + i), V::load(y + i), act, gn));
  if (i < n) {
    const int m = int(n - i);
    V::storen(ga + i, m, v_act_back<V>(V::loadn(gy + i, m), V::loadn(y + i, m), act, gn));
  }
}

// dst[i] = src[i]^2 over n values.
template <class V> inline void copy_square(const float* src, float* dst, int64_t n) {
  constexpr int L = V::L;
  int64_t i = 0;
  for (; i + L <= n; i += L) { const auto v = V::load(src + i); V::store(dst + i, V::mul(v, v)); }
  if (i < n) { const auto v = V::loadn(src + i, int(n - i)); V::storen(dst + i, int(n - i), V::mul(v, v)); }
}

// Copies n values, squared when gn.
template <class V> inline void copy_maybe_square(const float* src, float* dst, int64_t n, bool gn) {
  if (gn) copy_square<V>(src, dst, n);
  else std::memcpy(dst, src, sizeof(float) * n);
}

// Sum of n values.
template <class V> inline float v_sum(const float* x, int64_t n) {
  constexpr int L = V::L;
  typename V::R a = V::zero(), b = V::zero();
  int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    a = V::add(a, V::load(x + i));
    b = V::add(b, V::load(x + i + L));
  }
  for (; i < n; i += L) a = V::add(a, V::loadn(x + i, int(std::min<int64_t>(L, n - i))));
  return V::hsum(V::add(a, b));
}
