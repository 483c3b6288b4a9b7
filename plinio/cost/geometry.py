"""Layer geometry: what a per-layer cost is a function of.

A cost spec (``plinio.cost.specs``) sees one layer, or one functional op, through two
objects:

- ``LayerShape``: the static part, fixed during a search (kind, full channel counts, kernel,
  stride, dilation, groups, spatial sizes, number of calls). Plain Python values, so that a
  spec can check or look up a table once, when it is bound to a list of layers.
- ``LayerGeometry``: a batch of layers of one kind, as tensors with one entry per layer: the
  effective (mask-weighted, differentiable) input/output channels and kernel taps, plus the
  static numbers the formulas need. Specs are evaluated on batches so that the costs of a
  whole network are a few tensor operations.

``shapes_from_graph`` reads the layer shapes of a shape-propagated ``torch.fx`` graph (plain
``torch.nn`` layers and the functional ops that carry costs), e.g. to measure a latency table
for the layers a model can take.
"""
import math
import operator
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from plinio.graph.tracing import node_shape

WEIGHTED_KINDS = ("conv1d", "conv2d", "linear")
"""Layers with a weight whose size depends on the input and output channels."""

FUNCTIONAL_KINDS = ("add", "mul", "relu", "activation", "pool", "pad")
"""Parameter-free ops that keep the channel count (output channels = input channels)."""

BUILTIN_KINDS = WEIGHTED_KINDS + ("batchnorm",) + FUNCTIONAL_KINDS


def _ints(value: Any, what: str, owner: str) -> Tuple[int, ...]:
    values = tuple(value)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"LayerShape '{owner}': {what} must hold positive ints, got {value!r}")
    return values


@dataclass(frozen=True)
class LayerShape:
    """Static description of one layer or functional op (the part a search cannot change).

    ``in_channels`` / ``out_channels`` are the full widths (for a ``linear`` layer after a
    flatten: the flattened features); ``in_spatial`` / ``out_spatial`` are the spatial sizes
    of one call (empty for ``linear``); ``calls`` is how many times the network runs it.
    ``out_positions`` is the number of output positions summed over every call (the MACs
    factor of a convolution): left at 0 it is ``prod(out_spatial) · calls``; a layer called
    on inputs of different sizes gives the true sum (its ``out_spatial`` is then the first
    call's, and specs that need one per-call size refuse it).
    ``kind`` is one of ``BUILTIN_KINDS`` or a user-defined string (then every spec used on it
    must define it, e.g. through ``PerKindCost``).
    """

    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel_size: Tuple[int, ...] = ()
    stride: Tuple[int, ...] = ()
    dilation: Tuple[int, ...] = ()
    groups: int = 1
    in_spatial: Tuple[int, ...] = ()
    out_spatial: Tuple[int, ...] = ()
    calls: int = 1
    out_positions: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError(f"LayerShape '{self.name}': kind must be a non-empty string, got {self.kind!r}")
        for what in ("in_channels", "out_channels", "groups", "calls"):
            value = getattr(self, what)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"LayerShape '{self.name}': {what} must be a positive int, got {value!r}")
        for what in ("kernel_size", "stride", "dilation", "in_spatial", "out_spatial"):
            object.__setattr__(self, what, _ints(getattr(self, what), what, self.name))
        if self.kind in WEIGHTED_KINDS and self.in_channels % self.groups:
            raise ValueError(f"LayerShape '{self.name}': groups={self.groups} does not divide "
                             f"in_channels={self.in_channels}")
        if not isinstance(self.out_positions, int) or isinstance(self.out_positions, bool) or self.out_positions < 0:
            raise ValueError(f"LayerShape '{self.name}': out_positions must be a non-negative int (0: "
                             f"prod(out_spatial) · calls), got {self.out_positions!r}")
        if self.out_positions == 0:
            object.__setattr__(self, "out_positions", math.prod(self.out_spatial) * self.calls)

    @property
    def uniform_calls(self) -> bool:
        """Whether every call has the output size ``out_spatial`` (a per-call cost is defined)."""
        return self.out_positions == math.prod(self.out_spatial) * self.calls

    @property
    def kernel_volume(self) -> int:
        """Number of kernel positions at full size (1 without a kernel)."""
        return math.prod(self.kernel_size)

    @property
    def depthwise(self) -> bool:
        """A grouped convolution with one input and one output channel per group."""
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels


def _column(values: List[int], dtype: torch.dtype, device: Optional[torch.device]) -> Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


@dataclass(frozen=True)
class LayerGeometry:
    """A batch of layers of one kind: every tensor holds one entry per layer of ``shapes``.

    The effective counts are what a search gives (Σθ of the channel masks, the mean-weighted
    kernel taps), differentiable; ``groups`` is the divisor of the parameter count (the
    layer's original groups), ``out_positions`` counts every call.
    """

    kind: str
    shapes: Tuple[LayerShape, ...]
    in_channels: Tensor
    out_channels: Tensor
    kernel_taps: Tensor
    groups: Tensor = field(repr=False)
    out_positions: Tensor = field(repr=False)
    calls: Tensor = field(repr=False)

    @staticmethod
    def static_tensors(shapes: Sequence[LayerShape], dtype: torch.dtype = torch.float32,
                       device: Optional[torch.device] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """(groups, out_positions, calls) of ``shapes`` as float tensors."""
        return (_column([s.groups for s in shapes], dtype, device),
                _column([s.out_positions for s in shapes], dtype, device),
                _column([s.calls for s in shapes], dtype, device))

    @classmethod
    def from_shapes(cls, shapes: Sequence[LayerShape], in_channels: Optional[Tensor] = None,
                    out_channels: Optional[Tensor] = None, kernel_taps: Optional[Tensor] = None,
                    dtype: torch.dtype = torch.float32,
                    device: Optional[torch.device] = None) -> "LayerGeometry":
        """The geometry of ``shapes`` (one kind) with the given effective counts; a count left
        out is the full width (e.g. to evaluate a spec on the unsearched network)."""
        shapes = tuple(shapes)
        kinds = {s.kind for s in shapes}
        if len(kinds) != 1:
            raise ValueError(f"LayerGeometry holds layers of one kind; got kinds {sorted(kinds)}")

        def given_or_full(count: Optional[Tensor], attr: str) -> Tensor:
            return _column([getattr(s, attr) for s in shapes], dtype, device) if count is None else count
        return cls(shapes[0].kind, shapes, given_or_full(in_channels, "in_channels"),
                   given_or_full(out_channels, "out_channels"), given_or_full(kernel_taps, "kernel_volume"),
                   *cls.static_tensors(shapes, dtype, device))


# ---- layer shapes of an fx graph ---------------------------------------------------------------

_MODULE_KINDS: Tuple[Tuple[type, str], ...] = (
    (nn.Conv1d, "conv1d"), (nn.Conv2d, "conv2d"), (nn.Linear, "linear"),
    (nn.BatchNorm1d, "batchnorm"), (nn.BatchNorm2d, "batchnorm"),
    (nn.ReLU, "relu"), (nn.ReLU6, "activation"), (nn.Hardswish, "activation"),
    (nn.Sigmoid, "activation"), (nn.Tanh, "activation"), (nn.GELU, "activation"),
    (nn.SiLU, "activation"), (nn.LeakyReLU, "activation"),
    (nn.MaxPool1d, "pool"), (nn.MaxPool2d, "pool"), (nn.AvgPool1d, "pool"), (nn.AvgPool2d, "pool"),
    (nn.ConstantPad1d, "pad"), (nn.ConstantPad2d, "pad"), (nn.ZeroPad1d, "pad"), (nn.ZeroPad2d, "pad"),
)
_FUNCTION_KINDS: Dict[Any, str] = {
    operator.add: "add", torch.add: "add", operator.iadd: "add",
    operator.mul: "mul", torch.mul: "mul",
    F.relu: "relu", torch.relu: "relu", F.relu6: "activation", F.hardswish: "activation",
    torch.sigmoid: "activation", torch.tanh: "activation", F.gelu: "activation", F.silu: "activation",
    F.max_pool1d: "pool", F.max_pool2d: "pool", F.avg_pool1d: "pool", F.avg_pool2d: "pool",
    F.pad: "pad",
}
_METHOD_KINDS = {"add": "add", "mul": "mul", "relu": "relu", "sigmoid": "activation", "tanh": "activation"}


def node_kind(node: fx.Node, modules: Dict[str, nn.Module]) -> Optional[str]:
    """The cost kind of an fx node, or None for nodes that carry no per-layer cost (views,
    reshapes, placeholders, unknown modules)."""
    if node.op == "call_module":
        module = modules[str(node.target)]
        return next((kind for cls, kind in _MODULE_KINDS if isinstance(module, cls)), None)
    if node.op == "call_function":
        return _FUNCTION_KINDS.get(node.target)
    if node.op == "call_method":
        return _METHOD_KINDS.get(str(node.target))
    return None


def _shape_of(node: fx.Node) -> Tuple[int, ...]:
    shape = node_shape(node)
    if shape is None:
        raise ValueError(f"shapes_from_graph: node '{node.name}' has no recorded output shape; "
                         f"run plinio.graph.tracing.propagate_shapes on the graph first")
    if len(shape) < 2:
        raise ValueError(f"shapes_from_graph: node '{node.name}' ({node.target}) has output shape "
                         f"{tuple(shape)}; a layer's output must be (batch, channels, *spatial)")
    return tuple(shape)


def _as_tuple(value: Any, ndim: int) -> Tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * ndim


def _module_hparams(module: nn.Module) -> Dict[str, Any]:
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        nd = len(module.kernel_size)
        return {"kernel_size": _as_tuple(module.kernel_size, nd), "stride": _as_tuple(module.stride, nd),
                "dilation": _as_tuple(module.dilation, nd), "groups": module.groups}
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)):
        nd = 1 if isinstance(module, (nn.MaxPool1d, nn.AvgPool1d)) else 2
        stride = module.stride if module.stride is not None else module.kernel_size
        return {"kernel_size": _as_tuple(module.kernel_size, nd), "stride": _as_tuple(stride, nd)}
    return {}


