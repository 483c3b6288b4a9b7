"""Latency tables measured on the target, and the ``latency_table`` cost spec.

``bench/latency_table.py`` times single layers on the machine it runs on and writes a CSV
with one row per measured geometry and backend (``CSV_COLUMNS``):

============  ==========================================================================
kind          layer kind (``conv1d``, ``conv2d``, ``linear``, ``add``, ``relu``, ...)
kernel        kernel size, ``x``-joined (``3x3``; ``5`` for conv1d; empty without kernel)
stride        stride, ``x``-joined (empty without)
dilation      dilation of a convolution, ``x``-joined (empty or missing column: 1)
depthwise     1 for a depthwise convolution (groups = cin = cout), else 0
in_spatial    input spatial size of one call, ``x``-joined (``32x32``; empty for linear)
out_spatial   output spatial size of one call
cin, cout     channels (cout = cin for depthwise convs and channel-preserving ops)
backend       ``torch`` (eager PyTorch) or ``onnxruntime``
threads       intra-op threads of the backend
median_s      median time of one call, in seconds
iqr_s         interquartile range of the timed runs, in seconds
repeats       number of timed runs
============  ==========================================================================

Lines starting with ``#`` are comments (machine, versions, date, command). Rows of kind
``overhead`` (cin = cout = 1, no kernel or sizes) hold a backend's per-call overhead: the
time of one call of an identity layer, which every single-layer timing includes once but a
network pays once per inference (a runtime call), not once per layer.

A layer's measured sub-table is the one with its kind, kernel, stride, depthwise flag and
spatial sizes (``TableKey``). Convolutions are timed without padding, on the input size
that gives the layer's output size, so their key holds the output size only; for
``conv1d`` the kernel taps are an interpolation axis instead of part of the key (PIT
searches them); a dilation other than 1 is part of the key (eager PyTorch runs dilated
convolutions on a slower path: a TCN's dilated layers cost up to 3x their undilated
equivalent). Within a sub-table the points must form a
full grid over (taps,) cin and cout; the cost is the multilinear interpolation of the
median time on that grid at the effective counts, times the number of calls: piecewise
linear, hence differentiable in the counts. Channel-preserving kinds and depthwise
convolutions have one channel axis (the input channels).

Every layer is checked when the spec is bound: a geometry that was not measured, or a
channel / taps range the grid does not cover from 1 to the layer's full size, is an error
naming the layer. Counts above the full size (a mask value |α| > 1) extrapolate linearly
from the last grid cell.

With the per-call overhead correction a network's latency is Σ over layer calls of
(time − overhead), plus the overhead once (``CostSpec.network_constant``). It is on by
default for onnxruntime, whose ``run`` executes the whole network (measured on a TCN: mean
error +10 % instead of +154 %, bench/RESULTS.md), and off for eager PyTorch, which pays the
call overhead at every layer (−10 % without, −13 % with).
"""
import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from plinio.cost.geometry import WEIGHTED_KINDS, LayerGeometry, LayerShape
from plinio.cost.specs import CostFn, CostSpec

CONV_KINDS = ("conv1d", "conv2d")
OVERHEAD_KIND = "overhead"

CSV_COLUMNS = ("kind", "kernel", "stride", "dilation", "depthwise", "in_spatial", "out_spatial", "cin", "cout",
               "backend", "threads", "median_s", "iqr_s", "repeats")
_REQUIRED = ("kind", "kernel", "stride", "depthwise", "in_spatial", "out_spatial", "cin", "cout",
             "backend", "median_s")


def format_dims(dims: Sequence[int]) -> str:
    """``(3, 3)`` -> ``'3x3'``, ``()`` -> ``''`` (the CSV form of a size tuple)."""
    return "x".join(str(d) for d in dims)


def _parse_dims(text: str, where: str) -> Tuple[int, ...]:
    text = text.strip()
    if not text:
        return ()
    try:
        dims = tuple(int(p) for p in text.split("x"))
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not an 'x'-joined list of ints") from None
    if any(d <= 0 for d in dims):
        raise ValueError(f"{where}: {text!r} holds a non-positive size")
    return dims


