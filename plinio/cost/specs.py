"""Per-layer cost specs, the built-in ``params`` / ``macs``, and their evaluation.

A cost spec maps a ``LayerGeometry`` — a batch of layers of one kind, with differentiable
effective channel counts and kernel taps — to one cost per layer. A spec may be

- a ``CostSpec`` subclass: ``bind(shapes)`` checks the static description of a batch once
  (and may precompute tables), ``__call__(geometry)`` is the per-step formula;
- a plain callable ``fn(geometry) -> Tensor`` (wrapped by ``FunctionCost``);
- ``PerKindCost({'conv2d': f, 'add': g, ...})``: one formula per layer kind, e.g. to give
  functional ops (adds, activations, pooling) a cost of their own.

``LayerCosts`` evaluates several specs over a fixed list of layers. Its fast path groups the
layers by kind at construction, so a step costs a few tensor operations per kind and spec:
no Python loop over layers, no host synchronisation (the NaN/Inf check that names a layer
runs on CPU tensors in eager mode only), and ``torch.compile(fullgraph=True)`` traces it
once whatever the counts are. ``LayerCosts.reference`` evaluates the same specs
one layer at a time (each spec bound to that layer alone); values and gradients are equal.

The built-ins reproduce PIT's formulas (docs/behaviour.md §4.1): for conv1d / conv2d /
linear, params = Cin·Cout·k / groups and macs = params · output positions (summed over
calls); for BatchNorm, params = 2·Cin and macs = Cin · calls; functional ops have neither
parameters nor multiply-accumulates (0).
"""
from abc import ABC, abstractmethod
from typing import Callable, Dict, List, Mapping, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from plinio.cost.geometry import BUILTIN_KINDS, WEIGHTED_KINDS, LayerGeometry, LayerShape
from plinio.cost.peak_memory import PeakMemoryCost

CostFn = Callable[[LayerGeometry], Tensor]


class CostSpec(ABC):
    """A per-layer cost. Subclasses implement ``__call__`` on batched geometries (every
    tensor has one entry per layer; return one cost per layer, or a 0-dim constant)."""

    name: str = "cost"

    def bind(self, shapes: Tuple[LayerShape, ...]) -> CostFn:
        """Check the static description of a batch of layers of one kind, once, and return
        the function evaluated at every step (by default the spec itself). Raise an error
        naming the layer for anything the spec cannot cost."""
        return self

    @abstractmethod
    def __call__(self, geometry: LayerGeometry) -> Tensor:
        """Cost of every layer of the batch."""

    def network_constant(self) -> float:
        """A cost paid once per inference whatever the layers (added to their sum; e.g. a
        runtime's per-call overhead). 0 by default."""
        return 0.0


class FunctionCost(CostSpec):
    """A user callable ``fn(geometry) -> Tensor`` as a spec, applying to every kind."""

    def __init__(self, fn: CostFn, name: str) -> None:
        if not callable(fn):
            raise TypeError(f"cost '{name}': expected a callable fn(geometry) -> Tensor or a "
                            f"CostSpec, got {type(fn).__name__}")
        self.fn = fn
        self.name = name

    def __call__(self, geometry: LayerGeometry) -> Tensor:
        return self.fn(geometry)


class PerKindCost(CostSpec):
    """One formula per layer kind; a kind without one is an error when the spec is bound."""

    def __init__(self, formulas: Mapping[str, Union[CostSpec, CostFn]], name: str = "cost") -> None:
        if not isinstance(formulas, Mapping) or not formulas:
            raise TypeError(f"PerKindCost '{name}': expected a non-empty dict kind -> spec or callable, "
                            f"got {formulas!r}")
        self.name = name
        self.formulas: Dict[str, CostSpec] = {kind: as_cost_spec(f, f"{name}[{kind}]")
                                              for kind, f in formulas.items()}

    def bind(self, shapes: Tuple[LayerShape, ...]) -> CostFn:
        kind = shapes[0].kind
        if kind not in self.formulas:
            raise ValueError(f"cost '{self.name}' has no formula for kind '{kind}' (layer "
                             f"'{shapes[0].name}'); it defines {sorted(self.formulas)}: add "
                             f"'{kind}': fn to its PerKindCost")
        return self.formulas[kind].bind(shapes)

    def __call__(self, geometry: LayerGeometry) -> Tensor:
        return self.bind(geometry.shapes)(geometry)


