"""PIT conversion: which layers become PIT layers, mask creation, BN folding (docs/behaviour.md
§2.1, §5).

``convert()`` is the entry point PIT and PIT-SuperNet share: it returns the converted
``GraphModule`` (user's qualified names kept), the ordered PIT layers and the cost model.
"""
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Sequence, Set, Tuple, Type

import torch
import torch.fx as fx
import torch.nn as nn

from plinio.graph.analysis import ChannelAnalysis, LayerInfo
from plinio.graph.bn_folding import bn_args, fold_bn, is_foldable
from plinio.graph.channels import Concat, Const, Desc, Flatten, Group
from plinio.graph.rewrite import bypass_node, finalize, prepare_graph, rewrite_flatten, set_submodule
from plinio.graph.tracing import call_counts, model_device_dtype, node_shape
from plinio.methods.pit.cost_model import PITCostModel
from plinio.methods.pit.nn import (PITBatchNorm1d, PITBatchNorm2d, PITConv1d, PITConv2d, PITDilationMasker,
                                   PITFeaturesMasker, PITFrozenDilationMasker, PITFrozenFeaturesMasker,
                                   PITFrozenTimestepMasker, PITLinear, PITModule, PITTimestepMasker)
from plinio.methods.pit.nn.batchnorm_common import PITBatchNormBase
from plinio.methods.pit.nn.features_calculator import (ConcatFeaturesCalculator, ConstFeaturesCalculator,
                                                       FeaturesCalculator, FlattenFeaturesCalculator,
                                                       MaskerFeaturesCalculator)
from plinio.methods.pit.nn.masker_base import PITMaskerBase, masker_modules
from plinio.methods.pit.nn.module import PITWeightedModule

DEFAULT_CONVERSION_TYPES: Tuple[Type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)
_BN_TYPES = {nn.BatchNorm1d: PITBatchNorm1d, nn.BatchNorm2d: PITBatchNorm2d}


@dataclass
class PITConversion:
    """Result of ``convert``: the converted graph, its PIT layers (graph order) and their cost model."""

    gm: fx.GraphModule
    layers: Dict[str, PITModule]
    cost_model: PITCostModel
    analysis: ChannelAnalysis
    example: Tuple[torch.Tensor, ...]

    def maskers(self) -> Tuple[PITMaskerBase, ...]:
        """Every PIT masker of the converted graph (the wrappers keep them: the per-step NaN
        check reads their parameters without walking the module tree)."""
        return masker_modules(self.gm)


def _validate_names(exclude_names: Iterable[str], exclude_types: Iterable[type]) -> Tuple[Set[str], Tuple[type, ...]]:
    if isinstance(exclude_names, str):
        raise TypeError("exclude_names must be a collection of qualified module names, not a single string")
    names = set(exclude_names)
    types = tuple(exclude_types)
    for t in types:
        if not isinstance(t, type) or not issubclass(t, nn.Module):
            raise TypeError(f"exclude_types must hold nn.Module subclasses, got {t!r}")
    return names, types


