"""When does sparse execution of masked channels pay? ``sparse_masked_conv`` vs the dense
masked conv, forward + backward, on the layer geometries of the benchmark workloads.

    python bench/bench_sparse_conv.py [--threads 2] [--repeats 9] [--batch 32] [--only seed]
                                      [--clock wall|cpu]

For every layer and pruned fraction p (0, 25, 50, 75 % of the output channels and of the
live input channels; depthwise layers: of their channels, which are also their live inputs,
as when the conv shares its producer's mask), each round times, in a shuffled order, one
forward + backward (``torch.autograd.grad`` w.r.t. x, W', b') of
- the dense masked layer (``reference_conv`` / ``F.linear``: what the fast path runs today),
- ``sparse_masked_conv`` with grad_pruned_rows=False (a ReLU follows the layer),
- ``sparse_masked_conv`` with grad_pruned_rows=True (no ReLU follows),
all with grad_dead_inputs=False. Reported: the dense time (fastest / median sample) and, per
variant, the median and the range of its per-round ratio to the dense time of the same round
(rounds interleave the variants, so a slow round slows them all) and the ratio of the fastest
samples ("best"). The last columns are what ``plinio.fast.sparse_conv.sparse_pays`` predicts
(the fraction of dense work left, and its decision), so the table shows where the rule is
right.

``--clock cpu`` times with the process CPU time instead of the wall clock: on a machine
shared with other jobs, it leaves out the time the process waits for a core. Use it with
``--threads 1`` (with more threads, OpenMP's spinning at barriers counts as CPU time too).
"""
import argparse
import datetime
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plinio.fast.linear_ops import ConvGeometry, conv_geometry, reference_conv  # noqa: E402
from plinio.fast.sparse_conv import (LayerWork, sparse_masked_conv,  # noqa: E402
                                     sparse_pays)

PRUNED = (0.0, 0.25, 0.5, 0.75)
VARIANTS = ("dense", "sparse", "sparse+rows")


@dataclass(frozen=True)
class Layer:
    """One benchmarked layer: a conv (or Linear) and its input size without batch."""

    workload: str
    name: str
    module: nn.Module
    spatial: Tuple[int, ...]  # conv: input spatial size; Linear: () (one row per sample)


def layers() -> List[Layer]:
    """Representative searchable layers of bench/models.py's workloads (stems, whose
    input channels are the data's and never pruned, are left out)."""
    c2 = nn.Conv2d
    return [
        Layer("seed", "conv3x3 32>32 @64x64", c2(32, 32, 3, padding="same"), (64, 64)),
        Layer("seed", "conv5x5 32>32 @64x64", c2(32, 32, 5, padding="same"), (64, 64)),
        Layer("resnet8", "conv3x3 16>16 @32x32", c2(16, 16, 3, padding=1, bias=False), (32, 32)),
        Layer("resnet8", "conv5x5 16>16 @32x32", c2(16, 16, 5, padding=2, bias=False), (32, 32)),
        Layer("resnet8", "conv3x3/2 16>32 @32x32", c2(16, 32, 3, 2, 1, bias=False), (32, 32)),
        Layer("resnet8", "dw3x3 16 @32x32", c2(16, 16, 3, padding=1, groups=16, bias=False),
              (32, 32)),
        Layer("resnet8", "pw 16>16 @32x32", c2(16, 16, 1, bias=False), (32, 32)),
        Layer("resnet8", "conv3x3 64>64 @8x8", c2(64, 64, 3, padding=1, bias=False), (8, 8)),
        Layer("dscnn", "conv3x3 64>64 @25x5", c2(64, 64, 3, padding=1, bias=False), (25, 5)),
        Layer("dscnn", "conv5x5 64>64 @25x5", c2(64, 64, 5, padding=2, bias=False), (25, 5)),
        Layer("dscnn", "dw3x3 64 @25x5", c2(64, 64, 3, padding=1, groups=64, bias=False),
              (25, 5)),
        Layer("dscnn", "pw 64>64 @25x5", c2(64, 64, 1, bias=False), (25, 5)),
        Layer("dscnn", "linear 64>12", nn.Linear(64, 12), ()),
        Layer("mobilenetv1", "dw3x3 8 @48x48", c2(8, 8, 3, padding=1, groups=8, bias=False),
              (48, 48)),
        Layer("mobilenetv1", "pw 8>16 @48x48", c2(8, 16, 1, bias=False), (48, 48)),
        Layer("mobilenetv1", "conv3x3/2 16>32 @48x48", c2(16, 32, 3, 2, 1, bias=False),
              (48, 48)),
        Layer("mobilenetv1", "dw3x3 32 @24x24", c2(32, 32, 3, padding=1, groups=32, bias=False),
              (24, 24)),
        Layer("mobilenetv1", "pw 32>32 @24x24", c2(32, 32, 1, bias=False), (24, 24)),
        Layer("mobilenetv1", "conv5x5 128>128 @6x6", c2(128, 128, 5, padding=2, bias=False),
              (6, 6)),
        Layer("mobilenetv1", "pw 128>128 @6x6", c2(128, 128, 1, bias=False), (6, 6)),
        Layer("mobilenetv1", "pw 256>256 @3x3", c2(256, 256, 1, bias=False), (3, 3)),
        Layer("tcn", "conv1d k5 d2 32>32 @128", nn.Conv1d(32, 32, 5, dilation=2), (128,)),
        Layer("tcn", "conv1d k5 d8 64>64 @128", nn.Conv1d(64, 64, 5, dilation=8), (128,)),
    ]


