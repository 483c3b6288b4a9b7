"""Size / MACs cost models of PIT layers (SPEC §4.1)."""
from plinio.cost.model import PITCostModel

__all__ = ["PITCostModel"]
