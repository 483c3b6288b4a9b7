"""Python-side registrations of the compiled op library (plinio._C).

The schemas, the CPU/CUDA kernels and the autograd formulas of ``plinio::combine``,
``plinio::pit_masks`` and ``plinio::pit_masked_weight`` (plus their ``*_backward`` ops), of
the two CPU ops of compiled graphs, ``plinio::relu_backward`` and ``plinio::dropout_noise``
(plinio/ops/activations.py), and of sparse execution's direct convolution
``plinio::small_conv`` and its two gradients (plinio/fast/small_conv.py), of its compact
layers' convolution ``plinio::compact_conv`` (plinio/fast/sparse_conv.py), and of the PIT
regularizer's ``plinio::pit_soft_costs`` and its backward (plinio/methods/pit/cost_model.py), come from the
compiled library (csrc/plinio_ops.cpp, csrc/autograd.cpp: autograd in C++ because a Python
autograd registration costs more per call than these kernels). This
module adds, once the library is loaded, the fake (meta) kernels for torch.compile /
export, and the Autograd kernels of the ``*_backward`` ops: the differentiable formulas of
plinio/ops/double_backward.py, which csrc/autograd.cpp calls when a backward must itself
be differentiable. The schema conventions are those of plinio/ops/_conventions.py.
"""
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _extension
from . import _validate, double_backward
from ._conventions import absent, compact_layout, first_given, masked_weight_format

_OPS = ("combine", "combine_backward", "pit_masks", "pit_masks_backward",
        "pit_masked_weight", "pit_masked_weight_backward", "relu_backward", "dropout_noise",
        "small_conv", "small_conv_input_grad", "small_conv_weight_grad", "compact_conv", "pit_soft_costs",
        "pit_soft_costs_backward")

_lock = threading.Lock()
_registered = False
# the Autograd kernels stay registered while this library object lives
_autograd_library: Optional[torch.library.Library] = None


# ------------------------------------------------------------------------ fake kernels

def _fake_combine(branches: List[Tensor], theta: Tensor, relu: Sequence[bool] = ()) -> Tensor:
    _validate.check_combine(branches, theta, relu, one_dtype=True)
    return torch.empty_like(branches[0])


def _fake_combine_backward(grad: Tensor, branches: List[Tensor], theta: Tensor,
                           branch_needs_grad: List[bool], theta_needs_grad: bool,
                           relu: Sequence[bool] = ()) -> Tuple[List[Tensor], Tensor]:
    grads = [torch.empty_like(grad) if need else absent(grad) for need in branch_needs_grad]
    return grads, (theta.new_empty(theta.shape) if theta_needs_grad else absent(theta))


def _fake_pit_masks(alpha: Optional[Tensor], beta: Optional[Tensor], gamma: Optional[Tensor],
                    kernel_size: int, threshold: float, keep_alive: int) -> Tuple[Tensor, Tensor]:
    like = first_given(alpha, beta, gamma)
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
    like = first_given(alpha, beta, gamma)
    assert like is not None
    return tuple(p.new_empty(p.shape) if p is not None else absent(like)  # type: ignore
                 for p in (alpha, beta, gamma))


def _fake_pit_masked_weight(weight: Tensor, bias: Optional[Tensor], alpha: Optional[Tensor],
                            beta: Optional[Tensor], gamma: Optional[Tensor], threshold: float,
                            keep_alive: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    _validate.check_masked_weight(weight, bias, alpha, beta, gamma, keep_alive,
                                  params_in_weight_dtype=True)
    timed = beta is not None or gamma is not None
    fmt = masked_weight_format(weight, timed)
    masked = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device,
                         memory_format=fmt)
    masked_bias = bias.new_empty(bias.shape) if bias is not None else absent(weight)
    like = first_given(alpha, beta, gamma, weight)
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
    any_param = first_given(alpha, beta, gamma) is not None
    grads = [p.new_empty(p.shape) if (p is not None and params_need_grad and any_param)
             else absent(weight) for p in (alpha, beta, gamma)]
    return (gw, gb, *grads)


def _fake_relu_backward(grad: Tensor, output: Tensor, upper: Optional[float] = None) -> Tensor:
    if grad.shape != output.shape or grad.dtype != output.dtype:
        raise ValueError(f"plinio::relu_backward: grad ({tuple(grad.shape)}, {grad.dtype}) and "
                         f"the activation's output ({tuple(output.shape)}, {output.dtype}) must "
                         "have the same shape and dtype")
    return torch.empty_like(grad)


def _fake_dropout_noise(input: Tensor, p: float) -> Tensor:
    if not 0.0 < p < 1.0:
        raise ValueError(f"plinio::dropout_noise: p must be in (0, 1), got {p}")
    return torch.empty_like(input)


def _empty_in_layout_of(like: Tensor, sizes: Sequence[int]) -> Tensor:
    """An empty tensor of ``sizes`` in the layout of ``like`` (N, C, *spatial) as
    ``plinio::small_conv`` gives it: channels_last where ``like`` (lifted to 4-D) suggests it."""
    lifted = like.unsqueeze(2) if like.dim() == 3 else like
    channels_last = lifted.is_contiguous(memory_format=torch.channels_last) and not lifted.is_contiguous()
    out_sizes = list(sizes[:2]) + [1] + list(sizes[2:]) if like.dim() == 3 else list(sizes)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(out_sizes, dtype=like.dtype, device=like.device, memory_format=fmt)
    return out.squeeze(2) if like.dim() == 3 else out


