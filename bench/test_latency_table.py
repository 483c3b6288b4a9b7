"""``bench/latency_table.py`` at CI sizes: the grids, the measured points, a table that
``LatencyTableCost`` reads back exactly at its grid points, and the command line."""
import csv

import pytest
import torch
import torch.nn as nn

from bench.latency_table import MEASURED_KINDS, channel_grid, header_lines, main, measure, model_shapes, \
    overhead_point, points_of, write_csv
from plinio.cost.latency import LatencyTableCost
from plinio.cost.specs import LayerCosts


class SmallNet(nn.Module):
    """conv -> relu -> conv + residual add -> max pool -> flatten -> linear (two equal convs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        return self.fc(torch.flatten(self.pool(y + self.conv2(y)), 1))


def test_channel_grids():
    assert channel_grid(12, "geometric") == [1, 2, 4, 8, 12]
    assert channel_grid(8, "geometric") == [1, 2, 4, 8]
    assert channel_grid(20, "step:8") == [1, 8, 16, 20]
    assert channel_grid(1, "step:8") == [1]
    with pytest.raises(ValueError, match=r"channel grid 'step:0': use 'geometric' or 'step:N'"):
        channel_grid(8, "step:0")


def test_points_cover_every_geometry_once():
    shapes = model_shapes(SmallNet(), (4, 6, 6))
    assert [s.kind for s in shapes] == ["conv2d", "relu", "conv2d", "add", "pool", "linear"]
    points = points_of(shapes, "geometric")
    by_kind = {kind: [p for p in points if p.key.kind == kind] for kind in MEASURED_KINDS}
    # the two convs share a geometry: one 3x3 grid over cin, cout in {1, 2, 4}, unpadded 8x8 input
    assert sorted((p.cin, p.cout) for p in by_kind["conv2d"]) == [(i, o) for i in (1, 2, 4) for o in (1, 2, 4)]
    assert {p.in_spatial for p in by_kind["conv2d"]} == {(8, 8)}
    # channel-preserving ops: one axis (cout = cin)
    assert [(p.cin, p.cout) for p in by_kind["add"]] == [(1, 1), (2, 2), (4, 4)]
    assert len(by_kind["linear"]) == len(channel_grid(36, "geometric")) * len(channel_grid(3, "geometric"))
    assert by_kind["conv1d"] == []


def test_measured_table_reads_back_exactly(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    shapes = [s for s in model_shapes(SmallNet(), (4, 6, 6)) if s.kind in MEASURED_KINDS]
    backends = ("torch", "onnxruntime")
    rows = measure(points_of(shapes, "geometric"), backends, warmup=1, repeats=2, threads=1)
    path = tmp_path / "latency.csv"
    write_csv(path, rows, header_lines(["--model", "test"], backends))
    text = path.read_text()
    assert text.startswith("# machine: ") and "# command: python -m bench.latency_table --model test" in text
    for backend in backends:
        costs = LayerCosts(shapes, {"latency": LatencyTableCost.from_csv(path, backend)})
        predicted = dict(zip((s.name for s in shapes), costs(*costs.full_width(torch.float64))["latency"].tolist()))
        with path.open() as f:
            measured = [r for r in csv.DictReader(line for line in f if not line.startswith("#"))
                        if r["backend"] == backend]
        full_conv = next(r for r in measured if r["kind"] == "conv2d" and r["cin"] == r["cout"] == "4")
        assert predicted["conv1"] == predicted["conv2"] == pytest.approx(float(full_conv["median_s"]), rel=1e-12)
        full_fc = next(r for r in measured if r["kind"] == "linear" and (r["cin"], r["cout"]) == ("36", "3"))
        assert predicted["fc"] == pytest.approx(float(full_fc["median_s"]), rel=1e-12)
        assert all(v > 0 for v in predicted.values())


def test_command_line_writes_a_table(tmp_path, capsys):
    out = tmp_path / "tcn.csv"
    rows = main(["--model", "tcn", "--kinds", "linear", "--backends", "torch", "--repeats", "1",
                 "--warmup", "0", "--out", str(out)])
    assert "tcn: 1 layers, 1 geometries, 28 points x 1 backends" in capsys.readouterr().out
    assert len(rows) == 28 and {r["kind"] for r in rows} == {"linear"}
    LatencyTableCost.from_csv(out, "torch")


class CausalBlock(nn.Module):
    """causal pad -> dilated conv1d -> relu: the pad and the dilation are part of the geometry."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = nn.ConstantPad1d((4, 0), 0.0)
        self.conv = nn.Conv1d(2, 4, 3, dilation=2)

    def forward(self, x):
        return torch.relu(self.conv(self.pad(x)))


def test_pads_dilations_and_the_per_call_overhead_are_measured(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    shapes = [s for s in model_shapes(CausalBlock(), (2, 16)) if s.kind in MEASURED_KINDS]
    assert [(s.kind, s.in_spatial, s.out_spatial) for s in shapes] == \
        [("pad", (16,), (20,)), ("conv1d", (20,), (16,)), ("relu", (16,), (16,))]
    points = points_of(shapes, "geometric")
    conv_inputs = {p.kernel: p.in_spatial for p in points if p.key.kind == "conv1d"}
    assert conv_inputs == {(1,): (16,), (2,): (18,), (3,): (20,)}    # unpadded, dilation 2
    backends = ("torch", "onnxruntime")
    rows = measure(points + [overhead_point()], backends, warmup=1, repeats=2, threads=1)
    assert {r["dilation"] for r in rows if r["kind"] == "conv1d"} == {"2"}
    path = tmp_path / "latency.csv"
    write_csv(path, rows, header_lines(["--model", "test"], backends))
    for backend in backends:
        spec = LatencyTableCost.from_csv(path, backend, per_call_overhead=True)
        overhead = next(float(r["median_s"]) for r in rows if r["kind"] == "overhead" and r["backend"] == backend)
        assert spec.network_constant() == overhead
        # by default only onnxruntime, whose run() executes the whole network, is corrected
        default = LatencyTableCost.from_csv(path, backend).network_constant()
        assert default == (0.0 if backend == "torch" else overhead)
        raw = LatencyTableCost.from_csv(path, backend, per_call_overhead=False)
        costs = LayerCosts(shapes, {"corrected": spec, "raw": raw})
        result = costs(*costs.full_width(torch.float64))
        assert result["corrected"].tolist() == pytest.approx([r - overhead for r in result["raw"].tolist()])
