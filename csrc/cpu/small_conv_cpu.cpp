// CPU kernels of plinio::small_conv and its two gradients: a direct convolution (any stride
// without dilation or any dilation at stride 1, groups, any zero padding, 1-D or 2-D, float32)
// for the compact channel sets of sparse execution (plinio/fast/sparse_conv.py), where oneDNN
// is slow at a few channels.
//
// The driver walks the batch in parallel; per sample it copies the input (any strides, any
// padding, negative = cropped) into a zero-padded dense scratch buffer, runs the loops of
// small_conv_loops.h on it, and writes the result in the layout of the tensor it read (NCHW or
// channels_last), so that no layout conversion is needed around it. 1-D tensors run as 2-D
// ones of height 1. The weight gradient is summed per fixed chunk of samples and the chunks in
// order, so results do not depend on the thread count.
//
// A strided convolution runs as a stride-1 one on the phase planes of its padded input
// (space to depth): with stride (sh, sw), plane (c, pr, pc) holds the padded rows sh*i + pr and
// columns sw*j + pc of channel c, and its kernel the taps (pr + sh*i, pc + sw*j), zero past the
// kernel. The loops then read contiguous rows; the zero taps cost work (a 3×3 kernel at stride
// 2 becomes four 2×2 ones: 16 products for 9), which the rule in plinio/fast/small_conv.py
// weighs. Groups run the loops once per group on its slice of the planes.
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

int64_t ceil_div(int64_t n, int64_t d) { return (n + d - 1) / d; }

int64_t round_up(int64_t n, int64_t m) { return ceil_div(n, m) * m; }

// The spatial part of a call, lifted to 2-D (a 1-D convolution is one of height 1).
struct Spatial {
  int64_t pad_top, pad_left, pad_bottom, pad_right;
  int64_t sh, sw;  // stride
  int64_t dh, dw;  // dilation
};

Spatial spatial_args(const char* op, int64_t ndim, at::IntArrayRef stride, at::IntArrayRef before,
                     at::IntArrayRef after, at::IntArrayRef dilation) {
  const size_t n = static_cast<size_t>(ndim);
  TORCH_CHECK(stride.size() == n && before.size() == n && after.size() == n && dilation.size() == n,
              op, ": a ", ndim, "-D convolution needs ", ndim,
              " values each of stride, padding_before, padding_after and dilation; got ",
              stride.size(), ", ", before.size(), ", ", after.size(), " and ", dilation.size());
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(stride[i] >= 1, op, ": stride must be >= 1, got ", stride);
    TORCH_CHECK(dilation[i] >= 1, op, ": dilation must be >= 1, got ", dilation);
    TORCH_CHECK(stride[i] == 1 || dilation[i] == 1, op, ": stride ", stride, " with dilation ",
                dilation,
                " is not supported (a strided dimension needs dilation 1; aten's "
                "convolution runs the others)");
  }
  if (ndim == 1) return Spatial{0, before[0], 0, after[0], 1, stride[0], 1, dilation[0]};
  return Spatial{before[0], before[1], after[0],    after[1],
                 stride[0], stride[1], dilation[0], dilation[1]};
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

void check_groups(const char* op, int64_t groups, int64_t in_channels, int64_t out_channels) {
  TORCH_CHECK(groups >= 1 && in_channels % groups == 0 && out_channels % groups == 0, op,
              ": groups=", groups, " must divide the ", in_channels, " input and ", out_channels,
              " output channels");
}

// What pack copies from one sample: padded[r][q] = src[r - top][q - left] inside the padded
// extent (height, width), zero elsewhere, taken in phase planes of stride (sh, sw).
struct Window {
  int64_t top, left;      // padding before (negative: cropped)
  int64_t height, width;  // the padded input's extent: nothing at or past it is read
  int64_t sh, sw;         // phase strides (1, 1: the padded input itself)
};