def geometry_of(layer: Layer) -> Optional[ConvGeometry]:
    """The layer's geometry; the TCN convs get their causal left padding (k−1)·d."""
    if isinstance(layer.module, nn.Linear):
        return None
    geometry, why = conv_geometry(layer.module)
    if geometry is None:
        raise ValueError(f"{layer.name}: {why}")
    if layer.workload == "tcn":
        left = tuple(d * (k - 1) for d, k in zip(geometry.dilation, geometry.kernel))
        geometry = ConvGeometry(geometry.ndim, geometry.in_channels, geometry.out_channels,
                                geometry.groups, geometry.kernel, geometry.stride,
                                geometry.dilation, left, (0,) * geometry.ndim, geometry.has_bias)
    return geometry


def _subset(n: int, pruned: float, gen: torch.Generator) -> torch.Tensor:
    """Sorted random indices of the round((1 − pruned)·n) kept channels (at least one)."""
    keep = max(1, round((1 - pruned) * n))
    return torch.randperm(n, generator=gen)[:keep].sort().values


@dataclass
class Case:
    """The closures timed for one layer at one pruned fraction, and the rule's inputs."""

    runs: Dict[str, Callable[[], object]]
    work: LayerWork


def make_case(layer: Layer, pruned: float, batch: int, seed: int) -> Case:
    """Random kept / live sets, an input that is 0 on the dead channels, a masked weight."""
    gen = torch.Generator().manual_seed(seed)
    geometry = geometry_of(layer)
    weight = layer.module.weight.detach().clone()
    bias = None if layer.module.bias is None else layer.module.bias.detach().clone()
    cout = weight.shape[0]
    cin = weight.shape[1] if geometry is None else geometry.in_channels
    kept = _subset(cout, pruned, gen)
    depthwise = geometry is not None and geometry.groups > 1
    live = kept if depthwise else _subset(cin, pruned, gen)
    row_mask = torch.zeros(cout)
    row_mask[kept] = 1
    weight = (weight * row_mask.view((-1,) + (1,) * (weight.dim() - 1))).requires_grad_()
    bias = None if bias is None else (bias * row_mask).requires_grad_()
    live_mask = torch.zeros(cin)
    live_mask[live] = 1
    if geometry is None:
        x = torch.randn(batch, cin, generator=gen) * live_mask
    else:
        x = torch.randn((batch, cin) + layer.spatial, generator=gen) * \
            live_mask.view((-1,) + (1,) * geometry.ndim)
    x.requires_grad_()
    inputs = [t for t in (x, weight, bias) if t is not None]
    with torch.no_grad():
        out_shape = (F.linear(x, weight, bias) if geometry is None
                     else reference_conv(x, weight, bias, geometry)).shape
    cot = torch.randn(out_shape, generator=gen)

    def timed(forward: Callable[[], torch.Tensor]) -> Callable[[], object]:
        return lambda: torch.autograd.grad(forward(), inputs, cot)

    def dense() -> torch.Tensor:
        return F.linear(x, weight, bias) if geometry is None else \
            reference_conv(x, weight, bias, geometry)

    def sparse(rows: bool) -> Callable[[], torch.Tensor]:
        return lambda: sparse_masked_conv(x, weight, bias, geometry, kept,
                                          live, grad_pruned_rows=rows,
                                          grad_dead_inputs=False)

    positions = 1
    for n in out_shape[2:]:
        positions *= n
    work = LayerWork(geometry, cin, cout, batch * positions)
    runs = {"dense": timed(dense), "sparse": timed(sparse(False)),
            "sparse+rows": timed(sparse(True))}
    return Case(runs, work)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclass
