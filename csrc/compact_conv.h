// The computations of plinio::compact_conv, the convolution of sparse execution's compact
// layers (plinio/fast/sparse_conv.py): its forward (compact_conv.cpp, also the op's
// CompositeExplicitAutograd kernel) and its backward (called by the autograd formula in
// autograd.cpp). Device-generic: they run aten's convolution, or plinio::small_conv on the CPU.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

namespace plinio {

// A zero-padded convolution of groups 1 or depthwise, 1-D or 2-D.
struct CompactConvGeometry {
  std::vector<int64_t> stride, padding_before, padding_after, dilation;
  bool depthwise;  // groups = channels (the weight is (C, 1, k...))
  bool direct;     // run plinio::small_conv (CPU, float32) instead of aten's convolution
};

// What the convolution read: the input in the layout the compact convolutions run in
// (channels_last; a 1-D tensor as one of height 1, memory (N, L, C)) and the weight block
// (rows, cols); and its output.
struct CompactConvForward {
  CompactConvGeometry geometry;
  at::Tensor input, weight_block, output;
  std::optional<at::Tensor> bias_rows;
};

// The layer's channel mask, for an op given the layer's unmasked weight (see the schema in
// plinio_ops.cpp): its parameter α and its number of keep-alive channels.
struct CompactConvMask {
  at::Tensor alpha;
  int64_t keep_alive;
};

// The op's forward: its arguments checked, the weight block and bias rows gathered (`rows` /
// `cols` absent: every row / column), the convolution. `alpha` (with `keep_alive`) is only
// checked here: it changes the gradients, not the values.
CompactConvForward compact_conv_forward(const at::Tensor& input, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias,
                                        const std::optional<at::Tensor>& rows,
                                        const std::optional<at::Tensor>& cols,
                                        at::IntArrayRef stride, at::IntArrayRef padding_before,
                                        at::IntArrayRef padding_after, at::IntArrayRef dilation,
                                        bool depthwise, bool direct,
                                        const std::optional<at::Tensor>& alpha, int64_t keep_alive);

// (input gradient, weight gradient, bias gradient, α gradient) for the output gradient
// `grad`, from the operands the forward read; the weight and bias gradients in the shape of
// the whole weight (`weight_sizes`: zeros outside the block), the α gradient (`mask` given)
// in α's. Undefined where not asked for.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> compact_conv_backward(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight_block,
    const std::optional<at::Tensor>& bias_rows, const std::optional<at::Tensor>& rows,
    const std::optional<at::Tensor>& cols, at::IntArrayRef weight_sizes,
    const CompactConvGeometry& geometry, const std::optional<CompactConvMask>& mask,
    bool input_grad, bool weight_grad, bool bias_grad);

}  // namespace plinio
