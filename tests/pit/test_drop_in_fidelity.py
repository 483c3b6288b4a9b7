"""PIT layers built the way PLiNIO users build them run unchanged (docs/behaviour.md §2.1.1):
a receptive-field or dilation masker of rf 1 on a larger kernel means "not searched", a
user-placed frozen channel masker is kept, integer types other than int are accepted."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

import plinio.ops as ops
from plinio.methods import PIT
from plinio.methods.pit.nn import (PITConv1d, PITDilationMasker, PITFeaturesMasker, PITFrozenDilationMasker,
                                   PITFrozenFeaturesMasker, PITTimestepMasker)

# (kernel, timestep masker rf, dilation masker rf): the issue's case first
MASKER_CASES = [(3, 3, 1), (3, 1, 3), (3, 1, 1), (5, 5, 1), (5, 1, 5), (9, 1, 1), (4, 4, 1)]


def _layer(k: int, rf_t: int, rf_d: int, seed: int = 0) -> PITConv1d:
    torch.manual_seed(seed)
    conv = nn.Conv1d(3, 8, k, padding="same")
    return PITConv1d(conv, 16, PITFeaturesMasker(8), PITTimestepMasker(rf_t), PITDilationMasker(rf_d))


def _randomize(module: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("alpha", "beta", "gamma")):
                p.copy_(torch.rand(p.shape, generator=gen))


def test_issue_case_builds_and_computes_the_plain_conv():
    torch.manual_seed(0)
    conv = nn.Conv1d(3, 32, 3, padding="same")
    layer = PITConv1d(conv, 32, PITFeaturesMasker(32), PITTimestepMasker(3), PITDilationMasker(1))
    assert layer.dilation_masker.gamma.shape == (1,)
    x = torch.randn(2, 3, 32)
    assert torch.equal(layer(x), conv(x))
    assert layer.summary() == {"in_features": 3, "out_features": 32, "kernel_size": (3,), "dilation": (1,),
                               "type": "PITConv1d"}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("k, rf_t, rf_d", MASKER_CASES)
def test_rf_one_masker_keeps_every_tap_of_its_dimension(k, rf_t, rf_d):
    layer = _layer(k, rf_t, rf_d)
    with torch.no_grad():  # whatever its value, the single entry is forced to 1
        for masker, rf in ((layer.timestep_masker, rf_t), (layer.dilation_masker, rf_d)):
            if rf == 1:
                masker.raw.fill_(0.0)
    _randomize(layer, 1)
    for masker, rf in ((layer.timestep_masker, rf_t), (layer.dilation_masker, rf_d)):
        if rf == 1:
            assert torch.equal(masker.tap_theta(k), torch.ones(k))
    searched_t = layer.timestep_masker.tap_theta(k).detach() > 0.5 if rf_t == k else torch.ones(k, dtype=torch.bool)
    searched_d = layer.dilation_masker.tap_theta(k).detach() > 0.5 if rf_d == k else torch.ones(k, dtype=torch.bool)
    assert torch.equal(layer.time_mask.bool(), searched_t & searched_d)
    assert layer.kernel_size_opt == (int((searched_t & searched_d).sum()),)
    if rf_d == 1:
        assert layer.dilation_opt == layer.dilation
    if rf_t == 1 and rf_d == 1:
        assert layer.kernel_size_opt == (k,) and float(layer.k_eff.detach()) == k


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("k, rf_t, rf_d", MASKER_CASES)
@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_fused_masks_equal_the_maskers_with_rf_one(k, rf_t, rf_d, backend):
    if backend not in ops.available_backends("cpu"):
        pytest.skip(f"{backend} backend not built")
    reference = _layer(k, rf_t, rf_d)
    _randomize(reference, 2)
    reference.use_fused_ops = False
    fused = copy.deepcopy(reference)
    fused.use_fused_ops = True
    x = torch.randn(2, 3, 16)
    ops.set_backend(backend)
    try:
        results = []
        for layer in (reference, fused):
            out = layer(x)
            (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
            results.append((out.detach(), {n: p.grad for n, p in layer.named_parameters()}))
    finally:
        ops.set_backend(None)
    (out_r, grads_r), (out_f, grads_f) = results
    assert torch.equal(out_r, out_f)
    for name, grad in grads_r.items():
        assert grads_f[name] is not None and torch.allclose(grad, grads_f[name], atol=1e-6), name
    for name, masker in (("timestep_masker.beta", rf_t), ("dilation_masker.gamma", rf_d)):
        if masker == 1:  # not searched: a zero gradient (not None) on both paths
            assert torch.equal(grads_f[name], torch.zeros(1))


@pytest.mark.parametrize("rf", [2, 4])
def test_other_size_mismatches_are_clear_errors(rf):
    with pytest.raises(ValueError, match=rf"dilation_masker has rf={rf} but the kernel has 3 taps; give it "
                                         r"rf=3 to search that dimension, or rf=1 to keep it fixed"):
        PITConv1d(nn.Conv1d(3, 8, 3), 14, PITFeaturesMasker(8), PITTimestepMasker(3), PITDilationMasker(rf))
    with pytest.raises(ValueError, match=rf"timestep_masker has rf={rf} but the kernel has 3 taps"):
        PITConv1d(nn.Conv1d(3, 8, 3), 14, PITFeaturesMasker(8), PITTimestepMasker(rf), PITDilationMasker(3))


def test_numpy_and_torch_integers_are_accepted_as_sizes():
    layer = PITConv1d(nn.Conv1d(3, 8, 5), 12, PITFeaturesMasker(np.int64(8)), PITTimestepMasker(np.int32(5)),
                      PITDilationMasker(torch.tensor(1).item()))
    assert layer.timestep_masker.rf == 5 and layer.out_features_masker.out_channels == 8
    for bad in (True, 0, 2.5, "3"):
        with pytest.raises(ValueError, match="must be a positive int"):
            PITTimestepMasker(bad)


class UserPlaced(nn.Module):
    """Two PLiNIO-style user-placed layers (rf-1 maskers, a frozen channel masker) and a plain conv."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = PITConv1d(nn.Conv1d(3, 16, 3, padding="same"), 24, PITFeaturesMasker(16), PITTimestepMasker(3),
                            PITDilationMasker(1))
        self.c1 = PITConv1d(nn.Conv1d(16, 16, 5, padding="same"), 24, PITFrozenFeaturesMasker(16),
                            PITTimestepMasker(1), PITFrozenDilationMasker(1))
        self.c2 = nn.Conv1d(16, 8, 9, padding="same")
        self.out = nn.Linear(8 * 24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c1(torch.relu(self.c0(x))))
        return self.out(torch.flatten(torch.relu(self.c2(y)), 1))


