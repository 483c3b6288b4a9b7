"""The graph engine's contract with supernet combiners: a leaf whose class has
``plinio_merges_inputs = True`` and takes one list of tensors is an n-ary add."""
from typing import List

import torch
import torch.nn as nn

from plinio.methods import PIT
from plinio.methods.pit.nn import PITConv2d


class MergingLeaf(nn.Module):
    """Stand-in for a supernet combiner: a softmax-weighted sum of its list argument."""

    plinio_merges_inputs = True

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.linspace(0.5, 1.5, n))

    def forward(self, ys: List[torch.Tensor]) -> torch.Tensor:
        theta = torch.softmax(self.weights, 0)
        out = theta[0] * ys[0]
        for i in range(1, len(ys)):
            out = out + theta[i] * ys[i]
        return out


class ChoiceBlock(nn.Module):
    """Traced through: branches in a ModuleList, mixed by the merging leaf."""

    def __init__(self, branches: List[nn.Module]) -> None:
        super().__init__()
        self.sn_input_layers = nn.ModuleList(branches)
        self.sn_combiner = MergingLeaf(len(branches))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sn_combiner([branch(x) for branch in self.sn_input_layers])


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.choice = ChoiceBlock([nn.Conv2d(8, 8, 3, padding=1),
                                   nn.Sequential(nn.Conv2d(8, 8, 5, padding=2), nn.ReLU()),
                                   nn.Identity()])
        self.head = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.stem(x))
        y = self.choice(y) + y
        return self.fc(self.head(y).mean(dim=(2, 3)))


def test_merging_leaf_shares_one_mask_with_identity_and_residual():
    pit = PIT(Net(), input_shape=(3, 6, 6))
    get = pit.seed.get_submodule
    stem_masker = get("stem").out_features_masker
    assert isinstance(get("choice.sn_input_layers.0"), PITConv2d)
    assert get("choice.sn_input_layers.0").out_features_masker is stem_masker
    assert get("choice.sn_input_layers.1.0").out_features_masker is stem_masker
    assert not stem_masker.frozen
    assert get("head").input_features_calculator.masker is stem_masker
    assert type(get("choice.sn_combiner")) is MergingLeaf


def test_merging_leaf_export_is_equivalent():
    pit = PIT(Net(), input_shape=(3, 6, 6))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in pit.named_nas_parameters():
            p.copy_(torch.rand(p.shape, generator=gen))
    pit.eval()
    exported = pit.arch_export().eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        ref = pit(x)
        assert torch.allclose(exported(x), ref, atol=1e-5 * ref.abs().max().item())
    kept = pit.seed.stem.out_features_opt
    assert exported.get_submodule("choice.sn_input_layers.0").weight.shape[:2] == (kept, kept)
