// CPU kernels of plinio::relu_backward and plinio::dropout_noise, the two ops a compiled CPU
// graph of the fast path calls instead of the bool masks inductor would generate for a ReLU's
// backward and for a dropout (plinio/fast/compiled_activations.py). Both call the ATen
// kernels eager PyTorch runs, so their values are eager's bit for bit.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>

namespace plinio {
namespace {

at::Tensor relu_backward_cpu(const at::Tensor& grad, const at::Tensor& output,
                             std::optional<double> upper) {
  TORCH_CHECK(grad.sizes() == output.sizes(), "plinio::relu_backward: grad has shape ",
              grad.sizes(), " but the activation's output has shape ", output.sizes());
  TORCH_CHECK(grad.scalar_type() == output.scalar_type(), "plinio::relu_backward: grad is ",
              grad.scalar_type(), " but the activation's output is ", output.scalar_type());
  TORCH_CHECK(!upper.has_value() || *upper > 0, "plinio::relu_backward: upper must be positive (",
              "the clamp range is (0, upper)), got ", *upper);
  // the layout the fake kernel gives too, whatever strides the inputs have
  at::Tensor result = at::empty_like(grad);
  if (upper.has_value()) return at::hardtanh_backward_out(result, grad, output, 0, *upper);
  return at::threshold_backward_out(result, grad, output, 0);
}

at::Tensor dropout_noise_cpu(const at::Tensor& input, double p) {
  TORCH_CHECK(p > 0 && p < 1, "plinio::dropout_noise: p must be in (0, 1) (p = 0 and p = 1 need ",
              "no noise), got ", p);
  TORCH_CHECK(at::isFloatingType(input.scalar_type()),
              "plinio::dropout_noise: input must be floating point, got ", input.scalar_type());
  return at::empty_like(input).bernoulli_(1 - p).div_(1 - p);
}

}  // namespace

TORCH_LIBRARY_IMPL(plinio, CPU, m) {
  m.impl("relu_backward", &relu_backward_cpu);
  m.impl("dropout_noise", &dropout_noise_cpu);
}

}  // namespace plinio
