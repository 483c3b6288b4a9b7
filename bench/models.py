"""Benchmark and test workloads: the seed-example supernet (docs/behaviour.md §7), MLPerf Tiny supernets, a TCN.

Every MLPerf Tiny network is written as a supernet: each convolution block of the reference
network becomes a ``PITSuperNetModule`` choosing among conv3×3+BN+ReLU, conv5×5+BN+ReLU,
depthwise-separable 3×3 and (where input and output shapes allow it) Identity. Each model
class records how many supernets it contains in ``N_SUPERNETS`` so tests can check that the
conversion finds all of them.
"""
from typing import Callable, Dict, NamedTuple, Sequence, Tuple

import torch
import torch.nn as nn

from plinio.methods.pit_supernet import PITSuperNetModule


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1,
             relu: bool = True) -> nn.Sequential:
    """k×k convolution (padding k//2, no bias) + BatchNorm (+ ReLU)."""
    layers = [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups,
                        bias=False),
              nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _depthwise_separable(cin: int, cout: int, stride: int, relu: bool = True) -> nn.Sequential:
    """Depthwise 3×3 + BN + ReLU, then pointwise 1×1 + BN (+ ReLU)."""
    return nn.Sequential(
        _conv_bn(cin, cin, 3, stride, groups=cin, relu=True),
        _conv_bn(cin, cout, 1, 1, relu=relu))


def conv_block_supernet(cin: int, cout: int, stride: int = 1,
                        relu: bool = True) -> PITSuperNetModule:
    """The searchable replacement of one convolution block of a reference network.

    Branches: conv3×3, conv5×5, depthwise-separable 3×3 (each with BN and, if ``relu``,
    ReLU) and Identity when the block keeps both the channel count and the resolution.
    """
    branches = [_conv_bn(cin, cout, 3, stride, relu=relu),
                _conv_bn(cin, cout, 5, stride, relu=relu),
                _depthwise_separable(cin, cout, stride, relu=relu)]
    if cin == cout and stride == 1:
        branches.append(nn.Identity())
    return PITSuperNetModule(branches)


