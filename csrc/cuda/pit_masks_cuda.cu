// CUDA kernels of the PIT mask ops, launched on the current stream.
//
// masks:        one thread per mask entry (formulas of pit_mask_math.h).
// apply:        grid-stride elementwise weight ⊙ m_α[c] ⊙ m_t[k].
// reduce:       one block per output channel: the masked gradient and the per-tap sums
//               Σ_r grad·weight (block reductions, deterministic).
// param_grads:  one block: α/β/γ gradients from the per-channel/per-tap sums.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../ops_driver.h"
#include "../pit_mask_math.h"
#include "cuda_utils.cuh"

namespace plinio {
namespace {

namespace mm = mask_math;

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

template <typename T, typename A>
__global__ void masks_kernel(const T* alpha, const T* beta, const T* gamma, int64_t cout,
                             int64_t taps, int64_t levels, int64_t keep_alive, A threshold, A* cm,
                             A* mbeta, A* mgamma, A* mtime) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (alpha != nullptr && i < cout) {
    cm[i] = mm::binarize(mm::theta_alpha<A>(alpha, i, cout, keep_alive), threshold);
  }
  if (mtime != nullptr && i < taps) {
    const A b = beta ? mm::binarize(mm::theta_beta<A>(beta, i, taps), threshold) : A(1);
    const A g = gamma ? mm::binarize(mm::theta_gamma<A>(gamma, i, taps, levels), threshold) : A(1);
    mbeta[i] = b;
    mgamma[i] = g;
    mtime[i] = b * g;
  }
}

template <typename T, typename A>
__global__ void apply_kernel(const T* __restrict__ w, const A* __restrict__ cm,
                             const A* __restrict__ mt, T* __restrict__ out, int64_t n,
                             int64_t row_len, int64_t taps) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += stride) {
    A s = static_cast<A>(w[idx]);
    if (cm != nullptr) s *= cm[idx / row_len];
    if (mt != nullptr) s *= mt[(idx % row_len) % taps];
    out[idx] = static_cast<T>(s);
  }
}

template <typename T, typename A>
__global__ void reduce_kernel(const T* __restrict__ grad, const T* __restrict__ w,
                              const A* __restrict__ cm, const A* __restrict__ mt,
                              T* __restrict__ grad_out, A* __restrict__ partial, int64_t row_len,
                              int64_t taps) {
  __shared__ A shared[cuda::kThreads / 32];
  const int64_t c = blockIdx.x;
  const T* gr = grad + c * row_len;
  const T* wr = w + c * row_len;
  if (grad_out != nullptr) {
    const A s = cm ? cm[c] : A(1);
    T* orow = grad_out + c * row_len;
    for (int64_t j = threadIdx.x; j < row_len; j += blockDim.x) {
      orow[j] = static_cast<T>(static_cast<A>(gr[j]) * s * (mt ? mt[j % taps] : A(1)));
    }
  }
  if (partial == nullptr) return;
  for (int64_t k = 0; k < taps; ++k) {
    A acc = A(0);
    for (int64_t j = k + threadIdx.x * taps; j < row_len; j += blockDim.x * taps) {
      acc += static_cast<A>(gr[j]) * static_cast<A>(wr[j]);
    }
    const A s = cuda::block_sum(acc, shared);
    if (threadIdx.x == 0) partial[c * taps + k] = s;
  }
}

template <typename T, typename A>
__global__ void param_grads_kernel(const A* partial, const A* grad_bias, const A* bias,
                                   const A* ext_cm, const A* ext_time, const T* alpha,
                                   const T* beta, const T* gamma, const A* cm, const A* mt,
                                   const A* mbeta, const A* mgamma, int64_t cout, int64_t taps,
                                   int64_t levels, int64_t keep_alive, A* g_alpha, A* g_beta,
                                   A* g_gamma) {
  extern __shared__ unsigned char smem[];
  A* gb_s = reinterpret_cast<A*>(smem);  // gradient w.r.t. the binarized β mask, per tap
  A* gg_s = gb_s + taps;                 // gradient w.r.t. the binarized γ mask, per tap
  if (alpha != nullptr) {
    for (int64_t c = threadIdx.x; c < cout; c += blockDim.x) {
      A s = A(0);
      if (partial) {
        for (int64_t k = 0; k < taps; ++k) s += partial[c * taps + k] * (mt ? mt[k] : A(1));
      }
      if (grad_bias && bias) s += grad_bias[c] * bias[c];
      if (ext_cm) s += ext_cm[c];
      g_alpha[c] = mm::grad_alpha<A>(alpha, s, c, cout, keep_alive);
    }
  }
  if (mt == nullptr) return;
  for (int64_t k = threadIdx.x; k < taps; k += blockDim.x) {
    A s = ext_time ? ext_time[k] : A(0);
    if (partial) {
      for (int64_t c = 0; c < cout; ++c) s += partial[c * taps + k] * (cm ? cm[c] : A(1));
    }
    gb_s[k] = s * mgamma[k];
    gg_s[k] = s * mbeta[k];
  }
  __syncthreads();
  if (beta != nullptr) {
    for (int64_t j = threadIdx.x; j < taps; j += blockDim.x) {
      g_beta[j] = mm::grad_beta<A>(beta, gb_s, j, taps);
    }
  }
  if (gamma != nullptr) {
    for (int64_t p = threadIdx.x; p < levels; p += blockDim.x) {
      g_gamma[p] = mm::grad_gamma<A>(gamma, gg_s, p, taps, levels);
    }
  }
}

template <typename A>
A* mut_or_null(const at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<A>() : nullptr;
}

