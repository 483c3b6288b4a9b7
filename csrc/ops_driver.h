// Device-independent host logic of the plinio ops: checks, layouts, allocation and the
// order of kernel calls. Each device provides two kernel structs with the primitives
// below (cpu/*.cpp, cuda/*.cu) and instantiates these drivers in its registrations.
//
// CombineKernels (kFusesRelu: whether they apply the per-branch ReLU r_i themselves; the
// driver rejects ReLU flags for kernels that do not):
//   forward(xs, relu, theta_acc, out)       out = Σ_i theta[i] * r_i(xs[i])   (same strides)
//   backward(grad, xs, relu, theta_acc, needs, grads, theta_grad_acc)
//       grads[i] = theta[i] * r_i'(xs[i]) * grad where needs[i];
//       theta_grad_acc[i] = <grad, r_i(xs[i])> when theta_grad_acc is defined (xs are empty
//       tensors where neither needs them).
// MaskKernels (all mask vectors in the accumulation type):
//   masks(geom, alpha, beta, gamma, threshold, keep_alive, cm, mbeta, mgamma, mtime)
//   apply(rows, cm, mtime, out)            out[c, r, k] = rows[c, r, k] * cm[c] * mtime[k]
//   reduce(grad, weight, cm, mtime, grad_out, partial)
//       grad_out = apply(grad) when defined; partial[c, k] = Σ_r grad * weight when defined
//   param_grads(geom, partial, grad_bias, bias, ext_cm, ext_time, alpha, beta, gamma,
//               cm, mtime, mbeta, mgamma, keep_alive, g_alpha, g_beta, g_gamma)
// An undefined tensor means "absent"; every tensor handed to a kernel is contiguous in
// the layout the driver chose.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/core/List.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "ops_common.h"

