"""Shared helpers of the cost tests: traced fixture graphs and random effective counts."""
from typing import List, Tuple

import torch
import torch.fx as fx
import torch.nn as nn

from plinio.cost.geometry import LayerShape
from plinio.graph.tracing import propagate_shapes, trace


def traced(model: nn.Module, input_shape: Tuple[int, ...]) -> fx.GraphModule:
    """``model`` traced with plinio's leaf rules, with shapes from a batch-1 input."""
    gm = trace(model)
    propagate_shapes(gm, (torch.rand((1,) + tuple(input_shape)),))
    return gm


def random_counts(shapes: Tuple[LayerShape, ...], seed: int) -> Tuple[torch.Tensor, ...]:
    """Effective (in, out, taps) counts strictly inside (1, full size), float64, with grad;
    away from integers so that piecewise-linear costs are differentiable there."""
    gen = torch.Generator().manual_seed(seed)

    def inside(full: list) -> torch.Tensor:
        full_t = torch.tensor(full, dtype=torch.float64)
        frac = 0.1 + 0.8 * torch.rand(len(full), generator=gen, dtype=torch.float64)
        return (1 + (full_t - 1) * frac + 0.013).requires_grad_()

    return (inside([s.in_channels for s in shapes]), inside([s.out_channels for s in shapes]),
            inside([s.kernel_volume for s in shapes]))


class Mix(nn.Module):
    """A merge module like the supernet combiner (a graph leaf mixing its list input)."""

    plinio_merges_inputs = True

    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:
        return sum(xs)


class TinySuperNet(nn.Module):
    """x (2×4×4) -> stem(4) -> [conv(4) | conv(8)->conv(4) | Identity] -> Mix."""

    def __init__(self, keep=(0, 1, 2)) -> None:
        """``keep``: the branches computed (one: the exported network of that choice)."""
        super().__init__()
        self.keep = keep
        self.stem = nn.Conv2d(2, 4, 1)
        self.b0 = nn.Conv2d(4, 4, 3, padding=1)
        self.b1 = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1))
        self.b2 = nn.Identity()
        self.mix = Mix()

    def forward(self, x):
        y = self.stem(x)
        outs = [branch(y) for i, branch in enumerate((self.b0, self.b1, self.b2)) if i in self.keep]
        return outs[0] if len(outs) == 1 else self.mix(outs)


class PlainCNN(nn.Module):
    """1×6×6 -> conv1(4) -> ReLU -> MaxPool(2) -> conv2(8) -> flatten -> Linear(72, 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(72, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv2(self.pool(self.relu(self.conv1(x)))), 1))


class TinyTCN(nn.Module):
    """Causal pad -> conv(k3) -> relu -> causal pad -> dilated conv(k3, d2) -> add(relu, .)."""

    def __init__(self) -> None:
        super().__init__()
        self.pad1 = nn.ConstantPad1d((2, 0), 0.0)
        self.conv1 = nn.Conv1d(2, 4, 3)
        self.pad2 = nn.ConstantPad1d((4, 0), 0.0)
        self.conv2 = nn.Conv1d(4, 4, 3, dilation=2)

    def forward(self, x):
        y = torch.relu(self.conv1(self.pad1(x)))
        return y + self.conv2(self.pad2(y))
