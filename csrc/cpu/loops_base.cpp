// The baseline-ISA copy of the CPU loops, and the run-time choice between the copies.
#include <ATen/Parallel.h>

#include <cstdlib>
#include <cstring>

#include "../ops_common.h"
#include "cpu_loops.h"
#include "small_conv_loops.h"

#define PLINIO_CPU_ISA base
#include "cpu_loops_impl.h"
#define PLINIO_SMALL_CONV_LANES 8
#define PLINIO_SMALL_CONV_REGISTERS 16
#include "small_conv_loops_impl.h"
#undef PLINIO_SMALL_CONV_LANES
#undef PLINIO_SMALL_CONV_REGISTERS
#undef PLINIO_CPU_ISA

namespace plinio {
namespace cpu {

namespace {

bool choose_avx2() {
#if PLINIO_CPU_HAS_AVX2_COPY
  const char* forced = std::getenv("PLINIO_CPU_ISA");
  if (forced != nullptr && std::strcmp(forced, "base") == 0) return false;
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool choose_avx512() {
#if PLINIO_CPU_HAS_AVX2_COPY
  const char* forced = std::getenv("PLINIO_CPU_ISA");
  if (forced != nullptr && std::strcmp(forced, "avx2") == 0) return false;
  return use_avx2() && __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

}  // namespace

bool use_avx2() {
  static const bool chosen = choose_avx2();  // once per process: every table agrees
  return chosen;
}

bool use_avx512() {
  static const bool chosen = choose_avx512();
  return chosen;
}

}  // namespace cpu
}  // namespace plinio
