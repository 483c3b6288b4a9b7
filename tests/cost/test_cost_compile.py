"""The fast cost paths under ``torch.compile(fullgraph=True)``: one graph, no recompile when
the mask values or θ change, and the same values as eager mode."""
import itertools

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from plinio.cost.geometry import LayerShape
from plinio.cost.latency import LatencyTable, LatencyTableCost
from plinio.cost.peak_memory import PeakMemory, schedule_from_graph
from plinio.cost.specs import LayerCosts
from plinio.cost.targets import CostTargets
from tests.cost.cost_helpers import TinySuperNet, traced

SHAPES = [
    LayerShape("conv", "conv2d", 8, 16, (3, 3), (1, 1), (1, 1), 1, (8, 8), (8, 8)),
    LayerShape("add", "add", 16, 16, in_spatial=(8, 8), out_spatial=(8, 8)),
    LayerShape("fc", "linear", 16, 4),
]


def latency_spec() -> LatencyTableCost:
    def row(kind, kernel, stride, spatial, cin, cout, seconds):
        return {"kind": kind, "kernel": kernel, "stride": stride, "depthwise": "0", "in_spatial": spatial,
                "out_spatial": spatial, "cin": str(cin), "cout": str(cout), "backend": "torch",
                "median_s": str(seconds)}
    rows = [row("conv2d", "3x3", "1x1", "8x8", i, o, 1e-6 * i * o) for i, o in itertools.product((1, 8), (1, 16))]
    rows += [row("add", "", "", "8x8", c, c, 1e-7 * c) for c in (1, 16)]
    rows += [row("linear", "", "", "", i, o, 1e-6 * (i + o)) for i, o in itertools.product((1, 16), (1, 4))]
    return LatencyTableCost(LatencyTable.from_rows(enumerate(rows, start=2), "torch", "fixture"))


def compiled_and_counter(fn):
    torch._dynamo.reset()
    counter = CompileCounter()
    return torch.compile(fn, backend=counter, fullgraph=True), counter


def test_layer_costs_and_targets_compile_once():
    costs = LayerCosts(SHAPES, {"macs": "macs", "latency": latency_spec(),
                                "energy": lambda g: g.in_channels * g.out_channels + g.calls})
    targets = CostTargets({"macs": 3000.0}, minimize={"latency": 1e-4})
    # channels: conv (in 8, out = Σ|α|), add and fc read conv's output
    full_in = torch.tensor([8.0, 0.0, 0.0])

    def step(alpha: torch.Tensor):
        n = alpha.abs().sum()
        cin = full_in + torch.stack([n * 0, n, n])
        cout = torch.stack([n, n, n * 0 + 4])
        result = costs(cin, cout, torch.tensor([9.0, 1.0, 1.0]))
        totals = {name: v.sum() for name, v in result.items()}
        loss = targets(totals)
        targets.update(totals)
        return loss, totals["energy"]

    compiled, counter = compiled_and_counter(step)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        alpha = torch.rand(16, generator=gen)
        strength = targets.strength.clone()
        got = compiled(alpha)
        targets.strength.copy_(strength)
        want = step(alpha)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
    assert counter.frame_count == 1


def test_peak_memory_compiles_once():
    peak = PeakMemory(schedule_from_graph(traced(TinySuperNet(), (2, 4, 4)), {"stem": 0, "b1_0": 1}, n_counts=2))

    def step(alpha: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return peak(torch.stack([alpha[:4].abs().sum(), alpha[4:].abs().sum()]), torch.softmax(logits, 0))

    compiled, counter = compiled_and_counter(step)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        alpha, logits = torch.rand(12, generator=gen), torch.randn(3, generator=gen)
        assert compiled(alpha, logits).item() == pytest.approx(step(alpha, logits).item())
    assert counter.frame_count == 1
