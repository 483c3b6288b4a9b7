"""Export (SPEC §6): rewrite a converted graph into a plain ``torch.nn`` GraphModule.

Each PIT layer node is replaced by the plain modules its ``export()`` returns (the pruned
layer keeps the layer's qualified name; an extra ``ConstantPad1d`` is named
``<layer>_exported_pad`` and a re-inserted BatchNorm ``<layer>_exported_bn``). A zero
``ConstantPad1d`` / ``F.pad`` feeding only a PITConv1d is folded into the conv's padding first,
so that causal padding is rewritten to (k_opt - 1) · d_opt. The search model is not touched.
"""
import copy
from typing import Dict, List, Optional, Tuple

import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from plinio.graph.rewrite import finalize
from plinio.methods.pit.nn.conv1d import PITConv1d
from plinio.methods.pit.nn.conv2d import PITConv2d
from plinio.methods.pit.nn.module import PITModule, PITWeightedModule


def _zero_pad_1d(node: fx.Node, modules: Dict[str, nn.Module]) -> Optional[Tuple[int, int]]:
    """(left, right) when ``node`` is a zero constant pad of the last dim only, else None."""
    if node.op == "call_module":
        mod = modules[node.target]
        if isinstance(mod, (nn.ConstantPad1d, nn.ZeroPad1d)) and getattr(mod, "value", 0) == 0 \
                and len(mod.padding) == 2:
            return int(mod.padding[0]), int(mod.padding[1])
        return None
    if node.op == "call_function" and node.target is F.pad:
        pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
        if isinstance(pad, (tuple, list)) and len(pad) == 2 and all(isinstance(p, int) for p in pad) \
                and mode == "constant" and value in (None, 0, 0.0):
            return int(pad[0]), int(pad[1])
    return None


def _following_bn(layer: PITModule, width: int) -> Optional[nn.Module]:
    args = getattr(layer, "following_bn_args", None)
    if not args:
        return None
    cls = nn.BatchNorm2d if isinstance(layer, PITConv2d) else nn.BatchNorm1d
    return cls(width, **args)


def _add_module(gm: fx.GraphModule, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, attr, module)


def _export_node(gm: fx.GraphModule, node: fx.Node, layer: PITModule, modules: Dict[str, nn.Module],
                 calls: Dict[str, int], add_bn: bool) -> None:
    extra = (0, 0)
    if isinstance(layer, PITConv1d) and layer.padding_mode == "zeros" and calls[node.target] == 1:
        src = node.args[0]
        pad = _zero_pad_1d(src, modules) if isinstance(src, fx.Node) and len(src.users) == 1 else None
        if pad is not None:
            extra = pad
            node.args = (src.args[0],) + tuple(node.args[1:])
            gm.graph.erase_node(src)
    plain: List[nn.Module] = layer.export(extra) if isinstance(layer, PITConv1d) else layer.export()
    for mod in plain:
        mod.train(layer.training)
    *before, main = plain
    name = node.target
    for i, mod in enumerate(before):
        pad_name = f"{name}_exported_pad" if i == 0 else f"{name}_exported_pad{i}"
        _add_module(gm, pad_name, mod)
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(pad_name, (node.args[0],))
        node.args = (new,) + tuple(node.args[1:])
    _add_module(gm, name, main)
    bn = _following_bn(layer, main.weight.shape[0]) if add_bn and isinstance(layer, PITWeightedModule) else None
    if bn is not None:
        bn_name = f"{name}_exported_bn"
        bn.train(layer.training)
        _add_module(gm, bn_name, bn.to(device=main.weight.device, dtype=main.weight.dtype))
        with gm.graph.inserting_after(node):
            bn_node = gm.graph.call_module(bn_name, (node,))
        node.replace_all_uses_with(bn_node, delete_user_cb=lambda user: user is not bn_node)


def export_graph(gm: fx.GraphModule, add_bn: bool = True) -> fx.GraphModule:
    """A copy of ``gm`` where every PIT layer is its pruned plain equivalent."""
    new = copy.deepcopy(gm)
    modules = dict(new.named_modules())
    calls: Dict[str, int] = {}
    for node in new.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    done: Dict[str, nn.Module] = {}
    for node in list(new.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), PITModule):
            continue
        if node.target in done:
            continue
        layer = modules[node.target]
        _export_node(new, node, layer, modules, calls, add_bn)
        done[node.target] = new.get_submodule(node.target)
    return finalize(new)


def check_plain(gm: nn.Module) -> nn.Module:
    """Raise if a plinio module survived the export."""
    left = [name for name, m in gm.named_modules() if type(m).__module__.startswith("plinio.")
            and not isinstance(m, fx.GraphModule)]
    if left:
        raise RuntimeError(f"export left plinio modules in the model: {left}")
    return gm
