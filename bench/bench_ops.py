"""Side-by-side benchmark of the op library: fused kernels vs the eager formulations.

    python bench/bench_ops.py [--threads 2] [--repeats 15] [--backend cpp] [--device cpu]

Each case times forward + backward (torch.autograd.grad, so no gradient accumulation)
and reports the median over repeats, eager and fused measured alternately in one process:
- combine: n branches of one shape, fused ``plinio.ops.combine`` vs
  ``torch.stack(ys).mul(theta.view(-1, 1, ...)).sum(0)``;
- masked weight: ``plinio.ops.pit_masked_weight`` vs the op-by-op mask construction
  (abs, keep-alive, cumsum, binarize, multiply: ``plinio.ops.reference``).

On a CUDA device it also reports the memory bandwidth the fused combine reaches on 256 MB of
branches, next to a device-to-device copy measured in the same run.
"""
import argparse
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import plinio.ops as ops  # noqa: E402
from plinio.ops import reference  # noqa: E402


@dataclass
class Case:
    """One comparison: `eager` and `fused` each run a full forward + backward."""

    name: str
    eager: Callable[[], object]
    fused: Callable[[], object]
    target: Optional[float] = None  # required speed-up, if any


def _fwd_bwd(forward: Callable[[], Sequence[torch.Tensor]], inputs: List[torch.Tensor],
             cotangents: Optional[List[torch.Tensor]] = None) -> Callable[[], object]:
    def run() -> object:
        outs = [o for o in forward() if o is not None]
        cots = cotangents if cotangents is not None else [torch.ones_like(o) for o in outs]
        return torch.autograd.grad(outs, inputs, cots)

    return run


def combine_case(n: int, shape: Sequence[int], target: Optional[float],
                 device: str = "cpu") -> Case:
    """combine of n branches of `shape` (float32) vs stack-mul-sum."""
    ys = [torch.randn(*shape, device=device, requires_grad=True) for _ in range(n)]
    theta = torch.softmax(torch.randn(n, device=device), 0).requires_grad_()
    cot = [torch.randn(*shape, device=device)]
    view = (-1,) + (1,) * len(shape)

    def eager() -> Sequence[torch.Tensor]:
        return [torch.stack(ys).mul(theta.view(view)).sum(0)]

    def fused() -> Sequence[torch.Tensor]:
        return [ops.combine(ys, theta)]

    name = f"combine fwd+bwd, n={n}, {'x'.join(map(str, shape))} fp32"
    return Case(name, _fwd_bwd(eager, ys + [theta], cot), _fwd_bwd(fused, ys + [theta], cot),
                target)


def masked_weight_case(shape: Sequence[int], target: Optional[float],
                       device: str = "cpu") -> Case:
    """pit_masked_weight with every mask the layer kind has (+ bias) vs op by op."""
    w = torch.randn(*shape, device=device, requires_grad=True)
    b = torch.randn(shape[0], device=device, requires_grad=True)
    alpha = (torch.rand(shape[0], device=device) + 0.2).requires_grad_()
    beta = gamma = None
    kinds = "alpha"
    if len(shape) == 3:
        beta = (torch.rand(shape[-1], device=device) + 0.2).requires_grad_()
        gamma = (torch.rand(reference.dilation_levels(shape[-1]), device=device)
                 + 0.2).requires_grad_()
        kinds = "alpha+beta+gamma"
    params = [t for t in (w, b, alpha, beta, gamma) if t is not None]

    def eager() -> Sequence[torch.Tensor]:
        return reference.pit_masked_weight(w, b, alpha, beta, gamma)[:2]

    def fused() -> Sequence[torch.Tensor]:
        return ops.pit_masked_weight(w, b, alpha, beta, gamma)

    name = f"masked weight fwd+bwd, {'x'.join(map(str, shape))} ({kinds}, bias)"
    return Case(name, _fwd_bwd(eager, params), _fwd_bwd(fused, params), target)


