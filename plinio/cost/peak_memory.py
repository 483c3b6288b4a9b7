"""Peak activation memory: the RAM a sequential runtime needs to hold the activations.

Definition. The network runs its steps (graph nodes) in execution order. An activation is
live at step s from the step that writes it to the last step that reads it; a step holds
its inputs, its output, and every earlier activation still needed later (e.g. a residual).
The memory at step s is the sum of the bytes of the activations live at s; the peak is the
maximum over steps. An activation's bytes are its effective channels (the mask-weighted
count Σθ, or a constant) × elements per channel (its spatial size, one sample) × bytes per
element. A view or in-place op (reshape, flatten, Identity, Dropout, ``inplace=True``
activations, the supernet combiner) writes into its input's memory: its output is counted
from the next step on, so the same bytes are never counted twice.

Supernets. The steps of branch i of a supernet exist only when branch i is chosen. An
activation produced in branch i weighs θ_i (a product over nested supernets), and at a step
of branch i the activations of the other branches of that supernet are not counted, and an
activation read by several branches lives until its last reader *in branch i* (or outside
the supernet). For a one-hot θ this is exactly the peak of the exported network; for a soft
θ each live activation counts with its expected size.

The peak is differentiable: it is a max (gradient to the steps that attain it) of sums
that are linear in the effective counts and in θ.

Worked example (4-byte floats, 8×8 feature maps, n = effective channels shared by conv1,
relu and conv2 because of the residual add)::

    x (3 ch) -> conv1 -> relu -> conv2 -> add(conv2, relu) -> output

    step      live activations (channels)    memory (bytes = 4·64·channels)
    x         x: 3                           768
    conv1     x, conv1: 3 + n                256·(3 + n)
    relu      conv1, relu: 2n                512·n
    conv2     relu, conv2: 2n                512·n
    add       relu, conv2, add: 3n           768·n        <- the residual keeps relu alive
    output    add: n                         256·n

    peak = 256 · max(3 + n, 3n) = 3072 bytes for n = 4; 1024 bytes for n = 1 (conv1 step).

``ActivationSchedule`` is the abstract description (steps and activations with producer,
readers, channel expression, spatial size, branch); ``schedule_from_graph`` builds it from a
shape-propagated ``torch.fx`` graph; ``PeakMemory`` evaluates it: one matrix product and a
max on the fast path, a loop over steps and activations in ``reference``.
"""
import math
import operator
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from plinio.graph.tracing import node_shape

Branch = Tuple[Tuple[int, int], ...]
"""(supernet index, branch index) pairs, one per enclosing supernet."""


@dataclass(frozen=True)
class ChannelSum:
    """Effective channels Σ coef · counts[index] + const: one term for a masked tensor, a
    sum for a concatenation, a coefficient for a flatten, only ``const`` for a fixed width."""

    terms: Tuple[Tuple[int, float], ...] = ()
    const: float = 0.0


@dataclass(frozen=True)
class Activation:
    """One tensor of the schedule.

    Its bytes are its effective ``channels`` × ``elements_per_channel`` × the schedule's
    bytes per element, weighted by Π θ over ``branch``. It is live from ``producer`` (from
    ``producer + 1`` if ``inplace``) to its last reader among ``consumers``.
    """

    name: str
    channels: ChannelSum
    elements_per_channel: int
    producer: int
    consumers: Tuple[int, ...]
    inplace: bool = False
    branch: Branch = ()


def _compatible(a: Branch, b: Branch) -> bool:
    """Whether two branch paths can both exist: they agree on every shared supernet."""
    chosen = dict(b)
    return all(chosen.get(g, i) == i for g, i in a)


