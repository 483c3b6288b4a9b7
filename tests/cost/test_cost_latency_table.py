"""The latency_table spec: CSV reading, multilinear interpolation over the measured grid
(hand-computed), fast == looped reference, finite-difference gradients, and the errors for
geometries or ranges the table does not cover."""
import csv
import itertools

import pytest
import torch

from plinio.cost.geometry import LayerShape
from plinio.cost.latency import CSV_COLUMNS, LatencyTable, LatencyTableCost
from plinio.cost.specs import LayerCosts
from tests.cost.cost_helpers import random_counts

CONV = LayerShape("conv", "conv2d", 8, 16, (3, 3), (1, 1), (1, 1), 1, (8, 8), (8, 8))
DW = LayerShape("dw", "conv2d", 16, 16, (3, 3), (1, 1), (1, 1), 16, (8, 8), (8, 8))
TCN = LayerShape("tcn", "conv1d", 4, 8, (5,), (1,), (2,), 1, (32,), (32,), calls=3)
ADD = LayerShape("add", "add", 16, 16, in_spatial=(8, 8), out_spatial=(8, 8))
FC = LayerShape("fc", "linear", 16, 10)


def conv_seconds(cin, cout):
    """Bilinear in (cin, cout): interpolation on the grid reproduces it exactly."""
    return 1e-5 + 2e-6 * cin + 3e-6 * cout + 4e-7 * cin * cout


def tcn_seconds(taps, cin, cout):
    return 2e-6 + 1e-7 * taps * cin * cout


def row(kind, kernel, stride, depthwise, spatial, cin, cout, seconds, backend="onnxruntime", dilation=""):
    return {"kind": kind, "kernel": kernel, "stride": stride, "dilation": dilation, "depthwise": depthwise,
            "in_spatial": spatial[0], "out_spatial": spatial[1], "cin": cin, "cout": cout,
            "backend": backend, "threads": 1, "median_s": seconds, "iqr_s": 0.0, "repeats": 5}


def table_rows():
    rows = [row("conv2d", "3x3", "1x1", 0, ("8x8", "8x8"), i, o, conv_seconds(i, o))
            for i, o in itertools.product((1, 4, 8), (1, 8, 16))]
    rows += [row("conv2d", "3x3", "1x1", 0, ("8x8", "8x8"), i, o, 2 * conv_seconds(i, o), backend="torch")
             for i, o in itertools.product((1, 4, 8), (1, 8, 16))]
    rows += [row("conv2d", "3x3", "1x1", 1, ("8x8", "8x8"), c, c, 1e-6 * c * c) for c in (1, 2, 4, 8, 16)]
    rows += [row("conv1d", k, "1", 0, ("32", "32"), i, o, tcn_seconds(k, i, o), dilation="2")
             for k, i, o in itertools.product((1, 3, 5), (1, 4), (1, 4, 8))]
    rows += [row("add", "", "", 0, ("8x8", "8x8"), c, c, 1e-7 * c) for c in (1, 16)]
    rows += [row("linear", "", "", 0, ("", ""), i, o, 1e-6 * i + 1e-7 * o)
             for i, o in itertools.product((1, 16), (1, 10))]
    return rows


def write_table(path, rows):
    with open(path, "w", newline="") as f:
        f.write("# machine: test fixture\n")
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def table_csv(tmp_path):
    return write_table(tmp_path / "latency.csv", table_rows())


def test_interpolation_reproduces_hand_computed_times(table_csv):
    spec = LatencyTableCost.from_csv(table_csv, backend="onnxruntime")
    costs = LayerCosts([CONV, DW, TCN, ADD, FC], {"latency": spec})
    cin = torch.tensor([2.5, 3.0, 2.0, 8.5, 9.0], dtype=torch.float64)
    cout = torch.tensor([12.0, 3.0, 6.0, 8.5, 3.0], dtype=torch.float64)
    taps = torch.tensor([9.0, 9.0, 4.0, 1.0, 1.0], dtype=torch.float64)
    got = costs(cin, cout, taps)["latency"]
    expected = [
        conv_seconds(2.5, 12.0),            # bilinear inside the grid: exact
        1e-6 * (4 + 0.5 * (16 - 4)),        # depthwise: one channel axis, between c=2 (4e-6) and 4 (16e-6)
        3 * tcn_seconds(4, 2.0, 6.0),       # conv1d: taps interpolated too; 3 calls
        1e-7 * 8.5,                         # add: linear in its one channel axis
        1e-6 * 9 + 1e-7 * 3,                # linear
    ]
    assert got.tolist() == pytest.approx(expected, rel=1e-12)
    at_grid = costs(*(torch.tensor(v, dtype=torch.float64) for v in
                      ([4.0, 8.0, 4.0, 16.0, 16.0], [8.0, 8.0, 8.0, 16.0, 10.0], [9.0, 9.0, 5.0, 1.0, 1.0])))
    assert at_grid["latency"].tolist() == pytest.approx(
        [conv_seconds(4, 8), 64e-6, 3 * tcn_seconds(5, 4, 8), 16e-7, 16e-6 + 1e-6], rel=1e-12)


def test_convolutions_are_keyed_by_their_output_size(table_csv):
    valid = LayerShape("valid", "conv2d", 8, 16, (3, 3), (1, 1), (1, 1), 1, (10, 10), (8, 8))
    costs = LayerCosts([CONV, valid], {"t": LatencyTableCost.from_csv(table_csv, "onnxruntime")})
    same, unpadded = costs(*costs.full_width(torch.float64))["t"].tolist()
    assert same == unpadded == pytest.approx(conv_seconds(8, 16), rel=1e-12)