class SimpleSuperNet(nn.Module):
    """The seed example of docs/behaviour.md §7: one supernet over a 32×64×64 input."""

    N_SUPERNETS = 1
    INPUT_SHAPE = (32, 64, 64)

    def __init__(self) -> None:
        super().__init__()
        self.conv = PITSuperNetModule([
            nn.Conv2d(32, 32, 3, padding='same'),
            nn.Sequential(nn.Conv2d(32, 32, 3, padding='same'),
                          nn.Conv2d(32, 32, 3, padding='same')),
            nn.Conv2d(32, 32, 5, padding='same'),
            nn.Identity()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _linear_supernet(channels: int) -> PITSuperNetModule:
    """Seed-style supernet whose branches are all linear in the input."""
    return PITSuperNetModule([
        nn.Conv2d(channels, channels, 3, padding='same'),
        nn.Conv2d(channels, channels, 5, padding='same'),
        nn.Sequential(nn.Conv2d(channels, channels, 3, padding='same'),
                      nn.Conv2d(channels, channels, 3, padding='same')),
        nn.Identity()])


class LinearBranchSuperNet(nn.Module):
    """A small classifier whose supernets offer only linear branches (the seed's choices).

    Stem conv, ``n_blocks`` supernets {conv3×3, conv5×5, conv3×3→conv3×3, Identity}
    separated by ReLU, global average pooling and a linear classifier.
    """

    N_SUPERNETS = 3  # with the default n_blocks; instances record their own count
    INPUT_SHAPE = (3, 32, 32)

    def __init__(self, channels: int = 16, n_blocks: int = N_SUPERNETS,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.N_SUPERNETS = n_blocks
        self.stem = nn.Conv2d(3, channels, 3, padding='same')
        self.blocks = nn.ModuleList(_linear_supernet(channels) for _ in range(n_blocks))
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(x))
        for block in self.blocks:
            x = self.relu(block(x))
        return self.classifier(torch.flatten(self.pool(x), 1))


class _ResidualStack(nn.Module):
    """One ResNet-8 stack: two searchable conv blocks plus a (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_block_supernet(cin, cout, stride, relu=True)
        self.conv2 = conv_block_supernet(cout, cout, 1, relu=False)
        if stride == 1 and cin == cout:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet8SuperNet(nn.Module):
    """MLPerf Tiny image classification ResNet-8 (CIFAR-10, 3×32×32) as a supernet."""

    N_SUPERNETS = 7
    INPUT_SHAPE = (3, 32, 32)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_block_supernet(3, 16, 1)
        self.stack1 = _ResidualStack(16, 16, 1)
        self.stack2 = _ResidualStack(16, 32, 2)
        self.stack3 = _ResidualStack(32, 64, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stack3(self.stack2(self.stack1(self.stem(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))


class DSCNNSuperNet(nn.Module):
    """MLPerf Tiny keyword spotting DS-CNN (1×49×10 MFCCs, 12 classes) as a supernet.

    The strided input block and the four depthwise-separable blocks each become a supernet.
    """

    N_SUPERNETS = 5
    INPUT_SHAPE = (1, 49, 10)

    def __init__(self, channels: int = 64, num_classes: int = 12) -> None:
        super().__init__()
        self.stem = conv_block_supernet(1, channels, 2)
        self.dropout1 = nn.Dropout(0.2)
        self.blocks = nn.Sequential(*(conv_block_supernet(channels, channels, 1)
                                      for _ in range(4)))
        self.dropout2 = nn.Dropout(0.4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout2(self.blocks(self.dropout1(self.stem(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))


# (output channels at width 1.0, stride) of the 13 depthwise-separable blocks of MobileNetV1
_MOBILENET_V1_BLOCKS: Sequence[Tuple[int, int]] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


class MobileNetV1SuperNet(nn.Module):
    """MLPerf Tiny visual wake words MobileNetV1 (width 0.25, 3×96×96, 2 classes) as a supernet.

    The strided stem and the 13 depthwise-separable blocks each become a supernet.
    """

    N_SUPERNETS = 14
    INPUT_SHAPE = (3, 96, 96)

    def __init__(self, width: float = 0.25, num_classes: int = 2) -> None:
        super().__init__()
        channels = int(32 * width)
        self.stem = conv_block_supernet(3, channels, 2)
        blocks = []
        for base, stride in _MOBILENET_V1_BLOCKS:
            out = int(base * width)
            blocks.append(conv_block_supernet(channels, out, stride))
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.classifier(torch.flatten(self.pool(x), 1))


class TCN(nn.Module):
    """Temporal convolutional network for PIT alone: causal dilated Conv1d blocks.

    Each block left-pads by (k−1)·d (causal), convolves, then BN + ReLU; a global average
    pool and a linear layer classify the sequence.
    """

    INPUT_SHAPE = (4, 128)

    def __init__(self, in_channels: int = 4, channels: Sequence[int] = (32, 32, 64, 64),
                 kernel_size: int = 5, dilations: Sequence[int] = (1, 2, 4, 8),
                 num_classes: int = 8) -> None:
        super().__init__()
        if len(channels) != len(dilations):
            raise ValueError(
                f"TCN: channels ({len(channels)} entries) and dilations ({len(dilations)} "
                "entries) must have the same length")
        layers = []
        cin = in_channels
        for cout, dilation in zip(channels, dilations):
            layers += [nn.ConstantPad1d(((kernel_size - 1) * dilation, 0), 0.0),
                       nn.Conv1d(cin, cout, kernel_size, dilation=dilation),
                       nn.BatchNorm1d(cout), nn.ReLU()]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class Workload(NamedTuple):
    """A benchmark workload: how to build the model and the shape of one input (no batch)."""

    factory: Callable[[], nn.Module]
    input_shape: Tuple[int, ...]


def workloads() -> Dict[str, Workload]:
    """Registry used by the benchmarks: name → (model factory, input shape).

    Models containing ``PITSuperNetModule``s are searched with ``PITSuperNet``; the TCN with
    ``PIT``.
    """
    return {
        "seed": Workload(SimpleSuperNet, SimpleSuperNet.INPUT_SHAPE),
        "linear_supernet": Workload(LinearBranchSuperNet, LinearBranchSuperNet.INPUT_SHAPE),
        "resnet8": Workload(ResNet8SuperNet, ResNet8SuperNet.INPUT_SHAPE),
        "dscnn": Workload(DSCNNSuperNet, DSCNNSuperNet.INPUT_SHAPE),
        "mobilenetv1": Workload(MobileNetV1SuperNet, MobileNetV1SuperNet.INPUT_SHAPE),
        "tcn": Workload(TCN, TCN.INPUT_SHAPE),
    }


def count_supernets(model: nn.Module) -> int:
    """Number of ``PITSuperNetModule``s in ``model`` (to tell supernet workloads from PIT ones)."""
    return sum(isinstance(m, PITSuperNetModule) for m in model.modules())
