"""Where a search step's time goes: the phases of the step of ``bench/search_step.py``, timed
one by one, for plinio's fast path, its dense twin and the plain-PyTorch search.

The phases are: ``zero_grad``; ``forward`` (model and task loss); ``regularizer`` (the MACs
cost added to the loss); ``backward``; ``optimizer`` (SGD on the weights, Adam on the
architectural parameters). The searches run interleaved in rounds as in
``bench/search_step.py`` (``--steps-per-round`` consecutive steps, the last one timed phase by
phase), and each phase's median over the rounds is reported, with the step (their sum).

Why: sparse execution shrinks the convolutions with the pruning, not the rest of the step.
Timing the same searches at ``--batch-sizes 1`` (convolutions nearly free) shows the part of
each phase that does not shrink, the floor a pruned step cannot go below.

Each row also gives the minor page faults and the kernel CPU time of the process per timed
step (means; Unix only): a step that allocates large tensors takes fresh pages from the
system every time the allocator has returned them, and pays for it in kernel time. That is
where the dense and plain steps lose most of their run-to-run spread.

    python bench/step_phases.py [--workloads resnet8,tcn] [--prune 0.5,0.75]
                                [--batch-sizes 32,1] [--threads 2] [--repeats 30]
"""
import argparse
import statistics
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.search_step import (CLOCKS, STEP_PHASES, SearchSetup, _check_losses, _fractions, _sync,  # noqa: E402
                               add_round_options, build_setups, check_round_options, describe_machine,
                               markdown_table, search_step, workload_names)

SEARCHES = ("fast", "dense", "plain")


def timed_step(setup: SearchSetup, clock: str = "wall", device: str = "cpu"
               ) -> Tuple[Dict[str, float], torch.Tensor]:
    """One ``search_step``: (seconds per phase, the loss it minimized)."""
    now = CLOCKS[clock]
    marks = [now()]

    def mark() -> None:
        _sync(device)
        marks.append(now())

    loss = search_step(setup, mark)
    return {phase: end - start for phase, start, end in zip(STEP_PHASES, marks, marks[1:])}, loss


def process_usage() -> Optional[Tuple[int, float]]:
    """(minor page faults, kernel CPU seconds) of this process so far; None without the Unix
    ``resource`` module."""
    try:
        import resource
    except ImportError:
        return None
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt, usage.ru_stime


class PhaseRow(NamedTuple):
    """Milliseconds per phase of one search at one batch size, and the minor page faults and
    kernel milliseconds per timed step (None where unknown)."""

    workload: str
    pruned: float
    batch_size: int
    search: str
    ms: Dict[str, float]
    faults: Optional[float] = None
    kernel_ms: Optional[float] = None

    @property
    def step_ms(self) -> float:
        return sum(self.ms[p] for p in STEP_PHASES)


def measure_phases(name: str, prune_fraction: float, batch_size: int, device: str, repeats: int,
                   clock: str = "wall", steps_per_round: int = 4) -> List[PhaseRow]:
    """One row per search: median milliseconds of each phase over ``repeats`` rounds."""
    setups = build_setups(name, batch_size, device, prune_fraction=prune_fraction, variants=SEARCHES)
    _check_losses(name, "soft", prune_fraction, setups)
    times: Dict[str, Dict[str, List[float]]] = {s: {p: [] for p in STEP_PHASES} for s in setups}
    usage: Dict[str, List[Tuple[int, float]]] = {s: [] for s in setups}
    for setup in setups.values():  # warm-up: first-call allocations and kernel choices
        search_step(setup)
    for _ in range(repeats):
        for label, setup in setups.items():
            for _ in range(steps_per_round - 1):
                search_step(setup)
            _sync(device)
            before = process_usage()
            for phase, seconds in timed_step(setup, clock, device)[0].items():
                times[label][phase].append(seconds)
            after = process_usage()
            if before is not None and after is not None:
                usage[label].append((after[0] - before[0], after[1] - before[1]))
    return [PhaseRow(name, prune_fraction, batch_size, label,
                     {p: 1e3 * statistics.median(v) for p, v in per_phase.items()},
                     statistics.mean(f for f, _ in usage[label]) if usage[label] else None,
                     1e3 * statistics.mean(k for _, k in usage[label]) if usage[label] else None)
            for label, per_phase in times.items()]


def _optional(value: Optional[float], digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_phase_table(rows: Sequence[PhaseRow]) -> str:
    header = ["workload", "pruned", "batch", "search", *(f"{p} ms" for p in STEP_PHASES), "step ms",
              "minor faults / step", "kernel ms / step"]
    cells = [[r.workload, f"{r.pruned:.0%}", str(r.batch_size), r.search,
              *(f"{r.ms[p]:.2f}" for p in STEP_PHASES), f"{r.step_ms:.2f}",
              _optional(r.faults, 0), _optional(r.kernel_ms, 2)] for r in rows]
    return markdown_table(header, 4, cells)


def main(argv: Optional[Sequence[str]] = None) -> List[PhaseRow]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="resnet8,dscnn,mobilenetv1,tcn",
                        help="comma-separated names from bench/models.py workloads()")
    parser.add_argument("--prune", type=_fractions, default=[0.5, 0.75],
                        help="comma-separated fractions of every channel mask to prune")
    parser.add_argument("--batch-sizes", default="32,1",
                        help="comma-separated batch sizes (1: the floor the pruning does not shrink)")
    parser.add_argument("--device", default="cpu")
    add_round_options(parser, "searches")
    args = parser.parse_args(argv)
    check_round_options(parser, args)
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        parser.error(f"--batch-sizes takes comma-separated integers, got {args.batch_sizes!r}")
    if not batch_sizes or min(batch_sizes) < 1:
        parser.error(f"--batch-sizes must be positive, got {args.batch_sizes!r}")
    names = workload_names(parser, args.workloads)
    torch.set_num_threads(args.threads)
    print(f"# search step by phase, soft mode, {describe_machine(args.device, args.threads)}")
    print(f"# command: python bench/step_phases.py {' '.join(argv or sys.argv[1:])}")
    rows: List[PhaseRow] = []
    for name in names:
        for fraction in args.prune:
            for batch_size in batch_sizes:
                rows += measure_phases(name, fraction, batch_size, args.device, args.repeats,
                                       args.clock, args.steps_per_round)
                print(f"#  {name} {fraction:.0%} pruned, batch {batch_size}: " + ", ".join(
                    f"{r.search} {r.step_ms:.2f} ms" for r in rows[-len(SEARCHES):]), flush=True)
    print("# fast = plinio fast=True (sparse execution on); dense = plinio fast=True, sparse=False; plain = "
          "plain-PyTorch search (bench/plain_supernet.py). Medians per phase; step = their sum; page faults and "
          "kernel time: means per timed step.")
    print(format_phase_table(rows))
    return rows


if __name__ == "__main__":
    main()