// dst plane (c*sh + pr)*sw + pc, of [rows][cols]: dst[i][j] = padded[c][sh*i + pr][sw*j + pc].
void pack(const float* src, const int64_t* strides, int64_t channels, int64_t h, int64_t w,
          const Window& win, float* dst, int64_t rows, int64_t cols) {
  std::memset(dst, 0, sizeof(float) * channels * win.sh * win.sw * rows * cols);
  const int64_t sc = strides[0], sy = strides[1], sx = strides[2];
  const int64_t h_end = std::min(h, win.height - win.top),
                w_end = std::min(w, win.width - win.left);
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t pr = 0; pr < win.sh; ++pr) {
      for (int64_t pc = 0; pc < win.sw; ++pc) {
        float* plane = dst + ((c * win.sh + pr) * win.sw + pc) * rows * cols;
        // source column of plane column j: sw*j + pc - left, kept in [0, w_end)
        const int64_t j0 = std::max<int64_t>(0, ceil_div(win.left - pc, win.sw));
        const int64_t j1 = std::min(cols, ceil_div(w_end + win.left - pc, win.sw));
        if (j1 <= j0) continue;
        const int64_t i0 = std::max<int64_t>(0, ceil_div(win.top - pr, win.sh));
        const int64_t i1 = std::min(rows, ceil_div(h_end + win.top - pr, win.sh));
        for (int64_t i = i0; i < i1; ++i) {
          const float* s =
              src + c * sc + (win.sh * i + pr - win.top) * sy + (win.sw * j0 + pc - win.left) * sx;
          float* d = plane + i * cols + j0;
          if (win.sw == 1 && sx == 1) {
            std::memcpy(d, s, sizeof(float) * (j1 - j0));
          } else {
            for (int64_t j = 0; j < j1 - j0; ++j) d[j] = s[j * win.sw * sx];
          }
        }
      }
    }
  }
}

// The kernel of the phase planes: [co][cig][kh][kw] -> [co][cig*sh*sw][ceil(kh/sh)][ceil(kw/sw)],
// plane (c, pr, pc) holding the taps (pr + sh*i, pc + sw*j) and zeros past the kernel.
at::Tensor phase_kernel(const at::Tensor& w, int64_t sh, int64_t sw) {
  if (sh == 1 && sw == 1) return w.contiguous();
  const int64_t co = w.size(0), cig = w.size(1), kh = w.size(2), kw = w.size(3);
  const int64_t ph = ceil_div(kh, sh), pw = ceil_div(kw, sw);
  return at::constant_pad_nd(w, {0, pw * sw - kw, 0, ph * sh - kh})
      .view({co, cig, ph, sh, pw, sw})
      .permute({0, 1, 3, 5, 2, 4})
      .reshape({co, cig * sh * sw, ph, pw})
      .contiguous();
}

// The inverse of phase_kernel for a gradient: the taps of the [kh][kw] kernel only.
at::Tensor unphase_kernel(const at::Tensor& g, int64_t kh, int64_t kw, int64_t sh, int64_t sw) {
  if (sh == 1 && sw == 1) return g;
  const int64_t co = g.size(0), cig = g.size(1) / (sh * sw), ph = g.size(2), pw = g.size(3);
  return g.view({co, cig, sh, sw, ph, pw})
      .permute({0, 1, 4, 2, 5, 3})
      .reshape({co, cig, ph * sh, pw * sw})
      .slice(2, 0, kh)
      .slice(3, 0, kw)
      .contiguous();
}

// The stride-1 problem the loops run per group: `ci` input and `co` output channels per group
// (phase planes included), a kh × kw kernel.
struct Problem {
  cpu::SmallConvShape shape;  // one group's
  int64_t groups;
  int64_t in_plane() const { return shape.hp() * shape.wp(); }
  int64_t out_plane() const { return shape.ho * shape.wv; }
};

