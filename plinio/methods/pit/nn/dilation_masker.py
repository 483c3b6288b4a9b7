"""Dilation masker of PITConv1d (docs/behaviour.md §5.1, dilation, anchored at the newest tap)."""
import torch

from plinio.methods.pit.nn.masker_base import PITTapMaskerBase
from plinio.ops.reference import dilation_levels, gamma_selection


class PITDilationMasker(PITTapMaskerBase):
    """Holds ``gamma`` (L = max(ceil(log2 K), 1) entries, init 1).

    γ̂ = |γ| with the last entry forced to 1; tap j gets θ_γ[j] = Σ_{p ≤ min(v(K-1-j), L-1)} γ̂_p,
    so pruning γ̂_0..γ̂_{m-1} keeps the taps whose distance from the newest is a multiple of 2^m.
    ``rf=1`` on a larger kernel: the dilation is not searched (docs/behaviour.md §2.1.1).
    """

    param_name = "gamma"

    def __init__(self, rf: int, trainable: bool = True) -> None:
        super().__init__(rf, trainable)
        taps = gamma_selection(self.rf, torch.get_default_dtype(), torch.device("cpu"))  # (K, L) 0/1
        self.register_buffer("_tap_matrix", taps, persistent=False)

    entries = staticmethod(dilation_levels)

    @property
    def terms(self) -> torch.Tensor:
        """Number of γ̂ terms summed in each tap's θ entry (used for the continuous k_eff)."""
        return self.tap_terms(self.rf)

    @property
    def theta(self) -> torch.Tensor:
        """Continuous per-tap dilation mask θ_γ (length K), in the parameter's dtype (a sum of
        products, not a matrix product, which autocast would compute in lower precision and
        so flip masks that the fused kernels keep)."""
        return (self._tap_matrix * self.param_hat()).sum(1)

    def forward(self) -> torch.Tensor:
        return self.theta


class PITFrozenDilationMasker(PITDilationMasker):
    """Dilation masker that keeps every tap."""

    frozen = True

    def __init__(self, rf: int, trainable: bool = False) -> None:
        super().__init__(rf, False)
