"""Side-by-side benchmark of one search step: plinio's fast path, a plain-PyTorch search, plinio's
reference path, in the same process.

A search step is: forward, task loss + MACs regularizer, backward, optimizer step (SGD with
momentum for the network weights, Adam for the architectural parameters). For every workload
of ``bench/models.py`` the script builds three searches of the same model with the same
weights and times their steps interleaved (median of ``--repeats``):

- **fast**: plinio with ``fast=True`` (the default a user gets, sparse execution of masked
  channels included);
- **dense**: plinio with ``fast=True, sparse=False``: the fast path without sparse execution,
  the anchor of its gain;
- **plain**: the search a user writes in plain PyTorch without plinio
  (``bench/plain_supernet.py``: DARTS-style supernets, stack and weighted sum, channel masks
  ``weight * STE(|α| > 0.5)``, a Python-loop MACs regularizer): the speed anchor;
- **reference**: plinio with ``fast=False``, the correctness oracle (slower than a plain
  search, so fast/reference overstates the gain).

Before timing, the three must compute the same loss on the same batch (a timing of a
different computation would be meaningless). The script also measures the bytes of
activations saved for backward (unique storages handed to
``torch.autograd.graph.saved_tensors_hooks`` during forward and regularizer, parameters
excluded) and prints a Markdown table with fast/plain and fast/reference ratios, under a
header giving the CPU, torch version, threads and date.

    python bench/search_step.py [--batch-size 32] [--threads 2] [--device cpu]
                                [--workloads seed,resnet8] [--modes soft,hard] [--hard]
                                [--prune 0,0.5,0.75] [--clock cpu]
                                [--compile [--compile-mode reduce-overhead] [--compile-only]]
                                [--repeats 5] [--warmup 1] [--min-seconds 15]
                                [--steps-per-round 4]

``--prune F[,F...]`` times each workload with a fraction F of every searched channel mask set
below the binarization threshold (``bench/channel_pruning.py``: seeded, the same channels in
all three searches, keep-alive channels excepted, a shared mask pruned once), one row per
fraction. ``--compile`` adds a second table: the fast search and the plain search, each eager
and with its model and its regularizer under ``torch.compile(fullgraph=True)`` (the optimizer
steps stay eager; ``--compile-mode reduce-overhead`` adds CUDA graphs on a GPU), the four timed
interleaved, with compiled fast over compiled plain, over the faster plain of the two, and
over eager fast (a compiled graph runs no sparse execution: with pruned channels, eager fast
skips them and compiled fast does not). ``--compile-only`` drops the first table. ``--clock
cpu`` times with the process's CPU time instead of the wall clock (with one thread: robust to
other jobs on a shared machine). In each round every search runs ``--steps-per-round`` (4)
consecutive steps and the last one is timed, so a timed step follows steps of its own search
as in a real search loop; the rounds interleave the searches so that drifts of the machine's
speed cancel out. Fewer steps per round time small, fast steps before they are back to their
steady state after another search's large ones (the TCN's sparse step at 75 % pruned, 2
threads: 5.6 ms with 2 steps per round, 3.8 with 4, 3.3 with 8 and in a run of its own; a
ResNet-8 step does not move); ``--steps-per-round 1`` is the timing of the first tables.
"""
import argparse
import copy
import datetime
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
from bench.channel_pruning import draw_pruned_channels, prune  # noqa: E402
from bench.models import count_supernets, workloads  # noqa: E402
from bench.plain_from_plinio import channel_mask_specs, plain_search  # noqa: E402

VARIANTS = ("fast", "dense", "plain", "reference")


class SearchSetup(NamedTuple):
    """One search (model, regularizer, optimizers) and one batch of inputs/targets."""

    wrapper: nn.Module
    forward: Callable[[torch.Tensor], torch.Tensor]
    regularizer: Callable[[], torch.Tensor]
    optimizers: Sequence[torch.optim.Optimizer]
    inputs: torch.Tensor
    targets: torch.Tensor


def build_wrapper(model: nn.Module, input_shape: Sequence[int], fast: bool,
                  sparse: bool = True) -> nn.Module:
    """PITSuperNet for models with supernets, PIT otherwise (MACs regularizer)."""
    if count_supernets(model) > 0:
        from plinio.methods import PITSuperNet
        return PITSuperNet(model, input_shape=tuple(input_shape), regularizer="macs", fast=fast,
                           sparse=sparse)
    from plinio.methods import PIT
    return PIT(model, input_shape=tuple(input_shape), regularizer="macs", fast=fast, sparse=sparse)