def _small_conv_sizes(input_shape: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                      padding_before: Sequence[int], padding_after: Sequence[int],
                      dilation: Sequence[int]) -> List[int]:
    return [(n + pb + pa - d * (k - 1) - 1) // s + 1 for n, k, s, pb, pa, d in
            zip(input_shape, kernel, stride, padding_before, padding_after, dilation)]


def _fake_small_conv(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int],
                     padding_before: Sequence[int], padding_after: Sequence[int], dilation: Sequence[int],
                     groups: int) -> Tensor:
    spatial = _small_conv_sizes(input.shape[2:], weight.shape[2:], stride, padding_before, padding_after,
                                dilation)
    return _empty_in_layout_of(input, [input.shape[0], weight.shape[0]] + spatial)


def _fake_small_conv_input_grad(grad: Tensor, weight: Tensor, input_size: Sequence[int], stride: Sequence[int],
                                padding_before: Sequence[int], padding_after: Sequence[int],
                                dilation: Sequence[int], groups: int) -> Tensor:
    return _empty_in_layout_of(grad, input_size)


def _fake_small_conv_weight_grad(grad: Tensor, input: Tensor, weight_size: Sequence[int],
                                 stride: Sequence[int], padding_before: Sequence[int],
                                 padding_after: Sequence[int], dilation: Sequence[int],
                                 groups: int) -> Tensor:
    return input.new_empty(weight_size)


def _fake_compact_conv(input: Tensor, weight: Tensor, bias: Optional[Tensor], rows: Optional[Tensor],
                       cols: Optional[Tensor], stride: Sequence[int], padding_before: Sequence[int],
                       padding_after: Sequence[int], dilation: Sequence[int], depthwise: bool,
                       direct: bool, alpha: Optional[Tensor] = None, keep_alive: int = 0) -> Tensor:
    spatial = _small_conv_sizes(input.shape[2:], weight.shape[2:], stride, padding_before, padding_after,
                                dilation)
    channels = weight.shape[0] if rows is None else rows.shape[0]
    return compact_layout(input.new_empty([input.shape[0], channels] + spatial))


def _fake_pit_soft_costs(alpha: Tensor, beta: Optional[Tensor], gamma: Optional[Tensor],
                         tables: List[Tensor]) -> Tuple[Tensor, Tensor]:
    layers = tables[2].shape[0]  # the input-channel table, one row per layer
    return alpha.new_empty(layers, dtype=torch.float32), alpha.new_empty(layers, dtype=torch.float32)


def _fake_pit_soft_costs_backward(grad_size: Tensor, grad_macs: Tensor, alpha: Tensor, beta: Optional[Tensor],
                                  gamma: Optional[Tensor], tables: List[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    return (torch.empty_like(alpha), torch.empty_like(beta) if beta is not None else absent(alpha),
            torch.empty_like(gamma) if gamma is not None else absent(alpha))


_DOUBLE_BACKWARD = {
    "combine_backward": double_backward.combine_backward,
    "pit_masks_backward": double_backward.pit_masks_backward,
    "pit_masked_weight_backward": double_backward.pit_masked_weight_backward,
}

_FAKES = {
    "combine": _fake_combine,
    "combine_backward": _fake_combine_backward,
    "pit_masks": _fake_pit_masks,
    "pit_masks_backward": _fake_pit_masks_backward,
    "pit_masked_weight": _fake_pit_masked_weight,
    "pit_masked_weight_backward": _fake_pit_masked_weight_backward,
    "relu_backward": _fake_relu_backward,
    "dropout_noise": _fake_dropout_noise,
    "small_conv": _fake_small_conv,
    "small_conv_input_grad": _fake_small_conv_input_grad,
    "small_conv_weight_grad": _fake_small_conv_weight_grad,
    "compact_conv": _fake_compact_conv,
    "pit_soft_costs": _fake_pit_soft_costs,
    "pit_soft_costs_backward": _fake_pit_soft_costs_backward,
}


def _autograd_kernel(name: str) -> Callable[..., Any]:
    """Autograd kernel of backward op `name`: its differentiable formula when a graph is
    needed, else straight to the fused kernel."""
    formula = _DOUBLE_BACKWARD[name]
    op = getattr(torch.ops.plinio, name).default

    def kernel(*args: Any) -> Any:
        if double_backward.graph_needed(*args):
            return formula(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)

    return kernel


def compiled_ops() -> Optional[Any]:
    """``torch.ops.plinio`` with its fake kernels and the Autograd kernels of its backward
    ops registered, or None when the compiled library is unavailable."""
    global _registered, _autograd_library
    if not _extension.load():
        return None
    if _registered:
        return torch.ops.plinio
    with _lock:
        if not _registered:
            for name in _OPS:
                torch.library.register_fake(f"plinio::{name}", _FAKES[name])
            _autograd_library = torch.library.Library("plinio", "IMPL")
            for name in _DOUBLE_BACKWARD:
                _autograd_library.impl(name, _autograd_kernel(name), "Autograd")
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
