// CPU kernels of the PIT mask ops (plinio::pit_masks, plinio::pit_masked_weight and their
// backwards). The mask vectors are tiny (Cout and K entries) and built sequentially with
// the shared formulas of pit_mask_math.h; the weight-sized work (applying the masks, the
// masked gradient and its per-channel / per-tap reductions) is in the loops of
// cpu_loops_impl.h (one copy per instruction set), parallel over output channels.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <vector>

#include "../ops_driver.h"
#include "../pit_mask_math.h"
#include "cpu_loops.h"

namespace plinio {
namespace {

namespace mm = mask_math;

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

// The time mask repeated over one output-channel row [R, taps] (empty without one), so
// that applying it is a flat, vectorizable loop.
template <typename A>
std::vector<A> row_pattern(const A* t_mask, int64_t taps, int64_t row_len) {
  std::vector<A> p;
  if (t_mask != nullptr) {
    p.resize(row_len);
    for (int64_t j = 0; j < row_len; ++j) p[j] = t_mask[j % taps];
  }
  return p;
}

template <typename A>
const A* data_or_null(const std::vector<A>& v) {
  return v.empty() ? nullptr : v.data();
}

struct CpuMaskKernels {
  static void masks(const MaskGeometry& g, const at::Tensor& alpha, const at::Tensor& beta,
                    const at::Tensor& gamma, double threshold, int64_t keep_alive, at::Tensor& cm,
                    at::Tensor& mbeta, at::Tensor& mgamma, at::Tensor& mtime) {
    const at::Tensor& p = alpha.defined() ? alpha : (beta.defined() ? beta : gamma);
    if (!p.defined()) return;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, p.scalar_type(), "plinio_pit_masks_cpu", [&] {
          using A = at::opmath_type<scalar_t>;
          const A thr = static_cast<A>(threshold);
          if (g.has_alpha) {
            at::Tensor ac = alpha.contiguous();
            const scalar_t* alpha_p = ac.const_data_ptr<scalar_t>();
            A* out = cm.mutable_data_ptr<A>();
            for (int64_t c = 0; c < g.cout; ++c) {
              out[c] = mm::binarize(mm::theta_alpha<A>(alpha_p, c, g.cout, keep_alive), thr);
            }
          }
          if (g.time_masked()) {
            at::Tensor bc = beta.defined() ? beta.contiguous() : beta;
            at::Tensor gc = gamma.defined() ? gamma.contiguous() : gamma;
            const scalar_t* beta_p = ptr_or_null<scalar_t>(bc);
            const scalar_t* gamma_p = ptr_or_null<scalar_t>(gc);
            A* out_beta = mbeta.mutable_data_ptr<A>();
            A* out_gamma = mgamma.mutable_data_ptr<A>();
            A* out_time = mtime.mutable_data_ptr<A>();
            for (int64_t j = 0; j < g.taps; ++j) {
              out_beta[j] = beta_p ? mm::binarize(mm::theta_beta<A>(beta_p, j, g.taps), thr) : A(1);
              out_gamma[j] =
                  gamma_p ? mm::binarize(mm::theta_gamma<A>(gamma_p, j, g.taps, g.levels), thr)
                          : A(1);
              out_time[j] = out_beta[j] * out_gamma[j];
            }
          }
        });
  }

  static void apply(const at::Tensor& rows, const at::Tensor& cm, const at::Tensor& mtime,
                    at::Tensor& out) {
    const int64_t cout = rows.size(0);
    const int64_t row_len = cout > 0 ? rows.numel() / cout : 0;
    const int64_t taps = mtime.defined() ? mtime.numel() : 1;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, rows.scalar_type(), "plinio_pit_apply_masks_cpu", [&] {
          using A = at::opmath_type<scalar_t>;
          const std::vector<A> pattern = row_pattern(ptr_or_null<A>(mtime), taps, row_len);
          cpu::loops<scalar_t>().apply_masks(rows.const_data_ptr<scalar_t>(), cout, row_len,
                                             ptr_or_null<A>(cm), data_or_null(pattern),
                                             out.mutable_data_ptr<scalar_t>());
        });
  }

