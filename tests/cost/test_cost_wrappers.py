"""Costs through the PIT / PITSuperNet API (``cost=``, ``get_cost``, ``targets=``): hand-computed
fixtures for a plain CNN, a residual net whose shortcut stays alive across layers, a supernet
weighted by θ and a TCN with effective taps; peak memory of the exported network; fast ==
reference; finite-difference gradients; torch.compile without recompiles; the errors."""
import itertools
import math

import pytest
import torch
import torch.nn as nn
from torch._dynamo.testing import CompileCounter

from plinio.cost import LatencyTable, LatencyTableCost, PeakMemoryCost, PerKindCost
from plinio.graph.tracing import propagate_shapes, trace
from plinio.methods import PIT, PITSuperNet
from plinio.methods.pit_supernet import PITSuperNetModule
from tests.cost.cost_helpers import PlainCNN, TinyTCN
from tests.models.toy import ToyModel

F64 = torch.float64


class ResidualNet(nn.Module):
    """2×8 -> stem(4) -> c1(6) -> relu -> c2(4) -> add(stem, c2) -> head(3): the stem's output
    is read again by the add, three layers later."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(2, 4, 1)
        self.c1 = nn.Conv1d(4, 6, 3, padding=1)
        self.c2 = nn.Conv1d(6, 4, 3, padding=1)
        self.head = nn.Conv1d(4, 3, 1)

    def forward(self, x):
        s = self.stem(x)
        return self.head(s + self.c2(torch.relu(self.c1(s))))


class SuperNet(nn.Module):
    """2×4×4 -> stem(4) -> [conv3x3 | conv3x3(8) -> conv3x3 | Identity] -> head(3)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 1)
        self.sn = PITSuperNetModule([
            nn.Conv2d(4, 4, 3, padding=1),
            nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)),
            nn.Identity()])
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.head(self.sn(self.stem(x)))


