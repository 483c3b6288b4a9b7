"""PIT: channel, receptive-field and dilation search."""
from plinio.methods.pit.pit import PIT

__all__ = ["PIT"]
