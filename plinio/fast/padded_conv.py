"""Zero-padded convolution that keeps the *unpadded* input for backward.

``conv(pad(x))`` with an explicit ``F.pad`` (causal TCN padding, asymmetric 'same' padding of
even kernels, merged kernels) makes autograd save the padded copy of ``x`` for the weight
gradient, although ``x`` itself is usually saved anyway by the op that produced it (a ReLU
saves its output). :func:`zero_padded_conv` computes the same forward, saves ``x`` and
rebuilds the padded copy in backward, where it calls the very kernel autograd would
(``aten.convolution_backward``): values and gradients are bitwise those of ``conv(pad(x))``,
and one activation-sized tensor per layer is no longer kept alive between forward and
backward. With ``create_graph=True`` (double backward) the backward recomputes the padded
convolution and differentiates it, so second derivatives are exact too.
"""
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .autocast import cast_for_conv

Ints = Tuple[int, ...]


def pad_spec(pad_left: Ints, pad_right: Ints) -> List[int]:
    """``F.pad``'s argument (last dimension first) for per-dimension (left, right) padding."""
    spec: List[int] = []
    for left, right in zip(reversed(pad_left), reversed(pad_right)):
        spec += [left, right]
    return spec


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: Ints,
          dilation: Ints, groups: int) -> torch.Tensor:
    conv = F.conv1d if x.dim() == 3 else F.conv2d
    return conv(x, weight, bias, stride, 0, dilation, groups)


class _ZeroPaddedConv(torch.autograd.Function):
    """conv(F.pad(x, spec), W, b) saving x instead of the padded copy."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                spec: List[int], stride: Ints, dilation: Ints, groups: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.spec, ctx.stride, ctx.dilation, ctx.groups = spec, stride, dilation, groups
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        return _conv(F.pad(x, spec), weight, bias, stride, dilation, groups)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        if torch.is_grad_enabled():  # create_graph=True: the gradients must be differentiable
            return _differentiable_backward(ctx, grad)
        return _backward(ctx, grad)


def _backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
    """The gradients as autograd computes those of ``conv(F.pad(x))``, one kernel call."""
    x, weight = ctx.saved_tensors
    needs_x, needs_w, needs_b = ctx.needs_input_grad[:3]
    padded = F.pad(x, ctx.spec)
    ndim = x.dim() - 2
    grad_padded, grad_w, grad_b = torch.ops.aten.convolution_backward(
        grad, padded, weight, ctx.bias_sizes, list(ctx.stride), [0] * ndim,
        list(ctx.dilation), False, [0] * ndim, ctx.groups,
        [needs_x, needs_w, needs_b and ctx.bias_sizes is not None])
    grad_x = None
    if needs_x:  # un-pad as F.pad's own backward does: a dense tensor, not a strided view
        grad_x = F.pad(grad_padded, [-p for p in ctx.spec])
    return grad_x, grad_w, grad_b, None, None, None, None


def _differentiable_backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
    """The same gradients as a differentiable function of ``grad``, ``x`` and the weight (for
    double backward, e.g. a penalty on the input gradient): the padded convolution is
    recomputed from the saved tensors, which keep their autograd history, and differentiated
    with ``create_graph``. The bias gradient Σ grad is linear in ``grad``."""
    x, weight = ctx.saved_tensors
    needs_x, needs_w, needs_b = ctx.needs_input_grad[:3]
    wanted = [t for t, needed in ((x, needs_x), (weight, needs_w)) if needed]
    found: List[Optional[torch.Tensor]] = []
    if wanted:
        out = _conv(F.pad(x, ctx.spec), weight, None, ctx.stride, ctx.dilation, ctx.groups)
        found = list(torch.autograd.grad(out, wanted, grad, create_graph=True))
    grad_x = found.pop(0) if needs_x else None
    grad_w = found.pop(0) if needs_w else None
    grad_b = None
    if needs_b and ctx.bias_sizes is not None:
        grad_b = grad.sum(dim=[0] + list(range(2, grad.dim())))
    return grad_x, grad_w, grad_b, None, None, None, None


def zero_padded_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     pad_left: Sequence[int], pad_right: Sequence[int], stride: Sequence[int],
                     dilation: Sequence[int], groups: int) -> torch.Tensor:
    """1-D/2-D convolution of ``x`` zero-padded by ``pad_left``/``pad_right`` (non-negative,
    per spatial dimension). Symmetric padding goes to the conv kernel itself; asymmetric
    padding is materialized for the forward only (see the module docstring)."""
    pad_left, pad_right = tuple(pad_left), tuple(pad_right)
    stride, dilation = tuple(stride), tuple(dilation)
    if min(pad_left + pad_right, default=0) < 0:
        raise ValueError(f"zero_padded_conv: padding must be non-negative, got left={pad_left}, "
                         f"right={pad_right}")
    if pad_left == pad_right:
        conv = F.conv1d if x.dim() == 3 else F.conv2d
        return conv(x, weight, bias, stride, pad_left, dilation, groups)
    spec = pad_spec(pad_left, pad_right)
    if not torch.is_grad_enabled() or not any(
            t is not None and t.requires_grad for t in (x, weight, bias)):
        return _conv(F.pad(x, spec), weight, bias, stride, dilation, groups)
    # autocast does not see into the Function: its inputs are cast as the conv would cast them
    x, weight, bias = cast_for_conv((x, weight, bias), x.device)
    return _ZeroPaddedConv.apply(x, weight, bias, spec, stride, dilation, groups)
