"""DNAS base class."""
from plinio.methods.dnas_base.dnas import DNAS

__all__ = ["DNAS"]
