// parallel.h — the CPU kernels' threading: per-op kernels and fused engines alike.
//
// parallel_tasks runs tasks on a small persistent pool (parallel.cpp: no thread start-up per
// call; a single task runs inline), parallel_range cuts a range into one task per thread, and
// reusable_scratch gives each thread buffers that live between calls. Weight gradients are
// reduced over the batch by batch_slices through kReduceSlots fixed slices of the batch: slice
// s always holds the same images whatever the thread count, each slice sums its images in
// order, and the slices are summed in order. So gradients are bitwise identical for any nthreads.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#include "lenet5.h"

namespace lenet5 {
namespace cpu {

// Calls task(i) for i in [0, ntasks) on up to nthreads threads (the caller is one of them).
void parallel_tasks(int64_t ntasks, int nthreads, const std::function<void(int64_t)>& task);

constexpr int64_t kReduceSlots = 16;

// First image of slice s when N images are cut into nslots slices.
inline int64_t slice_begin(int64_t N, int64_t nslots, int64_t s) { return N * s / nslots; }

// Per calling thread, a buffer of at least n values that lives on between calls: scratch that
// costs no allocation (and no page faults) once it has grown to a call's size, 64-byte aligned.
// Each Use is a buffer of its own, so a caller's result buffer never aliases batch_slices' slots.
enum class ScratchUse : int { kReduceSlots, kReduceResult, kEngineWork, kEngineRows };
template <class T, ScratchUse Use = ScratchUse::kReduceSlots> T* reusable_scratch(int64_t n) {
  constexpr int64_t kPad = 64 / sizeof(T);
  thread_local std::vector<T> buf;
  if (static_cast<int64_t>(buf.size()) < n + kPad) buf.resize(static_cast<size_t>(n + kPad));
  const uintptr_t a = reinterpret_cast<uintptr_t>(buf.data());
  return buf.data() + ((64 - a % 64) % 64) / sizeof(T);
}

// Runs body(begin, end) over the batch in fixed slices, in parallel. If acc_size > 0, each
// slice gets its own zeroed accumulator of acc_size values, and the slices' accumulators are
// summed in slice order into out[0:acc_size]. body(begin, end, acc) sees its slice's accumulator.
// (Slice 0 accumulates in out itself, the others in reusable scratch: the sum is the same.)
// Each slice's accumulator is zeroed by the thread that fills it (in parallel, into its cache),
// and the final sum runs over ranges of the accumulator in parallel, each value still summed
// in slice order: nothing of the reduction is serial.
// min_per_slot > 1 gives each slice at least that many images (fewer slices for small N), where
// one image's work is small next to adding up an accumulator.
template <class T, class Body>
void batch_slices(int64_t N, int64_t acc_size, T* out, int nthreads, Body&& body, int64_t min_per_slot = 1) {
  const int64_t nslots = std::max<int64_t>(1, std::min<int64_t>(N / std::max<int64_t>(1, min_per_slot), kReduceSlots));
  T* rest = acc_size > 0 && nslots > 1 ? reusable_scratch<T>((nslots - 1) * acc_size) : nullptr;
  parallel_tasks(nslots, nthreads, [&](int64_t s) {
    T* acc = acc_size > 0 ? (s == 0 ? out : rest + (s - 1) * acc_size) : nullptr;
    if (acc) std::fill(acc, acc + acc_size, T(0));
    body(slice_begin(N, nslots, s), slice_begin(N, nslots, s + 1), acc);
  });
  if (rest) {
    constexpr int64_t kChunk = 4096;  // values per task: a few microseconds of adds
    parallel_tasks((acc_size + kChunk - 1) / kChunk, nthreads, [&](int64_t c) {
      const int64_t b = c * kChunk, e = std::min(acc_size, b + kChunk);
      for (int64_t s = 1; s < nslots; ++s) {
        const T* a = rest + (s - 1) * acc_size;
        for (int64_t i = b; i < e; ++i) out[i] += a[i];
      }
    });
  }
}

// Splits [0, n) into about-equal contiguous ranges, one task each, for element-wise work.
template <class Body>
void parallel_range(int64_t n, int64_t grain, int nthreads, Body&& body) {
  const int64_t ntasks = std::max<int64_t>(1, std::min<int64_t>(nthreads, (n + grain - 1) / grain));
  parallel_tasks(ntasks, nthreads, [&](int64_t t) { body(n * t / ntasks, n * (t + 1) / ntasks); });
}

}  // namespace cpu
}  // namespace lenet5
