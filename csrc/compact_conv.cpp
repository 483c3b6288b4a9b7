// plinio::compact_conv: the convolution of a compact layer of sparse execution, whose input
// holds only its live channels and whose output only its kept rows
// (plinio/fast/sparse_conv.py). It gathers the weight block (rows, cols) and the bias rows,
// convolves, and its autograd formula (autograd.cpp) scatters the block's gradient back into
// the weight's shape. The whole layer runs in C++: the Python autograd function it replaces
// spent more time per call in Python than a pruned layer spends convolving.
//
// Device-generic: aten's convolution (a 1-D convolution runs as a 2-D one of height 1, on
// tensors laid out (N, L, C), so that channels_last needs no copy), or plinio::small_conv
// where the caller's rule says it is faster (plinio/fast/small_conv.py). Asymmetric or
// negative padding is applied to the input with constant_pad_nd (and cropped from its
// gradient), as F.pad does.
#include "compact_conv.h"

#include <torch/library.h>

#include "op_handle.h"

namespace plinio {
namespace {

constexpr const char* kOp = "plinio::compact_conv";

// The spatial arguments of the 2-D (lifted, for 1-D) aten call: `lead` prepended for the
// height-1 dimension of a lifted 1-D convolution.
std::vector<int64_t> lifted(at::IntArrayRef values, bool lift, int64_t lead) {
  std::vector<int64_t> out;
  if (lift) out.push_back(lead);
  out.insert(out.end(), values.begin(), values.end());
  return out;
}

bool symmetric(const CompactConvGeometry& g) {
  for (size_t i = 0; i < g.padding_before.size(); ++i) {
    if (g.padding_before[i] != g.padding_after[i] || g.padding_before[i] < 0) return false;
  }
  return true;
}

// constant_pad_nd's argument (last dimension first); `sign` -1 crops what +1 pads.
std::vector<int64_t> pad_spec(const CompactConvGeometry& g, int64_t sign) {
  std::vector<int64_t> spec;
  for (size_t i = g.padding_before.size(); i-- > 0;) {
    spec.push_back(sign * g.padding_before[i]);
    spec.push_back(sign * g.padding_after[i]);
  }
  return spec;
}

int64_t groups_of(const at::Tensor& weight, const CompactConvGeometry& g) {
  return g.depthwise ? weight.size(0) : 1;
}

std::vector<int64_t> output_sizes(const at::Tensor& input, const at::Tensor& weight,
                                  const CompactConvGeometry& g) {
  std::vector<int64_t> sizes{input.size(0), weight.size(0)};
  for (int64_t i = 0; i < input.dim() - 2; ++i) {
    const int64_t extent = g.dilation[i] * (weight.size(i + 2) - 1) + 1;
    sizes.push_back(
        (input.size(i + 2) + g.padding_before[i] + g.padding_after[i] - extent) / g.stride[i] + 1);
  }
  return sizes;
}

std::vector<int64_t> channel_sum_dims(const at::Tensor& t) {
  std::vector<int64_t> dims{0};
  for (int64_t d = 2; d < t.dim(); ++d) dims.push_back(d);
  return dims;
}

void check_index(const std::optional<at::Tensor>& index, const char* what, const at::Tensor& like,
                 int64_t size) {
  if (!index.has_value()) return;
  TORCH_CHECK(index->dim() == 1 && index->scalar_type() == at::kLong, kOp, ": ", what,
              " must be a 1-D int64 tensor of channel indices, got ", index->scalar_type(),
              " of shape ", index->sizes());
  TORCH_CHECK(index->device() == like.device(), kOp, ": ", what, " is on ", index->device(),
              " but the input is on ", like.device());
  TORCH_CHECK(index->numel() <= size, kOp, ": ", what, " has ", index->numel(), " indices for ",
              size, " channels");
}

// Whether a convolution of this weight and geometry is a strided 1×1 one without padding.
bool strided_pointwise(const at::Tensor& w, const CompactConvGeometry& g) {
  bool strided = false;
  for (size_t i = 0; i < g.stride.size(); ++i) {
    if (w.size(static_cast<int64_t>(i) + 2) != 1 || g.padding_before[i] != 0 ||
        g.padding_after[i] != 0)
      return false;
    strided = strided || g.stride[i] > 1;
  }
  return strided;
}

// The arguments of aten's (2-D) convolution for a compact one: a 1-D convolution lifted to
// height 1, asymmetric or negative padding applied to the input instead. A strided 1×1
// convolution reads the input's strided samples with stride 1 instead: oneDNN (3.12, in
// torch 2.13) writes out of bounds in the weight gradient of a strided 1×1 channels_last
// convolution on an odd batch with 2 threads (heap corruption, then a crash).
struct AtenConvArgs {
  bool lift, pad_input, subsample;
  at::Tensor input, weight;  // lifted; the input padded where pad_input, subsampled where subsample
  std::vector<int64_t> input_sizes;  // of the lifted, padded input before subsampling
  std::vector<int64_t> steps;        // the strides a subsampled input was read with
  std::vector<int64_t> stride, padding, dilation, output_padding;

