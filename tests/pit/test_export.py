"""Export (docs/behaviour.md §6): pruned shapes, kept weights, numerical equivalence, BN re-insertion."""
import copy
import warnings

import pytest
import torch
import torch.nn as nn

from plinio.methods import PIT
from tests.models import ToyModel
from tests.pit.conftest import build, randomize_masks


def _assert_equivalent(pit, exported, x):
    pit.eval()
    exported.eval()
    with torch.no_grad():
        ref = pit(*x)
        out = exported(*x)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-4 * max(ref.abs().max().item(), 1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_export_is_equivalent_for_random_masks(model_name, seed):
    _, pit, x = build(model_name)
    randomize_masks(pit, seed)
    before = copy.deepcopy(pit.state_dict())
    exported = pit.arch_export(add_bn=False)
    _assert_equivalent(pit, exported, x)
    assert all(not type(m).__module__.startswith("plinio") for m in exported.modules())
    for key, value in pit.state_dict().items():
        assert torch.equal(value, before[key]), f"export changed the search model ({key})"
    again = pit.arch_export(add_bn=False).eval()
    with torch.no_grad():
        assert torch.equal(again(*x), exported(*x))


def test_export_shapes_and_kept_weights():
    pit = PIT(ToyModel(), input_shape=(3, 15))
    s = pit.seed
    with torch.no_grad():
        s.conv0.out_features_masker.alpha.copy_(torch.tensor([1, 0, 1, 0, 1, 0, 0, 1, 0, 0.]))
        s.conv2.out_features_masker.alpha[:15] = 0.0
        s.conv2.timestep_masker.beta.copy_(torch.tensor([0, 0, 0.7, 0, 0.]))   # keep taps 2, 3, 4
        s.conv2.dilation_masker.gamma.copy_(torch.tensor([0.0, 1, 1]))       # distances 0, 2
    exported = pit.arch_export(add_bn=False)
    conv2 = exported.get_submodule("conv2")
    kept_in = [0, 2, 4, 7, 9]  # 9: keep-alive
    assert isinstance(conv2, nn.Conv1d) and type(conv2) is nn.Conv1d
    assert conv2.weight.shape == (5, 5, 2)
    assert conv2.dilation == (2,)
    expected = s.conv2.weight.detach()[15:][:, kept_in][..., [2, 4]]
    assert torch.equal(conv2.weight, expected)
    assert exported.get_submodule("conv0").weight.shape == (5, 3, 3)
    assert exported.get_submodule("fc").weight.shape == (2, 5 * 7)
    assert pit.arch_summary()["conv2"] == {"in_features": 5, "out_features": 5, "kernel_size": (2,),
                                           "dilation": (2,), "type": "PITConv1d"}


def test_causal_padding_is_rewritten():
    _, pit, x = build("tcn")
    conv = pit.seed.get_submodule("blocks.1.conv0")   # K = 5, dilation 2, causal pad 8
    with torch.no_grad():
        conv.timestep_masker.beta.copy_(torch.tensor([0, 0, 0.7, 0, 0.]))   # taps 2..4
        conv.dilation_masker.gamma.copy_(torch.tensor([0.0, 1, 1]))         # distances 0, 2 (x dilation 2)
    exported = pit.arch_export(add_bn=False)
    new = exported.get_submodule("blocks.1.conv0")
    assert new.kernel_size == (2,) and new.dilation == (4,)
    pad = exported.get_submodule("blocks.1.pad0")   # the user's padding keeps its name and type
    assert type(pad) is nn.ConstantPad1d and pad.padding == ((2 - 1) * 4, 0) and new.padding == (0,)
    assert "conv0_exported_pad" not in exported.get_submodule("blocks.1")._modules
    _assert_equivalent(pit, exported, x)


def test_add_bn_reinserts_batchnorm_of_pruned_width():
    _, pit, x = build("tcn")
    randomize_masks(pit, 2)
    exported = pit.arch_export(add_bn=True)
    for i in range(3):
        for conv in ("conv0", "conv1"):
            name = f"blocks.{i}.{conv}"
            bn = exported.get_submodule(f"{name}_exported_bn")
            assert type(bn) is nn.BatchNorm1d
            assert bn.num_features == exported.get_submodule(name).out_channels
    assert "blocks.0.downsample_exported_bn" not in dict(exported.named_modules())
    exported.eval()
    assert exported(*x).shape == (3, 5)
    _, dscnn, _ = build("dscnn")
    exported = dscnn.arch_export()
    assert type(exported.get_submodule("blocks.0.dw_exported_bn")) is nn.BatchNorm2d


def test_exported_model_scripts_exports_and_converts_to_onnx(tmp_path):
    _, pit, x = build("tcn")
    randomize_masks(pit, 4)
    exported = pit.arch_export(add_bn=False).eval()
    with torch.no_grad():
        ref = exported(*x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(exported)
        assert torch.allclose(scripted(*x), ref)
    toy = PIT(ToyModel(), input_shape=(3, 15))
    randomize_masks(toy, 5)
    small = toy.arch_export().eval()
    program = torch.export.export(small, (torch.randn(2, 3, 15),))
    xt = torch.randn(2, 3, 15)
    assert torch.allclose(program.module()(xt), small(xt), atol=1e-6)
    onnxruntime = pytest.importorskip("onnxruntime")
    path = tmp_path / "tcn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(exported, x, str(path), dynamo=False)
    session = onnxruntime.InferenceSession(str(path))
    out = session.run(None, {session.get_inputs()[0].name: x[0].numpy()})[0]
    assert abs(out - ref.numpy()).max() <= 1e-4 * abs(ref.numpy()).max()
