"""The docs/behaviour.md §4.1 toy model (size 1460, MACs 9980 for input (3, 15))."""
import torch
import torch.nn as nn


class ToyModel(nn.Module):
    """conv0 + conv1 (summed), ReLU, MaxPool1d(2), conv2, flatten, Linear(140, 2)."""

    input_shape = (3, 15)

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv1d(3, 10, 3, padding="same")
        self.conv1 = nn.Conv1d(3, 10, 3, padding="same")
        self.pool = nn.MaxPool1d(2)
        self.conv2 = nn.Conv1d(10, 20, 5, padding="same")
        self.fc = nn.Linear(140, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv0(x) + self.conv1(x))
        y = self.conv2(self.pool(y))
        return self.fc(torch.flatten(y, 1))
