"""Small, generic fx graph edits shared by conversion and export."""
import copy
from typing import Any, Optional, Sequence, Tuple

import torch
import torch.fx as fx
import torch.nn as nn

from plinio.graph.tracing import make_example, model_device_dtype, propagate_shapes, trace


def prepare_graph(model: nn.Module, input_shape: Optional[Sequence[int]], input_example: Any
                  ) -> Tuple[fx.GraphModule, Tuple[torch.Tensor, ...]]:
    """Deep-copy ``model`` (the user's model is never modified), trace it and propagate shapes."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    device, dtype = model_device_dtype(model)
    example = make_example(input_shape, input_example, device, dtype)
    gm = trace(copy.deepcopy(model))
    propagate_shapes(gm, example)
    return gm, example


def replace_module(gm: fx.GraphModule, name: str, new: nn.Module) -> None:
    """Put ``new`` at the qualified name ``name`` (same training flag as the module it replaces)."""
    old = gm.get_submodule(name)
    new.train(old.training)
    parent_name, _, attr = name.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, attr, new)


def bypass_node(gm: fx.GraphModule, node: fx.Node) -> None:
    """Remove a single-input node, wiring its users to its input."""
    node.replace_all_uses_with(node.args[0])
    gm.graph.erase_node(node)


def rewrite_flatten(gm: fx.GraphModule, node: fx.Node) -> None:
    """Replace a ``view``/``reshape`` that flattens from dim 1 with ``torch.flatten(x, 1)``, so the
    graph stays valid when the number of channels changes."""
    with gm.graph.inserting_before(node):
        new = gm.graph.call_function(torch.flatten, (node.args[0], 1))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def finalize(gm: fx.GraphModule) -> fx.GraphModule:
    """Drop submodules no node uses any more, check and recompile the graph."""
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return gm
