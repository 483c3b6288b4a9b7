"""Bad input (docs/behaviour.md §8 and issue 7, item 3): either correct behaviour, or an exception whose
message names the module / node and says what to change; the user's model is never
modified. Supernet-specific cases live in test_bad_supernet_input.py."""
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reliability_checks import assert_export_matches, expect_error
from plinio.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from plinio.methods import PIT
from plinio.methods.pit.nn import PITConv1d
from plinio.methods.pit.nn.dilation_masker import PITDilationMasker
from plinio.methods.pit.nn.features_masker import PITFeaturesMasker
from plinio.methods.pit.nn.timestep_masker import PITTimestepMasker

SHAPE = (3, 16)


class Seq1d(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, width, 3, padding="same")
        self.conv2 = nn.Conv1d(width, 8, 5, padding="same")
        self.fc = nn.Linear(8 * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv2(F.relu(self.conv(x))))
        return self.fc(torch.flatten(y, 1))


# ------------------------------------------------------------------ input_shape


@pytest.mark.parametrize("shape, exc, pattern", [
    ([[3, 16]], TypeError, r"input_shape must be a tuple of ints.*input_example"),
    ((3, -16), ValueError, r"input_shape must hold positive sizes.*\(3, -16\)"),
    ((3, 0), ValueError, r"input_shape must hold positive sizes.*\(3, 0\)"),  # zero-sized dim
    ((3.0, 16), TypeError, r"input_shape must be a tuple of ints"),
    ("3,16", TypeError, r"input_shape must be a tuple of ints"),
])
def test_malformed_input_shape(shape, exc, pattern) -> None:
    expect_error(Seq1d(), lambda m: PIT(m, input_shape=shape), exc, pattern)


def test_input_shape_of_the_wrong_rank_names_the_first_layer() -> None:
    expect_error(Seq1d(), lambda m: PIT(m, input_shape=(3, 16, 16)), ValueError,
                 r"cannot run on an input of shape \[\(1, 3, 16, 16\)\]", r"module 'conv' failed",
                 r"input_shape")


def test_input_shape_the_model_cannot_run_on_names_the_failing_layer() -> None:
    expect_error(Seq1d(), lambda m: PIT(m, input_shape=(3, 15)), ValueError,
                 r"cannot run on an input of shape \[\(1, 3, 15\)\]", r"module 'fc' failed",
                 r"input_shape")


def test_input_example_on_another_device_is_explained() -> None:
    example = torch.randn((1,) + SHAPE, device="meta")
    expect_error(Seq1d(), lambda m: PIT(m, input_example=example), ValueError,
                 r"device", r"meta", r"cpu")


def test_zero_sized_layer_is_refused_naming_it() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns when initialising zero-element weights
        model = nn.Sequential(nn.Conv1d(3, 0, 3), nn.Flatten(), nn.Linear(0, 2))
    expect_error(model, lambda m: PIT(m, input_shape=SHAPE), ValueError,
                 r"module '0' failed", r"weight of size \[0, 3, 3\]")


# ------------------------------------------------------------------ options


def test_unknown_regularizer() -> None:
    expect_error(Seq1d(), lambda m: PIT(m, input_shape=SHAPE, regularizer="flops"),
                 ValueError, r"'flops'", r"'size'", r"'macs'")
    search = PIT(Seq1d(), input_shape=SHAPE, regularizer="macs")
    with pytest.raises(ValueError, match=r"'params'.*'size', 'macs'"):
        search.regularizer = "params"
    assert search.regularizer == "macs"


# ------------------------------------------------------------------ graphs plinio cannot handle


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 3, padding="same")
        self.fc = nn.Linear(8 * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:
            y = y * 2
        return self.fc(torch.flatten(y, 1))


def test_data_dependent_control_flow() -> None:
    expect_error(DataDependent(), lambda m: PIT(m, input_shape=SHAPE), ValueError,
                 r"DataDependent", r"control flow", r"rewrite the forward")


class UnknownChannelOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 3, padding="same")
        self.conv2 = nn.Conv1d(8, 8, 3, padding="same")
        self.fc = nn.Linear(8 * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.roll(self.conv(x), 1, dims=1)  # mixes channels in a way plinio cannot model
        return self.fc(torch.flatten(self.conv2(y), 1))


def test_unsupported_graph_node() -> None:
    expect_error(UnknownChannelOp(), lambda m: PIT(m, input_shape=SHAPE),
                 NotImplementedError, r"node 'roll'", r"channel semantics",
                 r"channel_rules|rewrite")


class Recurrent(nn.Module):
    def __init__(self, layer: str) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 3, padding="same")
        self.seq = (nn.LSTM(8, 8, batch_first=True) if layer == "lstm"
                    else nn.MultiheadAttention(8, 2, batch_first=True))
        self.fc = nn.Linear(8 * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).transpose(1, 2)
        y = self.seq(y)[0] if isinstance(self.seq, nn.LSTM) else self.seq(y, y, y)[0]
        return self.fc(torch.flatten(y, 1))


