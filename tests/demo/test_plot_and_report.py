"""Ranges over seeds, Pareto front, plot contents, tables and results.json formatting."""
import json
import math

import pytest
import torch

from plinio.demo.costs import Cost
from plinio.demo.plot import draw_pareto, pareto_front, plot_pareto
from plinio.demo.report import format_table, human, signed_percent, span, write_results_json
from plinio.demo.results import (DemoResults, FixedResult, SearchedResult, SeedRun,
                                 UnsearchedResult)
from plinio.demo.summary import FIXED, SEARCHED, UNSEARCHED, ConfigSummary, Range, summarize

MACHINE = {"cpu": "Test CPU 9000", "cpu_count": 2, "threads": 2, "torch": "2.13.0"}


def _searched(strength, accuracy, cost, chosen, onnx_diff=0.0):
    return SearchedResult(
        strength=strength, chosen_branches=chosen, test_accuracy=accuracy, val_accuracy=0.9,
        search_val_accuracy=0.9, cost=cost, regularizer_value=1.0,
        arch_summary={"block1": {"alpha": torch.tensor([0.1, 0.9]), "k": (3,)}},
        files={"onnx": "models/a.onnx", "torch_export": "models/a.pt2"},
        torch_export_max_abs_diff=0.0, onnx_max_abs_diff=onnx_diff)


def _run(seed, accuracy, searched_cost, chosen, onnx_diff=0.0):
    unsearched = UnsearchedResult(test_accuracy=0.95, val_accuracy=0.94,
                                  cost=Cost(1000, 2e6), regularizer_value=2e6)
    return SeedRun(
        seed=seed, unsearched=unsearched,
        searched=[_searched(0.5, accuracy, searched_cost, chosen, onnx_diff)],
        fixed=[FixedResult(kind="conv3x3", test_accuracy=0.97, val_accuracy=0.96,
                           cost=Cost(900, 1.8e6))])


CHOICE_A = {"block1": "identity", "block2": "dwsep3x3", "block3": "conv3x3"}
CHOICE_B = {"block1": "conv3x3", "block2": "conv3x3", "block3": "identity"}


def _results(onnx_diff=float("nan")):
    runs = [_run(0, 0.96, Cost(500, 5e5), CHOICE_A, onnx_diff),
            _run(3, 0.92, Cost(300, 1e5), CHOICE_B)]
    return DemoResults(options={"seeds": [0, 3]}, machine=MACHINE, runs=runs,
                       wall_time_s=12.0)


def test_summary_gives_ranges_per_configuration_and_changes_per_seed():
    unsearched, searched, fixed = summarize(_results().runs)
    assert [s.family for s in (unsearched, searched, fixed)] == [UNSEARCHED, SEARCHED, FIXED]
    assert [s.label for s in (unsearched, searched, fixed)] == [
        "unsearched supernet", "strength 0.5", "fixed: all conv3x3"]
    assert searched.test_accuracy == Range(0.92, 0.96, pytest.approx(0.94))
    assert searched.macs == Range(1e5, 5e5, 3e5)
    assert searched.macs_change == Range(-0.95, -0.75, pytest.approx(-0.85))
    assert searched.chosen_branches == [CHOICE_A, CHOICE_B]
    assert unsearched.macs_change is None and fixed.chosen_branches is None
    assert fixed.params == Range(900, 900, 900)


def _point(label, family, macs, accuracy):
    return ConfigSummary(label=label, tag=label, family=family,
                         test_accuracy=Range(accuracy, accuracy, accuracy),
                         params=Range(1, 1, 1), macs=Range(macs, macs, macs),
                         params_change=None, macs_change=None)


def test_pareto_front_drops_dominated_points():
    a, b = _point("a", SEARCHED, 100, 0.90), _point("b", FIXED, 50, 0.95)
    c, d = _point("c", SEARCHED, 10, 0.80), _point("d", SEARCHED, 10, 0.70)
    assert pareto_front([a, b, c, d]) == [c, b]


