"""Graph pass: rewrite every supernet of a converted ``GraphModule`` into a ``FastSuperNet``.

For each combiner node (a leaf whose class sets ``plinio_merges_inputs``) the pass finds the
supernet input ``x`` (the latest node every branch output depends on), cuts each branch's
sub-graph out (it may only read ``x`` and attributes), asks the planner which branches are one
exact convolution, checks each such layer against its own forward on a probe input, and
replaces branches + combiner by one ``FastSuperNet`` node. The input ``GraphModule`` is not
modified: a new one, sharing every layer with it, is returned.
"""
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .graph_copy import copy_graph, fetch, rebuild
from .linear_ops import (ConvGeometry, compose, conv_geometry, conv_matches_geometry,
                         trusted_conv_forward)
from .merge_plan import IDENTITY, Candidate, LinearCandidate, MergePlan, plan_merge
from .merged_conv import ChainLayer, MergedConv
from .supernet_forward import FastSuperNet, LinearTail, Runner

FAST_MODULE_NAME = "plinio_fast_forward"


def is_combiner(module: Any) -> bool:
    """A supernet combiner: merges its list input and samples θ."""
    return bool(getattr(type(module), "plinio_merges_inputs", False)) and \
        callable(getattr(module, "sample_theta", None))


def _ancestor_sets(graph: fx.Graph) -> Dict[fx.Node, Set[fx.Node]]:
    """For every node, the set of nodes it depends on (graph order is topological)."""
    result: Dict[fx.Node, Set[fx.Node]] = {}
    for node in graph.nodes:
        acc: Set[fx.Node] = set()
        for a in node.all_input_nodes:
            acc.add(a)
            acc |= result[a]
        result[node] = acc
    return result


def _chain_candidate(nodes: Sequence[fx.Node], x: fx.Node, gm: fx.GraphModule,
                     chain_out: List[ChainLayer]) -> Candidate:
    """Candidate of a branch sub-graph: linear conv chain, identity, or a reason."""
    previous = x
    for node in nodes:
        if node.op != "call_module":
            return f"node '{node.name}' ({node.op} {node.target}) is not a layer"
        if node.args != (previous,) or node.kwargs:
            return f"node '{node.name}' does not take the previous branch value as its only input"
        previous = node
    layers = []
    for node in nodes:  # cheap structural checks first
        module = fetch(gm, node.target)
        geometry, reason = (None, "") if type(module) is nn.Identity else conv_geometry(module)
        if geometry is None and reason:
            return f"layer '{node.target}': {reason}"
        layers.append((node, module, geometry))
    composite: Optional[ConvGeometry] = None
    macs = 0
    for node, module, geometry in layers:
        if geometry is None:
            chain_out.append((module, None))
            continue
        if not trusted_conv_forward(module) and not conv_matches_geometry(module, geometry):
            return (f"layer '{node.target}': its forward is not the plain convolution its "
                    "hyper-parameters describe")
        macs += geometry.macs_per_output_position()
        if composite is None:
            composite = geometry
        else:
            composite, reason = compose(composite, geometry)
            if composite is None:
                return f"chain ending at '{node.target}': {reason}"
        chain_out.append((module, geometry))
    if composite is None:
        return IDENTITY
    return LinearCandidate(geometry=composite, separate_macs=macs)


class _SupernetSite:
    """What the pass learned about one combiner node of the graph."""

    def __init__(self, combiner_node: fx.Node, x: fx.Node, regions: List[List[fx.Node]],
                 outputs: List[fx.Node]) -> None:
        self.combiner_node = combiner_node
        self.x = x
        self.regions = regions
        self.outputs = outputs


