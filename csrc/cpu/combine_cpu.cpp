// CPU kernels of plinio::combine: y = Σ_i θ_i·y_i and its one-pass backward.
//
// All operands share one dense layout (the driver aligns them), so the kernels walk a
// flat index. Work is split into fixed-size chunks processed in parallel (at::parallel_for
// over OpenMP); inside a chunk, short tiles are accumulated in a float (double) buffer by
// simple loops that the compiler vectorizes. The θ-gradient is reduced per chunk and the
// chunk partials are summed in a fixed order, so results do not depend on thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../ops_driver.h"

namespace plinio {
namespace {

constexpr int64_t kTile = 1024;       // elements accumulated in registers/L1 at a time
constexpr int64_t kChunk = 64 * 1024;  // elements per parallel task

template <typename T, typename A>
void combine_forward_kernel(const std::vector<const T*>& xs, const A* theta, T* out, int64_t n) {
  const int64_t nb = static_cast<int64_t>(xs.size());
  at::parallel_for(0, n, kChunk, [&](int64_t begin, int64_t end) {
    A acc[kTile];
    for (int64_t t0 = begin; t0 < end; t0 += kTile) {
      const int64_t len = std::min(kTile, end - t0);
      const T* x0 = xs[0] + t0;
      const A th0 = theta[0];
PLINIO_SIMD
      for (int64_t j = 0; j < len; ++j) acc[j] = th0 * static_cast<A>(x0[j]);
      for (int64_t i = 1; i < nb; ++i) {
        const T* xi = xs[i] + t0;
        const A thi = theta[i];
PLINIO_SIMD
        for (int64_t j = 0; j < len; ++j) acc[j] += thi * static_cast<A>(xi[j]);
      }
      T* o = out + t0;
PLINIO_SIMD
      for (int64_t j = 0; j < len; ++j) o[j] = static_cast<T>(acc[j]);
    }
  });
}

template <typename T, typename A>
void combine_backward_kernel(const T* grad, const std::vector<const T*>& xs, const A* theta,
                             const std::vector<T*>& grads, A* theta_grad, int64_t n) {
  const int64_t nb = static_cast<int64_t>(grads.size());
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
  // partial[c * nb + i] = <grad, x_i> over chunk c
  std::vector<A> partial(theta_grad ? nchunks * nb : 0, A(0));
  at::parallel_for(0, nchunks, 1, [&](int64_t cbegin, int64_t cend) {
    A g[kTile];
    for (int64_t c = cbegin; c < cend; ++c) {
      const int64_t begin = c * kChunk;
      const int64_t end = std::min(n, begin + kChunk);
      for (int64_t t0 = begin; t0 < end; t0 += kTile) {
        const int64_t len = std::min(kTile, end - t0);
        const T* gp = grad + t0;
PLINIO_SIMD
        for (int64_t j = 0; j < len; ++j) g[j] = static_cast<A>(gp[j]);
        for (int64_t i = 0; i < nb; ++i) {
          if (grads[i] != nullptr) {
            T* gi = grads[i] + t0;
            const A thi = theta[i];
PLINIO_SIMD
            for (int64_t j = 0; j < len; ++j) gi[j] = static_cast<T>(thi * g[j]);
          }
          if (theta_grad != nullptr) {
            const T* xi = xs[i] + t0;
            A dot = A(0);
PLINIO_SIMD_SUM(dot)
            for (int64_t j = 0; j < len; ++j) dot += g[j] * static_cast<A>(xi[j]);
            partial[c * nb + i] += dot;
          }
        }
      }
    }
  });
  if (theta_grad != nullptr) {
    for (int64_t i = 0; i < nb; ++i) {
      A s = A(0);
      for (int64_t c = 0; c < nchunks; ++c) s += partial[c * nb + i];
      theta_grad[i] = s;
    }
  }
}

struct CpuCombineKernels {
  static void forward(const std::vector<at::Tensor>& xs, const at::Tensor& theta,
                      at::Tensor& out) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(),
                                    "plinio_combine_cpu", [&] {
      using A = at::opmath_type<scalar_t>;
      std::vector<const scalar_t*> ptrs;
      for (const auto& x : xs) ptrs.push_back(x.const_data_ptr<scalar_t>());
      combine_forward_kernel<scalar_t, A>(ptrs, theta.const_data_ptr<A>(),
                                          out.mutable_data_ptr<scalar_t>(), out.numel());
    });
  }

  static void backward(const at::Tensor& grad, const std::vector<at::Tensor>& xs,
                       const at::Tensor& theta, const std::vector<bool>& needs,
                       std::vector<at::Tensor>& grads, at::Tensor& theta_grad) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                    "plinio_combine_backward_cpu", [&] {
      using A = at::opmath_type<scalar_t>;
      std::vector<const scalar_t*> xp;
      std::vector<scalar_t*> gp;
      for (size_t i = 0; i < needs.size(); ++i) {
        xp.push_back(xs[i].defined() ? xs[i].const_data_ptr<scalar_t>() : nullptr);
        gp.push_back(needs[i] ? grads[i].mutable_data_ptr<scalar_t>() : nullptr);
      }
      combine_backward_kernel<scalar_t, A>(
          grad.const_data_ptr<scalar_t>(), xp, theta.const_data_ptr<A>(), gp,
          theta_grad.defined() ? theta_grad.mutable_data_ptr<A>() : nullptr, grad.numel());
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(plinio, CPU, m) {
  m.impl("combine", &combine_forward<CpuCombineKernels>);
  m.impl("combine_backward", &combine_backward<CpuCombineKernels>);
}

}  // namespace plinio
