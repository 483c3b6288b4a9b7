"""What each eager shortcut of plinio's fast path is worth in a search step: the step of
``bench/search_step.py`` with the shortcut on and off, two copies of the same search timed
interleaved in one process.

Shortcuts (each exact: the same values and gradients on and off):

- ``native``: a layer compact on both sides in a sparse step runs the native op
  ``plinio::compact_conv`` (weight-block gathers, convolution and, in its C++ autograd
  formula, both gradients and the weight scatter); off: the Python autograd function of
  ``plinio.fast.sparse_conv`` that does the same computations;
- ``theta``: a supernet's soft θ of a forward is computed from the Python mirrors of its
  switches (``PITSuperNetCombiner._sampled_soft_theta``); off: the buffer-driven formula
  ``theta_alpha`` (``torch.where`` over the buffers, as under ``torch.compile``). Workloads
  without supernets (the TCN) have no row for it;
- ``edges``: the layers at the edges of a pruned network run without a Python autograd
  function: a convolution reading the network's input whole into compact channels runs
  ``plinio::compact_conv``, a Linear classifier of compact features ``F.linear`` of the
  weight's column block; off: the Python autograd function of ``plinio.fast.sparse_conv``;
- ``costs``: the soft built-in costs of the regularizer run as the native op
  ``plinio::pit_soft_costs`` and its backward op (``plinio.methods.pit.cost_model``); off: the
  cost graph through autograd, as for binarized masks and under ``torch.compile``;
- ``masks``: a compact layer whose only searched mask is its channel mask convolves its
  unmasked weight, and ``plinio::compact_conv`` gives α its gradient; off: the layer builds its
  masked weight with ``plinio.ops.pit_masked_weight`` first. Workloads without a 2-D
  convolution (the TCN: its Conv1d layers have receptive-field and dilation masks too, its
  Linear classifier runs no native op) have no row for it.

In each round both copies run ``--steps-per-round`` consecutive steps and the last one is
timed; the table gives the median step of each and the median, min and max of the per-round
ratios on/off (a shared machine drifts: the ratio of one round compares steps taken seconds
apart).

    python bench/step_ab.py [--workloads resnet8,tcn] [--prune 0.5,0.75]
                            [--shortcuts native,theta,edges,costs,masks] [--threads 2] [--repeats 30]
"""
import argparse
import contextlib
import statistics
import sys
from pathlib import Path
from typing import Callable, ContextManager, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.search_step import (CLOCKS, SearchSetup, _fractions, add_round_options, build_setups,  # noqa: E402
                               check_round_options, chosen_names, describe_machine, markdown_table, search_step,
                               workload_names)
from bench.models import count_supernets, workloads  # noqa: E402
from plinio.fast import sparse_conv  # noqa: E402
from plinio.methods.pit.cost_model import PITCostModel  # noqa: E402
from plinio.methods.pit.nn.module import PITWeightedModule  # noqa: E402
from plinio.methods.pit_supernet.nn.combiner import PITSuperNetCombiner  # noqa: E402