class _BuiltinCost(CostSpec):
    """Common part of the built-ins: they know the built-in kinds only."""

    known_kinds = BUILTIN_KINDS

    def bind(self, shapes: Tuple[LayerShape, ...]) -> CostFn:
        kind = shapes[0].kind
        if kind not in self.known_kinds:
            raise ValueError(f"built-in cost '{self.name}' is not defined for kind '{kind}' (layer "
                             f"'{shapes[0].name}'); known kinds: {', '.join(self.known_kinds)}. "
                             f"Give the cost as PerKindCost({{'{kind}': fn, ...}})")
        return self


class ParamsCost(_BuiltinCost):
    """Parameter count (biases not counted): Cin·Cout·k / groups, 2·Cin for BatchNorm."""

    name = "params"

    def __call__(self, geometry: LayerGeometry) -> Tensor:
        g = geometry
        if g.kind in WEIGHTED_KINDS:
            return g.in_channels * g.out_channels * g.kernel_taps / g.groups.to(g.in_channels.dtype)
        if g.kind == "batchnorm":
            return 2 * g.in_channels
        return torch.zeros_like(g.in_channels)


class MacsCost(_BuiltinCost):
    """Multiply-accumulates: params · output positions, Cin · calls for BatchNorm."""

    name = "macs"

    def __call__(self, geometry: LayerGeometry) -> Tensor:
        g = geometry
        dtype = g.in_channels.dtype
        if g.kind in WEIGHTED_KINDS:
            return PARAMS(g) * g.out_positions.to(dtype)
        if g.kind == "batchnorm":
            return g.in_channels * g.calls.to(dtype)
        return torch.zeros_like(g.in_channels)


PARAMS = ParamsCost()
MACS = MacsCost()
BUILTIN_LAYER_COSTS: Dict[str, CostSpec] = {"params": PARAMS, "size": PARAMS, "macs": MACS}
"""Built-in per-layer costs by name (``size`` is PIT's name for ``params``)."""


def as_cost_spec(spec: Union[str, CostSpec, CostFn], name: str) -> CostSpec:
    """A ``CostSpec`` from a built-in name, a spec or a callable; anything else is an error
    naming the cost."""
    if isinstance(spec, CostSpec):
        return spec
    if isinstance(spec, str):
        if spec in BUILTIN_LAYER_COSTS:
            return BUILTIN_LAYER_COSTS[spec]
        raise ValueError(f"cost '{name}': unknown built-in per-layer cost {spec!r}; choose one of "
                         f"{', '.join(sorted(BUILTIN_LAYER_COSTS))}, or give a CostSpec / callable "
                         f"(a latency table is LatencyTableCost.from_csv(path, backend))")
    if callable(spec):
        return FunctionCost(spec, name)
    raise TypeError(f"cost '{name}': expected a built-in name, a CostSpec or a callable "
                    f"fn(geometry) -> Tensor, got {type(spec).__name__}")


def _names(shapes: Sequence[LayerShape]) -> str:
    return ", ".join(f"'{s.name}'" for s in shapes)


def _describe(shape: LayerShape, cin: Tensor, cout: Tensor, taps: Tensor) -> str:
    return (f"layer '{shape.name}' ({shape.kind}, effective in={cin.item():g}, out={cout.item():g}, "
            f"taps={taps.item():g})")


