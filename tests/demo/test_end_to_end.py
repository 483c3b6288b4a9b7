"""The demo end to end with --quick: tables, plot, results.json, models that match PyTorch."""
import json

import numpy as np
import onnxruntime
import pytest
import torch

from plinio.demo.__main__ import main
from plinio.demo.data import load_digits_data
from plinio.demo.model import BLOCK_WIDTHS, FIXED_KINDS, branch_names

STRENGTHS = (0.1, 1.0)
ARGS = ["--quick", "--no-progress", "--seeds", "0", "--strengths",
        ",".join(str(s) for s in STRENGTHS)]


@pytest.fixture(scope="module")
def one_thread():
    """The tests check results, not speed: one intra-op thread keeps the run time steady on
    a machine shared with other jobs, where two threads can be several times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("demo") / "out"
    code = main([*ARGS, "--out", str(out)])
    return code, out


def test_quick_run_writes_plot_json_and_every_network(quick_run):
    code, out = quick_run
    assert code == 0
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "results.json").read_text())
    assert doc["options"]["seeds"] == [0] and doc["options"]["regularizer"] == "macs"
    assert doc["machine"]["threads"] == torch.get_num_threads()
    assert doc["machine"]["torch"] == torch.__version__
    (run,) = doc["runs"]
    assert run["seed"] == 0
    assert run["unsearched"]["cost"]["macs"] > 0
    assert 0.0 <= run["unsearched"]["test_accuracy"] <= 1.0
    assert [row["strength"] for row in run["searched"]] == list(STRENGTHS)
    for row in run["searched"]:
        assert set(row["chosen_branches"]) == set(BLOCK_WIDTHS)
        for block, kind in row["chosen_branches"].items():
            assert kind in branch_names(block)
        assert 0 < row["cost"]["macs"] and 0 < row["cost"]["params"]
        assert 0.0 <= row["test_accuracy"] <= 1.0
        assert row["onnx_max_abs_diff"] <= 1e-3
    assert [row["kind"] for row in run["fixed"]] == list(FIXED_KINDS)
    # the fixed networks keep every channel: all conv5x5 costs more than all conv3x3
    fixed = {row["kind"]: row for row in run["fixed"]}
    assert fixed["conv5x5"]["cost"]["macs"] > fixed["conv3x3"]["cost"]["macs"]
    # quick budget: warm-up 1 + search 1 epochs of training, 1 of fine-tuning
    assert [len(row["training"]) for row in run["fixed"]] == [2] * len(FIXED_KINDS)
    assert [len(row["finetune"]) for row in run["fixed"]] == [1] * len(FIXED_KINDS)
    labels = [row["label"] for row in doc["summary"]]
    assert labels == ["unsearched supernet", "strength 0.1", "strength 1",
                      *(f"fixed: all {kind}" for kind in FIXED_KINDS)]
    for row, result in zip(doc["summary"][1:3], run["searched"]):
        accuracy = row["test_accuracy"]
        assert accuracy["low"] == accuracy["high"] == result["test_accuracy"]


def test_exported_files_match_pytorch_on_the_test_split(quick_run):
    _, out = quick_run
    doc = json.loads((out / "results.json").read_text())
    data = load_digits_data(seed=0)
    images = data.test.images
    for row in doc["runs"][0]["searched"]:
        assert row["files"]["onnx"].startswith("models/seed_0/")
        program = torch.export.load(str(out / row["files"]["torch_export"]))
        with torch.no_grad():
            expected = program.module()(images).numpy()
        session = onnxruntime.InferenceSession(str(out / row["files"]["onnx"]),
                                               providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
        tolerance = 1e-4 * max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=tolerance)
        # the saved model is the fine-tuned one: its accuracy is the reported one
        accuracy = float((expected.argmax(1) == data.test.labels.numpy()).mean())
        assert accuracy == pytest.approx(row["test_accuracy"])


def test_same_seed_same_results_on_cpu(quick_run, tmp_path, capsys):
    _, first_out = quick_run
    capsys.readouterr()
    assert main([*ARGS, "--out", str(tmp_path / "again")]) == 0
    printed = capsys.readouterr().out
    for label in ("unsearched supernet", "strength 0.1", "fixed: all conv5x5",
                  "Blocks chosen by the search"):
        assert label in printed
    assert "SPEC" not in printed

    def numbers(path):
        doc = json.loads(path.read_text())
        doc.pop("wall_time_s")
        return doc

    assert numbers(tmp_path / "again" / "results.json") == numbers(first_out / "results.json")
