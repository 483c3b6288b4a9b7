"""Dilation masker of PITConv1d (docs/behaviour.md §5.1, dilation, anchored at the newest tap)."""
import torch

from plinio.methods.pit.nn.masker_base import PITMaskerBase
from plinio.ops.reference import dilation_levels, gamma_selection


class PITDilationMasker(PITMaskerBase):
    """Holds ``gamma`` (L = max(ceil(log2 K), 1) entries, init 1).

    γ̂ = |γ| with the last entry forced to 1; tap j gets θ_γ[j] = Σ_{p ≤ min(v(K-1-j), L-1)} γ̂_p,
    so pruning γ̂_0..γ̂_{m-1} keeps the taps whose distance from the newest is a multiple of 2^m.
    """

    param_name = "gamma"

    def __init__(self, rf: int, trainable: bool = True) -> None:
        if not isinstance(rf, int) or isinstance(rf, bool) or rf < 1:
            raise ValueError(f"{type(self).__name__}: rf must be a positive int, got {rf!r}")
        super().__init__(dilation_levels(rf), trainable)
        self.rf = rf
        last = torch.zeros(self.size, dtype=torch.bool)
        last[-1] = True
        self.register_buffer("_last", last, persistent=False)
        taps = gamma_selection(rf, torch.get_default_dtype(), torch.device("cpu"))  # (K, L) 0/1
        self.register_buffer("_taps", taps, persistent=False)

    @property
    def terms(self) -> torch.Tensor:
        """Number of γ̂ terms summed in each tap's θ entry (used for the continuous k_eff)."""
        return self._taps.sum(1)

    @property
    def theta(self) -> torch.Tensor:
        """Continuous per-tap dilation mask θ_γ (length K)."""
        g = self.param_for_use()
        g_hat = torch.where(self._last, torch.ones_like(g), g.abs())
        return self._taps @ g_hat

    def forward(self) -> torch.Tensor:
        return self.theta


class PITFrozenDilationMasker(PITDilationMasker):
    """Dilation masker that keeps every tap."""

    frozen = True

    def __init__(self, rf: int, trainable: bool = False) -> None:
        super().__init__(rf, False)
