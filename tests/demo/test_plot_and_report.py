"""Pareto front, plot contents, table and results.json formatting."""
import json
import math

import torch

from plinio.demo.costs import Cost
from plinio.demo.plot import ParetoPoint, draw_pareto, pareto_front, plot_pareto
from plinio.demo.report import change, format_table, human, write_results_json
from plinio.demo.results import DemoResults, SeedResult, StrengthResult


def test_pareto_front_drops_dominated_points():
    a, b = ParetoPoint("a", 100, 0.90), ParetoPoint("b", 50, 0.95)
    c, d = ParetoPoint("c", 10, 0.80), ParetoPoint("d", 10, 0.70)
    assert pareto_front([a, b, c, d]) == [c, b]


def test_plot_has_labelled_axes_legend_and_is_a_png(tmp_path):
    seed = ParetoPoint("unsearched", 1e6, 0.97)
    searched = [ParetoPoint("λ=0.1", 4e5, 0.98), ParetoPoint("λ=1", 2e5, 0.96)]
    figure = draw_pareto(seed, searched, "title")
    (axes,) = figure.axes
    assert "MACs" in axes.get_xlabel() and "accuracy" in axes.get_ylabel()
    legend = [t.get_text() for t in axes.get_legend().get_texts()]
    assert "unsearched" in legend and any("searched" in t for t in legend)
    assert {t.get_text() for t in axes.texts} == {"λ=0.1", "λ=1"}
    path = plot_pareto(seed, searched, tmp_path / "sub" / "p.png", "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_number_formatting():
    assert human(950) == "950" and human(12345) == "12.3k" and human(1583477) == "1.58M"
    assert change(50, 200) == "-75.0%" and change(1, 0) == "n/a"


def _results():
    seed = SeedResult(test_accuracy=0.95, val_accuracy=0.94, cost=Cost(1000, 2e6),
                      regularizer_value=2e6)
    row = StrengthResult(
        strength=0.5, chosen_branches={"block1": "identity", "block2": "dwsep3x3",
                                       "block3": "conv3x3"},
        test_accuracy=0.96, val_accuracy=0.95, search_val_accuracy=0.9,
        cost=Cost(500, 5e5), regularizer_value=4.5e5,
        arch_summary={"block1": {"alpha": torch.tensor([0.1, 0.9]), "k": (3,)}},
        files={"onnx": "models/a.onnx", "torch_export": "models/a.pt2"},
        torch_export_max_abs_diff=0.0, onnx_max_abs_diff=float("nan"))
    return DemoResults(options={"seed": 0}, seed=seed, rows=[row], wall_time_s=12.0)


def test_table_has_one_row_per_network_with_reductions():
    table = format_table(_results())
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["model", "test"]
    assert any(line.startswith("unsearched supernet") for line in lines)
    row = next(line for line in lines if line.startswith("strength 0.5"))
    assert "96.0%" in row and "-50.0%" in row and "-75.0%" in row
    assert "identity" in row and "dwsep3x3" in row


def test_results_json_is_plain_json(tmp_path):
    path = write_results_json(_results(), tmp_path / "results.json")
    doc = json.loads(path.read_text())
    (row,) = doc["rows"]
    assert math.isclose(row["arch_summary"]["block1"]["alpha"][1], 0.9, rel_tol=1e-6)
    assert row["arch_summary"]["block1"]["k"] == [3]
    assert row["onnx_max_abs_diff"] == "nan"
    assert doc["seed"]["cost"] == {"params": 1000, "macs": 2e6}
