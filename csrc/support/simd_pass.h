// simd_pass.h — compiles the SIMD section of the file named by LENET5_SIMD_SELF once per ISA.
// Included once per layer file, at namespace scope, after the portable code (see simd.h).
// No include guard on purpose; it must not be included from a header.
#include "support/simd.h"

#if LENET5_X86_SIMD

// ---- AVX2 + FMA: 8-lane Avx2 and the 16-lane test type Avx2x2 ----
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
namespace lenet5 {
namespace cpu {
namespace isa_avx2 {
#define LENET5_SIMD_ISA 1
#include "support/simd_vec.h"
#include LENET5_SIMD_SELF
#undef LENET5_SIMD_ISA
}  // namespace isa_avx2
}  // namespace cpu
}  // namespace lenet5
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

// ---- AVX-512 (F, BW, VL, DQ) + FMA: 16-lane Avx512 ----
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")
#endif
namespace lenet5 {
namespace cpu {
namespace isa_avx512 {
#define LENET5_SIMD_ISA 2
#include "support/simd_vec.h"
#include LENET5_SIMD_SELF
#undef LENET5_SIMD_ISA
}  // namespace isa_avx512
}  // namespace cpu
}  // namespace lenet5
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // LENET5_X86_SIMD
