"""Property: on random supernets with random α and masks, the hard-mode eval search model and
its export (add_bn=False) compute the same function (docs/behaviour.md §6)."""
import warnings

import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plinio.methods import PITSuperNet
from plinio.methods.pit_supernet import PITSuperNetModule
from sn_helpers import randomize_architecture

BRANCH_KINDS = ("conv3", "conv5_bn_relu", "dw_sep", "wide_chain", "identity")


def _branch(kind: str, c: int) -> nn.Module:
    if kind == "conv3":
        return nn.Conv2d(c, c, 3, padding=1)
    if kind == "conv5_bn_relu":
        return nn.Sequential(nn.Conv2d(c, c, 5, padding=2, bias=False), nn.BatchNorm2d(c),
                             nn.ReLU())
    if kind == "dw_sep":
        return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c), nn.ReLU(),
                             nn.Conv2d(c, c, 1))
    if kind == "wide_chain":
        return nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.ReLU(), nn.Conv2d(2 * c, c, 3, padding=1))
    return nn.Identity()


class _RandomNet(nn.Module):
    def __init__(self, blocks, channels: int, residual: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.blocks = nn.ModuleList(
            PITSuperNetModule([_branch(k, channels) for k in kinds]) for kinds in blocks)
        self.residual = residual
        self.head = nn.Linear(channels, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for block in self.blocks:
            y = block(x)
            x = x + y if self.residual else y
        return self.head(x.mean(dim=(2, 3)))


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(st.lists(st.sampled_from(BRANCH_KINDS), min_size=1, max_size=4),
                       min_size=1, max_size=3),
       channels=st.integers(2, 6), residual=st.booleans(), seed=st.integers(0, 10_000))
def test_hard_eval_export_equals_search_model(blocks, channels, residual, seed):
    torch.manual_seed(seed)
    model = _RandomNet(blocks, channels, residual)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = PITSuperNet(model, input_shape=(3, 6, 6))
    randomize_architecture(search, seed)
    search.eval()
    search.update_softmax_options(hard=True)
    exported = search.arch_export(add_bn=False).eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        expected = search(x)
        got = exported(x)
    assert got.shape == expected.shape
    scale = max(float(expected.abs().max()), 1e-6)
    assert float((got - expected).abs().max()) <= 1e-4 * scale
