"""A small training setup for the checkpoint tests: a model whose step draws from every
generator a checkpoint restores (torch, numpy, python), two optimizers and a scheduler."""
import random
from typing import List, Tuple

import numpy as np
import torch
from torch import nn


class Net(nn.Module):
    """Conv + dropout + linear, with a step-counting buffer."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, hidden, 3, padding=1)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(hidden * 6, 3)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        return self.fc(self.drop(torch.relu(self.conv(x))).flatten(1))


def setup(seed: int = 0) -> Tuple[Net, torch.optim.Optimizer, torch.optim.Optimizer,
                                  torch.optim.lr_scheduler.LRScheduler]:
    """The net, Adam on the conv, SGD with momentum on the linear layer, StepLR on the SGD."""
    torch.manual_seed(seed)
    net = Net()
    opt_a = torch.optim.Adam(net.conv.parameters(), lr=1e-2)
    opt_b = torch.optim.SGD(net.fc.parameters(), lr=1e-1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt_b, step_size=2, gamma=0.5)
    return net, opt_a, opt_b, sched


def step(net: Net, opts: List[torch.optim.Optimizer], sched) -> float:
    """One step whose data come from torch, numpy and python RNGs (as a real loader)."""
    x = torch.randn(4, 2, 6) + float(np.random.rand()) + random.random()
    target = torch.randint(0, 3, (4,))
    loss = nn.functional.cross_entropy(net(x), target)
    for opt in opts:
        opt.zero_grad()
    loss.backward()
    for opt in opts:
        opt.step()
    sched.step()
    return loss.item()


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
