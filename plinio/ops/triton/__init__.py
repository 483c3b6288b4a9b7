"""Triton backend of the plinio ops.

Triton is optional: nothing here imports it until the backend is used, so plinio works
without it. The kernels need CUDA tensors, or CPU tensors when Triton's interpreter is on
(``TRITON_INTERPRET=1`` set before the kernels are first loaded; used by the tests).
"""
import importlib
import os
import sys
from types import SimpleNamespace
from typing import Optional, Tuple

import torch

_MIN_TRITON = (3, 2)  # tuple kernel arguments (the list of combine branches)
_ops: Optional[SimpleNamespace] = None


def _triton_version() -> Optional[Tuple[int, ...]]:
    try:
        triton = importlib.import_module("triton")
    except ImportError:
        return None
    parts = []
    for piece in str(getattr(triton, "__version__", "0")).split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def interpreting() -> bool:
    """Whether the Triton kernels run in the interpreter (decided when first loaded)."""
    mod = sys.modules.get(__name__ + ".kernels")
    if mod is not None:
        return bool(getattr(mod.combine_forward_kernel, "__class__", type).__name__
                    == "InterpretedFunction")
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def usable(device_type: str) -> Tuple[bool, str]:
    """(True, '') when the Triton kernels can run on `device_type` tensors, else why not."""
    version = _triton_version()
    if version is None:
        return False, "triton is not installed"
    if version < _MIN_TRITON:
        return False, (f"triton {'.'.join(map(str, version))} is too old "
                       f"(needs >= {'.'.join(map(str, _MIN_TRITON))})")
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA device is available"
        return True, ""
    if device_type == "cpu" and interpreting():
        return True, ""
    return False, (f"Triton kernels need CUDA tensors (got {device_type}); on CPU they run "
                   "only under TRITON_INTERPRET=1")


def ops() -> SimpleNamespace:
    """The Triton custom ops (combine, pit_masks, pit_masked_weight), defined on first use."""
    global _ops
    if _ops is None:
        from . import autograd, custom_ops as triton_ops

        autograd.register()
        _ops = SimpleNamespace(
            combine=triton_ops.triton_combine,
            pit_masks=triton_ops.triton_pit_masks,
            pit_masked_weight=triton_ops.triton_pit_masked_weight,
        )
    return _ops
