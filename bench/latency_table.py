"""Measure a per-layer latency table on this machine, with onnxruntime and eager PyTorch.

    python -m bench.latency_table --model dscnn --out dscnn_latency.csv
    python -m bench.latency_table --model tcn --channels step:8 --repeats 30 --threads 1

Every layer geometry the model can take is timed: each conv1d / conv2d / linear / add /
relu / pool / pad node of the traced model (for a supernet: every branch), with its channels on a
grid from 1 to the layer's full width and, for conv1d, its kernel taps from 1 to the full
kernel. Layers sharing a geometry are measured once, up to the widest. Each point is one
layer on a batch-1 input with random weights, timed ``--repeats`` times after ``--warmup``
calls; the CSV row holds the median and the interquartile range. Convolutions run
unpadded on the input size that gives the layer's output size. The columns are those of
``plinio.cost.latency`` (``CSV_COLUMNS``, documented there); ``#`` lines record the machine,
the versions, the date and the command. ``LatencyTableCost.from_csv(path, backend)`` reads
the table.

Grids: ``geometric`` (default) is {1, 2, 4, ...} plus the full width; ``step:N`` is
{1, N, 2N, ...} plus the full width (finer, slower). One intra-op thread by default (an MCU
runs one core; timings on a shared machine are steadier). ``--overhead`` adds one
``overhead`` row per backend: an identity layer's call, which every single-layer timing
includes and a network pays once (``LatencyTableCost`` corrects for it).
"""
import argparse
import csv
import datetime
import io
import itertools
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.models import workloads  # noqa: E402
from plinio.cost.geometry import LayerShape, shapes_from_graph  # noqa: E402
from plinio.cost.latency import CONV_KINDS, CSV_COLUMNS, OVERHEAD_KIND, TableKey, format_dims  # noqa: E402
from plinio.graph.tracing import propagate_shapes, trace  # noqa: E402

MEASURED_KINDS = ("conv1d", "conv2d", "linear", "add", "relu", "pool", "pad")
BACKENDS = ("torch", "onnxruntime")


def channel_grid(full: int, spec: str) -> List[int]:
    """Channel counts to measure for a layer of ``full`` channels (see the module docstring)."""
    if spec == "geometric":
        values = {2 ** i for i in range(int(math.log2(full)) + 1)}
    elif spec.startswith("step:") and spec[5:].isdigit() and int(spec[5:]) > 0:
        values = {1} | set(range(int(spec[5:]), full + 1, int(spec[5:])))
    else:
        raise ValueError(f"channel grid {spec!r}: use 'geometric' or 'step:N' with N > 0")
    return sorted(v for v in values | {full} if v <= full)


@dataclass(frozen=True)
class Point:
    """One measured layer: its geometry with chosen channels and kernel taps."""

    key: TableKey
    kernel: Tuple[int, ...]
    in_spatial: Tuple[int, ...]
    cin: int
    cout: int


def _conv_input(key: TableKey, kernel: Tuple[int, ...]) -> Tuple[int, ...]:
    dilation = key.dilation or (1,) * len(kernel)
    return tuple((o - 1) * s + (k - 1) * d + 1 for o, k, s, d in zip(key.out_spatial, kernel, key.stride, dilation))


def _pads(p: Point) -> List[int]:
    """A pad node's padding: all of it before each dimension (a causal pad), last dim first."""
    pads: List[int] = []
    for i, o in reversed(list(zip(p.in_spatial, p.key.out_spatial))):
        pads += [o - i, 0]
    return pads


def points_of(shapes: Iterable[LayerShape], grid: str) -> List[Point]:
    """Every point to measure: one grid per geometry, up to its widest layer."""
    groups: Dict[TableKey, List[LayerShape]] = {}
    for s in shapes:
        if s.kind in MEASURED_KINDS:
            groups.setdefault(TableKey.of(s), []).append(s)
    points = []
    for key, group in groups.items():
        first = group[0]
        taps = max(s.kernel_volume for s in group)
        kernels = [(k,) for k in range(1, taps + 1)] if key.kind == "conv1d" else [first.kernel_size]
        cins = channel_grid(max(s.in_channels for s in group), grid)
        couts = [None] if key.one_channel_axis else channel_grid(max(s.out_channels for s in group), grid)
        for kernel, cin, cout in itertools.product(kernels, cins, couts):
            in_spatial = _conv_input(key, kernel) if key.kind in CONV_KINDS else first.in_spatial
            points.append(Point(key, kernel, in_spatial, cin, cin if cout is None else cout))
    return points


