// CPU kernels of plinio::pit_soft_costs and its backward: the size and MACs of every layer
// of a PIT network with continuous masks, the regularizer of every search step
// (plinio/methods/pit/cost_model.py, whose graph path computes the same with tensor ops and
// autograd). A network has tens of layers and at most a few thousand mask entries: plain
// loops in double precision take microseconds, where the graph's ~40 small tensor ops and
// their autograd take ~200.
//
// With θ = |α| (1 where kept alive), n[m] = Σ θ over masker m, and for Conv1d layers the tap
// factors r_β = (P_β · β̂) / terms_β and r_γ = (P_γ · γ̂) / terms_γ (β̂, γ̂: |β|, |γ|, 1 at the
// last entry), the counts of layer l are
//   Cin = A_in · n + c_in,  Cout = A_out · n + c_out,  k = K · (r_β r_γ) + k_const
// and its costs size = Cin·Cout·k / groups, MACs = size · positions (BatchNorm: 2·Cin and
// Cin · calls), PIT's definitions (docs/behaviour.md §4.1).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

namespace plinio {
namespace {

// The static tables, in the order of the `tables` argument (PITCostModel builds them).
enum TableIndex {
  kSeg,         // int64 [E]: the masker of each α entry
  kKeep,        // bool [E]: kept alive (θ = 1)
  kAIn,         // double [L, M]: input channels of each layer per masker count
  kAOut,        // double [L, M]
  kCIn,         // double [L]: constant input / output channels
  kCOut,        // double [L]
  kKConst,      // double [L]: kernel taps not searched
  kGroups,      // double [L]
  kPositions,   // double [L]: output positions over every call
  kCalls,       // double [L]
  kIsBn,        // bool [L]: a BatchNorm row
  kBetaPrefix,  // double [T, B]: θ_β of each tap from β̂ (block-diagonal over the Conv1d)
  kBetaTerms,   // double [T]
  kBetaLast,    // bool [B]: β entries kept alive
  kGammaTaps,   // double [T, G]: θ_γ of each tap from γ̂
  kGammaTerms,  // double [T]
  kGammaLast,   // bool [G]
  kKSeg,        // double [L, T]: the taps of each layer
  kNumTables
};

const char* kOp = "plinio::pit_soft_costs";

// Read-only views of the tables, checked once per call.
struct Tables {
  int64_t entries, maskers, layers, taps, betas, levels;
  const int64_t* seg;
  const bool *keep, *is_bn, *beta_last, *gamma_last;
  const double *a_in, *a_out, *c_in, *c_out, *k_const, *groups, *positions, *calls;
  const double *beta_prefix, *beta_terms, *gamma_taps, *gamma_terms, *k_seg;
};

void check_table(const at::TensorList tables, int index, at::ScalarType dtype,
                 std::vector<int64_t> sizes) {
  const at::Tensor& t = tables[index];
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype && t.is_contiguous() &&
                  t.sizes() == at::IntArrayRef(sizes),
              kOp, ": table ", index, " must be a contiguous CPU ", dtype, " tensor of shape ",
              at::IntArrayRef(sizes), ", got ", t.scalar_type(), " ", t.sizes(), " on ", t.device(),
              " (build the tables with PITCostModel)");
}

Tables tables_of(const at::TensorList tables) {
  TORCH_CHECK(tables.size() == kNumTables, kOp, ": expected ", static_cast<int>(kNumTables),
              " tables, got ", tables.size());
  Tables t{};
  t.entries = tables[kSeg].numel();
  t.layers = tables[kAIn].size(0);
  t.maskers = tables[kAIn].dim() == 2 ? tables[kAIn].size(1) : 0;
  t.taps = tables[kBetaTerms].numel();
  t.betas = tables[kBetaLast].numel();
  t.levels = tables[kGammaLast].numel();
  check_table(tables, kSeg, at::kLong, {t.entries});
  check_table(tables, kKeep, at::kBool, {t.entries});
  for (int i : {kAIn, kAOut}) check_table(tables, i, at::kDouble, {t.layers, t.maskers});
  for (int i : {kCIn, kCOut, kKConst, kGroups, kPositions, kCalls})
    check_table(tables, i, at::kDouble, {t.layers});
  check_table(tables, kIsBn, at::kBool, {t.layers});
  check_table(tables, kBetaPrefix, at::kDouble, {t.taps, t.betas});
  check_table(tables, kBetaTerms, at::kDouble, {t.taps});
  check_table(tables, kBetaLast, at::kBool, {t.betas});
  check_table(tables, kGammaTaps, at::kDouble, {t.taps, t.levels});
  check_table(tables, kGammaTerms, at::kDouble, {t.taps});
  check_table(tables, kGammaLast, at::kBool, {t.levels});
  check_table(tables, kKSeg, at::kDouble, {t.layers, t.taps});
  t.seg = tables[kSeg].const_data_ptr<int64_t>();
  for (int64_t e = 0; e < t.entries; ++e)
    TORCH_CHECK(t.seg[e] >= 0 && t.seg[e] < t.maskers, kOp, ": table ", static_cast<int>(kSeg),
                " holds masker ", t.seg[e], " of ", t.maskers);
  t.keep = tables[kKeep].const_data_ptr<bool>();
  t.is_bn = tables[kIsBn].const_data_ptr<bool>();
  t.beta_last = tables[kBetaLast].const_data_ptr<bool>();
  t.gamma_last = tables[kGammaLast].const_data_ptr<bool>();
  t.a_in = tables[kAIn].const_data_ptr<double>();
  t.a_out = tables[kAOut].const_data_ptr<double>();
  t.c_in = tables[kCIn].const_data_ptr<double>();
  t.c_out = tables[kCOut].const_data_ptr<double>();
  t.k_const = tables[kKConst].const_data_ptr<double>();
  t.groups = tables[kGroups].const_data_ptr<double>();
  t.positions = tables[kPositions].const_data_ptr<double>();
  t.calls = tables[kCalls].const_data_ptr<double>();
  t.beta_prefix = tables[kBetaPrefix].const_data_ptr<double>();
  t.beta_terms = tables[kBetaTerms].const_data_ptr<double>();
  t.gamma_taps = tables[kGammaTaps].const_data_ptr<double>();
  t.gamma_terms = tables[kGammaTerms].const_data_ptr<double>();
  t.k_seg = tables[kKSeg].const_data_ptr<double>();
  return t;
}

// The mask parameters, checked against the tables: (α, β or undefined, γ or undefined),
// contiguous, of one floating dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor> params_of(const Tables& t, const at::Tensor& alpha,
                                                         const std::optional<at::Tensor>& beta,
                                                         const std::optional<at::Tensor>& gamma) {
  TORCH_CHECK(alpha.device().is_cpu() && alpha.dim() == 1 && alpha.numel() == t.entries, kOp,
              ": alpha must be a CPU vector of the ", t.entries, " channel mask entries, got ",
              alpha.sizes(), " on ", alpha.device());
  TORCH_CHECK(alpha.scalar_type() == at::kFloat || alpha.scalar_type() == at::kDouble, kOp,
              ": the mask parameters must be float32 or float64, got ", alpha.scalar_type());
  const bool timed = t.taps > 0;
  TORCH_CHECK(beta.has_value() == timed && gamma.has_value() == timed, kOp,
              timed ? ": give beta and gamma (the network has Conv1d layers)"
                    : ": beta and gamma must be absent (the network has no Conv1d layer)");
  at::Tensor b, g;
  if (timed) {
    for (const auto& [what, p, n] :
         {std::make_tuple("beta", *beta, t.betas), std::make_tuple("gamma", *gamma, t.levels)}) {
      TORCH_CHECK(p.device().is_cpu() && p.dim() == 1 && p.numel() == n &&
                      p.scalar_type() == alpha.scalar_type(),
                  kOp, ": ", what, " must be a CPU vector of ", n, " entries of alpha's dtype ",
                  alpha.scalar_type(), ", got ", p.scalar_type(), " ", p.sizes());
    }
    b = beta->contiguous();
    g = gamma->contiguous();
  }
  return {alpha.contiguous(), b, g};
}

