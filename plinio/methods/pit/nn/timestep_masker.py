"""Receptive-field masker of PITConv1d (docs/behaviour.md §5.1, receptive field)."""
import torch

from plinio.methods.pit.nn.masker_base import PITMaskerBase


class PITTimestepMasker(PITMaskerBase):
    """Holds ``beta`` (one entry per kernel tap, init 1; index K-1 is the newest tap).

    ``theta``[i] = Σ_{j ≤ i} β̂_j with β̂ = |β| and the last entry forced to 1, so the
    binarized mask keeps a suffix of taps that always contains the newest one.
    """

    param_name = "beta"

    def __init__(self, rf: int, trainable: bool = True) -> None:
        super().__init__(rf, trainable)
        last = torch.zeros(rf, dtype=torch.bool)
        last[-1] = True
        self.register_buffer("_last", last, persistent=False)
        self.register_buffer("_prefix", torch.tril(torch.ones(rf, rf)), persistent=False)

    @property
    def rf(self) -> int:
        """Number of kernel taps."""
        return self.size

    @property
    def terms(self) -> torch.Tensor:
        """Number of β̂ terms summed in each θ entry (used for the continuous k_eff)."""
        return self._prefix.sum(1)

    @property
    def theta(self) -> torch.Tensor:
        """Continuous receptive-field mask θ_β."""
        b = self.param_for_use()
        b_hat = torch.where(self._last, torch.ones_like(b), b.abs())
        return torch.cumsum(b_hat, 0)

    def forward(self) -> torch.Tensor:
        return self.theta


class PITFrozenTimestepMasker(PITTimestepMasker):
    """Receptive-field masker that keeps every tap."""

    frozen = True

    def __init__(self, rf: int, trainable: bool = False) -> None:
        super().__init__(rf, False)
