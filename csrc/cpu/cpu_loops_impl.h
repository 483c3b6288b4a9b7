// The CPU loops of cpu_loops.h, written once and compiled once per instruction set: the
// including file defines PLINIO_CPU_ISA (the namespace of this copy and the prefix of its
// table, `<isa>_loops`) and, for a non-baseline copy, switches the target ISA on first.
//
// This header includes nothing: the includer brings <ATen/Parallel.h>, ../ops_common.h and
// cpu_loops.h in *before* switching the target, so that no library code is compiled for an
// instruction set the CPU may lack. For the same reason the loops use no standard-library
// templates: every function defined below lives in this copy's own namespace.
//
// Work is split into fixed-size chunks processed in parallel (at::parallel_for over
// OpenMP); inside a chunk, short tiles are accumulated in A by simple loops that the
// compiler vectorizes. Reductions are per chunk (combine) or per row (masks) and summed in
// a fixed order by the caller, so results do not depend on the thread count.

#ifndef PLINIO_CPU_ISA
#error "define PLINIO_CPU_ISA before including cpu_loops_impl.h"
#endif

#define PLINIO_CAT_(a, b) a##b
#define PLINIO_CAT(a, b) PLINIO_CAT_(a, b)

namespace plinio {
namespace cpu {
namespace PLINIO_CPU_ISA {

inline int64_t smaller(int64_t a, int64_t b) { return a < b ? a : b; }

// Rows per parallel task of the mask loops: each task touches at least ~128k elements, so
// typical layer weights (tens of thousands of elements) run inline without waking the
// thread pool, whose start-up would cost more than the work itself.
inline int64_t row_grain(int64_t row_len) {
  const int64_t g = (128 * 1024) / (row_len > 1 ? row_len : 1);
  return g > 1 ? g : 1;
}

// ReLU as torch.relu computes it: NaN stays NaN.
template <typename A>
inline A relu(A v) {
  return v < A(0) ? A(0) : v;
}

template <typename T, typename A>
void combine_forward(const T* const* xs, const char* relu_flags, int64_t nb, const A* theta, T* out,
                     int64_t n) {
  at::parallel_for(0, n, kChunk, [&](int64_t begin, int64_t end) {
    A acc[kTile];
    for (int64_t t0 = begin; t0 < end; t0 += kTile) {
      const int64_t len = smaller(kTile, end - t0);
      PLINIO_SIMD
      for (int64_t j = 0; j < len; ++j) acc[j] = A(0);
      for (int64_t i = 0; i < nb; ++i) {
        const T* xi = xs[i] + t0;
        const A thi = theta[i];
        if (relu_flags != nullptr && relu_flags[i]) {
          PLINIO_SIMD
          for (int64_t j = 0; j < len; ++j) acc[j] += thi * relu(static_cast<A>(xi[j]));
        } else {
          PLINIO_SIMD
          for (int64_t j = 0; j < len; ++j) acc[j] += thi * static_cast<A>(xi[j]);
        }
      }
      T* o = out + t0;
      PLINIO_SIMD
      for (int64_t j = 0; j < len; ++j) o[j] = static_cast<T>(acc[j]);
    }
  });
}

template <typename T, typename A>
void combine_backward(const T* grad, const T* const* xs, const char* relu_flags, int64_t nb,
                      const A* theta, T* const* grads, A* partial, int64_t n) {
  at::parallel_for(0, combine_chunks(n), 1, [&](int64_t cbegin, int64_t cend) {
    A g[kTile];
    for (int64_t c = cbegin; c < cend; ++c) {
      const int64_t begin = c * kChunk;
      const int64_t end = smaller(n, begin + kChunk);
      if (partial != nullptr) {
        for (int64_t i = 0; i < nb; ++i) partial[c * nb + i] = A(0);
      }
      for (int64_t t0 = begin; t0 < end; t0 += kTile) {
        const int64_t len = smaller(kTile, end - t0);
        const T* gp = grad + t0;
        PLINIO_SIMD
        for (int64_t j = 0; j < len; ++j) g[j] = static_cast<A>(gp[j]);
        for (int64_t i = 0; i < nb; ++i) {
          const bool r = relu_flags != nullptr && relu_flags[i];
          const T* xi = xs[i] != nullptr ? xs[i] + t0 : nullptr;
          if (grads[i] != nullptr) {
            T* gi = grads[i] + t0;
            const A thi = theta[i];
            PLINIO_SIMD
            for (int64_t j = 0; j < len; ++j) gi[j] = static_cast<T>(thi * g[j]);
            if (r) {
              // ReLU's gradient mask, as threshold_backward: zero where x <= 0. A second
              // pass over the tile (in L1), not one fused loop: a product under a condition
              // is not speculated, so that loop would compile to a branch per element.
              PLINIO_SIMD
              for (int64_t j = 0; j < len; ++j)
                gi[j] = static_cast<A>(xi[j]) <= A(0) ? T(0) : gi[j];
            }
          }
          if (partial != nullptr) {
            A dot = A(0);
            if (r) {
              PLINIO_SIMD_SUM(dot)
              for (int64_t j = 0; j < len; ++j) dot += g[j] * relu(static_cast<A>(xi[j]));
            } else {
              PLINIO_SIMD_SUM(dot)
              for (int64_t j = 0; j < len; ++j) dot += g[j] * static_cast<A>(xi[j]);
            }
            partial[c * nb + i] += dot;
          }
        }
      }
    }
  });
}

// out[j] = in[j] * s * pattern[j] over one weight row (pattern may be nullptr: all ones).
template <typename T, typename A>
inline void mask_row(const T* in, A s, const A* pattern, int64_t len, T* out) {
  if (pattern == nullptr) {
    PLINIO_SIMD
    for (int64_t j = 0; j < len; ++j) out[j] = static_cast<T>(A(in[j]) * s);
  } else {
    PLINIO_SIMD
    for (int64_t j = 0; j < len; ++j) out[j] = static_cast<T>(A(in[j]) * (s * pattern[j]));
  }
}

template <typename T, typename A>
void apply_masks(const T* rows, int64_t cout, int64_t row_len, const A* c_mask, const A* pattern,
                 T* out) {
  at::parallel_for(0, cout, row_grain(row_len), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const A s = c_mask != nullptr ? c_mask[c] : A(1);
      mask_row(rows + c * row_len, s, pattern, row_len, out + c * row_len);
    }
  });
}

template <typename T, typename A>
void reduce_masks(const T* grad, const T* weight, int64_t cout, int64_t row_len, int64_t taps,
                  const A* c_mask, const A* pattern, T* grad_out, A* partial) {
  at::parallel_for(0, cout, row_grain(row_len), [&](int64_t begin, int64_t end) {
    // products of a tile of whole tap groups in one vectorized pass, then summed per tap
    const int64_t tile = taps < kTile ? (kTile / taps) * taps : taps;
    A prod[kTile];
    for (int64_t c = begin; c < end; ++c) {
      const A s = c_mask != nullptr ? c_mask[c] : A(1);
      const T* gr = grad + c * row_len;
      const T* wr = weight + c * row_len;
      if (grad_out != nullptr) mask_row(gr, s, pattern, row_len, grad_out + c * row_len);
      if (partial == nullptr) continue;
      A* out = partial + c * taps;
      if (taps == 1) {
        A dot = A(0);
        PLINIO_SIMD_SUM(dot)
        for (int64_t j = 0; j < row_len; ++j) dot += A(gr[j]) * A(wr[j]);
        out[0] = dot;
        continue;
      }
      for (int64_t k = 0; k < taps; ++k) out[k] = A(0);
      if (tile > kTile) {  // taps longer than a tile: no scratch, one tap at a time
        for (int64_t j = 0; j < row_len; ++j) out[j % taps] += A(gr[j]) * A(wr[j]);
        continue;
      }
      for (int64_t t0 = 0; t0 < row_len; t0 += tile) {
        const int64_t len = smaller(tile, row_len - t0);
        PLINIO_SIMD
        for (int64_t j = 0; j < len; ++j) prod[j] = A(gr[t0 + j]) * A(wr[t0 + j]);
        for (int64_t r = 0; r < len; r += taps) {
          PLINIO_SIMD
          for (int64_t k = 0; k < taps; ++k) out[k] += prod[r + k];
        }
      }
    }
  });
}

template <typename T>
Loops<T> table() {
  using A = at::opmath_type<T>;
  return Loops<T>{&combine_forward<T, A>, &combine_backward<T, A>, &apply_masks<T, A>,
                  &reduce_masks<T, A>};
}

}  // namespace PLINIO_CPU_ISA

template <>
Loops<float> PLINIO_CAT(PLINIO_CPU_ISA, _loops)<float>() {
  return PLINIO_CPU_ISA::table<float>();
}
template <>
Loops<double> PLINIO_CAT(PLINIO_CPU_ISA, _loops)<double>() {
  return PLINIO_CPU_ISA::table<double>();
}
template <>
Loops<c10::Half> PLINIO_CAT(PLINIO_CPU_ISA, _loops)<c10::Half>() {
  return PLINIO_CPU_ISA::table<c10::Half>();
}
template <>
Loops<c10::BFloat16> PLINIO_CAT(PLINIO_CPU_ISA, _loops)<c10::BFloat16>() {
  return PLINIO_CPU_ISA::table<c10::BFloat16>();
}

}  // namespace cpu
}  // namespace plinio

#undef PLINIO_CAT
#undef PLINIO_CAT_