// The counts of every layer and the tap factors their gradient reuses.
struct Counts {
  std::vector<double> cin, cout, k, ratio_b, ratio_g;
};

template <typename T>
double hat(const T* p, const bool* kept, int64_t i) {
  return kept[i] ? 1.0 : std::abs(static_cast<double>(p[i]));
}

template <typename T>
Counts soft_counts(const Tables& t, const T* alpha, const T* beta, const T* gamma) {
  std::vector<double> n(t.maskers, 0.0);
  for (int64_t e = 0; e < t.entries; ++e) n[t.seg[e]] += hat(alpha, t.keep, e);
  Counts c{std::vector<double>(t.c_in, t.c_in + t.layers),
           std::vector<double>(t.c_out, t.c_out + t.layers),
           std::vector<double>(t.k_const, t.k_const + t.layers), std::vector<double>(t.taps, 0.0),
           std::vector<double>(t.taps, 0.0)};
  for (int64_t l = 0; l < t.layers; ++l) {
    for (int64_t m = 0; m < t.maskers; ++m) {
      c.cin[l] += t.a_in[l * t.maskers + m] * n[m];
      c.cout[l] += t.a_out[l * t.maskers + m] * n[m];
    }
  }
  for (int64_t i = 0; i < t.taps; ++i) {
    for (int64_t j = 0; j < t.betas; ++j)
      c.ratio_b[i] += t.beta_prefix[i * t.betas + j] * hat(beta, t.beta_last, j);
    for (int64_t j = 0; j < t.levels; ++j)
      c.ratio_g[i] += t.gamma_taps[i * t.levels + j] * hat(gamma, t.gamma_last, j);
    c.ratio_b[i] /= t.beta_terms[i];
    c.ratio_g[i] /= t.gamma_terms[i];
  }
  for (int64_t l = 0; l < t.layers; ++l)
    for (int64_t i = 0; i < t.taps; ++i)
      c.k[l] += t.k_seg[l * t.taps + i] * c.ratio_b[i] * c.ratio_g[i];
  return c;
}

