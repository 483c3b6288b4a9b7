"""The backward of each plinio op in differentiable PyTorch code, for when the backward is
itself differentiated (``create_graph=True``, e.g. a loss with an input-gradient penalty).

The fused backward kernels give first derivatives only: autograd would take their results
as constants and drop every second-order term without a word. So when a backward must build
a graph (:func:`graph_needed`), the autograd formulas of the compiled ops (csrc/autograd.cpp,
through the Autograd kernels that plinio/ops/_library.py registers for the ``*_backward``
ops) and of the Triton ops (plinio/ops/triton/autograd.py) call these functions instead of
the kernels. Each is the vector-Jacobian product of the reference implementation
(plinio/ops/reference.py), so higher derivatives are the reference's on every backend:
combine's is written out (it is linear, and reads the branches only where the fused
backward does); the mask ops' differentiate the reference forward, straight-through masks
included. Arguments and results follow the ``*_backward`` op schemas (csrc/plinio_ops.cpp).
"""
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import reference
from ._conventions import absent, first_given, present


def graph_needed(*args: Any) -> bool:
    """Whether a backward called with `args` must be differentiable: grad mode is on (as
    ``create_graph=True`` sets it during the backward) and a tensor among `args`, or in a
    list among them, requires grad."""
    if not torch.is_grad_enabled():
        return False
    for arg in args:
        items = arg if isinstance(arg, (list, tuple)) else (arg,)
        if any(isinstance(t, Tensor) and t.requires_grad for t in items):
            return True
    return False


def combine_backward(grad: Tensor, branches: Sequence[Tensor], theta: Tensor,
                     branch_needs_grad: Sequence[bool], theta_needs_grad: bool,
                     relu: Sequence[bool] = ()) -> Tuple[List[Tensor], Tensor]:
    """grad_i = θ_i·r_i'(y_i)·g and grad_θ_i = <g, r_i(y_i)>, accumulated in float32
    (float64 for float64) as the kernels do. `branches` may be empty when neither θ's
    gradient nor a ReLU flag needs them (the forward then saved none)."""
    acc = reference.accumulate_dtype(grad.dtype)
    g = grad.to(acc)
    th = theta.to(acc)
    flags = list(relu) if len(relu) else [False] * len(branch_needs_grad)
    grads = []
    for i, need in enumerate(branch_needs_grad):
        if not need:
            grads.append(absent(grad))
            continue
        grad_i = g * th[i]
        if flags[i]:  # torch.relu's gradient rule: zero where y <= 0 (a NaN passes)
            grad_i = grad_i.masked_fill(branches[i] <= 0, 0)
        grads.append(grad_i.to(grad.dtype))
    theta_grad = absent(theta)
    if theta_needs_grad:
        acts = [torch.relu(b) if r else b for b, r in zip(branches, flags)]
        theta_grad = torch.stack([(g * a.to(acc)).sum() for a in acts]).to(theta.dtype)
    return grads, theta_grad


def _reference_vjp(forward: Callable[..., Sequence[Optional[Tensor]]],
                   inputs: Sequence[Optional[Tensor]], wanted: Sequence[bool],
                   cotangents: Sequence[Optional[Tensor]]) -> List[Optional[Tensor]]:
    """Gradients of ``forward(*inputs)`` w.r.t. the wanted inputs given the outputs'
    cotangents (None: zero), as a differentiable graph (zeros where an input has no path
    to a cotangent); None for the inputs not wanted or not given."""
    with torch.enable_grad():
        # an input that does not require grad (and so has no history) gets a fresh leaf
        leaves = [t.detach().requires_grad_() if t is not None and want and not t.requires_grad
                  else t for t, want in zip(inputs, wanted)]
        outputs = forward(*leaves)
    pairs = [(o, c) for o, c in zip(outputs, cotangents)
             if o is not None and c is not None and o.requires_grad]
    targets = [i for i, (t, want) in enumerate(zip(leaves, wanted)) if want and t is not None]
    found: Sequence[Optional[Tensor]] = [None] * len(targets)
    if pairs and targets:
        found = torch.autograd.grad([o for o, _ in pairs], [leaves[i] for i in targets],
                                    [c for _, c in pairs], create_graph=True, allow_unused=True)
    grads: List[Optional[Tensor]] = [None] * len(inputs)
    for i, g in zip(targets, found):
        leaf = leaves[i]
        assert leaf is not None
        grads[i] = g if g is not None else torch.zeros_like(leaf)
    return grads


def pit_masks_backward(grad_channel_mask: Tensor, grad_time_mask: Tensor,
                       alpha: Optional[Tensor], beta: Optional[Tensor], gamma: Optional[Tensor],
                       kernel_size: int, threshold: float,
                       keep_alive: int) -> Tuple[Tensor, Tensor, Tensor]:
    """(grad_alpha, grad_beta, grad_gamma) of the straight-through masks; absent for an
    absent parameter."""
    def forward(a: Optional[Tensor], b: Optional[Tensor],
                c: Optional[Tensor]) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        return reference.pit_masks(a, b, c, kernel_size=kernel_size, threshold=threshold,
                                   keep_alive=keep_alive)

    params = (alpha, beta, gamma)
    like = first_given(*params)
    if like is None:
        raise ValueError("plinio::pit_masks_backward: give at least one of alpha, beta, gamma")
    grads = _reference_vjp(forward, params, [True] * 3,
                           [present(grad_channel_mask), present(grad_time_mask)])
    ga, gb, gg = (g if g is not None else absent(like) for g in grads)
    return ga, gb, gg


def pit_masked_weight_backward(
        grad_weight: Tensor, grad_bias: Tensor, grad_channel_mask: Tensor,
        grad_time_mask: Tensor, weight: Tensor, bias: Optional[Tensor], alpha: Optional[Tensor],
        beta: Optional[Tensor], gamma: Optional[Tensor], threshold: float, keep_alive: int,
        weight_needs_grad: bool, bias_needs_grad: bool,
        params_need_grad: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(grad_weight, grad_bias, grad_alpha, grad_beta, grad_gamma); absent where not
    requested or not given."""
    def forward(w: Tensor, b: Optional[Tensor], a: Optional[Tensor], be: Optional[Tensor],
                ga: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
        return reference.pit_masked_weight(w, b, a, be, ga, threshold=threshold,
                                           keep_alive=keep_alive)

    wanted = (weight_needs_grad, bias_needs_grad) + (params_need_grad,) * 3
    cotangents = [present(t) for t in (grad_weight, grad_bias, grad_channel_mask, grad_time_mask)]
    grads = _reference_vjp(forward, (weight, bias, alpha, beta, gamma), wanted, cotangents)
    gw, gb, ga, gbeta, ggamma = (g if g is not None else absent(weight) for g in grads)
    return gw, gb, ga, gbeta, ggamma
