// loss.h — the training criteria the fused engines compute at the end of their forward, and
// their gradient with respect to the network's outputs, which their backward starts from.
//
// One sample's outputs y[n] and class c. Computed in double: every exponential is exp(t - m)
// with m the largest exponent, so nothing overflows, and a term below e^-60 of the largest
// counts as exactly 0 (it is 1e-26 of the sum: invisible in a float32 loss or gradient), so RBF
// distances in the hundreds leave no denormal anywhere (the float32 aten chain makes
// exp(-300 + ...) a denormal or zero on the way).
#pragma once
#include <cmath>

namespace lenet5 {
namespace cpu {

struct LossOut {
  double loss;
  bool error;  // the outputs' best class is not c (first best on ties)
};

namespace loss_detail {
constexpr double kNegligible = -60.0;  // exponents below this, relative to the largest, count as 0
inline double exp_term(double t) { return t < kNegligible ? 0.0 : std::exp(t); }
}  // namespace loss_detail

// The MAP criterion (LeCun et al. 1998, eq. 9) at RBF distances y (smaller is better):
// E = y_c + log(e^-j + sum_i e^-y_i). g[i] = scale * dE/dy_i = scale (delta_ic - q_i), with
// q_i = e^-y_i / (e^-j + sum_k e^-y_k); with gauss_newton, g[i] = q_i (1 - q_i) instead (SDLM's
// second derivative at the outputs).
inline LossOut map_loss(const float* y, int n, int c, double j, double scale, bool gauss_newton, float* g) {
  using loss_detail::exp_term;
  double m = -j;
  int best = 0;
  for (int i = 0; i < n; ++i) {
    m = std::fmax(m, -static_cast<double>(y[i]));
    if (y[i] < y[best]) best = i;
  }
  double z = exp_term(-j - m);
  for (int i = 0; i < n; ++i) z += exp_term(-static_cast<double>(y[i]) - m);
  for (int i = 0; i < n; ++i) {
    const double q = exp_term(-static_cast<double>(y[i]) - m) / z;
    g[i] = static_cast<float>(gauss_newton ? q * (1.0 - q) : scale * ((i == c ? 1.0 : 0.0) - q));
  }
  return {static_cast<double>(y[c]) + m + std::log(z), best != c};
}

// Cross-entropy at logits z (larger is better): E = log sum_i e^z_i - z_c;
// g[i] = scale * dE/dz_i = scale (softmax_i - delta_ic).
inline LossOut cross_entropy(const float* z, int n, int c, double scale, float* g) {
  using loss_detail::exp_term;
  double m = -INFINITY;
  int best = 0;
  for (int i = 0; i < n; ++i) {
    m = std::fmax(m, static_cast<double>(z[i]));
    if (z[i] > z[best]) best = i;
  }
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += exp_term(static_cast<double>(z[i]) - m);
  for (int i = 0; i < n; ++i)
    g[i] = static_cast<float>(scale * (exp_term(static_cast<double>(z[i]) - m) / sum - (i == c ? 1.0 : 0.0)));
  return {m + std::log(sum) - static_cast<double>(z[c]), best != c};
}

}  // namespace cpu
}  // namespace lenet5