class TCN(TinyTCN):
    """``TinyTCN`` with a head: -> head(2), so that the add's group feeds a searched layer."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv1d(4, 2, 1)

    def forward(self, x):
        return self.head(super().forward(x))


def set_param(search, path: str, values) -> None:
    owner, _, name = path.rpartition(".")
    param = getattr(search.seed.get_submodule(owner), name)
    with torch.no_grad():
        param.copy_(torch.as_tensor(values, dtype=param.dtype))


def set_alpha(search, layer: str, values) -> None:
    set_param(search, f"{layer}.out_features_masker.alpha", values)


def grad_of(value, param):
    return torch.autograd.grad(value, param)[0].tolist()


# ---- hand-computed fixtures ---------------------------------------------------------------------

OPS = PerKindCost({
    "conv2d": lambda g: g.in_channels * g.out_channels * g.kernel_taps * g.out_positions,
    "relu": lambda g: g.in_channels * g.out_positions,
    "pool": lambda g: g.in_channels * g.out_positions,
    "linear": lambda g: g.in_channels * g.out_channels,
}, name="ops")


def test_plain_cnn():
    search = PIT(PlainCNN(), input_shape=(1, 6, 6), regularizer="ops",
                 cost={"ops": OPS, "peak_memory": "peak_memory"})
    set_alpha(search, "conv1", [0.2, 0.9, 0.3, 5.0])   # n1 = 0.2 + 0.9 + 0.3 + 1 (keep-alive) = 2.4
    set_alpha(search, "conv2", [0.5] * 7 + [1.0])       # n2 = 3.5 + 1 = 4.5
    n1, n2 = 2.4, 4.5
    # params: conv1 1·n1·9, conv2 n1·n2·9, fc 9·n2·5 (biases are not counted, docs/behaviour.md §4.1)
    assert search.get_cost("params").item() == pytest.approx(9 * n1 + 9 * n1 * n2 + 45 * n2)
    assert search.get_cost("params").item() == search.get_size().item()
    assert search.get_cost("macs").item() == search.get_macs().item()
    # conv1 n1·9·36 positions, relu n1·36, pool n1·9 positions, conv2 n1·n2·9·9, fc 9·n2·5
    ops = search.get_cost("ops")
    assert ops.item() == pytest.approx(n1 * 9 * 36 + n1 * 36 + n1 * 9 + n1 * n2 * 81 + 45 * n2, rel=1e-6)
    assert search.get_regularization_loss().item() == ops.item()
    # elements: x 36 | x+conv1 36+36·n1 | conv1+relu 72·n1 | relu+pool 45·n1 | pool+conv2 9·n1+9·n2 |
    # conv2 (flatten is a view) 9·n2 | flatten+fc 9·n2+5 | fc 5: the relu step, 72·2.4 elements of 4 bytes
    peak = search.get_cost("peak_memory")
    assert peak.item() == pytest.approx(4 * 72 * n1)
    assert grad_of(peak, search.seed.conv1.out_features_masker.alpha) == pytest.approx([288.0] * 3 + [0.0])
    # exported: conv1 keeps 0.9 and the keep-alive channel (2), conv2 only the keep-alive one
    assert search.get_cost("peak_memory", binarized=True).item() == 4 * 72 * 2


def test_residual_branch_alive_across_layers():
    search = PIT(ResidualNet(), input_shape=(2, 8), cost="peak_memory")
    assert search.regularizer == "peak_memory"
    assert search.seed.stem.out_features_masker is search.seed.c2.out_features_masker   # the add shares it
    stem_alpha, c1_alpha = search.seed.stem.out_features_masker.alpha, search.seed.c1.out_features_masker.alpha
    # 8 elements per channel, 4 bytes: steps x 2+n0 | c1 n0+n1 | relu n0+2·n1 | c2 2·n0+n1 | add 3·n0 |
    # head n0+3 (channels); the stem's output (n0) is live at the c1, relu and c2 steps
    set_alpha(search, "stem", [0.5, 0.5, 0.5, 1.0])     # n0 = 2.5
    set_alpha(search, "c1", [0.8] * 5 + [1.0])          # n1 = 5
    peak = search.get_regularization_loss()
    assert peak.item() == pytest.approx(32 * (2.5 + 2 * 5))          # relu step: 400 bytes
    assert grad_of(peak, stem_alpha) == pytest.approx([32.0] * 3 + [0.0])
    assert grad_of(search.get_cost("peak_memory"), c1_alpha) == pytest.approx([64.0] * 5 + [0.0])
    set_alpha(search, "c1", [0.16] * 5 + [1.0])         # n1 = 1.8: now the add step (3·n0) wins
    peak = search.get_cost("peak_memory")
    assert peak.item() == pytest.approx(32 * 3 * 2.5)
    assert grad_of(peak, stem_alpha) == pytest.approx([96.0] * 3 + [0.0])


def supernet_search(**kwargs):
    torch.manual_seed(0)
    search = PITSuperNet(SuperNet(), input_shape=(2, 4, 4), **kwargs)
    set_param(search, "sn.sn_combiner.alpha", [math.log(0.2), math.log(0.5), math.log(0.3)])
    set_alpha(search, "stem", [0.5, 0.5, 0.5, 1.0])                     # n = 2.5 (stem, b0, b1.1, identity)
    set_alpha(search, "sn.sn_input_layers.1.0", [6 / 7] * 7 + [1.0])     # m = 7
    search.eval()
    with torch.no_grad():
        search(torch.randn(1, 2, 4, 4))                                 # θ = softmax(α) = (0.2, 0.5, 0.3)
    return search


def test_supernet_weighted_by_theta():
    search = supernet_search(regularizer="macs",
                             cost={"peak_memory": "peak_memory", "wm": lambda g: g.in_channels * g.out_channels})
    n, m = 2.5, 7.0
    torch.testing.assert_close(search.thetas(), torch.tensor([0.2, 0.5, 0.3]))
    # rows: stem 2·n, head n·3 outside; b0 n·n (θ0); b1.0 n·m and b1.1 m·n (θ1); Identity has none
    assert search.get_cost("wm").item() == pytest.approx(2 * n + 3 * n + 0.2 * n * n + 0.5 * 2 * n * m, rel=1e-6)
    # 16 elements per channel, 4 bytes; steps x 2+n | stem (…) | b0 n(1+θ0) | b1.0 n+θ1·m | b1.1 θ1(m+n) |
    # identity n | combiner (θ0+θ1+θ2)·n | head n+3: the b1.0 step, 6.0 channels
    peak = search.get_cost("peak_memory")
    assert peak.item() == pytest.approx(64 * (n + 0.5 * m))
    sn_alpha = search.seed.sn.sn_combiner.alpha
    stem_alpha = search.seed.stem.out_features_masker.alpha
    b10_alpha = search.seed.get_submodule("sn.sn_input_layers.1.0").out_features_masker.alpha
    g_sn, g_stem, g_b10 = torch.autograd.grad(peak, (sn_alpha, stem_alpha, b10_alpha))
    # d/dθ1 = 64·m = 448 through the softmax Jacobian θ1(δ1j − θj)
    assert g_sn.tolist() == pytest.approx([448 * 0.5 * -0.2, 448 * 0.5 * 0.5, 448 * 0.5 * -0.3])
    assert g_stem.tolist() == pytest.approx([64.0] * 3 + [0.0])
    assert g_b10.tolist() == pytest.approx([32.0] * 7 + [0.0])
    # the exported network keeps branch 1 (argmax α), n = 1 and m = 8 channels: 64·(1 + 8) bytes
    assert search.get_cost("peak_memory", binarized=True).item() == 64 * 9
    assert search.get_size().item() == search.get_cost("size").item()


def test_tcn_effective_taps_and_functional_ops():
    lat = PerKindCost({
        "conv1d": lambda g: 1e-3 * g.in_channels * g.out_channels * g.kernel_taps * g.out_positions,
        "relu": lambda g: 1e-4 * g.in_channels * g.out_positions,
        "add": lambda g: 1e-4 * g.in_channels * g.out_positions,
        "pad": lambda g: 1e-4 * g.in_channels * g.out_positions,
    }, name="lat")
    search = PIT(TCN(), input_shape=(2, 16), cost={"lat": lat, "peak_memory": PeakMemoryCost()}, regularizer="lat")
    set_alpha(search, "conv1", [0.5, 0.25, 0.75, 1.0])                  # n = 2.5, shared by conv1 and conv2
    set_param(search, "conv1.timestep_masker.beta", [0.4, 0.6, 1.0])
    set_param(search, "conv2.dilation_masker.gamma", [0.3, 1.0])
    n = 2.5
    # conv1: θβ = (0.4, 1.0, 2.0) over (1, 2, 3) terms, θγ all 1 -> k1 = 0.4 + 0.5 + 2/3
    # conv2: θγ = (1.3, 0.3, 1.3) over (2, 1, 2) terms, θβ all 1 -> k2 = 0.65 + 0.3 + 0.65
    k1, k2 = 0.4 + 0.5 + 2 / 3, 1.6
    # relu and add: n channels, 16 positions; pad1: 2 channels, 18 positions; pad2: n channels, 20
    expected = 1e-3 * 16 * (2 * n * k1 + n * n * k2 + n * 2) + 1e-4 * (16 * (n + n) + 2 * 18 + 20 * n)
    assert search.get_cost("lat").item() == pytest.approx(expected, rel=1e-6)
    # elements (16 per channel, pads 18 and 20): the conv2 step holds relu 16n, pad2 20n, conv2 16n
    peak = search.get_cost("peak_memory")
    assert peak.item() == pytest.approx(4 * 52 * n)
    assert grad_of(peak, search.seed.conv1.out_features_masker.alpha) == pytest.approx([208.0] * 3 + [0.0])


# ---- peak memory of the exported network ---------------------------------------------------------

CASES = [(PlainCNN, PIT, (1, 6, 6)), (ResidualNet, PIT, (2, 8)), (SuperNet, PITSuperNet, (2, 4, 4)),
         (TCN, PIT, (2, 16))]


@pytest.mark.parametrize("model, wrapper, shape", CASES)
def test_binarized_peak_is_the_exported_networks(model, wrapper, shape):
    """Channels and branch choices (the receptive field is left whole: export shrinks a causal
    padding with it, which the searched graph's padding node does not)."""
    gen = torch.Generator().manual_seed(3)
    search = wrapper(model(), input_shape=shape, cost="peak_memory")
    for _ in range(3):
        with torch.no_grad():
            for name, p in search.named_nas_parameters():
                if not name.endswith(("beta", "gamma")):
                    p.copy_(torch.rand(p.shape, generator=gen) * 1.2 - 0.1)
        gm = trace(search.arch_export(add_bn=False))
        propagate_shapes(gm, (torch.rand(1, *shape),))
        assert search.get_cost("peak_memory", binarized=True).item() == PeakMemoryCost().bind(gm)(torch.zeros(0))


# ---- latency table through the wrapper ------------------------------------------------------------

def bilinear(cin, cout):
    return 1e-6 + 2e-7 * cin * cout


def plain_cnn_table(drop_kind: str = "", overhead: float = 0.0) -> LatencyTable:
    def row(kind, kernel, stride, spatial, cin, cout, seconds):
        return {"kind": kind, "kernel": kernel, "stride": stride, "depthwise": "0", "in_spatial": spatial[0],
                "out_spatial": spatial[1], "cin": str(cin), "cout": str(cout), "backend": "onnxruntime",
                "median_s": repr(seconds)}
    rows = [row("conv2d", "3x3", "1x1", ("", "6x6"), 1, o, bilinear(1, o)) for o in (1, 4)]
    rows += [row("conv2d", "3x3", "1x1", ("", "3x3"), i, o, bilinear(i, o))
             for i, o in itertools.product((1, 4), (1, 8))]
    rows += [row("relu", "", "", ("6x6", "6x6"), c, c, 1e-7 * c) for c in (1, 4)]
    rows += [row("pool", "2x2", "2x2", ("6x6", "3x3"), c, c, 3e-7 * c) for c in (1, 4)]
    rows += [row("linear", "", "", ("", ""), i, o, bilinear(i, o)) for i, o in itertools.product((1, 72), (1, 5))]
    rows += [row("overhead", "", "", ("", ""), 1, 1, overhead)] if overhead else []
    rows = [r for r in rows if r["kind"] != drop_kind]
    return LatencyTable.from_rows(enumerate(rows, start=2), "onnxruntime", "fixture table")


def test_latency_table_cost():
    search = PIT(PlainCNN(), input_shape=(1, 6, 6), cost=LatencyTableCost(plain_cnn_table()))
    assert search.regularizer == "latency_table"
    set_alpha(search, "conv1", [0.2, 0.9, 0.3, 5.0])
    set_alpha(search, "conv2", [0.5] * 7 + [1.0])
    n1, n2 = 2.4, 4.5
    # the table times are bilinear / linear in the channels, so the interpolation is exact
    expected = bilinear(1, n1) + 1e-7 * n1 + 3e-7 * n1 + bilinear(n1, n2) + bilinear(9 * n2, 5)
    assert search.get_regularization_loss().item() == pytest.approx(expected, rel=1e-6)
    # with a per-call overhead row: each of the 5 layer calls less it, the network pays it once
    corrected = PIT(PlainCNN(), input_shape=(1, 6, 6), cost=LatencyTableCost(plain_cnn_table(overhead=2e-7)))
    corrected.load_state_dict(search.state_dict())
    assert corrected.get_regularization_loss().item() == pytest.approx(expected - 4 * 2e-7, rel=1e-6)


# ---- fast == reference, finite differences, compile ------------------------------------------------

def all_costs(model, wrapper, shape, **kwargs):
    torch.manual_seed(0)
    search = wrapper(model().double(), input_shape=shape, regularizer="ops",
                     cost={"ops": lambda g: g.in_channels * g.out_channels * g.kernel_taps * g.out_positions.sqrt(),
                           "peak_memory": "peak_memory"}, **kwargs)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in search.nas_parameters():
            p.copy_(0.1 + torch.rand(p.shape, generator=gen, dtype=F64))
    if wrapper is PITSuperNet:
        with torch.no_grad():
            search(torch.randn(1, *shape, dtype=F64))
    return search


@pytest.mark.parametrize("model, wrapper, shape", CASES)
def test_fast_equals_reference(model, wrapper, shape):
    search = all_costs(model, wrapper, shape)
    params = list(search.nas_parameters())
    results = {}
    for fast in (True, False):
        search.fast = fast
        for name, binarized in itertools.product(("ops", "peak_memory", "size", "macs"), (False, True)):
            value = search.get_cost(name, binarized)
            results.setdefault((name, binarized), []).append(
                (value.detach(), torch.autograd.grad(value, params, allow_unused=True)))
    for (name, _), ((fast_v, fast_g), (ref_v, ref_g)) in results.items():
        torch.testing.assert_close(fast_v, ref_v, rtol=1e-6, atol=0)
        for a, b in zip(fast_g, ref_g):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * (1 + float(fast_v)))