def overhead_point() -> Point:
    """The identity layer whose call time is a backend's per-call overhead."""
    return Point(TableKey.make(OVERHEAD_KIND, (), (), False, (), ()), (), (), 1, 1)


# ---- the layers, in PyTorch and in ONNX -------------------------------------------------------

def torch_layer(p: Point) -> Tuple[Callable[..., torch.Tensor], Tuple[torch.Tensor, ...]]:
    """The layer as a PyTorch callable and its batch-1 inputs."""
    x = torch.randn((1, p.cin) + p.in_spatial)
    kind = p.key.kind
    if kind == OVERHEAD_KIND:
        return nn.Identity(), (x,)
    if kind in CONV_KINDS:
        conv = (nn.Conv1d if kind == "conv1d" else nn.Conv2d)(
            p.cin, p.cout, p.kernel, p.key.stride, dilation=p.key.dilation or 1,
            groups=p.cin if p.key.depthwise else 1).eval()
        return conv, (x,)
    if kind == "linear":
        return nn.Linear(p.cin, p.cout).eval(), (x,)
    if kind == "add":
        return torch.add, (x, torch.randn_like(x))
    if kind == "relu":
        return torch.relu, (x,)
    if kind == "pool":
        pool = F.max_pool1d if len(p.in_spatial) == 1 else F.max_pool2d
        return (lambda t: pool(t, p.key.kernel, p.key.stride)), (x,)
    if kind == "pad":
        pads = _pads(p)
        return (lambda t: F.pad(t, pads)), (x,)
    raise ValueError(f"latency table: cannot measure kind {kind!r}; measured kinds: {MEASURED_KINDS}")