@dataclass(frozen=True)
class TableKey:
    """What selects a measured sub-table (everything but the interpolated counts)."""

    kind: str
    kernel: Tuple[int, ...]
    stride: Tuple[int, ...]
    depthwise: bool
    in_spatial: Tuple[int, ...]
    out_spatial: Tuple[int, ...]
    dilation: Tuple[int, ...] = ()

    @classmethod
    def make(cls, kind: str, kernel: Tuple[int, ...], stride: Tuple[int, ...], depthwise: bool,
             in_spatial: Tuple[int, ...], out_spatial: Tuple[int, ...],
             dilation: Tuple[int, ...] = ()) -> "TableKey":
        """The key of a geometry: conv1d drops the kernel (its taps are interpolated),
        convolutions drop the input size (timed unpadded, the output size decides it), and
        only convolutions keep a dilation, when it is not 1."""
        conv = kind in CONV_KINDS
        return cls(kind, () if kind == "conv1d" else kernel, stride, depthwise, () if conv else in_spatial,
                   out_spatial, dilation if conv and any(d != 1 for d in dilation) else ())

    @classmethod
    def of(cls, shape: LayerShape) -> "TableKey":
        """The key of a layer."""
        return cls.make(shape.kind, shape.kernel_size, shape.stride, shape.depthwise, shape.in_spatial,
                        shape.out_spatial, shape.dilation)

    @property
    def one_channel_axis(self) -> bool:
        """Depthwise convs and channel-preserving ops: latency is a function of cin alone."""
        return self.depthwise or self.kind not in WEIGHTED_KINDS

    def __str__(self) -> str:
        parts = [self.kind]
        if self.kernel:
            parts.append(f"kernel {format_dims(self.kernel)}")
        if self.stride:
            parts.append(f"stride {format_dims(self.stride)}")
        if self.dilation:
            parts.append(f"dilation {format_dims(self.dilation)}")
        if self.depthwise:
            parts.append("depthwise")
        if self.in_spatial:
            parts.append(f"spatial {format_dims(self.in_spatial)} -> {format_dims(self.out_spatial)}")
        elif self.out_spatial:
            parts.append(f"output {format_dims(self.out_spatial)}")
        return ", ".join(parts)


@dataclass(frozen=True)
class MeasuredGrid:
    """One sub-table: median seconds on the full grid taps × cin × cout (ascending axes;
    ``cout`` is empty when the kind has one channel axis, ``taps`` has one value unless the
    kind is conv1d)."""

    taps: Tuple[float, ...]
    cin: Tuple[float, ...]
    cout: Tuple[float, ...]
    seconds: Tensor


Point = Tuple[float, float, float]


