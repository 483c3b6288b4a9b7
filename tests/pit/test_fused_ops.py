"""The fused mask path (plinio.ops.pit_masked_weight) equals the op-by-op reference path."""
import pytest
import torch

from plinio.methods.pit.nn.module import PITWeightedModule, fused_ops_available
from tests.pit.conftest import build, randomize_masks


def _set_fused(pit, value):
    for m in pit.seed.modules():
        if isinstance(m, PITWeightedModule):
            m.use_fused_ops = value


def _forward_backward(pit, x):
    pit.zero_grad(set_to_none=True)
    out = pit(*x)
    (out.square().mean() + 1e-4 * pit.get_regularization_loss()).backward()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in pit.named_parameters()}
    return out.detach(), grads


def test_fused_ops_are_the_default():
    assert fused_ops_available()
    _, pit, _ = build("toy")
    assert all(m.use_fused_ops for m in pit.seed.modules() if isinstance(m, PITWeightedModule))
    _, ref, _ = build("toy", fast=False)
    assert not any(m.use_fused_ops for m in ref.seed.modules() if isinstance(m, PITWeightedModule))


@pytest.mark.parametrize("name", ["toy", "tcn_irregular", "dscnn", "bn_after_add"])
def test_fused_and_reference_paths_agree(name):
    _, pit, x = build(name)
    randomize_masks(pit, 7)
    pit.train()
    _set_fused(pit, False)
    out_ref, g_ref = _forward_backward(pit, x)
    _set_fused(pit, True)
    out_fused, g_fused = _forward_backward(pit, x)
    assert torch.allclose(out_fused, out_ref, rtol=1e-5, atol=1e-6)
    for key, ref in g_ref.items():
        fused = g_fused[key]
        assert (ref is None) == (fused is None), key
        if ref is not None:
            assert torch.allclose(fused, ref, rtol=1e-4, atol=1e-5), key


def test_frozen_kinds_get_zero_gradient_on_the_fused_path():
    _, pit, x = build("tcn", train_rf=False)
    pit(*x).sum().backward()
    conv = pit.seed.get_submodule("blocks.0.conv0")
    assert conv.timestep_masker.beta.grad is not None
    assert torch.count_nonzero(conv.timestep_masker.beta.grad) == 0
    assert conv.dilation_masker.gamma.grad is not None
    assert conv.out_features_masker.alpha.grad is not None
