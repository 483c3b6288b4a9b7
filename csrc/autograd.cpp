// Autograd formulas of the compiled plinio ops, registered for the Autograd dispatch key.
//
// They live in C++ (torchvision's pattern) rather than in Python: a Python autograd
// registration costs tens of microseconds per call, more than the kernels themselves
// for typical PIT layer weights. The formulas are the ones of plinio/ops/triton/autograd.py,
// which the Triton ops use:
//   combine:            grad_y_i = θ_i·r_i'(y_i)·g, grad_θ_i = <g, r_i(y_i)>, one pass
//                       (combine_backward; r_i the optional fused ReLU); the branches are
//                       saved only when θ needs a gradient or a ReLU mask needs them.
//   pit_masks / pit_masked_weight: straight-through masks; the weight/bias gradient is
//                       reduced into α/β/γ gradients in the same backward kernel.
// Double backward: the fused *_backward kernels give first derivatives only. When the
// backward must itself be differentiable (create_graph=True), the *_backward op runs through
// its Autograd kernel instead: the differentiable formulas of plinio/ops/double_backward.py,
// registered from Python by plinio/ops/_library.py.
//   compact_conv:       the compact layers of sparse execution; first derivatives only
//                       (a backward that builds a graph is refused, as by the Python path).
// The two ops of compiled CPU graphs (cpu/compiled_graph_ops_cpu.cpp): relu_backward is
// differentiable w.r.t. grad (itself; zero w.r.t. the output), dropout_noise not at all.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "compact_conv.h"
#include "op_handle.h"

namespace plinio {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;

at::Tensor or_absent(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? t : at::empty({0}, like.options());
}

at::Tensor if_needed(bool need, const at::Tensor& t) { return need ? t : at::Tensor(); }

OptTensor saved_opt(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// Whether a backward reading `tensors` must build a graph: grad mode is on (create_graph=True
// sets it during the backward) and one of them requires grad.
bool graph_needed(std::initializer_list<at::TensorList> groups) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::TensorList& group : groups) {
    for (const at::Tensor& t : group) {
      if (t.defined() && t.requires_grad()) return true;
    }
  }
  return false;
}

// Calls backward op `op`: through its Autograd kernel (the differentiable formulas) when
// `differentiable`, straight to the fused kernel otherwise.
template <typename Sig, typename... Args>
auto call_backward(const c10::TypedOperatorHandle<Sig>& op, bool differentiable, Args&&... args) {
  if (differentiable) {
    TORCH_CHECK(op.hasKernelForDispatchKey(c10::DispatchKey::Autograd), op.schema().name(),
                ": differentiating this backward (create_graph=True) needs the differentiable "
                "formulas that plinio.ops registers when it loads plinio._C; call the op "
                "through plinio.ops");
    return op.call(std::forward<Args>(args)...);
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(std::forward<Args>(args)...);
}

// needs_input_grad() counts only the tensor arguments that were present, so map the
// (possibly undefined) saved tensors, one per tensor argument, onto those indices.
std::vector<bool> needs_per_argument(AutogradContext* ctx, const variable_list& saved) {
  std::vector<bool> needs;
  size_t edge = 0;
  for (const auto& t : saved) needs.push_back(t.defined() ? ctx->needs_input_grad(edge++) : false);
  return needs;
}

// ------------------------------------------------------------------------------ combine

class CombineFunction : public torch::autograd::Function<CombineFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, at::TensorList branches, const at::Tensor& theta,
                            const c10::List<bool>& relu) {
    static auto op =
        op_handle<at::Tensor(at::TensorList, const at::Tensor&, const c10::List<bool>&)>(
            "plinio::combine");
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out = op.call(branches, theta, relu);
    bool any_relu = false;
    for (size_t i = 0; i < relu.size(); ++i) any_relu = any_relu || relu.get(i);
    std::vector<at::Tensor> saved{theta};
    if (theta.requires_grad() || any_relu) {
      saved.insert(saved.end(), branches.begin(), branches.end());
    }
    ctx->save_for_backward(saved);
    ctx->saved_data["n"] = static_cast<int64_t>(branches.size());
    ctx->saved_data["relu"] = relu;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    using Sig = std::tuple<std::vector<at::Tensor>, at::Tensor>(
        const at::Tensor&, at::TensorList, const at::Tensor&, const c10::List<bool>&, bool,
        const c10::List<bool>&);
    static auto op = op_handle<Sig>("plinio::combine_backward");
    const int64_t n = ctx->saved_data["n"].toInt();
    const c10::List<bool> relu = ctx->saved_data["relu"].toBoolList();
    variable_list saved = ctx->get_saved_variables();
    const at::Tensor theta = saved[0];
    std::vector<at::Tensor> branches(saved.begin() + 1, saved.end());
    c10::List<bool> needs;
    for (int64_t i = 0; i < n; ++i) needs.push_back(ctx->needs_input_grad(i));
    const bool theta_needs = ctx->needs_input_grad(n);
    const bool differentiable = graph_needed({grad_outputs, saved});
    auto [grads, theta_grad] = call_backward(op, differentiable, grad_outputs[0], branches, theta,
                                             needs, theta_needs, relu);
    variable_list out;
    for (int64_t i = 0; i < n; ++i) out.push_back(if_needed(needs.get(i), grads[i]));
    out.push_back(if_needed(theta_needs, theta_grad));
    out.push_back(at::Tensor());  // relu flags
    return out;
  }
};

