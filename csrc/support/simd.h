// simd.h — run-time choice of the float32 kernel family, and the machinery that compiles each
// layer's SIMD section once per instruction set without any -march flag.
//
// How a per-op layer file in csrc/cpu/ is laid out (e.g. sparse_conv5x5.cpp):
//   #ifndef LENET5_SIMD_ISA      portable code (float and double), then
//     #define LENET5_SIMD_SELF "cpu/<file>.cpp" and #include "support/simd_pass.h", which includes
//     the same file again inside `#pragma GCC target("avx2,fma")` (namespace isa_avx2) and
//     inside `#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")` (namespace
//     isa_avx512), with LENET5_SIMD_ISA set; then the dispatch, which calls
//     isa_avx2::kernel<Avx2> / isa_avx512::kernel<Avx512> for float by current_isa().
//   #else                         the SIMD section: kernels templated on a vector type V
//     (simd_vec.h: Avx2, Avx2x2, Avx512), written once.
// Every function of the SIMD section thus carries __attribute__((target(...))) through the
// pragma, intrinsics inline into it, and the binary runs on any x86-64: a family is only
// called when the CPU (and OS) support it. Non-x86 builds compile the portable code only.
#pragma once
#include <cstdint>
#include <type_traits>
#include <vector>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define LENET5_X86_SIMD 1
#include <immintrin.h>
#else
#define LENET5_X86_SIMD 0
#endif

namespace lenet5 {
namespace cpu {

// The kernel family float32 calls take.
//  kPortable: the plain C++ loops (also every float64 call).
//  kAvx2:     8-lane AVX2+FMA kernels.
//  kAvx512:   16-lane AVX-512 kernels.
//  kAvx2Wide: the 16-lane kernels (the very code the AVX-512 family runs) on pairs of AVX2
//             registers: a test mode, so the 16-lane tiling, tails and masks are exercised on
//             machines without AVX-512. Only set_wide_emulation(true) selects it.
enum class Isa : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2, kAvx2Wide = 3 };

// The one selector (isa.cpp), read by every float32 kernel: per-op SIMD sections and fused engine.
Isa current_isa();           // what float32 kernels use now (honours set_simd_level)
int simd_supported();        // the best level this CPU and OS support: 0, 1 or 2
int simd_level();            // the level in use: simd_supported(), capped by set_simd_level
void set_simd_level(int level);  // cap the level (tests, comparisons); -1 restores the best
const char* isa_name(Isa);   // "portable", "avx2", "avx512", "avx2-wide16"
void set_wide_emulation(bool on);  // tests only: kAvx2Wide instead of kAvx2 while the level is 1
// Benchmarks only: FLOPs done by `iters` rounds of `accumulators` independent vector FMA chains
// (0: the level's default) on each of nthreads threads, at the current level (0 at level 0).
double fma_probe(int64_t iters, int nthreads, int accumulators = 0);
// The chain counts fma_probe takes at the current level.
std::vector<int> fma_probe_counts();

}  // namespace cpu
}  // namespace lenet5

// Runs KERNEL<V>(args...) for the current family and evaluates to true, or evaluates to false
// when the portable code must run. Used in each layer file's dispatch:
//   if constexpr (std::is_same<T, float>::value)
//     if (LENET5_SIMD_CALL(kernel_simd, args...)) return;
//   portable_kernel(args...);
#if LENET5_X86_SIMD
#define LENET5_SIMD_CALL(KERNEL, ...)                                                  \
  ([&]() -> bool {                                                                     \
    switch (::lenet5::cpu::current_isa()) {                                            \
      case ::lenet5::cpu::Isa::kAvx512:                                                \
        isa_avx512::KERNEL<isa_avx512::Avx512>(__VA_ARGS__);                           \
        return true;                                                                   \
      case ::lenet5::cpu::Isa::kAvx2Wide:                                              \
        isa_avx2::KERNEL<isa_avx2::Avx2x2>(__VA_ARGS__);                               \
        return true;                                                                   \
      case ::lenet5::cpu::Isa::kAvx2:                                                  \
        isa_avx2::KERNEL<isa_avx2::Avx2>(__VA_ARGS__);                                 \
        return true;                                                                   \
      default:                                                                         \
        return false;                                                                  \
    }                                                                                  \
  }())
#else
#define LENET5_SIMD_CALL(KERNEL, ...) false
#endif
