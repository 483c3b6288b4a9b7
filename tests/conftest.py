"""Shared pytest setup: the `gpu` and `triton_interpret` markers.

- `gpu` tests are skipped when no CUDA device is available.
- On a machine without CUDA, Triton kernels can only run in Triton's interpreter, which
  must be switched on before the kernels are first loaded: this file does that for the
  whole session (only plinio's Triton kernels are affected; CPU tensors never reach Triton
  otherwise). `triton_interpret` tests are skipped when triton is not installed and can be
  deselected with `-m "not triton_interpret"`.
"""
import importlib.util
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None

if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_triton = pytest.mark.skip(reason="triton is not installed")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if "triton_interpret" in item.keywords and not HAS_TRITON:
            item.add_marker(skip_triton)
