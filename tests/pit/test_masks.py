"""Mask math of the maskers and the binarizer (docs/behaviour.md §5.1)."""
import pytest
import torch
import torch.nn as nn

from plinio.methods.pit.nn import (PITBinarizer, PITConv1d, PITDilationMasker, PITFeaturesMasker,
                                   PITFrozenDilationMasker, PITFrozenFeaturesMasker, PITFrozenTimestepMasker,
                                   PITTimestepMasker)
from plinio.methods.pit.nn.dilation_masker import dilation_levels


def _set(masker, values):
    with torch.no_grad():
        masker.raw.copy_(torch.tensor(values))


@pytest.mark.parametrize("beta, theta, mask", [
    ([0.25, 0.4, 0.4], [0.25, 0.65, 1.65], [0, 1, 1]),
    ([0.0, 0.1, 0.4], [0.0, 0.1, 1.1], [0, 0, 1]),
])
def test_timestep_theta_and_mask(beta, theta, mask):
    m = PITTimestepMasker(3)
    _set(m, beta)
    assert torch.allclose(m.theta, torch.tensor(theta))
    assert PITBinarizer.apply(m.theta, 0.5).tolist() == mask


@pytest.mark.parametrize("gamma, theta, mask", [
    ([0.2, 0.5], [1.2, 0.2, 1.2], [1, 0, 1]),
    ([0.6, 0.4], [1.6, 0.6, 1.6], [1, 1, 1]),
])
def test_dilation_theta_and_mask(gamma, theta, mask):
    m = PITDilationMasker(3)
    _set(m, gamma)
    assert torch.allclose(m.theta, torch.tensor(theta))
    assert PITBinarizer.apply(m.theta, 0.5).tolist() == mask


@pytest.mark.parametrize("k, levels", [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (7, 3), (9, 4), (17, 5)])
def test_dilation_levels(k, levels):
    assert dilation_levels(k) == levels
    assert PITDilationMasker(k).gamma.shape == (levels,)


@pytest.mark.parametrize("k", [2, 3, 4, 5, 6, 7, 8, 9, 17])
def test_dilation_anchored_at_newest_tap(k):
    """Pruning the first m dilation levels keeps exactly the taps at distances multiple of 2^m."""
    m = PITDilationMasker(k)
    levels = m.size
    for pruned in range(levels):
        values = [0.0] * pruned + [1.0] * (levels - pruned)
        _set(m, values)
        kept = PITBinarizer.apply(m.theta, 0.5).tolist()
        expected = [1.0 if (k - 1 - j) % (2 ** pruned) == 0 else 0.0 for j in range(k)]
        assert kept == expected
        assert kept[-1] == 1.0


def test_keep_alive_with_tiny_parameters():
    f, t, d = PITFeaturesMasker(6), PITTimestepMasker(5), PITDilationMasker(5)
    for m in (f, t, d):
        _set(m, [0.05] * m.size)
    assert PITBinarizer.apply(f.theta, 0.5).tolist() == [0, 0, 0, 0, 0, 1]
    time = PITBinarizer.apply(t.theta, 0.5) * PITBinarizer.apply(d.theta, 0.5)
    assert time.tolist() == [0, 0, 0, 0, 1]


def test_keep_alive_channels_count():
    f = PITFeaturesMasker(6, keep_alive_channels=2)
    _set(f, [0.0] * 6)
    assert f.theta.tolist() == [0, 0, 0, 0, 1, 1]


def test_binarizer_straight_through():
    x = torch.tensor([0.2, 0.7, 0.5], requires_grad=True)
    y = PITBinarizer.apply(x, 0.5)
    assert y.tolist() == [0.0, 1.0, 0.0]
    y.backward(torch.tensor([1.0, 2.0, 3.0]))
    assert x.grad.tolist() == [1.0, 2.0, 3.0]


def test_theta_uses_absolute_value():
    f = PITFeaturesMasker(3)
    _set(f, [-0.9, 0.3, -2.0])
    assert torch.allclose(f.theta, torch.tensor([0.9, 0.3, 1.0]))


@pytest.mark.parametrize("cls, attr", [(PITFrozenFeaturesMasker, "alpha"), (PITFrozenTimestepMasker, "beta"),
                                       (PITFrozenDilationMasker, "gamma")])
def test_frozen_maskers_keep_everything_and_have_no_parameters(cls, attr):
    m = cls(5)
    assert list(m.parameters()) == []
    assert torch.all(PITBinarizer.apply(m.theta, 0.5) == 1)
    m.trainable = True
    assert not m.trainable
    assert attr in dict(m.named_buffers())


def test_trainable_switch_is_state_and_zeroes_the_gradient():
    f = PITFeaturesMasker(4)
    f.trainable = False
    assert "trainable_flag" in f.state_dict() and not bool(f.state_dict()["trainable_flag"])
    assert f.alpha.requires_grad, "requires_grad must never be toggled"
    f.theta.sum().backward()
    assert f.alpha.grad is not None and torch.count_nonzero(f.alpha.grad) == 0
    g = PITFeaturesMasker(4)
    g.load_state_dict(f.state_dict())
    assert not g.trainable
    g.trainable = True
    g.theta.sum().backward()
    assert torch.count_nonzero(g.alpha.grad) > 0


def test_replaced_parameter_takes_effect_at_next_forward():
    conv = nn.Conv1d(2, 4, 3, padding=1)
    layer = PITConv1d(conv, 8, PITFeaturesMasker(4), PITTimestepMasker(3), PITDilationMasker(3))
    layer.use_fused_ops = False
    x = torch.randn(2, 2, 8)
    before = layer(x)
    layer.out_features_masker.alpha = nn.Parameter(torch.tensor([0.0, 1.0, 0.0, 1.0]))
    after = layer(x)
    assert torch.equal(after[:, [0, 2]], torch.zeros_like(after[:, [0, 2]]))
    assert torch.equal(after[:, [1, 3]], before[:, [1, 3]])