namespace plinio {

inline at::Tensor opt(const c10::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? *t : at::Tensor();
}

inline at::Tensor defined_or_absent(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? t : absent_like(like);
}

// A non-empty gradient, or undefined (numel-0 gradients stand for zero).
inline at::Tensor present(const at::Tensor& t) {
  return (t.defined() && t.numel() > 0) ? t : at::Tensor();
}

// ---------------------------------------------------------------------- combine

// combine's per-branch ReLU flags: `relu` is empty (no ReLU) or holds one flag per branch.
template <typename K>
std::vector<bool> relu_flags(const c10::List<bool>& relu, size_t n) {
  TORCH_CHECK(relu.size() == 0 || relu.size() == n,
              "plinio::combine: relu must be empty or hold one flag per branch (", n,
              " branches), got ", relu.size(), " flags");
  std::vector<bool> flags(n, false);
  for (size_t i = 0; i < relu.size(); ++i) flags[i] = relu.get(i);
  const bool any = std::find(flags.begin(), flags.end(), true) != flags.end();
  TORCH_CHECK(K::kFusesRelu || !any,
              "plinio::combine: the ReLU fusion is implemented by the CPU kernels only; on this "
              "device apply the ReLU to the branch before combining (plinio.ops.combine does)");
  return flags;
}

template <typename K>
at::Tensor combine_forward(at::TensorList branches, const at::Tensor& theta,
                           const c10::List<bool>& relu) {
  check_combine_inputs(branches, theta);
  const std::vector<bool> flags = relu_flags<K>(relu, branches.size());
  at::Tensor out = at::empty_like(branches[0]);
  if (out.numel() == 0) return out;
  std::vector<at::Tensor> xs = align_all_to(branches, out);
  at::Tensor th = theta.to(accumulate_type(out.scalar_type())).contiguous();
  K::forward(xs, flags, th, out);
  return out;
}

template <typename K>
std::tuple<std::vector<at::Tensor>, at::Tensor> combine_backward(
    const at::Tensor& grad, at::TensorList branches, const at::Tensor& theta,
    const c10::List<bool>& branch_needs_grad, bool theta_needs_grad, const c10::List<bool>& relu) {
  const size_t n = static_cast<size_t>(theta.size(0));
  TORCH_CHECK(branch_needs_grad.size() == n,
              "plinio::combine_backward: one branch_needs_grad flag per theta entry expected");
  const std::vector<bool> flags = relu_flags<K>(relu, n);
  // a branch is read for the theta gradient, and for its own gradient behind a ReLU
  std::vector<bool> read(n, theta_needs_grad);
  for (size_t i = 0; i < n; ++i) read[i] = read[i] || (flags[i] && branch_needs_grad.get(i));
  const bool any_read = std::find(read.begin(), read.end(), true) != read.end();
  TORCH_CHECK(!any_read || branches.size() == n,
              "plinio::combine_backward: the theta gradient and the ReLU gradients need all ", n,
              " branches");
  const at::ScalarType acc = accumulate_type(grad.scalar_type());
  // the layout of the results: grad's own when dense, else a dense copy of it (an expanded
  // grad); a template allocated for nothing would cost a page-faulted buffer per call. Not
  // the branches' layout: under torch.compile inductor may hand channels_last branches (the
  // flexible_layout tag) but checks the results against the strides it traced from grad.
  at::Tensor ref = grad.is_non_overlapping_and_dense() ? grad : at::empty_like(grad);
  at::Tensor g = align_to(grad, ref);
  std::vector<at::Tensor> xs;
  std::vector<at::Tensor> grads;
  std::vector<bool> needs;
  for (size_t i = 0; i < n; ++i) {
    const bool need = branch_needs_grad.get(i);
    xs.push_back(read[i] ? align_to(branches[i], ref) : at::Tensor());
    needs.push_back(need);
    grads.push_back(need ? at::empty_like(ref) : absent_like(grad));
  }
  at::Tensor th = theta.to(acc).contiguous();
  at::Tensor theta_grad_acc;
  if (theta_needs_grad) theta_grad_acc = at::zeros({theta.size(0)}, th.options());
  if (ref.numel() > 0) {
    K::backward(g, xs, flags, th, needs, grads, theta_grad_acc);
  }
  at::Tensor theta_grad =
      theta_needs_grad ? theta_grad_acc.to(theta.scalar_type()) : absent_like(theta);
  return {grads, theta_grad};
}

// ---------------------------------------------------------------------- PIT masks

struct MaskSet {
  at::Tensor cm, mbeta, mgamma, mtime;  // accumulation type; undefined when absent
};

template <typename K>
MaskSet compute_masks(const MaskGeometry& g, const at::Tensor& alpha, const at::Tensor& beta,
                      const at::Tensor& gamma, double threshold, int64_t keep_alive,
                      const at::TensorOptions& acc_opts) {
  MaskSet m;
  if (g.has_alpha) m.cm = at::empty({g.cout}, acc_opts);
  if (g.time_masked()) {
    m.mbeta = at::empty({g.taps}, acc_opts);
    m.mgamma = at::empty({g.taps}, acc_opts);
    m.mtime = at::empty({g.taps}, acc_opts);
  }
  K::masks(g, alpha, beta, gamma, threshold, keep_alive, m.cm, m.mbeta, m.mgamma, m.mtime);
  return m;
}

inline at::TensorOptions mask_acc_options(const at::Tensor& alpha, const at::Tensor& beta,
                                          const at::Tensor& gamma, const at::Tensor& fallback) {
  const at::Tensor& p = alpha.defined() ? alpha : (beta.defined() ? beta : gamma);
  const at::Tensor& src = p.defined() ? p : fallback;
  return src.options().dtype(accumulate_type(src.scalar_type()));
}

inline at::Tensor mask_output(const at::Tensor& m, const at::Tensor& param_like) {
  if (!m.defined()) return absent_like(param_like);
  return m.to(param_like.scalar_type());
}

template <typename K>
std::tuple<at::Tensor, at::Tensor> pit_masks(const c10::optional<at::Tensor>& alpha_,
                                             const c10::optional<at::Tensor>& beta_,
                                             const c10::optional<at::Tensor>& gamma_,
                                             int64_t kernel_size, double threshold,
                                             int64_t keep_alive) {
  at::Tensor alpha = opt(alpha_), beta = opt(beta_), gamma = opt(gamma_);
  TORCH_CHECK(alpha.defined() || beta.defined() || gamma.defined(),
              "plinio::pit_masks: give at least one of alpha, beta, gamma");
  const int64_t cout = alpha.defined() ? alpha.size(0) : 0;
  MaskGeometry g = check_mask_params(alpha_, beta_, gamma_, cout, kernel_size, keep_alive);
  const at::Tensor& like = alpha.defined() ? alpha : (beta.defined() ? beta : gamma);
  MaskSet m = compute_masks<K>(g, alpha, beta, gamma, threshold, keep_alive,
                               mask_acc_options(alpha, beta, gamma, like));
  return {mask_output(m.cm, like), mask_output(m.mtime, like)};
}

template <typename K>
std::tuple<at::Tensor, at::Tensor, at::Tensor> param_grads(
    const MaskGeometry& g, const MaskSet& m, const at::Tensor& partial, const at::Tensor& grad_bias,
    const at::Tensor& bias, const at::Tensor& ext_cm, const at::Tensor& ext_time,
    const at::Tensor& alpha, const at::Tensor& beta, const at::Tensor& gamma, int64_t keep_alive,
    const at::TensorOptions& acc_opts, const at::Tensor& absent_template) {
  at::Tensor ga, gb, gg;
  if (g.has_alpha) ga = at::empty({g.cout}, acc_opts);
  if (g.has_beta) gb = at::empty({g.taps}, acc_opts);
  if (g.has_gamma) gg = at::empty({g.levels}, acc_opts);
  auto acc_of = [&](const at::Tensor& t) {
    return t.defined() ? t.to(acc_opts.dtype()).contiguous() : t;
  };
  K::param_grads(g, partial, acc_of(grad_bias), acc_of(bias), acc_of(ext_cm), acc_of(ext_time),
                 alpha.defined() ? alpha.contiguous() : alpha,
                 beta.defined() ? beta.contiguous() : beta,
                 gamma.defined() ? gamma.contiguous() : gamma, m.cm, m.mtime, m.mbeta, m.mgamma,
                 keep_alive, ga, gb, gg);
  return {g.has_alpha ? ga.to(alpha.scalar_type()) : absent_like(absent_template),
          g.has_beta ? gb.to(beta.scalar_type()) : absent_like(absent_template),
          g.has_gamma ? gg.to(gamma.scalar_type()) : absent_like(absent_template)};
}

template <typename K>
std::tuple<at::Tensor, at::Tensor, at::Tensor> pit_masks_backward(
    const at::Tensor& grad_channel_mask, const at::Tensor& grad_time_mask,
    const c10::optional<at::Tensor>& alpha_, const c10::optional<at::Tensor>& beta_,
    const c10::optional<at::Tensor>& gamma_, int64_t kernel_size, double threshold,
    int64_t keep_alive) {
  at::Tensor alpha = opt(alpha_), beta = opt(beta_), gamma = opt(gamma_);
  TORCH_CHECK(alpha.defined() || beta.defined() || gamma.defined(),
              "plinio::pit_masks_backward: give at least one of alpha, beta, gamma");
  const int64_t cout = alpha.defined() ? alpha.size(0) : 0;
  MaskGeometry g = check_mask_params(alpha_, beta_, gamma_, cout, kernel_size, keep_alive);
  const at::Tensor& like = alpha.defined() ? alpha : (beta.defined() ? beta : gamma);
  at::TensorOptions acc_opts = mask_acc_options(alpha, beta, gamma, like);
  MaskSet m = compute_masks<K>(g, alpha, beta, gamma, threshold, keep_alive, acc_opts);
  return param_grads<K>(g, m, at::Tensor(), at::Tensor(), at::Tensor(), present(grad_channel_mask),
                        present(grad_time_mask), alpha, beta, gamma, keep_alive, acc_opts, like);
}

// Layer geometry of a weight: (Cout, taps of the time mask).
inline MaskGeometry weight_geometry(const at::Tensor& weight, const at::Tensor& bias,
                                    const c10::optional<at::Tensor>& alpha,
                                    const c10::optional<at::Tensor>& beta,
                                    const c10::optional<at::Tensor>& gamma, int64_t keep_alive) {
  TORCH_CHECK(weight.dim() >= 2 && weight.dim() <= 4,
              "plinio::pit_masked_weight: weight must be 2-D (Linear), 3-D (Conv1d) or 4-D "
              "(Conv2d), got shape ",
              weight.sizes());
  TORCH_CHECK(at::isFloatingType(weight.scalar_type()),
              "plinio::pit_masked_weight: weight must be floating point");
  const bool time = opt(beta).defined() || opt(gamma).defined();
  TORCH_CHECK(!time || weight.dim() == 3,
              "plinio::pit_masked_weight: beta/gamma (time masks) apply to Conv1d weights "
              "(3-D) only, got a weight of shape ",
              weight.sizes());
  if (bias.defined()) {
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0),
                "plinio::pit_masked_weight: bias must have shape [", weight.size(0), "], got ",
                bias.sizes());
    TORCH_CHECK(bias.scalar_type() == weight.scalar_type() && bias.device() == weight.device(),
                "plinio::pit_masked_weight: bias must match the weight's dtype and device");
  }
  for (const auto* p : {&alpha, &beta, &gamma}) {
    at::Tensor t = opt(*p);
    TORCH_CHECK(!t.defined() || t.device() == weight.device(),
                "plinio::pit_masked_weight: mask parameters must be on the weight's device ",
                weight.device(), ", got ", t.device());
    TORCH_CHECK(!t.defined() || t.scalar_type() == weight.scalar_type(),
                "plinio::pit_masked_weight: mask parameters must have the weight's dtype ",
                weight.scalar_type(), ", got ", t.scalar_type());
  }
  return check_mask_params(alpha, beta, gamma, weight.size(0), weight.size(-1), keep_alive);
}

