"""Any ``plinio.cost`` spec on a converted network: the costed nodes of its graph and its peak
activation memory, as functions of the PIT masks (docs/behaviour.md §4, docs/internals.md §3).

The rows a per-layer spec costs are every costed node of the converted graph, in graph
order: the PIT layers (their counts from ``PITCostModel.layer_counts``), the functional ops
(add, mul, activations, pooling) and the layers left plain. A row that is not a PIT layer
has the effective channels of its tensors: the channel descriptors of the mask-sharing
analysis (``plinio.graph.channels``) written as ``ChannelSum``s over the per-masker counts
(``PITCostModel.masker_counts``), so one matrix product gives them all. The same channel
sums size the activations of the peak-memory schedule.

The built-in ``params`` / ``macs`` are not evaluated here: the wrappers keep PLiNIO's
definition (PIT layers only, plus the supernets' static branch costs).
"""
import math
from typing import Dict, Iterator, List, Mapping, Optional, Tuple, Union

import torch
import torch.fx as fx
import torch.nn as nn

from plinio.cost.geometry import LayerShape, node_kind, node_layer_shape
from plinio.cost.peak_memory import ChannelSum, PeakMemory, PeakMemoryCost
from plinio.cost.specs import CostSpec, LayerCosts
from plinio.graph.analysis import ChannelAnalysis
from plinio.graph.channels import Concat, Const, Desc, Flatten, Group, canonical
from plinio.graph.tracing import node_shape
from plinio.methods.pit.cost_model import PITCostModel, pit_layer_shape
from plinio.methods.pit.nn.module import PITModule, PITWeightedModule

Spec = Union[CostSpec, PeakMemoryCost]


class _Descriptors:
    """Channel descriptors of the converted graph's nodes as ``ChannelSum``s over the cost
    model's maskers."""

    def __init__(self, analysis: ChannelAnalysis, layers: Mapping[str, PITModule], cost_model: PITCostModel) -> None:
        self.analysis = analysis
        position = {id(m): i for i, m in enumerate(cost_model.maskers)}
        self.masker_of_group: Dict[int, int] = {}
        for name, info in analysis.layers.items():
            layer = layers.get(name)
            if info.output_group is not None and isinstance(layer, PITWeightedModule):
                self.masker_of_group[info.output_group] = position[id(layer.out_features_masker)]

    def desc(self, node: fx.Node) -> Optional[Desc]:
        """The node's descriptor; a ``torch.flatten`` the conversion wrote in place of a view
        (after the analysis) flattens its input's."""
        desc = self.analysis.descs.get(node)
        if desc is None and node.op == "call_function" and node.target is torch.flatten \
                and isinstance(node.args[0], fx.Node):
            inner = self.analysis.descs.get(node.args[0])
            shape = node_shape(node.args[0])
            if inner is not None and shape is not None:
                desc = Flatten(inner, math.prod(shape[2:]))
        return None if desc is None else canonical(desc, self.analysis.groups)

    def channel_sum(self, desc: Desc) -> ChannelSum:
        """Σ coef · counts[masker] + const of a descriptor."""
        terms: Dict[int, float] = {}

        def walk(d: Desc, factor: float) -> float:
            if isinstance(d, Const):
                return factor * d.n
            if isinstance(d, Group):
                j = self.masker_of_group[d.gid]
                terms[j] = terms.get(j, 0.0) + factor
                return 0.0
            if isinstance(d, Concat):
                return sum(walk(p, factor) for p in d.parts)
            return walk(d.inner, factor * d.factor)

        const = walk(desc, 1.0)
        return ChannelSum(tuple(sorted(terms.items())), const)

    def of_node(self, node: fx.Node) -> ChannelSum:
        """Effective channels of a node's output (its recorded width when untracked)."""
        desc = self.desc(node)
        if desc is not None:
            return self.channel_sum(desc)
        shape = node_shape(node)
        return ChannelSum(const=float(shape[1]))


def _input_node(node: fx.Node) -> fx.Node:
    return next((a for a in node.all_input_nodes if node_shape(a) is not None), node)


