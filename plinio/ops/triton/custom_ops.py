"""The Triton implementations as torch.library custom ops (``plinio::triton_*``).

With torch >= 2.6 the mask ops are declared with ``torch.library.triton_op`` and launch
through ``wrap_triton``, so torch.compile sees their kernels. The combine ops pass their
branches to the kernels as a tuple of tensors, which ``wrap_triton`` cannot trace (it only
unwraps top-level tensor arguments), so they stay opaque custom ops with the shared fake
kernels, as every op does on older torch. The host logic (layouts, absent results, which
kernels run) mirrors csrc/ops_driver.h; their autograd formulas are in
plinio/ops/triton/autograd.py.
"""
from typing import List, Optional, Tuple

import torch
import triton
from torch import Tensor
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction

from .. import _library
from .._conventions import absent, masked_weight_format, present
from ..reference import accumulate_dtype, dilation_levels
from . import kernels as K

_TRITON_OP = getattr(torch.library, "triton_op", None)
_WRAP = getattr(torch.library, "wrap_triton", None)
_MODERN = _TRITON_OP is not None and _WRAP is not None

COMBINE_BLOCK = 1024
TILE = 1024  # elements per program tile in the mask kernels


def _launch(kernel):  # noqa: ANN001, ANN202 - a Triton kernel in, a launcher out
    """``kernel`` through ``wrap_triton``; as it is on older torch, and when Triton's
    interpreter made it (TRITON_INTERPRET=1: torch 2.11's ``wrap_triton`` refuses such a
    kernel, later versions return it unchanged)."""
    return _WRAP(kernel) if _MODERN and isinstance(kernel, (JITFunction, Autotuner)) else kernel


def _define(name: str, traceable: bool = True):  # noqa: ANN202 - decorator
    """Declare `fn` as op ``plinio::name``: a triton_op when `traceable` (its kernels must
    launch through :func:`_launch`), else an opaque custom op (kernels launched directly)."""
    def wrap(fn):  # noqa: ANN001, ANN202
        if _MODERN and traceable:
            return _TRITON_OP(f"plinio::{name}", fn, mutates_args=())
        op = torch.library.custom_op(f"plinio::{name}", fn, mutates_args=())
        fake = dict(_library.fakes())[name.replace("triton_", "", 1)]
        op.register_fake(fake)
        return op

    return wrap


def _align(t: Tensor, like: Tensor) -> Tensor:
    return t if t.stride() == like.stride() else torch.empty_like(like).copy_(t)


def _pow2(n: int, least: int = 1) -> int:
    return max(least, triton.next_power_of_2(max(int(n), 1)))


# ------------------------------------------------------------------------------ combine

@_define("triton_combine", traceable=False)
def triton_combine(branches: List[Tensor], theta: Tensor) -> Tensor:
    out = torch.empty_like(branches[0])
    n = out.numel()
    if n == 0:
        return out
    xs = tuple(_align(b, out) for b in branches)
    th = theta.to(accumulate_dtype(out.dtype)).contiguous()
    grid = (triton.cdiv(n, COMBINE_BLOCK),)
    K.combine_forward_kernel[grid](xs, th, out, n, NB=len(xs), BLOCK=COMBINE_BLOCK)
    return out


@_define("triton_combine_backward", traceable=False)
def triton_combine_backward(grad: Tensor, branches: List[Tensor], theta: Tensor,
                            branch_needs_grad: List[bool],
                            theta_needs_grad: bool) -> Tuple[List[Tensor], Tensor]:
    ref = torch.empty_like(grad)
    g = _align(grad, ref)
    nb = len(branch_needs_grad)
    acc = accumulate_dtype(grad.dtype)
    th = theta.to(acc).contiguous()
    grads = [torch.empty_like(ref) if need else absent(grad)
             for need in branch_needs_grad]
    n = ref.numel()
    blocks = triton.cdiv(n, COMBINE_BLOCK)
    partial = torch.zeros((max(blocks, 1), nb), dtype=acc, device=grad.device)
    if n > 0:
        xs = tuple(_align(b, ref) for b in branches) if theta_needs_grad else (g,) * nb
        outs = tuple(gr if need else g for gr, need in zip(grads, branch_needs_grad))
        need_mask = sum(1 << i for i, need in enumerate(branch_needs_grad) if need)
        K.combine_backward_kernel[(blocks,)](
            g, xs, outs, th, partial, n, NB=nb, NEED_MASK=need_mask,
            WANT_THETA=bool(theta_needs_grad), BLOCK=COMBINE_BLOCK)
    theta_grad = (partial.sum(0).to(theta.dtype) if theta_needs_grad
                  else absent(theta))
    return grads, theta_grad


# ---------------------------------------------------------------------------- PIT masks