class LayerCosts(nn.Module):
    """Costs of a fixed list of layers under several specs, per layer.

    ``forward(in_channels, out_channels, kernel_taps)`` takes the effective counts as
    vectors in the order of ``shapes`` and returns ``{spec name: per-layer costs}``; a
    network cost is their (θ-weighted, for supernet branches) sum. Specs are bound at
    construction: a layer a spec cannot cost is an error then, naming it.
    ``check_finite=False`` leaves the NaN/Inf check of every step to the caller (e.g. a
    wrapper's built-in costs, whose check names the architectural parameter that diverged).
    ``constants[name]`` is the spec's ``network_constant()``, to add to the network's sum.
    """

    def __init__(self, shapes: Sequence[LayerShape], specs: Mapping[str, Union[str, CostSpec, CostFn]],
                 check_finite: bool = True) -> None:
        super().__init__()
        self.shapes: Tuple[LayerShape, ...] = tuple(shapes)
        self.check_finite = check_finite
        names = [s.name for s in self.shapes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"LayerCosts: layer names must be unique, {duplicates} appear twice")
        if not isinstance(specs, Mapping) or not specs:
            raise TypeError(f"LayerCosts: specs must be a non-empty dict name -> spec, got {specs!r}")
        self.specs: Dict[str, CostSpec] = {}
        for name, spec in specs.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"LayerCosts: cost names must be non-empty strings, got {name!r}")
            self.specs[name] = as_cost_spec(spec, name)
        self.constants: Dict[str, float] = {name: float(spec.network_constant()) for name, spec in self.specs.items()}
        self.kinds: Tuple[str, ...] = tuple(dict.fromkeys(s.kind for s in self.shapes))
        batches = [tuple(i for i, s in enumerate(self.shapes) if s.kind == k) for k in self.kinds]
        self._batch_shapes = [tuple(self.shapes[i] for i in b) for b in batches]
        for k, batch in enumerate(batches):
            self.register_buffer(f"_index_{k}", torch.tensor(batch, dtype=torch.long), persistent=False)
            for field, values in zip(("groups", "out_positions", "calls"),
                                     LayerGeometry.static_tensors(self._batch_shapes[k])):
                self.register_buffer(f"_{field}_{k}", values, persistent=False)
        order = [i for b in batches for i in b]
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
        self.register_buffer("_inverse", inverse, persistent=False)
        self._bound: Dict[str, List[CostFn]] = {}
        self._per_layer: Dict[str, List[CostFn]] = {}
        owned = nn.ModuleList()
        for name, spec in self.specs.items():
            self._bound[name] = [spec.bind(b) for b in self._batch_shapes]
            self._per_layer[name] = [spec.bind((s,)) for s in self.shapes]
            owned.extend(f for f in self._bound[name] + self._per_layer[name] if isinstance(f, nn.Module))
        self._bound_modules = owned
        with torch.no_grad():
            self(*self.full_width())

    def full_width(self, dtype: torch.dtype = torch.float32) -> Tuple[Tensor, Tensor, Tensor]:
        """(in_channels, out_channels, kernel_taps) of the unsearched layers."""
        device = self._inverse.device
        return tuple(torch.tensor([getattr(s, f) for s in self.shapes], dtype=dtype, device=device)
                     for f in ("in_channels", "out_channels", "kernel_volume"))

    def _check_inputs(self, in_channels: Tensor, out_channels: Tensor, kernel_taps: Tensor) -> None:
        for what, t in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("kernel_taps", kernel_taps)):
            if not isinstance(t, Tensor) or not t.is_floating_point() or tuple(t.shape) != (len(self.shapes),):
                got = f"shape {tuple(t.shape)} {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"LayerCosts: {what} must be a floating tensor of shape "
                                 f"({len(self.shapes)},), one entry per layer, got {got}")

    def _checked(self, result: object, name: str, shapes: Tuple[LayerShape, ...]) -> Tensor:
        if not isinstance(result, Tensor) or not result.is_floating_point():
            got = f"a {result.dtype} tensor" if isinstance(result, Tensor) else f"a {type(result).__name__}"
            raise TypeError(f"cost spec '{name}' returned {got} for the {shapes[0].kind} layers "
                            f"{_names(shapes)}; a spec must return a floating tensor with one cost per layer")
        if result.dim() == 0:
            return result.expand(len(shapes))
        if tuple(result.shape) != (len(shapes),):
            raise ValueError(f"cost spec '{name}' returned shape {tuple(result.shape)} for the "
                             f"{shapes[0].kind} layers {_names(shapes)}; expected ({len(shapes)},): one "
                             f"cost per layer of the batch (or a 0-dim constant)")
        return result

    def _check_finite(self, name: str, costs: Tensor, counts: Tuple[Tensor, Tensor, Tensor]) -> None:
        """NaN/Inf costs name the layer; checked on CPU in eager mode only (elsewhere the
        check would synchronise every step)."""
        if not self.check_finite or costs.device.type != "cpu" or torch.compiler.is_compiling():
            return
        if bool(torch.isfinite(costs).all()):
            return
        bad = int(torch.nonzero(~torch.isfinite(costs.detach()))[0])
        cin, cout, taps = (c[bad] for c in counts)
        layer = _describe(self.shapes[bad], cin, cout, taps)
        if not bool(torch.isfinite(torch.stack([cin, cout, taps])).all()):
            raise FloatingPointError(f"cost '{name}': the effective counts of {layer} are not finite: "
                                     f"the architectural parameters that give them diverged")
        raise FloatingPointError(f"cost spec '{name}' returned {costs[bad].item()} for {layer}; a cost "
                                 f"must be finite: check the spec")

    def forward(self, in_channels: Tensor, out_channels: Tensor, kernel_taps: Tensor) -> Dict[str, Tensor]:
        """Per-layer costs of every spec (fast path: one batch per kind)."""
        self._check_inputs(in_channels, out_channels, kernel_taps)
        counts = (in_channels, out_channels, kernel_taps)
        dtype = in_channels.dtype
        geometries = []
        for k, kind in enumerate(self.kinds):
            index = getattr(self, f"_index_{k}")
            geometries.append(LayerGeometry(
                kind=kind, shapes=self._batch_shapes[k], in_channels=in_channels[index],
                out_channels=out_channels[index], kernel_taps=kernel_taps[index],
                groups=getattr(self, f"_groups_{k}").to(dtype),
                out_positions=getattr(self, f"_out_positions_{k}").to(dtype),
                calls=getattr(self, f"_calls_{k}").to(dtype)))
        result: Dict[str, Tensor] = {}
        for name, bound in self._bound.items():
            parts = [self._checked(fn(g), name, g.shapes) for fn, g in zip(bound, geometries)]
            costs = torch.cat(parts)[self._inverse] if parts else in_channels.new_zeros(0)
            self._check_finite(name, costs, counts)
            result[name] = costs
        return result

    def reference(self, in_channels: Tensor, out_channels: Tensor, kernel_taps: Tensor) -> Dict[str, Tensor]:
        """Per-layer costs of every spec, one layer at a time (the looped reference)."""
        self._check_inputs(in_channels, out_channels, kernel_taps)
        counts = (in_channels, out_channels, kernel_taps)
        result: Dict[str, Tensor] = {}
        for name, per_layer in self._per_layer.items():
            costs: List[Tensor] = []
            for i, (shape, fn) in enumerate(zip(self.shapes, per_layer)):
                g = LayerGeometry.from_shapes((shape,), in_channels[i:i + 1], out_channels[i:i + 1],
                                              kernel_taps[i:i + 1], dtype=in_channels.dtype,
                                              device=in_channels.device)
                costs.append(self._checked(fn(g), name, (shape,)))
            total = torch.cat(costs) if costs else in_channels.new_zeros(0)
            self._check_finite(name, total, counts)
            result[name] = total
        return result


