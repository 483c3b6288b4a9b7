"""plinio.safety on plain parameters: detection, naming, the debug switch."""
from typing import Iterator, Tuple

import pytest
import torch
from torch import nn

from plinio import safety


class _FakeWrapper(nn.Module):
    """Stands in for a DNAS wrapper: only ``named_nas_parameters`` is used by the check."""

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(4))
        self.beta = nn.Parameter(torch.ones(3))
        self.weight = nn.Parameter(torch.ones(2, 2))

    def named_nas_parameters(self) -> Iterator[Tuple[str, nn.Parameter]]:
        yield "layer.alpha", self.alpha
        yield "layer.beta", self.beta


@pytest.fixture(autouse=True)
def _reset_switch(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(safety.DEBUG_ENV_VAR, raising=False)
    safety.set_debug_checks(None)
    yield
    safety.set_debug_checks(None)


def test_finite_parameters_pass() -> None:
    safety.check_nas_parameters(_FakeWrapper(), "arch_export")
    safety.check_finite([], where="nothing")


@pytest.mark.parametrize("value, label", [(float("nan"), "1 NaN"), (float("inf"), "1 \\+Inf"),
                                          (float("-inf"), "1 -Inf")])
def test_non_finite_value_names_the_parameter(value: float, label: str) -> None:
    model = _FakeWrapper()
    with torch.no_grad():
        model.beta[1] = value
    with pytest.raises(FloatingPointError,
                       match=rf"_FakeWrapper\.arch_export: architectural parameter 'layer\.beta' "
                             rf"holds {label} \(of 3 values\).*learning rate"):
        safety.check_nas_parameters(model, "arch_export")


def test_first_bad_parameter_in_order_is_named_with_all_kinds_counted() -> None:
    model = _FakeWrapper()
    with torch.no_grad():
        model.alpha[0] = float("nan")
        model.alpha[1] = float("nan")
        model.alpha[2] = float("-inf")
        model.beta[0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"'layer\.alpha' holds 2 NaN, 1 -Inf \(of 4"):
        safety.check_nas_parameters(model, "arch_export")


def test_network_weights_are_not_architectural() -> None:
    model = _FakeWrapper()
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    safety.check_nas_parameters(model, "arch_export")


def test_integer_and_boolean_tensors_are_ignored() -> None:
    safety.check_finite([("flag", torch.tensor(True)), ("count", torch.tensor(3))], where="x")


def test_half_precision_parameters_are_checked() -> None:
    bad = torch.tensor([1.0, float("inf")], dtype=torch.bfloat16)
    good = torch.ones(2, dtype=torch.float16)
    with pytest.raises(FloatingPointError, match="'b' holds 1 \\+Inf"):
        safety.check_finite([("a", good), ("b", bad)], where="mixed")


def test_debug_switch_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(safety.DEBUG_ENV_VAR, raising=False)
    assert not safety.debug_checks_enabled()
    monkeypatch.setenv(safety.DEBUG_ENV_VAR, "1")
    assert safety.debug_checks_enabled()
    safety.set_debug_checks(False)  # the explicit switch wins over the environment
    assert not safety.debug_checks_enabled()
    safety.set_debug_checks(None)
    monkeypatch.setenv(safety.DEBUG_ENV_VAR, "off")
    assert not safety.debug_checks_enabled()
    safety.set_debug_checks(True)
    assert safety.debug_checks_enabled()


def test_bad_switch_values_are_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TypeError, match="True, False or None"):
        safety.set_debug_checks(1)  # type: ignore[arg-type]
    monkeypatch.setenv(safety.DEBUG_ENV_VAR, "maybe")
    with pytest.raises(ValueError, match="PLINIO_DEBUG_NANS='maybe' is not understood"):
        safety.debug_checks_enabled()


def test_check_needs_a_wrapper() -> None:
    with pytest.raises(TypeError, match="needs a DNAS wrapper.*Linear"):
        safety.check_nas_parameters(nn.Linear(2, 2), "arch_export")
