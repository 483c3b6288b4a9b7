// The baseline-ISA copy of the CPU loops, and the run-time choice between the copies.
#include <ATen/Parallel.h>

#include <cstdlib>
#include <cstring>

#include "../ops_common.h"
#include "cpu_loops.h"

#define PLINIO_CPU_ISA base
#include "cpu_loops_impl.h"
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

}  // namespace

bool use_avx2() {
  static const bool chosen = choose_avx2();  // once per process: every table agrees
  return chosen;
}

}  // namespace cpu
}  // namespace plinio
