"""torch.library registration of the plinio ops.

The schemas, the CPU/CUDA kernels and the autograd formulas of ``plinio::combine``,
``plinio::pit_masks`` and ``plinio::pit_masked_weight`` (plus their ``*_backward`` ops)
come from the compiled library (csrc/plinio_ops.cpp, csrc/autograd.cpp: autograd in C++
because a Python autograd registration costs more per call than these kernels). This
module adds, once the library is loaded, the fake (meta) kernels for torch.compile /
export, and holds the same autograd formulas for the Triton ops (plinio/ops/triton),
registered with ``torch.library.register_autograd``.

Conventions shared with the C++ side: an absent optional result is a numel-0 tensor; a
numel-0 gradient stands for zero.
"""
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _extension
from . import _validate

_OPS = ("combine", "combine_backward", "pit_masks", "pit_masks_backward",
        "pit_masked_weight", "pit_masked_weight_backward")

_lock = threading.Lock()
_registered = False


# ----------------------------------------------------------------- layouts and absents

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
    """None for an absent (numel-0) result."""
    return t if t is not None and t.numel() > 0 else None


def _first(*ts: Optional[Tensor]) -> Optional[Tensor]:
    for t in ts:
        if t is not None:
            return t
    return None


def _or_absent(t: Optional[Tensor], like: Tensor) -> Tensor:
    return t if t is not None else absent(like)


# ------------------------------------------------------------------------ fake kernels

def _fake_combine(branches: List[Tensor], theta: Tensor, relu: Sequence[bool] = ()) -> Tensor:
    _validate.check_combine(branches, theta, relu)
    return torch.empty_like(branches[0])


def _fake_combine_backward(grad: Tensor, branches: List[Tensor], theta: Tensor,
                           branch_needs_grad: List[bool], theta_needs_grad: bool,
                           relu: Sequence[bool] = ()) -> Tuple[List[Tensor], Tensor]:
    grads = [torch.empty_like(grad) if need else absent(grad) for need in branch_needs_grad]
    return grads, (theta.new_empty(theta.shape) if theta_needs_grad else absent(theta))


def _fake_pit_masks(alpha: Optional[Tensor], beta: Optional[Tensor], gamma: Optional[Tensor],
                    kernel_size: int, threshold: float, keep_alive: int) -> Tuple[Tensor, Tensor]:
    like = _first(alpha, beta, gamma)
    if like is None:
        raise ValueError("plinio::pit_masks: give at least one of alpha, beta, gamma")
    _validate.check_mask_params("plinio::pit_masks", alpha, beta, gamma, None, kernel_size,
                                keep_alive)
    channel = alpha.new_empty(alpha.shape) if alpha is not None else absent(like)
    timed = beta is not None or gamma is not None
    time = like.new_empty((kernel_size,)) if timed else absent(like)
    return channel, time


def _fake_pit_masks_backward(grad_channel_mask: Tensor, grad_time_mask: Tensor,
                             alpha: Optional[Tensor], beta: Optional[Tensor],
                             gamma: Optional[Tensor], kernel_size: int, threshold: float,
                             keep_alive: int) -> Tuple[Tensor, Tensor, Tensor]:
    like = _first(alpha, beta, gamma)
    assert like is not None
    return tuple(p.new_empty(p.shape) if p is not None else absent(like)  # type: ignore
                 for p in (alpha, beta, gamma))


def _fake_pit_masked_weight(weight: Tensor, bias: Optional[Tensor], alpha: Optional[Tensor],
                            beta: Optional[Tensor], gamma: Optional[Tensor], threshold: float,
                            keep_alive: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    _validate.check_masked_weight(weight, bias, alpha, beta, gamma, keep_alive)
    timed = beta is not None or gamma is not None
    fmt = masked_weight_format(weight, timed)
    masked = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device,
                         memory_format=fmt)
    masked_bias = bias.new_empty(bias.shape) if bias is not None else absent(weight)
    like = _first(alpha, beta, gamma, weight)
    channel = alpha.new_empty(alpha.shape) if alpha is not None else absent(like)
    time = like.new_empty((weight.shape[-1],)) if timed else absent(like)
    return masked, masked_bias, channel, time


def _fake_pit_masked_weight_backward(
        grad_weight: Tensor, grad_bias: Tensor, grad_channel_mask: Tensor,
        grad_time_mask: Tensor, weight: Tensor, bias: Optional[Tensor], alpha: Optional[Tensor],
        beta: Optional[Tensor], gamma: Optional[Tensor], threshold: float, keep_alive: int,
        weight_needs_grad: bool, bias_needs_grad: bool,
        params_need_grad: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    timed = beta is not None or gamma is not None
    fmt = masked_weight_format(weight, timed)
    gw = (torch.empty(weight.shape, dtype=weight.dtype, device=weight.device, memory_format=fmt)
          if weight_needs_grad else absent(weight))
    gb = bias.new_empty(bias.shape) if bias is not None and bias_needs_grad else absent(weight)
    any_param = _first(alpha, beta, gamma) is not None
    grads = [p.new_empty(p.shape) if (p is not None and params_need_grad and any_param)
             else absent(weight) for p in (alpha, beta, gamma)]
    return (gw, gb, *grads)


# ---------------------------------------------------------------------------- autograd

def _combine_setup(ctx: Any, inputs: Tuple[Any, ...], output: Tensor) -> None:
    branches, theta = inputs
    ctx.branch_needs = [bool(b.requires_grad) for b in branches]
    ctx.theta_needs = bool(theta.requires_grad)
    # The branches are kept only when the θ gradient needs them (no stacked copy).
    if ctx.theta_needs:
        ctx.save_for_backward(theta, *branches)
    else:
        ctx.save_for_backward(theta)


def _make_combine_backward(backward_op: Callable[..., Any]) -> Callable[..., Any]:
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[List[Optional[Tensor]]],
                                                 Optional[Tensor]]:
        theta, *branches = ctx.saved_tensors
        grads, theta_grad = backward_op(grad, branches, theta, ctx.branch_needs, ctx.theta_needs)
        branch_grads = [g if need else None for g, need in zip(grads, ctx.branch_needs)]
        return branch_grads, (theta_grad if ctx.theta_needs else None)

    return backward


