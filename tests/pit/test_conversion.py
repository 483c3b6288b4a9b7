"""Conversion of the fixture models: equivalence, costs, shared masks, input features."""
import copy

import pytest
import torch
import torch.nn as nn

from plinio.methods import PIT
from plinio.methods.pit.nn import (PITBatchNorm1d, PITConv1d, PITConv2d, PITFrozenFeaturesMasker, PITLinear,
                                   PITModule)
from tests.models import ToyModel
from tests.pit.conftest import build, randomize_masks


def test_untouched_masks_give_the_original_output(model_name):
    model, pit, x = build(model_name)
    model.eval()
    pit.eval()
    with torch.no_grad():
        assert torch.allclose(pit(*x), model(*x), atol=1e-5, rtol=1e-4)


def test_user_model_is_not_modified(model_name):
    torch.manual_seed(0)
    model, _, _ = build(model_name)
    snapshot = copy.deepcopy(model.state_dict())
    assert model.training
    model2, _, _ = build(model_name)
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshot[key])
    assert all(not type(m).__module__.startswith("plinio") for m in model.modules())


def test_toy_fixture_costs():
    pit = PIT(ToyModel(), input_shape=(3, 15))
    assert pit.get_size().item() == 1460
    assert pit.get_macs().item() == 9980
    for cost in (pit.get_size(), pit.get_macs()):
        assert cost.dtype == torch.float32 and cost.dim() == 0 and cost.requires_grad
    assert pit.get_regularization_loss().item() == 1460
    pit.regularizer = "macs"
    assert pit.get_regularization_loss().item() == 9980
    assert pit.get_size_binarized().item() == 1460
    assert pit.get_macs_binarized().item() == 9980


def test_qualified_names_and_layer_types():
    _, pit, _ = build("tcn")
    modules = dict(pit.seed.named_modules())
    assert isinstance(modules["blocks.0.conv0"], PITConv1d)
    assert isinstance(modules["blocks.0.downsample"], PITConv1d)
    assert isinstance(modules["fc"], PITLinear)
    assert "blocks.0.bn0" not in modules, "BN following a conv is folded"
    assert modules["blocks.0.conv0"].following_bn_args["eps"] == 1e-5
    assert set(pit.arch_summary()) == {n for n, m in modules.items() if isinstance(m, PITModule)}


def test_residual_adds_share_one_masker():
    _, pit, _ = build("tcn")
    get = pit.seed.get_submodule
    for i in range(2):
        assert get(f"blocks.{i}.conv1").out_features_masker is get(f"blocks.{i}.downsample").out_features_masker
    # block 2 has an identity shortcut: its conv1 shares the mask of block 1's output
    assert get("blocks.2.conv1").out_features_masker is get("blocks.1.conv1").out_features_masker
    with torch.no_grad():
        get("blocks.0.conv1").out_features_masker.alpha[0] = 0.0
    assert get("blocks.0.downsample").features_mask[0].item() == 0.0
    assert get("blocks.1.conv0").input_features_calculator.features_mask[0].item() == 0.0


def test_toy_summed_convs_share_and_output_layer_is_frozen():
    pit = PIT(ToyModel(), input_shape=(3, 15))
    assert pit.seed.conv0.out_features_masker is pit.seed.conv1.out_features_masker
    assert isinstance(pit.seed.fc.out_features_masker, PITFrozenFeaturesMasker)
    with torch.no_grad():
        pit.seed.conv1.out_features_masker.alpha[:3] = 0.0
    assert pit.seed.conv0.out_features_opt == 7


def _random_binary(masker, gen):
    with torch.no_grad():
        masker.alpha.copy_((torch.rand(masker.alpha.shape, generator=gen) > 0.5).float())
    return int((masker.theta > 0.5).sum())


