// Schemas of the plinio op library (declared once, here) and the Python module init of
// plinio._C. Implementations register per device in cpu/ and cuda/, the autograd formulas in
// autograd.cpp; fake kernels and the differentiable backward formulas are registered from
// Python (plinio/ops/_library.py).
//
// Conventions: an absent optional result is returned as a numel-0 tensor; a numel-0
// gradient argument stands for a zero gradient.
#include <Python.h>
#include <torch/library.h>
#include <torch/version.h>

#include <string>

#include "cpu/cpu_loops.h"
#include "cpu/small_conv_loops.h"

namespace {
// Layout tag of the ops whose kernels take inputs of any strides (a copy is made where a loop
// needs another layout) and whose fake kernels give the results' strides for the strides they
// are called with: under torch.compile, inductor then hands over tensors in the layout it chose
// (channels_last around its convolutions on the CPU) instead of converting them first.
const std::vector<at::Tag> kAnyLayout{at::Tag::flexible_layout};
}  // namespace

TORCH_LIBRARY(plinio, m) {
  // y = Σ_i theta[i] * r_i(branches[i]), r_i = ReLU where relu[i] (relu: empty, or one flag
  // per branch; the fused ReLU is a CPU-kernel feature, other devices reject the flags)
  m.def("combine(Tensor[] branches, Tensor theta, bool[] relu=[]) -> Tensor", kAnyLayout);
  // (grad_branches[i] = theta[i] * r_i'(branches[i]) * grad,
  //  grad_theta[i] = <grad, r_i(branches[i])>), one pass.
  m.def(
      "combine_backward(Tensor grad, Tensor[] branches, Tensor theta, bool[] branch_needs_grad, "
      "bool theta_needs_grad, bool[] relu=[]) -> (Tensor[], Tensor)",
      kAnyLayout);
  // (channel_mask [Cout] or [0], time_mask [K] or [0]), binarized PIT masks.
  m.def(
      "pit_masks(Tensor? alpha, Tensor? beta, Tensor? gamma, int kernel_size, float threshold, "
      "int keep_alive) -> (Tensor, Tensor)",
      kAnyLayout);
  // (grad_alpha, grad_beta, grad_gamma) from the gradients of the two masks (STE).
  m.def(
      "pit_masks_backward(Tensor grad_channel_mask, Tensor grad_time_mask, Tensor? alpha, "
      "Tensor? beta, Tensor? gamma, int kernel_size, float threshold, int keep_alive) -> "
      "(Tensor, Tensor, Tensor)",
      kAnyLayout);
  // (masked_weight, masked_bias or [0], channel_mask or [0], time_mask or [0])
  m.def(
      "pit_masked_weight(Tensor weight, Tensor? bias, Tensor? alpha, Tensor? beta, "
      "Tensor? gamma, float threshold, int keep_alive) -> (Tensor, Tensor, Tensor, Tensor)",
      kAnyLayout);
  // (grad_weight, grad_bias, grad_alpha, grad_beta, grad_gamma); [0] where not requested.
  m.def(
      "pit_masked_weight_backward(Tensor grad_weight, Tensor grad_bias, "
      "Tensor grad_channel_mask, Tensor grad_time_mask, Tensor weight, Tensor? bias, "
      "Tensor? alpha, Tensor? beta, Tensor? gamma, float threshold, int keep_alive, "
      "bool weight_needs_grad, bool bias_needs_grad, bool params_need_grad) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor)",
      kAnyLayout);
  // The gradient of y = clamp(x, 0, upper) (ReLU when upper is None, ReLU6 with upper 6)
  // computed from the output y: grad where 0 < y (and y < upper), else 0. These are PyTorch's
  // own formulas (threshold_backward / hardtanh_backward) fed with y instead of x, which is
  // exact: y <= 0 exactly where x <= 0 and y >= upper exactly where x >= upper (NaN passes the
  // gradient in both). CPU kernel only (plinio/fast/compiled_activations.py).
  m.def("relu_backward(Tensor grad, Tensor output, float? upper=None) -> Tensor", kAnyLayout);
  // Eager CPU dropout's noise, drawn from the default generator as aten's dropout draws it:
  // empty_like(input).bernoulli_(1 - p).div_(1 - p), 0 < p < 1 (input * noise is the dropout).
  // Its strides are input's, so the graph must hand over input with the strides eager gives it.
  m.def("dropout_noise(Tensor input, float p) -> Tensor",
        {at::Tag::nondeterministic_seeded, at::Tag::needs_exact_strides});
  // Direct convolution for the few channels of a pruned layer (CPU, float32): any stride
  // (strided dimensions need dilation 1), any dilation at stride 1, groups, 1-D or 2-D, kernel
  // width <= 7, zero padding per side (negative: cropped). The result has the layout of the
  // tensor read (NCHW or channels_last). Used by sparse execution's compact convolutions
  // (plinio/fast/sparse_conv.py), not differentiable itself: the two ops below are its
  // gradients.
  m.def(
      "small_conv(Tensor input, Tensor weight, Tensor? bias, int[] stride, int[] padding_before, "
      "int[] padding_after, int[] dilation, int groups) -> Tensor");
  m.def(
      "small_conv_input_grad(Tensor grad, Tensor weight, int[] input_size, int[] stride, "
      "int[] padding_before, int[] padding_after, int[] dilation, int groups) -> Tensor");
  m.def(
      "small_conv_weight_grad(Tensor grad, Tensor input, int[] weight_size, int[] stride, "
      "int[] padding_before, int[] padding_after, int[] dilation, int groups) -> Tensor");
  // A compact layer of sparse execution: conv(input, weight[rows][:, cols], bias[rows]) with
  // zero padding per side (negative: cropped), groups 1 or depthwise (cols absent), 1-D or
  // 2-D, the input holding only the channels the block reads. Runs in channels_last (1-D:
  // memory (N, L, C)); `direct` runs plinio::small_conv. Its gradients are the weight's and
  // the bias's in their whole shape, zero outside the block (compact_conv.cpp, autograd.cpp).
  // With `alpha` (the layer's channel-mask parameter, whose kept channels are `rows`), the
  // weight and bias are the layer's own, unmasked (its mask is 1 on every row it computes),
  // and the op gives alpha the gradient pit_masked_weight would: sign(α) Σ grad·weight per
  // kept row (bias included), 0 on the last `keep_alive` rows and on the pruned rows.
  m.def(
      "compact_conv(Tensor input, Tensor weight, Tensor? bias, Tensor? rows, Tensor? cols, "
      "int[] stride, int[] padding_before, int[] padding_after, int[] dilation, bool depthwise, "
      "bool direct, Tensor? alpha=None, int keep_alive=0) -> Tensor");
  // (size [L], MACs [L]), float32: the costs of every layer of a PIT network with continuous
  // masks, from α of every channel masker, β and γ of every Conv1d (absent without one) and
  // the network's static tables (plinio/methods/pit/cost_model.py builds them; their order is
  // in cpu/pit_soft_costs_cpu.cpp). CPU only, not differentiable itself: the op below is its
  // gradient.
  m.def(
      "pit_soft_costs(Tensor alpha, Tensor? beta, Tensor? gamma, Tensor[] tables) -> (Tensor, "
      "Tensor)");
  // (grad_alpha, grad_beta, grad_gamma; [0] where beta / gamma are absent) for the gradients of
  // the two cost vectors.
  m.def(
      "pit_soft_costs_backward(Tensor grad_size, Tensor grad_macs, Tensor alpha, Tensor? beta, "
      "Tensor? gamma, Tensor[] tables) -> (Tensor, Tensor, Tensor)");
}

