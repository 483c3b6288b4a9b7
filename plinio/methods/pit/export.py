"""PIT export (docs/behaviour.md §6): every PIT layer of a converted graph becomes its pruned
plain ``torch.nn`` layer.

The pruned layer keeps the layer's qualified name; an extra ``ConstantPad1d`` is named
``<layer>_exported_pad`` and a re-inserted BatchNorm ``<layer>_exported_bn``. A zero
``ConstantPad1d`` / ``F.pad`` feeding only a PITConv1d is folded into the conv's padding
first, so that causal padding is rewritten to (k_opt - 1) · d_opt. The search model is not
touched.
"""
from typing import Dict, List, Optional, Tuple

import torch.fx as fx
import torch.nn as nn

from plinio.graph.export import PlainLayer, export_layers
from plinio.graph.padding import zero_padding
from plinio.graph.rewrite import bypass_node
from plinio.graph.tracing import call_counts
from plinio.methods.pit.nn.conv1d import PITConv1d
from plinio.methods.pit.nn.conv2d import PITConv2d
from plinio.methods.pit.nn.module import PITModule, PITWeightedModule


def _fold_input_padding(gm: fx.GraphModule, node: fx.Node, layer: PITConv1d,
                        calls: Dict[str, int]) -> Tuple[int, int]:
    """(left, right) zero padding of the node feeding ``layer`` when it pads the last dim
    only and feeds nothing else; that node is then removed. (0, 0) otherwise."""
    src = node.args[0] if node.args else None
    if layer.padding_mode != "zeros" or calls[node.target] != 1 or \
            not isinstance(src, fx.Node) or len(src.users) != 1:
        return 0, 0
    found = zero_padding(src, gm.get_submodule)
    if found is None or len(found[1]) != 2:
        return 0, 0
    source, (left, right) = found
    bypass_node(gm, src, source)
    return left, right


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
            plain: List[nn.Module] = layer.export(_fold_input_padding(new, node, layer, calls))
        else:
            plain = layer.export()
        *before, main = plain
        pads = [(f"_exported_pad{i or ''}", m) for i, m in enumerate(before)]
        bn = _following_bn(layer, main.weight.shape[0]) \
            if add_bn and isinstance(layer, PITWeightedModule) else None
        after = [] if bn is None else \
            [("_exported_bn", bn.to(device=main.weight.device, dtype=main.weight.dtype))]
        return PlainLayer(main, before=pads, after=after)

    return export_layers(gm, export_layer)