def _sync() -> None:
    """Wait for queued GPU work, so that wall-clock times cover it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], object], repeats: int, inner: int) -> List[float]:
    """Per-call times in ms of `repeats` timed batches of `inner` calls."""
    out = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync()
        out.append((time.perf_counter() - t0) * 1e3 / inner)
    return out


def measure(case: Case, repeats: int) -> tuple:
    """(eager ms, fused ms): medians, measured alternately after a warm-up."""
    for _ in range(3):
        case.eager()
        case.fused()
    inner = max(1, int(0.02 / max(median_ms(case.fused, 1, 1)[0] * 1e-3, 1e-6)))  # ~20 ms
    eager: List[float] = []
    fused: List[float] = []
    for _ in range(repeats):
        eager += median_ms(case.eager, 1, inner)
        fused += median_ms(case.fused, 1, inner)
    return statistics.median(eager), statistics.median(fused)


def bandwidth_report(device: str, repeats: int, n: int = 4,
                     branch_bytes: int = 64 * 2 ** 20) -> List[str]:
    """Table rows: GB/s of the fused combine forward (n branches of ``branch_bytes`` each,
    float32) and backward (gradients of the branches and θ), counting each byte read or
    written once, against a device-to-device copy of the same size measured here."""
    numel = branch_bytes // 4
    ys = [torch.randn(numel, device=device, requires_grad=True) for _ in range(n)]
    theta = torch.softmax(torch.randn(n, device=device), 0).requires_grad_()
    grad = torch.randn(numel, device=device)
    src = torch.cat([y.detach() for y in ys])
    dst = torch.empty_like(src)
    graph = ops.combine(ys, theta)  # kept: the backward is timed alone on it

    def forward() -> object:
        with torch.no_grad():
            return ops.combine(ys, theta)

    def backward() -> object:
        return torch.autograd.grad(graph, ys + [theta], grad, retain_graph=True)

    copy_ms = statistics.median(median_ms(lambda: dst.copy_(src), repeats, 10))
    rows = [("device-to-device copy (read + write)", copy_ms, 2 * n * branch_bytes)]
    fwd_ms = statistics.median(median_ms(forward, repeats, 10))
    rows.append((f"combine forward, n={n} × {branch_bytes >> 20} MiB (read n, write 1)",
                 fwd_ms, (n + 1) * branch_bytes))
    bwd_ms = statistics.median(median_ms(backward, repeats, 10))
    rows.append((f"combine backward, n={n} × {branch_bytes >> 20} MiB (read n + 1, write n)",
                 bwd_ms, (2 * n + 1) * branch_bytes))
    copy_gbs = rows[0][2] / rows[0][1] / 1e6
    return [f"| {name} | {ms:.3f} | {nbytes / ms / 1e6:.0f} | "
            f"{100 * nbytes / ms / 1e6 / copy_gbs:.0f} % |" for name, ms, nbytes in rows]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=15, help="timed batches per variant")
    parser.add_argument("--backend", default="cpp", choices=[b for b in ops.BACKENDS],
                        help="backend of the fused ops (default: the C++ kernels)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ops.set_backend(args.backend)
    ops.get_backend(args.device)  # fail early and clearly if the backend cannot run
    cpu = args.device == "cpu"  # the speed-up targets are CPU targets
    cases = [
        combine_case(4, (32, 32, 64, 64), 1.5 if cpu else None, args.device),
        combine_case(2, (32, 32, 64, 64), None, args.device),
        masked_weight_case((64, 64, 3, 3), None, args.device),
        masked_weight_case((64, 64, 9), 3.0 if cpu else None, args.device),
        masked_weight_case((64, 64), None, args.device),
    ]
    gpu = f", GPU {torch.cuda.get_device_name()}" if args.device == "cuda" else ""
    print(f"plinio op benchmark — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"torch {torch.__version__}, {cpu_name()}, {args.threads} threads{gpu}, "
          f"device {args.device}, fused backend '{args.backend}'")
    print()
    print("| case | eager (ms) | fused (ms) | speed-up | target |")
    print("|---|---:|---:|---:|---|")
    ok = True
    for case in cases:
        eager, fused = measure(case, args.repeats)
        speedup = eager / fused
        target = "—"
        if case.target is not None:
            met = speedup >= case.target
            ok = ok and met
            target = f"≥ {case.target:g}× {'met' if met else 'NOT met'}"
        print(f"| {case.name} | {eager:.3f} | {fused:.3f} | {speedup:.2f}× | {target} |",
              flush=True)
    if args.device == "cuda":
        print()
        print("| combine bandwidth (float32) | ms | GB/s | of copy |")
        print("|---|---:|---:|---:|")
        for line in bandwidth_report(args.device, args.repeats):
            print(line, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
