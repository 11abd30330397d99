// conn_table.h — a connection table (C3's Table I, or the full table of a dense convolution)
// and its one resolver: the check and the inversion every CPU kernel that walks a table uses
// (the per-op sparse convolution, both fused engines through resolve_c3 below).
//
// Layout: CSR. Output map o sums kernels k in [offsets[o], offsets[o+1]); kernel k reads input
// map inputs[k]. The inverse: kernel k feeds output out_of[k]; input map c is read by the
// kernels by_input[by_input_begin[c] .. by_input_begin[c+1]), in increasing k (the order every
// input-gradient sum walks, so it is fixed). The full table of O maps over C inputs lists
// kernel k = o C + c, which is the layout of a dense [O, C, 5, 5] weight.
#pragma once
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "network.h"

namespace lenet5 {

struct ConnTable {
  const int32_t* offsets;  // [O + 1], rising from 0 to K
  const int32_t* inputs;   // [K], each in [0, C)
};

// Checks a table of O output maps over C input maps with 1..max_kernels kernels and returns K.
// Throws std::invalid_argument("<who>: ...") naming what is wrong.
inline int64_t check_table(ConnTable t, int64_t O, int64_t C, int64_t max_kernels, const std::string& who) {
  if (!t.offsets || !t.inputs) throw std::invalid_argument(who + ": missing C3 table");
  if (t.offsets[0] != 0) throw std::invalid_argument(who + ": C3 table offsets must start at 0");
  for (int64_t o = 0; o < O; ++o)
    if (t.offsets[o + 1] < t.offsets[o] || t.offsets[o + 1] > max_kernels)
      throw std::invalid_argument(who + ": C3 table offsets must rise within [0, " + std::to_string(max_kernels) + "]");
  const int64_t K = t.offsets[O];
  if (K < 1) throw std::invalid_argument(who + ": C3 table has no kernels");
  for (int64_t k = 0; k < K; ++k)
    if (t.inputs[k] < 0 || t.inputs[k] >= C)
      throw std::invalid_argument(who + ": C3 table input " + std::to_string(t.inputs[k]) + " outside [0, " +
                                  std::to_string(C) + ")");
  return K;
}

// The inverse views of a checked table (out_of[K], by_input_begin[C + 1], by_input[K]).
inline void invert_table(ConnTable t, int64_t O, int64_t C, int32_t* out_of, int32_t* by_input_begin,
                         int32_t* by_input) {
  const int64_t K = t.offsets[O];
  for (int64_t o = 0; o < O; ++o)
    for (int64_t k = t.offsets[o]; k < t.offsets[o + 1]; ++k) out_of[k] = static_cast<int32_t>(o);
  for (int64_t c = 0; c <= C; ++c) by_input_begin[c] = 0;
  for (int64_t k = 0; k < K; ++k) ++by_input_begin[t.inputs[k] + 1];
  for (int64_t c = 0; c < C; ++c) by_input_begin[c + 1] += by_input_begin[c];
  for (int64_t k = 0; k < K; ++k) by_input[by_input_begin[t.inputs[k]]++] = static_cast<int32_t>(k);
  for (int64_t c = C; c > 0; --c) by_input_begin[c] = by_input_begin[c - 1];  // undo the fill's advance
  by_input_begin[0] = 0;
}

// The full table of O output maps over C inputs: kernel k = o C + c reads input c.
inline void full_table(int64_t O, int64_t C, int32_t* offsets, int32_t* inputs) {
  for (int64_t o = 0; o <= O; ++o) offsets[o] = static_cast<int32_t>(o * C);
  for (int64_t k = 0; k < O * C; ++k) inputs[k] = static_cast<int32_t>(k % C);
}

// C3's table in the forms the fused engines walk, for a network of the fixed geometry
// (network.h): the classic variant's table, checked, or the modern variant's full table (kernel
// k = 6 o + c, so its [16, 6, 5, 5] weight is the table's [96, 5, 5]).
struct C3Index {
  int K;
  int32_t offsets[geometry::kC3Maps + 1], inputs[geometry::kC3MaxKernels], out_of[geometry::kC3MaxKernels];
  int32_t by_input_begin[geometry::kC1Maps + 1], by_input[geometry::kC3MaxKernels];
};
inline C3Index resolve_c3(Variant variant, ConnTable table, const std::string& who) {
  using namespace geometry;
  C3Index t;
  if (variant == Variant::kClassic) {
    t.K = static_cast<int>(check_table(table, kC3Maps, kC1Maps, kC3MaxKernels, who));
    std::copy(table.offsets, table.offsets + kC3Maps + 1, t.offsets);
    std::copy(table.inputs, table.inputs + t.K, t.inputs);
  } else {
    t.K = kC3MaxKernels;
    full_table(kC3Maps, kC1Maps, t.offsets, t.inputs);
  }
  invert_table(ConnTable{t.offsets, t.inputs}, kC3Maps, kC1Maps, t.out_of, t.by_input_begin, t.by_input);
  return t;
}

}  // namespace lenet5