def set_hard(wrapper: nn.Module, hard: bool) -> None:
    """Hard (one-hot) or soft θ on every supernet of a search."""
    if hasattr(wrapper, "update_softmax_options"):
        wrapper.update_softmax_options(hard=hard)
    elif hasattr(wrapper, "set_hard"):
        wrapper.set_hard(hard)


def _optimizers(search: nn.Module) -> List[torch.optim.Optimizer]:
    return [torch.optim.SGD(list(search.net_parameters()), lr=1e-4, momentum=0.9),
            torch.optim.Adam(list(search.nas_parameters()), lr=1e-4)]


def mask_alphas(search: nn.Module) -> Dict[str, torch.Tensor]:
    """Channel-mask α of a plinio wrapper or of the plain search, by plinio's parameter name."""
    if hasattr(search, "named_mask_alphas"):
        return search.named_mask_alphas()
    nas = dict(search.named_nas_parameters())
    return {name: nas[name] for name in channel_mask_specs(search)}


def build_setups(name: str, batch_size: int, device: str, hard: bool = False, seed: int = 0,
                 prune_fraction: float = 0.0,
                 variants: Sequence[str] = VARIANTS) -> Dict[str, SearchSetup]:
    """{variant: setup} for ``variants`` among 'fast', 'dense', 'plain', 'reference': the same model,
    weights and batch behind each, with ``prune_fraction`` of the channels pruned alike."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"build_setups: unknown variants {unknown}; choose from {VARIANTS}")
    workload = workloads()[name]
    torch.manual_seed(seed)
    model = workload.factory()
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn((batch_size,) + tuple(workload.input_shape), generator=gen).to(device)
    with torch.no_grad():
        probe = model.eval()(inputs[:1].cpu())
    model.train()
    targets = torch.randint(0, probe.shape[1], (batch_size,), generator=gen).to(device) \
        if probe.dim() == 2 else torch.empty(0, device=device)
    plinio_labels = [label for label in ("fast", "dense", "reference") if label in variants] or ["fast"]
    searches = {label: build_wrapper(copy.deepcopy(model), workload.input_shape, label != "reference",
                                     sparse=label == "fast")
                for label in plinio_labels}
    plinio_search = searches[plinio_labels[0]]  # the plain search takes its masks from it
    if "plain" in variants:
        searches["plain"] = plain_search(model, plinio_search, workload.input_shape)
    channels = draw_pruned_channels(channel_mask_specs(plinio_search), prune_fraction, seed)
    out = {}
    for label in variants:
        search = searches[label].to(device)
        search.train()
        set_hard(search, hard)
        prune(mask_alphas(search), channels)
        regularizer = search.macs if label == "plain" else search.get_regularization_loss
        out[label] = SearchSetup(search, search, regularizer, _optimizers(search), inputs,
                                 targets)
    return out


def build_pair(name: str, batch_size: int, device: str, hard: bool = False,
               seed: int = 0) -> Dict[str, SearchSetup]:
    """{'fast': ..., 'reference': ...}: plinio's two paths on the same model and batch."""
    return build_setups(name, batch_size, device, hard, seed, variants=("fast", "reference"))


