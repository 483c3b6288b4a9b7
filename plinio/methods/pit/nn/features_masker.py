"""Output-channel masker of PIT layers (docs/behaviour.md §5.1, channels)."""
import torch

from plinio.methods.pit.nn.masker_base import PITMaskerBase


class PITFeaturesMasker(PITMaskerBase):
    """Holds ``alpha`` (one entry per output channel, init 1).

    ``theta`` = |alpha| with the last ``keep_alive_channels`` entries forced to 1, so that a
    layer always keeps at least that many channels.
    """

    param_name = "alpha"

    def __init__(self, out_channels: int, trainable: bool = True, keep_alive_channels: int = 1) -> None:
        super().__init__(out_channels, trainable)
        if not 0 <= keep_alive_channels <= out_channels:
            raise ValueError(f"{type(self).__name__}: keep_alive_channels must be in [0, {out_channels}], "
                             f"got {keep_alive_channels}")
        self.keep_alive_channels = int(keep_alive_channels)
        keep = torch.zeros(out_channels, dtype=torch.bool)
        if keep_alive_channels > 0:
            keep[-keep_alive_channels:] = True
        self.register_buffer("_keep_alive", keep, persistent=False)

    @property
    def out_channels(self) -> int:
        """Number of channels masked."""
        return self.size

    @property
    def theta(self) -> torch.Tensor:
        """Continuous channel mask θ_α (differentiable unless not trainable)."""
        a = self.param_for_use()
        return torch.where(self._keep_alive, torch.ones_like(a), a.abs())

    def forward(self) -> torch.Tensor:
        return self.theta


class PITFrozenFeaturesMasker(PITFeaturesMasker):
    """Channel masker that keeps every channel (used where the width cannot change)."""

    frozen = True

    def __init__(self, out_channels: int, trainable: bool = False, keep_alive_channels: int = 1) -> None:
        super().__init__(out_channels, False, keep_alive_channels)