Problem problem(int64_t ci, int64_t co, int64_t kh, int64_t kw, int64_t groups, int64_t dh,
                int64_t dw, int64_t ho, int64_t wo) {
  const auto& loops = cpu::small_conv_loops();
  return Problem{{ci, co, kh, kw, dh, dw, ho, round_up(wo, loops.lanes)}, groups};
}

// The problem of convolving with `w` ([co][ci/groups][kh][kw], a phase kernel).
Problem problem_of(const at::Tensor& w, int64_t groups, int64_t dh, int64_t dw, int64_t ho,
                   int64_t wo) {
  return problem(w.size(1), w.size(0) / groups, w.size(2), w.size(3), groups, dh, dw, ho, wo);
}

// Per sample b of x: pack it through `win`, run the forward loops of every group, and hand the
// result [co][ho][wv] to emit(b, result).
template <typename Emit>
void convolve(const at::Tensor& x, const Window& win, const at::Tensor& w, const Problem& p,
              Emit emit) {
  const auto& loops = cpu::small_conv_loops();
  const cpu::SmallConvShape& s = p.shape;
  const int64_t n = x.size(0), ci = x.size(1), co = s.co * p.groups;
  const int64_t strides[3] = {x.stride(1), x.stride(2), x.stride(3)};
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> in(s.ci * p.groups * p.in_plane()), res(co * p.out_plane());
    for (int64_t b = begin; b < end; ++b) {
      pack(xp + b * x.stride(0), strides, ci, x.size(2), x.size(3), win, in.data(), s.hp(), s.wp());
      for (int64_t g = 0; g < p.groups; ++g)
        loops.forward(s, in.data() + g * s.ci * p.in_plane(), wp + g * s.co * s.ci * s.kh * s.kw,
                      res.data() + g * s.co * p.out_plane());
      emit(b, res.data());
    }
  });
}

// An output (N, C, H, W) in the layout of the 4-D tensor `like` (NCHW or channels_last).
at::Tensor empty_like_layout(const at::Tensor& like, at::IntArrayRef sizes) {
  return at::empty(sizes, like.options().memory_format(like.suggest_memory_format()));
}

// The output size of one dimension, checked.
int64_t output_size(int64_t n, int64_t before, int64_t after, int64_t k, int64_t stride,
                    int64_t dilation) {
  const int64_t extent = n + before + after - dilation * (k - 1);
  TORCH_CHECK(extent >= 1, "plinio::small_conv: the padded input (", n + before + after,
              ") is smaller than the dilated kernel (", dilation * (k - 1) + 1, ")");
  return (extent - 1) / stride + 1;
}

at::Tensor small_conv_cpu(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                          at::IntArrayRef padding_before, at::IntArrayRef padding_after,
                          at::IntArrayRef dilation, int64_t groups) {
  const char* op = "plinio::small_conv";
  check_tensor(op, "input", input);
  check_tensor(op, "weight", weight);
  check_groups(op, groups, input.size(1), weight.size(0));
  TORCH_CHECK(weight.dim() == input.dim() && weight.size(1) * groups == input.size(1), op,
              ": weight of shape ", weight.sizes(), " does not fit an input of shape ",
              input.sizes(), " with groups=", groups, " (weight (out, in / groups, *kernel))");
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
  const Spatial sp =
      spatial_args(op, input.dim() - 2, stride, padding_before, padding_after, dilation);
  const at::Tensor x = as_2d(input), w = as_2d(weight);
  const int64_t h = x.size(2), wi = x.size(3), kh = w.size(2), kw = w.size(3);
  const int64_t ho = output_size(h, sp.pad_top, sp.pad_bottom, kh, sp.sh, sp.dh);
  const int64_t wo = output_size(wi, sp.pad_left, sp.pad_right, kw, sp.sw, sp.dw);
  const at::Tensor wph = phase_kernel(w, sp.sh, sp.sw);
  const Problem p = problem_of(wph, groups, sp.dh, sp.dw, ho, wo);
  const Window win{
      sp.pad_top, sp.pad_left, h + sp.pad_top + sp.pad_bottom, wi + sp.pad_left + sp.pad_right,
      sp.sh,      sp.sw};
  const int64_t co = w.size(0);
  at::Tensor out = empty_like_layout(x, {x.size(0), co, ho, wo});
  const int64_t osn = out.stride(0), osc = out.stride(1), osh = out.stride(2), osw = out.stride(3);
  float* op_ = out.data_ptr<float>();
  convolve(x, win, wph, p, [&](int64_t n, const float* res) {
    for (int64_t c = 0; c < co; ++c) {
      const float add = b != nullptr ? b[c] : 0.f;
      for (int64_t r = 0; r < ho; ++r) {
        const float* src = res + (c * ho + r) * p.shape.wv;
        float* dst = op_ + n * osn + c * osc + r * osh;
        for (int64_t j = 0; j < wo; ++j) dst[j * osw] = src[j] + add;
      }
    }
  });
  return input.dim() == 3 ? out.squeeze(2) : out;
}