@pytest.mark.parametrize("model, wrapper, shape", CASES)
def test_gradients_match_finite_differences(model, wrapper, shape):
    search = all_costs(model, wrapper, shape)
    params = list(search.nas_parameters())
    for name in ("ops", "peak_memory"):
        grads = torch.autograd.grad(search.get_cost(name), params, allow_unused=True)
        for param, grad in zip(params, grads):
            for i in range(param.numel()):
                with torch.no_grad():
                    flat = param.view(-1)
                    flat[i] += 1e-6
                    up = search.get_cost(name).item()
                    flat[i] -= 2e-6
                    down = search.get_cost(name).item()
                    flat[i] += 1e-6
                numeric = (up - down) / 2e-6
                analytic = 0.0 if grad is None else grad.view(-1)[i].item()
                assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("model, wrapper, shape", [CASES[1], CASES[2]])
def test_regularization_loss_compiles_once(model, wrapper, shape):
    search = all_costs(model, wrapper, shape, targets={"peak_memory": 100.0})
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(search.get_regularization_loss, backend=counter, fullgraph=True)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        with torch.no_grad():
            for p in search.nas_parameters():
                p.copy_(0.1 + torch.rand(p.shape, generator=gen, dtype=F64))
        search.update_targets()
        torch.testing.assert_close(compiled(), search.get_regularization_loss())
    assert counter.frame_count == 1