def task_loss(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for classifiers, mean square for feature-map outputs (seed example)."""
    if output.dim() == 2 and targets.numel():
        return F.cross_entropy(output, targets)
    return output.square().mean()


REGULARIZER_WEIGHT = 1e-9  # the regularization strength of the timed steps


def forward_loss(setup: SearchSetup) -> torch.Tensor:
    """Forward pass plus regularizer: everything that saves tensors for backward."""
    output = setup.forward(setup.inputs)
    return task_loss(output, setup.targets) + REGULARIZER_WEIGHT * setup.regularizer()


STEP_PHASES = ("zero_grad", "forward", "regularizer", "backward", "optimizer")


def _no_mark() -> None:
    pass


def search_step(setup: SearchSetup, mark: Callable[[], None] = _no_mark) -> torch.Tensor:
    """One full search step, the phases of ``STEP_PHASES`` in order (the loss is
    :func:`forward_loss`'s); ``mark`` is called after each phase (``bench/step_phases.py``
    times them). Returns the loss, detached."""
    for opt in setup.optimizers:
        opt.zero_grad(set_to_none=True)
    mark()
    loss = task_loss(setup.forward(setup.inputs), setup.targets)
    mark()
    loss = loss + REGULARIZER_WEIGHT * setup.regularizer()
    mark()
    loss.backward()
    mark()
    for opt in setup.optimizers:
        opt.step()
    mark()
    return loss.detach()


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


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_steps(setups: Dict[str, SearchSetup], repeats: int, warmup: int, device: str,
               min_seconds: float = 0.0, max_repeats: int = 50,
               clock: str = "wall", steps_per_round: int = 4) -> Dict[str, float]:
    """Median seconds per step of each setup, the setups interleaved in rounds. Short steps
    are repeated more (until about ``min_seconds`` per setup, at most ``max_repeats``) so that
    the median resists the noise of a shared machine. ``clock``: 'wall' or 'cpu' (the
    process's CPU time).

    In a round each setup runs ``steps_per_round`` consecutive steps and the last one is
    timed: as in a search, where a step follows steps of the same model, not of another
    search that evicted its data from the caches (with 1, every timed step follows another
    setup's step: a cold start that costs small, fast steps the most)."""
    if steps_per_round < 1:
        raise ValueError(f"time_steps: steps_per_round must be at least 1, got {steps_per_round}")
    now = CLOCKS[clock]
    warm_times: List[float] = []
    for _ in range(max(warmup, 1)):
        for setup in setups.values():
            _sync(device)
            start = now()
            search_step(setup)
            _sync(device)
            warm_times.append(now() - start)
    per_step = max(min(warm_times), 1e-6)
    repeats = max(repeats, min(max_repeats, int(min_seconds / per_step) + 1))
    times: Dict[str, List[float]] = {k: [] for k in setups}
    for _ in range(repeats):
        for label, setup in setups.items():
            for _ in range(steps_per_round - 1):
                search_step(setup)
            _sync(device)
            start = now()
            search_step(setup)
            _sync(device)
            times[label].append(now() - start)
    return {k: statistics.median(v) for k, v in times.items()}


class Row(NamedTuple):
    """One table row: milliseconds per step and MiB saved for backward, by variant."""

    workload: str
    mode: str
    pruned: float
    ms: Dict[str, float]
    mib: Dict[str, float]

    def time_ratio(self, anchor: str) -> float:
        """Fast path's step time over ``anchor``'s ('dense', 'plain' or 'reference')."""
        return self.ms["fast"] / self.ms[anchor]

    def bytes_ratio(self, anchor: str) -> float:
        """Fast path's saved bytes over ``anchor``'s."""
        return self.mib["fast"] / self.mib[anchor] if self.mib[anchor] else float("nan")


def loss_mismatch(setups: Dict[str, SearchSetup], rtol: float = 1e-4,
                  atol: float = 1e-6, grad: bool = False) -> Optional[str]:
    """None when every setup computes the reference's loss on the batch (same random draws),
    else which ones differ and by how much. ``grad``: compute with gradients enabled (a
    compiled search then checks the graph its steps run, not a second one)."""
    losses = {}
    for label, setup in setups.items():
        torch.manual_seed(1)
        with torch.set_grad_enabled(grad):
            losses[label] = forward_loss(setup).detach()
    oracle = "reference" if "reference" in losses else next(iter(losses))
    wrong = [f"{label} {float(loss):.7g} vs {oracle} {float(losses[oracle]):.7g}"
             for label, loss in losses.items()
             if not torch.allclose(loss, losses[oracle], rtol=rtol, atol=atol)]
    return "; ".join(wrong) or None


def same_loss(setups: Dict[str, SearchSetup]) -> bool:
    """Whether every path computes the same loss on the batch: a timing of a path that
    computes something else would be meaningless."""
    return loss_mismatch(setups) is None


def compiled(setup: SearchSetup, mode: Optional[str],
             backend: str = "inductor") -> SearchSetup:
    """The setup with its model and its regularizer each under torch.compile(fullgraph=True)."""
    def compile_one(fn: Callable) -> Callable:
        return torch.compile(fn, fullgraph=True, mode=mode, backend=backend)

    return setup._replace(forward=compile_one(setup.wrapper),
                          regularizer=compile_one(setup.regularizer))


def measure(name: str, mode: str, batch_size: int, device: str, repeats: int, warmup: int,
            min_seconds: float = 0.0, prune_fraction: float = 0.0, clock: str = "wall",
            steps_per_round: int = 4) -> Row:
    """One table row: build the searches, check they agree, measure saved bytes, time."""
    setups = build_setups(name, batch_size, device, hard=(mode == "hard"),
                          prune_fraction=prune_fraction)
    _check_losses(name, mode, prune_fraction, setups)
    saved = {k: saved_activation_bytes(s) for k, s in setups.items()}
    times = time_steps(setups, repeats, warmup, device, min_seconds, clock=clock,
                       steps_per_round=steps_per_round)
    return Row(name, mode, prune_fraction, {k: t * 1e3 for k, t in times.items()},
               {k: b / 2 ** 20 for k, b in saved.items()})


def _check_losses(name: str, mode: str, prune_fraction: float,
                  setups: Dict[str, SearchSetup]) -> None:
    mismatch = loss_mismatch(setups)
    if mismatch:
        raise RuntimeError(f"{name} ({mode}, {prune_fraction:.0%} pruned): the searches compute "
                           f"different losses ({mismatch}); not timing a wrong result")


class CompileRow(NamedTuple):
    """One row of the compile table: milliseconds per step of the fast and the plain search,
    each eager and compiled (keys 'eager fast', 'compiled fast', 'eager plain',
    'compiled plain')."""

    workload: str
    mode: str
    pruned: float
    ms: Dict[str, float]

    def over(self, anchor: str) -> float:
        """Compiled fast's step time over ``anchor``'s: a key of ``ms``, or 'best plain'
        (the faster plain search, eager or compiled: the one a user would keep)."""
        ms = (min(self.ms["eager plain"], self.ms["compiled plain"]) if anchor == "best plain"
              else self.ms[anchor])
        return self.ms["compiled fast"] / ms


def measure_compiled(name: str, mode: str, batch_size: int, device: str, repeats: int,
                     warmup: int, min_seconds: float = 0.0, compile_mode: Optional[str] = None,
                     prune_fraction: float = 0.0, clock: str = "wall", steps_per_round: int = 4) -> CompileRow:
    """One compile-table row. The eager searches must compute the reference's loss, and each
    compiled search its eager twin's (a compiled search whose dropout draws inductor's random
    numbers, the plain one or any off the CPU, is checked in evaluation mode)."""
    hard = mode == "hard"
    eager = build_setups(name, batch_size, device, hard=hard, prune_fraction=prune_fraction,
                         variants=("fast", "plain", "reference"))
    _check_losses(name, mode, prune_fraction, eager)
    del eager["reference"]
    twins = build_setups(name, batch_size, device, hard=hard, prune_fraction=prune_fraction,
                         variants=("fast", "plain"))
    torch._dynamo.reset()  # a fresh compile per workload, as in a user's one-model search
    setups: Dict[str, SearchSetup] = {}
    for label in ("fast", "plain"):
        setups[f"eager {label}"] = eager[label]
        setups[f"compiled {label}"] = compiled(twins[label], compile_mode)
    for label in ("fast", "plain"):
        pair = {"eager": eager[label], "compiled": setups[f"compiled {label}"]}
        # inductor draws its own dropout masks, but for the fast path on the CPU (eager's)
        eager_masks = label == "fast" and torch.device(device).type == "cpu"
        own_masks = _has_dropout(eager[label].wrapper) and not eager_masks
        mismatch = _eval_loss_mismatch(pair) if own_masks else loss_mismatch(pair, grad=True)
        if mismatch:
            raise RuntimeError(f"{name} ({mode}, {prune_fraction:.0%} pruned): compiled {label} "
                               f"differs from eager ({mismatch}); not timing a wrong result")
    times = time_steps(setups, repeats, warmup, device, min_seconds, clock=clock,
                       steps_per_round=steps_per_round)
    return CompileRow(name, mode + f" ({compile_mode or 'default'})", prune_fraction,
                      {k: t * 1e3 for k, t in times.items()})


def _has_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


def _eval_loss_mismatch(setups: Dict[str, SearchSetup]) -> Optional[str]:
    """:func:`loss_mismatch` with every search in evaluation mode (no dropout), then back."""
    for setup in setups.values():
        setup.wrapper.eval()
    try:
        return loss_mismatch(setups)
    finally:
        for setup in setups.values():
            setup.wrapper.train()


TABLE_LEGEND = ("fast = plinio fast=True (sparse execution on, the default); dense = plinio fast=True, "
                "sparse=False; plain = plain-PyTorch search (bench/plain_supernet.py), the speed anchor; "
                "reference = plinio fast=False, the correctness oracle. Ratios: fast / anchor, lower is better.")


def markdown_table(header: Sequence[str], text_columns: int, cells: Sequence[Sequence[str]]) -> str:
    """A markdown table: the first ``text_columns`` columns left-aligned, numbers right-aligned."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = ["| " + " | ".join(row) + " |" for row in [header, *cells]]
    return "\n".join([lines[0], "|" + "|".join(align) + "|", *lines[1:]])


def format_table(rows: Sequence[Row]) -> str:
    header = ["workload", "mode", "pruned", "fast ms", "dense ms", "plain ms", "reference ms", "fast/dense",
              "**fast/plain**", "fast/reference", "fast MiB", "dense MiB", "plain MiB", "reference MiB",
              "saved fast/dense", "saved fast/plain", "saved fast/reference"]
    anchors = ("dense", "plain", "reference")
    cells = [[r.workload, r.mode, f"{r.pruned:.0%}", *(f"{r.ms[v]:.1f}" for v in ("fast",) + anchors),
              f"{r.time_ratio('dense'):.2f}", f"**{r.time_ratio('plain'):.2f}**", f"{r.time_ratio('reference'):.2f}",
              *(f"{r.mib[v]:.1f}" for v in ("fast",) + anchors), *(f"{r.bytes_ratio(v):.2f}" for v in anchors)]
             for r in rows]
    return markdown_table(header, 2, cells)


COMPILE_LEGEND = ("compiled = model and regularizer under torch.compile(fullgraph=True), optimizer "
                  "eager; fast = plinio fast=True; plain = plain-PyTorch search (bench/plain_supernet.py); "
                  "best plain = the faster plain search, eager or compiled. Ratios: compiled fast / "
                  "anchor, lower is better.")


def format_compile_table(rows: Sequence[CompileRow]) -> str:
    header = ["workload", "mode", "pruned", "eager fast ms", "compiled fast ms", "eager plain ms",
              "compiled plain ms", "**compiled fast / compiled plain**", "compiled fast / best plain",
              "**compiled fast / eager fast**"]
    searches = ("eager fast", "compiled fast", "eager plain", "compiled plain")
    cells = [[r.workload, r.mode, f"{r.pruned:.0%}", *(f"{r.ms[v]:.1f}" for v in searches),
              f"**{r.over('compiled plain'):.2f}**", f"{r.over('best plain'):.2f}", f"**{r.over('eager fast'):.2f}**"]
             for r in rows]
    return markdown_table(header, 2, cells)


def describe_machine(device: str, threads: int) -> str:
    """CPU model, torch version, threads, GPU, which CPU kernel loops run, and the date."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"torch {torch.__version__}, CPU {cpu}, {threads} threads{gpu}{_cpu_loops()}, {date}"


def _cpu_loops() -> str:
    """Which copies of the compiled CPU loops run (baseline, AVX2; AVX-512 for the small
    convolution of sparse execution), when built."""
    if "cpp" not in ops.available_backends("cpu"):
        return ", no compiled CPU kernels"
    from plinio import _C

    return f", CPU kernel loops {_C.cpu_isa()}, small-conv loops {_C.small_conv_isa()}"


def _fractions(text: str) -> List[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"--prune takes fractions in [0, 1], got {text!r}")
    return values


def add_round_options(parser: argparse.ArgumentParser, copies: str) -> None:
    """The options of a tool timing ``copies`` interleaved in rounds (``bench/step_phases.py``,
    ``bench/step_ab.py``): threads, rounds, steps per round, clock."""
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds")
    parser.add_argument("--steps-per-round", type=int, default=4,
                        help=f"consecutive steps of each of the {copies} per round, the last one timed")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")


def check_round_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exits with the parser's error on a count below 1."""
    if args.steps_per_round < 1 or args.repeats < 1:
        parser.error("--steps-per-round and --repeats must be at least 1")


def chosen_names(parser: argparse.ArgumentParser, text: str, known: Sequence[str], what: str) -> List[str]:
    """The comma-separated names of ``text``, each one of ``known``; an unknown one, or none,
    is a usage error naming ``what`` they are."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        parser.error(f"unknown {what} {unknown}; choose from {sorted(known)}")
    return names


def workload_names(parser: argparse.ArgumentParser, text: str) -> List[str]:
    """The comma-separated workload names of ``text``; an unknown one is a usage error."""
    return chosen_names(parser, text, list(workloads()), "workloads")


def main(argv: Optional[Sequence[str]] = None) -> List[NamedTuple]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workloads", default="seed,resnet8,dscnn,mobilenetv1,tcn",
                        help="comma-separated names from bench/models.py workloads()")
    parser.add_argument("--modes", default="soft,hard",
                        help="soft and/or hard θ (hard only applies to supernet workloads)")
    parser.add_argument("--hard", action="store_true", help="shorthand for --modes hard")
    parser.add_argument("--prune", type=_fractions, default=[0.0],
                        help="comma-separated fractions of every channel mask to prune, one "
                             "row each (e.g. 0,0.5,0.75)")
    parser.add_argument("--compile", action="store_true",
                        help="a second table: the fast and the plain search, eager and "
                             "under torch.compile(fullgraph=True)")
    parser.add_argument("--compile-mode", default=None,
                        choices=["default", "reduce-overhead", "max-autotune"],
                        help="torch.compile mode of --compile (reduce-overhead: CUDA graphs)")
    parser.add_argument("--compile-only", action="store_true",
                        help="with --compile, only the compile table")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall clock, or the process's CPU time (one thread: robust to other jobs)")
    parser.add_argument("--min-seconds", type=float, default=15.0,
                        help="repeat short steps until about this many seconds per search")
    parser.add_argument("--steps-per-round", type=int, default=4,
                        help="consecutive steps of each search per round, the last one timed (1: every "
                             "timed step follows another search's step, cold caches)")
    args = parser.parse_args(argv)
    if args.steps_per_round < 1:
        parser.error(f"--steps-per-round must be at least 1, got {args.steps_per_round}")
    torch.set_num_threads(args.threads)
    names = workload_names(parser, args.workloads)
    known = workloads()
    modes = ["hard"] if args.hard else [m.strip() for m in args.modes.split(",") if m.strip()]
    print(f"# search step, batch {args.batch_size}, {describe_machine(args.device, args.threads)}")
    print(f"# command: python bench/search_step.py {' '.join(argv or sys.argv[1:])}")
    rows: List[Row] = []
    compile_rows: List[CompileRow] = []
    timing = dict(batch_size=args.batch_size, device=args.device, repeats=args.repeats,
                  warmup=args.warmup, min_seconds=args.min_seconds, clock=args.clock,
                  steps_per_round=args.steps_per_round)
    for name in names:
        has_supernets = count_supernets(known[name].factory()) > 0
        for mode in modes:
            if mode == "hard" and not has_supernets:
                continue
            for fraction in args.prune:
                if not args.compile_only:
                    row = measure(name, mode, prune_fraction=fraction, **timing)
                    rows.append(row)
                    print(f"#  {name} {mode} {fraction:.0%} pruned: fast/dense "
                          f"{row.time_ratio('dense'):.2f}, fast/plain "
                          f"{row.time_ratio('plain'):.2f}, fast/reference "
                          f"{row.time_ratio('reference'):.2f}", flush=True)
                if args.compile:
                    compile_row = measure_compiled(name, mode, compile_mode=args.compile_mode,
                                                   prune_fraction=fraction, **timing)
                    compile_rows.append(compile_row)
                    print(f"#  {name} {mode} {fraction:.0%} pruned, compiled fast / compiled plain "
                          f"{compile_row.over('compiled plain'):.2f}, / eager fast "
                          f"{compile_row.over('eager fast'):.2f}", flush=True)
    if rows:
        print(f"# {TABLE_LEGEND}")
        print(format_table(rows))
    if compile_rows:
        print(f"# {COMPILE_LEGEND}")
        print(format_compile_table(compile_rows))
    return rows + compile_rows


if __name__ == "__main__":
    main()