@dataclass(frozen=True)
class ActivationSchedule:
    """Steps in execution order and the activations they write and read.

    ``n_counts`` is the length of the effective-counts vector the ``ChannelSum``s index;
    ``n_choices`` the number of branches of each supernet (θ is their concatenation).
    """

    steps: Tuple[str, ...]
    step_branches: Tuple[Branch, ...]
    activations: Tuple[Activation, ...]
    n_counts: int = 0
    n_choices: Tuple[int, ...] = ()
    bytes_per_element: float = 4.0

    def __post_init__(self) -> None:
        n_steps = len(self.steps)
        if len(self.step_branches) != n_steps:
            raise ValueError(f"ActivationSchedule: {n_steps} steps but {len(self.step_branches)} step branches")
        if not (isinstance(self.bytes_per_element, (int, float)) and self.bytes_per_element > 0):
            raise ValueError(f"ActivationSchedule: bytes_per_element must be positive, got {self.bytes_per_element!r}")
        for path in self.step_branches:
            self._check_branch(path, "a step")
        for a in self.activations:
            where = f"activation '{a.name}'"
            if not 0 <= a.producer < n_steps or any(not a.producer <= c < n_steps for c in a.consumers):
                raise ValueError(f"ActivationSchedule: {where} has producer {a.producer} and consumers "
                                 f"{a.consumers}; steps run 0..{n_steps - 1} and a consumer cannot "
                                 f"precede the producer")
            if any(not 0 <= i < self.n_counts for i, _ in a.channels.terms):
                raise ValueError(f"ActivationSchedule: {where} uses counts {[i for i, _ in a.channels.terms]} "
                                 f"but there are {self.n_counts}")
            if a.elements_per_channel < 0 or a.channels.const < 0:
                raise ValueError(f"ActivationSchedule: {where} has a negative size")
            self._check_branch(a.branch, where)

    @property
    def theta_offsets(self) -> Tuple[int, ...]:
        """Position of each supernet's first branch in the concatenated θ."""
        return tuple(sum(self.n_choices[:g]) for g in range(len(self.n_choices)))

    def _check_branch(self, path: Branch, where: str) -> None:
        for g, i in path:
            if not (0 <= g < len(self.n_choices) and 0 <= i < self.n_choices[g]):
                raise ValueError(f"ActivationSchedule: {where} lies in branch {i} of supernet {g}, but "
                                 f"the supernets have {list(self.n_choices)} branches")

    def liveness(self) -> Tensor:
        """(steps × activations) bool matrix: which activations count at which step."""
        live = torch.zeros(len(self.steps), len(self.activations), dtype=torch.bool)
        step_index = torch.arange(len(self.steps))
        by_path: Dict[Branch, List[int]] = {}
        for s, path in enumerate(self.step_branches):
            by_path.setdefault(path, []).append(s)
        for path, steps in by_path.items():
            rows = torch.tensor(steps)
            for t, a in enumerate(self.activations):
                if not _compatible(a.branch, path):
                    continue
                readers = [c for c in a.consumers if _compatible(self.step_branches[c], path)]
                start = a.producer + int(a.inplace)
                end = max(readers, default=a.producer)
                live[rows, t] = (step_index[rows] >= start) & (step_index[rows] <= end)
        return live


def _branch_weight_index(schedule: ActivationSchedule) -> Tensor:
    """(activations × depth) indices into [θ, 1]: the factors of each activation's weight."""
    offsets = schedule.theta_offsets
    one = sum(schedule.n_choices)
    depth = max((len(a.branch) for a in schedule.activations), default=0)
    rows = [[offsets[g] + i for g, i in a.branch] + [one] * (depth - len(a.branch))
            for a in schedule.activations]
    return torch.tensor(rows, dtype=torch.long).reshape(len(schedule.activations), depth)