  AtenConvArgs(const at::Tensor& x, const at::Tensor& w, const CompactConvGeometry& g)
      : lift(x.dim() == 3), pad_input(!symmetric(g)), subsample(strided_pointwise(w, g)) {
    input = lift ? x.unsqueeze(2) : x;
    weight = lift ? w.unsqueeze(2) : w;
    if (pad_input) input = at::constant_pad_nd(input, pad_spec(g, 1));
    stride = lifted(g.stride, lift, 1);
    input_sizes = input.sizes().vec();
    if (subsample) {
      steps = stride;
      input = samples(input).contiguous(input.suggest_memory_format());
      stride.assign(stride.size(), 1);
    }
    padding = lifted(
        pad_input ? std::vector<int64_t>(g.padding_before.size(), 0) : g.padding_before, lift, 0);
    dilation = lifted(g.dilation, lift, 1);
    output_padding.assign(stride.size(), 0);
  }

  // the samples a strided 1×1 convolution reads, of a tensor of the lifted input's sizes
  at::Tensor samples(const at::Tensor& t) const {
    at::Tensor out = t;
    for (size_t i = 0; i < steps.size(); ++i) {
      const int64_t dim = static_cast<int64_t>(i) + 2;
      out = out.slice(dim, 0, t.size(dim), steps[i]);
    }
    return out;
  }

  // the gradient of the caller's input from aten's gradient of what it convolved
  at::Tensor input_grad(const at::Tensor& gx, const CompactConvGeometry& g) const {
    at::Tensor grad = gx;
    if (subsample) {
      // at::empty honours the options' memory format, at::zeros does not (its schema has no
      // memory_format): a contiguous gradient here made every op after it in the backward
      // mix layouts with the channels_last tensors around it, several times slower
      grad = at::empty(input_sizes, gx.options().memory_format(gx.suggest_memory_format())).zero_();
      samples(grad).copy_(gx);
    }
    if (pad_input) grad = at::constant_pad_nd(grad, pad_spec(g, -1));
    return drop(grad);
  }

  // a result of the lifted call back in the caller's dimensions
  at::Tensor drop(const at::Tensor& t) const { return lift ? t.squeeze(2) : t; }
};

at::Tensor compact_layout(const at::Tensor& t) {
  if (t.dim() == 3) {
    return t.unsqueeze(2).contiguous(at::MemoryFormat::ChannelsLast).squeeze(2);
  }
  at::Tensor out = t.contiguous(at::MemoryFormat::ChannelsLast);
  if (out.size(1) == 1) {
    // one channel is contiguous and channels_last at once, and aten's convolutions then give
    // contiguous results: channels_last strides (a view) give channels_last ones
    out = out.as_strided(out.sizes(), {out.size(2) * out.size(3), 1, out.size(3), 1});
  }
  return out;
}

at::Tensor select_channels(const at::Tensor& t, int64_t dim,
                           const std::optional<at::Tensor>& index) {
  return index.has_value() ? t.index_select(dim, *index) : t;
}

// A tensor of `size` entries along `dim`: `values` at `index`, zeros elsewhere.
at::Tensor scatter_channels(const at::Tensor& values, int64_t dim,
                            const std::optional<at::Tensor>& index, int64_t size) {
  if (!index.has_value()) return values;
  std::vector<int64_t> sizes = values.sizes().vec();
  sizes[dim] = size;
  return at::zeros(sizes, values.options()).index_copy_(dim, *index, values);
}

// What the convolution reads (see CompactConvForward) and the bias rows.
struct CompactConvOperands {
  at::Tensor input, weight;
  std::optional<at::Tensor> bias;
};

CompactConvGeometry compact_conv_geometry(const at::Tensor& input, const at::Tensor& weight,
                                          at::IntArrayRef stride, at::IntArrayRef padding_before,
                                          at::IntArrayRef padding_after, at::IntArrayRef dilation,
                                          bool depthwise, bool direct) {
  TORCH_CHECK(input.dim() == 3 || input.dim() == 4, kOp,
              ": the input must be (N, C, L) or (N, C, H, W), got shape ", input.sizes());
  TORCH_CHECK(weight.dim() == input.dim(), kOp, ": a weight of shape ", weight.sizes(),
              " does not fit an input of shape ", input.sizes());
  const size_t n = static_cast<size_t>(input.dim() - 2);
  TORCH_CHECK(stride.size() == n && padding_before.size() == n && padding_after.size() == n &&
                  dilation.size() == n,
              kOp, ": a ", n, "-D convolution needs ", n,
              " values each of stride, padding_before, padding_after and dilation");
  return CompactConvGeometry{
      stride.vec(), padding_before.vec(), padding_after.vec(), dilation.vec(), depthwise, direct};
}

CompactConvOperands compact_conv_operands(const at::Tensor& input, const at::Tensor& weight,
                                          const std::optional<at::Tensor>& bias,
                                          const std::optional<at::Tensor>& rows,
                                          const std::optional<at::Tensor>& cols, bool depthwise) {
  check_index(rows, "rows", input, weight.size(0));
  check_index(cols, "cols", input, weight.size(1));
  TORCH_CHECK(!(depthwise && cols.has_value()), kOp,
              ": a depthwise convolution takes rows only (its weight has one column)");
  at::Tensor block = select_channels(select_channels(weight, 0, rows), 1, cols);
  const int64_t in_channels = depthwise ? block.size(0) : block.size(1);
  TORCH_CHECK(input.size(1) == in_channels, kOp, ": the input has ", input.size(1),
              " channels but the weight block reads ", in_channels,
              depthwise ? " (a depthwise convolution reads its kept rows)" : "");
  std::optional<at::Tensor> bias_rows;
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), kOp, ": a bias of shape ",
                bias->sizes(), " does not match ", weight.size(0), " output channels");
    bias_rows = select_channels(*bias, 0, rows);
  }
  return CompactConvOperands{compact_layout(input), block, bias_rows};
}

