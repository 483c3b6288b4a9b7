"""What ``torch.autocast`` would do, for fast-path code that computes outside of it.

The fast path replaces a few eager ops by equivalents that autocast cannot see through: a
custom autograd Function (:mod:`plinio.fast.padded_conv`) and merged kernels built from
the branches' weights (:mod:`plinio.fast.merged_conv`). Under autocast they must give what
the eager ops give: the convolution inputs cast to the autocast dtype (float64 stays as it
is, as autocast leaves it), and weights combined in their own precision before that cast.
"""
from typing import Optional, Sequence, Tuple

import torch

from plinio.ops._autocast import autocast_dtype, autocast_off

__all__ = ["autocast_dtype", "autocast_off", "cast_for_conv"]


def cast_for_conv(tensors: Sequence[Optional[torch.Tensor]], device: torch.device
                  ) -> Tuple[Optional[torch.Tensor], ...]:
    """``tensors`` as autocast hands them to a convolution on ``device``: floating tensors
    other than float64 in the autocast dtype (unchanged when autocast is off)."""
    dtype = autocast_dtype(device)
    if dtype is None:
        return tuple(tensors)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
                 for t in tensors)
