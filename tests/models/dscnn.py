"""DS-CNN for keyword spotting (MLPerf Tiny shape): input 1x49x10, 12 classes."""
import torch
import torch.nn as nn


class DSBlock(nn.Module):
    """Depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False)
        self.dw_bn = nn.BatchNorm2d(width)
        self.pw = nn.Conv2d(width, width, 1, bias=False)
        self.pw_bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.dw_bn(self.dw(x)))
        return self.relu(self.pw_bn(self.pw(x)))


class DSCNN(nn.Module):
    """Strided 10x4 conv + BN + ReLU, four DS blocks, average pool, Linear(64, 12)."""

    input_shape = (1, 49, 10)

    def __init__(self, width: int = 64, classes: int = 12) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, (10, 4), stride=2, padding=(5, 1))
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.blocks = nn.Sequential(*[DSBlock(width) for _ in range(4)])
        self.pool = nn.AvgPool2d((25, 5))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv(x)))
        x = self.pool(self.blocks(x))
        return self.fc(self.flatten(x))
