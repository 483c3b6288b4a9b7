// The AVX-512 copy of the small-convolution loops (small_conv_loops.h); the other CPU loops are
// memory-bound and keep their AVX2 copy. Same structure as loops_avx2.cpp: every library
// header first, then the target switch, then the loops.
#include <ATen/Parallel.h>

#include "../ops_common.h"
#include "cpu_loops.h"
#include "small_conv_loops.h"

#if PLINIO_CPU_HAS_AVX2_COPY
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx512f,avx2,fma")
#endif

#define PLINIO_CPU_ISA avx512
#define PLINIO_SMALL_CONV_LANES 16
#define PLINIO_SMALL_CONV_REGISTERS 32
#include "small_conv_loops_impl.h"
#undef PLINIO_SMALL_CONV_LANES
#undef PLINIO_SMALL_CONV_REGISTERS
#undef PLINIO_CPU_ISA

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif  // PLINIO_CPU_HAS_AVX2_COPY
