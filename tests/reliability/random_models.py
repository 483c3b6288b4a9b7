"""Random sequential / residual CNNs with supernets, and an independent cost oracle.

A model is described by plain data (``ModelSpec``), so that hypothesis can generate and
shrink it and so that the expected costs (docs/behaviour.md §4) can be recomputed layer by layer from the
description and the mask parameters, without using the library's cost code.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from plinio.methods.pit.nn.features_masker import PITFrozenFeaturesMasker
from plinio.methods.pit_supernet import PITSuperNetModule

BRANCH_KINDS = ("conv3", "conv5", "sep", "identity")


@dataclass(frozen=True)
class BlockSpec:
    """One block: ``conv`` (conv [+BN] [+ReLU]), ``residual`` (relu(conv(x)) + x) or
    ``supernet`` (branches of ``BRANCH_KINDS``)."""

    kind: str
    out_channels: int
    kernel: int = 3
    dilation: int = 1
    bias: bool = True
    batchnorm: bool = False
    relu: bool = True
    branches: Tuple[str, ...] = ()
    gumbel: bool = False


@dataclass(frozen=True)
class ModelSpec:
    dims: int                      # 1 (Conv1d) or 2 (Conv2d)
    in_channels: int
    size: int                      # length (1-D) or height = width (2-D)
    blocks: Tuple[BlockSpec, ...]
    classes: int = 3

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return (self.in_channels,) + (self.size,) * self.dims

    @property
    def positions(self) -> int:
        """Output positions of every conv (all are stride 1, 'same' padded)."""
        return self.size ** self.dims

    @property
    def has_supernet(self) -> bool:
        return any(b.kind == "supernet" for b in self.blocks)


def _conv(dims: int, cin: int, cout: int, kernel: int, dilation: int = 1,
          bias: bool = True) -> nn.Module:
    cls = nn.Conv1d if dims == 1 else nn.Conv2d
    return cls(cin, cout, kernel, padding="same", dilation=dilation, bias=bias)


def _bn(dims: int, channels: int) -> nn.Module:
    bn = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(channels)
    with torch.no_grad():  # non-trivial statistics, so that folding matters
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn


def _branch(dims: int, kind: str, cin: int, cout: int) -> nn.Module:
    if kind == "conv3":
        return _conv(dims, cin, cout, 3)
    if kind == "conv5":
        return _conv(dims, cin, cout, 5)
    if kind == "sep":
        return nn.Sequential(_conv(dims, cin, cin, 3), nn.ReLU(), _conv(dims, cin, cout, 1))
    if kind == "identity":
        return nn.Identity()
    raise ValueError(kind)


class ConvBlock(nn.Module):
    def __init__(self, dims: int, cin: int, spec: BlockSpec) -> None:
        super().__init__()
        self.conv = _conv(dims, cin, spec.out_channels, spec.kernel, spec.dilation, spec.bias)
        self.bn = _bn(dims, spec.out_channels) if spec.batchnorm else nn.Identity()
        self.act = nn.ReLU() if spec.relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ResidualBlock(nn.Module):
    def __init__(self, dims: int, cin: int, spec: BlockSpec) -> None:
        super().__init__()
        self.conv = _conv(dims, cin, cin, spec.kernel, spec.dilation, spec.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)) + x


class SuperNetBlock(nn.Module):
    def __init__(self, dims: int, cin: int, spec: BlockSpec) -> None:
        super().__init__()
        self.sn = PITSuperNetModule([_branch(dims, k, cin, spec.out_channels)
                                     for k in spec.branches], gumbel_softmax=spec.gumbel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sn(x)


class RandomNet(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        blocks: List[nn.Module] = []
        channels = spec.in_channels
        for block in spec.blocks:
            cls = {"conv": ConvBlock, "residual": ResidualBlock, "supernet": SuperNetBlock}
            blocks.append(cls[block.kind](spec.dims, channels, block))
            channels = block_out_channels(block, channels)
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(channels * spec.positions, spec.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(torch.flatten(x, 1))


def block_out_channels(block: BlockSpec, cin: int) -> int:
    return cin if block.kind == "residual" else block.out_channels


# --------------------------------------------------------------------------- cost oracle


def theta_alpha(layer: nn.Module) -> torch.Tensor:
    """θ_α of a layer's channel masker from its raw parameter (docs/behaviour.md §5.1): |α| with the
    last entry forced to 1; all ones for a frozen masker."""
    masker = layer.out_features_masker
    alpha = masker.alpha.detach()
    if isinstance(masker, PITFrozenFeaturesMasker):
        return torch.ones_like(alpha)
    theta = alpha.abs().clone()
    theta[-1] = 1.0
    return theta


def k_eff(layer: nn.Module) -> torch.Tensor:
    """Continuous effective kernel size of a PITConv1d (docs/behaviour.md §5.1), from β and γ."""
    beta = layer.timestep_masker.beta.detach()
    gamma = layer.dilation_masker.gamma.detach()
    taps, levels = beta.shape[0], gamma.shape[0]
    b_hat = beta.abs().clone()
    b_hat[-1] = 1.0
    g_hat = gamma.abs().clone()
    g_hat[-1] = 1.0
    total = torch.zeros(())
    for i in range(taps):
        theta_b = b_hat[: i + 1].sum() / (i + 1)
        distance = taps - 1 - i
        top = levels - 1 if distance == 0 else min(_valuation(distance), levels - 1)
        theta_g = g_hat[: top + 1].sum() / (top + 1)
        total = total + theta_b * theta_g
    return total


def _valuation(n: int) -> int:
    v = 0
    while n % 2 == 0:
        n //= 2
        v += 1
    return v


class CostOracle:
    """Expected ``get_size()`` / ``get_macs()`` of a converted ``RandomNet`` (docs/behaviour.md §4).

    Walks the spec, tracks which channel-mask group each tensor carries, reads the raw mask
    parameters of the converted layers (found by their qualified names) and sums the
    textbook formulas. It also asserts that layers that must share a masker do share it.
    """

    def __init__(self, spec: ModelSpec, converted: nn.Module) -> None:
        self.spec = spec
        self.root = converted

    def layer(self, name: str) -> nn.Module:
        return self.root.get_submodule(name)

    def _k(self, name: str, kernel: int) -> torch.Tensor:
        return k_eff(self.layer(name)) if self.spec.dims == 1 else torch.tensor(
            float(kernel * kernel))

    def _conv_cost(self, name: str, cin: torch.Tensor, kernel: int,
                   cout: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        if cout is None:
            cout = theta_alpha(self.layer(name)).sum()
        size = cin * cout * self._k(name, kernel)
        return size, size * self.spec.positions

    def compute(self, thetas: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``thetas``: θ of each supernet (keyed by the supernet's qualified name)."""
        spec = self.spec
        cin = torch.tensor(float(spec.in_channels))
        group: Optional[str] = None  # layer whose masker the current tensor carries
        size, macs = torch.zeros(()), torch.zeros(())
        channels = spec.in_channels
        for index, block in enumerate(spec.blocks):
            prefix = f"blocks.{index}"
            if block.kind == "conv":
                s, m = self._conv_cost(f"{prefix}.conv", cin, block.kernel)
                size, macs = size + s, macs + m
                group = f"{prefix}.conv"
            elif block.kind == "residual":
                name = f"{prefix}.conv"
                s, m = self._conv_cost(name, cin, block.kernel)
                size, macs = size + s, macs + m
                group = self._join([name], group, f"residual block {prefix}")
            else:
                s, m, group = self._supernet(prefix, block, channels, cin, group, thetas)
                size, macs = size + s, macs + m
            channels = block_out_channels(block, channels)
            cin = self._width(group)
        head = self.layer("head")
        lin = cin * spec.positions * theta_alpha(head).sum()
        return size + lin, macs + lin

    def _supernet(self, prefix: str, block: BlockSpec, cin_full: int, cin: torch.Tensor,
                  in_group: Optional[str], thetas: Dict[str, torch.Tensor]):
        dims, positions, cout_full = self.spec.dims, self.spec.positions, block.out_channels
        sn = f"{prefix}.sn"
        outputs: List[str] = []
        totals = [torch.zeros(()), torch.zeros(())]
        theta = thetas[sn]
        joins_input = False
        for i, kind in enumerate(block.branches):
            base = f"{sn}.sn_input_layers.{i}"
            if kind == "identity":
                static, pit_init, pit_now = (0, 0), (0.0, 0.0), (torch.zeros(()),) * 2
                joins_input = True
            elif kind in ("conv3", "conv5"):
                k = 3 if kind == "conv3" else 5
                w = cin_full * cout_full * k ** dims
                static = (w + cout_full, (w + cout_full) * positions)
                pit_init = (float(w), float(w * positions))
                outputs.append(base)
                pit_now = self._conv_cost(base, cin, k)
            else:  # sep: conv3 (cin -> cin), ReLU, conv1 (cin -> cout)
                w1, w2 = cin_full * cin_full * 3 ** dims, cin_full * cout_full
                static = (w1 + cin_full + w2 + cout_full,
                          (w1 + cin_full + w2 + cout_full) * positions)
                pit_init = (float(w1 + w2), float((w1 + w2) * positions))
                s1, m1 = self._conv_cost(f"{base}.0", cin, 3)
                mid = theta_alpha(self.layer(f"{base}.0")).sum()
                s2, m2 = self._conv_cost(f"{base}.2", mid, 1)
                pit_now = (s1 + s2, m1 + m2)
                outputs.append(f"{base}.2")
            for c in range(2):
                totals[c] = totals[c] + theta[i] * (static[c] - pit_init[c] + pit_now[c])
        if joins_input:
            group = self._join(outputs, in_group, f"supernet {sn}")
        else:
            group = self._join(outputs[1:], outputs[0], f"supernet {sn}")
        return totals[0], totals[1], group

    def _width(self, group: Optional[str]) -> torch.Tensor:
        """Continuous channel count of a tensor carrying ``group``'s mask (None: the
        network input, never pruned)."""
        if group is None:
            return torch.tensor(float(self.spec.in_channels))
        return theta_alpha(self.layer(group)).sum()

    def _join(self, names: List[str], group: Optional[str], where: str) -> Optional[str]:
        """Outputs of ``names`` meet a tensor of ``group`` (an add or a combiner): they must
        share its channel masker, or, when it is the network input, have frozen maskers."""
        if group is None:
            for name in names:
                assert isinstance(self.layer(name).out_features_masker,
                                  PITFrozenFeaturesMasker), \
                    f"{where}: {name} meets the network input, its masker must be frozen"
            return None  # the joined tensor still carries the (unprunable) input channels
        masker = self.layer(group).out_features_masker
        for name in names:
            assert self.layer(name).out_features_masker is masker, \
                f"{where}: {name} must share the channel masker of {group}"
        return group