class PeakMemory(nn.Module):
    """Peak activation bytes of an ``ActivationSchedule`` as a function of the effective
    channel counts and the supernets' θ (see the module docstring for the definition)."""

    def __init__(self, schedule: ActivationSchedule) -> None:
        super().__init__()
        self.schedule = schedule
        acts = schedule.activations
        coef = torch.zeros(len(acts), schedule.n_counts)
        for t, a in enumerate(acts):
            for i, c in a.channels.terms:
                coef[t, i] += c
        scale = torch.tensor([a.elements_per_channel * schedule.bytes_per_element for a in acts])
        self.register_buffer("coef", coef, persistent=False)
        self.register_buffer("const", torch.tensor([a.channels.const for a in acts]), persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("live", schedule.liveness().float(), persistent=False)
        self.register_buffer("weight_index", _branch_weight_index(schedule), persistent=False)

    def _check(self, counts: Tensor, theta: Optional[Tensor]) -> Tensor:
        n_counts, n_theta = self.schedule.n_counts, sum(self.schedule.n_choices)
        if not isinstance(counts, Tensor) or not counts.is_floating_point() or tuple(counts.shape) != (n_counts,):
            got = f"shape {tuple(counts.shape)} {counts.dtype}" if isinstance(counts, Tensor) else type(counts).__name__
            raise ValueError(f"PeakMemory: counts must be a floating tensor of shape ({n_counts},), the "
                             f"effective counts the schedule's ChannelSums index, got {got}")
        if theta is None:
            if n_theta:
                raise ValueError(f"PeakMemory: the schedule has supernets with {list(self.schedule.n_choices)} "
                                 f"branches; pass theta (their concatenated θ, {n_theta} values)")
            return counts.new_ones(1)
        if not isinstance(theta, Tensor) or tuple(theta.shape) != (n_theta,):
            got = tuple(theta.shape) if isinstance(theta, Tensor) else type(theta).__name__
            raise ValueError(f"PeakMemory: theta must have shape ({n_theta},) (the concatenated θ of "
                             f"supernets with {list(self.schedule.n_choices)} branches), got {got}")
        return torch.cat([theta.to(counts.dtype), counts.new_ones(1)])

    def activation_bytes(self, counts: Tensor, theta: Optional[Tensor] = None) -> Tensor:
        """Weighted bytes of every activation."""
        theta_one = self._check(counts, theta)
        dtype = counts.dtype
        channels = self.coef.to(dtype) @ counts + self.const.to(dtype)
        weight = theta_one[self.weight_index].prod(dim=1)
        return channels * self.scale.to(dtype) * weight

    def step_bytes(self, counts: Tensor, theta: Optional[Tensor] = None) -> Tensor:
        """Live bytes at every step (fast path: one matrix-vector product)."""
        return self.live.to(counts.dtype) @ self.activation_bytes(counts, theta)

    def forward(self, counts: Tensor, theta: Optional[Tensor] = None) -> Tensor:
        """Peak bytes, a 0-dim tensor differentiable in ``counts`` and ``theta``."""
        return torch.amax(self.step_bytes(counts, theta))

    def reference(self, counts: Tensor, theta: Optional[Tensor] = None) -> Tensor:
        """The same peak, one step and one activation at a time (the looped reference)."""
        theta_one = self._check(counts, theta)
        sched = self.schedule
        offsets = sched.theta_offsets
        live = sched.liveness()
        totals = []
        for s in range(len(sched.steps)):
            total = counts.new_zeros(())
            for t, a in enumerate(sched.activations):
                if not live[s, t]:
                    continue
                channels = counts.new_tensor(a.channels.const)
                for i, c in a.channels.terms:
                    channels = channels + c * counts[i]
                weight = counts.new_ones(())
                for g, i in a.branch:
                    weight = weight * theta_one[offsets[g] + i]
                total = total + channels * (a.elements_per_channel * sched.bytes_per_element) * weight
            totals.append(total)
        return torch.amax(torch.stack(totals))

    def peak_step(self, counts: Tensor, theta: Optional[Tensor] = None) -> str:
        """Name of the step that attains the peak (synchronises: for reports)."""
        return self.schedule.steps[int(torch.argmax(self.step_bytes(counts, theta).detach()))]


# ---- schedules from fx graphs -------------------------------------------------------------------

_VIEW_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
_VIEW_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute,
                   torch.transpose, operator.getitem, F.dropout}
_VIEW_METHODS = {"view", "view_as", "reshape", "flatten", "squeeze", "unsqueeze", "permute",
                 "transpose", "expand", "expand_as"}


def default_inplace(node: fx.Node, module: Optional[nn.Module]) -> bool:
    """Whether ``node`` writes into its input's memory: views and reshapes, Identity and
    Dropout, ops called with ``inplace=True`` or as ``x.op_()``, and merge modules (the
    supernet combiner, whose output is the chosen branch's output in the exported network)."""
    if module is not None:
        return isinstance(module, _VIEW_MODULES) or getattr(module, "inplace", False) is True \
            or bool(getattr(type(module), "plinio_merges_inputs", False))
    if node.kwargs.get("inplace") is True:
        return True
    if node.op == "call_function":
        return node.target in _VIEW_FUNCTIONS
    target = str(node.target)
    return target in _VIEW_METHODS or (target.endswith("_") and not target.startswith("_"))


