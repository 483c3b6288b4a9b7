"""Small searches shared by the resume and DDP tests and by their subprocess workers.

Everything here is deterministic given the torch seed, so that two runs (one interrupted and
resumed, or one split over processes) can be compared for equality.
"""
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import plinio.methods
from plinio.methods.pit_supernet import PITSuperNetModule

N_CLASSES = 4
SUPERNET_INPUT = (3, 8, 8)
PIT_INPUT = (3, 16)
KINDS = ("pit", "supernet")


class SuperNetCNN(nn.Module):
    """Stem conv, one Gumbel supernet of four candidates, linear head (BatchNorm optional:
    its running statistics are part of what a resume must restore)."""

    def __init__(self, batchnorm: bool) -> None:
        super().__init__()
        norm: Callable[[int], nn.Module] = nn.BatchNorm2d if batchnorm else (lambda c: nn.Identity())
        self.stem = nn.Conv2d(3, 8, 3, padding="same")
        self.stem_bn = norm(8)
        self.choice = PITSuperNetModule([
            nn.Sequential(nn.Conv2d(8, 8, 3, padding="same"), norm(8), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 8, 5, padding="same"), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 8, 3, padding="same", groups=8), nn.Conv2d(8, 8, 1)),
            nn.Identity(),
        ], gumbel_softmax=True)
        self.head = nn.Linear(8 * 4 * 4, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        x = F.max_pool2d(self.choice(x), 2)
        return self.head(torch.flatten(x, 1))


class ResidualTCN(nn.Module):
    """Two Conv1d with a residual add (shared channel mask), dilation and a folded BN."""

    def __init__(self, batchnorm: bool) -> None:
        super().__init__()
        self.conv0 = nn.Conv1d(3, 8, 5, padding="same")
        self.bn0 = nn.BatchNorm1d(8) if batchnorm else nn.Identity()
        self.conv1 = nn.Conv1d(8, 8, 3, padding="same", dilation=2)
        self.conv2 = nn.Conv1d(8, 6, 3, padding="same")
        self.head = nn.Linear(6 * 16, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn0(self.conv0(x)))
        y = F.relu(self.conv1(y) + y)
        return self.head(torch.flatten(F.relu(self.conv2(y)), 1))


def build_search(kind: str, seed: int, batchnorm: bool = True) -> nn.Module:
    """A fresh model and wrapper; ``seed`` decides the initial weights."""
    torch.manual_seed(seed)
    if kind == "pit":
        return plinio.methods.PIT(ResidualTCN(batchnorm), input_shape=PIT_INPUT, regularizer="macs")
    if kind == "supernet":
        return plinio.methods.PITSuperNet(SuperNetCNN(batchnorm), input_shape=SUPERNET_INPUT,
                           regularizer="macs")
    raise ValueError(f"unknown search kind {kind!r}; use one of {KINDS}")


def input_shape(kind: str) -> Tuple[int, ...]:
    """Shape of one input of the model of ``kind`` (no batch dimension)."""
    return PIT_INPUT if kind == "pit" else SUPERNET_INPUT


def make_optimizers(search: nn.Module) -> List[torch.optim.Optimizer]:
    """The usual recipe: one optimizer for the weights, one for the architecture."""
    return [torch.optim.Adam(search.net_parameters(), lr=1e-2),
            torch.optim.Adam(search.nas_parameters(), lr=5e-2)]


def apply_schedule(search: nn.Module, kind: str, step: int, freeze: bool = True) -> None:
    """Search-phase switches changed at fixed steps. They are set only at the step where
    they change, so a run resumed later must get them from the checkpoint. ``freeze=False``
    leaves every PIT mask kind and the branch selection trainable."""
    if kind == "supernet":
        if step == 0:
            search.update_softmax_options(temperature=1.0)
        elif step == 2:
            search.update_softmax_options(temperature=0.5, hard=True)
            if freeze:
                search.train_selection = False
        elif step == 4:
            search.update_softmax_options(temperature=0.25)
            search.train_selection = True
    elif freeze:
        if step == 1:
            search.train_dilation = False
        elif step == 2:
            search.train_rf = False


def search_step(search: nn.Module, model: nn.Module, optimizers: List[torch.optim.Optimizer],
                kind: str, step: int, x: torch.Tensor, y: torch.Tensor,
                strength: float = 1e-4, freeze: bool = True) -> float:
    """One search step (schedule, forward, regularizer, backward, both optimizers).
    ``model`` is what is called (the wrapper itself, or a DDP wrapper around it)."""
    apply_schedule(search, kind, step, freeze)
    loss = F.cross_entropy(model(x), y) + strength * search.get_regularization_loss()
    for opt in optimizers:
        opt.zero_grad()
    loss.backward()
    for opt in optimizers:
        opt.step()
    return float(loss.detach())


def random_batch(kind: str, batch: int = 4) -> Tuple[torch.Tensor, torch.Tensor]:
    """A batch drawn from the global torch generator (so RNG restore matters)."""
    return (torch.randn(batch, *input_shape(kind)), torch.randint(0, N_CLASSES, (batch,)))


def run(search: nn.Module, optimizers: List[torch.optim.Optimizer], kind: str,
        steps: range) -> List[float]:
    """Steps with data from the global generator; returns the losses."""
    losses = []
    for step in steps:
        x, y = random_batch(kind)
        losses.append(search_step(search, search, optimizers, kind, step, x, y))
    return losses


def state_copy(search: nn.Module) -> Dict[str, torch.Tensor]:
    """Detached copy of everything in the search's state_dict."""
    return {key: value.detach().clone() for key, value in search.state_dict().items()}