# ---- targets ---------------------------------------------------------------------------------------

def test_targets_bound_the_exported_cost_and_grow_while_missed():
    search = PIT(ToyModel(), input_shape=(3, 15), regularizer="size", targets={"macs": 5000.0})
    assert search.regularizer == "size" and search.supported_regularizers() == ("size", "macs")
    # unsearched: macs 9980 (docs/behaviour.md §4.1), size 1460 minimized over itself
    assert search.get_regularization_loss().item() == pytest.approx(9980 / 5000 - 1 + 1460 / 1460)
    assert search.targets_met() == {"macs": False}
    search.update_targets()
    search.update_targets()
    assert search.cost_targets.strength.tolist() == [2.25]
    assert search.get_regularization_loss().item() == pytest.approx(2.25 * (9980 / 5000 - 1) + 1)
    resumed = PIT(ToyModel(), input_shape=(3, 15), regularizer="size", targets={"macs": 5000.0})
    resumed.load_state_dict(search.state_dict())
    assert resumed.cost_targets.strength.tolist() == [2.25]
    set_alpha(search, "conv2", [0.1] * 19 + [1.0])   # conv2 keeps 1 channel: the exported MACs drop under 5000
    assert search.targets_met() == {"macs": True}
    search.update_targets()
    assert search.cost_targets.strength.tolist() == [2.25]
    assert search.get_regularization_loss().item() == pytest.approx(search.get_size().item() / 1460)


