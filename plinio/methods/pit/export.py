"""PIT export (docs/behaviour.md §6): every PIT layer of a converted graph becomes its pruned
plain ``torch.nn`` layer.

Names survive export: the pruned layer keeps the layer's qualified name, and a zero padding
of the user's model (``ConstantPad1d`` / ``ZeroPad1d`` module or ``F.pad`` call) that feeds
only a PITConv1d stays where it is, with the same type, its padding rewritten so that the
pair (padding, pruned conv) gives the search model's output length: causal padding becomes
(k_opt - 1) · d_opt. New modules get new names: an extra ``ConstantPad1d`` the layer needs
when nothing pads its input is ``<layer>_exported_pad``, a re-inserted BatchNorm
``<layer>_exported_bn``. The search model is not touched.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.fx as fx
import torch.nn as nn

from plinio.graph.export import PlainLayer, export_layers
from plinio.graph.padding import zero_padding
from plinio.graph.tracing import call_counts
from plinio.methods.pit.nn.conv1d import PITConv1d
from plinio.methods.pit.nn.conv2d import PITConv2d
from plinio.methods.pit.nn.conv_common import explicit_padding
from plinio.methods.pit.nn.module import PITModule, PITWeightedModule

Padding = Union[str, int]


@dataclass
class _InputPadding:
    """A zero-padding node of the user's graph that feeds only one PITConv1d."""

    node: fx.Node
    left: int
    right: int


def _input_padding(gm: fx.GraphModule, node: fx.Node, layer: PITConv1d,
                   calls: Dict[str, int]) -> Optional[_InputPadding]:
    """The node padding the last dim of ``layer``'s input with zeros, when it feeds nothing
    else and changes only for this layer (a pad module called once, non-negative pads).
    ``calls`` counts the calls of the search model's layers."""
    src = node.args[0] if node.args else None
    if layer.padding_mode != "zeros" or calls[node.target] != 1 or \
            not isinstance(src, fx.Node) or len(src.users) != 1:
        return None
    found = zero_padding(src, gm.get_submodule)
    if found is None or len(found[1]) != 2 or min(found[1]) < 0:
        return None
    # the graph being edited, not the search model's: it holds the modules export inserted
    if src.op == "call_module" and \
            sum(n.op == "call_module" and n.target == src.target for n in gm.graph.nodes) != 1:
        return None
    return _InputPadding(src, *found[1])


def _own_padding(conv: nn.Conv1d, padding: Padding) -> Tuple[int, int]:
    """(left, right) zero padding ``conv`` would apply with ``padding`` ('same' or a number)."""
    if padding == "same":
        total = conv.dilation[0] * (conv.kernel_size[0] - 1)
        return total // 2, total - total // 2
    return padding, padding


def _split_padding(conv: nn.Conv1d, original: Any, total: Tuple[int, int]) -> Tuple[Padding, Tuple[int, int]]:
    """(padding of the exported conv, padding left to the input's pad node) adding up to
    ``total``: the conv keeps its original kind of padding (the same number, or 'same') when
    the pad node's share stays non-negative, else the pad node takes it all."""
    if original != "valid":
        padding = original if original == "same" else int(original[0])
        own_l, own_r = _own_padding(conv, padding)
        if total[0] >= own_l and total[1] >= own_r:
            return padding, (total[0] - own_l, total[1] - own_r)
    return 0, total


def _with_padding(conv: nn.Conv1d, padding: Padding) -> nn.Conv1d:
    """``conv`` rebuilt with another padding (same weights, device and dtype)."""
    new = nn.Conv1d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=padding,
                    dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                    padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(conv.weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _set_padding(gm: fx.GraphModule, pad: _InputPadding, left: int, right: int) -> None:
    """Rewrite the pad node's padding in place (the module keeps its name and type; an
    ``F.pad`` call keeps its other arguments)."""
    if pad.node.op == "call_module":
        gm.get_submodule(pad.node.target).padding = (left, right)
    elif len(pad.node.args) > 1:
        pad.node.args = (pad.node.args[0], [left, right]) + tuple(pad.node.args[2:])
    else:
        pad.node.kwargs = {**pad.node.kwargs, "pad": [left, right]}


def _export_conv1d(gm: fx.GraphModule, node: fx.Node, layer: PITConv1d,
                   calls: Dict[str, int]) -> Tuple[List[nn.Module], nn.Module]:
    """(modules to insert before the conv, the pruned conv) for one PITConv1d node."""
    pad = _input_padding(gm, node, layer, calls)
    if pad is None:
        *before, conv = layer.export()
        return before, conv
    *before, conv = layer.export((pad.left, pad.right))
    total_l, total_r = explicit_padding(conv)[0]
    for module in before:  # the layer's own leftover padding, moved into the user's node
        total_l += module.padding[0]
        total_r += module.padding[1]
    padding, (left, right) = _split_padding(conv, layer.padding, (total_l, total_r))
    _set_padding(gm, pad, left, right)
    return [], _with_padding(conv, padding)


def _following_bn(layer: PITModule, width: int) -> Optional[nn.Module]:
    args = getattr(layer, "following_bn_args", None)
    if not args:
        return None
    cls = nn.BatchNorm2d if isinstance(layer, PITConv2d) else nn.BatchNorm1d
    return cls(width, **args)


def export_graph(gm: fx.GraphModule, add_bn: bool = True) -> fx.GraphModule:
    """A copy of ``gm`` where every PIT layer is its pruned plain equivalent (other leaves,
    e.g. combiners, are left as they are); ``add_bn`` re-inserts the BatchNorms folded at
    conversion."""
    calls = call_counts(gm)

    def export_layer(new: fx.GraphModule, node: fx.Node, layer: nn.Module) -> Optional[PlainLayer]:
        if not isinstance(layer, PITModule):
            return None
        if isinstance(layer, PITConv1d):
            before, main = _export_conv1d(new, node, layer, calls)
        else:
            *before, main = layer.export()
        pads = [(f"_exported_pad{i or ''}", m) for i, m in enumerate(before)]
        bn = _following_bn(layer, main.weight.shape[0]) \
            if add_bn and isinstance(layer, PITWeightedModule) else None
        after = [] if bn is None else \
            [("_exported_bn", bn.to(device=main.weight.device, dtype=main.weight.dtype))]
        return PlainLayer(main, before=pads, after=after)

    return export_layers(gm, export_layer)
