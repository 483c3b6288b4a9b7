"""Pure-PyTorch implementations of the plinio ops: the oracle every kernel is tested
against, the fallback when no compiled kernel applies, and the "reference path" of the
benchmarks (PLiNIO's op-by-op structure: stack-and-sum, masks built from small ops).

Autograd comes from PyTorch itself; the only custom piece is the straight-through
binarizer, which must return exact 0./1. values (``x + (b - x).detach()`` would not).
"""
import functools
import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from ._autocast import autocast_off


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 accumulation for float32/float16/bfloat16, float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def branches_dtype(branches: Sequence[Tensor]) -> torch.dtype:
    """The dtype of Σ_i θ_i·y_i: the branches' dtypes promoted to the widest, as eager
    PyTorch adds them (θ_i, a scalar weight, does not take part)."""
    return functools.reduce(torch.promote_types, (b.dtype for b in branches))


def combine(branches: Sequence[Tensor], theta: Tensor) -> Tensor:
    """y = Σ_i θ_i·y_i as PLiNIO computes it: stack the branches, weight, sum (in float32,
    float64 for float64 branches; the result has :func:`branches_dtype`)."""
    dtype = branches_dtype(branches)
    acc = accumulate_dtype(dtype)
    stacked = torch.stack([b.to(acc) for b in branches])
    weights = theta.to(acc).reshape((-1,) + (1,) * branches[0].dim())
    return (stacked * weights).sum(0).to(dtype)


class STEBinarize(torch.autograd.Function):
    """bin(x) = 1[x > threshold] (exact 0./1.), with a straight-through gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, threshold: float) -> Tensor:  # type: ignore[override]
        return (x > threshold).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


def binarize(x: Tensor, threshold: float) -> Tensor:
    """Straight-through binarization (see :class:`STEBinarize`)."""
    return STEBinarize.apply(x, threshold)


def dilation_levels(kernel_size: int) -> int:
    """L = max(ceil(log2 K), 1): the number of dilation mask parameters for K taps."""
    return max(math.ceil(math.log2(kernel_size)), 1) if kernel_size > 1 else 1


def _abs_keep_last(p: Tensor, keep: int) -> Tensor:
    """|p| with the last `keep` entries replaced by 1 (their gradient is zero)."""
    if keep <= 0:
        return p.abs()
    n = p.shape[0]
    return torch.cat([p[: n - keep].abs(), torch.ones(keep, dtype=p.dtype, device=p.device)])


def theta_alpha(alpha: Tensor, keep_alive: int = 1) -> Tensor:
    """Continuous channel mask θ_α = |α| with the last `keep_alive` channels at 1."""
    return _abs_keep_last(alpha, keep_alive)


def theta_beta(beta: Tensor) -> Tensor:
    """Continuous receptive-field mask θ_β = cumsum(β̂), oldest tap first."""
    return torch.cumsum(_abs_keep_last(beta, 1), dim=0)


def _gamma_levels_of_taps(kernel_size: int) -> Tuple[int, ...]:
    """min(v(K-1-j), L-1) for every tap j (v = 2-adic valuation, v(0) = ∞)."""
    levels = dilation_levels(kernel_size)
    out = []
    for j in range(kernel_size):
        d = kernel_size - 1 - j
        v = 0
        if d == 0:
            v = levels - 1
        else:
            while d % 2 == 0 and v < levels - 1:
                d //= 2
                v += 1
        out.append(v)
    return tuple(out)


def gamma_selection(kernel_size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[K, L] 0/1 matrix S with S[j, p] = 1 when γ̂_p is summed into θ_γ[j]."""
    levels = dilation_levels(kernel_size)
    top = torch.tensor(_gamma_levels_of_taps(kernel_size), device=device)
    return (torch.arange(levels, device=device)[None, :] <= top[:, None]).to(dtype)


def theta_gamma(gamma: Tensor, kernel_size: int) -> Tensor:
    """Continuous dilation mask θ_γ[j] = Σ_{p ≤ min(v(K-1-j), L-1)} γ̂_p, per tap."""
    sel = gamma_selection(kernel_size, gamma.dtype, gamma.device)
    return sel @ _abs_keep_last(gamma, 1)


def pit_masks(
    alpha: Optional[Tensor],
    beta: Optional[Tensor] = None,
    gamma: Optional[Tensor] = None,
    *,
    kernel_size: Optional[int] = None,
    threshold: float = 0.5,
    keep_alive: int = 1,
) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """Binarized (channel mask, time mask), op by op; None for an absent kind."""
    like = next((p for p in (alpha, beta, gamma) if p is not None), None)
    if like is None:
        return None, None
    with autocast_off(like.device):
        return _masks(alpha, beta, gamma, kernel_size, threshold, keep_alive)


def _masks(alpha: Optional[Tensor], beta: Optional[Tensor], gamma: Optional[Tensor],
           kernel_size: Optional[int], threshold: float,
           keep_alive: int) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    channel = binarize(theta_alpha(alpha, keep_alive), threshold) if alpha is not None else None
    time: Optional[Tensor] = None
    if beta is not None:
        time = binarize(theta_beta(beta), threshold)
    if gamma is not None:
        k = beta.shape[0] if beta is not None else kernel_size
        if k is None:
            raise ValueError("plinio.ops.reference.pit_masks: give kernel_size (or beta) "
                             "together with gamma")
        m_gamma = binarize(theta_gamma(gamma, k), threshold)
        time = m_gamma if time is None else time * m_gamma
    return channel, time


def apply_masks(
    weight: Tensor, bias: Optional[Tensor], channel: Optional[Tensor], time: Optional[Tensor]
) -> Tuple[Tensor, Optional[Tensor]]:
    """weight ⊙ m_α (output-channel axis) ⊙ m_t (last axis); bias ⊙ m_α."""
    w = weight
    if channel is not None:
        w = w * channel.reshape((-1,) + (1,) * (weight.dim() - 1))
    if time is not None:
        w = w * time
    b = bias
    if bias is not None and channel is not None:
        b = bias * channel
    return w, b


def pit_masked_weight(
    weight: Tensor,
    bias: Optional[Tensor],
    alpha: Optional[Tensor],
    beta: Optional[Tensor] = None,
    gamma: Optional[Tensor] = None,
    *,
    threshold: float = 0.5,
    keep_alive: int = 1,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """(masked weight, masked bias, channel mask, time mask), op by op."""
    channel, time = pit_masks(
        alpha, beta, gamma, kernel_size=weight.shape[-1], threshold=threshold,
        keep_alive=keep_alive,
    )
    w, b = apply_masks(weight, bias, channel, time)
    return w, b, channel, time