def test_each_backend_reads_its_own_rows(table_csv):
    onnx = LayerCosts([CONV], {"t": LatencyTableCost.from_csv(table_csv, "onnxruntime")})
    eager = LayerCosts([CONV], {"t": LatencyTableCost.from_csv(table_csv, "torch")})
    full = onnx.full_width(torch.float64)
    assert eager(*full)["t"].item() == pytest.approx(2 * onnx(*full)["t"].item(), rel=1e-12)


def test_counts_above_the_full_width_extrapolate_from_the_last_cell(table_csv):
    costs = LayerCosts([CONV], {"t": LatencyTableCost.from_csv(table_csv, "onnxruntime")})
    got = costs(*(torch.tensor([v], dtype=torch.float64) for v in (8.4, 17.0, 9.0)))["t"]
    assert got.item() == pytest.approx(conv_seconds(8.4, 17.0), rel=1e-12)


def test_fast_equals_reference_and_gradients_match_finite_differences(table_csv):
    shapes = [CONV, DW, TCN, ADD, FC, LayerShape("conv_b", "conv2d", 4, 8, (3, 3), (1, 1), (1, 1), 1, (8, 8), (8, 8))]
    costs = LayerCosts(shapes, {"t": LatencyTableCost.from_csv(table_csv, "onnxruntime")})
    weights = torch.linspace(0.5, 2.0, len(shapes), dtype=torch.float64)
    for seed in range(3):
        counts = random_counts(tuple(shapes), seed)
        fast, ref = costs(*counts)["t"], costs.reference(*counts)["t"]
        torch.testing.assert_close(fast, ref, rtol=1e-12, atol=0)
        for a, b in zip(torch.autograd.grad((weights * fast).sum(), counts),
                        torch.autograd.grad((weights * ref).sum(), counts)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    assert torch.autograd.gradcheck(lambda *c: costs(*c)["t"], random_counts(tuple(shapes), 11))


# ---- errors ------------------------------------------------------------------------------------

def test_unmeasured_geometry_is_an_error_naming_the_layer(table_csv):
    spec = LatencyTableCost.from_csv(table_csv, "onnxruntime")
    strided = LayerShape("features.3", "conv2d", 8, 16, (3, 3), (2, 2), (1, 1), 1, (8, 8), (4, 4))
    with pytest.raises(ValueError, match=r"no entry for layer 'features.3' \(conv2d, kernel 3x3, stride 2x2, "
                                         r"output 4x4\); measured conv2d geometries: .*kernel 3x3, stride 1x1, "
                                         r"output 8x8"):
        LayerCosts([CONV, strided], {"latency": spec})
    with pytest.raises(ValueError, match=r"no entry for layer 'p' \(pool.*measured pool geometries: none"):
        LayerCosts([LayerShape("p", "pool", 8, 8, (2, 2), (2, 2))], {"latency": spec})


def test_channel_and_taps_ranges_the_grid_misses_are_errors(table_csv):
    spec = LatencyTableCost.from_csv(table_csv, "onnxruntime")
    wide = LayerShape("wide", "conv2d", 32, 16, (3, 3), (1, 1), (1, 1), 1, (8, 8), (8, 8))
    with pytest.raises(ValueError, match=r"layer 'wide' .* can take cin from 1 to 32, but the table measured cin 1..8"):
        LayerCosts([wide], {"latency": spec})
    long_kernel = LayerShape("tcn9", "conv1d", 4, 8, (9,), (1,), (2,), 1, (32,), (32,))
    with pytest.raises(ValueError, match=r"layer 'tcn9' .* can take kernel taps from 1 to 9, but the table measured "
                                         r"kernel taps 1..5"):
        LayerCosts([long_kernel], {"latency": spec})


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows[:4] + rows[5:], r"the conv2d, kernel 3x3, stride 1x1, output 8x8 rows do not form a "
                                       r"full grid: taps=9, cin=4, cout=8 is missing"),
    (lambda rows: rows + rows[:1], r"line 50: conv2d, .* at taps=9, cin=1, cout=1 is measured twice"),
    (lambda rows: [dict(r, median_s=-1.0) if i == 0 else r for i, r in enumerate(rows)],
     r"line 3: needs positive cin, cout and a positive finite median_s"),
    (lambda rows: [dict(r, cout=2) if r["kind"] == "add" else r for r in rows],
     r"add, spatial 8x8 -> 8x8 has one channel axis, so cout must equal cin"),
    (lambda rows: [dict(r, kernel="3y3") if i == 0 else r for i, r in enumerate(rows)],
     r"line 3, kernel: '3y3' is not an 'x'-joined list of ints"),
])
def test_malformed_tables_are_errors_naming_the_row(tmp_path, edit, message):
    path = write_table(tmp_path / "bad.csv", edit(table_rows()))
    with pytest.raises(ValueError, match=message):
        LatencyTable.from_csv(path, "onnxruntime")


def test_unknown_backend_and_missing_columns(table_csv, tmp_path):
    with pytest.raises(ValueError, match=r"no rows for backend 'tflite'; the table has backends "
                                         r"\['onnxruntime', 'torch'\]"):
        LatencyTable.from_csv(table_csv, "tflite")
    path = tmp_path / "short.csv"
    path.write_text("kind,cin,cout\nconv2d,1,1\n")
    with pytest.raises(ValueError, match=r"missing columns \['kernel', 'stride'"):
        LatencyTable.from_csv(path, "torch")