CostArg = Union[str, CostSpec, CostFn, PeakMemoryCost,
                Mapping[str, Union[str, CostSpec, CostFn, PeakMemoryCost]]]


def resolve_costs(cost: CostArg) -> Dict[str, Union[CostSpec, PeakMemoryCost]]:
    """Normalise a ``cost=`` argument — a built-in name, a spec, a callable, a
    ``PeakMemoryCost``, or a dict name -> any of these — to ``{name: spec}``.

    ``'peak_memory'`` is the whole-network cost (``PeakMemoryCost()``, evaluated on the
    activation schedule, not per layer); every other value is a per-layer ``CostSpec``.
    """
    def one(name: str, value: object) -> Union[CostSpec, PeakMemoryCost]:
        if isinstance(value, PeakMemoryCost):
            return value
        if isinstance(value, str) and value == PeakMemoryCost.name:
            return PeakMemoryCost()
        return as_cost_spec(value, name)  # type: ignore[arg-type]

    if isinstance(cost, Mapping):
        if not cost:
            raise ValueError("cost: the dict of costs is empty; give at least one name -> spec")
        for name in cost:
            if not isinstance(name, str) or not name:
                raise TypeError(f"cost: names must be non-empty strings, got {name!r}")
        return {name: one(name, value) for name, value in cost.items()}
    if isinstance(cost, str):
        return {cost: one(cost, cost)}
    name = str(getattr(cost, "name", None) or getattr(cost, "__name__", None) or "cost")
    return {name: one(name, cost)}
