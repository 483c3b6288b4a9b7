// The AVX2+FMA copy of the CPU loops (see cpu_loops.h): every library header first, then
// the target switch, then the loops, which are the only code compiled for AVX2.
#include <ATen/Parallel.h>

#include "../ops_common.h"
#include "cpu_loops.h"
#include "small_conv_loops.h"

#if PLINIO_CPU_HAS_AVX2_COPY
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx2,fma")
#endif

#define PLINIO_CPU_ISA avx2
#include "cpu_loops_impl.h"
#define PLINIO_SMALL_CONV_LANES 8
#define PLINIO_SMALL_CONV_REGISTERS 16
#include "small_conv_loops_impl.h"
#undef PLINIO_SMALL_CONV_LANES
#undef PLINIO_SMALL_CONV_REGISTERS
#undef PLINIO_CPU_ISA

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif  // PLINIO_CPU_HAS_AVX2_COPY
