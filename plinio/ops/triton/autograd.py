"""Autograd formulas of the Triton ops, registered with ``torch.library.register_autograd``
(the compiled ops have theirs in C++, csrc/autograd.cpp; the formulas are the same).

First derivatives come from the Triton backward kernels. When the backward must itself be
differentiable (``create_graph=True``), the formulas of plinio/ops/double_backward.py run
instead, since the kernels' results would otherwise enter the graph as constants.
"""
from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor

from .. import double_backward
from .._conventions import first_given, or_absent
from . import custom_ops


def _combine_setup(ctx: Any, inputs: Tuple[Any, ...], output: Tensor) -> None:
    branches, theta = inputs
    ctx.branch_needs = [bool(b.requires_grad) for b in branches]
    ctx.theta_needs = bool(theta.requires_grad)
    # The branches are kept only when the θ gradient needs them (no stacked copy).
    if ctx.theta_needs:
        ctx.save_for_backward(theta, *branches)
    else:
        ctx.save_for_backward(theta)


def _combine_backward(ctx: Any, grad: Tensor) -> Tuple[List[Optional[Tensor]], Optional[Tensor]]:
    theta, *branches = ctx.saved_tensors
    backward = (double_backward.combine_backward
                if double_backward.graph_needed(grad, theta, branches)
                else custom_ops.triton_combine_backward)
    grads, theta_grad = backward(grad, branches, theta, ctx.branch_needs, ctx.theta_needs)
    branch_grads = [g if need else None for g, need in zip(grads, ctx.branch_needs)]
    return branch_grads, (theta_grad if ctx.theta_needs else None)


def _masks_setup(ctx: Any, inputs: Tuple[Any, ...], output: Any) -> None:
    alpha, beta, gamma, kernel_size, threshold, keep_alive = inputs
    ctx.save_for_backward(alpha, beta, gamma)
    ctx.kernel_size, ctx.threshold, ctx.keep_alive = kernel_size, threshold, keep_alive


def _masks_backward(ctx: Any, grad_channel: Optional[Tensor],
                    grad_time: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
    alpha, beta, gamma = ctx.saved_tensors
    like = first_given(alpha, beta, gamma)
    assert like is not None
    backward = (double_backward.pit_masks_backward
                if double_backward.graph_needed(grad_channel, grad_time, alpha, beta, gamma)
                else custom_ops.triton_pit_masks_backward)
    ga, gb, gg = backward(or_absent(grad_channel, like), or_absent(grad_time, like),
                          alpha, beta, gamma, ctx.kernel_size, ctx.threshold, ctx.keep_alive)
    needs = ctx.needs_input_grad
    return (ga if needs[0] else None, gb if needs[1] else None, gg if needs[2] else None,
            None, None, None)


def _masked_weight_setup(ctx: Any, inputs: Tuple[Any, ...], output: Any) -> None:
    weight, bias, alpha, beta, gamma, threshold, keep_alive = inputs
    ctx.save_for_backward(weight, bias, alpha, beta, gamma)
    ctx.threshold, ctx.keep_alive = threshold, keep_alive


def _masked_weight_backward(ctx: Any, g_weight: Optional[Tensor], g_bias: Optional[Tensor],
                            g_channel: Optional[Tensor],
                            g_time: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
    weight, bias, alpha, beta, gamma = ctx.saved_tensors
    needs = ctx.needs_input_grad
    params_need = bool(needs[2] or needs[3] or needs[4])
    backward = (double_backward.pit_masked_weight_backward
                if double_backward.graph_needed(g_weight, g_bias, g_channel, g_time, weight,
                                                bias, alpha, beta, gamma)
                else custom_ops.triton_pit_masked_weight_backward)
    gw, gb, ga, gbeta, ggamma = backward(
        or_absent(g_weight, weight), or_absent(g_bias, weight), or_absent(g_channel, weight),
        or_absent(g_time, weight), weight, bias, alpha, beta, gamma, ctx.threshold,
        ctx.keep_alive, bool(needs[0]), bool(needs[1]), params_need)
    return (gw if needs[0] else None, gb if needs[1] else None,
            ga if needs[2] else None, gbeta if needs[3] else None,
            ggamma if needs[4] else None, None, None)


def register() -> None:
    """Attach the formulas above to the Triton forward ops."""
    for op, backward, setup in (
            (custom_ops.triton_combine, _combine_backward, _combine_setup),
            (custom_ops.triton_pit_masks, _masks_backward, _masks_setup),
            (custom_ops.triton_pit_masked_weight, _masked_weight_backward,
             _masked_weight_setup)):
        torch.library.register_autograd(op, backward, setup_context=setup)
