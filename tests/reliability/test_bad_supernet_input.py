"""Bad input around supernets (docs/behaviour.md §3 and §8, issue 7 item 3): correct behaviour, or an
exception naming the supernet / branch / node and what to change; the user's model is never
modified."""
from typing import Iterator, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plinio import safety
from plinio.checkpoint import StateDictMismatchError
from plinio.methods import PITSuperNet
from plinio.methods.pit_supernet import PITSuperNetModule
from reliability_checks import assert_export_matches, expect_error

SHAPE = (3, 8)


def conv(cout: int = 4, k: int = 3, **kwargs) -> nn.Conv1d:
    return nn.Conv1d(4, cout, k, padding="same", **kwargs)


class Net(nn.Module):
    """stem conv -> supernet -> linear head, on (3, 8) inputs."""

    def __init__(self, branches: Sequence[nn.Module]) -> None:
        super().__init__()
        self.stem = nn.Conv1d(3, 4, 3, padding="same")
        self.sn = PITSuperNetModule(list(branches))
        self.fc = nn.Linear(4 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.sn(F.relu(self.stem(x))), 1))


def test_branches_with_different_output_shapes() -> None:
    expect_error(Net([conv(), conv(cout=5)]), lambda m: PITSuperNet(m, input_shape=SHAPE),
                 ValueError, r"supernet 'sn'", r"branch 1", r"\(1, 5, 8\)", r"\(1, 4, 8\)")


def test_supernet_without_branches() -> None:
    with pytest.raises(ValueError, match=r"PITSuperNetModule.*empty.*at least one branch"):
        PITSuperNetModule([])


def test_single_branch_supernet_is_a_plain_layer_with_theta_one(unchanged) -> None:
    model = Net([conv()])
    check = unchanged(model)
    search = PITSuperNet(model, input_shape=SHAPE)
    check()
    search(torch.randn((2,) + SHAPE))
    assert torch.equal(search.seed.sn.sn_combiner.theta_alpha.detach(), torch.ones(1))
    # with one branch of untouched masks, the supernet costs exactly its static cost
    macs_branch = (4 * 4 * 3 + 4) * 8
    stem, head = 3 * 4 * 3 * 8, 4 * 8 * 2
    assert float(search.get_macs()) == pytest.approx(stem + macs_branch + head)
    assert_export_matches(search, SHAPE)


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(3, 4, 3, padding="same")
        self.sn = PITSuperNetModule([
            conv(k=1),
            PITSuperNetModule([conv(k=3), conv(k=5)]),
        ])
        self.fc = nn.Linear(4 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.sn(self.stem(x)), 1))


def test_nested_supernets() -> None:
    expect_error(Nested(), lambda m: PITSuperNet(m, input_shape=SHAPE), NotImplementedError,
                 r"'sn\.sn_input_layers\.1'", r"nested inside supernet 'sn'", r"flatten")


class Recurrent(nn.Module):
    """A branch made of a sequence layer working on (batch, time, channels)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.layer = (nn.LSTM(4, 4, batch_first=True) if kind == "lstm"
                      else nn.MultiheadAttention(4, 2, batch_first=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.transpose(1, 2)
        y = self.layer(y)[0] if self.kind == "lstm" else self.layer(y, y, y)[0]
        return y.transpose(1, 2)


@pytest.mark.parametrize("kind", ["lstm", "mha"])
def test_unsupported_layers_inside_supernets(unchanged, kind: str) -> None:
    """The sequence layer keeps its input width (its producers are not pruned) and the
    search stays exact."""
    model = Net([conv(), Recurrent(kind)])
    check = unchanged(model)
    search = PITSuperNet(model, input_shape=SHAPE)
    check()
    assert_export_matches(search, SHAPE)


class RollBranch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x, 1, dims=1)


class DataDependentBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = conv()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if y.mean() > 0 else -y


def test_unsupported_node_inside_a_branch() -> None:
    expect_error(Net([conv(), RollBranch()]), lambda m: PITSuperNet(m, input_shape=SHAPE),
                 NotImplementedError, r"node 'roll'", r"channel semantics")


def test_data_dependent_control_flow_inside_a_branch() -> None:
    expect_error(Net([conv(), DataDependentBranch()]),
                 lambda m: PITSuperNet(m, input_shape=SHAPE), ValueError,
                 r"'sn\.sn_input_layers\.1'", r"control flow")


def test_input_shape_of_the_wrong_rank_names_the_failing_layer() -> None:
    expect_error(Net([conv()]), lambda m: PITSuperNet(m, input_shape=(3, 8, 8)), ValueError,
                 r"in module .stem.", r"input_shape")


def test_grouped_conv_in_a_branch_is_left_plain(unchanged) -> None:
    model = Net([conv(groups=2), nn.Identity()])
    check = unchanged(model)
    with pytest.warns(UserWarning, match=r"'sn\.sn_input_layers\.0'.*groups=2"):
        search = PITSuperNet(model, input_shape=SHAPE)
    check()
    assert_export_matches(search, SHAPE)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_supernets(unchanged, dtype: torch.dtype) -> None:
    model = Net([conv(), conv(k=5), nn.Identity()]).to(dtype)
    check = unchanged(model)
    search = PITSuperNet(model, input_shape=SHAPE)
    check()
    size = search.get_size()
    assert size.dtype == torch.float32 and size.dim() == 0 and torch.isfinite(size)
    assert_export_matches(search, SHAPE, dtype=dtype, rtol=1e-2)


def test_load_state_dict_of_a_supernet_with_other_branches() -> None:
    search = PITSuperNet(Net([conv(), nn.Identity()]), input_shape=SHAPE)
    other = PITSuperNet(Net([conv(), nn.Identity(), conv(k=1)]), input_shape=SHAPE)
    before = {k: v.clone() for k, v in search.state_dict().items()}
    with pytest.raises(StateDictMismatchError, match=r"'seed\.sn\.sn_combiner\.alpha' has shape "
                                                     r"\(3,\) in the state_dict but \(2,\)"):
        search.load_state_dict(other.state_dict())
    for key, value in before.items():
        assert torch.equal(search.state_dict()[key], value), key


@pytest.fixture
def debug_checks() -> Iterator[None]:
    safety.set_debug_checks(True)
    yield None
    safety.set_debug_checks(None)


def test_non_finite_branch_preference_is_reported(debug_checks) -> None:
    search = PITSuperNet(Net([conv(), nn.Identity()]), input_shape=SHAPE)
    with torch.no_grad():
        search.seed.sn.sn_combiner.alpha[0] = float("inf")
    pattern = r"'seed\.sn\.sn_combiner\.alpha' holds 1 \+Inf"
    with pytest.raises(FloatingPointError, match=pattern):  # debug mode: every step
        search.get_regularization_loss()
    with pytest.raises(FloatingPointError, match=pattern):  # always at export
        search.arch_export()
    safety.set_debug_checks(False)
    search(torch.randn((2,) + SHAPE))  # θ is now NaN: the cost itself is not finite
    with pytest.raises(FloatingPointError, match=r"seed\.sn\.sn_combiner\.alpha"):
        search.get_regularization_loss()
