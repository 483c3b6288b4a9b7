"""Close the loop of a latency table: the table's prediction vs the measured latency of
exported networks.

    python -m bench.latency_loop --model tcn
    python -m bench.latency_loop --model tcn --table latency_tcn.csv --strengths 0.05,0.2 --epochs 4

1. The workload's latency table is measured (``bench.latency_table``, both backends, plus
   the per-call overhead of each backend: an identity layer) unless ``--table`` names one.
2. ``PIT`` searches the workload on random data (random inputs and labels: the task loss
   only keeps the weights busy) with the table's onnxruntime latency as regularizer (over
   its initial value; SGD on the masks, so that the strength sets the pace), once per
   strength; the network ``arch_export()`` gives is kept after every epoch, with the
   table's prediction for it (``get_cost(name, binarized=True)``: binarized masks).
3. Each kept network (BatchNorm left folded, as a deployed network runs it) is timed with
   eager PyTorch and with onnxruntime (exported to ONNX) on a batch-1 input, one thread:
   the lowest median of ``--rounds`` rounds of ``--repeats`` calls (the table too).
4. Per backend: the Spearman rank correlation of predicted and measured latency, and the
   mean relative error (predicted − measured) / measured, with and without the per-call
   overhead correction of the table.

The report (markdown, printed and written to ``--out``) records the machine, the versions,
the date and the command.
"""
import argparse
import contextlib
import copy
import io
import logging
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.latency_table import (BACKENDS, header_lines, measure, model_shapes, overhead_point,  # noqa: E402
                                 points_of, time_calls, write_csv)
from bench.models import count_supernets, workloads  # noqa: E402
from plinio.cost.latency import LatencyTableCost  # noqa: E402
from plinio.methods import PIT  # noqa: E402


