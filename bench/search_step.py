"""Side-by-side benchmark of one search step: fast path vs reference path, same process.

A search step is: forward, task loss + regularizer, backward, optimizer step (SGD with
momentum for the network weights, Adam for the architectural parameters). For every workload
of ``bench/models.py`` the script builds two identical wrappers (``fast=True`` and
``fast=False``, same weights), times their steps interleaved (median of ``--repeats``), and
measures the bytes of activations saved for backward (unique storages handed to
``torch.autograd.graph.saved_tensors_hooks`` during forward and regularizer, parameters
excluded). It prints a Markdown table with the ratios fast/reference.

    python bench/search_step.py [--batch-size 32] [--threads 2] [--device cpu]
                                [--workloads seed,resnet8] [--modes soft,hard] [--hard]
                                [--compile [--compile-mode reduce-overhead]]
                                [--repeats 5] [--warmup 1] [--min-seconds 15]

With ``--compile`` a second row per workload times the fast path with its model and its
regularizer each under ``torch.compile(fullgraph=True)`` (``--compile-mode reduce-overhead``
adds CUDA graphs on a GPU) against the eager reference path; the optimizer steps stay eager.
"""
import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import torch
import torch._dynamo
import torch.nn as nn
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import plinio.ops as ops  # noqa: E402
from bench.models import count_supernets, workloads  # noqa: E402



class SearchSetup(NamedTuple):
    """One wrapper with its optimizers and one batch of inputs/targets."""

    wrapper: nn.Module
    forward: Callable[[torch.Tensor], torch.Tensor]
    regularizer: Callable[[], torch.Tensor]
    optimizers: Sequence[torch.optim.Optimizer]
    inputs: torch.Tensor
    targets: torch.Tensor


def build_wrapper(model: nn.Module, input_shape: Sequence[int], fast: bool) -> nn.Module:
    """PITSuperNet for models with supernets, PIT otherwise (MACs regularizer)."""
    if count_supernets(model) > 0:
        from plinio.methods import PITSuperNet
        return PITSuperNet(model, input_shape=tuple(input_shape), regularizer="macs", fast=fast)
    from plinio.methods import PIT
    return PIT(model, input_shape=tuple(input_shape), regularizer="macs", fast=fast)


def set_hard(wrapper: nn.Module, hard: bool) -> None:
    """Hard (one-hot) or soft θ on every supernet of a PITSuperNet wrapper."""
    if hasattr(wrapper, "update_softmax_options"):
        wrapper.update_softmax_options(hard=hard)


def build_pair(name: str, batch_size: int, device: str, hard: bool = False,
               seed: int = 0) -> Dict[str, SearchSetup]:
    """{'fast': ..., 'reference': ...}: the same model and batch behind both paths."""
    workload = workloads()[name]
    torch.manual_seed(seed)
    model = workload.factory()
    out = {}
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn((batch_size,) + tuple(workload.input_shape), generator=gen).to(device)
    with torch.no_grad():
        probe = model.eval()(inputs[:1].cpu())
    targets = torch.randint(0, probe.shape[1], (batch_size,), generator=gen).to(device) \
        if probe.dim() == 2 else torch.empty(0, device=device)
    for label, fast in (("fast", True), ("reference", False)):
        wrapper = build_wrapper(copy.deepcopy(model), workload.input_shape, fast).to(device)
        wrapper.train()
        set_hard(wrapper, hard)
        optimizers = [torch.optim.SGD(list(wrapper.net_parameters()), lr=1e-4, momentum=0.9),
                      torch.optim.Adam(list(wrapper.nas_parameters()), lr=1e-4)]
        out[label] = SearchSetup(wrapper, wrapper, wrapper.get_regularization_loss, optimizers,
                                 inputs, targets)
    return out