class _Masks:
    """The mask vectors of one layer in the accumulation dtype (None when absent)."""

    def __init__(self, alpha: Optional[Tensor], beta: Optional[Tensor], gamma: Optional[Tensor],
                 taps: int, threshold: float, keep_alive: int) -> None:
        like = next(p for p in (alpha, beta, gamma) if p is not None)
        self.acc = accumulate_dtype(like.dtype)
        dev = like.device
        self.cout = alpha.shape[0] if alpha is not None else 0
        self.timed = beta is not None or gamma is not None
        self.taps = taps if self.timed else 1
        self.levels = dilation_levels(taps) if gamma is not None else 1
        dummy = torch.empty((1,), dtype=self.acc, device=dev)
        self.cm = torch.empty((self.cout,), dtype=self.acc, device=dev) if alpha is not None else None
        if self.timed:
            self.mb, self.mg, self.mt = (torch.empty((taps,), dtype=self.acc, device=dev)
                                         for _ in range(3))
        else:
            self.mb = self.mg = self.mt = None
        _launch(K.masks_kernel)[(1,)](
            alpha if alpha is not None else dummy, beta if beta is not None else dummy,
            gamma if gamma is not None else dummy,
            self.cm if self.cm is not None else dummy,
            *((self.mb, self.mg, self.mt) if self.timed else (dummy, dummy, dummy)),
            self.cout, self.taps, self.levels, keep_alive, threshold,
            HAS_ALPHA=alpha is not None, HAS_BETA=beta is not None, HAS_GAMMA=gamma is not None,
            BLOCK_C=min(_pow2(self.cout), TILE), BLOCK_K=_pow2(self.taps),
            LEVELS_MAX=_pow2(self.levels, 2))
        self.dummy = dummy


