"""Small models exercising one graph rule each: concatenation, BN after add, several inputs."""
from typing import Tuple

import torch
import torch.nn as nn


class ConcatModel(nn.Module):
    """Two conv branches concatenated on channels (dim 1 and dim -3), a conv on the
    concatenation, spatial mean, Linear."""

    input_shape = (3, 12, 12)

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 5, 3, padding=1)
        self.c = nn.Conv2d(11, 8, 3, padding=1)
        self.d = nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.a(x), self.b(x)], dim=1).relu()
        y = torch.cat((self.c(y), self.d(x)), dim=-3)
        return self.fc(y.mean(dim=(2, 3)))


class BNAfterAddModel(nn.Module):
    """Two Conv1d summed, then a BatchNorm that cannot be folded, ReLU, conv, view-flatten, Linear."""

    input_shape = (4, 16)

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv1d(4, 8, 3, padding=1)
        self.c1 = nn.Conv1d(4, 8, 5, padding=2)
        self.bn = nn.BatchNorm1d(8)
        self.c2 = nn.Conv1d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.c0(x) + self.c1(x)))
        y = self.c2(y)
        return self.fc(y.view(y.size(0), -1))


class MultiInputModel(nn.Module):
    """A Conv1d path on a signal and a Linear path on a feature vector, concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc_side = nn.Linear(5, 7)
        self.head = nn.Linear(13, 3)

    def forward(self, signal: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        a = torch.flatten(self.pool(torch.relu(self.conv(signal))), 1)
        b = torch.relu(self.fc_side(side))
        return self.head(torch.cat([a, b], dim=1))

    @staticmethod
    def example(batch: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(batch, 2, 10), torch.randn(batch, 5)
