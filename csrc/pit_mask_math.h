// PIT mask formulas (docs/behaviour.md §5.1), written once for the CPU and the CUDA kernels.
//
// Every function computes ONE entry of a mask or of a mask-parameter gradient from the
// small parameter vectors, so the CPU code calls them in plain loops and the CUDA code
// calls them from one thread per entry. `A` is the accumulation type (float, or double
// for double inputs); `T` is the storage type of the parameters.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PLINIO_HD __host__ __device__ __forceinline__
#else
#define PLINIO_HD inline
#endif

namespace plinio {
namespace mask_math {

template <typename A>
PLINIO_HD A sign_of(A x) {
  return x > A(0) ? A(1) : (x < A(0) ? A(-1) : A(0));
}

template <typename A>
PLINIO_HD A binarize(A theta, A threshold) {
  return theta > threshold ? A(1) : A(0);
}

// θ_α[c] = |α_c|, with the last `keep_alive` channels forced to 1.
template <typename A, typename T>
PLINIO_HD A theta_alpha(const T* alpha, int64_t c, int64_t cout, int64_t keep_alive) {
  return c >= cout - keep_alive ? A(1) : (A(alpha[c]) < A(0) ? -A(alpha[c]) : A(alpha[c]));
}

// |p_i| with the last entry (index n-1) forced to 1.
template <typename A, typename T>
PLINIO_HD A abs_keep_last(const T* p, int64_t i, int64_t n) {
  return i == n - 1 ? A(1) : (A(p[i]) < A(0) ? -A(p[i]) : A(p[i]));
}

// θ_β[j] = Σ_{i ≤ j} β̂_i (tap 0 is the oldest, tap K-1 the newest).
template <typename A, typename T>
PLINIO_HD A theta_beta(const T* beta, int64_t j, int64_t k) {
  A s = A(0);
  for (int64_t i = 0; i <= j; ++i) s += abs_keep_last<A>(beta, i, k);
  return s;
}

// min(v(K-1-j), L-1): v is the 2-adic valuation of the distance from the newest tap,
// v(0) = infinity.
PLINIO_HD int64_t gamma_level(int64_t j, int64_t k, int64_t levels) {
  int64_t d = k - 1 - j;
  int64_t v = 0;
  if (d == 0) return levels - 1;
  while ((d & 1) == 0 && v < levels - 1) {
    d >>= 1;
    ++v;
  }
  return v;
}

// θ_γ[j] = Σ_{p ≤ gamma_level(j)} γ̂_p.
template <typename A, typename T>
PLINIO_HD A theta_gamma(const T* gamma, int64_t j, int64_t k, int64_t levels) {
  const int64_t top = gamma_level(j, k, levels);
  A s = A(0);
  for (int64_t p = 0; p <= top; ++p) s += abs_keep_last<A>(gamma, p, levels);
  return s;
}

// Channel-parameter gradient from the gradient of the (straight-through) channel mask.
template <typename A, typename T>
PLINIO_HD A grad_alpha(const T* alpha, A grad_mask, int64_t c, int64_t cout, int64_t keep_alive) {
  return c >= cout - keep_alive ? A(0) : sign_of(A(alpha[c])) * grad_mask;
}

// β_j gradient: sign(β_j) Σ_{i ≥ j} g_β[i] (the cumulative sum transposed); 0 for the
// forced last entry. `g_beta` holds the gradient w.r.t. the binarized receptive-field mask.
template <typename A, typename T>
PLINIO_HD A grad_beta(const T* beta, const A* g_beta, int64_t j, int64_t k) {
  if (j == k - 1) return A(0);
  A s = A(0);
  for (int64_t i = j; i < k; ++i) s += g_beta[i];
  return sign_of(A(beta[j])) * s;
}

// γ_p gradient: sign(γ_p) Σ_{taps j with gamma_level(j) ≥ p} g_γ[j]; 0 for the forced
// last entry.
template <typename A, typename T>
PLINIO_HD A grad_gamma(const T* gamma, const A* g_gamma, int64_t p, int64_t k, int64_t levels) {
  if (p == levels - 1) return A(0);
  A s = A(0);
  for (int64_t j = 0; j < k; ++j) {
    if (gamma_level(j, k, levels) >= p) s += g_gamma[j];
  }
  return sign_of(A(gamma[p])) * s;
}

}  // namespace mask_math
}  // namespace plinio
