// CPU kernels of plinio::small_conv and its two gradients: a direct convolution (stride 1,
// groups 1, any dilation and zero padding, 1-D or 2-D, float32) for the compact channel sets
// of sparse execution (plinio/fast/sparse_conv.py), where oneDNN is slow at a few channels.
//
// The driver walks the batch in parallel; per sample it copies the input (any strides, any
// padding, negative = cropped) into a zero-padded dense scratch buffer, runs the loops of
// small_conv_loops.h on it, and writes the result in the layout of the tensor it read (NCHW or
// channels_last), so that no layout conversion is needed around it. 1-D tensors run as 2-D
// ones of height 1. The weight gradient is summed per fixed chunk of samples and the chunks in
// order, so results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <optional>
#include <vector>

#include "small_conv_loops.h"

namespace plinio {
namespace {

constexpr int64_t kSamplesPerChunk = 4;  // weight gradient: samples summed per parallel task

// The spatial part of a call, lifted to 2-D (a 1-D convolution is one of height 1).
struct Spatial {
  int64_t pad_top, pad_left, pad_bottom, pad_right;
  int64_t dh, dw;
};

Spatial spatial_args(const char* op, int64_t ndim, at::IntArrayRef before, at::IntArrayRef after,
                     at::IntArrayRef dilation) {
  TORCH_CHECK(before.size() == static_cast<size_t>(ndim) && after.size() == before.size() &&
                  dilation.size() == before.size(),
              op, ": a ", ndim, "-D convolution needs ", ndim,
              " values each of padding_before, padding_after and dilation; got ", before.size(),
              ", ", after.size(), " and ", dilation.size());
  for (int64_t d : dilation) TORCH_CHECK(d >= 1, op, ": dilation must be >= 1, got ", dilation);
  if (ndim == 1) return Spatial{0, before[0], 0, after[0], 1, dilation[0]};
  return Spatial{before[0], before[1], after[0], after[1], dilation[0], dilation[1]};
}

at::Tensor as_2d(const at::Tensor& t) { return t.dim() == 3 ? t.unsqueeze(2) : t; }

void check_tensor(const char* op, const char* what, const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", what, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", what, " must be float32, got ",
              t.scalar_type(), " (other dtypes run aten's convolution)");
  TORCH_CHECK(t.dim() == 3 || t.dim() == 4, op, ": ", what,
              " must be (N, C, L) or (N, C, H, W), got shape ", t.sizes());
}

void check_kernel(const char* op, int64_t kw) {
  TORCH_CHECK(kw >= 1 && kw <= cpu::kMaxKernelWidth, op, ": kernel width ", kw,
              " is not supported (1 to ", cpu::kMaxKernelWidth,
              "; wider kernels run aten's convolution)");
}

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// dst[c][top + r][left + j] = src[c][r][j] inside dst's [channels][rows][cols], zeros elsewhere.
void pack(const float* src, const int64_t* strides, int64_t channels, int64_t h, int64_t w,
          int64_t top, int64_t left, float* dst, int64_t rows, int64_t cols) {
  std::memset(dst, 0, sizeof(float) * channels * rows * cols);
  const int64_t r0 = std::max<int64_t>(0, -top), r1 = std::min<int64_t>(h, rows - top);
  const int64_t j0 = std::max<int64_t>(0, -left), j1 = std::min<int64_t>(w, cols - left);
  const int64_t sc = strides[0], sh = strides[1], sw = strides[2];
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* s = src + c * sc + r * sh;
      float* d = dst + (c * rows + top + r) * cols + left;
      if (sw == 1) {
        std::memcpy(d + j0, s + j0, sizeof(float) * std::max<int64_t>(0, j1 - j0));
      } else {
        for (int64_t j = j0; j < j1; ++j) d[j] = s[j * sw];
      }
    }
  }
}

// An output (N, C, H, W) in the layout of the 4-D tensor `like` (NCHW or channels_last).
at::Tensor empty_like_layout(const at::Tensor& like, at::IntArrayRef sizes) {
  return at::empty(sizes, like.options().memory_format(like.suggest_memory_format()));
}

