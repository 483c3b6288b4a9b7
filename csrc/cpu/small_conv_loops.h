// The inner loops of plinio::small_conv (small_conv_cpu.cpp): a direct, stride-1, groups=1
// convolution (the driver runs strided convolutions on phase planes and groups one by one
// through them) for the few channels a pruned layer keeps, where oneDNN runs at a fraction of
// its speed (a 4 -> 4 channel 5×5 convolution of 32×32 images: ~20 GMAC/s against ~100 at
// 16+ channels on one core). Compiled once per instruction set like cpu_loops.h, plus an
// AVX-512 copy (loops_avx512.cpp) used where the CPU has AVX-512F: these loops are
// compute-bound, and twice the vector width gives them about twice the speed.
//
// The loops see one sample at a time in dense, zero-padded scratch buffers laid out by the
// driver, so that they have no borders, strides or tails to handle:
//   input  [ci][hp][wp], hp = ho + dh*(kh-1), wp = wv + dw*(kw-1), zeros around the data;
//   output [co][ho][wv], wv = the output row length rounded up to the copy's vector width (the
//          columns past the real width are computed and dropped by the driver, or are zeros
//          in a gradient).
#pragma once

#include <cstdint>

#include "cpu_loops.h"

namespace plinio {
namespace cpu {

constexpr int64_t kMaxKernelWidth = 7;  // widest kernel row the weight-gradient loop unrolls

struct SmallConvShape {
  int64_t ci, co;  // input and output channels
  int64_t kh, kw;  // kernel size
  int64_t dh, dw;  // dilation
  int64_t ho, wv;  // output rows, output row length in the buffers (multiple of lanes)
  int64_t hp() const { return ho + dh * (kh - 1); }
  int64_t wp() const { return wv + dw * (kw - 1); }
};

struct SmallConvLoops {
  int64_t lanes;  // floats per vector register
  // out[co][oh][ow] = Σ_{ci,i,j} w[co][ci][i][j] * in[ci][oh + dh*i][ow + dw*j]
  void (*forward)(const SmallConvShape& s, const float* in, const float* w, float* out);
  // grad_w[co][ci][i][j][l] += Σ_{oh, ow ≡ l mod lanes} grad[co][oh][ow] * in[ci][oh + dh*i][ow +
  // dw*j] (per-lane partial sums: the caller adds up the lanes l; s.kw <= kMaxKernelWidth)
  void (*weight_grad)(const SmallConvShape& s, const float* grad, const float* in, float* grad_w);
};

SmallConvLoops base_small_conv_loops();
#if PLINIO_CPU_HAS_AVX2_COPY
SmallConvLoops avx2_small_conv_loops();
SmallConvLoops avx512_small_conv_loops();
#endif

// Whether the AVX-512 copy runs here: built, supported by this CPU, not disabled
// (PLINIO_CPU_ISA=base or =avx2 in the environment keeps it off).
bool use_avx512();

inline const SmallConvLoops& small_conv_loops() {
#if PLINIO_CPU_HAS_AVX2_COPY
  static const SmallConvLoops table = use_avx512() ? avx512_small_conv_loops()
                                      : use_avx2() ? avx2_small_conv_loops()
                                                   : base_small_conv_loops();
#else
  static const SmallConvLoops table = base_small_conv_loops();
#endif
  return table;
}

}  // namespace cpu
}  // namespace plinio
