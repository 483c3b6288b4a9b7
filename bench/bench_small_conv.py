"""When does ``plinio::small_conv`` (the direct convolution of few channels) beat aten's?

    python bench/bench_small_conv.py [--threads 1] [--repeats 7] [--batch 32] [--clock cpu|wall]

For compact convolutions of the sizes pruning leaves (2-D images of 8 to 32 pixels, 1-D
sequences of 128, 1 to 32 channels; stride 1 or 2, groups 1 or depthwise), each round times,
in a shuffled order, the forward, the input gradient and the weight gradient of one
convolution ("same" padding), each on its own
- with aten's kernels (oneDNN) on channels_last tensors, what sparse execution otherwise
  runs for compact tensors (``plinio.fast.sparse_conv``),
- with ``plinio::small_conv`` and its two gradient ops on the same tensors.
Reported: per pass and for the three together, the median over rounds of the per-round ratio
direct / aten (below 1: the direct kernel is faster; the range too for the three), the aten
time, and whether ``plinio.fast.small_conv.runs_direct`` picks the direct kernel at that size
in this process (one decision for the three passes: per-pass limits from this table measured
no faster in a search step, see bench/RESULTS.md), so the table shows where the rule is right. The CPU model and
the instruction set of the direct kernel's loops head the table.
"""
import argparse
import datetime
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_sparse_conv import cpu_model  # noqa: E402
from plinio import _extension  # noqa: E402
from plinio.fast import small_conv  # noqa: E402
from plinio.fast.linear_ops import ConvGeometry  # noqa: E402

class Shape(NamedTuple):
    """One benchmarked convolution; ndim = len(spatial), depthwise when groups > 1."""

    ci: int
    co: int
    k: int
    spatial: Tuple[int, ...]
    stride: int = 1
    groups: int = 1