struct CudaMaskKernels {
  static void masks(const MaskGeometry& g, const at::Tensor& alpha, const at::Tensor& beta,
                    const at::Tensor& gamma, double threshold, int64_t keep_alive, at::Tensor& cm,
                    at::Tensor& mbeta, at::Tensor& mgamma, at::Tensor& mtime) {
    const at::Tensor& p = alpha.defined() ? alpha : (beta.defined() ? beta : gamma);
    if (!p.defined()) return;
    const c10::cuda::CUDAGuard guard(p.device());
    const int64_t n = std::max(g.has_alpha ? g.cout : 0, g.time_masked() ? g.taps : 0);
    if (n == 0) return;
    at::Tensor a = alpha.defined() ? alpha.contiguous() : alpha;
    at::Tensor b = beta.defined() ? beta.contiguous() : beta;
    at::Tensor gm = gamma.defined() ? gamma.contiguous() : gamma;
    const int64_t blocks = (n + cuda::kThreads - 1) / cuda::kThreads;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, p.scalar_type(), "plinio_pit_masks_cuda", [&] {
          using A = at::opmath_type<scalar_t>;
          masks_kernel<scalar_t, A>
              <<<blocks, cuda::kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
                  ptr_or_null<scalar_t>(a), ptr_or_null<scalar_t>(b), ptr_or_null<scalar_t>(gm),
                  g.cout, g.taps, g.levels, keep_alive, static_cast<A>(threshold),
                  mut_or_null<A>(cm), mut_or_null<A>(mbeta), mut_or_null<A>(mgamma),
                  mut_or_null<A>(mtime));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }

  static void apply(const at::Tensor& rows, const at::Tensor& cm, const at::Tensor& mtime,
                    at::Tensor& out) {
    const c10::cuda::CUDAGuard guard(rows.device());
    const int64_t n = rows.numel();
    if (n == 0) return;
    const int64_t row_len = n / rows.size(0);
    const int64_t taps = mtime.defined() ? mtime.numel() : 1;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, rows.scalar_type(), "plinio_pit_apply_masks_cuda", [&] {
          using A = at::opmath_type<scalar_t>;
          apply_kernel<scalar_t, A>
              <<<cuda::grid_for(n), cuda::kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
                  rows.const_data_ptr<scalar_t>(), ptr_or_null<A>(cm), ptr_or_null<A>(mtime),
                  out.mutable_data_ptr<scalar_t>(), n, row_len, taps);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }

  static void reduce(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& cm,
                     const at::Tensor& mtime, const at::Tensor& grad_out,
                     const at::Tensor& partial) {
    const c10::cuda::CUDAGuard guard(weight.device());
    const int64_t cout = weight.size(0);
    if (cout == 0) return;
    const int64_t row_len = weight.numel() / cout;
    const int64_t taps = mtime.defined() ? mtime.numel() : 1;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, weight.scalar_type(), "plinio_pit_masked_weight_backward_cuda",
        [&] {
          using A = at::opmath_type<scalar_t>;
          reduce_kernel<scalar_t, A><<<cout, cuda::kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              grad.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
              ptr_or_null<A>(cm), ptr_or_null<A>(mtime),
              grad_out.defined() ? grad_out.mutable_data_ptr<scalar_t>() : nullptr,
              mut_or_null<A>(partial), row_len, taps);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }

  static void param_grads(const MaskGeometry& g, const at::Tensor& partial,
                          const at::Tensor& grad_bias, const at::Tensor& bias,
                          const at::Tensor& ext_cm, const at::Tensor& ext_time,
                          const at::Tensor& alpha, const at::Tensor& beta, const at::Tensor& gamma,
                          const at::Tensor& cm, const at::Tensor& mtime, const at::Tensor& mbeta,
                          const at::Tensor& mgamma, int64_t keep_alive, at::Tensor& g_alpha,
                          at::Tensor& g_beta, at::Tensor& g_gamma) {
    const at::Tensor& p = alpha.defined() ? alpha : (beta.defined() ? beta : gamma);
    const c10::cuda::CUDAGuard guard(p.device());
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, p.scalar_type(), "plinio_pit_mask_param_grads_cuda", [&] {
          using A = at::opmath_type<scalar_t>;
          const size_t smem = g.time_masked() ? 2 * g.taps * sizeof(A) : 0;
          param_grads_kernel<scalar_t, A>
              <<<1, cuda::kThreads, smem, at::cuda::getCurrentCUDAStream()>>>(
                  ptr_or_null<A>(partial), ptr_or_null<A>(grad_bias), ptr_or_null<A>(bias),
                  ptr_or_null<A>(ext_cm), ptr_or_null<A>(ext_time), ptr_or_null<scalar_t>(alpha),
                  ptr_or_null<scalar_t>(beta), ptr_or_null<scalar_t>(gamma), ptr_or_null<A>(cm),
                  ptr_or_null<A>(mtime), ptr_or_null<A>(mbeta), ptr_or_null<A>(mgamma), g.cout,
                  g.taps, g.levels, keep_alive, mut_or_null<A>(g_alpha), mut_or_null<A>(g_beta),
                  mut_or_null<A>(g_gamma));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(plinio, CUDA, m) {
  m.impl("pit_masks", &pit_masks<CudaMaskKernels>);
  m.impl("pit_masks_backward", &pit_masks_backward<CudaMaskKernels>);
  m.impl("pit_masked_weight", &pit_masked_weight<CudaMaskKernels>);
  m.impl("pit_masked_weight_backward", &pit_masked_weight_backward<CudaMaskKernels>);
}

}  // namespace plinio