@contextlib.contextmanager
def _replaced(owner: object, **values: object) -> Iterator[None]:
    """``owner``'s attributes ``values`` replaced inside (a module's function, a class's method
    or property), restored on exit."""
    saved = {name: getattr(owner, name) for name in values}
    for name, value in values.items():
        setattr(owner, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(owner, name, value)


def _never(*_: object) -> bool:
    return False


def _python_compact_conv() -> ContextManager[None]:
    """Plans made inside run the Python autograd function instead of plinio::compact_conv."""
    return _replaced(sparse_conv, native_compact_conv=_never)


def _buffer_theta() -> ContextManager[None]:
    """Supernets compute θ with the buffer-driven formula."""
    return _replaced(PITSuperNetCombiner, _sampled_soft_theta=lambda self, noisy: self.theta_alpha)


def _python_edge_layers() -> ContextManager[None]:
    """Plans made inside run the edge layers (whole dense input, Linear of a compact input)
    through the Python autograd function."""
    return _replaced(sparse_conv.SparsePlan, reads_whole_input=property(_never), reads_column_block=property(_never))


def _graph_costs() -> ContextManager[None]:
    """Soft built-in costs through the cost graph and autograd."""
    return _replaced(PITCostModel, _fast_costs=PITCostModel._graph_costs)


def _masked_weights() -> ContextManager[None]:
    """Compact layers convolve their masked weight (``pit_masked_weight``) instead of the
    unmasked one with their mask's gradient in the native op."""
    return _replaced(PITWeightedModule, _channel_mask_args=lambda self: None)


# shortcut -> a context in which it is off
SHORTCUTS: Dict[str, Callable[[], ContextManager[None]]] = {
    "native": _python_compact_conv,
    "theta": _buffer_theta,
    "edges": _python_edge_layers,
    "costs": _graph_costs,
    "masks": _masked_weights,
}


def without(setup: SearchSetup, shortcut: str) -> SearchSetup:
    """``setup`` whose forward and regularizer run with ``shortcut`` off (what they decide,
    e.g. the plan of a layer, the θ formula or the cost function, the backward follows)."""
    switch_off = SHORTCUTS[shortcut]

    def off(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def run(*args: object) -> torch.Tensor:
            with switch_off():
                return fn(*args)
        return run

    return setup._replace(forward=off(setup.forward), regularizer=off(setup.regularizer))


class ABRow(NamedTuple):
    """Step times of one shortcut on and off, and the per-round ratios on/off."""

    workload: str
    pruned: float
    shortcut: str
    on_ms: float
    off_ms: float
    ratios: List[float]


def time_ab(on: SearchSetup, off: SearchSetup, repeats: int, steps_per_round: int,
            clock: str = "wall") -> Tuple[float, float, List[float]]:
    """(median on ms, median off ms, per-round ratios on/off), the two interleaved in rounds."""
    now = CLOCKS[clock]
    times: Dict[str, List[float]] = {"on": [], "off": []}
    for _ in range(repeats):
        for label, setup in (("on", on), ("off", off)):
            for _ in range(steps_per_round - 1):
                search_step(setup)
            start = now()
            search_step(setup)
            times[label].append(now() - start)
    ratios = [a / b for a, b in zip(times["on"], times["off"])]
    return statistics.median(times["on"]) * 1e3, statistics.median(times["off"]) * 1e3, ratios


def measure(name: str, pruned: float, shortcut: str, batch_size: int, repeats: int,
            steps_per_round: int, clock: str) -> ABRow:
    """The A/B of one shortcut on one workload; the two copies must compute the same loss
    (from the same random state: dropout draws its noise in the step)."""
    pair = [build_setups(name, batch_size, "cpu", prune_fraction=pruned, variants=("fast",))["fast"]
            for _ in range(2)]
    on, off = pair[0], without(pair[1], shortcut)
    losses = []
    for setup in (on, off):
        torch.manual_seed(0)
        losses.append(search_step(setup))
    loss_on, loss_off = losses
    if not torch.allclose(loss_on, loss_off, rtol=1e-5, atol=1e-7):
        raise RuntimeError(f"{name}: the step with {shortcut} off computes another loss "
                           f"({loss_off.item()} vs {loss_on.item()})")
    return ABRow(name, pruned, shortcut, *time_ab(on, off, repeats, steps_per_round, clock))


def format_table(rows: Sequence[ABRow]) -> str:
    header = ["workload", "pruned", "shortcut", "on ms", "off ms", "on/off median", "on/off range"]
    cells = [[r.workload, f"{r.pruned:.0%}", r.shortcut, f"{r.on_ms:.2f}", f"{r.off_ms:.2f}",
              f"{statistics.median(r.ratios):.3f}", f"{min(r.ratios):.2f}–{max(r.ratios):.2f}"] for r in rows]
    return markdown_table(header, 3, cells)


def main(argv: Optional[Sequence[str]] = None) -> List[ABRow]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="resnet8,tcn",
                        help="comma-separated names from bench/models.py workloads()")
    parser.add_argument("--prune", default="0.5,0.75", help="comma-separated fractions of every channel mask to prune")
    parser.add_argument("--shortcuts", default=",".join(SHORTCUTS), help=f"comma-separated, of {sorted(SHORTCUTS)}")
    parser.add_argument("--batch-size", type=int, default=32)
    add_round_options(parser, "two copies")
    args = parser.parse_args(argv)
    check_round_options(parser, args)
    names = workload_names(parser, args.workloads)
    shortcuts = chosen_names(parser, args.shortcuts, list(SHORTCUTS), "shortcuts")
    torch.set_num_threads(args.threads)
    print(f"# {describe_machine('cpu', args.threads)}")
    print(f"# command: python bench/step_ab.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    rows = []
    for name in names:
        model = workloads()[name].factory()
        supernets = count_supernets(model) > 0
        conv2d = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        for pruned in _fractions(args.prune):
            for shortcut in shortcuts:
                if shortcut == "theta" and not supernets or shortcut == "masks" and not conv2d:
                    continue  # no θ to compute, no layer with a channel mask only
                rows.append(measure(name, pruned, shortcut, args.batch_size, args.repeats,
                                    args.steps_per_round, args.clock))
                print(f"#  {name} {pruned:.0%} pruned, {shortcut}: on {rows[-1].on_ms:.2f} ms, "
                      f"off {rows[-1].off_ms:.2f} ms", flush=True)
    print("# on = the shortcut as plinio runs it; off = its exact fallback; on/off: per-round ratios, lower is better.")
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
