"""A whole short search timed end to end, once per configuration, with the architecture it exports.

The search is the demo's (``plinio.demo``): scikit-learn's digits, the demo's supernet CNN,
conversion with the MACs regularizer, a warm-up of the weights, then a search at strength λ
(default 1, the demo's strongest) with the softmax temperature annealed, all with the demo's
own pipeline functions and schedule. Each configuration runs the same seeded search; the
script prints the wall time of each phase and the architecture ``arch_export()`` would keep
(the chosen branch of every supernet and the channels of every layer it keeps), and says
whether each configuration found the same architecture as the first one.

The digits model is small (8×8 digits upsampled to 16×16, 16 and 32 channels): per-op fixed
costs weigh more in its steps. With ``--workload NAME`` (a workload of ``bench/models.py``:
dscnn, resnet8, ...) the same demo-style search runs on that network instead, where
convolutions dominate: synthetic seeded data (``--batches`` batches of ``--batch-size``
inputs and random labels per epoch), the workload's wrapper with the MACs regularizer
(``bench/search_step.build_wrapper``), warm-up of the weights, then the search at strength λ
(cross-entropy + λ·MACs / initial MACs, the supernets' temperature annealed as in the demo)
until the masks prune, and the export. Its accuracy column is not reported (random labels).

Every training step is logged (a forward pre-hook on the wrapper, its own time left out of
the phase times) with whether some channel mask had pruned a channel when it began. A step
with nothing pruned runs the same dense computation with sparse execution on or off, so the
time the dense configuration spends in such steps (with the conversion) bounds what sparse
execution can gain: no exact skipping of pruned channels makes that search more than
``dense total / (conversion + unpruned steps)`` faster end to end; the report prints the
bound under the table.

    python bench/search_time.py [--configs fast,dense,reference] [--strength 1]
                                [--warmup-epochs 4] [--search-epochs 5] [--seed 0]
                                [--threads 2] [--repeats 1]
                                [--workload dscnn [--batches 8] [--batch-size 32] [--device cuda]]

A configuration is one entry of ``CONFIGURATIONS``: a name, a description and the keyword
arguments given to ``PITSuperNet``. With ``--repeats N`` the configurations run N times in
alternating order (A B, B A, ...) and the median times are reported.
"""
import argparse
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.models import workloads  # noqa: E402
from bench.search_step import build_wrapper, chosen_names, describe_machine  # noqa: E402
from plinio.demo.config import Schedule  # noqa: E402
from plinio.demo.costs import model_cost  # noqa: E402
from plinio.demo.data import load_digits_data  # noqa: E402
from plinio.demo.model import supernet_cnn  # noqa: E402
from plinio.demo.pipeline import reproducible  # noqa: E402
from plinio.demo.search import chosen_branches, search, temperature_at, warm_up  # noqa: E402
from plinio.demo.training import evaluate  # noqa: E402
from plinio.methods import PITSuperNet  # noqa: E402
from plinio.methods.pit.nn.module import PITWeightedModule  # noqa: E402


class Configuration(NamedTuple):
    """One way to run the search: what it is and the keyword arguments of ``PITSuperNet``."""

    description: str
    options: Mapping[str, Any]


CONFIGURATIONS: Dict[str, Configuration] = {
    "fast": Configuration("plinio fast path with sparse execution (fast=True, sparse=True: the defaults)",
                          {"fast": True, "sparse": True}),
    "dense": Configuration("plinio fast path without sparse execution (fast=True, sparse=False)",
                           {"fast": True, "sparse": False}),
    "reference": Configuration("plinio reference path (fast=False)", {"fast": False}),
}


