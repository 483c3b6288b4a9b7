"""Mask-sharing and input-features analysis of a traced, shape-propagated graph (docs/behaviour.md §5.2).

The caller says which leaf modules are searchable layers (``roles``):

- ``"producer"``: a conv/linear with its own output channels: a new channel group;
- ``"depthwise"``: a depthwise conv: its output channels are its input's (same group);
- ``"follower"``: a per-channel layer that follows its input's mask (PITBatchNorm, a folded BN).

Every other node is handled by the rule tables of ``plinio.graph.channel_rules``; modules
named in ``opaque`` (excluded by the user) keep every input channel, and nodes whose inputs
all have a fixed width need no rule. The result
gives, for each searchable layer, the descriptor of its input channels and (producers,
depthwise) its output group, plus which groups must stay frozen (they reach the network output
or an op that needs every channel).
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import torch.fx as fx
import torch.nn as nn

from plinio.graph import channel_rules
from plinio.graph.channels import Const, Desc, Group, Groups, canonical, desc_groups, desc_size, freeze, merge
from plinio.graph.tracing import node_shape

ROLES = ("producer", "depthwise", "follower")


@dataclass
class LayerInfo:
    """What the analysis found about one searchable layer (all its calls merged)."""

    name: str
    role: str
    input_desc: Optional[Desc] = None
    output_group: Optional[int] = None
    calls: int = 0
    out_positions: int = 0
    out_shapes: List[Tuple[int, ...]] = field(default_factory=list)


def _node_label(node: fx.Node) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"node '{node.name}' ({node.op} {target})"


class ChannelAnalysis:
    """Walks the graph once in topological order, assigning a channel descriptor to every
    tensor-valued node. Use ``run()`` then read ``layers``, ``groups`` and ``descs``."""

    def __init__(self, gm: fx.GraphModule, roles: Mapping[str, str], opaque: Iterable[str] = ()) -> None:
        for name, role in roles.items():
            if role not in ROLES:
                raise ValueError(f"unknown role {role!r} for layer '{name}' (expected one of {ROLES})")
        self.gm = gm
        self.roles = dict(roles)
        self.opaque = set(opaque)
        self.groups = Groups()
        self.descs: Dict[fx.Node, Optional[Desc]] = {}
        self.layers: Dict[str, LayerInfo] = {name: LayerInfo(name, role) for name, role in roles.items()}
        self.flatten_views: List[fx.Node] = []
        self._modules = dict(gm.named_modules())

    # ---- helpers used by the rules -------------------------------------------------------
    def desc(self, arg: Any) -> Optional[Desc]:
        """Descriptor of a node argument (None for constants and non-tensor values)."""
        return self.descs.get(arg) if isinstance(arg, fx.Node) else None

    def shape(self, arg: Any) -> Optional[Tuple[int, ...]]:
        """Shape of a node's tensor output (None when not a tensor)."""
        return node_shape(arg) if isinstance(arg, fx.Node) else None

    def module(self, node: fx.Node) -> nn.Module:
        """Module called by a call_module node."""
        return self._modules[node.target]

    def flat_args(self, node: fx.Node) -> List[Any]:
        """Positional operands with lists expanded (the operands of an n-ary op)."""
        out: List[Any] = []
        for a in list(node.args) + [v for k, v in node.kwargs.items() if k in ("other", "input")]:
            out.extend(a if isinstance(a, (list, tuple)) else [a])
        return out

    def const_of(self, node: fx.Node) -> Optional[Desc]:
        """Constant-width descriptor of a node's output (None if it has no channel dim)."""
        shape = self.shape(node)
        return Const(shape[1]) if shape is not None and len(shape) >= 2 else None

    def freeze_inputs(self, node: fx.Node) -> Optional[Desc]:
        """Freeze every tracked input of ``node``; its output has a constant width."""
        for arg in channel_rules.flat_nodes((node.args, node.kwargs)):
            d = self.descs.get(arg)
            if d is not None:
                freeze(d, self.groups)
        return self.const_of(node)

    def checked(self, node: fx.Node, desc: Optional[Desc]) -> Optional[Desc]:
        """``desc`` if it matches the node's channel count, else a frozen constant width."""
        const = self.const_of(node)
        if desc is None or const is None:
            return const
        if desc_size(desc, self.groups) != const.n:
            freeze(desc, self.groups)
            return const
        return desc

    # ---- the walk ------------------------------------------------------------------------
    def run(self) -> "ChannelAnalysis":
        for node in self.gm.graph.nodes:
            self.descs[node] = self._visit(node)
        for info in self.layers.values():
            if info.calls == 0:
                raise ValueError(f"layer '{info.name}' is never called in the traced graph")
            if info.input_desc is not None:
                info.input_desc = canonical(info.input_desc, self.groups)
            if info.output_group is not None:
                info.output_group = self.groups.find(info.output_group)
        return self

    def _visit(self, node: fx.Node) -> Optional[Desc]:
        if node.op in ("placeholder", "get_attr"):
            return self.const_of(node)
        if node.op == "output":
            self.freeze_inputs(node)
            return None
        if node.op == "call_module" and node.target in self.layers:
            return self._visit_layer(node)
        inputs = [self.descs.get(a) for a in channel_rules.flat_nodes((node.args, node.kwargs))]
        if all(d is None or next(desc_groups(d), None) is None for d in inputs):
            return self.const_of(node)  # only fixed-width inputs: no mask can be affected
        if node.op == "call_module" and node.target in self.opaque:
            return self.freeze_inputs(node)
        rule = self._rule(node)
        return rule(self, node)

    def _rule(self, node: fx.Node) -> channel_rules.Rule:
        if node.op == "call_module":
            module = self.module(node)
            rule = channel_rules.module_rule(module)
            if rule is None:
                raise NotImplementedError(
                    f"{_node_label(node)}: the channel semantics of module type {type(module).__name__} are "
                    f"unknown to plinio; exclude the layer (exclude_names/exclude_types), or add a rule for "
                    f"{type(module).__name__} to plinio.graph.channel_rules.MODULE_RULES")
            return rule
        if node.op == "call_function":
            rule = channel_rules.FUNCTION_RULES.get(node.target)
        else:
            rule = channel_rules.METHOD_RULES.get(node.target)
        if rule is None:
            raise NotImplementedError(
                f"{_node_label(node)}: the channel semantics of this operation are unknown to plinio; "
                f"rewrite it with a supported op or add a rule to plinio.graph.channel_rules")
        return rule

    def _visit_layer(self, node: fx.Node) -> Optional[Desc]:
        info = self.layers[node.target]
        src = node.args[0] if node.args else None
        in_desc = self.desc(src)
        if in_desc is None:
            raise ValueError(f"{_node_label(node)}: the input of layer '{info.name}' is not a tensor with a "
                             f"channel dimension (batch, channels, ...)")
        info.calls += 1
        out_shape = self.shape(node)
        info.out_shapes.append(out_shape)
        positions = 1
        for s in out_shape[2:]:
            positions *= s
        info.out_positions += positions
        info.input_desc = in_desc if info.input_desc is None else merge(info.input_desc, in_desc, self.groups)
        if info.role == "producer":
            if info.output_group is None:
                info.output_group = self.groups.new(out_shape[1]).gid
            return Group(info.output_group)
        if info.role == "depthwise":
            current = info.input_desc
            if not isinstance(current, Group):
                freeze(current, self.groups)
                current = self.groups.new(out_shape[1], frozen=True)
                info.input_desc = current
            if info.output_group is not None and info.output_group != current.gid:
                current = Group(self.groups.union(info.output_group, current.gid))
                info.input_desc = current
            info.output_group = current.gid
            return current
        return info.input_desc