template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor> pit_soft_costs_cpu(const at::Tensor& alpha,
                                                      const std::optional<at::Tensor>& beta,
                                                      const std::optional<at::Tensor>& gamma,
                                                      at::TensorList tables) {
  const Tables t = tables_of(tables);
  const auto [a, b, g] = params_of(t, alpha, beta, gamma);
  at::Tensor size = at::empty({t.layers}, alpha.options().dtype(at::kFloat));
  at::Tensor macs = at::empty({t.layers}, alpha.options().dtype(at::kFloat));
  float* s = size.data_ptr<float>();
  float* m = macs.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "pit_soft_costs", [&] {
    const Counts c = soft_counts(t, a.const_data_ptr<scalar_t>(), data_or_null<scalar_t>(b),
                                 data_or_null<scalar_t>(g));
    for (int64_t l = 0; l < t.layers; ++l) {
      const double layer_size =
          t.is_bn[l] ? 2.0 * c.cin[l] : c.cin[l] * c.cout[l] * c.k[l] / t.groups[l];
      s[l] = static_cast<float>(layer_size);
      m[l] = static_cast<float>(t.is_bn[l] ? c.cin[l] * t.calls[l] : layer_size * t.positions[l]);
    }
  });
  return {size, macs};
}

double sign(double v) { return v > 0 ? 1.0 : v < 0 ? -1.0 : 0.0; }