class StepLog:
    """The training steps of a wrapper, in order: when each began, whether some channel was
    pruned then, and the end of each phase. A forward pre-hook records them (forwards in eval
    mode, e.g. a validation pass, count with the step before); the hook's own time is kept
    apart (``hook_s``) so that it can be left out of the phase times. On CUDA the clock is
    read after a device synchronisation, so that the time of the work queued so far counts
    for the steps, not for the hook (which reads the masks on the host)."""

    def __init__(self, net: torch.nn.Module, device: str = "cpu") -> None:
        self._layers = [m for m in net.modules() if isinstance(m, PITWeightedModule)]
        self._cuda = torch.device(device).type == "cuda"
        self._events: List[Tuple[float, str]] = []  # (seconds of work so far, "pruned" | "unpruned" | "end")
        self.hook_s = 0.0
        self._handle = net.register_forward_pre_hook(self._record)

    def _any_pruned(self) -> bool:
        with torch.no_grad():
            return any(not bool(layer.features_mask.all()) for layer in self._layers)

    def _record(self, module: torch.nn.Module, args: Any) -> None:
        if not module.training:
            return
        entered = self._clock()
        kind = "pruned" if self._any_pruned() else "unpruned"
        self._events.append((entered - self.hook_s, kind))
        self.hook_s += time.perf_counter() - entered

    def _clock(self) -> float:
        if self._cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def now(self) -> float:
        """Seconds on the clock of the steps (``perf_counter`` less the hook's time)."""
        return self._clock() - self.hook_s

    def end_phase(self) -> None:
        """The last step so far ends here."""
        self._events.append((self.now(), "end"))

    def close(self) -> None:
        self._handle.remove()

    def counts(self) -> Tuple[int, int, float]:
        """(steps, steps with nothing pruned, seconds spent in those)."""
        steps = unpruned = 0
        unpruned_s = 0.0
        for (start, kind), (following, _) in zip(self._events, self._events[1:]):
            if kind == "end":
                continue
            steps += 1
            if kind == "unpruned":
                unpruned += 1
                unpruned_s += following - start
        return steps, unpruned, unpruned_s


@dataclass
class SearchRun:
    """Wall times (seconds) of one configuration's search and what it found. ``steps``: the
    training steps of warm-up and search; ``unpruned_steps`` of them began with no channel
    pruned and took ``unpruned_s``."""

    configuration: str
    conversion_s: float
    warmup_s: float
    search_s: float
    architecture: Dict[str, Any]
    exported_macs: float
    val_accuracy: float
    steps: int = 0
    unpruned_steps: int = 0
    unpruned_s: float = 0.0

    @property
    def total_s(self) -> float:
        """Conversion + warm-up + search."""
        return self.conversion_s + self.warmup_s + self.search_s

    @property
    def sparse_bound(self) -> float:
        """For a run without sparse execution (``dense``): the most any exact skipping of
        pruned channels can speed it up by, since its steps with nothing pruned (and the
        conversion) cost the same either way."""
        return self.total_s / (self.conversion_s + self.unpruned_s)


def exported_architecture(summary: Mapping[str, Any], demo: bool = True) -> Dict[str, Any]:
    """What ``arch_export()`` keeps, from ``arch_summary()``: each supernet's chosen branch
    (kind and the in→out features of its layers) and the in→out features of the other layers.
    ``demo``: the demo network (branches named by kind); else a branch is named by its key."""
    chosen = chosen_branches(summary) if demo else {}
    architecture: Dict[str, Any] = {}
    for name, entry in summary.items():
        if "supernet_branches" not in entry:
            architecture[name] = f"{entry['in_features']}->{entry['out_features']}"
            continue
        branches = entry["supernet_branches"]
        best = max(branches, key=lambda b: float(branches[b]["alpha"]))
        layers = {layer: f"{s['in_features']}->{s['out_features']}"
                  for layer, s in branches[best].items() if isinstance(s, Mapping)}
        architecture[name] = {"branch": chosen.get(name, best), **layers}
    return architecture


def run_search(name: str, schedule: Schedule, strength: float, seed: int) -> SearchRun:
    """The demo's search with configuration ``name``, timed phase by phase."""
    configuration = CONFIGURATIONS[name]
    with reproducible(seed, "cpu"):
        data = load_digits_data(seed)
        model = supernet_cnn()
        start = time.perf_counter()
        net = PITSuperNet(model, input_shape=data.input_shape, regularizer="macs",
                          **configuration.options)
        reference_cost = float(net.get_regularization_loss().detach())
        converted = time.perf_counter()
        log = StepLog(net)
        started = log.now()
        warm_up(net, data, schedule, torch.Generator().manual_seed(seed * 1000), False)
        log.end_phase()
        warmed = log.now()
        search(net, data, strength, reference_cost, schedule,
               torch.Generator().manual_seed(seed * 1000 + 1), False, desc=name)
        log.end_phase()
        searched = log.now()
        log.close()
        net.update_softmax_options(hard=True)
        _, val_accuracy = evaluate(net, data.val, schedule.batch_size)
        architecture = exported_architecture(net.arch_summary())
        macs = model_cost(net.arch_export(), data.input_shape).macs
    return SearchRun(name, converted - start, warmed - started, searched - warmed,
                     architecture, macs, val_accuracy, *log.counts())


