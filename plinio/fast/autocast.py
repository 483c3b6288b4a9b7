"""What ``torch.autocast`` would do, for fast-path code that computes outside of it.

The fast path replaces a few eager ops by equivalents that autocast cannot see through: a
custom autograd Function (:mod:`plinio.fast.padded_conv`) and merged kernels built from
the branches' weights (:mod:`plinio.fast.merged_conv`). Under autocast they must give what
the eager ops give: the convolution inputs cast to the autocast dtype (float64 stays as it
is, as autocast leaves it), and weights combined in their own precision before that cast.
"""
import contextlib
from typing import ContextManager, Optional, Sequence, Tuple

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


def cast_for_conv(tensors: Sequence[Optional[torch.Tensor]], device: torch.device
                  ) -> Tuple[Optional[torch.Tensor], ...]:
    """``tensors`` as autocast hands them to a convolution on ``device``: floating tensors
    other than float64 in the autocast dtype (unchanged when autocast is off)."""
    dtype = autocast_dtype(device)
    if dtype is None:
        return tuple(tensors)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
                 for t in tensors)
