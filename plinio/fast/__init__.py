"""Exact fast paths of the search (docs/design.md §3): branch merging, fused supernet
forward, hard-selection shortcut, zero paddings absorbed into convolutions.

Entry point: :func:`fast_graph`, run by the wrappers when ``fast=True`` and the reference
backend is not forced (``plinio.ops.reference_path_forced()``).
"""
from typing import Optional

import torch.fx as fx

from .graph_pass import FAST_MODULE_NAME, is_combiner, optimize_supernets
from .linear_ops import ConvGeometry, compose, conv_geometry
from .merge_plan import IDENTITY, LinearCandidate, MemberPlacement, MergePlan, plan_merge
from .merged_conv import MergedConv
from .pad_pass import PaddedConv, absorb_zero_padding
from .padded_conv import zero_padded_conv
from .supernet_forward import FastSuperNet


def fast_graph(gm: fx.GraphModule) -> Optional[fx.GraphModule]:
    """The graph the wrappers run on the fast path: every supernet optimized
    (:func:`optimize_supernets`), then zero paddings absorbed (:func:`absorb_zero_padding`).
    It shares its layers with ``gm``, which is untouched. None when neither applies.

    Attributes of the result: ``plinio_merge_plans`` and ``plinio_unoptimized`` (per supernet)
    and ``plinio_absorbed_paddings`` (convolutions that absorbed a padding node).
    """
    has_supernets = any(n.op == "call_module" and is_combiner(gm.get_submodule(n.target))
                        for n in gm.graph.nodes)
    runner = optimize_supernets(gm) if has_supernets else gm
    runner, absorbed = absorb_zero_padding(runner)
    if not has_supernets and not absorbed:
        return None
    runner.plinio_absorbed_paddings = absorbed
    return runner


__all__ = ["fast_graph", "optimize_supernets", "absorb_zero_padding", "PaddedConv",
           "zero_padded_conv", "is_combiner", "FAST_MODULE_NAME",
           "FastSuperNet", "MergedConv", "MergePlan", "MemberPlacement", "LinearCandidate",
           "IDENTITY", "plan_merge", "ConvGeometry", "conv_geometry", "compose"]