def task_loss(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for classifiers, mean square for feature-map outputs (seed example)."""
    if output.dim() == 2 and targets.numel():
        return F.cross_entropy(output, targets)
    return output.square().mean()


def forward_loss(setup: SearchSetup) -> torch.Tensor:
    """Forward pass plus regularizer: everything that saves tensors for backward."""
    output = setup.forward(setup.inputs)
    return task_loss(output, setup.targets) + 1e-9 * setup.regularizer()


def search_step(setup: SearchSetup) -> None:
    """One full search step."""
    for opt in setup.optimizers:
        opt.zero_grad(set_to_none=True)
    forward_loss(setup).backward()
    for opt in setup.optimizers:
        opt.step()


def saved_activation_bytes(setup: SearchSetup) -> int:
    """Bytes of the distinct storages saved for backward by forward + regularizer
    (parameters excluded: they exist whatever the path)."""
    params = {p.untyped_storage().data_ptr() for p in setup.wrapper.parameters()}
    storages: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in params:
                storages[ptr] = max(storages.get(ptr, 0), storage.nbytes())
        except (RuntimeError, NotImplementedError):  # storage-less tensors (e.g. sparse)
            pass
        return t

    for opt in setup.optimizers:
        opt.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward_loss(setup)
    loss.backward()
    for opt in setup.optimizers:
        opt.zero_grad(set_to_none=True)
    return sum(storages.values())


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(setups: Dict[str, SearchSetup], repeats: int, warmup: int, device: str,
               min_seconds: float = 0.0, max_repeats: int = 50) -> Dict[str, float]:
    """Median seconds per step of each setup, the setups' steps interleaved. Short steps are
    repeated more (until about ``min_seconds`` per setup, at most ``max_repeats``) so that
    the median resists the noise of a shared machine."""
    warm_times: List[float] = []
    for _ in range(max(warmup, 1)):
        for setup in setups.values():
            _sync(device)
            start = time.perf_counter()
            search_step(setup)
            _sync(device)
            warm_times.append(time.perf_counter() - start)
    per_step = max(min(warm_times), 1e-6)
    repeats = max(repeats, min(max_repeats, int(min_seconds / per_step) + 1))
    times: Dict[str, List[float]] = {k: [] for k in setups}
    for _ in range(repeats):
        for label, setup in setups.items():
            _sync(device)
            start = time.perf_counter()
            search_step(setup)
            _sync(device)
            times[label].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


class Row(NamedTuple):
    workload: str
    mode: str
    fast_ms: float
    reference_ms: float
    fast_mb: float
    reference_mb: float

    @property
    def time_ratio(self) -> float:
        return self.fast_ms / self.reference_ms

    @property
    def bytes_ratio(self) -> float:
        return self.fast_mb / self.reference_mb if self.reference_mb else float("nan")


def same_loss(setups: Dict[str, SearchSetup]) -> bool:
    """Whether both paths compute the same loss on the batch (same random draws): a timing
    of a path that computes something else would be meaningless."""
    losses = []
    for setup in setups.values():
        torch.manual_seed(1)
        with torch.no_grad():
            losses.append(forward_loss(setup))
    return bool(torch.allclose(losses[0], losses[1], rtol=1e-4, atol=1e-6))


def measure(name: str, mode: str, batch_size: int, device: str, repeats: int, warmup: int,
            compile_fast: bool = False, min_seconds: float = 0.0,
            compile_mode: Optional[str] = None) -> Row:
    """One table row: build both paths, check they agree, measure saved bytes, then time."""
    setups = build_pair(name, batch_size, device, hard=(mode == "hard"))
    if not same_loss(setups):
        raise RuntimeError(f"{name} ({mode}): the fast and the reference path compute "
                           "different losses; not timing a wrong result")
    saved = {k: saved_activation_bytes(s) for k, s in setups.items()}
    if compile_fast:
        torch._dynamo.reset()  # a fresh compile per workload, as in a user's one-model search
        fast = setups["fast"]
        setups["fast"] = fast._replace(
            forward=torch.compile(fast.wrapper, fullgraph=True, mode=compile_mode),
            regularizer=torch.compile(fast.regularizer, fullgraph=True, mode=compile_mode))
    times = time_steps(setups, repeats, warmup, device, min_seconds)
    label = f" (fast compiled, {compile_mode or 'default'})" if compile_fast else ""
    return Row(name, mode + label,
               times["fast"] * 1e3, times["reference"] * 1e3,
               saved["fast"] / 2 ** 20, saved["reference"] / 2 ** 20)


def format_table(rows: Sequence[Row]) -> str:
    lines = ["| workload | mode | fast ms | reference ms | time ratio | fast saved MiB | "
             "reference saved MiB | saved ratio |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.workload} | {r.mode} | {r.fast_ms:.1f} | {r.reference_ms:.1f} | "
                     f"{r.time_ratio:.2f} | {r.fast_mb:.1f} | {r.reference_mb:.1f} | "
                     f"{r.bytes_ratio:.2f} |")
    return "\n".join(lines)


def describe_machine(device: str, threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    return f"torch {torch.__version__}, CPU {cpu}, {threads} threads{gpu}{_cpu_loops()}"


def _cpu_loops() -> str:
    """Which copy of the compiled CPU loops runs (baseline or AVX2), when built."""
    if "cpp" not in ops.available_backends("cpu"):
        return ", no compiled CPU kernels"
    from plinio import _C

    return f", CPU kernel loops {_C.cpu_isa()}"


def main(argv: Optional[Sequence[str]] = None) -> List[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workloads", default="seed,resnet8,dscnn,mobilenetv1,tcn",
                        help="comma-separated names from bench/models.py workloads()")
    parser.add_argument("--modes", default="soft,hard",
                        help="soft and/or hard θ (hard only applies to supernet workloads)")
    parser.add_argument("--hard", action="store_true", help="shorthand for --modes hard")
    parser.add_argument("--compile", action="store_true",
                        help="also time the fast path under torch.compile(fullgraph=True)")
    parser.add_argument("--compile-mode", default=None,
                        choices=["default", "reduce-overhead", "max-autotune"],
                        help="torch.compile mode of --compile (reduce-overhead: CUDA graphs)")
    parser.add_argument("--compile-only", action="store_true",
                        help="with --compile, skip the eager fast-path row")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--min-seconds", type=float, default=15.0,
                        help="repeat short steps until about this many seconds per path")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    known = workloads()
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {sorted(known)}")
    modes = ["hard"] if args.hard else [m.strip() for m in args.modes.split(",") if m.strip()]
    print(f"# search step, batch {args.batch_size}, {describe_machine(args.device, args.threads)}")
    print(f"# command: python bench/search_step.py {' '.join(argv or sys.argv[1:])}")
    rows: List[Row] = []
    for name in names:
        has_supernets = count_supernets(known[name].factory()) > 0
        for mode in modes:
            if mode == "hard" and not has_supernets:
                continue
            variants = [False, True] if args.compile else [False]
            if args.compile and args.compile_only:
                variants = [True]
            for compiled in variants:
                row = measure(name, mode, args.batch_size, args.device, args.repeats,
                              args.warmup, compile_fast=compiled, min_seconds=args.min_seconds,
                              compile_mode=args.compile_mode)
                rows.append(row)
                print(f"#  {name} {row.mode}: time ratio {row.time_ratio:.2f}, "
                      f"saved ratio {row.bytes_ratio:.2f}", flush=True)
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
