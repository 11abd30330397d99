// simd_vec.h — the vector types the SIMD sections are written against, and shared helpers
// (fast tanh, activations, horizontal sums). Included by simd_pass.h inside a target region
// and an ISA namespace, once per ISA (no include guard on purpose).
//
// A vector type V provides: R (register), M (lane mask), L (lanes), kAcc (how many R a
// micro-kernel may keep as accumulators without spilling), and static always-inline
// primitives: zero set1 load store loadn storen (first n lanes; masked, never touching memory
// past them) add sub mul div min max fmadd(a,b,c)=a*b+c fnmadd(a,b,c)=c-a*b abs round pow2i
// xor_ and_ gt eq isnan mor mand mandnot select(m,b,a)=m?b:a maskz(m,a)=m?a:0 hsum
// deinterleave(a,b -> even,odd) interleave(e,o -> lo,hi).
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
  static LENET5_AI R div(R a, R b) { return _mm256_div_ps(a, b); }
  static LENET5_AI R rcp(R a) { return _mm256_rcp_ps(a); }  // ~12 bits
  static LENET5_AI R min(R a, R b) { return _mm256_min_ps(a, b); }  // b if either is NaN
  static LENET5_AI R max(R a, R b) { return _mm256_max_ps(a, b); }  // b if either is NaN
  static LENET5_AI R fmadd(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static LENET5_AI R fnmadd(R a, R b, R c) { return _mm256_fnmadd_ps(a, b, c); }
  static LENET5_AI R abs(R a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static LENET5_AI R round(R a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static LENET5_AI R pow2i(R k) {  // 2^k for integral k in [-126, 127]
    const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
  static LENET5_AI R pow2_bits(R kb) {  // 2^k from kb = k + 1.5 * 2^23 (k integral, |k| < 2^22)
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_castps_si256(kb), _mm256_set1_epi32(127 - 0x4B400000)), 23));
  }
  static LENET5_AI R xor_(R a, R b) { return _mm256_xor_ps(a, b); }
  static LENET5_AI R and_(R a, R b) { return _mm256_and_ps(a, b); }
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
  LENET5_X2_BIN(add) LENET5_X2_BIN(sub) LENET5_X2_BIN(mul) LENET5_X2_BIN(div)
  LENET5_X2_BIN(min) LENET5_X2_BIN(max) LENET5_X2_BIN(xor_) LENET5_X2_BIN(and_)
  LENET5_X2_BIN(gt) LENET5_X2_BIN(eq) LENET5_X2_BIN(mor) LENET5_X2_BIN(mand) LENET5_X2_BIN(mandnot)
  LENET5_X2_BIN(maskz)
  LENET5_X2_UN(abs) LENET5_X2_UN(rcp) LENET5_X2_UN(round) LENET5_X2_UN(pow2i) LENET5_X2_UN(pow2_bits) LENET5_X2_UN(isnan)
#undef LENET5_X2_BIN
#undef LENET5_X2_UN
  static LENET5_AI R fmadd(R x, R y, R z) { return {H::fmadd(x.a, y.a, z.a), H::fmadd(x.b, y.b, z.b)}; }
  static LENET5_AI R fnmadd(R x, R y, R z) { return {H::fnmadd(x.a, y.a, z.a), H::fnmadd(x.b, y.b, z.b)}; }
  static LENET5_AI R select(M m, R y, R x) { return {H::select(m.a, y.a, x.a), H::select(m.b, y.b, x.b)}; }
  static LENET5_AI float hsum(R v) { return H::hsum(H::add(v.a, v.b)); }
  static LENET5_AI void deinterleave(R x, R y, R& even, R& odd) {
    H::deinterleave(x.a, x.b, even.a, odd.a);
    H::deinterleave(y.a, y.b, even.b, odd.b);
  }
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
  static LENET5_AI R div(R a, R b) { return _mm512_div_ps(a, b); }
  static LENET5_AI R rcp(R a) { return _mm512_rcp14_ps(a); }  // ~14 bits
  static LENET5_AI R min(R a, R b) { return _mm512_min_ps(a, b); }
  static LENET5_AI R max(R a, R b) { return _mm512_max_ps(a, b); }
  static LENET5_AI R fmadd(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static LENET5_AI R fnmadd(R a, R b, R c) { return _mm512_fnmadd_ps(a, b, c); }
  static LENET5_AI R abs(R a) { return _mm512_andnot_ps(_mm512_set1_ps(-0.0f), a); }
  static LENET5_AI R round(R a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static LENET5_AI R pow2i(R k) {
    const __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(k), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
  }
  static LENET5_AI R pow2_bits(R kb) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_castps_si512(kb), _mm512_set1_epi32(127 - 0x4B400000)), 23));
  }
  static LENET5_AI R xor_(R a, R b) { return _mm512_xor_ps(a, b); }
  static LENET5_AI R and_(R a, R b) { return _mm512_and_ps(a, b); }
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
  static LENET5_AI void interleave(R e, R o, R& lo, R& hi) {
    lo = _mm512_permutex2var_ps(e, idx(kAvx512Lo), o);
    hi = _mm512_permutex2var_ps(e, idx(kAvx512Hi), o);
  }
};