def _functional_pool_hparams(node: fx.Node, ndim: int) -> Dict[str, Any]:
    def arg(index: int, name: str) -> Any:
        return node.args[index] if len(node.args) > index else node.kwargs.get(name)

    kernel = arg(1, "kernel_size")
    stride = arg(2, "stride")
    return {"kernel_size": _as_tuple(kernel, ndim), "stride": _as_tuple(stride if stride else kernel, ndim)}


def node_layer_shape(node: fx.Node, kind: str, name: str, module: Optional[nn.Module] = None,
                     **hparams: Any) -> LayerShape:
    """The shape of one call of a costed node (``calls`` = 1): channels and spatial sizes from
    its recorded input and output shapes, kernel / stride / dilation / groups from ``module``
    (a plain torch layer), from a functional pooling's arguments, or given as ``hparams``."""
    out = _shape_of(node)
    first = next((a for a in node.all_input_nodes if node_shape(a) is not None), None)
    inp = _shape_of(first) if first is not None else out
    if kind == "linear" and len(inp) != 2:
        raise ValueError(f"shapes_from_graph: linear layer '{name}' is applied to a {len(inp)}-d "
                         f"input {inp}; only (batch, features) inputs have a defined geometry")
    if not hparams:
        hparams = _module_hparams(module) if module is not None \
            else _functional_pool_hparams(node, len(out) - 2) if kind == "pool" else {}
    return LayerShape(name=name, kind=kind, in_channels=inp[1], out_channels=out[1],
                      in_spatial=inp[2:], out_spatial=out[2:], **hparams)


def shapes_from_graph(gm: fx.GraphModule) -> List[LayerShape]:
    """Layer shapes of every costed node of a shape-propagated fx graph, in execution order.

    Modules count once however often they are called (``calls``); a module called on
    different shapes is an error naming it. Functional ops are named after their node.
    Shapes come from ``plinio.graph.tracing.propagate_shapes`` (batch dimension dropped).
    """
    modules = dict(gm.named_modules())
    found: Dict[str, LayerShape] = {}
    for node in gm.graph.nodes:
        kind = node_kind(node, modules)
        if kind is None:
            continue
        module = modules[str(node.target)] if node.op == "call_module" else None
        name = str(node.target) if module is not None else node.name
        shape = node_layer_shape(node, kind, name, module)
        previous = found.get(name)
        if previous is None:
            found[name] = shape
        elif (previous.in_spatial, previous.out_spatial, previous.in_channels) != \
                (shape.in_spatial, shape.out_spatial, shape.in_channels):
            raise ValueError(f"shapes_from_graph: module '{name}' is called on inputs of different "
                             f"shapes ({previous.in_spatial} and {shape.in_spatial}); its per-call "
                             f"cost is not defined: use a separate module per call")
        else:
            found[name] = replace(previous, calls=previous.calls + 1, out_positions=0)
    return list(found.values())
