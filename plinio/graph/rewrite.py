"""Small, generic fx graph edits shared by conversion and export."""
import copy
from typing import Any, Optional, Sequence, Tuple

import torch
import torch.fx as fx
import torch.nn as nn

from plinio.graph.tracing import make_example, model_device_dtype, propagate_shapes, run_with_batch_hint, trace


def prepare_graph(model: nn.Module, input_shape: Optional[Sequence[int]], input_example: Any
                  ) -> Tuple[fx.GraphModule, Tuple[torch.Tensor, ...]]:
    """Deep-copy ``model`` (the user's model is never modified), trace it and propagate shapes."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    device, dtype = model_device_dtype(model)
    example = make_example(input_shape, input_example, device, dtype)
    gm = trace(copy.deepcopy(model))
    run_with_batch_hint(lambda inputs: propagate_shapes(gm, inputs), example,
                        input_shape if input_example is None else None)
    return gm, example


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the qualified name ``name`` of ``root`` (adding or replacing it; the
    parent must exist)."""
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)


def bypass_node(gm: fx.GraphModule, node: fx.Node, source: Any = None) -> None:
    """Remove a node, wiring its users to ``source`` (default: its first argument)."""
    node.replace_all_uses_with(node.args[0] if source is None else source)
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