def _costs(pit: PIT):
    return [float(f().detach()) for f in (pit.get_size, pit.get_macs, pit.get_size_binarized, pit.get_macs_binarized)]


@pytest.mark.parametrize("autoconvert", [True, False])
def test_models_keep_user_placed_maskers_and_fast_equals_reference(autoconvert):
    torch.manual_seed(0)
    pit = PIT(UserPlaced(), input_shape=(3, 24), autoconvert_layers=autoconvert)
    seed = pit.seed
    assert seed.c0.dilation_masker.gamma.shape == (1,) and seed.c1.timestep_masker.beta.shape == (1,)
    assert type(seed.c1.out_features_masker) is PITFrozenFeaturesMasker  # the user's choice is kept
    assert isinstance(seed.c2, PITConv1d) == autoconvert
    _randomize(pit, 3)
    with torch.no_grad():
        seed.c0.out_features_masker.alpha.copy_(torch.tensor([0.0] * 8 + [1.0] * 8))  # c1 gets 8 channels
    fast = _costs(pit)
    pit.fast = False
    assert _costs(pit) == pytest.approx(fast, rel=1e-6)
    pit.fast = True
    assert seed.c1.kernel_size_opt == (5,) and seed.c1.dilation_opt == (1,)
    assert pit.arch_summary()["c1"]["in_features"] == 8
    assert float(seed.c1.k_eff.detach()) == 5.0
    pit.eval()
    exported = pit.arch_export(add_bn=False).eval()
    assert exported.c1.kernel_size == (5,) and exported.c1.weight.shape == (16, 8, 5)
    assert exported.c0.kernel_size == seed.c0.kernel_size_opt and exported.c0.dilation == (1,)
    x = torch.randn(3, 3, 24)
    with torch.no_grad():
        assert torch.allclose(exported(x), pit(x), atol=1e-5)


def test_rf_one_masker_parameters_get_zero_gradients_in_a_search_step():
    torch.manual_seed(0)
    pit = PIT(UserPlaced(), input_shape=(3, 24))
    loss = pit(torch.randn(2, 3, 24)).square().mean() + 1e-4 * pit.get_regularization_loss()
    loss.backward()
    grads = dict(pit.named_nas_parameters())
    assert torch.equal(grads["seed.c0.dilation_masker.gamma"].grad, torch.zeros(1))
    assert torch.equal(grads["seed.c1.timestep_masker.beta"].grad, torch.zeros(1))
    assert grads["seed.c0.timestep_masker.beta"].grad.abs().sum() > 0
