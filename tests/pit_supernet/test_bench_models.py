"""bench.models: the workloads are what they claim to be (before any conversion)."""
import pytest
import torch
import torch.nn as nn

from bench.models import (TCN, LinearBranchSuperNet, MobileNetV1SuperNet, count_supernets,
                          workloads)
from plinio.methods.pit_supernet import PITSuperNetModule

_OUTPUTS = {"seed": (32, 64, 64), "linear_supernet": (10,), "resnet8": (10,), "dscnn": (12,),
            "mobilenetv1": (2,), "tcn": (8,)}


@pytest.mark.parametrize("name", sorted(_OUTPUTS))
def test_workload_builds_runs_and_counts_its_supernets(name):
    factory, shape = workloads()[name]
    torch.manual_seed(0)
    model = factory().eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2,) + _OUTPUTS[name]
    expected = getattr(model, "N_SUPERNETS", 0)
    assert count_supernets(model) == expected
    if name != "tcn":
        assert expected > 0


def test_registry_covers_every_workload():
    assert set(workloads()) == set(_OUTPUTS)


def test_identity_branch_only_where_shapes_allow():
    model = MobileNetV1SuperNet()
    for sn in (m for m in model.modules() if isinstance(m, PITSuperNetModule)):
        has_identity = any(isinstance(b, nn.Identity) for b in sn.sn_input_layers)
        conv = sn[0][0]
        keeps_shape = conv.in_channels == conv.out_channels and conv.stride == (1, 1)
        assert has_identity == keeps_shape


def test_linear_branch_model_has_only_linear_branches():
    model = LinearBranchSuperNet(n_blocks=2)
    assert model.N_SUPERNETS == 2 == count_supernets(model)
    for sn in model.blocks:
        for branch in sn.sn_input_layers:
            kinds = {type(m) for m in branch.modules()} - {nn.Sequential}
            assert kinds <= {nn.Conv2d, nn.Identity}


def test_tcn_is_causal():
    torch.manual_seed(0)
    model = TCN().eval()
    x = torch.randn(1, 4, 128)
    y = x.clone()
    y[..., 100:] += 1.0
    with torch.no_grad():
        fx_, fy = model.features(x), model.features(y)
    assert torch.allclose(fx_[..., :100], fy[..., :100])
    assert not torch.allclose(fx_[..., 100:], fy[..., 100:])


def test_tcn_converts_with_pit_and_exports_exactly():
    from plinio.methods import PIT
    torch.manual_seed(0)
    search = PIT(TCN(), input_shape=TCN.INPUT_SHAPE)
    assert list(search.arch_summary()) == ["features.1", "features.5", "features.9",
                                           "features.13", "classifier"]
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, p in search.named_nas_parameters():
            p.copy_(torch.rand(p.shape, generator=gen))
    search.eval()
    exported = search.arch_export(add_bn=False).eval()
    x = torch.randn(2, *TCN.INPUT_SHAPE)
    with torch.no_grad():
        expected = search(x)
        assert float((exported(x) - expected).abs().max()) <= 1e-4 * float(expected.abs().max())
