// The loops of small_conv_loops.h, written once and compiled once per instruction set: the
// including file defines PLINIO_CPU_ISA, PLINIO_SMALL_CONV_LANES (floats per vector register:
// 8 for the baseline and AVX2 copies, 16 for AVX-512) and PLINIO_SMALL_CONV_REGISTERS (16 or
// 32), and switches the target first (see cpu_loops_impl.h, whose rules this file follows: it
// includes nothing and uses no library templates).
//
// Register tiles are GCC/Clang vectors, indexed by constant loop counters so that they stay in
// registers: two vectors of output columns × a block of output channels in the forward, kernel
// taps × a block of output channels in the weight gradient. Plain arrays with `omp simd` loops
// were 4–7× slower here: the compiler kept the accumulators in memory.

#if !defined(PLINIO_CPU_ISA) || !defined(PLINIO_SMALL_CONV_LANES) || \
    !defined(PLINIO_SMALL_CONV_REGISTERS)
#error "define PLINIO_CPU_ISA, PLINIO_SMALL_CONV_LANES and PLINIO_SMALL_CONV_REGISTERS first"
#endif

#define PLINIO_SC_CAT_(a, b) a##b
#define PLINIO_SC_CAT(a, b) PLINIO_SC_CAT_(a, b)

namespace plinio {
namespace cpu {
namespace PLINIO_CPU_ISA {
namespace small_conv {

typedef float Vec __attribute__((vector_size(4 * PLINIO_SMALL_CONV_LANES)));
constexpr int kLanes = PLINIO_SMALL_CONV_LANES;
constexpr int kVecsPerTile = 2;  // vectors of output columns per forward tile (1 at a row's end)

// Vectors pass by reference: by value they would change the calling convention between the
// two copies (GCC's -Wpsabi).
inline void load(Vec& v, const float* p) { __builtin_memcpy(&v, p, sizeof(v)); }

inline void store(float* p, const Vec& v) { __builtin_memcpy(p, &v, sizeof(v)); }

// One output tile of V vectors of columns × CB output channels from co0, at row oh, column ow0.
template <int CB, int V>
void forward_tile(const SmallConvShape& s, const float* in, const float* w, float* out, int64_t oh,
                  int64_t ow0, int64_t co0) {
  const int64_t hp = s.hp(), wp = s.wp(), taps = s.kh * s.kw, co_stride = s.ci * taps;
  Vec acc[CB][V];
  for (int c = 0; c < CB; ++c)
    for (int v = 0; v < V; ++v) acc[c][v] = Vec{};
  for (int64_t ci = 0; ci < s.ci; ++ci) {
    for (int64_t i = 0; i < s.kh; ++i) {
      const float* row = in + (ci * hp + oh + s.dh * i) * wp + ow0;
      const float* wrow = w + (co0 * s.ci + ci) * taps + i * s.kw;
      for (int64_t j = 0; j < s.kw; ++j) {
        Vec x[V];
        for (int v = 0; v < V; ++v) load(x[v], row + s.dw * j + kLanes * v);
        for (int c = 0; c < CB; ++c) {
          const float wv = wrow[c * co_stride + j];
          for (int v = 0; v < V; ++v) acc[c][v] += wv * x[v];
        }
      }
    }
  }
  for (int c = 0; c < CB; ++c) {
    float* o = out + ((co0 + c) * s.ho + oh) * s.wv + ow0;
    for (int v = 0; v < V; ++v) store(o + kLanes * v, acc[c][v]);
  }
}

// Output channels per forward tile: 2 × this many accumulators, plus the two input vectors
// and a broadcast weight, fit the register file (8 of 16 with AVX2, 16 of 32 with AVX-512).
constexpr int kForwardChannels = PLINIO_SMALL_CONV_REGISTERS / 4;

// The output channels of one column tile: blocks of kForwardChannels, then 4, 2 and 1.
template <int V>
void forward_columns(const SmallConvShape& s, const float* in, const float* w, float* out,
                     int64_t oh, int64_t ow0) {
  int64_t co0 = 0;
  for (; co0 + kForwardChannels <= s.co; co0 += kForwardChannels)
    forward_tile<kForwardChannels, V>(s, in, w, out, oh, ow0, co0);
  if (kForwardChannels > 4 && co0 + 4 <= s.co) {
    forward_tile<4, V>(s, in, w, out, oh, ow0, co0);
    co0 += 4;
  }
  if (co0 + 2 <= s.co) {
    forward_tile<2, V>(s, in, w, out, oh, ow0, co0);
    co0 += 2;
  }
  if (co0 < s.co) forward_tile<1, V>(s, in, w, out, oh, ow0, co0);
}

void forward(const SmallConvShape& s, const float* in, const float* w, float* out) {
  for (int64_t oh = 0; oh < s.ho; ++oh) {
    int64_t ow0 = 0;
    for (; ow0 + kVecsPerTile * kLanes <= s.wv; ow0 += kVecsPerTile * kLanes)
      forward_columns<kVecsPerTile>(s, in, w, out, oh, ow0);
    if (ow0 < s.wv) forward_columns<1>(s, in, w, out, oh, ow0);
  }
}

// grad_w rows co0..co0+CB-1 of input channel ci and kernel row i, for a kernel width KW, kept
// per lane: the horizontal sums are left to the driver, once per call instead of once per tile
// (a 1-D convolution has a single row per tile, where they would cost more than the products).
template <int KW, int CB>
void weight_grad_tile(const SmallConvShape& s, const float* grad, const float* in, float* grad_w,
                      int64_t co0, int64_t ci, int64_t i) {
  const int64_t hp = s.hp(), wp = s.wp();
  Vec acc[CB][KW];
  for (int c = 0; c < CB; ++c)
    for (int j = 0; j < KW; ++j) acc[c][j] = Vec{};
  for (int64_t oh = 0; oh < s.ho; ++oh) {
    const float* row = in + (ci * hp + oh + s.dh * i) * wp;
    const float* g = grad + (co0 * s.ho + oh) * s.wv;
    for (int64_t ow = 0; ow < s.wv; ow += kLanes) {
      Vec gv[CB];
      for (int c = 0; c < CB; ++c) load(gv[c], g + c * s.ho * s.wv + ow);
      for (int j = 0; j < KW; ++j) {
        Vec x;
        load(x, row + ow + s.dw * j);
        for (int c = 0; c < CB; ++c) acc[c][j] += gv[c] * x;
      }
    }
  }
  for (int c = 0; c < CB; ++c) {
    float* out = grad_w + (((co0 + c) * s.ci + ci) * s.kh + i) * KW * kLanes;
    for (int j = 0; j < KW; ++j) {
      Vec sum;
      load(sum, out + j * kLanes);
      store(out + j * kLanes, sum + acc[c][j]);
    }
  }
}

// Output channels sharing each input load: the most of 4, 2, 1 whose CB × KW accumulators,
// CB gradient vectors and one input vector fit the register file.
constexpr int weight_grad_channels(int kw) {
  return 4 * kw + 5 <= PLINIO_SMALL_CONV_REGISTERS   ? 4
         : 2 * kw + 3 <= PLINIO_SMALL_CONV_REGISTERS ? 2
                                                     : 1;
}

template <int KW>
void weight_grad_width(const SmallConvShape& s, const float* grad, const float* in, float* grad_w) {
  constexpr int CB = weight_grad_channels(KW);
  for (int64_t ci = 0; ci < s.ci; ++ci) {
    for (int64_t i = 0; i < s.kh; ++i) {
      int64_t co0 = 0;
      for (; co0 + CB <= s.co; co0 += CB) weight_grad_tile<KW, CB>(s, grad, in, grad_w, co0, ci, i);
      if (CB > 2 && co0 + 2 <= s.co) {
        weight_grad_tile<KW, 2>(s, grad, in, grad_w, co0, ci, i);
        co0 += 2;
      }
      for (; co0 < s.co; ++co0) weight_grad_tile<KW, 1>(s, grad, in, grad_w, co0, ci, i);
    }
  }
}

// weight_grad_width<KW> for KW = 1 .. kMaxKernelWidth (the driver refuses other widths)
using WeightGradLoop = void (*)(const SmallConvShape&, const float*, const float*, float*);
constexpr WeightGradLoop kWeightGradByWidth[] = {
    &weight_grad_width<1>, &weight_grad_width<2>, &weight_grad_width<3>, &weight_grad_width<4>,
    &weight_grad_width<5>, &weight_grad_width<6>, &weight_grad_width<7>};
static_assert(sizeof(kWeightGradByWidth) / sizeof(kWeightGradByWidth[0]) == kMaxKernelWidth,
              "one weight-gradient loop per kernel width");

void weight_grad(const SmallConvShape& s, const float* grad, const float* in, float* grad_w) {
  kWeightGradByWidth[s.kw - 1](s, grad, in, grad_w);
}

}  // namespace small_conv
}  // namespace PLINIO_CPU_ISA

SmallConvLoops PLINIO_SC_CAT(PLINIO_CPU_ISA, _small_conv_loops)() {
  return SmallConvLoops{PLINIO_CPU_ISA::small_conv::kLanes, &PLINIO_CPU_ISA::small_conv::forward,
                        &PLINIO_CPU_ISA::small_conv::weight_grad};
}

}  // namespace cpu
}  // namespace plinio

#undef PLINIO_SC_CAT
#undef PLINIO_SC_CAT_