#endif

// ---- shared helpers, generic in V ----

// tanh(x) in float32, from expm1: t = min(|x|, 9.1), e = expm1(-2t) (range reduction
// -2t = k ln2 + r, |r| <= ln2/2, k rounded with the 1.5*2^23 trick (no round/convert), Cody-Waite split of ln2, degree-7 Taylor polynomial whose
// truncation error is < 2e-8 relative, then 2^k p + (2^k - 1)), tanh(t) = -e / (2 + e)
// with a true division, sign restored by xor. No cancellation near 0 (expm1 is used, not
// exp), so the error is relative everywhere: measured max 2.4e-7 (about 4 ulp) against
// float64 tanh over [-20, 20] plus tiny and huge arguments; tests/test_simd.py asserts
// <= 1e-6. tanh(NaN) = NaN, tanh(+-inf) = +-1, |x| >= 9.1 gives exactly +-1 (as float
// rounding of tanh does).
template <class V> LENET5_AI typename V::R v_tanh(typename V::R x) {
  using R = typename V::R;
  const R t = V::min(V::set1(9.1f), V::abs(x));  // NaN stays NaN (min returns its 2nd arg)
  const R z = V::mul(t, V::set1(-2.0f));
  // k = round(z / ln2) by the 1.5 * 2^23 trick: kb's low mantissa bits hold k as an integer.
  const R kb = V::fmadd(z, V::set1(1.44269504088896341f), V::set1(12582912.0f));
  const R k = V::sub(kb, V::set1(12582912.0f));
  R r = V::fnmadd(k, V::set1(0.693145751953125f), z);  // exact: ln2 hi has 16 bits, |k| <= 27
  r = V::fnmadd(k, V::set1(1.428606765330187045e-06f), r);
  R q = V::set1(1.0f / 5040.0f);
  q = V::fmadd(q, r, V::set1(1.0f / 720.0f));
  q = V::fmadd(q, r, V::set1(1.0f / 120.0f));
  q = V::fmadd(q, r, V::set1(1.0f / 24.0f));
  q = V::fmadd(q, r, V::set1(1.0f / 6.0f));
  q = V::fmadd(q, r, V::set1(0.5f));
  const R p = V::fmadd(V::mul(r, r), q, r);  // expm1(r)
  const R s = V::pow2_bits(kb);  // 2^k
  const R e = V::fmadd(s, p, V::sub(s, V::set1(1.0f)));  // expm1(-2t), in (-1, 0]
  const R th = V::div(V::sub(V::zero(), e), V::add(e, V::set1(2.0f)));
  return V::xor_(th, V::and_(x, V::set1(-0.0f)));
}

// The fused activation of an op's output (lenet5.h): scaled tanh, ReLU or identity.
template <class V> LENET5_AI typename V::R v_act(typename V::R a, int act) {
  if (act == kScaledTanh)
    return V::mul(V::set1(float(kTanhA)), v_tanh<V>(V::mul(a, V::set1(float(kTanhS)))));
  if (act == kRelu) return V::max(V::zero(), a);  // max returns its 2nd operand on NaN: NaN stays NaN, like torch.relu
  return a;
}

// gy * f'(a) (or gy * f'(a)^2 for Gauss-Newton) from the output y.
template <class V> LENET5_AI typename V::R v_act_back(typename V::R gy, typename V::R y, int act, bool gn) {
  using R = typename V::R;
  R d;
  if (act == kScaledTanh)
    d = V::mul(V::set1(float(kTanhS)),
               V::fnmadd(V::mul(y, y), V::set1(float(1.0 / kTanhA)), V::set1(float(kTanhA))));
  else if (act == kRelu)  // 1 where y > 0 or y is NaN (like the portable y <= 0 ? 0 : 1)
    d = V::maskz(V::mor(V::gt(y, V::zero()), V::isnan(y)), V::set1(1.0f));
  else
    return gy;
  return V::mul(gy, gn ? V::mul(d, d) : d);
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