// d/dp of hat(p): the sign of p, 0 where kept alive (the straight |p| of the graph path).
template <typename T>
void masked_sign_times(const T* p, const bool* kept, const std::vector<double>& d, T* out) {
  for (size_t i = 0; i < d.size(); ++i)
    out[i] = static_cast<T>(kept[i] ? 0.0 : d[i] * sign(static_cast<double>(p[i])));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pit_soft_costs_backward_cpu(
    const at::Tensor& grad_size, const at::Tensor& grad_macs, const at::Tensor& alpha,
    const std::optional<at::Tensor>& beta, const std::optional<at::Tensor>& gamma,
    at::TensorList tables) {
  const Tables t = tables_of(tables);
  const auto [a, b, g] = params_of(t, alpha, beta, gamma);
  for (const at::Tensor& grad : {grad_size, grad_macs})
    TORCH_CHECK(grad.device().is_cpu() && grad.dim() == 1 && grad.numel() == t.layers, kOp,
                "_backward: the cost gradients must be CPU vectors of ", t.layers, " layers, got ",
                grad.sizes());
  const at::Tensor gs = grad_size.to(at::kDouble).contiguous();
  const at::Tensor gm = grad_macs.to(at::kDouble).contiguous();
  const double* ds = gs.const_data_ptr<double>();
  const double* dm = gm.const_data_ptr<double>();
  at::Tensor grad_alpha = at::empty_like(a);
  at::Tensor grad_beta = b.defined() ? at::empty_like(b) : at::empty({0}, a.options());
  at::Tensor grad_gamma = g.defined() ? at::empty_like(g) : at::empty({0}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "pit_soft_costs_backward", [&] {
    const scalar_t* ap = a.const_data_ptr<scalar_t>();
    const scalar_t* bp = data_or_null<scalar_t>(b);
    const scalar_t* gp = data_or_null<scalar_t>(g);
    const Counts c = soft_counts(t, ap, bp, gp);
    std::vector<double> d_n(t.maskers, 0.0), d_k(t.layers, 0.0);
    for (int64_t l = 0; l < t.layers; ++l) {
      double d_cin, d_cout = 0.0;
      if (t.is_bn[l]) {
        d_cin = 2.0 * ds[l] + t.calls[l] * dm[l];
      } else {
        const double d_product = (ds[l] + dm[l] * t.positions[l]) / t.groups[l];
        d_cin = d_product * c.cout[l] * c.k[l];
        d_cout = d_product * c.cin[l] * c.k[l];
        d_k[l] = d_product * c.cin[l] * c.cout[l];
      }
      for (int64_t m = 0; m < t.maskers; ++m)
        d_n[m] += t.a_in[l * t.maskers + m] * d_cin + t.a_out[l * t.maskers + m] * d_cout;
    }
    std::vector<double> d_theta(t.entries);
    for (int64_t e = 0; e < t.entries; ++e) d_theta[e] = d_n[t.seg[e]];
    masked_sign_times(ap, t.keep, d_theta, grad_alpha.data_ptr<scalar_t>());
    if (bp == nullptr) return;
    std::vector<double> d_beta_hat(t.betas, 0.0), d_gamma_hat(t.levels, 0.0);
    for (int64_t i = 0; i < t.taps; ++i) {
      double d_tap = 0.0;
      for (int64_t l = 0; l < t.layers; ++l) d_tap += t.k_seg[l * t.taps + i] * d_k[l];
      const double d_theta_b = d_tap * c.ratio_g[i] / t.beta_terms[i];
      const double d_theta_g = d_tap * c.ratio_b[i] / t.gamma_terms[i];
      for (int64_t j = 0; j < t.betas; ++j)
        d_beta_hat[j] += t.beta_prefix[i * t.betas + j] * d_theta_b;
      for (int64_t j = 0; j < t.levels; ++j)
        d_gamma_hat[j] += t.gamma_taps[i * t.levels + j] * d_theta_g;
    }
    masked_sign_times(bp, t.beta_last, d_beta_hat, grad_beta.data_ptr<scalar_t>());
    masked_sign_times(gp, t.gamma_last, d_gamma_hat, grad_gamma.data_ptr<scalar_t>());
  });
  return {grad_alpha, grad_beta, grad_gamma};
}

}  // namespace

TORCH_LIBRARY_IMPL(plinio, CPU, m) {
  m.impl("pit_soft_costs", &pit_soft_costs_cpu);
  m.impl("pit_soft_costs_backward", &pit_soft_costs_backward_cpu);
}

}  // namespace plinio