def onnx_layer(p: Point) -> Tuple[bytes, Dict[str, np.ndarray]]:
    """The same layer as a serialized one-node ONNX model and its inputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, p.cin) + p.in_spatial).astype(np.float32)
    inputs = {"x": x}
    init: List[onnx.TensorProto] = []
    kind = p.key.kind
    if kind == OVERHEAD_KIND:
        node = helper.make_node("Identity", ["x"], ["y"])
    elif kind in CONV_KINDS:
        groups = p.cin if p.key.depthwise else 1
        w = rng.standard_normal((p.cout, p.cin // groups) + p.kernel).astype(np.float32)
        init = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(p.cout, np.float32), "b")]
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=list(p.kernel),
                                strides=list(p.key.stride), group=groups,
                                dilations=list(p.key.dilation or (1,) * len(p.kernel)))
    elif kind == "linear":
        w = rng.standard_normal((p.cout, p.cin)).astype(np.float32)
        init = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(p.cout, np.float32), "b")]
        node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
    elif kind == "add":
        inputs["x2"] = rng.standard_normal(x.shape).astype(np.float32)
        node = helper.make_node("Add", ["x", "x2"], ["y"])
    elif kind == "relu":
        node = helper.make_node("Relu", ["x"], ["y"])
    elif kind == "pool":
        node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=list(p.key.kernel),
                                strides=list(p.key.stride))
    elif kind == "pad":
        before = [o - i for i, o in zip(p.in_spatial, p.key.out_spatial)]
        pads = np.array([0, 0] + before + [0, 0] + [0] * len(before), dtype=np.int64)
        init = [numpy_helper.from_array(pads, "pads")]
        node = helper.make_node("Pad", ["x", "pads"], ["y"])
    else:
        raise ValueError(f"latency table: cannot measure kind {kind!r}; measured kinds: {MEASURED_KINDS}")
    graph = helper.make_graph(
        [node], "layer",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(v.shape)) for name, v in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString(), inputs


def time_calls(call: Callable[[], object], warmup: int, repeats: int, rounds: int = 1) -> Tuple[float, float]:
    """(median, interquartile range) in seconds of ``repeats`` timed calls; with several
    ``rounds``, those of the round with the lowest median (on a shared machine, the round
    least disturbed by other processes)."""
    for _ in range(warmup):
        call()
    best: Optional[Tuple[float, float]] = None
    for _ in range(rounds):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
        result = (statistics.median(times), q[2] - q[0])
        best = result if best is None or result[0] < best[0] else best
    return best


def _measure_torch(p: Point, warmup: int, repeats: int, rounds: int) -> Tuple[float, float]:
    fn, args = torch_layer(p)
    with torch.inference_mode():
        return time_calls(lambda: fn(*args), warmup, repeats, rounds)


def _measure_onnxruntime(p: Point, warmup: int, repeats: int, threads: int, rounds: int) -> Tuple[float, float]:
    import onnxruntime as ort

    model, inputs = onnx_layer(p)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return time_calls(lambda: session.run(None, inputs), warmup, repeats, rounds)


def measure(points: Sequence[Point], backends: Sequence[str], warmup: int, repeats: int,
            threads: int, progress: Optional[Callable[[str], None]] = None, rounds: int = 1) -> List[Dict[str, object]]:
    """One CSV row per point and backend (``rounds``: see ``time_calls``)."""
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise ValueError(f"latency table: unknown backends {unknown}; choose from {BACKENDS}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows: List[Dict[str, object]] = []
    try:
        for i, p in enumerate(points):
            for backend in backends:
                median, iqr = (_measure_torch(p, warmup, repeats, rounds) if backend == "torch"
                               else _measure_onnxruntime(p, warmup, repeats, threads, rounds))
                rows.append({"kind": p.key.kind, "kernel": format_dims(p.kernel), "stride": format_dims(p.key.stride),
                             "dilation": format_dims(p.key.dilation),
                             "depthwise": int(p.key.depthwise), "in_spatial": format_dims(p.in_spatial),
                             "out_spatial": format_dims(p.key.out_spatial), "cin": p.cin, "cout": p.cout,
                             "backend": backend, "threads": threads, "median_s": f"{median:.6e}",
                             "iqr_s": f"{iqr:.3e}", "repeats": repeats})
            if progress is not None and (i + 1) % 50 == 0:
                progress(f"{i + 1}/{len(points)} points")
    finally:
        torch.set_num_threads(previous)
    return rows


def model_shapes(model: nn.Module, input_shape: Tuple[int, ...]) -> List[LayerShape]:
    """Layer shapes of a model traced with plinio's rules on a batch-1 input."""
    gm = trace(model)
    propagate_shapes(gm, (torch.rand((1,) + tuple(input_shape)),))
    return shapes_from_graph(gm)


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def header_lines(argv: Sequence[str], backends: Sequence[str], script: str = "bench.latency_table") -> List[str]:
    """Comment lines recording where and how the table (or ``script``'s report) was measured."""
    versions = [f"torch {torch.__version__}"]
    if "onnxruntime" in backends:
        import onnxruntime
        versions.append(f"onnxruntime {onnxruntime.__version__}")
    cpu = " ".join(filter(None, (cpu_model(), platform.machine())))
    return [f"# machine: {cpu} ({os.cpu_count()} logical CPUs), {platform.system()} {platform.release()}",
            f"# versions: python {platform.python_version()}, {', '.join(versions)}",
            f"# date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
            f"# command: python -m {script} {' '.join(argv)}"]


def write_csv(path: Path, rows: Sequence[Dict[str, object]], comments: Sequence[str]) -> None:
    """The table: comment lines, then the header and one row per measurement."""
    text = io.StringIO()
    for line in comments:
        text.write(line + "\n")
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(text.getvalue())


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, object]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=sorted(workloads()), help="workload of bench/models.py")
    parser.add_argument("--out", type=Path, help="CSV path (default: latency_<model>.csv)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: torch,onnxruntime")
    parser.add_argument("--channels", default="geometric", help="channel grid: geometric or step:N")
    parser.add_argument("--kinds", default=",".join(MEASURED_KINDS), help="layer kinds to measure")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="keep the round of repeats with the lowest median")
    parser.add_argument("--overhead", action="store_true", help="also measure each backend's per-call overhead")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    kinds = set(args.kinds.split(","))
    workload = workloads()[args.model]
    shapes = [s for s in model_shapes(workload.factory(), workload.input_shape) if s.kind in kinds]
    points = points_of(shapes, args.channels) + ([overhead_point()] if args.overhead else [])
    print(f"{args.model}: {len(shapes)} layers, {len({p.key for p in points})} geometries, "
          f"{len(points)} points x {len(backends)} backends", flush=True)
    start = time.perf_counter()
    rows = measure(points, backends, args.warmup, args.repeats, args.threads, lambda m: print(m, flush=True),
                   args.rounds)
    out = args.out or Path(f"latency_{args.model}.csv")
    write_csv(out, rows, header_lines(argv, backends))
    print(f"wrote {len(rows)} rows to {out} in {time.perf_counter() - start:.0f} s")
    return rows


if __name__ == "__main__":
    main()
