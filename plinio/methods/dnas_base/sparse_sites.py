"""Which convolutions of a converted model run sparse, and with which flags
(``plinio.fast.sparse_step``; README "Sparse execution").

Sites are the PIT conv / linear layers (keyed by the layer: their own forward, an absorbed
padding and a supernet's conv tail all run them) and the merged convolution of each
supernet (keyed by its combiner). Their channel sets come from the channel analysis of the
conversion, their flags from ``plinio.graph.zero_gradients``, both computed on the converted
graph ``seed``; the fast graph shares its layers and node names.

Compact groups (docs/internals.md §7): a channel group runs compact — its tensors hold only
the kept channels — when dropping its pruned channels changes no value and no gradient:
every op reading or writing one of its tensors runs unchanged on compact tensors
(``plinio.fast.compact_ops``; dropouts of the fast graph through
``plinio.fast.compact_dropout``; layers and merged convolutions through their sites), every
site writing it has a zero output gradient on pruned channels (``grad_pruned_rows`` False),
every site reading it lets the gradient of dead inputs die (``grad_dead_inputs`` False; a
depthwise conv needs neither), it does not reach the graph output, and it is never
concatenated or flattened together with a group that stays full width.
"""
from dataclasses import replace
from typing import Any, Dict, Hashable, List, Optional, Sequence, Set, Tuple

import torch.fx as fx
import torch.nn as nn

from plinio.fast import ConvGeometry, FastSuperNet, conv_geometry
from plinio.fast.compact_dropout import compact_dropouts
from plinio.fast.compact_ops import runs_compact
from plinio.fast.sparse_step import ChannelMask, SparseExecution, SparseSite
from plinio.graph.channels import Desc, Group, desc_groups
from plinio.graph.zero_gradients import GradientFacts

Layers = Sequence[Tuple[str, nn.Module]]


def _threshold(layers: Layers) -> Tuple[Optional[float], str]:
    """The one binarization threshold of every PIT layer, or (None, why not)."""
    values = {float(layer.binarization_threshold) for _, layer in layers
              if hasattr(layer, "binarization_threshold")}
    if len(values) > 1:
        return None, f"the layers use different binarization thresholds {sorted(values)}"
    return (values.pop() if values else 0.5), ""


def _masks(seed: fx.GraphModule, layers: Layers, facts: GradientFacts, threshold: float
           ) -> Dict[int, ChannelMask]:
    """Channel group → the mask its producing layers apply."""
    masks: Dict[int, ChannelMask] = {}
    by_name = dict(layers)
    for node in seed.graph.nodes:
        layer = by_name.get(node.target) if node.op == "call_module" else None
        masker = getattr(layer, "out_features_masker", None)
        gid = facts.group(node.name)
        if masker is None or gid is None or gid in masks:
            continue
        masks[gid] = ChannelMask(masker, None if masker.frozen else masker.param_name, masker.out_channels,
                                 masker.keep_alive_channels, threshold)
    return masks


def _module(gm: fx.GraphModule, node: fx.Node) -> Optional[nn.Module]:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _single(values: List[Optional[Desc]]) -> Optional[Desc]:
    """The descriptor every call sees, or None when they differ or one is unknown."""
    return values[0] if values and all(v is not None and v == values[0] for v in values) else None


def _layer_site(layer: nn.Module, calls: List[fx.Node], facts: GradientFacts,
                masks: Dict[int, ChannelMask]) -> Optional[SparseSite]:
    if not callable(getattr(layer, "masked_weight_and_bias", None)) or not calls:
        return None
    geometry, _ = conv_geometry(layer)
    if geometry is not None:
        cin, cout = geometry.in_channels, geometry.out_channels
    elif layer.weight.dim() == 2 and not hasattr(layer, "kernel_size"):  # a Linear
        cout, cin = layer.weight.shape
    else:
        return None  # a convolution that is not zero-padded
    inputs = [c.args[0] if c.args and isinstance(c.args[0], fx.Node) else None for c in calls]
    if any(i is None for i in inputs):
        return None
    live = _single([facts.descs.get(i.name) for i in inputs])
    kept = _single([facts.descs.get(c.name) for c in calls])
    return _site(geometry, cin, cout, kept, live, masks,
                 grad_pruned_rows=not all(c.name in facts.output_gradient_zero for c in calls),
                 grad_dead_inputs=not all(i.name in facts.gradient_dies for i in inputs))


def _site(geometry: Optional[ConvGeometry], cin: int, cout: int, kept: Optional[Desc], live: Optional[Desc],
          masks: Dict[int, ChannelMask], grad_pruned_rows: bool, grad_dead_inputs: bool) -> Optional[SparseSite]:
    """A site when its channel sets are known masks (else None: it stays dense)."""
    if live is None or any(g not in masks for g in desc_groups(live)):
        return None
    kept_id = next(desc_groups(kept), None) if kept is not None else None
    if kept_id is not None and kept_id not in masks:
        return None
    return SparseSite(geometry, cin, cout, kept_id, live, grad_pruned_rows, grad_dead_inputs)


