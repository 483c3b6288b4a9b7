"""Receptive-field masker of PITConv1d (docs/behaviour.md §5.1, receptive field)."""
import torch

from plinio.methods.pit.nn.masker_base import PITTapMaskerBase


class PITTimestepMasker(PITTapMaskerBase):
    """Holds ``beta`` (one entry per kernel tap, init 1; index K-1 is the newest tap).

    ``theta``[i] = Σ_{j ≤ i} β̂_j with β̂ = |β| and the last entry forced to 1, so the
    binarized mask keeps a suffix of taps that always contains the newest one. ``rf=1`` on a
    larger kernel: the receptive field is not searched (docs/behaviour.md §2.1.1).
    """

    param_name = "beta"

    def __init__(self, rf: int, trainable: bool = True) -> None:
        super().__init__(rf, trainable)
        self.register_buffer("_tap_matrix", torch.tril(torch.ones(self.rf, self.rf)), persistent=False)

    @staticmethod
    def entries(taps: int) -> int:
        """One β entry per tap."""
        return taps

    @property
    def terms(self) -> torch.Tensor:
        """Number of β̂ terms summed in each θ entry (used for the continuous k_eff)."""
        return self.tap_terms(self.rf)

    @property
    def theta(self) -> torch.Tensor:
        """Continuous receptive-field mask θ_β."""
        return torch.cumsum(self.param_hat(), 0)

    def forward(self) -> torch.Tensor:
        return self.theta


class PITFrozenTimestepMasker(PITTimestepMasker):
    """Receptive-field masker that keeps every tap."""

    frozen = True

    def __init__(self, rf: int, trainable: bool = False) -> None:
        super().__init__(rf, False)