// The flipped, transposed kernel that convolves the output gradient into the input gradient:
// [co][cig][kh][kw] (groups) -> [cig * groups][co / groups][kh][kw].
at::Tensor transposed_kernel(const at::Tensor& w, int64_t groups) {
  const int64_t co = w.size(0), cig = w.size(1), kh = w.size(2), kw = w.size(3);
  return w.flip({2, 3})
      .view({groups, co / groups, cig, kh, kw})
      .transpose(1, 2)
      .reshape({groups * cig, co / groups, kh, kw})
      .contiguous();
}

// Where each input position of one dimension finds its gradient in the planes of
// small_conv_input_grad: the offset of its plane and row (or column), -1 where nothing reads it.
// A dimension of stride 1 was cropped to the input by the convolution (position r is row r);
// a strided one holds every phase plane in full, from padded position 0.
std::vector<int64_t> gradient_offsets(int64_t n, int64_t pad_before, int64_t padded, int64_t stride,
                                      int64_t rows, int64_t phase_step, int64_t row_step) {
  std::vector<int64_t> offsets(n, -1);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t q = stride == 1 ? r : r + pad_before;
    if (q < 0 || q / stride >= rows || (stride > 1 && q >= padded)) continue;
    offsets[r] = (q % stride) * phase_step + (q / stride) * row_step;
  }
  return offsets;
}

