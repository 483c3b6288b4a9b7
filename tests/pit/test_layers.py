"""Standalone PIT layers (docs/behaviour.md §2.1.1): constructor contract, forward, costs, *_opt."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from plinio.methods.pit.nn import (PITBatchNorm1d, PITBatchNorm2d, PITConv1d, PITConv2d, PITDilationMasker,
                                   PITFeaturesMasker, PITLinear, PITTimestepMasker)


def _conv1d(cin=3, cout=6, k=5, **kw):
    conv = nn.Conv1d(cin, cout, k, **kw)
    return conv, PITConv1d(conv, 12, PITFeaturesMasker(cout), PITTimestepMasker(k), PITDilationMasker(k))


def _set(p, values):
    with torch.no_grad():
        p.copy_(torch.tensor(values, dtype=p.dtype))


def test_conv1d_matches_plain_layer_and_is_bit_identical_on_kept_rows():
    conv, layer = _conv1d(padding=2)
    x = torch.randn(2, 3, 12)
    assert torch.equal(layer(x), conv(x))
    _set(layer.out_features_masker.alpha, [1, 0, 1, 0, 0.2, 1])
    kept = [0, 2, 5]
    plain = nn.Conv1d(3, 3, 5, padding=2)
    with torch.no_grad():
        plain.weight.copy_(conv.weight[kept])
        plain.bias.copy_(conv.bias[kept])
    y = layer(x)
    assert torch.equal(y[:, kept], plain(x))
    assert torch.equal(y[:, [1, 3, 4]], torch.zeros(2, 3, 12)), "pruned channels (bias too) output exactly 0"


def test_layer_copies_weights_and_leaves_the_wrapped_layer_alone():
    conv, layer = _conv1d()
    with torch.no_grad():
        layer.weight.mul_(2)
    assert not torch.equal(layer.weight, conv.weight)


def test_conv1d_time_mask_weights():
    conv, layer = _conv1d(k=5, padding=2)
    _set(layer.timestep_masker.beta, [0, 0, 0.6, 0, 0])   # keep taps 2..4
    _set(layer.dilation_masker.gamma, [0, 1, 1])          # keep distances multiple of 2
    assert layer.time_mask.tolist() == [0, 0, 1, 0, 1]
    w, _ = layer.masked_weight_and_bias()
    assert torch.equal(w[..., [0, 1, 3]], torch.zeros(6, 3, 3))
    assert torch.equal(w[..., [2, 4]], conv.weight[..., [2, 4]])
    assert layer.kernel_size_opt == (2,)
    assert layer.dilation_opt == (2,)


def test_conv1d_k_eff_and_costs():
    conv, layer = _conv1d(cin=3, cout=6, k=5)
    assert layer.k_eff.item() == pytest.approx(5.0)
    assert layer.get_size().item() == pytest.approx(3 * 6 * 5)
    assert layer.get_macs().item() == pytest.approx(3 * 6 * 5 * 12)
    _set(layer.timestep_masker.beta, [0.5, 0.5, 0.5, 0.5, 0.5])
    tm = layer.timestep_masker
    expected_beta = torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0]) / torch.arange(1, 6)
    dm_theta = layer.dilation_masker.theta / layer.dilation_masker.terms
    assert torch.allclose(tm.theta, torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0]))
    assert layer.k_eff.item() == pytest.approx((expected_beta * dm_theta).sum().item())
    assert layer.get_size_binarized().item() == pytest.approx(3 * 6 * 4)


def test_conv2d_linear_costs_and_summary():
    conv = nn.Conv2d(4, 8, 3, padding=1)
    layer = PITConv2d(conv, 5, 6, PITFeaturesMasker(8))
    _set(layer.out_features_masker.alpha, [0.1, 0.1, 0.2, 0.3, 1, 1, 1, 1])
    assert layer.out_features_opt == 4
    assert layer.get_size().item() == pytest.approx(4 * (0.1 + 0.1 + 0.2 + 0.3 + 4) * 9)
    assert layer.get_macs_binarized().item() == pytest.approx(4 * 4 * 9 * 30)
    assert layer.summary() == {"in_features": 4, "out_features": 4, "type": "PITConv2d"}
    lin = PITLinear(nn.Linear(10, 3), PITFeaturesMasker(3))
    assert lin.get_size().item() == 30 and lin.get_macs().item() == 30
    x = torch.randn(2, 10)
    lin.use_fused_ops = False
    assert torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))


def test_depthwise_conv_divides_by_groups():
    conv = nn.Conv2d(8, 8, 3, groups=8, padding=1)
    layer = PITConv2d(conv, 4, 4, PITFeaturesMasker(8))
    assert layer.get_size().item() == pytest.approx(8 * 9)


def test_grouped_convolution_rejected_with_clear_message():
    conv = nn.Conv2d(8, 8, 3, groups=2)
    with pytest.raises(ValueError, match="grouped convolutions.*groups=2"):
        PITConv2d(conv, 4, 4, PITFeaturesMasker(8))


def test_masker_size_mismatch_rejected():
    with pytest.raises(ValueError, match="out_features_masker has 5 channels"):
        PITLinear(nn.Linear(3, 4), PITFeaturesMasker(5))
    with pytest.raises(ValueError, match="timestep_masker has rf=3"):
        PITConv1d(nn.Conv1d(2, 2, 5), 4, PITFeaturesMasker(2), PITTimestepMasker(3), PITDilationMasker(5))


@pytest.mark.parametrize("cls, plain, shape", [(PITBatchNorm1d, nn.BatchNorm1d, (4, 6, 7)),
                                               (PITBatchNorm2d, nn.BatchNorm2d, (4, 6, 3, 3))])
def test_batchnorm_matches_plain_in_train_and_eval(cls, plain, shape):
    bn = plain(6)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    layer = cls(bn)
    x = torch.randn(*shape)
    assert torch.allclose(layer(x), bn(x), atol=1e-6)
    assert torch.allclose(layer.running_mean, bn.running_mean)
    layer.eval()
    bn.eval()
    assert torch.allclose(layer(x), bn(x), atol=1e-6)
    assert layer.get_size().item() == 12 and layer.get_macs().item() == 6
