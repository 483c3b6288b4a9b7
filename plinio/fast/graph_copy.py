"""Helpers shared by the fast-path graph passes: each pass edits a copy of the converted
graph and builds a new ``GraphModule`` that shares every layer with the original."""
import copy
import functools
from typing import Any, Dict, Mapping

import torch.fx as fx
import torch.nn as nn


def fetch(root: nn.Module, target: str) -> Any:
    """The submodule, parameter or buffer at a dotted ``target`` of ``root``."""
    return functools.reduce(getattr, target.split("."), root) if target else root


def copy_graph(gm: fx.GraphModule) -> fx.Graph:
    """An editable copy of ``gm``'s graph (same code generation)."""
    graph = fx.Graph()
    graph._codegen = copy.deepcopy(gm.graph._codegen)
    value_map: Dict[fx.Node, fx.Node] = {}
    graph.output(graph.graph_copy(gm.graph, value_map))
    return graph


def rebuild(gm: fx.GraphModule, graph: fx.Graph,
            new_modules: Mapping[str, nn.Module]) -> fx.GraphModule:
    """A GraphModule running ``graph``: targets in ``new_modules`` come from there, every
    other target is ``gm``'s own object (shared, not copied)."""
    graph.lint()
    root = {n.target: new_modules[n.target] if n.target in new_modules else fetch(gm, n.target)
            for n in graph.nodes if n.op in ("call_module", "get_attr")}
    return fx.GraphModule(root, graph, type(gm).__name__)