at::Tensor compact_conv_compute(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias,
                                const CompactConvGeometry& g) {
  if (input.size(1) == 0 || weight.size(0) == 0) {  // aten refuses zero channels
    at::Tensor out = compact_layout(at::zeros(output_sizes(input, weight, g), input.options()));
    if (!bias.has_value()) return out;
    std::vector<int64_t> shape(input.dim(), 1);
    shape[1] = -1;
    return out + bias->view(shape);
  }
  const int64_t groups = groups_of(weight, g);
  if (g.direct) {
    static auto op = op_handle<at::Tensor(
        const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, at::IntArrayRef,
        at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t)>("plinio::small_conv");
    return compact_layout(op.call(input, weight, bias, g.stride, g.padding_before, g.padding_after,
                                  g.dilation, groups));
  }
  const AtenConvArgs a(input, weight, g);
  return compact_layout(a.drop(at::convolution(a.input, a.weight, bias, a.stride, a.padding,
                                               a.dilation, false, a.output_padding, groups)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> compact_conv_compute_backward(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight,
    const CompactConvGeometry& g, bool input_grad, bool weight_grad, bool bias_grad) {
  at::Tensor grad_input, grad_weight, grad_bias;
  if (bias_grad) grad_bias = grad.sum(channel_sum_dims(grad));
  if (!input_grad && !weight_grad) return {grad_input, grad_weight, grad_bias};
  if (grad.size(1) == 0 || input.size(1) == 0) {
    if (input_grad) grad_input = at::zeros_like(input);
    if (weight_grad) grad_weight = at::zeros_like(weight);
    return {grad_input, grad_weight, grad_bias};
  }
  const int64_t groups = groups_of(weight, g);
  if (g.direct) {
    using Sig = at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                           at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t);
    static auto input_op = op_handle<Sig>("plinio::small_conv_input_grad");
    static auto weight_op = op_handle<Sig>("plinio::small_conv_weight_grad");
    if (input_grad) {
      grad_input = input_op.call(grad, weight, input.sizes(), g.stride, g.padding_before,
                                 g.padding_after, g.dilation, groups);
    }
    if (weight_grad) {
      grad_weight = weight_op.call(grad, input, weight.sizes(), g.stride, g.padding_before,
                                   g.padding_after, g.dilation, groups);
    }
    return {grad_input, grad_weight, grad_bias};
  }
  const AtenConvArgs a(input, weight, g);
  auto [gx, gw, unused] = at::convolution_backward(
      a.lift ? grad.unsqueeze(2) : grad, a.input, a.weight, std::nullopt, a.stride, a.padding,
      a.dilation, false, a.output_padding, groups, {input_grad, weight_grad, false});
  if (input_grad) grad_input = a.input_grad(gx, g);
  if (weight_grad) grad_weight = a.drop(gw);
  return {grad_input, grad_weight, grad_bias};
}

void check_mask(const std::optional<at::Tensor>& alpha, int64_t keep_alive,
                const at::Tensor& weight) {
  if (!alpha.has_value()) return;
  TORCH_CHECK(alpha->dim() == 1 && alpha->size(0) == weight.size(0), kOp,
              ": alpha must be the 1-D channel-mask parameter of the ", weight.size(0),
              " output channels, got shape ", alpha->sizes());
  TORCH_CHECK(alpha->scalar_type() == weight.scalar_type() && alpha->device() == weight.device(),
              kOp, ": alpha (", alpha->scalar_type(), " on ", alpha->device(),
              ") must have the weight's dtype and device (", weight.scalar_type(), " on ",
              weight.device(), "); run pit_masked_weight for mixed dtypes");
  TORCH_CHECK(keep_alive >= 0 && keep_alive <= weight.size(0), kOp, ": keep_alive must be in [0, ",
              weight.size(0), "], got ", keep_alive);
}

// The gradient pit_masked_weight gives α for the rows the block computes (the mask is 1
// there): sign(α_r) Σ grad·weight over the row (and its bias), zero on the keep-alive rows;
// on the other rows the layer's output gradient is 0 (a compact output), and so is α's.
at::Tensor alpha_grad(const at::Tensor& block_grad, const at::Tensor& weight_block,
                      const at::Tensor& rows_grad, const std::optional<at::Tensor>& bias_rows,
                      const std::optional<at::Tensor>& rows, const CompactConvMask& mask) {
  std::vector<int64_t> dims;
  for (int64_t d = 1; d < weight_block.dim(); ++d) dims.push_back(d);
  at::Tensor per_row = (block_grad * weight_block).sum(dims);
  if (bias_rows.has_value()) per_row.add_(rows_grad * *bias_rows);
  const int64_t channels = mask.alpha.size(0);
  at::Tensor grad = scatter_channels(per_row, 0, rows, channels).mul_(mask.alpha.sign());
  if (mask.keep_alive > 0) grad.narrow(0, channels - mask.keep_alive, mask.keep_alive).zero_();
  return grad;
}

}  // namespace

CompactConvForward compact_conv_forward(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& rows, const std::optional<at::Tensor>& cols,
    at::IntArrayRef stride, at::IntArrayRef padding_before, at::IntArrayRef padding_after,
    at::IntArrayRef dilation, bool depthwise, bool direct, const std::optional<at::Tensor>& alpha,
    int64_t keep_alive) {
  const CompactConvGeometry geometry = compact_conv_geometry(
      input, weight, stride, padding_before, padding_after, dilation, depthwise, direct);
  check_mask(alpha, keep_alive, weight);
  const CompactConvOperands operands =
      compact_conv_operands(input, weight, bias, rows, cols, depthwise);
  at::Tensor output =
      compact_conv_compute(operands.input, operands.weight, operands.bias, geometry);
  return {geometry, operands.input, operands.weight, output, operands.bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> compact_conv_backward(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight_block,
    const std::optional<at::Tensor>& bias_rows, const std::optional<at::Tensor>& rows,
    const std::optional<at::Tensor>& cols, at::IntArrayRef weight_sizes,
    const CompactConvGeometry& geometry, const std::optional<CompactConvMask>& mask,
    bool input_grad, bool weight_grad, bool bias_grad) {
  const bool mask_grad = mask.has_value();
  auto [grad_input, block_grad, rows_grad] = compact_conv_compute_backward(
      compact_layout(grad), input, weight_block, geometry, input_grad, weight_grad || mask_grad,
      bias_grad || (mask_grad && bias_rows.has_value()));
  at::Tensor grad_alpha;
  if (mask_grad) {
    grad_alpha = alpha_grad(block_grad, weight_block, rows_grad, bias_rows, rows, *mask);
  }
  at::Tensor grad_weight, grad_bias;
  if (weight_grad) {
    grad_weight = scatter_channels(scatter_channels(block_grad, 1, cols, weight_sizes[1]), 0, rows,
                                   weight_sizes[0]);
  }
  if (bias_grad) grad_bias = scatter_channels(rows_grad, 0, rows, weight_sizes[0]);
  return {grad_input, grad_weight, grad_bias, grad_alpha};
}

namespace {

// The op without autograd (inference mode, or below the Autograd key).
at::Tensor compact_conv(const at::Tensor& input, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias,
                        const std::optional<at::Tensor>& rows,
                        const std::optional<at::Tensor>& cols, at::IntArrayRef stride,
                        at::IntArrayRef padding_before, at::IntArrayRef padding_after,
                        at::IntArrayRef dilation, bool depthwise, bool direct,
                        const std::optional<at::Tensor>& alpha, int64_t keep_alive) {
  return compact_conv_forward(input, weight, bias, rows, cols, stride, padding_before,
                              padding_after, dilation, depthwise, direct, alpha, keep_alive)
      .output;
}

}  // namespace

TORCH_LIBRARY_IMPL(plinio, CompositeExplicitAutograd, m) { m.impl("compact_conv", &compact_conv); }

}  // namespace plinio