// The weight viewed as rows [Cout, R, K'] in the working layout (K' = taps or 1).
inline at::Tensor working_weight(const at::Tensor& weight, bool time_masked) {
  return weight.contiguous(masked_weight_format(weight, time_masked));
}

template <typename K>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pit_masked_weight(
    const at::Tensor& weight, const c10::optional<at::Tensor>& bias_,
    const c10::optional<at::Tensor>& alpha_, const c10::optional<at::Tensor>& beta_,
    const c10::optional<at::Tensor>& gamma_, double threshold, int64_t keep_alive) {
  at::Tensor bias = opt(bias_), alpha = opt(alpha_), beta = opt(beta_), gamma = opt(gamma_);
  MaskGeometry g = weight_geometry(weight, bias, alpha_, beta_, gamma_, keep_alive);
  at::Tensor w = working_weight(weight, g.time_masked());
  at::TensorOptions acc_opts = mask_acc_options(alpha, beta, gamma, weight);
  MaskSet m = compute_masks<K>(g, alpha, beta, gamma, threshold, keep_alive, acc_opts);
  at::Tensor mw = at::empty(
      w.sizes(), w.options().memory_format(masked_weight_format(weight, g.time_masked())));
  if (w.numel() > 0) K::apply(w, m.cm, m.mtime, mw);
  at::Tensor mb = absent_like(weight);
  if (bias.defined()) {
    mb = at::empty_like(bias, at::MemoryFormat::Contiguous);
    K::apply(bias.contiguous().view({g.cout, 1}), m.cm, at::Tensor(), mb);
  }
  const at::Tensor& like =
      alpha.defined() ? alpha : (beta.defined() ? beta : (gamma.defined() ? gamma : weight));
  return {mw, mb, mask_output(m.cm, like), mask_output(m.mtime, like)};
}

