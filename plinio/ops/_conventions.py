"""Conventions of the plinio op schemas, shared by every backend's kernels, fake kernels and
autograd formulas (they mirror csrc/ops_common.h): an absent optional result is a numel-0
tensor, a numel-0 gradient stands for zero, and the masked weight has one fixed layout."""
from typing import Optional

import torch
from torch import Tensor


def masked_weight_format(weight: Tensor, time_masked: bool) -> torch.memory_format:
    """Layout of the masked weight and its gradient (mirrors csrc/ops_common.cpp)."""
    if (not time_masked and weight.dim() == 4 and not weight.is_contiguous()
            and weight.is_contiguous(memory_format=torch.channels_last)):
        return torch.channels_last
    return torch.contiguous_format


def absent(like: Tensor) -> Tensor:
    """The numel-0 tensor standing for an absent result."""
    return like.new_empty((0,))


def present(t: Optional[Tensor]) -> Optional[Tensor]:
    """None for an absent (numel-0) result or gradient."""
    return t if t is not None and t.numel() > 0 else None


def or_absent(t: Optional[Tensor], like: Tensor) -> Tensor:
    """`t`, or the absent tensor when `t` is None."""
    return t if t is not None else absent(like)


def first_given(*ts: Optional[Tensor]) -> Optional[Tensor]:
    """The first of `ts` that is not None (None when all are)."""
    for t in ts:
        if t is not None:
            return t
    return None
