"""User errors met at construction are one clear message, not a chain of tracer and
interpreter internals: no ``__cause__``/``__context__`` shown, a short traceback, and the
message says what to change (docs/behaviour.md §8)."""
import traceback

import pytest
import torch
import torch.nn as nn

from plinio.methods import PIT, PITSuperNet
from plinio.methods.pit_supernet import PITSuperNetModule

MAX_TRACEBACK_LINES = 25  # the user's call and plinio's frames down to the raise


class Conv2dModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean(dim=(2, 3)))


class SuperNetModel(nn.Module):
    def __init__(self, second_padding: int = 2) -> None:
        super().__init__()
        self.sn = PITSuperNetModule([nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 5, padding=second_padding)])
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.sn(x).mean(dim=(2, 3)))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:  # data-dependent control flow
            return y
        return -y


def _short_error(build, exc_type, match: str) -> BaseException:
    with pytest.raises(exc_type, match=match) as info:
        build()
    err = info.value
    assert err.__cause__ is None and err.__suppress_context__, "the internal chain is shown"
    lines = "".join(traceback.format_exception(err)).splitlines()
    assert len(lines) <= MAX_TRACEBACK_LINES, "\n".join(lines)
    assert "During handling of the above exception" not in "\n".join(lines)
    return err


@pytest.mark.parametrize("wrapper", [PIT, PITSuperNet])
@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (16, 3, 32, 32)])
def test_input_shape_with_the_batch_dimension_is_named_as_such(wrapper, shape):
    model = SuperNetModel() if wrapper is PITSuperNet else Conv2dModel()
    _short_error(lambda: wrapper(model, input_shape=shape), ValueError,
                 rf"^input_shape must not include the batch dimension; got \({shape[0]}, 3, 32, 32\), "
                 r"did you mean \(3, 32, 32\)\?$")


def test_a_shape_that_fails_without_its_first_entry_too_is_not_called_a_batch():
    err = _short_error(lambda: PIT(Conv2dModel(), input_shape=(1, 4, 32, 32)), ValueError,
                       r"cannot run on an input of shape \[\(1, 1, 4, 32, 32\)\].*module 'conv'")
    assert "batch dimension;" not in str(err)


def test_branch_shape_mismatch_is_one_message():
    _short_error(lambda: PITSuperNet(SuperNetModel(second_padding=0), input_shape=(3, 16, 16)), ValueError,
                 r"branch 1 of supernet 'sn' gives output shape \(1, 8, 12, 12\) but branch 0 gives "
                 r"\(1, 8, 16, 16\)")


@pytest.mark.filterwarnings("ignore:PITSuperNet. DataDependent contains no PITSuperNetModule")
@pytest.mark.parametrize("wrapper", [PIT, PITSuperNet])
def test_data_dependent_control_flow_names_the_users_line(wrapper):
    err = _short_error(lambda: wrapper(DataDependent(), input_shape=(3, 8, 8)), ValueError,
                       r"cannot trace the model with torch.fx inside module 'DataDependent' at .*"
                       r"test_short_errors\.py:\d+: if y\.sum\(\) > 0:.*data-dependent control flow")
    assert "TraceError" in str(err)


def test_model_that_cannot_run_on_the_shape_is_one_message():
    _short_error(lambda: PITSuperNet(SuperNetModel(), input_shape=(4, 16, 16)), ValueError,
                 r"cannot run on the given input shape/example in module 'sn\.sn_input_layers\.0'.*input_shape")
