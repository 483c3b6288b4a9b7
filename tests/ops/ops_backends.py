"""Which implementations the op tests compare against the reference, as pytest params.

CPU: the C++ kernels (when built) and the Triton kernels under the interpreter (marked
`triton_interpret`). CUDA (marked `gpu`): the CUDA C++ kernels and Triton.
"""
import contextlib
import os
from typing import Iterator, List

import pytest
import torch

import plinio.ops as ops


def backend_params() -> List:
    """(backend, device) pytest params for every non-reference implementation."""
    params = [pytest.param(("cpp", "cpu"), id="cpp-cpu"),
              pytest.param(("triton", "cpu"), id="triton-interp", marks=pytest.mark.triton_interpret),
              pytest.param(("cuda", "cuda"), id="cuda", marks=pytest.mark.gpu),
              pytest.param(("triton", "cuda"), id="triton-cuda", marks=pytest.mark.gpu)]
    return params


@contextlib.contextmanager
def forced(backend: str) -> Iterator[None]:
    """Run the block with `backend` forced (restores automatic selection afterwards)."""
    ops.set_backend(backend)
    try:
        yield
    finally:
        ops.set_backend(None)


def require(backend: str, device: str) -> None:
    """Skip unless `backend` can run on `device` tensors in this environment."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if backend not in ops.available_backends(device):
        if backend == "cpp" and os.environ.get("CI"):
            pytest.fail("the compiled extension must be built in CI, but backend 'cpp' is "
                        "unavailable")
        pytest.skip(f"backend {backend!r} is not available for {device} tensors here")