def _find_site(node: fx.Node, ancestors: Dict[fx.Node, Set[fx.Node]],
               position: Dict[fx.Node, int]) -> Tuple[Optional[_SupernetSite], str]:
    """Locate the supernet input and each branch's sub-graph for a combiner node."""
    if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], (list, tuple)):
        return None, "the combiner is not called with one list of branch outputs"
    outputs = list(node.args[0])
    if not outputs or not all(isinstance(o, fx.Node) for o in outputs):
        return None, "a branch output is not a graph value"
    common: Optional[Set[fx.Node]] = None
    for out in outputs:
        reach = ancestors[out] | {out}
        common = reach if common is None else common & reach
    candidates = [n for n in common or () if n.op not in ("get_attr", "output")]
    if not candidates:
        return None, "the branches share no input"
    x = max(candidates, key=lambda n: position[n])
    regions = []
    for out in outputs:
        if out is x:
            regions.append([])
            continue
        region = [n for n in ancestors[out] | {out} if n is not x and x in ancestors[n]]
        region.sort(key=lambda n: position[n])
        inside = set(region)
        for n in region:
            external = [a for a in n.all_input_nodes
                        if a is not x and a not in inside and a.op != "get_attr"]
            if external:
                return None, (f"branch node '{n.name}' reads '{external[0].name}', a value "
                              "from outside the supernet")
            users = [u for u in n.users if u not in inside]
            if n is out:
                if any(u is not node for u in users):
                    return None, f"branch output '{n.name}' is also used outside the supernet"
            elif users:
                return None, f"branch node '{n.name}' is also used outside its branch"
        regions.append(region)
    return _SupernetSite(node, x, regions, outputs), ""


def _branch_module(gm: fx.GraphModule, region: List[fx.Node], x: fx.Node,
                   out: fx.Node) -> fx.GraphModule:
    """A GraphModule computing one branch from ``x``, sharing the layers of ``gm``."""
    graph = fx.Graph()
    env: Dict[fx.Node, fx.Node] = {x: graph.placeholder("x")}
    attrs = sorted({a for n in region for a in n.all_input_nodes if a.op == "get_attr"},
                   key=lambda n: n.name)
    for node in attrs + region:
        env[node] = graph.node_copy(node, lambda a: env[a])
    graph.output(env[out])
    return fx.GraphModule(_targets_of(gm, graph), graph, "SuperNetBranch")


def _linear_tail(gm: fx.GraphModule, region: List[fx.Node], x: fx.Node, out: fx.Node
                 ) -> Optional[Tuple[fx.GraphModule, LinearTail]]:
    """When a branch ends with a plain or PIT convolution, ``θ·conv(z, W, b)`` equals
    ``conv(z, θ·W, θ·b)``: return (runner of the branch up to ``z``, the final layer) so that
    θ can scale the (small) weights instead of the (large) output."""
    if not region or out.op != "call_module" or out.kwargs or len(out.args) != 1:
        return None
    module = fetch(gm, out.target)
    geometry, _ = conv_geometry(module)
    if geometry is None or not trusted_conv_forward(module):
        return None
    runner = _runner_up_to_input(gm, region, x, out)
    return (runner, (module, geometry)) if runner is not None else None


def _runner_up_to_input(gm: fx.GraphModule, region: List[fx.Node], x: fx.Node,
                        out: fx.Node) -> Optional[fx.GraphModule]:
    """The branch computed up to the single input of its last node ``out``, or None when that
    input is not the supernet input or a value of the branch."""
    z = out.args[0] if out.args else None
    if not isinstance(z, fx.Node) or (z is not x and z not in region):
        return None
    return _branch_module(gm, [n for n in region if n is not out], x, z)


