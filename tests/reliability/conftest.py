"""Shared fixtures of the reliability tests: a guard proving that a failed call leaves the
user's model exactly as it was (parameters, buffers and module structure)."""
import sys
from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest
import torch
from torch import nn


def _snapshot(model: nn.Module) -> Tuple[str, Dict[str, torch.Tensor], Dict[str, bool], bool]:
    """Structure (repr and class of every submodule), a copy of every tensor of the state,
    every parameter's requires_grad flag and the training flag."""
    structure = repr(model) + "|" + ";".join(
        f"{name}:{type(module).__module__}.{type(module).__qualname__}"
        for name, module in model.named_modules()
    )
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    return structure, state, grads, model.training


@pytest.fixture
def unchanged() -> Callable[[nn.Module], Callable[[], None]]:
    """``check = unchanged(model)`` records the model; ``check()`` asserts it is identical."""

    def record(model: nn.Module) -> Callable[[], None]:
        before = _snapshot(model)

        def check() -> None:
            after = _snapshot(model)
            assert after[0] == before[0], "module structure changed"
            assert after[1].keys() == before[1].keys(), "state_dict keys changed"
            for key, value in before[1].items():
                assert torch.equal(after[1][key], value), f"state entry {key} changed"
                assert after[1][key].dtype == value.dtype, f"dtype of {key} changed"
            assert after[2] == before[2], "requires_grad flags changed"
            assert after[3] == before[3], "training flag changed"

        return check

    return record


# The shared search helpers (search_setup.py) are imported by name from the tests and from
# the subprocess / spawned workers, whatever pytest's import mode.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
