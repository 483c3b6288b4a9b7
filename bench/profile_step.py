"""Which ops a search step spends its time in: the step of ``bench/search_step.py`` under
``torch.profiler``, for several searches of one workload, side by side in one process.

For each search (``fast``, ``dense``, ``plain``, ``reference``: see ``bench/search_step.py``)
the script runs a few warm-up steps, profiles ``--steps`` steps, and prints the ops with the
most self time per step: on CUDA the device time of their kernels (with their call counts),
on the CPU their host time. Why: a step time says *that* one search is slower than another,
this says *where* (e.g. a convolution algorithm, a layout copy, a launch-bound op).

    python bench/profile_step.py [--workload seed] [--searches fast,plain] [--device cuda]
                                 [--batch-size 128] [--prune 0] [--steps 5] [--top 15]
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
from torch.profiler import ProfilerActivity, profile

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.search_step import (VARIANTS, SearchSetup, _sync, build_setups, chosen_names,  # noqa: E402
                               describe_machine, search_step, workload_names)


class OpTime(NamedTuple):
    """One op's self time per step (ms) and its calls per step."""

    name: str
    ms: float
    calls: float


def profile_search(setup: SearchSetup, device: str, steps: int, warmup: int = 3) -> List[OpTime]:
    """The ops of ``steps`` steps of ``setup``, by self time per step (device time on CUDA),
    most first."""
    for _ in range(warmup):
        search_step(setup)
    _sync(device)
    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            search_step(setup)
        _sync(device)
    ops = []
    for event in prof.key_averages():
        total_us = event.self_device_time_total if cuda else event.self_cpu_time_total
        if total_us > 0:
            ops.append(OpTime(event.key, total_us / 1000 / steps, event.count / steps))
    return sorted(ops, key=lambda op: -op.ms)


def format_profile(search: str, ops: Sequence[OpTime], top: int, device: str) -> str:
    """The total self time per step and a table of the ``top`` largest ops."""
    clock = "device" if device.startswith("cuda") else "CPU"
    lines = [f"\n{search}: {sum(op.ms for op in ops):.2f} ms of {clock} self time per step "
             f"in {len(ops)} ops; the {min(top, len(ops))} largest:",
             "| op | ms per step | calls per step |", "|---|---:|---:|"]
    lines += [f"| {op.name} | {op.ms:.3f} | {op.calls:g} |" for op in ops[:top]]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, List[OpTime]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="seed")
    parser.add_argument("--searches", default="fast,plain", help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--prune", type=float, default=0.0, help="fraction of every channel mask pruned")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="profiled steps per search")
    parser.add_argument("--top", type=int, default=15, help="ops listed per search")
    args = parser.parse_args(argv)
    name = workload_names(parser, args.workload)[0]
    searches = chosen_names(parser, args.searches, VARIANTS, "searches")
    if args.steps < 1 or args.top < 1 or args.batch_size < 1 or not 0 <= args.prune < 1:
        parser.error("--steps, --top and --batch-size must be >= 1, --prune in [0, 1)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA device")
    torch.set_num_threads(args.threads)
    setups = build_setups(name, args.batch_size, args.device, prune_fraction=args.prune, variants=searches)
    print(f"# ops of one search step of {name}, batch {args.batch_size}, {args.prune:.0%} pruned, soft θ, "
          f"{describe_machine(args.device, args.threads)}")
    print(f"# command: python bench/profile_step.py {' '.join(argv or sys.argv[1:])}")
    results = {}
    for search in searches:
        results[search] = profile_search(setups[search], args.device, args.steps)
        print(format_profile(search, results[search], args.top, args.device))
    return results


if __name__ == "__main__":
    main()