_RELU_FUNCTIONS = (torch.relu, F.relu)


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` is a plain ReLU of one value (module, function or method, in place
    or not)."""
    if len(node.args) != 1:
        return False
    if node.op == "call_module":
        return type(fetch(gm, node.target)) is nn.ReLU and not node.kwargs
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS and set(node.kwargs) <= {"inplace"}
    return node.op == "call_method" and node.target in ("relu", "relu_") and not node.kwargs


def _relu_tail(gm: fx.GraphModule, region: List[fx.Node], x: fx.Node, out: fx.Node
               ) -> Optional[Runner]:
    """When a branch ends with a ReLU, ``θ·relu(z)`` is what ``combine`` computes from ``z``
    with the ReLU fused: return the runner of the branch up to ``z``."""
    if not region or not _is_relu(gm, out):
        return None
    return _runner_up_to_input(gm, region, x, out)


def _targets_of(gm: fx.GraphModule, graph: fx.Graph) -> Dict[str, Any]:
    return {n.target: fetch(gm, n.target) for n in graph.nodes
            if n.op in ("call_module", "get_attr")}


def optimize_supernets(gm: fx.GraphModule) -> fx.GraphModule:
    """A new GraphModule computing the same function as ``gm`` with every supernet replaced by
    a :class:`FastSuperNet`. Layers are shared with ``gm`` (no copy); ``gm`` is untouched.

    The merge plans are available as ``result.plinio_merge_plans`` (qualified supernet name →
    :class:`MergePlan`), and supernets left as they were with the reason as
    ``result.plinio_unoptimized`` (name → reason).
    """
    graph = copy_graph(gm)
    plans: Dict[str, MergePlan] = {}
    skipped: Dict[str, str] = {}
    new_modules: Dict[str, nn.Module] = {}
    for node in list(graph.nodes):
        if node.op != "call_module" or not is_combiner(fetch(gm, node.target)):
            continue
        combiner = fetch(gm, node.target)
        prefix = node.target.rsplit(".", 1)[0] if "." in node.target else ""
        name = prefix or node.target
        position = {n: i for i, n in enumerate(graph.nodes)}
        site, reason = _find_site(node, _ancestor_sets(graph), position)
        if site is not None and len(site.outputs) != getattr(combiner, "n_branches",
                                                             len(site.outputs)):
            site, reason = None, "the combiner receives a different number of branches"
        if site is None:
            skipped[name] = reason
            continue
        candidates: List[Candidate] = []
        chains: List[List[ChainLayer]] = []
        for region in site.regions:
            chain: List[ChainLayer] = []
            candidates.append(_chain_candidate(region, site.x, gm, chain)
                              if region else IDENTITY)
            chains.append(chain)
        plan = plan_merge(candidates)
        merged = MergedConv(plan, [chains[m.branch] for m in plan.members]) \
            if plan.members else None
        runners = [_branch_module(gm, region, site.x, out)
                   for region, out in zip(site.regions, site.outputs)]
        modules = [[fetch(gm, n.target) for n in region if n.op == "call_module"]
                   for region in site.regions]
        tails, relu_inputs = {}, {}
        for i in plan.separate:
            tail = _linear_tail(gm, site.regions[i], site.x, site.outputs[i])
            if tail is not None:
                tails[i] = tail
                continue
            relu_input = _relu_tail(gm, site.regions[i], site.x, site.outputs[i])
            if relu_input is not None:
                relu_inputs[i] = relu_input
        target = f"{prefix}.{FAST_MODULE_NAME}" if prefix else FAST_MODULE_NAME
        new_modules[target] = FastSuperNet(name, combiner, plan, merged, runners, modules,
                                           tails, relu_inputs)
        plans[name] = plan
        with graph.inserting_before(node):
            fast_node = graph.call_module(target, (site.x,))
        fast_node.meta = dict(node.meta)
        node.replace_all_uses_with(fast_node)
        graph.erase_node(node)
        for region in reversed(site.regions):
            for n in reversed(region):
                if not n.users:
                    graph.erase_node(n)
    for n in list(reversed(graph.nodes)):  # attributes only the removed branches read
        if n.op == "get_attr" and not n.users:
            graph.erase_node(n)
    result = rebuild(gm, graph, new_modules)
    result.plinio_merge_plans = plans
    result.plinio_unoptimized = skipped
    return result
