"""A supernet: n alternative branches on one input, mixed by a PITSuperNetCombiner."""
from typing import Iterable, Iterator, Optional

import torch
import torch.fx
import torch.nn as nn

from .combiner import PITSuperNetCombiner


class PITSuperNetModule(nn.Module):
    """Alternative branches (``sn_input_layers``) whose outputs are mixed by ``sn_combiner``.

    The forward is deliberately a plain list comprehension plus one combiner call, so that
    torch.fx traces through it and the graph engine sees every branch and the combiner.
    """

    def __init__(self, input_layers: Iterable[nn.Module], gumbel_softmax: bool = False,
                 hard_softmax: bool = False) -> None:
        super().__init__()
        if isinstance(input_layers, nn.Module) and not isinstance(input_layers, nn.ModuleList):
            raise TypeError(
                "PITSuperNetModule: input_layers must be an iterable of nn.Module branches "
                f"(e.g. a list), got a single {type(input_layers).__name__}; wrap it in a list")
        try:
            layers = list(input_layers)
        except TypeError:
            raise TypeError(
                "PITSuperNetModule: input_layers must be an iterable of nn.Module branches, "
                f"got {type(input_layers).__name__}") from None
        if len(layers) < 1:
            raise ValueError(
                "PITSuperNetModule: input_layers is empty; a supernet needs at least one "
                "branch (pass a list of nn.Module alternatives)")
        for i, layer in enumerate(layers):
            if not isinstance(layer, nn.Module):
                raise TypeError(
                    f"PITSuperNetModule: branch {i} is a {type(layer).__name__}, not an "
                    "nn.Module; every branch must be an nn.Module")
        self.sn_input_layers = nn.ModuleList(layers)
        self.sn_combiner = PITSuperNetCombiner(len(layers), gumbel_softmax, hard_softmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run every branch on ``x`` and return their θ-weighted sum (docs/behaviour.md §3)."""
        if not isinstance(x, (torch.Tensor, torch.fx.Proxy)):
            raise TypeError(
                f"PITSuperNetModule with {len(self.sn_input_layers)} branches expects a single "
                f"tensor input, got {type(x).__name__}; pass one torch.Tensor")
        return self.sn_combiner([branch(x) for branch in self.sn_input_layers])

    def __getitem__(self, idx: int) -> nn.Module:
        """Branch ``idx``."""
        return self.sn_input_layers[idx]

    def __len__(self) -> int:
        return len(self.sn_input_layers)

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.sn_input_layers)

    @property
    def n_layers(self) -> int:
        """Number of branches."""
        return len(self.sn_input_layers)

    @property
    def gumbel_softmax(self) -> bool:
        """Whether θ is sampled with Gumbel noise in training mode."""
        return self.sn_combiner.gumbel_softmax

    @property
    def hard_softmax(self) -> bool:
        """Whether θ is the one-hot argmax."""
        return self.sn_combiner.hard_softmax

    @property
    def softmax_temperature(self) -> float:
        """Current softmax temperature."""
        return self.sn_combiner.softmax_temperature

    @property
    def theta_alpha(self) -> torch.Tensor:
        """Current mixing vector θ of the combiner."""
        return self.sn_combiner.theta_alpha

    @property
    def train_selection(self) -> bool:
        """Whether the branch choice α is trained."""
        return self.sn_combiner.train_selection

    @train_selection.setter
    def train_selection(self, value: bool) -> None:
        self.sn_combiner.train_selection = value

    def update_softmax_options(self, temperature: Optional[float] = None,
                               hard: Optional[bool] = None) -> None:
        """Set softmax temperature and/or hard flag of this supernet."""
        self.sn_combiner.update_softmax_options(temperature=temperature, hard=hard)

    def best_layer_index(self) -> int:
        """Index of the branch export keeps (argmax α)."""
        return self.sn_combiner.best_layer_index()
