"""Helpers of the hard-selection fast path.

When θ is one-hot in value, a non-selected branch j adds ``0·y_j`` to the output: its
weights and masks get exactly zero gradient in the reference path, and only α's gradient can
use ``y_j`` (``⟨g, y_j⟩``). The fast path therefore evaluates such a branch without autograd
state (or not at all when α gets no gradient), and reproduces the reference's zero gradients
with :func:`zero_gradient_link` so that optimizers (momentum, weight decay, Adam) see the same
``grad`` tensors as in the reference path (zeros, not ``None``).
"""
from typing import Any, Iterable, List, Sequence, Tuple

import torch
import torch.nn as nn


class _ZeroGradientLink(torch.autograd.Function):
    """A 0-dim zero whose backward hands a zero gradient to every input."""

    @staticmethod
    def forward(ctx: Any, like: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
        ctx.specs = [(t.shape, t.dtype, t.device) for t in (like,) + tensors]
        return like.new_zeros(())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(torch.zeros(shape, dtype=dtype, device=device)
                     for shape, dtype, device in ctx.specs)


def zero_gradient_link(like: torch.Tensor, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """A 0-dim zero of ``like``'s dtype; backward gives every tensor in ``tensors`` (and
    ``like``) a zero gradient. Adding it to an output is exact (y + 0 = y)."""
    return _ZeroGradientLink.apply(like, *tensors)


def gradient_anchors(modules: Iterable[nn.Module]) -> List[torch.Tensor]:
    """Tensors through which the reference path would back-propagate into these layers.

    PIT-style layers contribute their masked weight and bias (so the zero gradient reaches
    the weights and exactly the mask parameters that are trainable); other layers their own
    parameters that require grad.
    """
    anchors: List[torch.Tensor] = []
    seen = set()
    for module in modules:
        getter = getattr(module, "masked_weight_and_bias", None)
        if callable(getter):
            found = [t for t in getter() if t is not None]
        else:
            found = list(module.parameters())
        for t in found:
            if t.requires_grad and id(t) not in seen:
                seen.add(id(t))
                anchors.append(t)
    return anchors


def updates_state_in_training(modules: Iterable[nn.Module]) -> bool:
    """Whether running these modules changes model state or consumes random numbers
    (BatchNorm running statistics, dropout in training mode): such a branch is still
    evaluated (without autograd) when the hard path skips it, to keep the reference's state."""
    for module in modules:
        if not module.training:
            continue
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return True
        if getattr(module, "track_running_stats", False) and \
                getattr(module, "running_mean", None) is not None:
            return True
    return False