@dataclass(frozen=True)
class Network:
    """One exported network: where it came from, the table's predictions, the measurements."""

    label: str
    predicted: Dict[str, float]
    uncorrected: Dict[str, float]
    measured: Dict[str, float]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(values: Sequence[float]) -> np.ndarray:
        order = np.argsort(values, kind="stable")
        r = np.empty(len(values))
        r[order] = np.arange(len(values), dtype=float)
        for v in set(values):
            tied = np.asarray(values) == v
            r[tied] = r[tied].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def measure_network(model: nn.Module, input_shape: Sequence[int], warmup: int, repeats: int,
                    threads: int, rounds: int) -> Dict[str, float]:
    """Median seconds of one batch-1 inference with each backend."""
    import onnxruntime as ort

    model = copy.deepcopy(model).eval()
    x = torch.randn((1,) + tuple(input_shape))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            eager, _ = time_calls(lambda: model(x), warmup, repeats, rounds)
    finally:
        torch.set_num_threads(previous)
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        path = Path(tmp) / "net.onnx"
        torch.onnx.export(model, (x,), str(path), input_names=["x"], dynamo=True, external_data=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    onnx, _ = time_calls(lambda: session.run(None, feed), warmup, repeats, rounds)
    return {"torch": eager, "onnxruntime": onnx}


def search_networks(model_factory, input_shape: Sequence[int], table: Path, strengths: Sequence[float],
                    epochs: int, steps: int, seed: int) -> Iterator[tuple]:
    """(label, exported network, {backend: (corrected, uncorrected) prediction}) after every
    epoch of a search per strength; the unsearched network first."""
    costs = {f"{b}{suffix}": LatencyTableCost.from_csv(table, b, per_call_overhead=corrected)
             for b in BACKENDS for suffix, corrected in (("", True), (" uncorrected", False))}
    for s_index, strength in enumerate(strengths):
        torch.manual_seed(seed + s_index)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            search = PIT(model_factory(), input_shape=tuple(input_shape), cost=costs, regularizer="onnxruntime")
        reference = float(search.get_regularization_loss().detach())
        net_opt = torch.optim.Adam(search.net_parameters(), lr=1e-3)
        nas_opt = torch.optim.SGD(search.nas_parameters(), lr=1.0)
        gen = torch.Generator().manual_seed(seed)
        if s_index == 0:
            yield ("unsearched", search.arch_export(add_bn=False), _predictions(search))
        for epoch in range(epochs):
            for _ in range(steps):
                x = torch.randn((16,) + tuple(input_shape), generator=gen)
                labels = torch.randint(0, 8, (16,), generator=gen)
                loss = F.cross_entropy(search(x), labels) + strength * search.get_regularization_loss() / reference
                net_opt.zero_grad()
                nas_opt.zero_grad()
                loss.backward()
                net_opt.step()
                nas_opt.step()
            yield (f"strength {strength:g}, epoch {epoch + 1}", search.arch_export(add_bn=False),
                   _predictions(search))


def _predictions(search: PIT) -> Dict[str, tuple]:
    with torch.no_grad():
        return {b: (float(search.get_cost(b, binarized=True)), float(search.get_cost(f"{b} uncorrected", True)))
                for b in BACKENDS}


def report(networks: List[Network], lines: Sequence[str]) -> str:
    """The markdown section: per network, then the summary per backend."""
    out = ["| network | " + " | ".join(f"{b} predicted µs | {b} measured µs" for b in BACKENDS) + " |",
           "|---|" + "---:|" * (2 * len(BACKENDS))]
    for n in networks:
        cells = " | ".join(f"{1e6 * n.predicted[b]:.1f} | {1e6 * n.measured[b]:.1f}" for b in BACKENDS)
        out.append(f"| {n.label} | {cells} |")
    out += ["", "| backend | Spearman ρ | mean error (corrected) | mean error (uncorrected) |", "|---|---:|---:|---:|"]
    for b in BACKENDS:
        measured = [n.measured[b] for n in networks]
        rho = spearman([n.predicted[b] for n in networks], measured)
        err = np.mean([(n.predicted[b] - m) / m for n, m in zip(networks, measured)])
        raw = np.mean([(n.uncorrected[b] - m) / m for n, m in zip(networks, measured)])
        out.append(f"| {b} | {rho:.3f} | {100 * err:+.1f} % | {100 * raw:+.1f} % |")
    return "\n".join(list(lines) + [""] + out) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> List[Network]:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tcn", choices=sorted(workloads()), help="a PIT workload of bench/models.py")
    parser.add_argument("--table", type=Path, help="latency table CSV (default: measure one)")
    parser.add_argument("--strengths", default="0.02,0.05,0.1,0.2,0.5", help="comma-separated regularization strengths")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per strength (a network kept after each)")
    parser.add_argument("--steps", type=int, default=40, help="search steps per epoch")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="markdown report (default: latency_loop_<model>.md)")
    args = parser.parse_args(argv)
    workload = workloads()[args.model]
    if count_supernets(workload.factory()):
        parser.error(f"--model {args.model} is a supernet workload; the loop searches with PIT (use tcn)")
    table = args.table
    if table is None:
        table = Path(f"latency_{args.model}.csv")
        shapes = model_shapes(workload.factory(), workload.input_shape)
        rows = measure(points_of(shapes, "geometric") + [overhead_point()], BACKENDS, args.warmup, args.repeats,
                       args.threads, rounds=args.rounds)
        write_csv(table, rows, header_lines(["--model", args.model, "--overhead", "--warmup", str(args.warmup),
                                             "--repeats", str(args.repeats), "--rounds", str(args.rounds)], BACKENDS))
        print(f"measured {len(rows)} table rows into {table}", flush=True)
    networks = []
    strengths = [float(s) for s in args.strengths.split(",") if s]
    for label, net, predictions in search_networks(workload.factory, workload.input_shape, table, strengths,
                                                   args.epochs, args.steps, args.seed):
        measured = measure_network(net, workload.input_shape, args.warmup, args.repeats, args.threads, args.rounds)
        networks.append(Network(label, {b: p[0] for b, p in predictions.items()},
                                {b: p[1] for b, p in predictions.items()}, measured))
        print(f"{label}: " + ", ".join(f"{b} predicted {1e6 * predictions[b][0]:.1f} µs, measured "
                                       f"{1e6 * measured[b]:.1f} µs" for b in BACKENDS), flush=True)
    lines = [f"{line[2:]}  " for line in header_lines(argv, BACKENDS, "bench.latency_loop")] + [
        f"table: {table.name}; search on random data, strengths {args.strengths}, {args.epochs} epochs of "
        f"{args.steps} steps; batch 1, {args.threads} thread(s), lowest median of {args.rounds} rounds of "
        f"{args.repeats} calls"]
    text = report(networks, lines)
    out = args.out or Path(f"latency_loop_{args.model}.md")
    out.write_text(text)
    print(text)
    return networks


if __name__ == "__main__":
    main()