def _apply(rows: Tensor, m: _Masks, time: bool, out: Tensor) -> None:
    """out = rows ⊙ m_α[c] (⊙ m_t[k] when `time`), rows viewed as [Cout, R, taps]."""
    n = rows.numel()
    if n == 0:
        return
    taps = m.taps if time else 1
    has_mt = bool(time and m.mt is not None)
    _launch(K.apply_kernel)[(triton.cdiv(n, TILE),)](
        rows, m.cm if m.cm is not None else m.dummy, m.mt if has_mt else m.dummy, out,
        n, n // rows.shape[0], taps, HAS_CM=m.cm is not None, HAS_MT=has_mt, BLOCK=TILE)


def _param_grads(m: _Masks, partial: Optional[Tensor], grad_bias: Optional[Tensor],
                 bias: Optional[Tensor], ext_cm: Optional[Tensor], ext_t: Optional[Tensor],
                 alpha: Optional[Tensor], beta: Optional[Tensor], gamma: Optional[Tensor],
                 keep_alive: int, absent_like: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    dev = absent_like.device
    ga = torch.empty((m.cout,), dtype=m.acc, device=dev) if alpha is not None else m.dummy
    gb = torch.empty((m.taps,), dtype=m.acc, device=dev) if beta is not None else m.dummy
    gg = torch.empty((m.levels,), dtype=m.acc, device=dev) if gamma is not None else m.dummy

    def acc(t: Optional[Tensor]) -> Tensor:
        return t.to(m.acc).contiguous() if t is not None else m.dummy

    has_bias = grad_bias is not None and bias is not None
    # channels of the layer (the partial sums have one row per output channel even when
    # the channel mask is absent)
    cout = partial.shape[0] if partial is not None else m.cout
    _launch(K.param_grads_kernel)[(1,)](
        acc(partial), acc(grad_bias if has_bias else None), acc(bias if has_bias else None),
        acc(ext_cm), acc(ext_t),
        alpha if alpha is not None else m.dummy, beta if beta is not None else m.dummy,
        gamma if gamma is not None else m.dummy,
        m.cm if m.cm is not None else m.dummy, m.mt if m.mt is not None else m.dummy,
        m.mb if m.mb is not None else m.dummy, m.mg if m.mg is not None else m.dummy,
        ga, gb, gg, cout, m.taps, m.levels, keep_alive,
        HAS_PARTIAL=partial is not None, HAS_BIAS=has_bias, HAS_EXT_CM=ext_cm is not None,
        HAS_EXT_T=ext_t is not None, HAS_ALPHA=alpha is not None, HAS_BETA=beta is not None,
        HAS_GAMMA=gamma is not None, HAS_MT=m.timed,
        BLOCK_C=max(1, min(_pow2(cout), TILE // _pow2(m.taps))), BLOCK_K=_pow2(m.taps),
        LEVELS_MAX=_pow2(m.levels, 2))
    return (ga.to(alpha.dtype) if alpha is not None else absent(absent_like),
            gb.to(beta.dtype) if beta is not None else absent(absent_like),
            gg.to(gamma.dtype) if gamma is not None else absent(absent_like))


def _mask_out(mask: Optional[Tensor], like: Tensor) -> Tensor:
    return mask.to(like.dtype) if mask is not None else absent(like)


@_define("triton_pit_masks")
def triton_pit_masks(alpha: Optional[Tensor], beta: Optional[Tensor], gamma: Optional[Tensor],
                     kernel_size: int, threshold: float,
                     keep_alive: int) -> Tuple[Tensor, Tensor]:
    like = next(p for p in (alpha, beta, gamma) if p is not None)
    m = _Masks(alpha, beta, gamma, kernel_size, threshold, keep_alive)
    return _mask_out(m.cm, like), _mask_out(m.mt, like)


@_define("triton_pit_masks_backward")
def triton_pit_masks_backward(grad_channel_mask: Tensor, grad_time_mask: Tensor,
                              alpha: Optional[Tensor], beta: Optional[Tensor],
                              gamma: Optional[Tensor], kernel_size: int, threshold: float,
                              keep_alive: int) -> Tuple[Tensor, Tensor, Tensor]:
    like = next(p for p in (alpha, beta, gamma) if p is not None)
    m = _Masks(alpha, beta, gamma, kernel_size, threshold, keep_alive)
    return _param_grads(m, None, None, None, present(grad_channel_mask),
                        present(grad_time_mask), alpha, beta, gamma, keep_alive, like)


@_define("triton_pit_masked_weight")
def triton_pit_masked_weight(weight: Tensor, bias: Optional[Tensor], alpha: Optional[Tensor],
                             beta: Optional[Tensor], gamma: Optional[Tensor], threshold: float,
                             keep_alive: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    timed = beta is not None or gamma is not None
    fmt = masked_weight_format(weight, timed)
    w = weight.contiguous(memory_format=fmt)
    out = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device, memory_format=fmt)
    like = next((p for p in (alpha, beta, gamma) if p is not None), weight)
    if like is weight:  # no mask at all: a plain copy
        out.copy_(w)
        mb = bias.clone() if bias is not None else absent(weight)
        return out, mb, absent(weight), absent(weight)
    m = _Masks(alpha, beta, gamma, weight.shape[-1], threshold, keep_alive)
    _apply(w, m, True, out)
    masked_bias = absent(weight)
    if bias is not None:
        masked_bias = torch.empty_like(bias, memory_format=torch.contiguous_format)
        _apply(bias.contiguous().view(-1, 1), m, False, masked_bias)
    return out, masked_bias, _mask_out(m.cm, like), _mask_out(m.mt, like)


@_define("triton_pit_masked_weight_backward")
def triton_pit_masked_weight_backward(
        grad_weight: Tensor, grad_bias: Tensor, grad_channel_mask: Tensor,
        grad_time_mask: Tensor, weight: Tensor, bias: Optional[Tensor], alpha: Optional[Tensor],
        beta: Optional[Tensor], gamma: Optional[Tensor], threshold: float, keep_alive: int,
        weight_needs_grad: bool, bias_needs_grad: bool,
        params_need_grad: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    timed = beta is not None or gamma is not None
    fmt = masked_weight_format(weight, timed)
    any_param = alpha is not None or timed
    gw_in = present(grad_weight)
    gb_in = present(grad_bias)
    shape_fmt = dict(dtype=weight.dtype, device=weight.device, memory_format=fmt)
    if not any_param:
        gw = absent(weight)
        if weight_needs_grad:
            gw = (gw_in.contiguous(memory_format=fmt).clone() if gw_in is not None
                  else torch.zeros(weight.shape, **shape_fmt))
        gb = absent(weight)
        if bias is not None and bias_needs_grad:
            gb = gb_in.clone() if gb_in is not None else torch.zeros_like(bias)
        return gw, gb, absent(weight), absent(weight), absent(weight)

    m = _Masks(alpha, beta, gamma, weight.shape[-1], threshold, keep_alive)
    want_partial = params_need_grad
    gw = torch.empty(weight.shape, **shape_fmt) if weight_needs_grad else absent(weight)
    partial = None
    if want_partial:
        partial = torch.zeros((weight.shape[0], m.taps), dtype=m.acc, device=weight.device)
    if gw_in is not None and (weight_needs_grad or want_partial) and weight.numel() > 0:
        w = weight.contiguous(memory_format=fmt)
        g = gw_in.contiguous(memory_format=fmt)
        cout = weight.shape[0]
        r = weight.numel() // cout // m.taps
        bk = _pow2(m.taps)
        _launch(K.reduce_kernel)[(cout,)](
            g, w, m.cm if m.cm is not None else m.dummy, m.mt if m.mt is not None else m.dummy,
            gw if weight_needs_grad else m.dummy, partial if partial is not None else m.dummy,
            r, m.taps, HAS_CM=m.cm is not None, HAS_MT=m.timed,
            WANT_GRAD=bool(weight_needs_grad), WANT_PARTIAL=partial is not None,
            BLOCK_R=max(1, TILE // bk), BLOCK_K=bk)
    elif weight_needs_grad:
        gw.zero_()

    gb = absent(weight)
    if bias is not None and bias_needs_grad:
        gb = torch.empty_like(bias, memory_format=torch.contiguous_format)
        if gb_in is not None:
            _apply(gb_in.contiguous().view(-1, 1), m, False, gb)
        else:
            gb.zero_()
    if not params_need_grad:
        return gw, gb, absent(weight), absent(weight), absent(weight)
    ga, gbeta, ggamma = _param_grads(
        m, partial, gb_in if bias is not None else None, bias,
        present(grad_channel_mask), present(grad_time_mask),
        alpha, beta, gamma, keep_alive, weight)
    return gw, gb, ga, gbeta, ggamma