@dataclass(frozen=True)
class SyntheticWorkload:
    """A network of ``bench/models.py`` searched on seeded synthetic data."""

    name: str
    batches: int = 8
    batch_size: int = 32
    device: str = "cpu"


def _step(net: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer], inputs: torch.Tensor,
          labels: torch.Tensor, cost: Optional[Any] = None, strength: float = 0.0) -> None:
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(net(inputs), labels)
    if cost is not None:
        loss = loss + strength * cost()
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()


def run_workload_search(name: str, workload: SyntheticWorkload, schedule: Schedule, strength: float,
                        seed: int) -> SearchRun:
    """The demo-style search of ``workload`` with configuration ``name``, timed phase by phase."""
    options = CONFIGURATIONS[name].options
    spec = workloads()[workload.name]
    device = workload.device
    with reproducible(seed, device):
        model = spec.factory()
        gen = torch.Generator().manual_seed(seed)
        inputs = torch.randn((workload.batches, workload.batch_size) + tuple(spec.input_shape), generator=gen)
        with torch.no_grad():
            classes = model.eval()(inputs[0, :1]).shape[1]
        model.train()
        labels = torch.randint(0, classes, (workload.batches, workload.batch_size), generator=gen)
        inputs, labels = inputs.to(device), labels.to(device)
        start = time.perf_counter()
        net = build_wrapper(model, spec.input_shape, options["fast"], options.get("sparse", True)).to(device)
        reference_cost = float(net.get_regularization_loss().detach())
        converted = time.perf_counter()
        log = StepLog(net, device)
        started = log.now()
        warm = [torch.optim.Adam(net.net_parameters(), lr=schedule.net_lr)]
        for _ in range(schedule.warmup_epochs):
            for batch in range(workload.batches):
                _step(net, warm, inputs[batch], labels[batch])
        log.end_phase()
        warmed = log.now()
        both = [torch.optim.Adam(net.net_parameters(), lr=schedule.net_lr),
                torch.optim.Adam(net.nas_parameters(), lr=schedule.nas_lr)]
        for epoch in range(schedule.search_epochs):
            if hasattr(net, "update_softmax_options"):
                net.update_softmax_options(temperature=temperature_at(epoch, schedule))
            for batch in range(workload.batches):
                _step(net, both, inputs[batch], labels[batch],
                      lambda: net.get_regularization_loss() / reference_cost, strength)
        log.end_phase()
        searched = log.now()
        log.close()
        if hasattr(net, "update_softmax_options"):
            net.update_softmax_options(hard=True)
        architecture = exported_architecture(net.arch_summary(), demo=False)
        macs = model_cost(net.arch_export(), tuple(spec.input_shape)).macs
    return SearchRun(name, converted - start, warmed - started, searched - warmed,
                     architecture, macs, float("nan"), *log.counts())


def run_all(names: Sequence[str], schedule: Schedule, strength: float, seed: int,
            repeats: int = 1, workload: Optional[SyntheticWorkload] = None) -> List[SearchRun]:
    """Every configuration ``repeats`` times in alternating order; median times per
    configuration, the architecture of its first run (every repeat must find the same)."""
    runs: Dict[str, List[SearchRun]] = {n: [] for n in names}
    for repeat in range(repeats):
        for name in (names if repeat % 2 == 0 else list(reversed(names))):
            runs[name].append(run_search(name, schedule, strength, seed) if workload is None
                              else run_workload_search(name, workload, schedule, strength, seed))
    results = []
    for name in names:
        first = runs[name][0]
        if any(r.architecture != first.architecture for r in runs[name][1:]):
            raise RuntimeError(f"{name}: repeated runs with seed {seed} exported different "
                               "architectures; the search is not repeatable")
        results.append(replace(
            first, conversion_s=statistics.median(r.conversion_s for r in runs[name]),
            warmup_s=statistics.median(r.warmup_s for r in runs[name]),
            search_s=statistics.median(r.search_s for r in runs[name]),
            unpruned_s=statistics.median(r.unpruned_s for r in runs[name])))
    return results