class LatencyTable:
    """Measured per-layer latencies of one backend, by ``TableKey``."""

    def __init__(self, grids: Mapping[TableKey, MeasuredGrid], backend: str, source: str = "latency table") -> None:
        self.grids: Dict[TableKey, MeasuredGrid] = dict(grids)
        self.backend = backend
        self.source = source

    @classmethod
    def from_csv(cls, path: Union[str, Path], backend: str) -> "LatencyTable":
        """Read a CSV written by ``bench/latency_table.py`` (``#`` lines are comments) and
        keep the rows of ``backend``."""
        path = Path(path)
        with path.open(newline="") as f:
            numbered = [(n, line) for n, line in enumerate(f, start=1) if not line.lstrip().startswith("#")]
        reader = csv.DictReader(line for _, line in numbered)
        missing = [c for c in _REQUIRED if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"latency table {path}: missing columns {missing}; expected {list(CSV_COLUMNS)}")
        line_numbers = [n for n, _ in numbered[1:]]
        return cls.from_rows(zip(line_numbers, reader), backend, str(path))

    @classmethod
    def from_rows(cls, rows: Iterable[Tuple[int, Mapping[str, str]]], backend: str, source: str) -> "LatencyTable":
        """Build from (line number, CSV row) pairs; see the module docstring for columns."""
        points: Dict[TableKey, Dict[Point, float]] = {}
        backends = set()
        for line, row in rows:
            where = f"{source}, line {line}"
            backends.add(row["backend"])
            if row["backend"] != backend:
                continue
            kind = row["kind"].strip()
            kernel = _parse_dims(row["kernel"], f"{where}, kernel")
            key = TableKey.make(kind, kernel, _parse_dims(row["stride"], f"{where}, stride"),
                                row["depthwise"].strip() in ("1", "true", "True"),
                                _parse_dims(row["in_spatial"], f"{where}, in_spatial"),
                                _parse_dims(row["out_spatial"], f"{where}, out_spatial"),
                                _parse_dims(row.get("dilation") or "", f"{where}, dilation"))
            try:
                cin, cout, seconds = int(row["cin"]), int(row["cout"]), float(row["median_s"])
            except ValueError:
                raise ValueError(f"{where}: cin, cout must be ints and median_s a number, got "
                                 f"{row['cin']!r}, {row['cout']!r}, {row['median_s']!r}") from None
            if not math.isfinite(seconds) or seconds <= 0 or cin <= 0 or cout <= 0:
                raise ValueError(f"{where}: needs positive cin, cout and a positive finite median_s")
            if key.one_channel_axis and cin != cout:
                raise ValueError(f"{where}: {key} has one channel axis, so cout must equal cin "
                                 f"(got cin={cin}, cout={cout})")
            taps = math.prod(kernel)
            point = (float(taps), float(cin), 0.0 if key.one_channel_axis else float(cout))
            grid = points.setdefault(key, {})
            if point in grid:
                raise ValueError(f"{where}: {key} at taps={taps}, cin={cin}, cout={cout} is measured twice")
            grid[point] = seconds
        if not points:
            raise ValueError(f"{source}: no rows for backend {backend!r}; the table has backends "
                             f"{sorted(backends)}")
        return cls({key: _full_grid(key, p, source) for key, p in points.items()}, backend, source)

    @property
    def overhead_s(self) -> float:
        """The backend's per-call overhead (an ``overhead`` row), 0 when not measured."""
        grid = self.grids.get(TableKey.make(OVERHEAD_KIND, (), (), False, (), ()))
        return 0.0 if grid is None else float(grid.seconds.reshape(-1)[0])

    def grid_for(self, shape: LayerShape) -> MeasuredGrid:
        """The sub-table of a layer; an error naming it if the table does not cover every
        count the layer can take (1 to its full size)."""
        key = TableKey.of(shape)
        grid = self.grids.get(key)
        where = f"{self.source} ({self.backend})"
        if not shape.uniform_calls:
            raise ValueError(f"{where}: layer '{shape.name}' is called on inputs of different sizes; a "
                             f"table holds per-call latencies of one size: use a separate module per call")
        if grid is None:
            same_kind = sorted(str(k) for k in self.grids if k.kind == shape.kind)
            raise ValueError(f"{where} has no entry for layer '{shape.name}' ({key}); measured "
                             f"{shape.kind} geometries: {same_kind or 'none'}. Measure it with "
                             f"bench/latency_table.py")
        needs = [("cin", grid.cin, shape.in_channels)]
        if not key.one_channel_axis:
            needs.append(("cout", grid.cout, shape.out_channels))
        if shape.kind == "conv1d":
            needs.append(("kernel taps", grid.taps, shape.kernel_volume))
        for axis, values, full in needs:
            if values[0] > 1 or values[-1] < full:
                raise ValueError(f"{where}: layer '{shape.name}' ({key}) can take {axis} from 1 to "
                                 f"{full}, but the table measured {axis} {values[0]:g}..{values[-1]:g}; "
                                 f"measure a grid that covers it")
        return grid


def _full_grid(key: TableKey, points: Dict[Point, float], source: str) -> MeasuredGrid:
    taps, cin, cout = (tuple(sorted({p[axis] for p in points})) for axis in range(3))
    seconds = torch.empty(len(taps), len(cin), len(cout), dtype=torch.float64)
    for a, t in enumerate(taps):
        for b, i in enumerate(cin):
            for c, o in enumerate(cout):
                if (t, i, o) not in points:
                    shown = f"taps={t:g}, cin={i:g}" + ("" if key.one_channel_axis else f", cout={o:g}")
                    raise ValueError(f"{source}: the {key} rows do not form a full grid: {shown} is "
                                     f"missing (axes: taps {taps}, cin {cin}, cout {cout})")
                seconds[a, b, c] = points[(t, i, o)]
    return MeasuredGrid(taps=taps, cin=cin, cout=() if key.one_channel_axis else cout, seconds=seconds)


