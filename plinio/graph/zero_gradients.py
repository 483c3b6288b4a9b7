"""Where gradients are provably exactly zero on pruned channels (the basis of the exact sparse
execution in ``plinio.fast.sparse_step``).

A channel ``c`` of a tensor in channel group ``g`` (``plinio.graph.channels``) is *dead* when
the group's mask prunes it: every producer of the group outputs exactly 0 there, and every op
the channel analysis lets carry the group maps 0 to 0. Two facts about the gradients at dead
channels let a layer skip work without changing any gradient:

* **the output gradient is zero** on a node's dead channels when every forward path from it
  reaches a *gradient killer* — an op whose backward is exactly 0 where its input is exactly
  0 (ReLU: ``threshold_backward`` gives 0 at 0) — through ops that keep the group
  (channel-local ops of the analysis: activations, pooling, adds of the same group, the
  supernet combiner); a layer whose parameters are masked by the same group (a depthwise
  conv, a BatchNorm following the mask) kills too, its pruned weight being exactly 0;
* **a gradient dies** on a value's dead channels when every backward path from it reaches a
  killer whose input is dead before it reaches a parameter or a network input: whatever a
  layer sends there (in general not 0) changes nothing the optimizer sees.

The killers are a table checked against PyTorch's own backward at ±0 by the tests; anything
not in it (LeakyReLU, GELU, SiLU, ``clamp(min=0)``, max pooling, ...) is not a killer, and any
op the analysis cannot follow stops the proof (the layer then computes everything).
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Set, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from plinio.graph.analysis import ChannelAnalysis
from plinio.graph.channel_rules import METHOD_RULES, call_arg, is_number, no_channels
from plinio.graph.channels import Desc, Flatten, Group, canonical

Predicate = Callable[[Any], bool]


def _always(_: Any) -> bool:
    return True


def _hardtanh_kills(low: Any, high: Any) -> bool:
    """hardtanh_backward passes the gradient where low < x < high: not at 0 unless low < 0 < high."""
    return is_number(low) and is_number(high) and not low < 0 < high


def _at_least_zero(value: Any) -> bool:
    return is_number(value) and value >= 0


# Backward exactly 0 where the input is exactly 0 (PyTorch's formulas, checked by the tests):
# threshold_backward (ReLU, Threshold): grad · 1[x > threshold]; hardtanh_backward (ReLU6,
# Hardtanh): grad · 1[min < x < max]; hardshrink/softshrink_backward: grad · 1[|x| > λ].
KILLER_MODULES: Dict[type, Predicate] = {
    nn.ReLU: _always,
    nn.ReLU6: _always,
    nn.Hardtanh: lambda m: _hardtanh_kills(m.min_val, m.max_val),
    nn.Threshold: lambda m: m.threshold >= 0,
    nn.Hardshrink: lambda m: m.lambd >= 0,
    nn.Softshrink: lambda m: m.lambd >= 0,
}
KILLER_FUNCTIONS: Dict[Any, Callable[[fx.Node], bool]] = {
    torch.relu: _always,
    torch.relu_: _always,
    F.relu: _always,
    F.relu6: _always,
    F.hardtanh: lambda n: _hardtanh_kills(call_arg(n, 1, "min_val", -1.0), call_arg(n, 2, "max_val", 1.0)),
    F.threshold: lambda n: _at_least_zero(call_arg(n, 1, "threshold", None)),
    F.hardshrink: lambda n: _at_least_zero(call_arg(n, 1, "lambd", 0.5)),
    F.softshrink: lambda n: _at_least_zero(call_arg(n, 1, "lambd", 0.5)),
}
KILLER_METHODS: Dict[str, Callable[[fx.Node], bool]] = {"relu": _always, "relu_": _always}


@dataclass(frozen=True)
class GradientFacts:
    """Per node name of the analysed graph: its channel descriptor (canonical groups) and the
    two facts of the module docstring for its dead (pruned) channels."""

    descs: Dict[str, Optional[Desc]]
    output_gradient_zero: FrozenSet[str]  # gradient at the node's output is 0 on dead channels
    gradient_dies: FrozenSet[str]         # a gradient sent to the node's dead channels reaches nothing

    def group(self, name: str) -> Optional[int]:
        """The (unfrozen) channel group of node ``name``'s output, or None."""
        desc = self.descs.get(name)
        return desc.gid if isinstance(desc, Group) else None


