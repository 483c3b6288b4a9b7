"""The autocast state of a device, for code that must compute outside of autocast: a mask is
an exact decision made in its parameters' own dtype, and the fast path's custom functions
and merged kernels must reproduce what autocast does to the eager ops they replace."""
import contextlib
from typing import ContextManager, Optional

import torch

# device types that have autocast in every torch this package runs with; others are asked
# (torch.amp.is_autocast_available, which torch.compile cannot trace in torch 2.11)
_AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The lower-precision dtype autocast casts convolutions to on ``device``, or None when
    autocast is off there."""
    available = device.type in _AUTOCAST_DEVICE_TYPES or torch.amp.is_autocast_available(device.type)
    if available and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def autocast_off(device: torch.device) -> ContextManager:
    """A context with autocast disabled on ``device`` (a no-op where it is off already)."""
    if autocast_dtype(device) is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)