// out = conv(x, w) + bias, stride 1, on lifted (4-D) tensors; w is dense [co][ci][kh][kw].
at::Tensor convolve(const at::Tensor& x, const at::Tensor& w, const float* bias,
                    const Spatial& sp) {
  const int64_t n = x.size(0), ci = x.size(1), h = x.size(2), wi = x.size(3);
  const int64_t co = w.size(0), kh = w.size(2), kw = w.size(3);
  const int64_t ho = h + sp.pad_top + sp.pad_bottom - sp.dh * (kh - 1);
  const int64_t wo = wi + sp.pad_left + sp.pad_right - sp.dw * (kw - 1);
  TORCH_CHECK(ho >= 1 && wo >= 1, "plinio::small_conv: the padded input (", h, " x ", wi,
              ") is smaller than the dilated kernel (", kh, " x ", kw, ")");
  at::Tensor out = empty_like_layout(x, {n, co, ho, wo});
  const auto& loops = cpu::small_conv_loops();
  const cpu::SmallConvShape s{ci, co, kh, kw, sp.dh, sp.dw, ho, round_up(wo, loops.lanes)};
  const int64_t in_strides[3] = {x.stride(1), x.stride(2), x.stride(3)};
  const int64_t osn = out.stride(0), osc = out.stride(1), osh = out.stride(2), osw = out.stride(3);
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> in(ci * s.hp() * s.wp()), res(co * ho * s.wv);
    for (int64_t b = begin; b < end; ++b) {
      pack(xp + b * x.stride(0), in_strides, ci, h, wi, sp.pad_top, sp.pad_left, in.data(), s.hp(),
           s.wp());
      loops.forward(s, in.data(), wp, res.data());
      for (int64_t c = 0; c < co; ++c) {
        const float add = bias != nullptr ? bias[c] : 0.f;
        for (int64_t r = 0; r < ho; ++r) {
          const float* src = res.data() + (c * ho + r) * s.wv;
          float* dst = op + b * osn + c * osc + r * osh;
          for (int64_t j = 0; j < wo; ++j) dst[j * osw] = src[j] + add;
        }
      }
    }
  });
  return out;
}

at::Tensor small_conv_cpu(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, at::IntArrayRef padding_before,
                          at::IntArrayRef padding_after, at::IntArrayRef dilation) {
  const char* op = "plinio::small_conv";
  check_tensor(op, "input", input);
  check_tensor(op, "weight", weight);
  TORCH_CHECK(weight.dim() == input.dim() && weight.size(1) == input.size(1), op,
              ": weight of shape ", weight.sizes(), " does not fit an input of shape ",
              input.sizes(), " (groups=1: weight (out, in, *kernel))");
  check_kernel(op, weight.size(-1));
  const float* b = nullptr;
  at::Tensor bias_c;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0) &&
                    bias->scalar_type() == at::kFloat && bias->device().is_cpu(),
                op, ": bias must be a float32 CPU vector of ", weight.size(0), " values, got ",
                bias->sizes());
    bias_c = bias->contiguous();
    b = bias_c.data_ptr<float>();
  }
  const Spatial sp = spatial_args(op, input.dim() - 2, padding_before, padding_after, dilation);
  at::Tensor out = convolve(as_2d(input), as_2d(weight).contiguous(), b, sp);
  return input.dim() == 3 ? out.squeeze(2) : out;
}

at::Tensor small_conv_input_grad_cpu(const at::Tensor& grad, const at::Tensor& weight,
                                     at::IntArrayRef input_size, at::IntArrayRef padding_before,
                                     at::IntArrayRef padding_after, at::IntArrayRef dilation) {
  const char* op = "plinio::small_conv_input_grad";
  check_tensor(op, "grad", grad);
  check_tensor(op, "weight", weight);
  TORCH_CHECK(weight.dim() == grad.dim() && weight.size(0) == grad.size(1) &&
                  input_size.size() == static_cast<size_t>(grad.dim()) &&
                  input_size[0] == grad.size(0) && input_size[1] == weight.size(1),
              op, ": grad ", grad.sizes(), ", weight ", weight.sizes(), " and input size ",
              input_size, " do not fit one convolution");
  check_kernel(op, weight.size(-1));
  const Spatial sp = spatial_args(op, grad.dim() - 2, padding_before, padding_after, dilation);
  const at::Tensor w = as_2d(weight);
  const int64_t kh = w.size(2), kw = w.size(3);
  // the gradient of a stride-1 convolution is the convolution of the gradient with the
  // flipped, transposed kernel, padded by the dilated kernel extent minus the padding
  const Spatial back{sp.dh * (kh - 1) - sp.pad_top,
                     sp.dw * (kw - 1) - sp.pad_left,
                     sp.dh * (kh - 1) - sp.pad_bottom,
                     sp.dw * (kw - 1) - sp.pad_right,
                     sp.dh,
                     sp.dw};
  at::Tensor out =
      convolve(as_2d(grad), w.flip({2, 3}).transpose(0, 1).contiguous(), nullptr, back);
  if (grad.dim() == 3) out = out.squeeze(2);
  TORCH_CHECK(out.sizes() == input_size, op, ": the gradient has shape ", out.sizes(),
              " but the input size given is ", input_size);
  return out;
}

