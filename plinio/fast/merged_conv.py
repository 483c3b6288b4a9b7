"""Run-time half of branch merging: one convolution with kernel Σ θ_i·place(W_i).

Each merged branch contributes its current weight (PIT layers: ``masked_weight_and_bias()``,
so masks and BN folding are included; chains: the composed weight; Identity: a Dirac kernel)
placed at its tap offsets inside the merged kernel. Everything is built from differentiable
tensor ops every step, so gradients reach every weight, bias, mask parameter and θ exactly.
"""
import functools
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .autocast import autocast_off
from .linear_ops import (ConvGeometry, compose, compose_weights, layer_weight_and_bias,
                         reference_conv)
from .merge_plan import MemberPlacement, MergePlan
from .sparse_conv import select_channels
from .sparse_step import Block, SparseCall

# one element of a branch chain: the layer and its geometry (None for nn.Identity)
ChainLayer = Tuple[nn.Module, Optional[ConvGeometry]]


def chain_weight_and_bias(layers: Sequence[ChainLayer]
                          ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Weight and bias of a chain of layers as one convolution (``(None, None)``: identity)."""
    current: Optional[Tuple[torch.Tensor, Optional[torch.Tensor], ConvGeometry]] = None
    for module, geometry in layers:
        if geometry is None:
            continue
        weight, bias = layer_weight_and_bias(module)
        if current is None:
            current = (weight, bias, geometry)
            continue
        composed, _ = compose(current[2], geometry)
        weight, bias = compose_weights(current, (weight, bias, geometry))
        current = (weight, bias, composed)
    if current is None:
        return None, None
    return current[0], current[1]


def _dirac(geometry: ConvGeometry, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Identity as a (grouped) 1×1 convolution kernel: W[o, o mod (C/G)] = 1."""
    per_group = geometry.in_channels // geometry.groups
    eye = torch.eye(per_group, dtype=dtype, device=like.device).repeat(geometry.groups, 1)
    return eye.reshape((geometry.out_channels, per_group) + (1,) * geometry.ndim)


def place_kernel(weight: torch.Tensor, member: MemberPlacement,
                 merged: ConvGeometry) -> torch.Tensor:
    """The member's kernel written at its tap positions in a zero merged-size kernel."""
    if all(s == 1 for s in member.step):
        pads: List[int] = []
        for dim in reversed(range(merged.ndim)):
            k = weight.shape[2 + dim]
            pads += [member.start[dim], merged.kernel[dim] - member.start[dim] - k]
        return F.pad(weight, pads)
    placed = weight.new_zeros(tuple(weight.shape[:2]) + tuple(merged.kernel))
    index = (slice(None), slice(None)) + tuple(
        slice(start, start + step * (k - 1) + 1, step)
        for start, step, k in zip(member.start, member.step, weight.shape[2:]))
    placed[index] = weight
    return placed


class MergedConv:
    """Computes the merged branches of one supernet as a single convolution.

    Not an ``nn.Module`` on purpose: it only refers to layers owned by the model, so that no
    parameter is registered twice (``state_dict`` keys stay those of the model).
    """

    def __init__(self, plan: MergePlan, chains: Sequence[Sequence[ChainLayer]]) -> None:
        if plan.geometry is None:
            raise ValueError("MergedConv needs a plan with merged branches")
        self.plan = plan
        self.geometry = plan.geometry
        self.chains = tuple(tuple(c) for c in chains)  # aligned with plan.members
        self.has_identity = any(all(geometry is None for _, geometry in chain) for chain in self.chains)

    def kernel_and_bias(self, theta: torch.Tensor, like: torch.Tensor,
                        identity_rows: Optional[torch.Tensor] = None, block: Optional[Block] = None
                        ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Merged kernel Σ θ_i·place(W_i) and bias Σ θ_i·b_i for the plan's members, in the
        weights' dtype (``like``: a tensor of the dtype and device of the input, the dtype of
        an all-Identity kernel). ``identity_rows``: 0./1. per output channel multiplying the
        Identity's Dirac kernel (sparse execution: its rows outside the kept set).
        ``block``: (rows, columns), None for all: only that block of the kernel and those
        rows of the bias (each member is restricted before it is placed and summed, so a
        pruned layer's merged kernel costs its kept part only)."""
        rows, cols = block if block is not None else (None, None)
        members = [(member, chain_weight_and_bias(chain)) for member, chain in zip(self.plan.members, self.chains)]
        weights = [weight for _, (weight, _) in members if weight is not None]
        dtype = functools.reduce(torch.promote_types, (w.dtype for w in weights)) if weights else like.dtype
        placed: List[torch.Tensor] = []
        thetas: List[torch.Tensor] = []
        biases: List[torch.Tensor] = []
        bias_thetas: List[torch.Tensor] = []
        for member, (weight, bias) in members:
            t = theta[member.branch:member.branch + 1]
            if weight is None:
                weight = _dirac(member.geometry, like, dtype)
                if identity_rows is not None:
                    weight = weight * identity_rows.to(dtype).view((-1,) + (1,) * (weight.dim() - 1))
            else:
                weight = weight.to(dtype)
            weight = select_channels(select_channels(weight, 0, rows), 1, cols)
            placed.append(place_kernel(weight, member, self.geometry))
            thetas.append(t)
            if bias is not None:
                biases.append(select_channels(bias.to(dtype), 0, rows))
                bias_thetas.append(t)
        kernel = torch.tensordot(torch.cat(thetas).to(dtype), torch.stack(placed), dims=1)
        merged_bias = None
        if biases:
            merged_bias = torch.tensordot(torch.cat(bias_thetas).to(dtype), torch.stack(biases), dims=1)
        return kernel, merged_bias

    def __call__(self, x: torch.Tensor, theta: torch.Tensor, sparse: Optional[SparseCall] = None) -> torch.Tensor:
        """The merged branches' Σ θ_i·branch_i(x). Under autocast the kernel is built in the
        weights' precision and the convolution casts it (each branch's own convolution would
        cast its weight); the result has the dtype the branches' sum would have (an Identity
        member passes ``x`` on in its own dtype).

        ``sparse``: the supernet's sparse call of this step. The members' rows outside its
        kept set are exactly 0 except the Identity's Dirac rows, which only carry ``x`` on
        channels that are dead (exactly 0) and their gradient to them; they are zeroed, which
        is exact where the sites allow it (``plinio.methods.dnas_base.sparse_sites``: the
        output gradient is 0 there, or the input gradient dies there). Where the call reads
        only the kept rows and live columns (``SparseCall.weight_block``), only that block of
        the kernel is built."""
        block = None
        if sparse is not None and self.geometry.groups == 1:
            block = sparse.weight_block()
        with autocast_off(x.device):
            rows = sparse.kept_rows(x) if sparse is not None and self.has_identity and block is None else None
            kernel, bias = self.kernel_and_bias(theta, x, rows, block)
        if sparse is None:
            return self._promoted(reference_conv(x, kernel, bias, self.geometry), x)
        return self._promoted(sparse(x, kernel, bias, compact_weight=block is not None), x)

    def _promoted(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``out`` in the dtype the branches' sum has (an Identity member passes ``x`` on)."""
        if self.has_identity:
            out = out.to(torch.promote_types(out.dtype, x.dtype))
        return out