def _masks_setup(ctx: Any, inputs: Tuple[Any, ...], output: Any) -> None:
    alpha, beta, gamma, kernel_size, threshold, keep_alive = inputs
    ctx.save_for_backward(alpha, beta, gamma)
    ctx.kernel_size, ctx.threshold, ctx.keep_alive = kernel_size, threshold, keep_alive


def _make_masks_backward(backward_op: Callable[..., Any]) -> Callable[..., Any]:
    def backward(ctx: Any, grad_channel: Optional[Tensor],
                 grad_time: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
        alpha, beta, gamma = ctx.saved_tensors
        like = _first(alpha, beta, gamma)
        assert like is not None
        ga, gb, gg = backward_op(_or_absent(grad_channel, like), _or_absent(grad_time, like),
                                 alpha, beta, gamma, ctx.kernel_size, ctx.threshold,
                                 ctx.keep_alive)
        needs = ctx.needs_input_grad
        return (ga if needs[0] else None, gb if needs[1] else None, gg if needs[2] else None,
                None, None, None)

    return backward


def _masked_weight_setup(ctx: Any, inputs: Tuple[Any, ...], output: Any) -> None:
    weight, bias, alpha, beta, gamma, threshold, keep_alive = inputs
    ctx.save_for_backward(weight, bias, alpha, beta, gamma)
    ctx.threshold, ctx.keep_alive = threshold, keep_alive


def _make_masked_weight_backward(backward_op: Callable[..., Any]) -> Callable[..., Any]:
    def backward(ctx: Any, g_weight: Optional[Tensor], g_bias: Optional[Tensor],
                 g_channel: Optional[Tensor],
                 g_time: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
        weight, bias, alpha, beta, gamma = ctx.saved_tensors
        needs = ctx.needs_input_grad
        params_need = bool(needs[2] or needs[3] or needs[4])
        gw, gb, ga, gbeta, ggamma = backward_op(
            _or_absent(g_weight, weight), _or_absent(g_bias, weight),
            _or_absent(g_channel, weight), _or_absent(g_time, weight), weight, bias, alpha,
            beta, gamma, ctx.threshold, ctx.keep_alive, bool(needs[0]), bool(needs[1]),
            params_need)
        return (gw if needs[0] else None, gb if needs[1] else None,
                ga if needs[2] else None, gbeta if needs[3] else None,
                ggamma if needs[4] else None, None, None)

    return backward


AUTOGRAD = {
    "combine": (_make_combine_backward, _combine_setup),
    "pit_masks": (_make_masks_backward, _masks_setup),
    "pit_masked_weight": (_make_masked_weight_backward, _masked_weight_setup),
}

_FAKES = {
    "combine": _fake_combine,
    "combine_backward": _fake_combine_backward,
    "pit_masks": _fake_pit_masks,
    "pit_masks_backward": _fake_pit_masks_backward,
    "pit_masked_weight": _fake_pit_masked_weight,
    "pit_masked_weight_backward": _fake_pit_masked_weight_backward,
}


def register_autograd(op: Any, name: str, backward_op: Callable[..., Any]) -> None:
    """Attach the autograd formula of op kind `name` (combine / pit_masks /
    pit_masked_weight) to `op` (a qualified name or a custom-op object)."""
    make_backward, setup = AUTOGRAD[name]
    torch.library.register_autograd(op, make_backward(backward_op), setup_context=setup)


def compiled_ops() -> Optional[Any]:
    """``torch.ops.plinio`` with its fake kernels registered, or None when the compiled
    library is unavailable."""
    global _registered
    if not _extension.load():
        return None
    if _registered:
        return torch.ops.plinio
    with _lock:
        if not _registered:
            for name in _OPS:
                torch.library.register_fake(f"plinio::{name}", _FAKES[name])
            _registered = True
    return torch.ops.plinio


_has_device: Dict[str, bool] = {}


def compiled_has_device(device_type: str) -> bool:
    """Whether the compiled library has kernels for `device_type` ('cpu' or 'cuda')."""
    if device_type not in _has_device:
        key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
        _has_device[device_type] = bool(
            key is not None and compiled_ops() is not None
            and torch._C._dispatch_has_kernel_for_dispatch_key("plinio::combine", key))
    return _has_device[device_type]


def fakes() -> Sequence[Tuple[str, Callable[..., Any]]]:
    """(op name, fake kernel) pairs, for backends that declare their own ops."""
    return list(_FAKES.items())