def _input_ndim(node: fx.Node) -> int:
    shape = node_shape(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
    return -1 if shape is None else len(shape)


class _Planner:
    """Decides the role of every leaf module (convert / fold / follow / leave)."""

    def __init__(self, gm: fx.GraphModule, autoconvert: bool, exclude_names: Set[str],
                 exclude_types: Tuple[type, ...], conversion_types: Tuple[type, ...]) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.autoconvert = autoconvert
        self.exclude_names = exclude_names
        self.exclude_types = exclude_types
        self.conversion_types = conversion_types
        self.roles: Dict[str, str] = {}
        self.folds: Dict[str, str] = {}  # bn name -> layer name
        self.calls = call_counts(gm)

    def excluded(self, name: str, module: nn.Module) -> bool:
        return name in self.exclude_names or isinstance(module, self.exclude_types)

    def plan(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op != "call_module":
                continue
            name, module = node.target, self.modules[node.target]
            if isinstance(module, PITWeightedModule):
                self.roles[name] = "depthwise" if module.is_depthwise else "producer"
            elif isinstance(module, PITBatchNormBase):
                self.roles[name] = "follower"
            elif self.autoconvert and type(module) in self.conversion_types and not self.excluded(name, module):
                role = self._conversion_role(node, name, module)
                if role is not None:
                    self.roles[name] = role
        for node in self.gm.graph.nodes:
            if node.op == "call_module" and type(self.modules[node.target]) in _BN_TYPES:
                self._plan_bn(node)

    def _conversion_role(self, node: fx.Node, name: str, module: nn.Module) -> Optional[str]:
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            g, cin, cout = module.groups, module.in_channels, module.out_channels
            if g != 1 and not g == cin == cout:
                warnings.warn(f"'{name}': grouped convolution (groups={g}) is not supported by PIT; it is left "
                              f"unconverted (its input channels are kept)", UserWarning, stacklevel=4)
                return None
            return "depthwise" if g > 1 else "producer"
        if isinstance(module, nn.Linear) and _input_ndim(node) != 2:
            warnings.warn(f"'{name}': nn.Linear applied to a {_input_ndim(node)}-d tensor is left unconverted "
                          f"(PIT searches the features of (batch, features) inputs)", UserWarning, stacklevel=4)
            return None
        return "producer"

    def _plan_bn(self, node: fx.Node) -> None:
        name, bn = node.target, self.modules[node.target]
        if self.excluded(name, bn) or name in self.roles:
            return
        src = node.args[0]
        src_is_layer = isinstance(src, fx.Node) and src.op == "call_module" and \
            self.roles.get(src.target) in ("producer", "depthwise")
        if src_is_layer and len(src.users) > 1:
            raise ValueError(f"'{src.target}' is followed by BatchNorm '{name}' but its output is also used by "
                             f"{[u.name for u in src.users if u is not node]}; PIT folds a BatchNorm only into a "
                             f"layer whose single user it is. Exclude '{src.target}' or restructure the model.")
        if src_is_layer and is_foldable(bn) and self.calls[src.target] == 1 and self.calls[name] == 1 \
                and src.target not in self.folds.values():
            self.folds[name] = src.target
            self.roles[name] = "follower"
        elif self.autoconvert:
            self.roles[name] = "follower"


def _masker_for_groups(analysis: ChannelAnalysis, modules: Dict[str, nn.Module]) -> Dict[int, PITFeaturesMasker]:
    """One channel masker per group root: a user-placed layer's masker when it fits, else new.

    A user-placed frozen masker always fits (the user asked for every channel of that layer,
    so its whole group keeps them); a trainable one fits a group that may be pruned.
    """
    maskers: Dict[int, PITFeaturesMasker] = {}
    for info in analysis.layers.values():
        if info.output_group is None:
            continue
        root = info.output_group
        module = modules[info.name]
        if isinstance(module, PITWeightedModule):
            existing = module.out_features_masker
            if existing.frozen and not getattr(maskers.get(root), "frozen", False):
                maskers[root] = existing
            elif root not in maskers and not analysis.groups.is_frozen(root):
                maskers[root] = existing
    for root in analysis.groups.roots():
        if root not in maskers:
            size = analysis.groups.size(root)
            maskers[root] = PITFrozenFeaturesMasker(size) if analysis.groups.is_frozen(root) \
                else PITFeaturesMasker(size)
    return maskers


def calculator_for(desc: Desc, maskers: Dict[int, PITFeaturesMasker], threshold: float) -> FeaturesCalculator:
    """Input-features calculator of a channel descriptor."""
    if isinstance(desc, Const):
        return ConstFeaturesCalculator(desc.n)
    if isinstance(desc, Group):
        return MaskerFeaturesCalculator(maskers[desc.gid], threshold)
    if isinstance(desc, Concat):
        return ConcatFeaturesCalculator([calculator_for(p, maskers, threshold) for p in desc.parts])
    if isinstance(desc, Flatten):
        return FlattenFeaturesCalculator(calculator_for(desc.inner, maskers, threshold), desc.factor)
    raise TypeError(f"unknown channel descriptor {desc!r}")


def _time_maskers(conv: nn.Conv1d) -> Tuple[PITTimestepMasker, PITDilationMasker]:
    k = conv.kernel_size[0]
    searchable = conv.stride[0] == 1 and conv.padding_mode == "zeros" and k > 1
    if searchable:
        return PITTimestepMasker(k), PITDilationMasker(k)
    return PITFrozenTimestepMasker(k), PITFrozenDilationMasker(k)


def _new_layer(module: nn.Module, info: LayerInfo, masker: Optional[PITFeaturesMasker]) -> PITModule:
    shape = info.out_shapes[0]
    if isinstance(module, nn.Conv1d):
        return PITConv1d(module, shape[2], masker, *_time_maskers(module))
    if isinstance(module, nn.Conv2d):
        return PITConv2d(module, shape[2], shape[3], masker)
    if isinstance(module, nn.Linear):
        return PITLinear(module, masker)
    if type(module) in _BN_TYPES:
        return _BN_TYPES[type(module)](module)
    raise TypeError(f"no PIT layer for {type(module).__name__}")


def convert(model: nn.Module, input_shape: Optional[Sequence[int]] = None, *, input_example: Any = None,
            autoconvert_layers: bool = True, exclude_names: Iterable[str] = (),
            exclude_types: Iterable[type] = (), conversion_types: Tuple[type, ...] = DEFAULT_CONVERSION_TYPES
            ) -> PITConversion:
    """Trace a deep copy of ``model`` and turn its layers into PIT layers with shared masks.

    ``conversion_types``: exact module types converted when ``autoconvert_layers`` is True.
    PIT layers already in the model are always optimized.
    """
    names, types = _validate_names(exclude_names, exclude_types)
    gm, example = prepare_graph(model, input_shape, input_example)
    modules = dict(gm.named_modules())
    missing = sorted(n for n in names if n not in modules)
    if missing:
        raise ValueError(f"exclude_names {missing} are not submodules of the model "
                         f"(use names as in model.named_modules())")
    planner = _Planner(gm, autoconvert_layers, names, types, tuple(conversion_types))
    planner.plan()
    opaque = {name for name, m in modules.items() if name in names or isinstance(m, types)}
    analysis = ChannelAnalysis(gm, planner.roles, opaque).run()
    maskers = _masker_for_groups(analysis, modules)
    layers: Dict[str, PITModule] = {}
    for info in analysis.layers.values():
        if info.name in planner.folds:
            continue
        module = modules[info.name]
        if type(module) in _BN_TYPES and isinstance(info.input_desc, Const):
            continue  # a BatchNorm after a fixed-width producer has no mask to follow: left plain
        masker = maskers[info.output_group] if info.output_group is not None else None
        if isinstance(module, PITModule):
            layer = module
            if isinstance(layer, PITWeightedModule):
                layer.out_features_masker = masker
        else:
            layer = _new_layer(module, info, masker)
        threshold = layer.binarization_threshold
        layer.input_features_calculator = calculator_for(info.input_desc, maskers, threshold)
        layer.out_positions = info.out_positions
        layer.calls = info.calls
        layers[info.name] = layer
    for bn_name, layer_name in planner.folds.items():
        layer, bn = layers[layer_name], modules[bn_name]
        with torch.no_grad():
            weight, bias = fold_bn(layer.weight.detach(), None if layer.bias is None else layer.bias.detach(), bn)
        layer.weight = nn.Parameter(weight)
        layer.bias = nn.Parameter(bias)
        layer.following_bn_args = bn_args(bn)
    device, dtype = model_device_dtype(gm)
    for name, layer in layers.items():
        layer.to(device=device)
        if modules[name] is not layer:
            layer.to(dtype=dtype)
            layer.train(modules[name].training)
            set_submodule(gm, name, layer)
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target in planner.folds:
            bypass_node(gm, node)
    for node in analysis.flatten_views:
        rewrite_flatten(gm, node)
    finalize(gm)
    order = [n.target for n in gm.graph.nodes if n.op == "call_module" and n.target in layers]
    ordered = {name: layers[name] for name in dict.fromkeys(order)}
    return PITConversion(gm, ordered, PITCostModel(ordered), analysis, example)