namespace {

// plinio._C.cpu_isa(): which copy of the CPU loops this process runs ("avx2" or "base").
PyObject* cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(plinio::cpu::use_avx2() ? "avx2" : "base");
}

// plinio._C.small_conv_isa(): which copy of plinio::small_conv's loops this process runs.
PyObject* small_conv_isa(PyObject*, PyObject*) {
  const char* isa = plinio::cpu::use_avx512() ? "avx512"
                    : plinio::cpu::use_avx2() ? "avx2"
                                              : "base";
  return PyUnicode_FromString(isa);
}

// plinio._C.torch_version(): the torch release this library was compiled against, which
// plinio/_extension.py compares with the running torch before using the library.
PyObject* torch_version(PyObject*, PyObject*) {
  const std::string version = std::to_string(TORCH_VERSION_MAJOR) + "." +
                              std::to_string(TORCH_VERSION_MINOR) + "." +
                              std::to_string(TORCH_VERSION_PATCH);
  return PyUnicode_FromString(version.c_str());
}

PyMethodDef module_methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS,
     "Instruction set of the CPU kernels' loops in this process: 'avx2' or 'base'."},
    {"small_conv_isa", small_conv_isa, METH_NOARGS,
     "Instruction set of plinio::small_conv's loops in this process: 'avx512', 'avx2' or 'base'."},
    {"torch_version", torch_version, METH_NOARGS,
     "The torch release (major.minor.patch) this library was compiled against."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

// `import plinio._C` loads this library, which runs the registrations above.
extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                          "plinio compiled op library (registers torch.ops.plinio)",
                                          -1, module_methods};
  return PyModule_Create(&module_def);
}
}
