"""torch.export + ONNX files of a plain network, checked with onnxruntime."""
import numpy as np
import onnxruntime
import pytest
import torch

from plinio.demo.config import DemoError
from plinio.demo.export import compare_outputs, export_and_check
from plinio.demo.model import plain_cnn


def test_files_reproduce_pytorch_on_any_batch_size(tmp_path):
    torch.manual_seed(0)
    model = plain_cnn({"block1": "conv3x3", "block2": "dwsep3x3", "block3": "identity"})
    # non-trivial BatchNorm statistics, so that eval mode matters
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 1, 16, 16) * 3 + 1)
    model.eval()
    images = torch.randn(7, 1, 16, 16)
    files = export_and_check(model, images, tmp_path / "models", "net")
    assert files.onnx.is_file() and files.torch_export.is_file()
    # one self-contained ONNX file (weights inside, no external data file)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["net.onnx", "net.pt2"]
    assert files.onnx_max_abs_diff < 1e-4 and files.torch_export_max_abs_diff < 1e-4
    # independent check with a batch size the export never saw
    other = torch.randn(3, 1, 16, 16)
    session = onnxruntime.InferenceSession(str(files.onnx), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"image": other.numpy()})
    with torch.no_grad():
        expected = model(other).numpy()
        reloaded = torch.export.load(str(files.torch_export)).module()(other).numpy()
    np.testing.assert_allclose(onnx_out, expected, atol=1e-4)
    np.testing.assert_allclose(reloaded, expected, atol=1e-5)


def test_export_leaves_the_model_in_its_mode_and_place(tmp_path):
    model = plain_cnn({"block1": "conv3x3", "block2": "conv3x3", "block3": "conv3x3"}).train()
    export_and_check(model, torch.randn(4, 1, 16, 16), tmp_path, "net")
    assert model.training


def test_a_mismatch_fails_loudly(tmp_path):
    reference = torch.zeros(4, 10)
    outputs = np.zeros((4, 10), dtype=np.float32)
    assert compare_outputs("ONNX", tmp_path / "m.onnx", reference, outputs) == 0.0
    outputs[2, 3] = 0.5
    with pytest.raises(DemoError, match=r"ONNX file .*m\.onnx does not reproduce") as info:
        compare_outputs("ONNX", tmp_path / "m.onnx", reference, outputs)
    assert info.value.exit_code == 1
    with pytest.raises(DemoError, match="shape"):
        compare_outputs("ONNX", tmp_path / "m.onnx", reference, outputs[:2])