def module_owner(node: fx.Node) -> str:
    """Qualified name of the module a node belongs to: its target for a module call, else
    the innermost module being traced when fx recorded it ('' at the top level)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack), "") if stack else ""


class NetworkCosts(nn.Module):
    """Per-layer specs and peak memory of one converted network.

    ``shapes`` / ``owners`` describe the rows (``owners``: the module each row belongs to,
    which tells a supernet which branch it lies in); ``per_row(binarized)`` gives
    ``{cost name: per-row costs}``, whose sum ``constant(name)`` completes; ``peak(name,
    binarized, theta)`` one peak-memory cost, with ``theta`` the concatenated θ of the
    supernets in ``merge_targets`` order.
    """

    def __init__(self, gm: fx.GraphModule, analysis: ChannelAnalysis, layers: Mapping[str, PITModule],
                 cost_model: PITCostModel, specs: Mapping[str, Spec]) -> None:
        super().__init__()
        self._cost_model = (cost_model,)  # referenced: the wrapper owns it
        descriptors = _Descriptors(analysis, layers, cost_model)
        modules = dict(gm.named_modules())
        self.merge_targets: Tuple[str, ...] = tuple(
            str(n.target) for n in gm.graph.nodes
            if n.op == "call_module" and getattr(type(modules[str(n.target)]), "plinio_merges_inputs", False))
        per_layer = {n: s for n, s in specs.items() if isinstance(s, CostSpec)}
        self._peak_names = tuple(n for n, s in specs.items() if isinstance(s, PeakMemoryCost))
        self.shapes: Tuple[LayerShape, ...] = ()
        self.owners: Tuple[str, ...] = ()
        self.layer_costs: Optional[LayerCosts] = None
        device = cost_model.c_in.device
        if per_layer:
            self._build_rows(gm, layers, cost_model, descriptors, modules)
            self.layer_costs = LayerCosts(self.shapes, per_layer).to(device)
        channels = {n.name: descriptors.of_node(n) for n in gm.graph.nodes
                    if n.op != "output" and node_shape(n) is not None and len(node_shape(n)) >= 2}
        self.peaks = nn.ModuleList(
            specs[name].bind(gm, channels, len(cost_model.maskers)) for name in self._peak_names).to(device)

    def _build_rows(self, gm: fx.GraphModule, layers: Mapping[str, PITModule], cost_model: PITCostModel,
                    descriptors: _Descriptors, modules: Dict[str, nn.Module]) -> None:
        first_call = {}
        for node in gm.graph.nodes:
            if node.op == "call_module" and node.target in layers:
                first_call.setdefault(str(node.target), node)
        shapes: List[LayerShape] = []
        for name in cost_model.layer_names:
            node = first_call[name]
            in_shape, out_shape = node_shape(_input_node(node)), node_shape(node)
            shapes.append(pit_layer_shape(name, layers[name], tuple(in_shape[2:]), tuple(out_shape[2:])))
        owners = list(cost_model.layer_names)
        graph_shapes: List[LayerShape] = []
        cin_sums: List[ChannelSum] = []
        cout_sums: List[ChannelSum] = []
        seen_modules: Dict[str, int] = {}
        for node, kind in self._graph_rows(gm, layers, modules):
            module = modules[str(node.target)] if node.op == "call_module" else None
            name = node.name
            if module is not None:
                calls = seen_modules[str(node.target)] = seen_modules.get(str(node.target), 0) + 1
                name = str(node.target) if calls == 1 else f"{node.target} (call {calls})"
            graph_shapes.append(node_layer_shape(node, kind, name, module))
            owners.append(module_owner(node))
            cin_sums.append(descriptors.of_node(_input_node(node)))
            cout_sums.append(descriptors.of_node(node))
        self.shapes, self.owners = tuple(shapes + graph_shapes), tuple(owners)
        n_masker = len(cost_model.maskers)
        for prefix, sums in (("in", cin_sums), ("out", cout_sums)):
            coef = torch.zeros(len(sums), n_masker, dtype=torch.float32)
            for r, s in enumerate(sums):
                for j, c in s.terms:
                    coef[r, j] += c
            self.register_buffer(f"{prefix}_coef", coef, persistent=False)
            self.register_buffer(f"{prefix}_const", torch.tensor([s.const for s in sums], dtype=torch.float32),
                                 persistent=False)
        self._sums = (tuple(cin_sums), tuple(cout_sums))
        self.register_buffer("taps", torch.tensor([float(s.kernel_volume) for s in graph_shapes],
                                                  dtype=torch.float32), persistent=False)

    @staticmethod
    def _graph_rows(gm: fx.GraphModule, layers: Mapping[str, PITModule],
                    modules: Dict[str, nn.Module]) -> Iterator[Tuple[fx.Node, str]]:
        """The costed nodes that are not PIT layers: functional ops and plain layers with a
        (batch, channels, ...) output."""
        for node in gm.graph.nodes:
            if node.op == "call_module" and node.target in layers:
                continue
            kind = node_kind(node, modules)
            shape = node_shape(node)
            if kind is not None and shape is not None and len(shape) >= 2:
                yield node, kind

    @property
    def cost_model(self) -> PITCostModel:
        """The PIT cost model the counts come from."""
        return self._cost_model[0]

    @property
    def peak_names(self) -> Tuple[str, ...]:
        """Names of the peak-memory costs."""
        return self._peak_names

    def _row_counts(self, binarized: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model = self.cost_model
        cin, cout, taps = model.layer_counts(binarized)
        n = model.masker_counts(binarized)
        if model.fast_path:
            dtype = n.dtype if n.numel() else cin.dtype
            g_in = self.in_coef.to(dtype) @ n.to(dtype) + self.in_const.to(dtype)
            g_out = self.out_coef.to(dtype) @ n.to(dtype) + self.out_const.to(dtype)
        else:
            g_in, g_out = (torch.stack([self._looped_sum(s, n, cin) for s in sums]) if sums else cin[:0]
                           for sums in self._sums)
        dtype = torch.promote_types(cin.dtype, g_in.dtype)
        return (torch.cat([cin.to(dtype), g_in.to(dtype)]), torch.cat([cout.to(dtype), g_out.to(dtype)]),
                torch.cat([taps.to(dtype), self.taps.to(dtype)]))

    @staticmethod
    def _looped_sum(s: ChannelSum, counts: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        total = like.new_tensor(s.const)
        for j, c in s.terms:
            total = total + c * counts[j]
        return total

    def per_row(self, binarized: bool = False) -> Dict[str, torch.Tensor]:
        """Per-row costs of every per-layer spec (rows in ``shapes`` order)."""
        if self.layer_costs is None:
            return {}
        counts = self._row_counts(binarized)
        if self.cost_model.fast_path:
            return self.layer_costs(*counts)
        return self.layer_costs.reference(*counts)

    def constant(self, name: str) -> float:
        """What the per-layer spec ``name`` costs once per inference besides its rows."""
        return self.layer_costs.constants[name]

    def peak(self, name: str, binarized: bool = False, theta: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Peak activation bytes of the peak-memory cost ``name``."""
        evaluator: PeakMemory = self.peaks[self._peak_names.index(name)]
        counts = self.cost_model.masker_counts(binarized)
        if not self.cost_model.fast_path:
            return evaluator.reference(counts, theta)
        return evaluator(counts, theta)

