"""Residual temporal convolutional networks (causal, dilated Conv1d blocks)."""
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class TCNBlock(nn.Module):
    """pad -> conv -> BN -> ReLU -> pad -> conv -> BN, plus a 1x1 conv shortcut when widths
    differ, then ReLU of the sum."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int) -> None:
        super().__init__()
        pad = (kernel - 1) * dilation
        self.pad0 = nn.ConstantPad1d((pad, 0), 0.0)
        self.conv0 = nn.Conv1d(cin, cout, kernel, dilation=dilation)
        self.bn0 = nn.BatchNorm1d(cout)
        self.pad1 = nn.ConstantPad1d((pad, 0), 0.0)
        self.conv1 = nn.Conv1d(cout, cout, kernel, dilation=dilation)
        self.bn1 = nn.BatchNorm1d(cout)
        self.downsample = nn.Conv1d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn0(self.conv0(self.pad0(x))))
        y = self.bn1(self.conv1(self.pad1(y)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(y + shortcut)


class ResidualTCN(nn.Module):
    """Stack of TCN blocks, flatten, Linear, log_softmax."""

    def __init__(self, kernels: Sequence[int] = (3, 5, 9), widths: Sequence[int] = (8, 12, 12),
                 dilations: Sequence[int] = (1, 2, 1), in_channels: int = 3, length: int = 24,
                 classes: int = 5) -> None:
        super().__init__()
        self.input_shape = (in_channels, length)
        blocks = []
        cin = in_channels
        for k, w, d in zip(kernels, widths, dilations):
            blocks.append(TCNBlock(cin, w, k, d))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin * length, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(x)
        return F.log_softmax(self.fc(torch.flatten(y, 1)), dim=1)


def tcn_regular() -> ResidualTCN:
    """Kernels 3, 5, 9 (of the form 2^n + 1)."""
    return ResidualTCN(kernels=(3, 5, 9))


def tcn_irregular() -> ResidualTCN:
    """Kernels 4, 6, 7 (not of the form 2^n + 1)."""
    return ResidualTCN(kernels=(4, 6, 7), dilations=(1, 1, 2))
