"""Run-time half of branch merging: one convolution with kernel Σ θ_i·place(W_i).

Each merged branch contributes its current weight (PIT layers: ``masked_weight_and_bias()``,
so masks and BN folding are included; chains: the composed weight; Identity: a Dirac kernel)
placed at its tap offsets inside the merged kernel. Everything is built from differentiable
tensor ops every step, so gradients reach every weight, bias, mask parameter and θ exactly.
"""
import functools
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .autocast import autocast_off
from .linear_ops import (ConvGeometry, compose, compose_weights, layer_weight_and_bias,
                         reference_conv)
from .merge_plan import MemberPlacement, MergePlan
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


class _BlockGather:
    """One block (rows, columns) of a merged kernel in two gathers: each member's weight
    gives the entries of its block (rows × columns × its taps), and one gather from
    ``cat([those blocks..., [0, 1]])`` places them at their taps of the merged kernel — an
    Identity's Dirac entries read the 1, every other entry of a member outside its taps the
    0 —, then one ``tensordot`` with θ sums the members; the bias rows likewise. Building
    the block member by member (two channel selections, a padding, a stack) took about ten
    ops per member, which in a pruned search step cost more than the convolution they feed.

    The indices depend on the block and the members' weight shapes only; they are computed on
    the device of the block's index tensors (no host synchronisation) and kept while the
    step's index sets are the same tensors (they change when a mask does)."""

    def __init__(self, members: Sequence[MemberPlacement], merged: ConvGeometry, block: Block,
                 shapes: Sequence[Optional[Tuple[int, ...]]], biased: Tuple[int, ...], device: torch.device) -> None:
        if merged.groups != 1:  # an Identity's Dirac entries below assume one group
            raise ValueError(f"MergedConv: a kernel block of a grouped merged convolution (groups={merged.groups}) "
                             "is not supported; build the whole kernel (block=None)")
        self.rows, self.cols = block
        self.shapes = tuple(shapes)
        self.biased = biased  # the branches of the members with a bias
        self.device = device
        self.member_thetas = torch.tensor([member.branch for member in members], device=device)
        self.bias_thetas = torch.tensor(biased, dtype=torch.int64, device=device)
        rows = _indices(self.rows, merged.out_channels, device)
        cols = _indices(self.cols, merged.in_channels // merged.groups, device)
        pairs = rows.numel() * cols.numel()
        zero = sum(pairs * math.prod(shape[2:]) for shape in shapes if shape is not None)  # then the 1
        self.member_index: List[torch.Tensor] = []  # into each member's flattened weight
        index = torch.full((len(members), rows.numel(), cols.numel()) + tuple(merged.kernel), zero,
                           dtype=torch.int64, device=device)
        offset = 0
        for i, (member, shape) in enumerate(zip(members, shapes)):
            if shape is None:  # Identity: W[o, o] = 1 at its tap
                dirac = rows[:, None] == cols[None, :]
                index[(i, slice(None), slice(None)) + tuple(member.start)] = zero + dirac.to(torch.int64)
                continue
            taps = math.prod(shape[2:])
            first = (rows[:, None] * shape[1] + cols[None, :]) * taps  # (rows, cols)
            self.member_index.append((first[:, :, None] + torch.arange(taps, device=device)).view(-1))
            placed = tuple(slice(start, start + step * (k - 1) + 1, step)
                           for start, step, k in zip(member.start, member.step, shape[2:]))
            index[(i, slice(None), slice(None)) + placed] = offset + torch.arange(
                pairs * taps, device=device).view((rows.numel(), cols.numel()) + tuple(shape[2:]))
            offset += pairs * taps
        self.kernel_index = index
        self.bias_rows = rows

    def serves(self, block: Block, shapes: Sequence[Optional[Tuple[int, ...]]], biased: Tuple[int, ...],
               device: torch.device) -> bool:
        return block[0] is self.rows and block[1] is self.cols and tuple(shapes) == self.shapes \
            and biased == self.biased and device == self.device

    def kernel(self, theta: torch.Tensor, weights: Sequence[torch.Tensor]) -> torch.Tensor:
        """Σ θ_i·place(W_i)[rows, cols] (θ of every branch; ``weights``: the members' weights
        that are not None, in ``theta``'s dtype)."""
        ends = torch.arange(2, dtype=theta.dtype, device=theta.device)  # the 0 and the 1
        source = torch.cat([w.reshape(-1).index_select(0, index) for w, index in zip(weights, self.member_index)]
                           + [ends])
        index = self.kernel_index
        gathered = source.index_select(0, index.view(-1)).view(index.shape)
        return torch.tensordot(theta.index_select(0, self.member_thetas), gathered, dims=1)

    def bias(self, theta: torch.Tensor, biases: Sequence[torch.Tensor]) -> torch.Tensor:
        """Σ θ_i·b_i[rows] over the members with a bias (θ of every branch)."""
        rows = torch.stack(biases).index_select(1, self.bias_rows)
        return torch.tensordot(theta.index_select(0, self.bias_thetas), rows, dims=1)


def _indices(index: Optional[torch.Tensor], size: int, device: torch.device) -> torch.Tensor:
    """``index``, or every one of ``size`` channels when None."""
    return torch.arange(size, device=device) if index is None else index.to(device)


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
        self._last_gather: Optional[_BlockGather] = None

    def kernel_and_bias(self, theta: torch.Tensor, like: torch.Tensor,
                        identity_rows: Optional[torch.Tensor] = None, block: Optional[Block] = None
                        ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Merged kernel Σ θ_i·place(W_i) and bias Σ θ_i·b_i for the plan's members, in the
        weights' dtype (``like``: a tensor of the dtype and device of the input, the dtype of
        an all-Identity kernel). ``identity_rows``: 0./1. per output channel multiplying the
        Identity's Dirac kernel (sparse execution: its rows outside the kept set).
        ``block``: (rows, columns), None for all: only that block of the kernel and those
        rows of the bias, built by two gathers (:class:`_BlockGather`: a pruned layer's
        merged kernel costs its kept part and a handful of ops; ungrouped kernels only)."""
        members = [(member, chain_weight_and_bias(chain)) for member, chain in zip(self.plan.members, self.chains)]
        weights = [weight for _, (weight, _) in members if weight is not None]
        dtype = functools.reduce(torch.promote_types, (w.dtype for w in weights)) if weights else like.dtype
        biased = tuple(member.branch for member, (_, bias) in members if bias is not None)
        biases = [bias.to(dtype) for _, (_, bias) in members if bias is not None]
        if block is not None:
            gather = self._block_gather(block, [None if w is None else tuple(w.shape) for _, (w, _) in members],
                                        biased, like.device)
            theta = theta.to(dtype)
            return gather.kernel(theta, [w.to(dtype) for w in weights]), \
                gather.bias(theta, biases) if biases else None
        thetas = torch.cat([theta[member.branch:member.branch + 1] for member, _ in members]).to(dtype)
        bias_thetas = torch.cat([theta[branch:branch + 1] for branch in biased]).to(dtype) if biased else None
        placed: List[torch.Tensor] = []
        for member, (weight, _) in members:
            if weight is None:
                weight = _dirac(member.geometry, like, dtype)
                if identity_rows is not None:
                    weight = weight * identity_rows.to(dtype).view((-1,) + (1,) * (weight.dim() - 1))
            placed.append(place_kernel(weight.to(dtype), member, self.geometry))
        kernel = torch.tensordot(thetas, torch.stack(placed), dims=1)
        merged_bias = None
        if biases:
            merged_bias = torch.tensordot(bias_thetas, torch.stack(biases), dims=1)
        return kernel, merged_bias

    def _block_gather(self, block: Block, shapes: Sequence[Optional[Tuple[int, ...]]], biased: Tuple[int, ...],
                      device: torch.device) -> "_BlockGather":
        """The gather of ``block`` (kept while the step's index sets are the same tensors)."""
        cached = self._last_gather
        if cached is None or not cached.serves(block, shapes, biased, device):
            cached = _BlockGather(self.plan.members, self.geometry, block, shapes, biased, device)
            self._last_gather = cached
        return cached

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
