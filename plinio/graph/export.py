"""Export, generic part: rewrite a graph's layers into the plain modules they stand for.

A method says, per layer node, which plain modules replace it (:class:`PlainLayer`);
:func:`export_layers` edits a copy of the graph accordingly, and :func:`check_plain` makes
sure that no plinio module survived. What a layer exports to is the method's business
(``plinio.methods.pit.export`` for PIT layers, docs/behaviour.md §6).
"""
import copy
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Set, Tuple

import torch.fx as fx
import torch.nn as nn

from plinio.graph.rewrite import finalize, set_submodule
from plinio.graph.tracing import is_plinio_leaf


@dataclass
class PlainLayer:
    """The plain modules replacing one layer node.

    ``main`` takes the layer's qualified name; each ``(suffix, module)`` of ``before`` runs on
    the layer's input first and each one of ``after`` on its output, under the name
    ``<layer><suffix>``. Every module gets the layer's training flag.
    """

    main: nn.Module
    before: Sequence[Tuple[str, nn.Module]] = ()
    after: Sequence[Tuple[str, nn.Module]] = ()


LayerExport = Callable[[fx.GraphModule, fx.Node, nn.Module], Optional[PlainLayer]]


def _insert(gm: fx.GraphModule, node: fx.Node, plain: PlainLayer, training: bool) -> None:
    for _, module in (*plain.before, ("", plain.main), *plain.after):
        module.train(training)
    for suffix, module in plain.before:
        name = f"{node.target}{suffix}"
        set_submodule(gm, name, module)
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(name, (node.args[0],))
        node.args = (new,) + tuple(node.args[1:])
    set_submodule(gm, node.target, plain.main)
    last = node
    for suffix, module in plain.after:
        name = f"{node.target}{suffix}"
        set_submodule(gm, name, module)
        with gm.graph.inserting_after(last):
            new = gm.graph.call_module(name, (last,))
        last.replace_all_uses_with(new, delete_user_cb=lambda user, new=new: user is not new)
        last = new


def export_layers(gm: fx.GraphModule, export_layer: LayerExport) -> fx.GraphModule:
    """A copy of ``gm`` where each layer for which ``export_layer(copy, node, layer)`` returns
    a :class:`PlainLayer` is replaced by those modules (asked at the layer's first call; later
    calls use the same modules). ``export_layer`` may edit the copy's graph around the node
    (e.g. fold a padding node into the layer). ``gm`` itself is not touched."""
    new = copy.deepcopy(gm)
    modules = dict(new.named_modules())
    done: Set[str] = set()
    for node in list(new.graph.nodes):
        if node.op != "call_module" or node.target in done:
            continue
        layer = modules[node.target]
        plain = export_layer(new, node, layer)
        if plain is None:
            continue
        _insert(new, node, plain, layer.training)
        done.add(node.target)
    return finalize(new)


def check_plain(gm: nn.Module) -> nn.Module:
    """``gm``, or RuntimeError naming the plinio layers (``plinio.graph.tracing.is_plinio_leaf``)
    that survived the export."""
    left = [name for name, m in gm.named_modules() if is_plinio_leaf(m)]
    if left:
        raise RuntimeError(f"export left plinio modules in the model: {left}")
    return gm
