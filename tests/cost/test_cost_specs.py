"""Per-layer cost specs: PIT's formulas on hand-computed fixtures, fast == looped reference
(values and gradients), finite-difference gradients, user specs and their errors."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from plinio.cost.geometry import LayerGeometry, LayerShape, shapes_from_graph
from plinio.cost.peak_memory import PeakMemoryCost
from plinio.cost.specs import MACS, PARAMS, FunctionCost, LayerCosts, PerKindCost, resolve_costs
from tests.cost.cost_helpers import TinySuperNet, TinyTCN, random_counts, traced
from tests.models import ToyModel


def toy_shapes():
    return shapes_from_graph(traced(ToyModel(), ToyModel.input_shape))


def test_shapes_from_graph_reads_the_toy_model():
    by_name = {s.name: s for s in toy_shapes()}
    assert [s.kind for s in by_name.values()] == ["conv1d", "conv1d", "add", "relu", "pool", "conv1d", "linear"]
    assert by_name["conv2"] == LayerShape("conv2", "conv1d", 10, 20, kernel_size=(5,), stride=(1,),
                                          dilation=(1,), in_spatial=(7,), out_spatial=(7,))
    assert by_name["pool"].kernel_size == (2,) and by_name["pool"].stride == (2,)
    assert by_name["fc"].in_channels == 140 and by_name["fc"].out_spatial == ()
    assert by_name["add"].in_channels == by_name["add"].out_channels == 10


class Twice(nn.Module):
    """One conv called twice (shared weights), and a functional max pool."""

    def __init__(self, second_size=None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.second_size = second_size

    def forward(self, x):
        y = self.conv(self.conv(x))
        if self.second_size is not None:
            y = self.conv(F.interpolate(y, size=self.second_size))
        return F.max_pool2d(y, 2)


def test_a_module_called_twice_counts_its_calls():
    shapes = shapes_from_graph(traced(Twice(), (4, 6, 6)))
    assert [(s.name, s.calls) for s in shapes] == [("conv", 2), ("max_pool2d", 1)]
    assert shapes[1].kernel_size == (2, 2) and shapes[1].stride == (2, 2) and shapes[1].out_spatial == (3, 3)
    costs = LayerCosts(shapes, {"params": "params", "macs": "macs"})
    result = costs(*costs.full_width())
    assert result["params"].tolist() == [144.0, 0.0]
    assert result["macs"].tolist() == [144.0 * 36 * 2, 0.0]
    with pytest.raises(ValueError, match=r"module 'conv' is called on inputs of different shapes "
                                         r"\(\(6, 6\) and \(3, 3\)\)"):
        shapes_from_graph(traced(Twice(second_size=(3, 3)), (4, 6, 6)))


def test_a_linear_layer_on_a_sequence_is_an_error_naming_it():
    model = nn.Sequential(nn.Conv1d(2, 4, 1), nn.Linear(8, 3))
    with pytest.raises(ValueError, match=r"linear layer '1' is applied to a 3-d input \(1, 4, 8\)"):
        shapes_from_graph(traced(model, (2, 8)))


def test_toy_model_at_full_width_gives_pit_size_and_macs():
    costs = LayerCosts(toy_shapes(), {"size": "size", "macs": "macs"})
    for result in (costs(*costs.full_width()), costs.reference(*costs.full_width())):
        assert result["size"].sum().item() == 1460
        assert result["macs"].sum().item() == 9980


def test_params_and_macs_hand_computed_with_effective_counts():
    shapes = [
        LayerShape("conv", "conv2d", 8, 16, (3, 3), (1, 1), (1, 1), 1, (10, 10), (10, 10), calls=2),
        LayerShape("dw", "conv2d", 16, 16, (3, 3), (2, 2), (1, 1), 16, (10, 10), (5, 5)),
        LayerShape("fc", "linear", 32, 4),
        LayerShape("bn", "batchnorm", 16, 16, in_spatial=(5, 5), out_spatial=(5, 5), calls=2),
        LayerShape("add", "add", 16, 16, in_spatial=(5, 5), out_spatial=(5, 5)),
        LayerShape("tcn", "conv1d", 3, 10, (3,), (1,), (2,), 1, (15,), (15,)),
    ]
    costs = LayerCosts(shapes, {"params": PARAMS, "macs": MACS})
    cin = torch.tensor([2.5, 3.0, 7.0, 3.0, 3.0, 3.0])
    cout = torch.tensor([3.0, 3.0, 4.0, 3.0, 3.0, 10.0])
    taps = torch.tensor([9.0, 9.0, 1.0, 1.0, 1.0, 2.25])
    result = costs(cin, cout, taps)
    # conv 2.5·3·9; depthwise 3·3·9/16 (original groups); linear 7·4; BN 2·3; add 0; conv1d 3·10·2.25
    expected_params = [67.5, 81 / 16, 28.0, 6.0, 0.0, 67.5]
    # conv · 100 positions · 2 calls; depthwise · 25; linear once; BN Cin · 2 calls; add 0; conv1d · 15
    expected_macs = [13500.0, 81 / 16 * 25, 28.0, 6.0, 0.0, 1012.5]
    assert result["params"].tolist() == pytest.approx(expected_params)
    assert result["macs"].tolist() == pytest.approx(expected_macs)


def test_supernet_layers_weighted_by_theta():
    shapes = shapes_from_graph(traced(TinySuperNet(), (2, 4, 4)))
    convs = [s for s in shapes if s.kind == "conv2d"]
    assert [s.name for s in convs] == ["stem", "b0", "b1.0", "b1.1"]
    costs = LayerCosts(convs, {"params": "params", "macs": "macs"})
    theta = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64, requires_grad=True)
    weight = torch.cat([theta.new_ones(1), theta[:1], theta[1:2], theta[1:2]])   # stem outside, b1 has two convs
    result = costs(*costs.full_width(torch.float64))
    params, macs = (weight * result["params"]).sum(), (weight * result["macs"]).sum()
    # stem 2·4·1; b0 4·4·9; b1 4·8·9 + 8·4·9; Identity none; 16 output positions each
    assert params.item() == pytest.approx(8 + 0.2 * 144 + 0.5 * 576)
    assert macs.item() == pytest.approx(16 * (8 + 0.2 * 144 + 0.5 * 576))
    assert torch.autograd.grad(params, theta)[0].tolist() == [144.0, 576.0, 0.0]


def test_tcn_with_effective_taps():
    shapes = shapes_from_graph(traced(TinyTCN(), (2, 16)))
    convs = [s for s in shapes if s.kind == "conv1d"]
    assert [(s.name, s.in_spatial, s.out_spatial, s.dilation) for s in convs] == \
        [("conv1", (18,), (16,), (1,)), ("conv2", (20,), (16,), (2,))]
    costs = LayerCosts(convs, {"params": "params", "macs": "macs"})
    n, k = 2.5, 1.75    # effective channels shared by conv1's output and conv2, conv2's effective taps
    result = costs(torch.tensor([2.0, n]), torch.tensor([n, n]), torch.tensor([3.0, k]))
    assert result["params"].tolist() == [2 * n * 3, n * n * k]
    assert result["macs"].tolist() == [16 * 2 * n * 3, 16 * n * n * k]


def user_specs():
    """A callable for every kind, and per-kind formulas that give functional ops a cost."""
    def energy(g: LayerGeometry) -> torch.Tensor:
        return g.in_channels ** 2 * g.out_positions.sqrt() + g.kernel_taps * g.out_channels
    per_kind = PerKindCost({
        "conv1d": lambda g: 1e-6 * g.in_channels * g.out_channels * g.kernel_taps * g.out_positions,
        "linear": lambda g: 2e-6 * g.in_channels * g.out_channels,
        "add": lambda g: 1e-7 * g.in_channels * g.out_positions,
        "relu": lambda g: 5e-8 * g.in_channels * g.out_positions,
        "pool": lambda g: torch.tensor(3e-6, dtype=g.in_channels.dtype),
    }, name="latency_model")
    return {"params": "params", "macs": "macs", "energy": energy, "latency_model": per_kind}


def weighted_sum(result, weights):
    return sum((w * result[name]).sum() for name, w in weights.items())


def test_fast_path_equals_looped_reference_values_and_gradients():
    shapes = toy_shapes()
    costs = LayerCosts(shapes, user_specs())
    gen = torch.Generator().manual_seed(1)
    weights = {name: torch.rand(len(shapes), generator=gen, dtype=torch.float64) for name in costs.specs}
    for seed in range(3):
        counts = random_counts(shapes, seed)
        fast = costs(*counts)
        ref = costs.reference(*counts)
        for name in costs.specs:
            torch.testing.assert_close(fast[name], ref[name], rtol=1e-12, atol=0)
        grads_fast = torch.autograd.grad(weighted_sum(fast, weights), counts)
        grads_ref = torch.autograd.grad(weighted_sum(ref, weights), counts)
        for a, b in zip(grads_fast, grads_ref):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    assert fast["latency_model"][4].item() == 3e-6  # a 0-dim constant broadcasts to its layer


def test_gradients_match_finite_differences():
    shapes = toy_shapes()
    costs = LayerCosts(shapes, user_specs())

    def totals(cin, cout, taps):
        result = costs(cin, cout, taps)
        return torch.stack([result[name].sum() for name in costs.specs])

    assert torch.autograd.gradcheck(totals, random_counts(shapes, 7))


def test_resolve_costs_accepts_names_specs_callables_and_dicts():
    def energy(g):
        return g.in_channels
    assert resolve_costs("size") == {"size": PARAMS}
    assert resolve_costs(MACS) == {"macs": MACS}
    resolved = resolve_costs({"m": "macs", "peak": "peak_memory", "e": energy})
    assert resolved["m"] is MACS and isinstance(resolved["peak"], PeakMemoryCost)
    assert isinstance(resolved["e"], FunctionCost) and resolved["e"].fn is energy
    assert list(resolve_costs(energy)) == ["energy"]
    with pytest.raises(ValueError, match="latency table is LatencyTableCost.from_csv"):
        resolve_costs("latency_table")
    with pytest.raises(ValueError, match="empty"):
        resolve_costs({})


# ---- errors ------------------------------------------------------------------------------------

CONV = LayerShape("features.0", "conv2d", 3, 8, (3, 3), (1, 1), (1, 1), 1, (8, 8), (8, 8))
ADD = LayerShape("add_1", "add", 8, 8, in_spatial=(8, 8), out_spatial=(8, 8))


@pytest.mark.parametrize("spec, error, message", [
    (lambda g: 3.0, TypeError, r"cost spec 'bad' returned a float for the conv2d layers 'features.0'"),
    (lambda g: g.in_channels.long(), TypeError, r"returned a torch.int64 tensor"),
    (lambda g: g.in_channels.repeat(2), ValueError, r"returned shape \(2,\) .* expected \(1,\)"),
    (lambda g: g.in_channels * math.nan, FloatingPointError,
     r"cost spec 'bad' returned nan for layer 'features.0' \(conv2d, effective in=3, out=8, taps=9\)"),
])
def test_bad_spec_is_an_error_naming_it_at_construction(spec, error, message):
    with pytest.raises(error, match=message):
        LayerCosts([CONV], {"params": "params", "bad": spec})


def test_spec_turning_nan_during_the_search_names_the_layer():
    costs = LayerCosts([ADD, CONV], {"log": lambda g: torch.log(g.in_channels - 2)})
    with pytest.raises(FloatingPointError, match=r"cost spec 'log' returned nan for layer 'features.0'"):
        costs(torch.tensor([4.0, 1.5]), torch.tensor([4.0, 8.0]), torch.tensor([1.0, 9.0]))


def test_non_finite_effective_counts_are_reported_as_diverged():
    costs = LayerCosts([CONV], {"params": "params"})
    with pytest.raises(FloatingPointError, match=r"effective counts of layer 'features.0'.*diverged"):
        costs(torch.tensor([math.nan]), torch.tensor([8.0]), torch.tensor([9.0]))


def test_unknown_names_and_kinds_are_errors_naming_them():
    with pytest.raises(ValueError, match=r"unknown built-in per-layer cost 'flops'; choose one of macs, params, size"):
        LayerCosts([CONV], {"x": "flops"})
    lstm = LayerShape("rnn", "lstm", 8, 8)
    with pytest.raises(ValueError, match=r"built-in cost 'params' is not defined for kind 'lstm' \(layer 'rnn'\)"):
        LayerCosts([CONV, lstm], {"params": "params"})
    per_kind = PerKindCost({"conv2d": lambda g: g.in_channels}, name="lat")
    with pytest.raises(ValueError, match=r"cost 'lat' has no formula for kind 'add' \(layer 'add_1'\)"):
        LayerCosts([CONV, ADD], {"lat": per_kind})
    with pytest.raises(TypeError, match=r"cost 'x': expected a built-in name, a CostSpec or a callable"):
        LayerCosts([CONV], {"x": 3})


def test_bad_counts_and_layer_lists_are_errors():
    costs = LayerCosts([CONV, ADD], {"params": "params"})
    with pytest.raises(ValueError, match=r"in_channels must be a floating tensor of shape \(2,\)"):
        costs(torch.ones(3), torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match=r"layer names must be unique, \['features.0'\]"):
        LayerCosts([CONV, CONV], {"params": "params"})
    with pytest.raises(ValueError, match=r"LayerShape 'g': groups=2 does not divide in_channels=3"):
        LayerShape("g", "conv2d", 3, 8, (3, 3), groups=2)
    with pytest.raises(ValueError, match=r"LayerShape 'n': in_channels must be a positive int"):
        LayerShape("n", "linear", 0, 8)
