"""Shared setup of the reliability tests."""
import sys
from pathlib import Path
from typing import Callable

import pytest
from torch import nn

# The helper modules of this folder (search_setup, reliability_checks, ...) are imported by
# name from the tests and from the subprocess / spawned workers, whatever the import mode.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import reliability_checks  # noqa: E402  (needs the folder on sys.path first)


@pytest.fixture
def unchanged() -> Callable[[nn.Module], Callable[[], None]]:
    """``check = unchanged(model)`` records the model; ``check()`` asserts it is identical
    (structure, every state tensor, requires_grad flags, training flag)."""

    def record(model: nn.Module) -> Callable[[], None]:
        before = reliability_checks.snapshot(model)
        return lambda: reliability_checks.assert_same_snapshot(
            before, reliability_checks.snapshot(model))

    return record
