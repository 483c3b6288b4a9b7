"""Random CNNs whose PIT layers are followed by chains of channel-local ops: every activation
whose backward at an input of exactly 0 differs (ReLU, ReLU6, Hardtanh, Threshold, the
shrinks: zero; LeakyReLU, GELU, SiLU, sigmoid, tanh: not), dropout, BatchNorm, pooling and
scalings, after plain, residual, depthwise, concatenated and supernet layers. The sparse
tests run them against the dense path: sparse execution may skip a channel only where
PyTorch's own backward makes it exactly zero.

No max pooling: a stride-1 max pool repeats its maxima, a 1×1 convolution after it gives
exactly equal values, and the next max pool breaks such ties by a last-bit rounding that
differs between any two convolution kernels, sending a gradient elsewhere (a discontinuity
of the max, not a difference of sparse execution; ``tests/pit/test_channel_rules.py`` checks
that max pooling carries the mask)."""
from typing import Callable, Dict, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st

from plinio.methods.pit_supernet import PITSuperNetModule


class _Scale(nn.Module):
    """A functional op of the graph (not a module of the channel-rule table)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "relu_fn":
            return F.relu(x)
        if self.kind == "neg":
            return -x
        if self.kind == "mul2":
            return x * 2.0
        if self.kind == "hardtanh_fn":  # 0 -> 0.5: the mask stops here
            return F.hardtanh(x, 0.5, 1.0)
        if self.kind == "clamp":
            return torch.clamp(x, min=-1.0, max=1.0)
        if self.kind == "abs":
            return torch.abs(x)
        return x + 1.0


_MODULES: Dict[str, Callable[[int, int], nn.Module]] = {
    "relu": lambda c, d: nn.ReLU(),
    "relu6": lambda c, d: nn.ReLU6(),
    "hardtanh01": lambda c, d: nn.Hardtanh(0.0, 1.0),
    "hardtanh": lambda c, d: nn.Hardtanh(),
    "leaky": lambda c, d: nn.LeakyReLU(0.1),
    "gelu": lambda c, d: nn.GELU(),
    "silu": lambda c, d: nn.SiLU(),
    "threshold0": lambda c, d: nn.Threshold(0.0, 0.0),
    "threshold_neg": lambda c, d: nn.Threshold(-0.1, 0.0),
    "hardshrink": lambda c, d: nn.Hardshrink(0.1),
    "softshrink": lambda c, d: nn.Softshrink(0.1),
    "sigmoid": lambda c, d: nn.Sigmoid(),
    "tanh": lambda c, d: nn.Tanh(),
    "dropout": lambda c, d: nn.Dropout(0.3),
    "bn": lambda c, d: (nn.BatchNorm1d if d == 1 else nn.BatchNorm2d)(c),
    "avgpool": lambda c, d: (nn.AvgPool1d if d == 1 else nn.AvgPool2d)(3, 1, 1),
}
OPS: Tuple[str, ...] = tuple(_MODULES) + ("relu_fn", "neg", "mul2", "add1", "hardtanh_fn", "clamp", "abs")
KINDS = ("conv", "residual", "depthwise", "concat", "supernet")
# (kind, output channels, ops after it, kernel size)
Layer = Tuple[str, int, Tuple[str, ...], int]


def _op(kind: str, channels: int, dims: int) -> nn.Module:
    return _MODULES[kind](channels, dims) if kind in _MODULES else _Scale(kind)


class ZooNet(nn.Module):
    def __init__(self, dims: int, in_channels: int, layers: Sequence[Layer]) -> None:
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.kinds = tuple(kind for kind, *_ in layers)
        self.layers = nn.ModuleList()
        c = in_channels
        for kind, cout, ops, k in layers:
            if kind == "conv":
                layer, c = conv(c, cout, k, padding=k // 2), cout
            elif kind == "residual":
                layer = conv(c, c, k, padding=k // 2)
            elif kind == "depthwise":
                layer = conv(c, c, k, padding=k // 2, groups=c)
            elif kind == "concat":
                layer, c = nn.ModuleList([conv(c, cout, k, padding=k // 2), conv(c, cout, 1)]), 2 * cout
            else:
                layer, c = PITSuperNetModule([conv(c, cout, k, padding=k // 2),
                                              nn.Sequential(conv(c, cout, 1), nn.ReLU())]), cout
            self.layers.append(nn.ModuleDict({"layer": layer, "ops": nn.Sequential(*[_op(o, c, dims) for o in ops])}))
        self.head = nn.Linear(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for kind, block in zip(self.kinds, self.layers):
            if kind == "concat":
                a, b = block["layer"]
                x = block["ops"](torch.cat([a(x), b(x)], dim=1))
            elif kind == "residual":
                x = block["ops"](block["layer"](x)) + x
            else:
                x = block["ops"](block["layer"](x))
        return self.head(x.flatten(2).mean(-1))


@st.composite
def zoo_specs(draw: st.DrawFn) -> Tuple[int, int, Tuple[Layer, ...]]:
    """(dims, input channels, layers) of a :class:`ZooNet`."""
    layers = tuple((draw(st.sampled_from(KINDS)), draw(st.integers(2, 6)),
                    tuple(draw(st.lists(st.sampled_from(OPS), max_size=3))), draw(st.sampled_from([1, 3])))
                   for _ in range(draw(st.integers(1, 4))))
    return draw(st.sampled_from([1, 2])), draw(st.integers(1, 4)), layers