def _ancestors(node: fx.Node) -> Set[fx.Node]:
    seen: Set[fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return seen


def _branches_of(nodes: Sequence[fx.Node],
                 modules: Mapping[str, nn.Module]) -> Tuple[Dict[fx.Node, Branch], Tuple[int, ...]]:
    """Branch path of every node: a node is in branch i of a merge node (supernet combiner)
    when it feeds input i and no other input of that merge."""
    paths: Dict[fx.Node, List[Tuple[int, int]]] = {n: [] for n in nodes}
    n_choices: List[int] = []
    for node in nodes:
        module = modules.get(str(node.target)) if node.op == "call_module" else None
        if module is None or not getattr(type(module), "plinio_merges_inputs", False):
            continue
        inputs = node.args[0] if node.args and isinstance(node.args[0], (list, tuple)) else node.all_input_nodes
        ancestors = [_ancestors(b) if isinstance(b, fx.Node) else set() for b in inputs]
        g = len(n_choices)
        n_choices.append(len(inputs))
        for i, own in enumerate(ancestors):
            others = set().union(*(a for j, a in enumerate(ancestors) if j != i))
            for n in own - others:
                paths[n].append((g, i))
    return {n: tuple(p) for n, p in paths.items()}, tuple(n_choices)


def _tensor_shape(node: fx.Node) -> Optional[Tuple[int, ...]]:
    shape = node_shape(node)
    if shape is None and "tensor_meta" in node.meta and hasattr(node.meta["tensor_meta"], "shape"):
        shape = tuple(node.meta["tensor_meta"].shape)
    return None if shape is None else tuple(shape)


ChannelsArg = Mapping[str, Union[int, ChannelSum]]
InplaceFn = Callable[[fx.Node, Optional[nn.Module]], bool]


def schedule_from_graph(gm: fx.GraphModule, channels: Optional[ChannelsArg] = None, n_counts: int = 0,
                        bytes_per_element: float = 4.0,
                        inplace: InplaceFn = default_inplace) -> ActivationSchedule:
    """The activation schedule of a shape-propagated fx graph (shapes from
    ``plinio.graph.tracing.propagate_shapes`` or torch's ``ShapeProp``; batch dim dropped).

    Steps are the placeholders, the tensor-valued nodes and the output, in graph order.
    ``channels`` maps a node name to its effective channels: an index into the counts vector
    (of length ``n_counts``) or a ``ChannelSum``; other nodes have the constant channels of
    their shape. ``inplace(node, module)`` says which nodes write into their input's memory.
    Parameters (``get_attr``) are not activations; reading sizes (``x.size(0)``) is not a use.
    """
    channels = dict(channels or {})
    modules = dict(gm.named_modules())
    nodes = [n for n in gm.graph.nodes if n.op != "get_attr"]
    shapes = {n: _tensor_shape(n) for n in nodes}
    for n in nodes:
        if n.op == "placeholder" and shapes[n] is None:
            raise ValueError(f"schedule_from_graph: input '{n.name}' has no recorded shape; run "
                             f"plinio.graph.tracing.propagate_shapes (or torch's ShapeProp) on the graph first")
        if shapes[n] is None and n.op != "output" and \
                any(u.target is operator.getitem and shapes.get(u) is not None for u in n.users):
            raise NotImplementedError(f"peak memory: node '{n.name}' ({n.target}) returns several tensors; "
                                      f"the activation schedule needs one tensor per node")
    steps = [n for n in nodes if n.op == "output" or shapes[n] is not None]
    index = {n: s for s, n in enumerate(steps)}
    unknown = sorted(set(channels) - {n.name for n in steps})
    if unknown:
        raise ValueError(f"schedule_from_graph: channels given for {unknown}, which are not tensor "
                         f"nodes of the graph")
    paths, n_choices = _branches_of(nodes, modules)
    activations = []
    for n in steps:
        if n.op == "output":
            continue
        shape = shapes[n]
        width = shape[1] if len(shape) >= 2 else 1
        expr = channels.get(n.name)
        if expr is None:
            expr = ChannelSum(const=float(width))
        elif isinstance(expr, int):
            expr = ChannelSum(((expr, 1.0),))
        elif not isinstance(expr, ChannelSum):
            raise TypeError(f"schedule_from_graph: channels of node '{n.name}' must be a count index "
                            f"(int) or a ChannelSum, got {type(expr).__name__}")
        module = modules.get(str(n.target)) if n.op == "call_module" else None
        activations.append(Activation(
            name=n.name, channels=expr,
            elements_per_channel=math.prod(shape[2:]), producer=index[n],
            consumers=tuple(sorted(index[u] for u in n.users if u in index)),
            inplace=n.op != "placeholder" and inplace(n, module), branch=paths[n]))
    return ActivationSchedule(steps=tuple(n.name for n in steps),
                              step_branches=tuple(paths[n] for n in steps),
                              activations=tuple(activations), n_counts=n_counts,
                              n_choices=n_choices, bytes_per_element=bytes_per_element)


class PeakMemoryCost:
    """The ``peak_memory`` cost: whole-network, evaluated on the activation schedule of the
    network's graph rather than per layer. ``bind`` builds the evaluator of one graph."""

    name = "peak_memory"

    def __init__(self, bytes_per_element: float = 4.0, inplace: InplaceFn = default_inplace) -> None:
        if not isinstance(bytes_per_element, (int, float)) or isinstance(bytes_per_element, bool) \
                or not bytes_per_element > 0:
            raise ValueError(f"PeakMemoryCost: bytes_per_element must be a positive number (4 for "
                             f"float32, 1 for int8), got {bytes_per_element!r}")
        self.bytes_per_element = float(bytes_per_element)
        self.inplace = inplace

    def bind(self, gm: fx.GraphModule, channels: Optional[ChannelsArg] = None, n_counts: int = 0) -> PeakMemory:
        """``PeakMemory`` of a shape-propagated graph (arguments of ``schedule_from_graph``)."""
        return PeakMemory(schedule_from_graph(gm, channels, n_counts, self.bytes_per_element, self.inplace))
