// CPU kernels of plinio::combine: y = Σ_i θ_i·r_i(y_i) (r_i: the optional fused ReLU) and
// its one-pass backward. The loops
// themselves are in cpu_loops_impl.h (one copy per instruction set); this file hands them
// raw pointers and sums the per-chunk θ-gradient partials in a fixed order.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <vector>

#include "../ops_driver.h"
#include "cpu_loops.h"

namespace plinio {
namespace {

// The flags as the loops take them (std::vector<bool> has no contiguous storage).
std::vector<char> flag_array(const std::vector<bool>& flags) {
  return std::vector<char>(flags.begin(), flags.end());
}

struct CpuCombineKernels {
  static constexpr bool kFusesRelu = true;

  static void forward(const std::vector<at::Tensor>& xs, const std::vector<bool>& relu,
                      const at::Tensor& theta, at::Tensor& out) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, out.scalar_type(), "plinio_combine_cpu", [&] {
          using A = at::opmath_type<scalar_t>;
          std::vector<const scalar_t*> ptrs;
          for (const auto& x : xs) ptrs.push_back(x.const_data_ptr<scalar_t>());
          const std::vector<char> r = flag_array(relu);
          cpu::loops<scalar_t>().combine_forward(
              ptrs.data(), r.data(), static_cast<int64_t>(ptrs.size()), theta.const_data_ptr<A>(),
              out.mutable_data_ptr<scalar_t>(), out.numel());
        });
  }

  static void backward(const at::Tensor& grad, const std::vector<at::Tensor>& xs,
                       const std::vector<bool>& relu, const at::Tensor& theta,
                       const std::vector<bool>& needs, std::vector<at::Tensor>& grads,
                       at::Tensor& theta_grad) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, grad.scalar_type(), "plinio_combine_backward_cpu", [&] {
          using A = at::opmath_type<scalar_t>;
          const int64_t nb = static_cast<int64_t>(needs.size());
          const int64_t n = grad.numel();
          std::vector<const scalar_t*> xp;
          std::vector<scalar_t*> gp;
          for (int64_t i = 0; i < nb; ++i) {
            xp.push_back(xs[i].defined() ? xs[i].const_data_ptr<scalar_t>() : nullptr);
            gp.push_back(needs[i] ? grads[i].mutable_data_ptr<scalar_t>() : nullptr);
          }
          const int64_t nchunks = cpu::combine_chunks(n);
          // partial[c * nb + i] = <grad, x_i> over chunk c
          std::vector<A> partial(theta_grad.defined() ? nchunks * nb : 0);
          const std::vector<char> r = flag_array(relu);
          cpu::loops<scalar_t>().combine_backward(
              grad.const_data_ptr<scalar_t>(), xp.data(), r.data(), nb, theta.const_data_ptr<A>(),
              gp.data(), partial.empty() ? nullptr : partial.data(), n);
          if (!theta_grad.defined()) return;
          A* out = theta_grad.mutable_data_ptr<A>();
          for (int64_t i = 0; i < nb; ++i) {
            A s = A(0);
            for (int64_t c = 0; c < nchunks; ++c) s += partial[c * nb + i];
            out[i] = s;
          }
        });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(plinio, CPU, m) {
  m.impl("combine", &combine_forward<CpuCombineKernels>);
  m.impl("combine_backward", &combine_backward<CpuCombineKernels>);
}

}  // namespace plinio
