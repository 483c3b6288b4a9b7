"""Every cost call of a CPU model reports a NaN/Inf architectural parameter by name, also
where the cost itself stays finite (hard mode, before the first forward, binarized masks);
on an accelerator only with debug checks on (README "Checkpoints, resume and distributed
search", numerical safety). On/off switches accept booleans only."""
import re
from typing import Callable, Iterator, List, Tuple

import numpy as np
import pytest
import torch
import torch.nn as nn

from plinio import safety
from plinio.methods import PIT, PITSuperNet
from plinio.methods.pit.nn import PITFeaturesMasker, PITTimestepMasker
from plinio.methods.pit_supernet import PITSuperNetModule


class SuperNetModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(3, 4, 3, padding=1)
        self.sn = PITSuperNetModule([nn.Conv1d(4, 4, 3, padding=1), nn.Conv1d(4, 4, 5, padding=2),
                                     nn.Identity()])
        self.head = nn.Linear(4 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(torch.relu(self.sn(torch.relu(self.stem(x)))), 1))


class PlainModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 6, 3, padding=1)
        self.head = nn.Linear(6 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(torch.relu(self.conv(x)), 1))


@pytest.fixture(autouse=True)
def _no_debug_checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(safety.DEBUG_ENV_VAR, raising=False)
    safety.set_debug_checks(None)
    yield
    safety.set_debug_checks(None)


def _cost_calls(search) -> List[Tuple[str, Callable[[], torch.Tensor]]]:
    """(regex of the call named in the message, the call) for every cost call."""
    calls = [(name, getattr(search, name)) for name in ("get_size", "get_macs")]
    calls.append((r"get_\S+", search.get_regularization_loss))  # names the cost it evaluates
    if isinstance(search, PIT):
        calls += [("get_size_binarized", search.get_size_binarized),
                  ("get_macs_binarized", search.get_macs_binarized)]
    else:
        calls.append(("get_total_icv", search.get_total_icv))
    return calls


def _supernet(fast: bool) -> PITSuperNet:
    torch.manual_seed(0)
    return PITSuperNet(SuperNetModel(), input_shape=(3, 8), fast=fast)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("when, bad", [("before_first_forward", float("nan")), ("hard_mode", float("inf"))])
def test_supernet_alpha_is_reported_where_the_cost_stays_finite(fast, bad, when):
    search = _supernet(fast)
    if when == "hard_mode":
        search.update_softmax_options(hard=True)
        search(torch.randn(2, 3, 8))
    with torch.no_grad():
        search.seed.sn.sn_combiner.alpha[1] = bad
    assert torch.isfinite(search.seed.sn.sn_combiner.theta_alpha).all()  # so the costs stay finite
    for name, call in _cost_calls(search):
        with pytest.raises(FloatingPointError, match=rf"PITSuperNet\.{name}: architectural parameter "
                                                     r"'seed\.sn\.sn_combiner\.alpha' holds 1 "):
            call()


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("param", ["conv.out_features_masker.alpha", "conv.timestep_masker.beta",
                                   "conv.dilation_masker.gamma"])
def test_pit_mask_parameter_is_reported_by_every_cost_call(fast, param):
    torch.manual_seed(0)
    search = PIT(PlainModel(), input_shape=(3, 8), fast=fast)
    with torch.no_grad():
        search.seed.get_parameter(param)[0] = float("nan")
    for name, call in _cost_calls(search):
        with pytest.raises(FloatingPointError, match=rf"PIT\.{name}: architectural parameter 'seed\.{param}'"):
            call()


def test_supernet_masks_inside_branches_are_checked_too():
    search = _supernet(True)
    with torch.no_grad():
        search.seed.stem.out_features_masker.alpha[0] = float("-inf")
    with pytest.raises(FloatingPointError, match=r"'seed\.stem\.out_features_masker\.alpha' holds 1 -Inf"):
        search.get_macs()


def test_a_replaced_mask_parameter_is_the_one_checked():
    """The check reads the parameters at call time: a parameter assigned after the wrapper
    was built is checked, and it is the one named."""
    torch.manual_seed(0)
    search = PIT(PlainModel(), input_shape=(3, 8))
    masker = search.seed.conv.out_features_masker
    search.get_macs()
    masker.alpha = nn.Parameter(torch.full_like(masker.alpha, float("nan")))
    with pytest.raises(FloatingPointError, match=r"'seed\.conv\.out_features_masker\.alpha' holds 6 NaN"):
        search.get_macs()
    assert any(p is masker.alpha for p in search.nas_parameters())