at::Tensor small_conv_input_grad_cpu(const at::Tensor& grad, const at::Tensor& weight,
                                     at::IntArrayRef input_size, at::IntArrayRef stride,
                                     at::IntArrayRef padding_before, at::IntArrayRef padding_after,
                                     at::IntArrayRef dilation, int64_t groups) {
  const char* op = "plinio::small_conv_input_grad";
  check_tensor(op, "grad", grad);
  check_tensor(op, "weight", weight);
  TORCH_CHECK(weight.dim() == grad.dim() && weight.size(0) == grad.size(1) &&
                  input_size.size() == static_cast<size_t>(grad.dim()) &&
                  input_size[0] == grad.size(0) && input_size[1] == weight.size(1) * groups,
              op, ": grad ", grad.sizes(), ", weight ", weight.sizes(), " and input size ",
              input_size, " do not fit one convolution with groups=", groups);
  check_groups(op, groups, input_size[1], weight.size(0));
  check_kernel(op, weight.size(-1));
  const Spatial sp =
      spatial_args(op, grad.dim() - 2, stride, padding_before, padding_after, dilation);
  const at::Tensor g = as_2d(grad), w = as_2d(weight);
  const int64_t h = grad.dim() == 4 ? input_size[2] : 1, wi = input_size.back();
  const int64_t kh = w.size(2), kw = w.size(3), ho = g.size(2), wo = g.size(3);
  TORCH_CHECK(ho == output_size(h, sp.pad_top, sp.pad_bottom, kh, sp.sh, sp.dh) &&
                  wo == output_size(wi, sp.pad_left, sp.pad_right, kw, sp.sw, sp.dw),
              op, ": grad of shape ", grad.sizes(),
              " is not the output of a convolution of an input ", input_size, " by a kernel ",
              weight.sizes(), " with this stride, padding and dilation");
  // The gradient of the phase planes is the stride-1 convolution of grad with the flipped,
  // transposed phase kernel, padded by the dilated kernel extent: minus the forward's padding
  // in a dimension of stride 1 (which crops it to the input), in full in a strided one.
  const at::Tensor wph = phase_kernel(w, sp.sh, sp.sw);
  const int64_t ext_h = sp.dh * (wph.size(2) - 1), ext_w = sp.dw * (wph.size(3) - 1);
  const int64_t rows = sp.sh == 1 ? h : ho + ext_h, cols = sp.sw == 1 ? wi : wo + ext_w;
  const Window win{ext_h - (sp.sh == 1 ? sp.pad_top : 0),
                   ext_w - (sp.sw == 1 ? sp.pad_left : 0),
                   rows + ext_h,
                   cols + ext_w,
                   1,
                   1};
  const at::Tensor wt = transposed_kernel(wph, groups);
  const Problem p = problem_of(wt, groups, sp.dh, sp.dw, rows, cols);
  const std::vector<int64_t> row_off =
      gradient_offsets(h, sp.pad_top, h + sp.pad_top + sp.pad_bottom, sp.sh, rows,
                       sp.sw * rows * p.shape.wv, p.shape.wv);
  const std::vector<int64_t> col_off = gradient_offsets(
      wi, sp.pad_left, wi + sp.pad_left + sp.pad_right, sp.sw, cols, rows * p.shape.wv, 1);
  const int64_t ci = input_size[1], channel_step = sp.sh * sp.sw * rows * p.shape.wv;
  at::Tensor out = empty_like_layout(g, {g.size(0), ci, h, wi});
  const int64_t osn = out.stride(0), osc = out.stride(1), osh = out.stride(2), osw = out.stride(3);
  float* op_ = out.data_ptr<float>();
  convolve(g, win, wt, p, [&](int64_t n, const float* res) {
    for (int64_t c = 0; c < ci; ++c) {
      for (int64_t r = 0; r < h; ++r) {
        float* dst = op_ + n * osn + c * osc + r * osh;
        if (row_off[r] < 0) {
          for (int64_t j = 0; j < wi; ++j) dst[j * osw] = 0.f;
          continue;
        }
        const float* src = res + c * channel_step + row_off[r];
        if (sp.sw == 1) {  // column j is column j of the plane
          for (int64_t j = 0; j < wi; ++j) dst[j * osw] = src[j];
        } else {
          for (int64_t j = 0; j < wi; ++j) dst[j * osw] = col_off[j] >= 0 ? src[col_off[j]] : 0.f;
        }
      }
    }
  });
  return grad.dim() == 3 ? out.squeeze(2) : out;
}

