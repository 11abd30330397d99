// portable.h — the per-op kernels' portable (float and double) array helpers: the activations
// of activations.h over arrays, and the squared copies of the Gauss-Newton passes. The SIMD
// sections' counterparts are in support/simd_vec.h (v_act_array, v_act_back_array, copy_square).
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "lenet5.h"

namespace lenet5 {
namespace cpu {

// y[i] = act(y[i]) over n values.
template <class T> inline void act_forward_inplace(T* y, int64_t n, int act) {
  if (act == kIdentity) return;
  for (int64_t i = 0; i < n; ++i) y[i] = act::forward(y[i], act);
}
// ga = gy * f'(a), or gy * f'(a)^2 for the Gauss-Newton pass. y may be null when act is identity.
template <class T> inline void act_backward(const T* gy, const T* y, T* ga, int64_t n, int act, bool gn) {
  if (act == kIdentity) { std::memcpy(ga, gy, sizeof(T) * n); return; }
  for (int64_t i = 0; i < n; ++i) ga[i] = act::backward(gy[i], y[i], act, gn);
}
// out[i] = in[i]^2 when gn, else a plain copy: Gauss-Newton passes use squared weights/inputs.
template <class T> inline const T* maybe_square(const T* in, int64_t n, bool gn, std::vector<T>& buf) {
  if (!gn) return in;
  buf.resize(n);
  for (int64_t i = 0; i < n; ++i) buf[i] = in[i] * in[i];
  return buf.data();
}

}  // namespace cpu
}  // namespace lenet5
