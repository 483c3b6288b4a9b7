"""PIT-SuperNet: differentiable choice among alternative branches, with PIT inside them."""
from .nn import PITSuperNetModule

__all__ = ["PITSuperNetModule"]
