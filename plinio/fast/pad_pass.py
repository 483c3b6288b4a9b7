"""Graph pass: absorb an explicit zero padding into the convolution that consumes it.

A ``ConstantPad*d(value=0)`` / ``ZeroPad*d`` / ``F.pad(..., value=0)`` node whose only user is
a plain or PIT convolution (the causal padding of a TCN, for instance) is removed, and the
convolution node calls a :class:`PaddedConv` that convolves the unpadded input with the
combined padding through :func:`~plinio.fast.padded_conv.zero_padded_conv`. Same values and
gradients; the padded copy is no longer saved for backward. The input ``GraphModule`` is not
modified: a new one, sharing every layer with it, is returned.
"""
from dataclasses import replace
from typing import Any, Dict, List, Optional, Tuple

import torch.fx as fx
import torch.nn as nn

from plinio.graph.padding import zero_padding

from .graph_copy import copy_graph, fetch, rebuild
from .linear_ops import (ConvGeometry, conv_geometry, conv_matches_geometry,
                         layer_weight_and_bias, trusted_conv_forward)
from .padded_conv import zero_padded_conv
from .sparse_step import sparse_call


class PaddedConv(nn.Module):
    """``layer(zero_pad(x))`` for a conv ``layer`` and the padding absorbed from the graph.
    Refers to the layer (kept in a tuple, not registered): parameters stay the model's."""

    def __init__(self, layer: nn.Module, geometry: ConvGeometry) -> None:
        super().__init__()
        self._layer = (layer,)
        self.geometry = geometry

    def forward(self, x: Any) -> Any:
        g = self.geometry
        weight, bias = layer_weight_and_bias(self._layer[0])
        # the layer's sparse execution in a sparse step (plinio.fast.sparse_step)
        call = sparse_call(self._layer[0], x, weight.requires_grad, g)
        if call is not None:
            return call(x, weight, bias)
        return zero_padded_conv(x, weight, bias, g.pad_left, g.pad_right, g.stride, g.dilation,
                                g.groups)

    def extra_repr(self) -> str:
        return f"pad_left={self.geometry.pad_left}, pad_right={self.geometry.pad_right}"


def _absorbed_geometry(geometry: ConvGeometry, spec: List[int]) -> Optional[ConvGeometry]:
    """The conv's geometry with ``spec`` added to its padding (None: not absorbable)."""
    if len(spec) % 2 or len(spec) > 2 * geometry.ndim or min(spec, default=0) < 0:
        return None
    spec = spec + [0] * (2 * geometry.ndim - len(spec))
    left = list(geometry.pad_left)
    right = list(geometry.pad_right)
    for i in range(geometry.ndim):  # spec lists the last dimension first
        dim = geometry.ndim - 1 - i
        left[dim] += spec[2 * i]
        right[dim] += spec[2 * i + 1]
    return replace(geometry, pad_left=tuple(left), pad_right=tuple(right))


def absorb_zero_padding(gm: fx.GraphModule) -> Tuple[fx.GraphModule, Tuple[str, ...]]:
    """(new GraphModule, targets of the convolutions that absorbed a padding node)."""
    graph = copy_graph(gm)
    new_modules: Dict[str, nn.Module] = {}

    def modules(target: str) -> nn.Module:
        return new_modules[target] if target in new_modules else fetch(gm, target)

    absorbed: List[str] = []
    erased = set()
    for node in list(graph.nodes):
        if node in erased or node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        pad_node = node.args[0]
        if not isinstance(pad_node, fx.Node) or len(pad_node.users) != 1:
            continue
        found = zero_padding(pad_node, modules)
        if found is None:
            continue
        source, spec = found
        layer = fetch(gm, node.target)
        geometry, _ = conv_geometry(layer)
        if geometry is None or not (trusted_conv_forward(layer)
                                    or conv_matches_geometry(layer, geometry)):
            continue
        combined = _absorbed_geometry(geometry, spec)
        if combined is None:
            continue
        absorbed.append(node.target)
        prefix, _, leaf = node.target.rpartition(".")
        target = f"{prefix}.plinio_padded_{leaf}" if prefix else f"plinio_padded_{leaf}"
        new_modules[target] = PaddedConv(layer, combined)
        node.target = target
        node.args = (source,)
        graph.erase_node(pad_node)
        erased.add(pad_node)
    result = rebuild(gm, graph, new_modules)
    for name, value in vars(gm).items():  # analysis results the wrappers attached
        if name.startswith("plinio_"):
            setattr(result, name, value)
    return result, tuple(absorbed)
