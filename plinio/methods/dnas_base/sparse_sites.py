"""Which convolutions of a converted model run sparse, and with which flags
(``plinio.fast.sparse_step``; README "Sparse execution").

Sites are the PIT conv / linear layers (keyed by the layer: their own forward, an absorbed
padding and a supernet's conv tail all run them) and the merged convolution of each
supernet (keyed by its combiner). Their channel sets come from the channel analysis of the
conversion, their flags from ``plinio.graph.zero_gradients``, both computed on the converted
graph ``seed``; the fast graph shares its layers and node names.
"""
from dataclasses import replace
from typing import Any, Dict, Hashable, List, Optional, Sequence, Tuple

import torch.fx as fx
import torch.nn as nn

from plinio.fast import ConvGeometry, FastSuperNet, conv_geometry
from plinio.fast.sparse_step import ChannelMask, SparseExecution, SparseSite
from plinio.graph.channels import Desc, desc_groups
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
                  masks: Dict[int, ChannelMask]) -> Dict[Hashable, SparseSite]:
    """The merged convolution of every supernet of the fast graph, keyed by its combiner."""
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
    for node in runner.graph.nodes:
        module = supernet(node)
        if module is None or module.merged is None or not node.args:
            continue
        combiner_node, x = in_seed(node), in_seed(node.args[0])
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
    return sites


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
    merged = _merged_sites(seed, runner, facts, masks)
    members = [layer for node in runner.graph.nodes if isinstance(_module(runner, node), FastSuperNet)
               and _module(runner, node).merged is not None
               for chain in _module(runner, node).merged.chains for layer, _ in chain]
    _saving_policy(seed, layers, sites, members, calls)
    sites.update(merged)
    if not sites:
        return None, "no layer has channels to skip"
    thresholds = [(layer, "binarization_threshold", layer.binarization_threshold) for _, layer in layers
                  if hasattr(layer, "binarization_threshold")]
    return SparseExecution(masks, sites, thresholds), ""
