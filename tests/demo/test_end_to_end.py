"""The demo end to end with --quick: table, plot, results.json, models that match PyTorch."""
import json

import numpy as np
import onnxruntime
import pytest
import torch

from plinio.demo.__main__ import main
from plinio.demo.data import load_digits_data
from plinio.demo.model import BLOCK_WIDTHS, branch_names

STRENGTHS = (0.1, 1.0)


def _run(out, capsys):
    code = main(["--quick", "--no-progress", "--seed", "0", "--out", str(out),
                 "--strengths", ",".join(str(s) for s in STRENGTHS)])
    return code, capsys.readouterr()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    code = main(["--quick", "--no-progress", "--seed", "0", "--out", str(out),
                 "--strengths", ",".join(str(s) for s in STRENGTHS)])
    return code, out


def test_quick_run_writes_plot_json_and_one_row_per_strength(quick_run):
    code, out = quick_run
    assert code == 0
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "results.json").read_text())
    assert [row["strength"] for row in doc["rows"]] == list(STRENGTHS)
    assert doc["options"]["seed"] == 0 and doc["options"]["regularizer"] == "macs"
    assert doc["seed"]["cost"]["macs"] > 0 and 0.0 <= doc["seed"]["test_accuracy"] <= 1.0
    for row in doc["rows"]:
        assert set(row["chosen_branches"]) == set(BLOCK_WIDTHS)
        for block, kind in row["chosen_branches"].items():
            assert kind in branch_names(block)
        assert 0 < row["cost"]["macs"] and 0 < row["cost"]["params"]
        assert 0.0 <= row["test_accuracy"] <= 1.0
        assert row["onnx_max_abs_diff"] <= 1e-3


def test_exported_files_match_pytorch_on_the_test_split(quick_run):
    _, out = quick_run
    doc = json.loads((out / "results.json").read_text())
    images = load_digits_data(seed=0).test.images
    for row in doc["rows"]:
        program = torch.export.load(str(out / row["files"]["torch_export"]))
        with torch.no_grad():
            expected = program.module()(images).numpy()
        session = onnxruntime.InferenceSession(str(out / row["files"]["onnx"]),
                                               providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
        tolerance = 1e-4 * max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=tolerance)
        # the saved model is the fine-tuned one: its accuracy is the reported one
        labels = load_digits_data(seed=0).test.labels.numpy()
        accuracy = float((expected.argmax(1) == labels).mean())
        assert accuracy == pytest.approx(row["test_accuracy"])


def test_same_seed_same_results_on_cpu(quick_run, tmp_path, capsys):
    _, first_out = quick_run
    code, captured = _run(tmp_path / "again", capsys)
    assert code == 0
    assert "strength 0.1" in captured.out and "unsearched supernet" in captured.out

    def numbers(path):
        doc = json.loads(path.read_text())
        doc.pop("wall_time_s")
        return doc

    assert numbers(tmp_path / "again" / "results.json") == numbers(first_out / "results.json")