at::Tensor small_conv_weight_grad_cpu(const at::Tensor& grad, const at::Tensor& input,
                                      at::IntArrayRef weight_size, at::IntArrayRef padding_before,
                                      at::IntArrayRef padding_after, at::IntArrayRef dilation) {
  const char* op = "plinio::small_conv_weight_grad";
  check_tensor(op, "grad", grad);
  check_tensor(op, "input", input);
  TORCH_CHECK(grad.dim() == input.dim() && grad.size(0) == input.size(0) &&
                  weight_size.size() == static_cast<size_t>(grad.dim()) &&
                  weight_size[0] == grad.size(1) && weight_size[1] == input.size(1),
              op, ": grad ", grad.sizes(), ", input ", input.sizes(), " and weight size ",
              weight_size, " do not fit one convolution");
  check_kernel(op, weight_size.back());
  const Spatial sp = spatial_args(op, grad.dim() - 2, padding_before, padding_after, dilation);
  const at::Tensor x = as_2d(input), g = as_2d(grad);
  const int64_t n = x.size(0), ci = x.size(1), co = g.size(1);
  const int64_t kh = grad.dim() == 3 ? 1 : weight_size[2], kw = weight_size.back();
  const int64_t ho = g.size(2), wo = g.size(3);
  TORCH_CHECK(ho == x.size(2) + sp.pad_top + sp.pad_bottom - sp.dh * (kh - 1) &&
                  wo == x.size(3) + sp.pad_left + sp.pad_right - sp.dw * (kw - 1),
              op, ": grad of shape ", grad.sizes(),
              " is not the output of a convolution of an input ", input.sizes(), " by a kernel ",
              weight_size, " with this padding and dilation");
  const auto& loops = cpu::small_conv_loops();
  const cpu::SmallConvShape s{ci, co, kh, kw, sp.dh, sp.dw, ho, round_up(wo, loops.lanes)};
  const int64_t taps = co * ci * kh * kw, lanes = loops.lanes;
  const int64_t chunks = (n + kSamplesPerChunk - 1) / kSamplesPerChunk;
  std::vector<float> partial(chunks * taps * lanes, 0.f);
  const int64_t x_strides[3] = {x.stride(1), x.stride(2), x.stride(3)};
  const int64_t g_strides[3] = {g.stride(1), g.stride(2), g.stride(3)};
  const float* xp = x.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> in(ci * s.hp() * s.wp()), gb(co * ho * s.wv);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t last = std::min(n, (chunk + 1) * kSamplesPerChunk);
      for (int64_t b = chunk * kSamplesPerChunk; b < last; ++b) {
        pack(xp + b * x.stride(0), x_strides, ci, x.size(2), x.size(3), sp.pad_top, sp.pad_left,
             in.data(), s.hp(), s.wp());
        pack(gp + b * g.stride(0), g_strides, co, ho, wo, 0, 0, gb.data(), ho, s.wv);
        loops.weight_grad(s, gb.data(), in.data(), partial.data() + chunk * taps * lanes);
      }
    }
  });
  at::Tensor out = at::zeros(weight_size, input.options());
  float* o = out.data_ptr<float>();
  for (int64_t chunk = 0; chunk < chunks; ++chunk)
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t l = 0; l < lanes; ++l) o[t] += partial[(chunk * taps + t) * lanes + l];
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(plinio, CPU, m) {
  m.impl("small_conv", &small_conv_cpu);
  m.impl("small_conv_input_grad", &small_conv_input_grad_cpu);
  m.impl("small_conv_weight_grad", &small_conv_weight_grad_cpu);
}

}  // namespace plinio