@pytest.mark.gpu
def test_on_cuda_the_check_needs_debug_checks():
    search = PITSuperNet(SuperNetModel(), input_shape=(3, 8)).cuda()
    with torch.no_grad():
        search.seed.sn.sn_combiner.alpha[0] = float("nan")
    assert torch.isfinite(search.get_size())  # before the first forward: θ = 1/n, no sync, no check
    safety.set_debug_checks(True)
    with pytest.raises(FloatingPointError, match=r"seed\.sn\.sn_combiner\.alpha"):
        search.get_size()


# ---- switches: booleans only ------------------------------------------------------------------
NOT_BOOLS = ["no", 0, None, torch.tensor(True)]


@pytest.mark.parametrize("value", NOT_BOOLS)
def test_supernet_switches_refuse_non_booleans_and_keep_their_state(value):
    search = _supernet(True)
    combiner = search.seed.sn.sn_combiner
    if value is not None:  # None means "leave as is" in update_softmax_options
        with pytest.raises(TypeError, match=r"PITSuperNet\.update_softmax_options: hard must be True or False, "
                                            + re.escape(f"got {value!r}")):
            search.update_softmax_options(temperature=2.0, hard=value)
        assert combiner.hard_softmax is False and not bool(combiner.hard) and combiner.softmax_temperature == 1.0
        with pytest.raises(TypeError, match="PITSuperNetCombiner: hard must be True or False"):
            combiner.hard_softmax = value
        with pytest.raises(TypeError, match="PITSuperNetCombiner: hard must be True or False"):
            PITSuperNetModule([nn.Identity()]).update_softmax_options(hard=value)
    with pytest.raises(TypeError, match="PITSuperNet: train_selection must be True or False"):
        search.train_selection = value
    with pytest.raises(TypeError, match="PITSuperNetCombiner: train_selection must be True or False"):
        combiner.train_selection = value
    with pytest.raises(TypeError, match="PITSuperNet: fast must be True or False"):
        search.fast = value
    assert search.train_selection is True and search.fast is True and combiner.hard_softmax is False
    with pytest.raises(TypeError, match="PITSuperNetCombiner: hard_softmax must be True or False"):
        PITSuperNetModule([nn.Identity()], hard_softmax=value)
    with pytest.raises(TypeError, match="PITSuperNetCombiner: gumbel_softmax must be True or False"):
        PITSuperNetModule([nn.Identity()], gumbel_softmax=value)


@pytest.mark.parametrize("value", NOT_BOOLS)
def test_pit_switches_refuse_non_booleans(value):
    torch.manual_seed(0)
    search = PIT(PlainModel(), input_shape=(3, 8))
    for name in ("train_features", "train_rf", "train_dilation"):
        with pytest.raises(TypeError, match=f"PIT: {name} must be True or False"):
            setattr(search, name, value)
        assert getattr(search, name) is True
    with pytest.raises(TypeError, match="PITFeaturesMasker: trainable must be True or False"):
        search.seed.conv.train_features = value
    with pytest.raises(TypeError, match="PITTimestepMasker: trainable must be True or False"):
        PITTimestepMasker(3, trainable=value)
    with pytest.raises(TypeError, match="PITFeaturesMasker: trainable must be True or False"):
        PITFeaturesMasker(4, value)


@pytest.mark.parametrize("name", ["train_features", "train_rf", "train_dilation"])
def test_pit_constructor_switches_refuse_strings(name):
    with pytest.raises(TypeError, match=f"PIT: {name} must be True or False, got 'no'"):
        PIT(PlainModel(), input_shape=(3, 8), **{name: "no"})


def test_numpy_booleans_are_booleans():
    search = _supernet(True)
    search.update_softmax_options(hard=np.bool_(True))
    assert search.seed.sn.sn_combiner.hard_softmax is True and bool(search.seed.sn.sn_combiner.hard)
    search.train_selection = np.array([1, 2]).sum() > 5
    assert search.train_selection is False


@pytest.mark.parametrize("sparse", [False, True])
def test_a_cost_overflowing_half_precision_says_how_to_keep_it_finite(sparse: bool) -> None:
    """A search converted with ``.half()`` computes its costs in float16, whose range (65504)
    the MACs of a real layer exceed: the error names the dtype and the remedy, and the remedy
    works (float32 architectural parameters beside float16 layers)."""
    torch.manual_seed(0)
    search = PIT(nn.Sequential(nn.Conv1d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv1d(64, 64, 3, padding=1)),
                 input_shape=(3, 32), sparse=sparse).half()
    with pytest.raises(FloatingPointError, match=r"get_macs: the cost is inf .*torch\.float16.*65504.*float32"):
        search.get_macs()
    for p in search.nas_parameters():
        p.data = p.data.float()
    y = search(torch.randn(2, 3, 32).half())
    assert y.dtype == torch.float16 and search.get_macs().dtype == torch.float32
    assert torch.isfinite(search.get_regularization_loss())
