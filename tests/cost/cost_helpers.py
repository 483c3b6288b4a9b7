"""Shared helpers of the cost tests: traced fixture graphs and random effective counts."""
from typing import Tuple

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
