"""Exclusions and the bad-input errors of docs/behaviour.md §8 that concern PIT: clear message, model untouched."""
import copy

import pytest
import torch
import torch.nn as nn

from plinio.methods import PIT
from plinio.methods.pit.nn import PITConv1d, PITConv2d, PITLinear, PITModule
from tests.models import BNAfterAddModel, ToyModel, tcn_regular


def _check_untouched(model, action):
    state = copy.deepcopy(model.state_dict())
    structure = repr(model)
    training = model.training
    action()
    assert repr(model) == structure and model.training == training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_exclude_names_and_types():
    model = tcn_regular()
    pit = PIT(model, input_shape=model.input_shape, exclude_names=("blocks.0.conv0", "fc"))
    modules = dict(pit.seed.named_modules())
    assert type(modules["blocks.0.conv0"]) is nn.Conv1d
    assert type(modules["fc"]) is nn.Linear
    converted = {n for n, m in modules.items() if isinstance(m, PITModule)}
    expected = {n for n, m in model.named_modules() if type(m) in (nn.Conv1d, nn.Linear)} - {"blocks.0.conv0", "fc"}
    assert converted == expected
    # the excluded conv's input keeps every channel
    assert "blocks.0.bn0" in modules, "a BN after an excluded layer is not folded"
    pit2 = PIT(model, input_shape=model.input_shape, exclude_types=(nn.Linear,))
    assert not any(isinstance(m, PITLinear) for m in pit2.seed.modules())
    assert isinstance(pit2.seed.get_submodule("blocks.0.conv0"), PITConv1d)


def test_excluded_consumer_freezes_its_producer():
    pit = PIT(ToyModel(), input_shape=(3, 15), exclude_names=("conv2",))
    assert pit.seed.conv0.out_features_masker.frozen
    x = torch.randn(2, 3, 15)
    pit.eval()
    exported = pit.arch_export().eval()
    assert torch.allclose(exported(x), pit(x), atol=1e-6)


def test_autoconvert_false_keeps_only_user_pit_layers():
    from plinio.methods.pit.nn import PITFeaturesMasker

    class UserPlaced(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = PITConv2d(nn.Conv2d(3, 8, 3, padding=1), 6, 6, PITFeaturesMasker(8))
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)))

    pit = PIT(UserPlaced(), input_shape=(3, 6, 6), autoconvert_layers=False)
    assert list(pit.arch_summary()) == ["conv"]
    assert type(pit.seed.head) is nn.Conv2d
    assert pit.get_size().item() == 3 * 8 * 9
    assert pit.seed.conv.out_features_masker.frozen, "feeds an unconverted layer"


@pytest.mark.parametrize("shape, exc, match", [
    ([[3, 15]], TypeError, "input_shape must be a tuple of ints"),
    ("3x15", TypeError, "input_shape must be a tuple of ints"),
    ((3, -15), ValueError, "positive sizes"),
    ((4, 15), ValueError, r"cannot run on an input of shape \[\(1, 4, 15\)\].*module 'conv0'"),
])
def test_bad_input_shape(shape, exc, match):
    model = ToyModel()
    _check_untouched(model, lambda: pytest.raises(exc, PIT, model, input_shape=shape).match(match))


def test_unknown_regularizer():
    model = ToyModel()
    _check_untouched(model, lambda: pytest.raises(ValueError, PIT, model, input_shape=(3, 15),
                                                  regularizer="flops").match(r"'flops'.*\('size', 'macs'\)"))
    pit = PIT(model, input_shape=(3, 15))
    with pytest.raises(ValueError, match="allowed values"):
        pit.regularizer = "energy"
    assert pit.regularizer == "size"


def test_grouped_conv_is_skipped_with_a_warning():
    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.c0 = nn.Conv2d(4, 8, 3, padding=1)
            self.g = nn.Conv2d(8, 8, 3, groups=2, padding=1)

        def forward(self, x):
            return self.g(self.c0(x))

    with pytest.warns(UserWarning, match="'g': grouped convolution"):
        pit = PIT(Grouped(), input_shape=(4, 5, 5))
    assert type(pit.seed.g) is nn.Conv2d
    assert pit.seed.c0.out_features_masker.frozen


def test_data_dependent_control_flow():
    class Inner(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x
            return -x

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(2, 2, 1)
            self.branchy = Inner()

        def forward(self, x):
            return self.branchy(self.conv(x))

    model = Outer()
    _check_untouched(model, lambda: pytest.raises(ValueError, PIT, model, input_shape=(2, 4)).match(
        "inside module 'branchy'.*control flow"))


def test_unsupported_node():
    class Weird(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(2, 4, 1)

        def forward(self, x):
            return torch.cumsum(self.conv(x), dim=1)

    with pytest.raises(NotImplementedError, match=r"node 'cumsum'.*cumsum.*unknown"):
        PIT(Weird(), input_shape=(2, 4))

    class WeirdModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(2, 4, 1)
            self.rnn = nn.GRU(4, 4)

        def forward(self, x):
            return self.rnn(self.conv(x))[0]

    with pytest.raises(NotImplementedError, match="node 'rnn'.*module type GRU"):
        PIT(WeirdModule(), input_shape=(2, 4))


def test_conv_with_bn_and_other_users():
    class TwoUsers(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(2, 4, 3, padding=1)
            self.bn = nn.BatchNorm1d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = TwoUsers()
    _check_untouched(model, lambda: pytest.raises(ValueError, PIT, model, input_shape=(2, 6)).match(
        "'conv' is followed by BatchNorm 'bn'.*also used by"))


def test_unknown_exclude_name():
    with pytest.raises(ValueError, match=r"exclude_names \['nope'\]"):
        PIT(ToyModel(), input_shape=(3, 15), exclude_names=("nope",))


def test_nan_in_architectural_parameters():
    pit = PIT(ToyModel(), input_shape=(3, 15))
    with torch.no_grad():
        pit.seed.conv2.timestep_masker.beta[1] = float("nan")
    with pytest.raises(FloatingPointError, match=r"seed\.conv2\.timestep_masker\.beta"):
        pit.get_regularization_loss()


def test_load_state_dict_from_another_architecture():
    pit = PIT(ToyModel(), input_shape=(3, 15))
    model = BNAfterAddModel()
    other = PIT(model, input_shape=model.input_shape)
    with pytest.raises(RuntimeError, match="seed.conv0"):
        pit.load_state_dict(other.state_dict())


def test_excluding_an_unknown_module_keeps_its_input_channels():
    class Unflat(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(3, 8, 3, padding=1)
            self.unflat = nn.Unflatten(1, (2, 4))
            self.fc = nn.Linear(8 * 5, 2)

        def forward(self, x):
            return self.fc(torch.flatten(self.unflat(self.conv(x)), 1))

    model = Unflat()
    with pytest.raises(NotImplementedError, match="node 'unflat'.*Unflatten.*exclude"):
        PIT(model, input_shape=(3, 5))
    pit = PIT(model, input_shape=(3, 5), exclude_names=("unflat",))
    assert pit.seed.conv.out_features_masker.frozen
    assert isinstance(pit.seed.conv, PITConv1d) and pit.seed.fc.in_features_opt == 40