def test_input_features_follow_producers():
    gen = torch.Generator().manual_seed(1)
    _, toy, _ = build("toy")
    kept = _random_binary(toy.seed.conv0.out_features_masker, gen)
    assert toy.seed.conv2.in_features_opt == kept
    assert toy.seed.conv2.input_features_calculator.features.item() == pytest.approx(kept)
    kept2 = _random_binary(toy.seed.conv2.out_features_masker, gen)
    assert toy.seed.fc.in_features_opt == kept2 * 7, "flatten: kept x spatial size"
    assert toy.seed.fc.input_features_calculator.features.item() == pytest.approx(kept2 * 7)

    _, cat, _ = build("concat")
    ka = _random_binary(cat.seed.a.out_features_masker, gen)
    kb = _random_binary(cat.seed.b.out_features_masker, gen)
    assert cat.seed.c.in_features_opt == ka + kb, "concat: sum of both sides"
    kc = _random_binary(cat.seed.c.out_features_masker, gen)
    kd = _random_binary(cat.seed.d.out_features_masker, gen)
    assert cat.seed.fc.in_features_opt == kc + kd, "concat on dim -3 then spatial mean"

    _, tcn, _ = build("tcn")
    get = tcn.seed.get_submodule
    k = _random_binary(get("blocks.1.conv1").out_features_masker, gen)
    assert get("blocks.2.conv0").in_features_opt == k, "add: shared mask"
    assert get("blocks.1.downsample").out_features_opt == k


def test_bn_after_add_becomes_pit_batchnorm():
    _, pit, _ = build("bn_after_add")
    bn = pit.seed.bn
    assert isinstance(bn, PITBatchNorm1d)
    assert bn.input_features_calculator.masker is pit.seed.c0.out_features_masker
    assert pit.arch_summary()["bn"]["in_features"] == 8


def test_depthwise_shares_producer_mask():
    _, pit, _ = build("dscnn")
    get = pit.seed.get_submodule
    assert get("blocks.0.dw").out_features_masker is get("conv").out_features_masker
    assert get("blocks.1.dw").out_features_masker is get("blocks.0.pw").out_features_masker
    assert isinstance(get("blocks.0.dw"), PITConv2d) and get("blocks.0.dw").is_depthwise


def test_view_flatten_rewritten_to_torch_flatten():
    _, pit, _ = build("bn_after_add")
    code = pit.seed.code
    assert "torch.flatten" in code and ".view(" not in code


def test_multi_input_model():
    model, pit, x = build("multi_input")
    assert pit.seed.head.in_features_opt == 13
    with pytest.warns(UserWarning, match="input_example"):
        PIT(model, input_shape=(2, 10), input_example=model.example(1))


def test_layer_called_twice_counts_macs_per_call():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 8, 2)

        def forward(self, x):
            return self.fc(torch.flatten(self.conv(torch.relu(self.conv(x))), 1))

    pit = PIT(Twice(), input_shape=(4, 8))
    size, macs = pit.cost_model.layer_costs()
    assert size[0].item() == 4 * 4 * 3
    assert macs[0].item() == 2 * 4 * 4 * 3 * 8
    # its input is both the network input and its own output: that width cannot change
    assert isinstance(pit.seed.conv.out_features_masker, PITFrozenFeaturesMasker)
    assert pit.seed.conv.input_features_calculator.features.item() == 4


def test_fast_and_reference_costs_agree(model_name):
    _, pit, _ = build(model_name)
    randomize_masks(pit, seed=3)
    for binarized in (False, True):
        fast = pit.cost_model._fast_costs(binarized)
        ref = pit.cost_model._reference_costs(binarized)
        for a, b in zip(fast, ref):
            assert torch.allclose(a, b, rtol=1e-5)
    params = list(pit.nas_parameters())
    g_fast = torch.autograd.grad(pit.cost_model._fast_costs(False)[1].sum(), params, allow_unused=True)
    g_ref = torch.autograd.grad(pit.cost_model._reference_costs(False)[1].sum(), params, allow_unused=True)
    for a, b in zip(g_fast, g_ref):
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-4, atol=1e-3)