def test_only_targets_and_several_costs():
    search = PIT(ToyModel(), input_shape=(3, 15), cost="peak_memory",
                 targets={"peak_memory": 1000.0, "macs": 1e5})
    assert search.regularizer is None
    # peak: conv0, conv1 and their sum alive at the add: 3·10·15 elements of 4 bytes
    assert search.get_regularization_loss().item() == pytest.approx(1800 / 1000 - 1)
    search.regularizer = "size"
    assert search.get_regularization_loss().item() == pytest.approx(1800 / 1000 - 1 + 1)


# ---- errors: named, and the user's model untouched --------------------------------------------------

def untouched(model, build):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    build()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kwargs, error, message", [
    ({"cost": {"x": 3}}, TypeError, r"cost 'x': expected a built-in name, a CostSpec or a callable"),
    ({"cost": {"x": lambda g: g.in_channels * math.nan}}, FloatingPointError, r"cost spec 'x' returned nan"),
    ({"cost": {"x": lambda g: 3.0}}, TypeError, r"cost spec 'x' returned a float"),
    ({"cost": {"macs": lambda g: g.in_channels}}, ValueError, r"cost name 'macs' is the built-in macs cost"),
    ({"cost": {"a": "macs", "b": "params"}}, ValueError, r"several costs were given \(\['a', 'b'\]\)"),
    ({"regularizer": "latency"}, ValueError, r"unknown regularizer 'latency'; allowed values are \('size', 'macs'\)"),
    ({"targets": {"latency": 1.0}}, ValueError, r"unknown cost name 'latency'; the costs are \['size', 'params'"),
    ({"targets": {"macs": -5.0}}, ValueError, r"the target of 'macs' must be a positive finite number, got -5.0"),
    ({"targets": {"macs": 5e3}, "regularizer": "macs"}, ValueError, r"'macs' has a target"),
    ({"cost": LatencyTableCost(plain_cnn_table(drop_kind="pool"))}, ValueError,
     r"fixture table \(onnxruntime\) has no entry for layer 'pool' \(pool, kernel 2x2, stride 2x2, spatial 6x6 -> "
     r"3x3\); measured pool geometries: none. Measure it with bench/latency_table.py"),
])
def test_bad_costs_are_errors_naming_them(kwargs, error, message):
    model = PlainCNN()
    untouched(model, lambda: pytest.raises(error, PIT, model, input_shape=(1, 6, 6), **kwargs).match(message))


def test_errors_after_construction():
    search = PIT(PlainCNN(), input_shape=(1, 6, 6), cost={"log": lambda g: torch.log(g.out_channels - 1.5)})
    with pytest.raises(ValueError, match=r"unknown cost 'latency'; the costs are \('size', 'params', 'macs', 'log'\)"):
        search.get_cost("latency")
    with pytest.raises(RuntimeError, match=r"no targets were given"):
        search.update_targets()
    set_alpha(search, "conv1", [0.0, 0.0, 0.0, 1.0])                    # 1 channel: log(-0.5)
    with pytest.raises(FloatingPointError, match=r"cost spec 'log' returned nan for layer 'conv1'"):
        search.get_cost("log")
    set_alpha(search, "conv1", [math.nan, 0.0, 0.0, 1.0])
    with pytest.raises(FloatingPointError, match=r"seed\.conv1\.out_features_masker\.alpha"):
        search.get_cost("log")
    with pytest.raises(ValueError, match=r"PIT: peak memory of a model with supernets"):
        PIT(SuperNet(), input_shape=(2, 4, 4), cost="peak_memory")