@pytest.mark.parametrize("layer, cls", [("lstm", "LSTM"), ("mha", "MultiheadAttention")])
def test_unsupported_layers_outside_supernets(unchanged, layer: str, cls: str) -> None:
    """Either a clear error naming the layer and the way out, and that way out works, or a
    conversion whose export is exact."""
    model = Recurrent(layer)
    check = unchanged(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            search = PIT(model, input_shape=SHAPE)
    except (ValueError, NotImplementedError) as err:
        assert re.search(rf"'seq'.*{cls}.*exclude", str(err), re.S), str(err)
        search = PIT(model, input_shape=SHAPE, exclude_names=("seq",))
    check()
    assert_export_matches(search, SHAPE)


# ------------------------------------------------------------------ in-place ops: correct


class InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 3, padding="same")
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv1d(8, 8, 3, padding="same")
        self.fc = nn.Linear(8 * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(x))
        z = self.conv2(y)
        z += y                 # residual written in place
        z.relu_()
        z.mul_(0.5)
        return self.fc(torch.flatten(z, 1))


def test_in_place_ops_on_traced_values_are_handled(unchanged) -> None:
    model = InPlace()
    check = unchanged(model)
    search = PIT(model, input_shape=SHAPE)
    check()
    conv, conv2 = search.seed.conv, search.seed.conv2
    assert conv.out_features_masker is conv2.out_features_masker, \
        "the in-place residual add must share one channel mask"
    assert_export_matches(search, SHAPE)


# ------------------------------------------------------------------ grouped convolutions


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.grouped = nn.Conv1d(4, 8, 3, padding="same", groups=2)
        self.fc = nn.Linear(8 * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.grouped(x), 1))


def test_grouped_conv_is_skipped_with_a_warning(unchanged) -> None:
    model = Grouped()
    check = unchanged(model)
    with pytest.warns(UserWarning, match=r"'grouped'.*groups=2"):
        search = PIT(model, input_shape=(4, 16))
    check()
    assert "grouped" not in search.arch_summary()
    assert type(search.seed.grouped) is nn.Conv1d
    assert_export_matches(search, (4, 16))


def test_user_placed_grouped_pit_layer_is_refused() -> None:
    conv = nn.Conv1d(4, 8, 3, groups=2)
    expect_error(conv,
                 lambda c: PITConv1d(c, 14, PITFeaturesMasker(8), PITTimestepMasker(3),
                                     PITDilationMasker(3)),
                 ValueError, r"PITConv1d", r"groups=2", r"[Ee]xclude")


# ------------------------------------------------------------------ dtypes


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models(unchanged, dtype: torch.dtype) -> None:
    model = Seq1d().to(dtype)
    check = unchanged(model)
    search = PIT(model, input_shape=SHAPE)
    check()
    size = search.get_size()
    assert size.dtype == torch.float32 and size.dim() == 0 and torch.isfinite(size)
    assert_export_matches(search, SHAPE, dtype=dtype, rtol=1e-2)


# ------------------------------------------------------------------ state from elsewhere


def test_load_state_dict_from_a_different_architecture(tmp_path) -> None:
    search = PIT(Seq1d(8), input_shape=SHAPE)
    other = PIT(Seq1d(6), input_shape=SHAPE)
    before = {k: v.clone() for k, v in search.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"seed\.conv\.weight"):
        search.load_state_dict(other.state_dict())
    for key, value in before.items():
        assert torch.equal(search.state_dict()[key], value), f"{key} was partly loaded"
    path = tmp_path / "other.ckpt"
    save_checkpoint(path, other)
    with pytest.raises(CheckpointError, match=r"key 'seed\.conv\.weight' has shape \(6, 3, 3\)"
                                              r" in checkpoint .* but \(8, 3, 3\)"):
        load_checkpoint(path, search)
    for key, value in before.items():
        assert torch.equal(search.state_dict()[key], value)


# ------------------------------------------------------------------ numerical safety


def test_nan_in_a_mask_parameter_is_reported_at_cost_and_export() -> None:
    search = PIT(Seq1d(), input_shape=SHAPE)
    with torch.no_grad():
        search.seed.conv.out_features_masker.alpha[2] = float("nan")
    with pytest.raises(FloatingPointError, match=r"seed\.conv\.out_features_masker\.alpha"):
        search.get_regularization_loss()
    with pytest.raises(FloatingPointError, match=r"seed\.conv\.out_features_masker\.alpha"):
        search.arch_export()