def test_plot_shows_every_family_labelled_with_ranges(tmp_path):
    points = summarize(_results().runs)
    figure = draw_pareto(points, "title")
    (axes,) = figure.axes
    assert "MACs" in axes.get_xlabel() and "accuracy" in axes.get_ylabel()
    (legend,) = figure.legends
    legend = [t.get_text() for t in legend.get_texts()]
    assert any("unsearched" in t for t in legend)
    assert any(t.startswith("searched") for t in legend)
    assert any(t.startswith("fixed choice") for t in legend)
    assert {t.get_text() for t in axes.texts} == {"λ=0.5", "conv3x3"}
    # the searched point sits at the mean over the seeds, its bars span the seeds
    offsets = [tuple(c.get_offsets()[0]) for c in axes.collections if c.get_offsets().size]
    assert (3e5, pytest.approx(94.0)) in offsets
    segments = [tuple(map(tuple, seg)) for c in axes.collections if hasattr(c, "get_segments")
                for seg in c.get_segments()]
    assert ((1e5, pytest.approx(94.0)), (5e5, pytest.approx(94.0))) in segments
    assert ((3e5, pytest.approx(92.0)), (3e5, pytest.approx(96.0))) in segments
    path = plot_pareto(points, tmp_path / "sub" / "p.png", "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_number_formatting():
    assert human(950) == "950" and human(12345) == "12.3k" and human(1583477) == "1.58M"
    assert signed_percent(-0.75) == "-75.0" and signed_percent(0.25) == "+25.0"
    assert span(Range(0.25, 0.5, 0.4), signed_percent, "%") == "+25.0 to +50.0%"
    assert span(Range(1000, 1000.4, 1000.2), human) == "1k"


def test_tables_report_ranges_choices_per_seed_and_the_machine():
    table = format_table(_results(onnx_diff=3e-6))
    lines = table.splitlines()
    assert lines[0].startswith("Seeds 0, 3: each cell is the range over the seeds")
    assert lines[1].split()[:2] == ["model", "test"]
    row = next(line for line in lines if line.startswith("strength 0.5"))
    assert "92.0 to 96.0%" in row and "100k to 500k" in row and "-95.0 to -75.0%" in row
    fixed = next(line for line in lines if line.startswith("fixed: all conv3x3"))
    assert "97.0%" in fixed and "-10.0%" in fixed
    choices = next(line for line in lines if line.startswith("λ=0.5"))
    assert ("identity / dwsep3x3 / conv3x3" in choices
            and "conv3x3 / conv3x3 / identity" in choices)
    assert "max abs diff 3e-06" in table
    assert "Test CPU 9000, 2 threads, torch 2.13.0" in table
    assert "SPEC" not in table and "'What the demo shows'" in table


def test_results_json_is_plain_json_with_runs_and_summary(tmp_path):
    path = write_results_json(_results(), tmp_path / "results.json")
    doc = json.loads(path.read_text())
    run = doc["runs"][0]
    (row,) = run["searched"]
    assert math.isclose(row["arch_summary"]["block1"]["alpha"][1], 0.9, rel_tol=1e-6)
    assert row["arch_summary"]["block1"]["k"] == [3]
    assert row["onnx_max_abs_diff"] == "nan"
    assert run["unsearched"]["cost"] == {"params": 1000, "macs": 2e6}
    assert doc["machine"] == MACHINE
    assert [s["label"] for s in doc["summary"]] == ["unsearched supernet", "strength 0.5",
                                                    "fixed: all conv3x3"]
    assert doc["summary"][1]["macs"] == {"low": 1e5, "high": 5e5, "mean": 3e5}


def test_target_runs_report_predicted_and_measured_costs_and_whether_they_met_the_target():
    results = _results()
    for run, measured in zip(results.runs, (190e3, 260e3)):
        (searched,) = run.searched
        searched.strength = None
        searched.targets = {"macs": 200e3}
        searched.predicted, searched.measured = {"macs": 195e3}, {"macs": measured}
    results.options = {"targets": {"macs": 200e3}, "regularizer": "macs"}
    lines = format_table(results).splitlines()
    assert any(line.startswith("target macs≤200000") for line in lines)
    checks = [line.split() for line in lines if line.startswith(("0 ", "3 "))]
    assert checks == [["0", "macs≤200000", "macs", "195k", "190k", "200k", "yes", "(-5.0%)"],
                      ["3", "macs≤200000", "macs", "195k", "260k", "200k", "no", "(+30.0%)"]]
    assert any("more search epochs (--epochs)" in line for line in lines)
    assert not any("More than 10 % under a target" in line for line in lines)
    results.runs[0].searched[0].measured = {"macs": 150e3}
    assert "More than 10 % under a target" in format_table(results)
    assert "Costs of the searched networks" not in format_table(_results())   # a default run: no block