def _merged_sites(seed: fx.GraphModule, runner: fx.GraphModule, facts: GradientFacts,
                  masks: Dict[int, ChannelMask]) -> Tuple[Dict[Hashable, SparseSite], List[Set[int]]]:
    """The merged convolution of every supernet of the fast graph, keyed by its combiner, and
    per merged convolution the groups it reads or writes that it cannot hold compact."""
    seed_nodes = {n.name: n for n in seed.graph.nodes}
    combiner_nodes = {id(seed.get_submodule(n.target)): n for n in seed.graph.nodes if n.op == "call_module"}

    def supernet(node: Any) -> Optional[FastSuperNet]:
        module = _module(runner, node) if isinstance(node, fx.Node) else None
        return module if isinstance(module, FastSuperNet) else None

    def in_seed(node: Any) -> Optional[fx.Node]:
        """The seed node computing the same value (a supernet: its combiner's node)."""
        if supernet(node) is not None:
            return combiner_nodes.get(id(supernet(node).combiner))
        return seed_nodes.get(node.name) if isinstance(node, fx.Node) else None

    sites: Dict[Hashable, SparseSite] = {}
    dense: List[Set[int]] = []
    for node in runner.graph.nodes:
        module = supernet(node)
        if module is None or module.merged is None or not node.args:
            continue
        combiner_node, x = in_seed(node), in_seed(node.args[0])
        touched = _groups_of((combiner_node, x), facts)
        dense.append(touched)
        if combiner_node is None or x is None:
            continue
        geometry = module.merged.geometry
        grad_pruned_rows = combiner_node.name not in facts.output_gradient_zero
        grad_dead_inputs = x.name not in facts.gradient_dies
        if module.merged.has_identity and grad_pruned_rows and grad_dead_inputs:
            continue  # the Identity's Dirac rows on pruned channels would be needed (FastSuperNet)
        site = _site(geometry, geometry.in_channels, geometry.out_channels, facts.descs.get(combiner_node.name),
                     facts.descs.get(x.name), masks, grad_pruned_rows, grad_dead_inputs)
        if site is not None:
            sites[module.combiner] = site
            dense[-1] = _site_blocks(site, touched)
    return sites, dense


def _input_kept_elsewhere(node: fx.Node, seed: fx.GraphModule, gathering: Dict[str, nn.Module]) -> bool:
    """Whether some other op may keep the value ``node`` for its backward: anything but a
    layer output or a supernet output (``combine`` keeps its inputs, not its output), read
    by anything but layers that save a gathered copy (a dense op reading it would save it
    whole; a ReLU keeps its output)."""
    if node.op != "call_module" or not (node.target in gathering or getattr(
            type(seed.get_submodule(node.target)), "plinio_merges_inputs", False)):
        return True
    return any(user.op != "call_module" or user.target not in gathering for user in node.users)


def _saving_policy(seed: fx.GraphModule, layers: Layers, sites: Dict[Hashable, SparseSite],
                   merged_members: List[nn.Module], calls: Dict[str, List[fx.Node]]) -> None:
    """Each layer site saves a gathered copy of its input only where no other op keeps the
    input anyway (else the copy would add bytes to the dense path's)."""
    gathering = {name: layer for name, layer in layers if layer in sites and layer not in merged_members
                 and not (sites[layer].geometry is not None and sites[layer].geometry.groups > 1)}
    for name, layer in gathering.items():
        inputs = [c.args[0] for c in calls[name]]
        keep = any(_input_kept_elsewhere(i, seed, gathering) for i in inputs)
        sites[layer] = replace(sites[layer], keep_input=keep)


def _groups_of(nodes: Sequence[Any], facts: GradientFacts) -> Set[int]:
    """Every group the values of ``nodes`` (None entries skipped) are made of."""
    return {g for n in nodes if isinstance(n, fx.Node) and facts.descs.get(n.name) is not None
            for g in desc_groups(facts.descs[n.name])}


def _site_blocks(site: Optional[SparseSite], touched: Set[int]) -> Set[int]:
    """The groups among ``touched`` (read or written by a layer or merged convolution) that
    its site cannot hold compact (all of them when it has no site)."""
    if site is None:
        return set(touched)
    depthwise = site.geometry is not None and site.geometry.groups > 1
    out_ok = site.kept is not None and not site.grad_pruned_rows
    in_ok = out_ok if depthwise else not site.grad_dead_inputs
    out_groups = {site.kept} if site.kept is not None else set()
    in_groups = set(desc_groups(site.live))
    allowed = (out_groups if out_ok else set()) | (in_groups if in_ok else set())
    # a group on both sides (a residual's shared mask) is blocked by either side that needs it whole
    forbidden = (out_groups if not out_ok else set()) | (in_groups if not in_ok else set())
    return (touched - allowed) | (touched & forbidden)