// ---------------------------------------------------------------------------- pit_masks

class PitMasksFunction : public torch::autograd::Function<PitMasksFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const OptTensor& alpha, const OptTensor& beta,
                               const OptTensor& gamma, int64_t kernel_size, double threshold,
                               int64_t keep_alive) {
    using Sig = std::tuple<at::Tensor, at::Tensor>(const OptTensor&, const OptTensor&,
                                                   const OptTensor&, int64_t, double, int64_t);
    static auto op = op_handle<Sig>("plinio::pit_masks");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [channel, time] = op.call(alpha, beta, gamma, kernel_size, threshold, keep_alive);
    ctx->save_for_backward(
        {alpha.value_or(at::Tensor()), beta.value_or(at::Tensor()), gamma.value_or(at::Tensor())});
    ctx->saved_data["kernel_size"] = kernel_size;
    ctx->saved_data["threshold"] = threshold;
    ctx->saved_data["keep_alive"] = keep_alive;
    return {channel, time};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    using Sig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
        int64_t, double, int64_t);
    static auto op = op_handle<Sig>("plinio::pit_masks_backward");
    variable_list saved = ctx->get_saved_variables();
    const at::Tensor& like =
        saved[0].defined() ? saved[0] : (saved[1].defined() ? saved[1] : saved[2]);
    const bool differentiable = graph_needed({grads, saved});
    auto [ga, gb, gg] = call_backward(
        op, differentiable, or_absent(grads[0], like), or_absent(grads[1], like),
        saved_opt(saved[0]), saved_opt(saved[1]), saved_opt(saved[2]),
        ctx->saved_data["kernel_size"].toInt(), ctx->saved_data["threshold"].toDouble(),
        ctx->saved_data["keep_alive"].toInt());
    const std::vector<bool> need = needs_per_argument(ctx, saved);
    return {if_needed(need[0], ga), if_needed(need[1], gb), if_needed(need[2], gg),
            at::Tensor(),           at::Tensor(),           at::Tensor()};
  }
};

// -------------------------------------------------------------------- pit_masked_weight