def format_report(runs: Sequence[SearchRun]) -> str:
    """Times table (with the first configuration's speed-up over each and whether each found
    the same architecture), then each configuration's architecture."""
    first = runs[0]
    lines = ["| configuration | conversion s | warm-up s | search s | total s | "
             f"{first.configuration} speed-up (total) | exported MACs | val acc | "
             f"same architecture as {first.configuration} |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        same = "yes" if r.architecture == first.architecture else "**no**"
        lines.append(f"| {r.configuration} | {r.conversion_s:.2f} | {r.warmup_s:.2f} | "
                     f"{r.search_s:.2f} | {r.total_s:.2f} | {r.total_s / first.total_s:.2f}× | "
                     f"{r.exported_macs:.0f} | {r.val_accuracy:.3f} | {same} |")
    lines.append("")
    for r in runs:
        lines.append(f"{r.configuration}: {r.unpruned_steps} of {r.steps} training steps began with no "
                     f"channel pruned ({r.unpruned_s:.2f} s of {r.total_s:.2f} s)")
    dense = next((r for r in runs if r.configuration == "dense"), None)
    if dense is not None:
        lines.append(f"A step with nothing pruned computes the same with sparse execution on or off, so "
                     f"skipping pruned channels can make this search at most {dense.total_s:.2f} / "
                     f"({dense.conversion_s:.2f} + {dense.unpruned_s:.2f}) = {dense.sparse_bound:.2f}× "
                     "faster than dense end to end.")
    for r in runs:
        lines.append(f"\nexported architecture, {r.configuration} "
                     f"({CONFIGURATIONS[r.configuration].description}):")
        for name, value in r.architecture.items():
            lines.append(f"  {name}: {value}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> List[SearchRun]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGURATIONS),
                        help=f"comma-separated, from {', '.join(CONFIGURATIONS)}")
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--warmup-epochs", type=int, default=Schedule.warmup_epochs)
    parser.add_argument("--search-epochs", type=int, default=Schedule.search_epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workload", default="digits",
                        help="digits (the demo) or a workload of bench/models.py on synthetic data")
    parser.add_argument("--batches", type=int, default=8, help="synthetic batches per epoch (--workload)")
    parser.add_argument("--batch-size", type=int, default=32, help="synthetic batch size (--workload)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (--workload; the digits search runs on the CPU)")
    args = parser.parse_args(argv)
    names = chosen_names(parser, args.configs, list(CONFIGURATIONS), "configurations")
    if args.warmup_epochs < 0 or args.search_epochs < 1 or args.repeats < 1:
        parser.error("--warmup-epochs must be >= 0, --search-epochs and --repeats >= 1")
    workload = None
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        parser.error(f"--device must be cpu, or cuda where CUDA is available; got {args.device!r}")
    if args.workload == "digits" and args.device != "cpu":
        parser.error("the digits search runs on the CPU: give --workload NAME to search on CUDA")
    if args.workload != "digits":
        if args.workload not in workloads():
            parser.error(f"unknown workload {args.workload!r}; choose digits or one of {sorted(workloads())}")
        if args.batches < 1 or args.batch_size < 1:
            parser.error("--batches and --batch-size must be >= 1")
        workload = SyntheticWorkload(args.workload, args.batches, args.batch_size, args.device)
    torch.set_num_threads(args.threads)
    schedule = Schedule(warmup_epochs=args.warmup_epochs, search_epochs=args.search_epochs)
    data = "digits, batch {schedule.batch_size}" if workload is None else \
        f"{workload.name} on synthetic data ({workload.batches} batches of {workload.batch_size} per epoch)"
    print(f"# demo-style search of {data.format(schedule=schedule)}, λ = {args.strength:g}, MACs regularizer, "
          f"{args.warmup_epochs} warm-up + {args.search_epochs} search epochs, seed "
          f"{args.seed}, {describe_machine(args.device, args.threads)}")
    print(f"# command: python bench/search_time.py {' '.join(argv or sys.argv[1:])}")
    runs = run_all(names, schedule, args.strength, args.seed, args.repeats, workload)
    print(format_report(runs))
    return runs


if __name__ == "__main__":
    main()
