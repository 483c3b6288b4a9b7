"""Exact fast paths of the search (DESIGN.md §3): branch merging, fused supernet forward,
hard-selection shortcut.

Entry point: :func:`optimize_supernets`, run by the wrappers at conversion when ``fast=True``
and ``PLINIO_BACKEND`` is not ``reference`` (see :func:`fast_path_requested`).
"""
import os

from .graph_pass import FAST_MODULE_NAME, is_combiner, optimize_supernets
from .linear_ops import ConvGeometry, compose, conv_geometry
from .merge_plan import IDENTITY, LinearCandidate, MemberPlacement, MergePlan, plan_merge
from .merged_conv import MergedConv
from .supernet_forward import FastSuperNet


def fast_path_requested(fast: bool = True) -> bool:
    """Whether the fast paths should be used: ``fast`` unless ``PLINIO_BACKEND=reference``."""
    return bool(fast) and os.environ.get("PLINIO_BACKEND", "").strip().lower() != "reference"


__all__ = ["optimize_supernets", "fast_path_requested", "is_combiner", "FAST_MODULE_NAME",
           "FastSuperNet", "MergedConv", "MergePlan", "MemberPlacement", "LinearCandidate",
           "IDENTITY", "plan_merge", "ConvGeometry", "conv_geometry", "compose"]