class PitMaskedWeightFunction : public torch::autograd::Function<PitMaskedWeightFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& weight,
                               const OptTensor& bias, const OptTensor& alpha, const OptTensor& beta,
                               const OptTensor& gamma, double threshold, int64_t keep_alive) {
    using Sig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&,
        double, int64_t);
    static auto op = op_handle<Sig>("plinio::pit_masked_weight");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [w, b, channel, time] = op.call(weight, bias, alpha, beta, gamma, threshold, keep_alive);
    ctx->save_for_backward({weight, bias.value_or(at::Tensor()), alpha.value_or(at::Tensor()),
                            beta.value_or(at::Tensor()), gamma.value_or(at::Tensor())});
    ctx->saved_data["threshold"] = threshold;
    ctx->saved_data["keep_alive"] = keep_alive;
    return {w, b, channel, time};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    using Sig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
        const at::Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&,
        double, int64_t, bool, bool, bool);
    static auto op = op_handle<Sig>("plinio::pit_masked_weight_backward");
    variable_list saved = ctx->get_saved_variables();
    const at::Tensor& weight = saved[0];
    const std::vector<bool> need = needs_per_argument(ctx, saved);
    const bool w_need = need[0];
    const bool b_need = need[1];
    const bool p_need = need[2] || need[3] || need[4];
    const bool differentiable = graph_needed({grads, saved});
    auto [gw, gb, ga, gbeta, ggamma] =
        call_backward(op, differentiable, or_absent(grads[0], weight), or_absent(grads[1], weight),
                      or_absent(grads[2], weight), or_absent(grads[3], weight), weight,
                      saved_opt(saved[1]), saved_opt(saved[2]), saved_opt(saved[3]),
                      saved_opt(saved[4]), ctx->saved_data["threshold"].toDouble(),
                      ctx->saved_data["keep_alive"].toInt(), w_need, b_need, p_need);
    return {if_needed(w_need, gw),
            if_needed(b_need, gb),
            if_needed(need[2], ga),
            if_needed(need[3], gbeta),
            if_needed(need[4], ggamma),
            at::Tensor(),
            at::Tensor()};
  }
};

// ------------------------------------------------------------------------- compact_conv

class CompactConvFunction : public torch::autograd::Function<CompactConvFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const OptTensor& bias, const OptTensor& rows, const OptTensor& cols,
                            at::IntArrayRef stride, at::IntArrayRef padding_before,
                            at::IntArrayRef padding_after, at::IntArrayRef dilation, bool depthwise,
                            bool direct, const OptTensor& alpha, int64_t keep_alive) {
    at::AutoDispatchBelowADInplaceOrView guard;
    CompactConvForward forward =
        compact_conv_forward(input, weight, bias, rows, cols, stride, padding_before, padding_after,
                             dilation, depthwise, direct, alpha, keep_alive);
    ctx->save_for_backward({forward.input, forward.weight_block,
                            forward.bias_rows.value_or(at::Tensor()),
                            alpha.value_or(at::Tensor())});
    ctx->saved_data["rows"] = rows.has_value() ? c10::IValue(*rows) : c10::IValue();
    ctx->saved_data["cols"] = cols.has_value() ? c10::IValue(*cols) : c10::IValue();
    ctx->saved_data["weight_sizes"] = weight.sizes().vec();
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->saved_data["keep_alive"] = keep_alive;
    ctx->saved_data["stride"] = forward.geometry.stride;
    ctx->saved_data["padding_before"] = forward.geometry.padding_before;
    ctx->saved_data["padding_after"] = forward.geometry.padding_after;
    ctx->saved_data["dilation"] = forward.geometry.dilation;
    ctx->saved_data["depthwise"] = depthwise;
    ctx->saved_data["direct"] = direct;
    return forward.output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "plinio.fast.sparse_masked_conv: double backward (create_graph=True) is not "
                "supported by sparse execution; build the PIT / PITSuperNet wrapper with "
                "sparse=False (or set `.sparse = False`) for such steps (README \"Sparse "
                "execution\")");
    const variable_list saved = ctx->get_saved_variables();
    const auto index = [&](const char* key) {
      const c10::IValue& value = ctx->saved_data[key];
      return value.isNone() ? OptTensor() : OptTensor(value.toTensor());
    };
    const CompactConvGeometry geometry{ctx->saved_data["stride"].toIntVector(),
                                       ctx->saved_data["padding_before"].toIntVector(),
                                       ctx->saved_data["padding_after"].toIntVector(),
                                       ctx->saved_data["dilation"].toIntVector(),
                                       ctx->saved_data["depthwise"].toBool(),
                                       ctx->saved_data["direct"].toBool()};
    // needs_input_grad counts the tensor arguments given: the bias, when given, is the third,
    // alpha the last (after the bias, rows and cols that were given)
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const bool bias_grad = has_bias && ctx->needs_input_grad(2);
    const OptTensor rows = index("rows");
    const OptTensor cols = index("cols");
    const int64_t alpha_edge = 2 + has_bias + rows.has_value() + cols.has_value();
    std::optional<CompactConvMask> mask;
    if (saved[3].defined() && ctx->needs_input_grad(alpha_edge)) {
      mask = CompactConvMask{saved[3], ctx->saved_data["keep_alive"].toInt()};
    }
    auto [grad_input, grad_weight, grad_bias, grad_alpha] =
        compact_conv_backward(grads[0], saved[0], saved[1], saved_opt(saved[2]), rows, cols,
                              ctx->saved_data["weight_sizes"].toIntVector(), geometry, mask,
                              ctx->needs_input_grad(0), ctx->needs_input_grad(1), bias_grad);
    variable_list out{grad_input, grad_weight, grad_bias};
    out.resize(13);  // rows, cols and the non-tensor arguments have none
    out[11] = grad_alpha;
    return out;
  }
};

