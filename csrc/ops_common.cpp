#include "ops_common.h"

namespace plinio {

at::ScalarType accumulate_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

void check_combine_inputs(at::TensorList branches, const at::Tensor& theta) {
  TORCH_CHECK(!branches.empty(), "plinio::combine: needs at least one branch tensor");
  TORCH_CHECK(theta.dim() == 1 && theta.size(0) == static_cast<int64_t>(branches.size()),
              "plinio::combine: theta must be a vector with one weight per branch (",
              branches.size(), " branches), got theta of shape ", theta.sizes());
  TORCH_CHECK(at::isFloatingType(theta.scalar_type()),
              "plinio::combine: theta must be floating point, got ", theta.scalar_type());
  const at::Tensor& ref = branches[0];
  TORCH_CHECK(at::isFloatingType(ref.scalar_type()),
              "plinio::combine: branches must be floating point, got ", ref.scalar_type());
  for (size_t i = 0; i < branches.size(); ++i) {
    const at::Tensor& b = branches[i];
    TORCH_CHECK(b.sizes() == ref.sizes(), "plinio::combine: branch ", i, " has shape ", b.sizes(),
                " but branch 0 has shape ", ref.sizes());
    TORCH_CHECK(b.scalar_type() == ref.scalar_type(), "plinio::combine: branch ", i, " has dtype ",
                b.scalar_type(), " but branch 0 has dtype ", ref.scalar_type());
    TORCH_CHECK(b.device() == ref.device(), "plinio::combine: branch ", i, " is on ", b.device(),
                " but branch 0 is on ", ref.device());
  }
  TORCH_CHECK(theta.device() == ref.device(), "plinio::combine: theta is on ", theta.device(),
              " but the branches are on ", ref.device());
}

at::Tensor align_to(const at::Tensor& t, const at::Tensor& like) {
  if (t.strides() == like.strides()) return t;
  return at::empty_like(like).copy_(t);
}

std::vector<at::Tensor> align_all_to(at::TensorList ts, const at::Tensor& like) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(align_to(t, like));
  return out;
}

int64_t dilation_levels(int64_t taps) {
  int64_t levels = 0;
  while ((int64_t{1} << levels) < taps) ++levels;
  return levels < 1 ? 1 : levels;
}

MaskGeometry check_mask_params(const c10::optional<at::Tensor>& alpha,
                               const c10::optional<at::Tensor>& beta,
                               const c10::optional<at::Tensor>& gamma, int64_t cout, int64_t taps,
                               int64_t keep_alive) {
  MaskGeometry g;
  g.has_alpha = alpha.has_value() && alpha->defined();
  g.has_beta = beta.has_value() && beta->defined();
  g.has_gamma = gamma.has_value() && gamma->defined();
  g.cout = cout;
  g.taps = g.time_masked() ? taps : 1;
  TORCH_CHECK(!g.time_masked() || taps >= 1, "plinio: kernel_size must be >= 1, got ", taps);
  if (g.has_alpha) {
    TORCH_CHECK(alpha->dim() == 1 && alpha->size(0) == cout,
                "plinio: alpha (channel mask parameter) must have shape [", cout, "], got ",
                alpha->sizes());
    TORCH_CHECK(keep_alive >= 0 && keep_alive <= cout, "plinio: keep_alive must be in [0, ", cout,
                "], got ", keep_alive);
  }
  if (g.has_beta) {
    TORCH_CHECK(beta->dim() == 1 && beta->size(0) == taps,
                "plinio: beta (receptive-field mask parameter) must have shape [", taps, "], got ",
                beta->sizes());
  }
  if (g.has_gamma) {
    g.levels = dilation_levels(taps);
    TORCH_CHECK(gamma->dim() == 1 && gamma->size(0) == g.levels,
                "plinio: gamma (dilation mask parameter) must have shape [", g.levels,
                "] for kernel size ", taps, ", got ", gamma->sizes());
  }
  at::Tensor first;
  for (const auto* p : {&alpha, &beta, &gamma}) {
    if (!(p->has_value() && (*p)->defined())) continue;
    const at::Tensor& t = **p;
    TORCH_CHECK(at::isFloatingType(t.scalar_type()),
                "plinio: mask parameters must be floating point, got ", t.scalar_type());
    if (!first.defined()) {
      first = t;
    } else {
      TORCH_CHECK(t.scalar_type() == first.scalar_type() && t.device() == first.device(),
                  "plinio: alpha/beta/gamma must share one dtype and device, got ",
                  first.scalar_type(), " on ", first.device(), " and ", t.scalar_type(), " on ",
                  t.device());
    }
  }
  return g;
}

at::MemoryFormat masked_weight_format(const at::Tensor& weight, bool time_masked) {
  if (!time_masked && weight.dim() == 4 && !weight.is_contiguous() &&
      weight.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

at::Tensor absent_like(const at::Tensor& t) { return at::empty({0}, t.options()); }

}  // namespace plinio
