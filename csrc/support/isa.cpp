// isa.cpp — the one run-time choice of CPU kernel family, for every float32 kernel: the per-op
// SIMD sections (simd.h's LENET5_SIMD_CALL) and both fused engines (vec.h's
// LENET5_ENGINE_PICK) alike.
//
// simd_supported(): what the CPU and OS offer (GCC/Clang's __builtin_cpu_supports checks CPUID
// and, for AVX and AVX-512, that the OS saves the YMM/ZMM state). simd_level(): what the
// kernels use now, after set_simd_level's cap. set_wide_emulation(true) makes level 1 run the
// 16-lane (AVX-512) code on pairs of AVX2 registers, so its logic is tested on any AVX2 machine.
#include <algorithm>
#include <atomic>

#include "support/simd.h"

namespace lenet5 {
namespace cpu {

namespace {
std::atomic<int> g_forced_level{-1};
std::atomic<bool> g_wide_emulation{false};
int detect_level() {
#if LENET5_X86_SIMD
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
  return 0;
}
}  // namespace

int simd_supported() {
  static const int best = detect_level();
  return best;
}
int simd_level() {
  const int forced = g_forced_level.load(std::memory_order_relaxed);
  return forced < 0 ? simd_supported() : std::min(simd_supported(), forced);
}
void set_simd_level(int level) { g_forced_level.store(level < 0 ? -1 : level, std::memory_order_relaxed); }
void set_wide_emulation(bool on) { g_wide_emulation.store(on, std::memory_order_relaxed); }
Isa current_isa() {
  switch (simd_level()) {
    case 2: return Isa::kAvx512;
    case 1: return g_wide_emulation.load(std::memory_order_relaxed) ? Isa::kAvx2Wide : Isa::kAvx2;
    default: return Isa::kPortable;
  }
}
const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx2Wide: return "avx2-wide16";
    default: return "portable";
  }
}

}  // namespace cpu
}  // namespace lenet5
