"""Supernet building blocks: the branch container and the θ-mixing combiner."""
from .combiner import PITSuperNetCombiner
from .module import PITSuperNetModule

__all__ = ["PITSuperNetModule", "PITSuperNetCombiner"]