  static void reduce(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& cm,
                     const at::Tensor& mtime, const at::Tensor& grad_out,
                     const at::Tensor& partial) {
    const int64_t cout = weight.size(0);
    const int64_t row_len = cout > 0 ? weight.numel() / cout : 0;
    const int64_t taps = mtime.defined() ? mtime.numel() : 1;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, weight.scalar_type(), "plinio_pit_masked_weight_backward_cpu",
        [&] {
          using A = at::opmath_type<scalar_t>;
          const std::vector<A> pattern = row_pattern(ptr_or_null<A>(mtime), taps, row_len);
          cpu::loops<scalar_t>().reduce_masks(
              grad.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(), cout, row_len,
              taps, ptr_or_null<A>(cm), data_or_null(pattern),
              grad_out.defined() ? grad_out.mutable_data_ptr<scalar_t>() : nullptr,
              partial.defined() ? partial.mutable_data_ptr<A>() : nullptr);
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
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, p.scalar_type(), "plinio_pit_mask_param_grads_cpu", [&] {
          using A = at::opmath_type<scalar_t>;
          const int64_t taps = g.taps;
          const A* part = ptr_or_null<A>(partial);
          const A* c_mask = ptr_or_null<A>(cm);
          const A* t_mask = ptr_or_null<A>(mtime);
          if (g.has_alpha) {
            const A* grad_bias_p = ptr_or_null<A>(grad_bias);
            const A* bias_p = ptr_or_null<A>(bias);
            const A* ext = ptr_or_null<A>(ext_cm);
            const scalar_t* alpha_p = alpha.const_data_ptr<scalar_t>();
            A* out = g_alpha.mutable_data_ptr<A>();
            for (int64_t c = 0; c < g.cout; ++c) {
              A s = A(0);
              if (part) {
                for (int64_t k = 0; k < taps; ++k) {
                  s += part[c * taps + k] * (t_mask ? t_mask[k] : A(1));
                }
              }
              if (grad_bias_p && bias_p) s += grad_bias_p[c] * bias_p[c];
              if (ext) s += ext[c];
              out[c] = mm::grad_alpha<A>(alpha_p, s, c, g.cout, keep_alive);
            }
          }
          if (!g.time_masked()) return;
          // Gradient w.r.t. the time mask, then split over its two binarized factors: the
          // gradients w.r.t. the β mask and the γ mask.
          const A* ext = ptr_or_null<A>(ext_time);
          std::vector<A> grad_beta_mask(taps), grad_gamma_mask(taps);
          const A* beta_mask = mbeta.const_data_ptr<A>();
          const A* gamma_mask = mgamma.const_data_ptr<A>();
          for (int64_t k = 0; k < taps; ++k) {
            A s = ext ? ext[k] : A(0);
            if (part) {
              for (int64_t c = 0; c < g.cout; ++c) {
                s += part[c * taps + k] * (c_mask ? c_mask[c] : A(1));
              }
            }
            grad_beta_mask[k] = s * gamma_mask[k];
            grad_gamma_mask[k] = s * beta_mask[k];
          }
          if (g.has_beta) {
            const scalar_t* beta_p = beta.const_data_ptr<scalar_t>();
            A* out = g_beta.mutable_data_ptr<A>();
            for (int64_t j = 0; j < taps; ++j) {
              out[j] = mm::grad_beta<A>(beta_p, grad_beta_mask.data(), j, taps);
            }
          }
          if (g.has_gamma) {
            const scalar_t* gamma_p = gamma.const_data_ptr<scalar_t>();
            A* out = g_gamma.mutable_data_ptr<A>();
            for (int64_t q = 0; q < g.levels; ++q) {
              out[q] = mm::grad_gamma<A>(gamma_p, grad_gamma_mask.data(), q, taps, g.levels);
            }
          }
        });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(plinio, CPU, m) {
  m.impl("pit_masks", &pit_masks<CpuMaskKernels>);
  m.impl("pit_masks_backward", &pit_masks_backward<CpuMaskKernels>);
  m.impl("pit_masked_weight", &pit_masked_weight<CpuMaskKernels>);
  m.impl("pit_masked_weight_backward", &pit_masked_weight_backward<CpuMaskKernels>);
}

}  // namespace plinio
