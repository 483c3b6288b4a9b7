"""Helpers of the hard-selection fast path.

When θ is one-hot in value, a non-selected branch j adds ``0·y_j`` to the output: its
weights and masks get exactly zero gradient in the reference path, and only α's gradient can
use ``y_j`` (``⟨g, y_j⟩``). The fast path therefore evaluates such a branch without autograd
state (or not at all when α gets no gradient), and reproduces the reference's zero gradients
with :func:`zero_gradient_link` so that optimizers (momentum, weight decay, Adam) see the same
``grad`` tensors as in the reference path (zeros, not ``None``).
"""
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn


def _refuse_double_backward(message: Optional[str]) -> None:
    """RuntimeError(message) when a backward with ``create_graph=True`` reaches this point."""
    if message is not None and torch.is_grad_enabled():
        raise RuntimeError(message)


class _ZeroGradientLink(torch.autograd.Function):
    """A 0-dim zero whose backward hands a zero gradient to every input (its second
    derivatives are zero too, as those of the reference's 0·y_j with a constant θ_j = 0)."""

    @staticmethod
    def forward(ctx: Any, like: torch.Tensor, refusal: Optional[str], *tensors: torch.Tensor) -> torch.Tensor:
        ctx.specs = [(t.shape, t.dtype, t.device) for t in (like,) + tensors]
        ctx.refusal = refusal
        return like.new_zeros(())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        _refuse_double_backward(ctx.refusal)
        zeros = tuple(torch.zeros(shape, dtype=dtype, device=device) for shape, dtype, device in ctx.specs)
        return (zeros[0], None) + zeros[1:]


def zero_gradient_link(like: torch.Tensor, tensors: Sequence[torch.Tensor],
                       refuse_double_backward: Optional[str] = None) -> torch.Tensor:
    """A 0-dim zero of ``like``'s dtype; backward gives every tensor in ``tensors`` (and
    ``like``) a zero gradient. Adding it to an output is exact (y + 0 = y). With
    ``refuse_double_backward``, a backward with ``create_graph=True`` through it raises that
    message instead."""
    return _ZeroGradientLink.apply(like, refuse_double_backward, *tensors)


class _FirstOrderOnly(torch.autograd.Function):
    """Identity whose backward raises when it has to be differentiable (create_graph=True)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, message: str) -> torch.Tensor:
        ctx.message = message
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[torch.Tensor, None]:
        _refuse_double_backward(ctx.message)
        return grad, None


def first_order_only(x: torch.Tensor, message: str) -> torch.Tensor:
    """``x`` (a view), through which a backward with ``create_graph=True`` raises ``message``:
    placed where the fast path's gradients are exact but their own derivatives would not be."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return x
    return _FirstOrderOnly.apply(x, message)


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