def _compact_groups(seed: fx.GraphModule, runner: fx.GraphModule, layers: Layers, facts: GradientFacts,
                    masks: Dict[int, ChannelMask], sites: Dict[Hashable, SparseSite],
                    calls: Dict[str, List[fx.Node]], dense_merged: List[Set[int]]
                    ) -> Tuple[Set[int], Dict[str, Tuple[int, int]]]:
    """(the groups that run compact, the dropout nodes of the fast graph that read them: node
    name → (group, channels)); see the module docstring."""
    blocked: Set[int] = set().union(*dense_merged) if dense_merged else set()
    by_name = dict(layers)
    modules = dict(seed.named_modules())
    in_runner = {n.name: n for n in runner.graph.nodes if n.op == "call_module"}

    def desc_of(arg: Any) -> Optional[Desc]:
        return facts.descs.get(arg.name) if isinstance(arg, fx.Node) else None

    dropouts: Dict[str, Tuple[int, int]] = {}
    for name, layer in layers:
        touched = _groups_of([n for call in calls.get(name, []) for n in (call, *call.args[:1])], facts)
        blocked |= _site_blocks(sites.get(layer), touched)
    for node in seed.graph.nodes:
        touched = _groups_of([node] + node.all_input_nodes, facts)
        if not touched or node.op == "call_module" and node.target in by_name:
            continue
        module = modules.get(node.target) if node.op == "call_module" else None
        if getattr(type(module), "plinio_merges_inputs", False):
            continue  # the supernet combiner: an n-ary add of its branches (one group)
        if type(module) is nn.Dropout and isinstance(desc_of(node), Group) and node.name in in_runner \
                and in_runner[node.name].target == node.target:
            gid = desc_of(node).gid
            if gid in masks:
                dropouts[node.name] = (gid, masks[gid].size)
                continue
        if not runs_compact(node, modules, desc_of):
            blocked |= touched
    candidates = {gid for gid, mask in masks.items() if mask.param is not None} - blocked
    changed = True
    while changed:  # a concatenation or flatten holds its groups all compact or all full width
        changed = False
        for desc in facts.descs.values():
            groups = set(desc_groups(desc)) if desc is not None else set()
            if groups & candidates and not groups <= candidates:
                candidates -= groups
                changed = True
    return candidates, {name: entry for name, entry in dropouts.items() if entry[0] in candidates}


def build_sparse_execution(seed: fx.GraphModule, runner: fx.GraphModule, layers: Layers,
                           facts: GradientFacts) -> Tuple[Optional[SparseExecution], str]:
    """(the sparse execution of the model, '') or (None, why it does not apply)."""
    threshold, reason = _threshold(layers)
    if threshold is None:
        return None, reason
    masks = _masks(seed, layers, facts, threshold)
    calls: Dict[str, List[fx.Node]] = {}
    for node in seed.graph.nodes:
        if node.op == "call_module":
            calls.setdefault(node.target, []).append(node)
    sites: Dict[Hashable, SparseSite] = {}
    for name, layer in layers:
        site = _layer_site(layer, calls.get(name, []), facts, masks)
        if site is not None:
            sites[layer] = site
    merged, dense_merged = _merged_sites(seed, runner, facts, masks)
    members = [layer for node in runner.graph.nodes if isinstance(_module(runner, node), FastSuperNet)
               and _module(runner, node).merged is not None
               for chain in _module(runner, node).merged.chains for layer, _ in chain]
    _saving_policy(seed, layers, sites, members, calls)
    sites.update(merged)
    if not sites:
        return None, "no layer has channels to skip"
    compact, dropouts = _compact_groups(seed, runner, layers, facts, masks, sites, calls, dense_merged)
    for key, site in sites.items():
        compact_out = site.kept in compact
        compact_in = any(g in compact for g in desc_groups(site.live))
        sites[key] = replace(site, compact_out=compact_out, compact_in=compact_in,
                             channels_last=site.geometry is not None and not (compact_in or compact_out)
                             and bool(compact))
    thresholds = [(layer, "binarization_threshold", layer.binarization_threshold) for _, layer in layers
                  if hasattr(layer, "binarization_threshold")]
    compact_runner = compact_dropouts(runner, dropouts) if dropouts else None
    return SparseExecution(masks, sites, thresholds, sorted(compact), compact_runner), ""
