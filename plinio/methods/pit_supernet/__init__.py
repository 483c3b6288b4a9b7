"""PIT-SuperNet: differentiable choice among alternative branches, with PIT inside them."""
from .nn import PITSuperNetModule
from .pit_supernet import PITSuperNet

__all__ = ["PITSuperNet", "PITSuperNetModule"]
