"""Straight-through binarizer used by every PIT mask.

It is the op library's (``plinio.ops.reference.STEBinarize``) under its PLiNIO name:
``PITBinarizer.apply(x, threshold)`` gives 1[x > threshold] as exact 0./1. values in the dtype
of ``x`` (so multiplying a weight by it keeps kept values bit-identical) and passes the
gradient straight through; ``threshold`` is a float or a tensor broadcastable to ``x``.
"""
from plinio.ops.reference import STEBinarize

PITBinarizer = STEBinarize

__all__ = ["PITBinarizer"]
