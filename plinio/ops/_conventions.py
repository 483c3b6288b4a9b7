"""Conventions of the plinio op schemas, shared by every backend's kernels, fake kernels and
autograd formulas (they mirror csrc/ops_common.h): an absent optional result is a numel-0
tensor, a numel-0 gradient stands for zero, the masked weight has one fixed layout, and so
have the tensors of the compact convolutions (csrc/compact_conv.h)."""
from typing import Optional

import torch
from torch import Tensor


def masked_weight_format(weight: Tensor, time_masked: bool) -> torch.memory_format:
    """Layout of the masked weight and its gradient (mirrors csrc/ops_common.cpp)."""
    if (not time_masked and weight.dim() == 4 and not weight.is_contiguous()
            and weight.is_contiguous(memory_format=torch.channels_last)):
        return torch.channels_last
    return torch.contiguous_format


def compact_layout(t: Tensor) -> Tensor:
    """``t`` (N, C, *spatial) in the layout sparse execution's compact convolutions run in
    (mirrors csrc/compact_conv.cpp): channels_last; a 1-D tensor as one of height 1 (memory
    (N, L, C)), so that the 2-D convolution it runs as needs no copy. No copy when it already
    is."""
    if t.dim() == 3:
        return t.unsqueeze(2).contiguous(memory_format=torch.channels_last).squeeze(2)
    t = t.contiguous(memory_format=torch.channels_last)
    if t.shape[1] == 1:
        # one channel is contiguous and channels_last at once, and aten's convolutions then
        # give contiguous results: channels_last strides (a view) give channels_last ones
        t = t.as_strided(t.shape, (t.shape[2] * t.shape[3], 1, t.shape[3], 1))
    return t


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
