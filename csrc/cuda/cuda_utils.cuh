// Small CUDA helpers shared by the plinio kernels: launch geometry and a block-wide sum.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>

namespace plinio {
namespace cuda {

constexpr int kThreads = 256;

// Enough blocks to fill the GPU a few times over, never more than the work needs.
inline int64_t grid_for(int64_t n, int64_t per_block = kThreads) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t needed = (n + per_block - 1) / per_block;
  return std::max<int64_t>(1, std::min<int64_t>(needed, sms * 8));
}

// Sum of `v` over the block (kThreads threads); the result is valid in thread 0.
// `shared` needs kThreads / 32 entries.
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* shared) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  A s = A(0);
  if (warp == 0) {
    s = lane < (kThreads / 32) ? shared[lane] : A(0);
    for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
  }
  return s;
}

}  // namespace cuda
}  // namespace plinio
