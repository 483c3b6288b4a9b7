// Host-side helpers shared by the CPU and CUDA implementations: input checks, memory
// layouts and output allocation. The kernels themselves live in cpu/ and cuda/.
#pragma once

#include <ATen/ATen.h>

#include <vector>

// `#pragma omp simd` spelled so it may sit inside macro arguments (AT_DISPATCH bodies).
#define PLINIO_PRAGMA(x) _Pragma(#x)
#define PLINIO_SIMD PLINIO_PRAGMA(omp simd)
#define PLINIO_SIMD_SUM(var) PLINIO_PRAGMA(omp simd reduction(+ : var))

namespace plinio {

// float for float32/float16/bfloat16, double for float64.
at::ScalarType accumulate_type(at::ScalarType t);

// ---- combine -------------------------------------------------------------------------

// Checks shapes/dtypes/devices of combine's inputs (messages name the offending input).
void check_combine_inputs(at::TensorList branches, const at::Tensor& theta);

// A copy of `t` (or `t` itself) with exactly the strides of the dense tensor `like`, so
// that every kernel can walk all operands with one flat index.
at::Tensor align_to(const at::Tensor& t, const at::Tensor& like);
std::vector<at::Tensor> align_all_to(at::TensorList ts, const at::Tensor& like);

// ---- PIT masks -----------------------------------------------------------------------

// Sizes of one layer's masks. `time_masked` is true when beta or gamma is given.
struct MaskGeometry {
  int64_t cout = 0;    // channels (alpha size); 0 when alpha is absent
  int64_t taps = 1;    // K, the kernel-axis length the time mask spans
  int64_t levels = 0;  // L = max(ceil(log2 K), 1); 0 when gamma is absent
  bool has_alpha = false;
  bool has_beta = false;
  bool has_gamma = false;
  bool time_masked() const { return has_beta || has_gamma; }
};

int64_t dilation_levels(int64_t taps);

// Validates the mask parameters; `cout` and `taps` are what the layer dictates.
MaskGeometry check_mask_params(const c10::optional<at::Tensor>& alpha,
                               const c10::optional<at::Tensor>& beta,
                               const c10::optional<at::Tensor>& gamma, int64_t cout, int64_t taps,
                               int64_t keep_alive);

// The memory format the masked-weight kernels work in: channels_last for a 4-D
// channels_last weight with channel masking only (each output channel is still one
// contiguous block), contiguous otherwise.
at::MemoryFormat masked_weight_format(const at::Tensor& weight, bool time_masked);

// Empty outputs for absent optional results (the op schemas return numel-0 tensors).
at::Tensor absent_like(const at::Tensor& t);

}  // namespace plinio