template <typename K>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> pit_masked_weight_backward(
    const at::Tensor& grad_weight, const at::Tensor& grad_bias, const at::Tensor& grad_channel_mask,
    const at::Tensor& grad_time_mask, const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias_, const c10::optional<at::Tensor>& alpha_,
    const c10::optional<at::Tensor>& beta_, const c10::optional<at::Tensor>& gamma_,
    double threshold, int64_t keep_alive, bool weight_needs_grad, bool bias_needs_grad,
    bool params_need_grad) {
  at::Tensor bias = opt(bias_), alpha = opt(alpha_), beta = opt(beta_), gamma = opt(gamma_);
  MaskGeometry g = weight_geometry(weight, bias, alpha_, beta_, gamma_, keep_alive);
  at::TensorOptions acc_opts = mask_acc_options(alpha, beta, gamma, weight);
  MaskSet m = compute_masks<K>(g, alpha, beta, gamma, threshold, keep_alive, acc_opts);
  at::Tensor gw_in = present(grad_weight);
  at::Tensor gb_in = present(grad_bias);
  const bool any_param = g.has_alpha || g.has_beta || g.has_gamma;

  at::Tensor grad_w = absent_like(weight);
  at::Tensor partial;
  if (gw_in.defined() && (weight_needs_grad || (params_need_grad && any_param))) {
    const at::MemoryFormat fmt = masked_weight_format(weight, g.time_masked());
    at::Tensor w = weight.contiguous(fmt);
    at::Tensor gw = gw_in.contiguous(fmt);
    if (weight_needs_grad) grad_w = at::empty(w.sizes(), w.options().memory_format(fmt));
    if (params_need_grad && any_param) partial = at::empty({g.cout, g.taps}, acc_opts);
    if (w.numel() > 0) {
      K::reduce(gw, w, m.cm, m.mtime, weight_needs_grad ? grad_w : at::Tensor(), partial);
    } else if (partial.defined()) {
      partial.zero_();
    }
  } else if (weight_needs_grad) {
    grad_w =
        at::zeros(weight.sizes(),
                  weight.options().memory_format(masked_weight_format(weight, g.time_masked())));
  }

  at::Tensor grad_b = absent_like(weight);
  if (bias.defined() && bias_needs_grad) {
    grad_b = at::empty({g.cout}, bias.options());
    if (gb_in.defined()) {
      K::apply(gb_in.contiguous().view({g.cout, 1}), m.cm, at::Tensor(), grad_b);
    } else {
      grad_b.zero_();
    }
  }

  at::Tensor ga, gbeta, ggamma;
  if (params_need_grad && any_param) {
    std::tie(ga, gbeta, ggamma) = param_grads<K>(
        g, m, partial, bias.defined() ? gb_in : at::Tensor(), bias, present(grad_channel_mask),
        present(grad_time_mask), alpha, beta, gamma, keep_alive, acc_opts, weight);
  } else {
    ga = gbeta = ggamma = absent_like(weight);
  }
  return {grad_w, grad_b, ga, gbeta, ggamma};
}

}  // namespace plinio
