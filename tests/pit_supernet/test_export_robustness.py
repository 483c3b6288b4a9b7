"""arch_export() never crashes and equals the search model (docs/behaviour.md §6) on supernets
whose branches end in BatchNorm and are followed by convolutions, with explicit paddings."""
import warnings

import torch
import torch.nn as nn
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from plinio.methods import PITSuperNet
from plinio.methods.pit_supernet import PITSuperNetModule
from sn_helpers import randomize_architecture


class ConvBNThenConv(nn.Module):
    """The reported case: the kept branch ends in Conv1d + BatchNorm1d, a Conv1d follows."""

    def __init__(self) -> None:
        super().__init__()
        self.sn = PITSuperNetModule([nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.BatchNorm1d(8)),
                                     nn.Conv1d(4, 8, 5, padding=2)])
        self.conv = nn.Conv1d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.sn(x))


def _assert_export_equals_search(search: PITSuperNet, x: torch.Tensor) -> nn.Module:
    search.eval()
    search.update_softmax_options(hard=True)
    exported = search.arch_export(add_bn=False).eval()
    with torch.no_grad():
        expected = search(x)
        got = exported(x)
    assert got.shape == expected.shape
    scale = max(float(expected.abs().max()), 1e-6)
    assert float((got - expected).abs().max()) <= 1e-4 * scale
    return exported


def test_kept_branch_ending_in_batchnorm_before_a_conv_exports_with_default_arguments():
    torch.manual_seed(0)
    search = PITSuperNet(ConvBNThenConv(), input_shape=(4, 16))
    with torch.no_grad():
        search.seed.sn.sn_combiner.alpha.copy_(torch.tensor([2.0, 0.0]))
    exported = search.arch_export()
    names = dict(exported.named_modules())
    assert type(names["sn.sn_input_layers.0.0_exported_bn"]) is nn.BatchNorm1d
    assert type(names["conv"]) is nn.Conv1d and "sn.sn_input_layers.1" not in names
    _assert_export_equals_search(search, torch.randn(3, 4, 16))


def _branch(kind: str, c: int, k: int) -> nn.Module:
    if kind == "conv_bn":
        return nn.Sequential(nn.Conv1d(c, c, k, padding="same"), nn.BatchNorm1d(c))
    if kind == "causal_conv_bn":
        return nn.Sequential(nn.ConstantPad1d((k - 1, 0), 0.0), nn.Conv1d(c, c, k), nn.BatchNorm1d(c))
    if kind == "dilated_causal":
        return nn.Sequential(nn.ZeroPad1d((2 * (k - 1), 0)), nn.Conv1d(c, c, k, dilation=2), nn.ReLU())
    if kind == "conv_bn_relu":
        return nn.Sequential(nn.Conv1d(c, c, k, padding="same", bias=False), nn.BatchNorm1d(c), nn.ReLU())
    return nn.Identity()


KINDS = ("conv_bn", "causal_conv_bn", "dilated_causal", "conv_bn_relu", "identity")


class RandomTCN(nn.Module):
    """Causal stem, supernet blocks (each followed by a padded conv + BN), linear head."""

    def __init__(self, blocks, channels: int, k: int, residual: bool) -> None:
        super().__init__()
        self.pad = nn.ConstantPad1d((k - 1, 0), 0.0)
        self.stem = nn.Conv1d(2, channels, k)
        self.blocks = nn.ModuleList(PITSuperNetModule([_branch(kind, channels, k) for kind in kinds])
                                    for kinds in blocks)
        self.after = nn.ModuleList(nn.Sequential(nn.ConstantPad1d((k - 1, 0), 0.0), nn.Conv1d(channels, channels, k),
                                                 nn.BatchNorm1d(channels))
                                   for _ in blocks)
        self.residual = residual
        self.head = nn.Linear(channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(self.pad(x)))
        for block, after in zip(self.blocks, self.after):
            y = after(block(x))
            x = torch.relu(x + y) if self.residual else torch.relu(y)
        return self.head(x.mean(dim=2))


@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(st.lists(st.sampled_from(KINDS), min_size=1, max_size=3), min_size=1, max_size=2),
       channels=st.integers(2, 5), k=st.sampled_from((2, 3, 5)), residual=st.booleans(),
       seed=st.integers(0, 10_000))
@example(blocks=[["conv_bn", "identity"]], channels=2, k=2, residual=True, seed=0)  # a group both read and written
def test_random_supernet_tcns_export_without_crash_and_equal_the_search_model(blocks, channels, k, residual,
                                                                              seed):
    torch.manual_seed(seed)
    model = RandomTCN(blocks, channels, k, residual)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = PITSuperNet(model, input_shape=(2, 12))
    randomize_architecture(search, seed)
    search.arch_export()  # default arguments (add_bn=True) must not crash either
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 'same' with even kernels
        _assert_export_equals_search(search, torch.randn(2, 2, 12))
