"""Numerical safety: find NaN/Inf in architectural parameters and name the culprit.

A diverged α or mask parameter silently turns every cost and every θ into NaN, and the
search then "finishes" with a meaningless architecture. Checking for that needs a
device-to-host synchronisation, so it is not done on every step by default:

- ``arch_export()`` always checks (exporting garbage is never wanted);
- every cost call of a wrapper (``get_size()``, ``get_cost()``, ``get_regularization_loss()``,
  ...) checks on CPU models, where it costs no device synchronisation; on an accelerator only
  when debug checks are on, through ``set_debug_checks(True)`` or the environment variable
  ``PLINIO_DEBUG_NANS=1``.

The check concatenates the parameters and reduces them once, so it costs one small kernel
and one synchronisation; only when it fails does it look for which parameter is bad.
"""
import os
from collections import defaultdict
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

__all__ = [
    "DEBUG_ENV_VAR",
    "set_debug_checks",
    "debug_checks_enabled",
    "all_finite",
    "check_finite",
    "check_nas_parameters",
]

DEBUG_ENV_VAR = "PLINIO_DEBUG_NANS"
_TRUE_WORDS = {"1", "true", "yes", "on"}
_FALSE_WORDS = {"", "0", "false", "no", "off"}

_override: Optional[bool] = None


def set_debug_checks(enabled: Optional[bool]) -> None:
    """Turn the per-step NaN/Inf check of ``get_regularization_loss()`` on or off for this
    process; ``None`` returns to what ``PLINIO_DEBUG_NANS`` says."""
    global _override
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"set_debug_checks expects True, False or None, got {enabled!r}")
    _override = enabled


def debug_checks_enabled() -> bool:
    """Whether the optional per-step checks run (``set_debug_checks`` wins over the env)."""
    if _override is not None:
        return _override
    value = os.environ.get(DEBUG_ENV_VAR, "").strip().lower()
    if value in _TRUE_WORDS:
        return True
    if value in _FALSE_WORDS:
        return False
    raise ValueError(f"environment variable {DEBUG_ENV_VAR}={value!r} is not understood; "
                     f"use 1/0 (or true/false, yes/no, on/off)")


def _describe(name: str, tensor: torch.Tensor, where: str) -> str:
    values = tensor.detach()
    n_nan = int(torch.isnan(values).sum())
    n_pos = int(torch.isposinf(values).sum())
    n_neg = int(torch.isneginf(values).sum())
    parts = [f"{n} {label}" for n, label in ((n_nan, "NaN"), (n_pos, "+Inf"), (n_neg, "-Inf"))
             if n]
    return (
        f"{where}: architectural parameter '{name}' holds {', '.join(parts)} "
        f"(of {values.numel()} values). The search diverged: lower the learning rate of the "
        f"architectural parameters or the regularization strength, or resume from the last "
        f"checkpoint"
    )


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every floating-point tensor is free of NaN/Inf: one concatenation, one
    reduction and one synchronisation per device."""
    by_device: Dict[Any, List[torch.Tensor]] = defaultdict(list)
    for tensor in tensors:
        if tensor.is_floating_point() or tensor.is_complex():
            by_device[tensor.device].append(tensor.detach().reshape(-1))
    return all(bool(torch.isfinite(torch.cat(flat)).all()) for flat in by_device.values())


def check_finite(named_tensors: Iterable[Tuple[str, torch.Tensor]], where: str) -> None:
    """Raise ``FloatingPointError`` naming the first tensor (in the given order) that holds a
    NaN or an Inf. One reduction and one synchronisation per device when all are finite."""
    items: List[Tuple[str, torch.Tensor]] = [
        (name, tensor) for name, tensor in named_tensors
        if tensor.is_floating_point() or tensor.is_complex()
    ]
    if all_finite(tensor for _, tensor in items):
        return
    name, tensor = next((name, tensor) for name, tensor in items if not all_finite([tensor]))
    raise FloatingPointError(_describe(name, tensor, where))


def check_nas_parameters(model: Any, where: str) -> None:
    """Check every architectural parameter of a ``PIT``/``PITSuperNet`` wrapper. The callers
    decide when: per step only where it costs no device synchronisation (see the module
    docstring), never while ``torch.compile`` traces (a data-dependent raise breaks the graph).
    """
    named = getattr(model, "named_nas_parameters", None)
    if not callable(named):
        raise TypeError(f"check_nas_parameters needs a DNAS wrapper (PIT / PITSuperNet), got "
                        f"{type(model).__name__}")
    unnamed = getattr(model, "_nas_parameter_list", None)
    if callable(unnamed) and all_finite(unnamed()):  # the per-step case: no module names built
        return
    check_finite(named(), where=f"{type(model).__name__}.{where}")