class Stats:
    """One variant's samples (ms) and its per-round ratios to the dense samples."""

    times: List[float]
    ratios: List[float]
    best_ratio: float

    def ratio_cell(self) -> str:
        return (f"{statistics.median(self.ratios):.2f} [{min(self.ratios):.2f}–"
                f"{max(self.ratios):.2f}] {self.best_ratio:.2f}")


def _calibrate(run: Callable[[], object], min_seconds: float) -> int:
    """Iterations per sample so that one sample lasts about ``min_seconds``."""
    run()
    start = time.perf_counter()
    run()
    once = max(time.perf_counter() - start, 1e-6)
    return max(1, int(min_seconds / once + 0.5))


def measure(case: Case, repeats: int, min_seconds: float, seed: int,
            clock: Callable[[], float]) -> Dict[str, Stats]:
    """Interleaved rounds of every variant, in a shuffled order per round."""
    iters = _calibrate(case.runs["dense"], min_seconds)
    times: Dict[str, List[float]] = {v: [] for v in VARIANTS}
    order = list(VARIANTS)
    rng = random.Random(seed)
    for run in case.runs.values():
        run()  # warm-up
    for _ in range(repeats):
        rng.shuffle(order)
        for variant in order:
            start = clock()
            for _ in range(iters):
                case.runs[variant]()
            times[variant].append((clock() - start) / iters * 1e3)
    dense = times["dense"]
    return {v: Stats(t, [a / b for a, b in zip(t, dense)], min(t) / min(dense))
            for v, t in times.items()}


def cpu_model() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: Optional[Sequence[str]] = None) -> List[Tuple[str, float, Dict[str, Stats]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--min-ms", type=float, default=20.0,
                        help="minimum duration of one timed sample (iterations are repeated)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--only", default="", help="run the layers whose workload or name "
                        "contains this text")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batch {args.batch}, {args.repeats} rounds, {args.clock} clock")
    print(f"# python bench/bench_sparse_conv.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print("| workload | layer | pruned | dense ms best / median | sparse / dense (ReLU next): "
          "median [range] best | sparse+rows / dense (no ReLU) | work left | rule |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    results = []
    for i, layer in enumerate(layers()):
        if args.only and args.only not in layer.workload and args.only not in layer.name:
            continue
        for pruned in PRUNED:
            case = make_case(layer, pruned, args.batch, seed=i)
            stats = measure(case, args.repeats, args.min_ms / 1e3, i, CLOCKS[args.clock])
            kept = round((1 - pruned) * case.work.out_channels) or 1
            live = kept if case.work.depthwise else round((1 - pruned) * case.work.in_channels) or 1
            cells = []
            for rows in (False, True):
                fraction = case.work.fraction_left(kept, live, rows, False)
                choice = sparse_pays(case.work, kept, live, rows, False)
                cells.append(f"{fraction:.2f} {'S' if choice else 'D'}")
            dense = stats["dense"].times
            print(f"| {layer.workload} | {layer.name} | {pruned:.0%} | "
                  f"{min(dense):.2f} / {statistics.median(dense):.2f} | "
                  f"{stats['sparse'].ratio_cell()} | {stats['sparse+rows'].ratio_cell()} | "
                  f"{' / '.join(c.split()[0] for c in cells)} | "
                  f"{' / '.join(c.split()[1] for c in cells)} |", flush=True)
            results.append((layer.name, pruned, stats))
    return results


if __name__ == "__main__":
    main()