class _BoundLatency(nn.Module):
    """Latency of a fixed batch of layers: their grids packed into one buffer, less the
    per-call ``overhead`` (seconds) at every call."""

    def __init__(self, grids: Sequence[MeasuredGrid], overhead: float = 0.0) -> None:
        super().__init__()
        self.overhead = overhead
        axes: List[List[Tuple[float, ...]]] = [[], [], []]
        flats, offsets, offset = [], [], 0
        for grid in grids:
            seconds = grid.seconds
            for dim, values in enumerate((grid.taps, grid.cin, grid.cout)):
                if len(values) < 2:  # a constant axis: a second point one unit above, same times
                    seconds = seconds.expand(*[2 if d == dim else -1 for d in range(3)])
                    values = (values[0], values[0] + 1.0) if values else (0.0, 1.0)
                axes[dim].append(values)
            flats.append(seconds.reshape(-1))
            offsets.append(offset)
            offset += seconds.numel()
        for name, values in zip(("taps", "cin", "cout"), axes):
            width = max(len(v) for v in values)
            padded = [list(v) + [math.inf] * (width - len(v)) for v in values]
            self.register_buffer(f"axis_{name}", torch.tensor(padded, dtype=torch.float64), persistent=False)
            self.register_buffer(f"len_{name}", torch.tensor([len(v) for v in values]), persistent=False)
        self.register_buffer("seconds", torch.cat(flats), persistent=False)
        self.register_buffer("offset", torch.tensor(offsets), persistent=False)

    @staticmethod
    def _cell(axis: Tensor, length: Tensor, value: Tensor) -> Tuple[Tensor, Tensor]:
        """Index of the grid cell holding ``value`` (the last cell above the grid) and the
        fractional position in it."""
        axis = axis.to(value.dtype)
        pos = torch.searchsorted(axis, value.detach().unsqueeze(1).contiguous(), right=True).squeeze(1) - 1
        index = torch.minimum(pos.clamp(min=0), length - 2)
        lo = axis.gather(1, index.unsqueeze(1)).squeeze(1)
        hi = axis.gather(1, (index + 1).unsqueeze(1)).squeeze(1)
        return index, (value - lo) / (hi - lo)

    def forward(self, geometry: LayerGeometry) -> Tensor:
        g = geometry
        it, ft = self._cell(self.axis_taps, self.len_taps, g.kernel_taps)
        ii, fi = self._cell(self.axis_cin, self.len_cin, g.in_channels)
        io, fo = self._cell(self.axis_cout, self.len_cout, g.out_channels)
        seconds = self.seconds.to(g.in_channels.dtype)
        total = torch.zeros_like(g.in_channels)
        for dt in (0, 1):
            for di in (0, 1):
                for do in (0, 1):
                    weight = (ft if dt else 1 - ft) * (fi if di else 1 - fi) * (fo if do else 1 - fo)
                    flat = self.offset + ((it + dt) * self.len_cin + ii + di) * self.len_cout + io + do
                    total = total + weight * seconds[flat]
        return (total - self.overhead) * g.calls.to(total.dtype)


class LatencyTableCost(CostSpec):
    """The ``latency_table`` cost: seconds per inference from a measured table, with the
    per-call overhead correction when the table measured the overhead and
    ``per_call_overhead`` is True (None: for every backend but eager ``torch``)."""

    name = "latency_table"

    def __init__(self, table: LatencyTable, per_call_overhead: Optional[bool] = None) -> None:
        if not isinstance(table, LatencyTable):
            raise TypeError(f"LatencyTableCost: expected a LatencyTable, got {type(table).__name__}")
        self.table = table
        correct = table.backend != "torch" if per_call_overhead is None else per_call_overhead
        self.overhead = table.overhead_s if correct else 0.0

    @classmethod
    def from_csv(cls, path: Union[str, Path], backend: str,
                 per_call_overhead: Optional[bool] = None) -> "LatencyTableCost":
        """The spec of a CSV written by ``bench/latency_table.py``, for one backend."""
        return cls(LatencyTable.from_csv(path, backend), per_call_overhead)

    def bind(self, shapes: Tuple[LayerShape, ...]) -> CostFn:
        return _BoundLatency([self.table.grid_for(s) for s in shapes], self.overhead)

    def network_constant(self) -> float:
        return self.overhead

    def __call__(self, geometry: LayerGeometry) -> Tensor:
        return self.bind(geometry.shapes).to(geometry.in_channels.device)(geometry)
