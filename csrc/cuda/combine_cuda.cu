// CUDA kernels of plinio::combine, launched on the current stream.
//
// The branch pointers travel as kernel arguments (groups of up to kMaxBranches), so no
// host-to-device copy is needed and the kernels can be captured in CUDA graphs. With more
// branches than one group holds, groups accumulate into a float (double) scratch buffer.
// The θ-gradient is reduced per block into a fixed-size partial buffer and summed with a
// torch op afterwards: deterministic for a given GPU.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../ops_driver.h"
#include "cuda_utils.cuh"

namespace plinio {
namespace {

constexpr int kMaxBranches = 16;

template <typename T>
struct BranchGroup {
  const T* x[kMaxBranches];
  T* grad[kMaxBranches];  // backward only; nullptr where not requested
  int n;
  int offset;  // index of x[0] in the full branch list (theta offset)
};

// out (or acc) = [acc +] Σ_{i in group} θ_i·x_i ; `first`/`last` say where the group sits.
template <typename T, typename A>
__global__ void combine_forward_kernel(BranchGroup<T> g, const A* __restrict__ theta,
                                       T* __restrict__ out, A* __restrict__ acc, int64_t n,
                                       bool first, bool last) {
  A th[kMaxBranches];
#pragma unroll
  for (int i = 0; i < kMaxBranches; ++i) th[i] = i < g.n ? theta[g.offset + i] : A(0);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += stride) {
    A s = first ? A(0) : acc[idx];
#pragma unroll
    for (int i = 0; i < kMaxBranches; ++i) {
      if (i < g.n) s += th[i] * static_cast<A>(g.x[i][idx]);
    }
    if (last) {
      out[idx] = static_cast<T>(s);
    } else {
      acc[idx] = s;
    }
  }
}

// grad_i = θ_i·grad where requested; partial[block * n_total + offset + i] = <grad, x_i>
// over this block's elements when `want_theta`.
template <typename T, typename A>
__global__ void combine_backward_kernel(const T* __restrict__ grad, BranchGroup<T> g,
                                        const A* __restrict__ theta, A* __restrict__ partial,
                                        int64_t n, int n_total, bool want_theta) {
  __shared__ A shared[cuda::kThreads / 32];
  A th[kMaxBranches];
  A dot[kMaxBranches];
#pragma unroll
  for (int i = 0; i < kMaxBranches; ++i) {
    th[i] = i < g.n ? theta[g.offset + i] : A(0);
    dot[i] = A(0);
  }
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += stride) {
    const A gv = static_cast<A>(grad[idx]);
#pragma unroll
    for (int i = 0; i < kMaxBranches; ++i) {
      if (i < g.n) {
        if (g.grad[i] != nullptr) g.grad[i][idx] = static_cast<T>(th[i] * gv);
        if (want_theta) dot[i] += gv * static_cast<A>(g.x[i][idx]);
      }
    }
  }
  if (!want_theta) return;
  for (int i = 0; i < g.n; ++i) {
    const A s = cuda::block_sum(dot[i], shared);
    if (threadIdx.x == 0) partial[static_cast<int64_t>(blockIdx.x) * n_total + g.offset + i] = s;
  }
}

struct CudaCombineKernels {
  static constexpr bool kFusesRelu = false;  // the driver rejects ReLU flags

  static void forward(const std::vector<at::Tensor>& xs, const std::vector<bool>& /*relu*/,
                      const at::Tensor& theta, at::Tensor& out) {
    const c10::cuda::CUDAGuard guard(out.device());
    const int64_t n = out.numel();
    const int nb = static_cast<int>(xs.size());
    const int64_t blocks = cuda::grid_for(n);
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, out.scalar_type(), "plinio_combine_cuda", [&] {
          using A = at::opmath_type<scalar_t>;
          at::Tensor acc;
          if (nb > kMaxBranches) acc = at::empty({n}, theta.options());
          for (int start = 0; start < nb; start += kMaxBranches) {
            BranchGroup<scalar_t> g{};
            g.n = std::min(kMaxBranches, nb - start);
            g.offset = start;
            for (int i = 0; i < g.n; ++i) g.x[i] = xs[start + i].const_data_ptr<scalar_t>();
            const bool first = start == 0;
            const bool last = start + kMaxBranches >= nb;
            combine_forward_kernel<scalar_t, A><<<blocks, cuda::kThreads, 0, stream>>>(
                g, theta.const_data_ptr<A>(), out.mutable_data_ptr<scalar_t>(),
                acc.defined() ? acc.mutable_data_ptr<A>() : nullptr, n, first, last);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          }
        });
  }

  static void backward(const at::Tensor& grad, const std::vector<at::Tensor>& xs,
                       const std::vector<bool>& /*relu*/, const at::Tensor& theta,
                       const std::vector<bool>& needs, std::vector<at::Tensor>& grads,
                       at::Tensor& theta_grad) {
    const c10::cuda::CUDAGuard guard(grad.device());
    const int64_t n = grad.numel();
    const int nb = static_cast<int>(needs.size());
    const int64_t blocks = cuda::grid_for(n);
    const bool want_theta = theta_grad.defined();
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, grad.scalar_type(), "plinio_combine_backward_cuda", [&] {
          using A = at::opmath_type<scalar_t>;
          at::Tensor partial;
          if (want_theta) partial = at::empty({blocks, nb}, theta.options());
          for (int start = 0; start < nb; start += kMaxBranches) {
            BranchGroup<scalar_t> g{};
            g.n = std::min(kMaxBranches, nb - start);
            g.offset = start;
            bool any = want_theta;
            for (int i = 0; i < g.n; ++i) {
              g.x[i] = want_theta ? xs[start + i].const_data_ptr<scalar_t>() : nullptr;
              g.grad[i] =
                  needs[start + i] ? grads[start + i].mutable_data_ptr<scalar_t>() : nullptr;
              any = any || needs[start + i];
            }
            if (!any) continue;
            combine_backward_kernel<scalar_t, A><<<blocks, cuda::kThreads, 0, stream>>>(
                grad.const_data_ptr<scalar_t>(), g, theta.const_data_ptr<A>(),
                want_theta ? partial.mutable_data_ptr<A>() : nullptr, n, nb, want_theta);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          }
          if (want_theta) theta_grad.copy_(partial.sum(0));
        });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(plinio, CUDA, m) {
  m.impl("combine", &combine_forward<CudaCombineKernels>);
  m.impl("combine_backward", &combine_backward<CudaCombineKernels>);
}

}  // namespace plinio