at::Tensor small_conv_weight_grad_cpu(const at::Tensor& grad, const at::Tensor& input,
                                      at::IntArrayRef weight_size, at::IntArrayRef stride,
                                      at::IntArrayRef padding_before, at::IntArrayRef padding_after,
                                      at::IntArrayRef dilation, int64_t groups) {
  const char* op = "plinio::small_conv_weight_grad";
  check_tensor(op, "grad", grad);
  check_tensor(op, "input", input);
  TORCH_CHECK(grad.dim() == input.dim() && grad.size(0) == input.size(0) &&
                  weight_size.size() == static_cast<size_t>(grad.dim()) &&
                  weight_size[0] == grad.size(1) && weight_size[1] * groups == input.size(1),
              op, ": grad ", grad.sizes(), ", input ", input.sizes(), " and weight size ",
              weight_size, " do not fit one convolution with groups=", groups);
  check_groups(op, groups, input.size(1), grad.size(1));
  check_kernel(op, weight_size.back());
  const Spatial sp =
      spatial_args(op, grad.dim() - 2, stride, padding_before, padding_after, dilation);
  const at::Tensor x = as_2d(input), g = as_2d(grad);
  const int64_t n = x.size(0), ci = x.size(1), co = g.size(1);
  const int64_t kh = grad.dim() == 3 ? 1 : weight_size[2], kw = weight_size.back();
  const int64_t ho = g.size(2), wo = g.size(3);
  TORCH_CHECK(ho == output_size(x.size(2), sp.pad_top, sp.pad_bottom, kh, sp.sh, sp.dh) &&
                  wo == output_size(x.size(3), sp.pad_left, sp.pad_right, kw, sp.sw, sp.dw),
              op, ": grad of shape ", grad.sizes(),
              " is not the output of a convolution of an input ", input.sizes(), " by a kernel ",
              weight_size, " with this stride, padding and dilation");
  const auto& loops = cpu::small_conv_loops();
  const int64_t cig = ci / groups, kph = ceil_div(kh, sp.sh), kpw = ceil_div(kw, sp.sw);
  const Problem p =
      problem(cig * sp.sh * sp.sw, co / groups, kph, kpw, groups, sp.dh, sp.dw, ho, wo);
  const cpu::SmallConvShape& s = p.shape;
  const Window win{sp.pad_top,
                   sp.pad_left,
                   x.size(2) + sp.pad_top + sp.pad_bottom,
                   x.size(3) + sp.pad_left + sp.pad_right,
                   sp.sh,
                   sp.sw};
  const Window whole{0, 0, ho, wo, 1, 1};
  const int64_t group_taps = s.co * s.ci * kph * kpw, taps = group_taps * groups;
  const int64_t lanes = loops.lanes;
  const int64_t chunks = ceil_div(n, kSamplesPerChunk);
  std::vector<float> partial(chunks * taps * lanes, 0.f);
  const int64_t x_strides[3] = {x.stride(1), x.stride(2), x.stride(3)};
  const int64_t g_strides[3] = {g.stride(1), g.stride(2), g.stride(3)};
  const float* xp = x.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> in(s.ci * groups * p.in_plane()), gb(co * p.out_plane());
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t last = std::min(n, (chunk + 1) * kSamplesPerChunk);
      for (int64_t b = chunk * kSamplesPerChunk; b < last; ++b) {
        pack(xp + b * x.stride(0), x_strides, ci, x.size(2), x.size(3), win, in.data(), s.hp(),
             s.wp());
        pack(gp + b * g.stride(0), g_strides, co, ho, wo, whole, gb.data(), ho, s.wv);
        for (int64_t grp = 0; grp < groups; ++grp)
          loops.weight_grad(s, gb.data() + grp * s.co * p.out_plane(),
                            in.data() + grp * s.ci * p.in_plane(),
                            partial.data() + (chunk * taps + grp * group_taps) * lanes);
      }
    }
  });
  at::Tensor out = at::zeros({co, s.ci, kph, kpw}, input.options());
  float* o = out.data_ptr<float>();
  for (int64_t chunk = 0; chunk < chunks; ++chunk)
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t l = 0; l < lanes; ++l) o[t] += partial[(chunk * taps + t) * lanes + l];
  return unphase_kernel(out, kh, kw, sp.sh, sp.sw).view(weight_size);
}

}  // namespace

TORCH_LIBRARY_IMPL(plinio, CPU, m) {
  m.impl("small_conv", &small_conv_cpu);
  m.impl("small_conv_input_grad", &small_conv_input_grad_cpu);
  m.impl("small_conv_weight_grad", &small_conv_weight_grad_cpu);
}

}  // namespace plinio
