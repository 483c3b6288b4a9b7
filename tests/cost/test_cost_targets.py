"""Cost targets: only the excess over a target is penalised, the strength grows while a
target is missed and resumes from the state dict, several costs at once, and the errors."""
import math

import pytest
import torch

from plinio.cost.targets import CostTargets


def t(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64, requires_grad=True)


def test_only_the_excess_is_penalised():
    reg = CostTargets({"macs": 1000.0, "peak_memory": 64.0}, strength=2.0)
    macs, peak = t(800.0), t(96.0)
    loss = reg({"macs": macs, "peak_memory": peak, "params": t(5.0)})   # extra costs are ignored
    assert loss.item() == pytest.approx(2.0 * (96 / 64 - 1))
    g_macs, g_peak = torch.autograd.grad(loss, (macs, peak))
    assert g_macs.item() == 0.0 and g_peak.item() == pytest.approx(2.0 / 64)


def test_minimize_one_cost_and_bound_the_others():
    reg = CostTargets({"peak_memory": 64.0}, minimize={"latency": 2e-3}, strength=1.0)
    lat = t(3e-3)
    loss = reg({"latency": lat, "peak_memory": t(32.0)})
    assert loss.item() == pytest.approx(1.5)
    assert torch.autograd.grad(loss, lat)[0].item() == pytest.approx(500.0)


def test_strength_grows_while_missed_and_resumes_from_the_state_dict():
    reg = CostTargets({"macs": 100.0, "peak_memory": 10.0}, strength=1.0, growth=2.0, max_strength=5.0)
    for _ in range(3):
        reg.update({"macs": t(150.0), "peak_memory": t(10.0)})   # macs missed, peak met (equal)
    assert reg.strength.tolist() == [5.0, 1.0]                    # 1 -> 2 -> 4 -> capped at 5
    assert reg.met({"macs": t(150.0), "peak_memory": t(10.0)}) == {"macs": False, "peak_memory": True}
    resumed = CostTargets({"macs": 100.0, "peak_memory": 10.0}, strength=1.0, growth=2.0, max_strength=5.0)
    resumed.load_state_dict(reg.state_dict())
    costs = {"macs": t(150.0), "peak_memory": t(12.0)}
    assert resumed(costs).item() == reg(costs).item() == pytest.approx(5.0 * 0.5 + 1.0 * 0.2)


@pytest.mark.parametrize("kwargs, message", [
    ({"targets": {"macs": -5.0}}, r"the target of 'macs' must be a positive finite number, got -5.0"),
    ({"targets": {"macs": math.nan}}, r"the target of 'macs' must be a positive finite number, got nan"),
    ({"targets": {"lat": 1.0}, "known_costs": ("size", "macs")},
     r"unknown cost name 'lat'; the costs are \['size', 'macs'\]"),
    ({"targets": {"macs": 1.0}, "minimize": {"macs": 1.0}}, r"\['macs'\] both minimized and bounded"),
    ({"targets": {"macs": 1.0}, "growth": 0.5}, r"growth must be >= 1"),
    ({"targets": {}}, r"give targets"),
])
def test_bad_targets_are_errors_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CostTargets(**kwargs)


def test_bad_costs_are_errors_naming_them():
    reg = CostTargets({"macs": 100.0})
    with pytest.raises(KeyError, match=r"no cost named 'macs' among the given costs \['size'\]"):
        reg({"size": t(1.0)})
    with pytest.raises(TypeError, match=r"cost 'macs' must be a 0-dim floating tensor, got float"):
        reg({"macs": 3.0})
    with pytest.raises(FloatingPointError, match=r"cost 'macs' is nan"):
        reg({"macs": t(math.nan)})
