"""Dropout of compact tensors (compact execution, ``plinio.fast.sparse_step``) with the dense
path's random numbers, and the graph pass that puts it in place of the model's dropouts.

A compact tensor of a channel group holds only the group's kept channels. ``nn.Dropout`` on
it would draw fewer random numbers than on the full-width tensor of the dense path, so every
later draw (and the mask itself) would differ. :class:`CompactDropout` draws the noise of
the full-width tensor with ``F.dropout`` itself (same shape, dtype and device as the dense
input, contiguous as the dense path's tensors are for a contiguous network input — the step
runs dense for a channels_last one: the same draws, the same generator state afterwards) and
multiplies the kept channels by their noise: ``x_K · noise_K`` is ``(x · noise)_K`` bit for
bit, whatever the layout of the compact ``x``. It does so in every sparse step, also when the
group keeps all its channels: its tensors are then full width but still in the compact
layout, and dropout draws its noise in memory order.
"""
from typing import Dict, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .graph_copy import copy_graph, fetch, rebuild
from .sparse_step import compact_channels, in_sparse_step


class CompactDropout(nn.Module):
    """``dropout`` (an ``nn.Dropout`` of the model, referred to, not registered) on tensors of
    channel group ``gid`` (``channels`` wide at full width)."""

    def __init__(self, dropout: nn.Dropout, gid: int, channels: int) -> None:
        super().__init__()
        if type(dropout) is not nn.Dropout:
            raise TypeError(f"CompactDropout: expected an nn.Dropout, got {type(dropout).__name__}")
        self._dropout = (dropout,)
        self.gid = gid
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dropout = self._dropout[0]
        if not dropout.training or not in_sparse_step():
            return dropout(x)
        # in a sparse step x is in the compact layout even when it holds every channel, and
        # dropout draws its noise in x's memory order: draw it for the contiguous tensor
        held = compact_channels(self.gid)
        shape = (x.shape[0], self.channels) + tuple(x.shape[2:])
        noise = F.dropout(torch.ones(shape, dtype=x.dtype, device=x.device), dropout.p, True)
        if held is not None:
            noise = noise.index_select(1, held)
        return x.mul_(noise) if dropout.inplace else x * noise

    def extra_repr(self) -> str:
        return f"p={self._dropout[0].p}, group={self.gid}, channels={self.channels}"


def compact_dropouts(gm: fx.GraphModule, dropouts: Dict[str, Tuple[int, int]]) -> fx.GraphModule:
    """A new GraphModule running ``gm`` with the ``call_module`` nodes named in ``dropouts``
    (node name → (group, channels)) calling a :class:`CompactDropout` of their module. Shares
    every layer with ``gm``, which is untouched."""
    graph = copy_graph(gm)
    new_modules: Dict[str, nn.Module] = {}
    for node in graph.nodes:
        if node.name not in dropouts:
            continue
        if node.op != "call_module":
            raise ValueError(f"compact_dropouts: node '{node.name}' does not call a module")
        gid, channels = dropouts[node.name]
        prefix, _, leaf = node.target.rpartition(".")
        target = f"{prefix}.plinio_compact_{leaf}" if prefix else f"plinio_compact_{leaf}"
        new_modules[target] = CompactDropout(fetch(gm, node.target), gid, channels)
        node.target = target
    result = rebuild(gm, graph, new_modules)
    for name, value in vars(gm).items():  # what the passes and wrappers attached
        if name.startswith("plinio_"):
            setattr(result, name, value)
    return result
