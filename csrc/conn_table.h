// conn_table.h — a connection table (C3's Table I, or the full table of a dense convolution)
// and its one resolver: the check and the inversion every CPU kernel that walks a table uses
// (the per-op sparse convolution, both fused engines).
//
// Layout: CSR. Output map o sums kernels k in [offsets[o], offsets[o+1]); kernel k reads input
// map inputs[k]. The inverse: kernel k feeds output out_of[k]; input map c is read by the
// kernels by_input[by_input_begin[c] .. by_input_begin[c+1]), in increasing k (the order every
// input-gradient sum walks, so it is fixed). The full table of O maps over C inputs lists
// kernel k = o C + c, which is the layout of a dense [O, C, 5, 5] weight.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

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

}  // namespace lenet5