// ------------------------------------------------------------------------ relu_backward

// relu_backward is linear in grad and piecewise constant in the output: its derivative is
// relu_backward itself for grad and zero for the output (as for PyTorch's threshold_backward).
class ReluBackwardFunction : public torch::autograd::Function<ReluBackwardFunction> {
 public:
  using Sig = at::Tensor(const at::Tensor&, const at::Tensor&, std::optional<double>);

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& output,
                            std::optional<double> upper) {
    static auto op = op_handle<Sig>("plinio::relu_backward");
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor result = op.call(grad, output, upper);
    ctx->save_for_backward({output});
    ctx->saved_data["upper"] = upper.has_value() ? c10::IValue(*upper) : c10::IValue();
    return result;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = op_handle<Sig>("plinio::relu_backward");
    const c10::IValue upper = ctx->saved_data["upper"];
    const at::Tensor output = ctx->get_saved_variables()[0];
    at::Tensor grad_grad;
    if (grads[0].defined() && ctx->needs_input_grad(0)) {
      grad_grad = op.call(grads[0], output,
                          upper.isNone() ? std::nullopt : std::optional<double>(upper.toDouble()));
    }
    return {grad_grad, at::Tensor(), at::Tensor()};
  }
};

at::Tensor relu_backward_autograd(const at::Tensor& grad, const at::Tensor& output,
                                  std::optional<double> upper) {
  return ReluBackwardFunction::apply(grad, output, upper);
}

// dropout_noise depends on its input's shape only: no gradient flows through it.
at::Tensor dropout_noise_autograd(const at::Tensor& input, double p) {
  static auto op = op_handle<at::Tensor(const at::Tensor&, double)>("plinio::dropout_noise");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(input, p);
}

at::Tensor combine_autograd(at::TensorList branches, const at::Tensor& theta,
                            const c10::List<bool>& relu) {
  return CombineFunction::apply(branches, theta, relu);
}

std::tuple<at::Tensor, at::Tensor> pit_masks_autograd(const OptTensor& alpha, const OptTensor& beta,
                                                      const OptTensor& gamma, int64_t kernel_size,
                                                      double threshold, int64_t keep_alive) {
  auto out = PitMasksFunction::apply(alpha, beta, gamma, kernel_size, threshold, keep_alive);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pit_masked_weight_autograd(
    const at::Tensor& weight, const OptTensor& bias, const OptTensor& alpha, const OptTensor& beta,
    const OptTensor& gamma, double threshold, int64_t keep_alive) {
  auto out =
      PitMaskedWeightFunction::apply(weight, bias, alpha, beta, gamma, threshold, keep_alive);
  return {out[0], out[1], out[2], out[3]};
}

at::Tensor compact_conv_autograd(const at::Tensor& input, const at::Tensor& weight,
                                 const OptTensor& bias, const OptTensor& rows,
                                 const OptTensor& cols, at::IntArrayRef stride,
                                 at::IntArrayRef padding_before, at::IntArrayRef padding_after,
                                 at::IntArrayRef dilation, bool depthwise, bool direct,
                                 const OptTensor& alpha, int64_t keep_alive) {
  return CompactConvFunction::apply(input, weight, bias, rows, cols, stride, padding_before,
                                    padding_after, dilation, depthwise, direct, alpha, keep_alive);
}

}  // namespace

TORCH_LIBRARY_IMPL(plinio, Autograd, m) {
  m.impl("combine", &combine_autograd);
  m.impl("pit_masks", &pit_masks_autograd);
  m.impl("pit_masked_weight", &pit_masked_weight_autograd);
  m.impl("relu_backward", &relu_backward_autograd);
  m.impl("dropout_noise", &dropout_noise_autograd);
  m.impl("compact_conv", &compact_conv_autograd);
}

}  // namespace plinio