SHAPES: List[Shape] = [
    Shape(3, 4, 5, (32, 32)), Shape(4, 4, 5, (32, 32)), Shape(4, 4, 3, (32, 32)), Shape(4, 4, 1, (32, 32)),
    Shape(4, 8, 5, (32, 32)), Shape(8, 8, 5, (32, 32)), Shape(8, 8, 3, (32, 32)), Shape(8, 8, 5, (16, 16)),
    Shape(8, 8, 3, (16, 16)), Shape(12, 12, 3, (16, 16)), Shape(16, 16, 3, (16, 16)), Shape(16, 16, 5, (8, 8)),
    Shape(4, 4, 5, (128,)), Shape(8, 8, 5, (128,)), Shape(16, 16, 5, (128,)), Shape(32, 32, 5, (128,)),
    # strided
    Shape(4, 8, 5, (32, 32), 2), Shape(4, 8, 3, (32, 32), 2), Shape(8, 16, 5, (32, 32), 2),
    Shape(8, 16, 3, (16, 16), 2), Shape(8, 16, 5, (16, 16), 2),
    # depthwise
    Shape(4, 4, 3, (32, 32), 1, 4), Shape(8, 8, 3, (32, 32), 1, 8), Shape(8, 8, 3, (16, 16), 1, 8),
    Shape(16, 16, 3, (16, 16), 1, 16), Shape(32, 32, 3, (16, 16), 1, 32), Shape(4, 4, 3, (32, 32), 2, 4),
    Shape(8, 8, 3, (32, 32), 2, 8), Shape(16, 16, 3, (32, 32), 2, 16),
]


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the channels_last layout sparse execution gives compact tensors (1-D: (N, L, C))."""
    if t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t.transpose(1, 2).contiguous().transpose(1, 2)


PASSES = ("forward", "input_grad", "weight_grad")


def pass_functions(shape: Shape, batch: int) -> Dict[Tuple[str, str], Callable[[], object]]:
    """{(implementation, pass): one call}: aten's and the direct kernel's forward, input
    gradient and weight gradient of ``shape`` on channels_last tensors."""
    ci, co, k, spatial, stride, groups = shape
    nd = len(spatial)
    pad = [k // 2] * nd
    pad_after = [k - 1 - k // 2] * nd
    ones, zeros, strides = [1] * nd, [0] * nd, [stride] * nd
    x = channels_last(torch.randn(batch, ci, *spatial))
    w = torch.randn(co, ci // groups, *([k] * nd))
    out = [(n + p + q - k) // stride + 1 for n, p, q in zip(spatial, pad, pad_after)]
    gy = channels_last(torch.randn(batch, co, *out))
    conv = torch.nn.functional.conv1d if nd == 1 else torch.nn.functional.conv2d
    x_padded = torch.nn.functional.pad(x, [p for pair in zip(pad_after, pad) for p in pair][::-1])
    w_aten = w.contiguous(memory_format=torch.channels_last) if nd == 2 else w
    ops = torch.ops.plinio
    args = (strides, pad, pad_after, ones, groups)

    def aten_backward(mask: List[bool]) -> Callable[[], object]:
        return lambda: torch.ops.aten.convolution_backward(gy, x_padded, w_aten, None, strides, zeros, ones, False,
                                                           zeros, groups, mask)

    return {
        ("aten", "forward"): lambda: conv(x_padded, w_aten, None, strides, 0, 1, groups),
        ("aten", "input_grad"): aten_backward([True, False, False]),
        ("aten", "weight_grad"): aten_backward([False, True, False]),
        ("direct", "forward"): lambda: ops.small_conv(x, w, None, *args),
        ("direct", "input_grad"): lambda: ops.small_conv_input_grad(gy, w, list(x.shape), *args),
        ("direct", "weight_grad"): lambda: ops.small_conv_weight_grad(gy, x, list(w.shape), *args),
    }


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args(argv)
    if not _extension.load():
        raise SystemExit(f"plinio::small_conv needs the compiled extension: {_extension.load_error()}")
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    import plinio._C as ext
    print(f"# plinio::small_conv vs aten, batch {args.batch}, torch {torch.__version__}, CPU {cpu_model()}, "
          f"{args.threads} threads, {args.clock} clock, direct loops {ext.small_conv_isa()}, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"# command: python bench/bench_small_conv.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print("# per pass (forward, input gradient, weight gradient) and for all three: median over rounds of "
          "direct / aten (channels_last); the last column: whether plinio.fast.small_conv.runs_direct picks the "
          "direct kernel (for all three passes)")
    print("| in | out | kernel | size | stride | groups | aten µs (3 passes) | forward | input grad | weight grad "
          "| all three (range) | rule picks direct |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---|")
    rng = random.Random(0)
    for shape in SHAPES:
        fns = pass_functions(shape, args.batch)
        for fn in fns.values():
            fn()
        times: Dict[Tuple[str, str], List[float]] = {key: [] for key in fns}
        for _ in range(args.repeats):
            order = list(fns)
            rng.shuffle(order)
            for key in order:
                start = clock()
                fns[key]()
                times[key].append(clock() - start)

        def ratios(passes: Sequence[str]) -> List[float]:
            return sorted(sum(times[("direct", p)][r] for p in passes) / sum(times[("aten", p)][r] for p in passes)
                          for r in range(args.repeats))

        total = ratios(PASSES)
        ci, co, k, spatial, stride, groups = shape
        nd = len(spatial)
        geometry = ConvGeometry(nd, ci, co, groups, (k,) * nd, (stride,) * nd, (1,) * nd, (k // 2,) * nd,
                                (k - 1 - k // 2,) * nd, False)
        probe = torch.empty((1, 1) + (1,) * nd)  # the rule reads dtype, device and ndim
        picks = small_conv.geometry_fits(geometry) and \
            small_conv.runs_direct(probe, geometry, ci, co, spatial[-1] // stride)
        size = "×".join(map(str, spatial))
        aten_us = 1e6 * sum(statistics.median(times[("aten", p)]) for p in PASSES)
        per_pass = " | ".join(f"{statistics.median(ratios([p])):.2f}" for p in PASSES)
        print(f"| {ci} | {co} | {k} | {size} | {stride} | {groups} | {aten_us:.0f} | {per_pass} | "
              f"{statistics.median(total):.2f} ({total[0]:.2f}–{total[-1]:.2f}) | {'yes' if picks else 'no'} |")

if __name__ == "__main__":
    main()
