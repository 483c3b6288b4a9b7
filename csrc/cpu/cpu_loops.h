// The weight- and activation-sized loops of the CPU kernels, compiled once per instruction
// set and picked at run time (the scheme of ATen's CPU_CAPABILITY, with one source file per
// instruction set instead of per-file compiler flags).
//
// The wheel must run on any x86-64 CPU, so the extension is built for the baseline ISA
// (SSE2); cpu_loops_impl.h is compiled a second time with AVX2+FMA enabled (loops_avx2.cpp)
// and that copy is used when the CPU supports it. `PLINIO_CPU_ISA=base` in the environment
// forces the baseline copy (read once per process, at the first kernel call or
// `plinio._C.cpu_isa()`).
//
// Every loop takes raw pointers to dense operands that share one layout (the drivers in
// ops_driver.h align them); T is the storage type, A = at::opmath_type<T> the type
// accumulated in.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

// An AVX2 copy is built with GCC or Clang on x86-64.
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define PLINIO_CPU_HAS_AVX2_COPY 1
#else
#define PLINIO_CPU_HAS_AVX2_COPY 0
#endif

namespace plinio {
namespace cpu {

constexpr int64_t kTile = 1024;        // elements accumulated in registers/L1 at a time
constexpr int64_t kChunk = 64 * 1024;  // elements per parallel task of the combine loops

inline int64_t combine_chunks(int64_t n) { return (n + kChunk - 1) / kChunk; }

template <typename T>
struct Loops {
  using A = at::opmath_type<T>;
  // out = Σ_i theta[i] * r_i(xs[i]) over n elements, r_i = ReLU where relu[i] (relu may be
  // nullptr: no ReLU)
  void (*combine_forward)(const T* const* xs, const char* relu, int64_t nb, const A* theta, T* out,
                          int64_t n);
  // grads[i] = theta[i] * r_i'(xs[i]) * grad where grads[i] != nullptr; when
  // partial != nullptr, partial[c * nb + i] = <grad, r_i(xs[i])> over chunk c
  // (combine_chunks(n) chunks). xs[i] may be nullptr where neither needs it.
  void (*combine_backward)(const T* grad, const T* const* xs, const char* relu, int64_t nb,
                           const A* theta, T* const* grads, A* partial, int64_t n);
  // out[c, j] = rows[c, j] * c_mask[c] * pattern[j] over cout rows of row_len elements;
  // c_mask may be nullptr (all ones), pattern (the time mask repeated along a row) too
  void (*apply_masks)(const T* rows, int64_t cout, int64_t row_len, const A* c_mask,
                      const A* pattern, T* out);
  // grad_out = apply_masks(grad) when grad_out != nullptr; when partial != nullptr,
  // partial[c, k] = Σ_r grad[c, r, k] * weight[c, r, k] (k < taps)
  void (*reduce_masks)(const T* grad, const T* weight, int64_t cout, int64_t row_len, int64_t taps,
                       const A* c_mask, const A* pattern, T* grad_out, A* partial);
};

// One table per instruction set (defined in loops_base.cpp and loops_avx2.cpp).
template <typename T>
Loops<T> base_loops();
#if PLINIO_CPU_HAS_AVX2_COPY
template <typename T>
Loops<T> avx2_loops();
#endif

// Whether the AVX2 copy runs here: built, supported by this CPU, not disabled.
bool use_avx2();

template <typename T>
const Loops<T>& loops() {
#if PLINIO_CPU_HAS_AVX2_COPY
  static const Loops<T> table = use_avx2() ? avx2_loops<T>() : base_loops<T>();
#else
  static const Loops<T> table = base_loops<T>();
#endif
  return table;
}

}  // namespace cpu
}  // namespace plinio