class _Walker:
    """Memoized graph walks over one analysed graph."""

    def __init__(self, gm: fx.GraphModule, analysis: ChannelAnalysis,
                 masked_layers: Iterable[str]) -> None:
        self.modules = dict(gm.named_modules())
        self.analysis = analysis
        self.masked_layers = set(masked_layers)
        self.layer_names = set(analysis.layers)
        self._zero: Dict[fx.Node, bool] = {}
        self._dies: Dict[fx.Node, bool] = {}

    def group(self, node: Any) -> Optional[int]:
        """The unfrozen group of a node's output (None: constant width or unknown node). A
        flatten of a group counts as the group: its dead features are the flattened dead
        channels, so the gradient facts carry through it."""
        if not isinstance(node, fx.Node) or node not in self.analysis.descs:
            return None
        desc = self.analysis.descs[node]
        while isinstance(desc, Flatten):
            desc = desc.inner
        if not isinstance(desc, Group):
            return None
        gid = self.analysis.groups.find(desc.gid)
        return None if self.analysis.groups.is_frozen(gid) else gid

    def is_killer(self, node: fx.Node, value: fx.Node) -> bool:
        """``node`` takes ``value`` as its first and only tensor input, and its backward is 0
        where ``value`` is 0 (the tables), or it is a layer masked by ``value``'s group."""
        if not node.args or node.args[0] is not value or value in _flat((node.args[1:], node.kwargs)):
            return False
        if node.op == "call_module":
            if node.target in self.layer_names:
                return node.target in self.masked_layers
            module = self.modules[node.target]
            check: Optional[Callable[[Any], bool]] = KILLER_MODULES.get(type(module))
            return check is not None and bool(check(module))
        if node.op == "call_function":
            check = KILLER_FUNCTIONS.get(node.target)
        elif node.op == "call_method":
            check = KILLER_METHODS.get(node.target)
        else:
            return False
        return check is not None and bool(check(node))

    def is_transparent(self, node: fx.Node, gid: int) -> bool:
        """A parameter-free (or, for a combiner, parameter-blind on dead channels),
        channel-local op whose output and tensor inputs all carry group ``gid``."""
        if node.op not in ("call_function", "call_method", "call_module"):
            return False
        if node.op == "call_module" and (node.target in self.layer_names
                                         or node.target in self.analysis.opaque):
            return False
        return self.group(node) == gid and all(self.group(a) == gid for a in self.tensor_inputs(node))

    def tensor_inputs(self, node: fx.Node) -> List[Any]:
        """The node's inputs that are tensors with channels; a node the analysis has not seen
        (added after it ran) is returned as it is, and is in no group."""
        descs = self.analysis.descs
        return [a for a in _flat((node.args, node.kwargs)) if a not in descs or descs[a] is not None]

    def is_gradient_free(self, node: fx.Node) -> bool:
        """Reads only metadata of its input (sizes, ndim): no gradient flows through it."""
        if node.op == "call_function":
            return node.target is getattr
        if node.op == "call_method":
            return METHOD_RULES.get(node.target) is no_channels
        return False

    def output_gradient_zero(self, node: fx.Node) -> bool:
        gid = self.group(node)
        if gid is None:
            return False
        if node not in self._zero:
            self._zero[node] = all(self._user_zero(user, node, gid) for user in node.users)
        return self._zero[node]

    def _user_zero(self, user: fx.Node, node: fx.Node, gid: int) -> bool:
        if user.op == "output":
            return False
        if self.is_killer(user, node) or self.is_gradient_free(user):
            return True
        return self.is_transparent(user, gid) and self.output_gradient_zero(user)

    def gradient_dies(self, node: fx.Node) -> bool:
        gid = self.group(node)
        if gid is None:
            return False
        if node not in self._dies:
            self._dies[node] = self._dies_at(node, gid)
        return self._dies[node]

    def _dies_at(self, node: fx.Node, gid: int) -> bool:
        if node.op == "call_module" and node.target in self.layer_names:
            return False  # a layer's parameters would see the gradient
        first = node.args[0] if node.args else None
        if isinstance(first, fx.Node) and self.group(first) == gid and self.is_killer(node, first):
            return True
        if not self.is_transparent(node, gid):
            return False
        inputs = self.tensor_inputs(node)
        return bool(inputs) and all(self.gradient_dies(a) for a in inputs)


def _flat(args: Tuple[Any, ...]) -> Set[fx.Node]:
    found: Set[fx.Node] = set()
    fx.node.map_arg(args, found.add)
    return found


def gradient_facts(gm: fx.GraphModule, analysis: ChannelAnalysis,
                   masked_layers: Iterable[str] = ()) -> GradientFacts:
    """The facts of every node of ``gm`` after ``analysis`` ran on it (nodes added later have
    no descriptor and stop every proof). ``masked_layers``: layers (targets) whose parameters
    are multiplied by their input group's mask, so that their backward to the input is 0 on
    its dead channels."""
    walker = _Walker(gm, analysis, masked_layers)
    descs: Dict[str, Optional[Desc]] = {}
    zero, dies = set(), set()
    for node in gm.graph.nodes:
        desc = analysis.descs.get(node)
        descs[node.name] = None if desc is None else canonical(desc, analysis.groups)
        if walker.output_gradient_zero(node):
            zero.add(node.name)
        if walker.gradient_dies(node):
            dies.add(node.name)
    return GradientFacts(descs, frozenset(zero), frozenset(dies))


