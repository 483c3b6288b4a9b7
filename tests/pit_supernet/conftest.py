"""Shared fixtures of the PIT-SuperNet tests."""
import copy
from typing import Dict, Iterator

import pytest
import torch

from bench.models import SimpleSuperNet
from plinio.methods import PITSuperNet


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These models are tiny: one intra-op thread is faster than oversubscribed threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


_CACHE: Dict[str, PITSuperNet] = {}


@pytest.fixture
def seed_search() -> PITSuperNet:
    """A fresh PITSuperNet of the docs/behaviour.md §7 seed example (regularizer 'macs')."""
    if "seed" not in _CACHE:
        torch.manual_seed(0)
        _CACHE["seed"] = PITSuperNet(SimpleSuperNet(), input_shape=(32, 64, 64),
                                     regularizer="macs")
    return copy.deepcopy(_CACHE["seed"])
